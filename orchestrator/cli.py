"""The command line every sweep script shares: pick a preset, check everything, dry-run or run, say where it all is.

A sweep script declares ``{"paper": [Grid, ...], "smoke": [Grid, ...]}`` and calls :func:`sweep_main`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from tamt_core.console import quiet_libraries

from orchestrator.estimate import THROUGHPUT, gpu_hours
from orchestrator.grid import Grid
from orchestrator.plan import Plan, PlanError
from orchestrator.storage import DEFAULT_STORAGE, Storage, StorageError

Presets = Mapping[str, Callable[[], Sequence[Grid]]]


def plan_of(grids: Sequence[Grid]) -> Plan:
    plan = Plan()
    for grid in grids:
        plan = plan.merge(grid.plan())
    return plan


def _has_gpu_or_cluster(address: str | None) -> bool:
    if address or os.environ.get("RAY_ADDRESS"):
        return True
    import torch

    return torch.cuda.is_available()


def build_parser(name: str, description: str, presets: Presets) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python sweeps/{name}.py", description=description)
    parser.add_argument("--preset", choices=sorted(presets),
                        help="grid to run; default: paper on a GPU machine or cluster, smoke otherwise")
    parser.add_argument("--storage", default=DEFAULT_STORAGE,
                        help=f"runs, masks, table and MLflow store: a directory (shared across nodes on a cluster) "
                             f"or s3://, gs:// (default {DEFAULT_STORAGE})")
    parser.add_argument("--mlflow-uri", help="tracking server (http://HOST:PORT); default: sqlite inside --storage")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its GPU-hours; run nothing")
    parser.add_argument("--address", help="Ray cluster to attach to (auto, HOST:PORT, ray://…); default: "
                                          "RAY_ADDRESS, else a local Ray")
    parser.add_argument("--max-concurrent", type=int, help="at most this many trials at once (default: as "
                                                           "resources allow)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-search", type=float, help="default 1 when GPUs are used, else 0")
    parser.add_argument("--gpus-per-finetune", type=float,
                        help="default 1 when GPUs are used, else 0; a fraction (0.5) packs small tasks on one GPU")
    parser.add_argument("--max-failures", type=int, default=3, help="retries of a failed trial (node loss, OOM)")
    parser.add_argument("--checkpoint-every", type=float, default=300.0, metavar="SECONDS",
                        help="fine-tuning checkpoint period")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    return parser


def sweep_main(name: str, presets: Presets, argv: Sequence[str] | None = None, *, description: str = "",
               out: TextIO | None = None) -> int:
    """Entry point of ``sweeps/<name>.py``; returns the process exit code (2: bad input, 1: failed trials)."""
    out = out or sys.stdout
    args = build_parser(name, description, presets).parse_args(argv)
    quiet_libraries()  # the driver reads model configs (and builds the built-in model once) before Ray starts
    gpus = _has_gpu_or_cluster(args.address)
    preset = args.preset or ("paper" if gpus and "paper" in presets else "smoke")
    if args.preset is None:
        why = "a GPU or a Ray cluster was found" if gpus else "no GPU and no Ray cluster address were found"
        print(f"[tamt] preset: {preset} ({why}; choose with --preset {'/'.join(sorted(presets))})", file=out)
    try:
        plan = plan_of(presets[preset]())
        storage = Storage.at(args.storage)
        if args.dry_run:
            print_plan(plan, name, preset, storage, out)
            return 0
        from orchestrator.engine import Resources, run_sweep

        use_gpu = gpus and preset != "smoke"
        resources = Resources(search_cpu=args.cpus_per_trial, finetune_cpu=args.cpus_per_trial,
                              search_gpu=args.gpus_per_search if args.gpus_per_search is not None else float(use_gpu),
                              finetune_gpu=(args.gpus_per_finetune if args.gpus_per_finetune is not None
                                            else float(use_gpu)))
        if args.max_concurrent is not None and args.max_concurrent < 1:
            raise PlanError(f"--max-concurrent must be ≥ 1, got {args.max_concurrent}")
        report = run_sweep(plan, name=name, storage=storage, mlflow_uri=args.mlflow_uri, resources=resources,
                           max_concurrent=args.max_concurrent, max_failures=args.max_failures,
                           checkpoint_every_s=args.checkpoint_every, ray_address=args.address,
                           ray_init={"num_cpus": args.num_cpus} if args.num_cpus else {}, out=out)
    except (PlanError, StorageError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"[tamt] interrupted; finished trials are in {args.storage}. Rerun the same command to go on.",
              file=out)
        return 130
    print_where(report, out)
    return 0 if report.complete else 1


def print_plan(plan: Plan, name: str, preset: str, storage: Storage, out: TextIO) -> None:
    from orchestrator.results import finished_run_ids

    done = finished_run_ids(storage) if storage.is_local and storage.local_root.exists() else set()
    counts, hours = plan.counts(), gpu_hours(plan)
    print(f"sweep {name}, preset {preset}: {len(plan)} unique trials "
          f"({len(plan.searches)} mask searches → {len(plan.finetunes)} fine-tunes)", file=out)
    for stage in ("search", "finetune"):
        ids = plan.searches if stage == "search" else plan.finetunes
        finished = sum(1 for run_id in ids if run_id in done)
        print(f"  {stage:8s} {len(ids):6d} trials  {sum(hours[stage].values()):9.1f} GPU-h"
              f"{f'  ({finished} already done)' if finished else ''}", file=out)
        for method, count in sorted(counts[stage].items()):
            print(f"    {method:9s} {count:6d}  {hours[stage].get(method, 0.0):9.1f} GPU-h", file=out)
    with_mask = sum(1 for spec in plan.finetunes.values() if spec.mask is not None)
    print(f"  dependencies: {with_mask} fine-tunes each wait for the one search that writes their mask; "
          f"{len(plan.finetunes) - with_mask} full-model fine-tunes wait for nothing", file=out)
    total = sum(sum(h.values()) for h in hours.values())
    print(f"  total {total:.1f} GPU-h ({THROUGHPUT['v100'].source})", file=out)


def print_where(report, out: TextIO) -> None:
    storage = report.storage
    status = "complete" if report.complete else ("interrupted" if report.interrupted else "incomplete")
    print(f"[tamt] sweep {status}: {len(report.succeeded)} trials ran, {report.skipped} were already done, "
          f"{len(report.failed)} failed, {len(report.blocked)} blocked by a failed search", file=out)
    for run_id, error in report.failed.items():
        print(f"  failed {run_id}: {error.splitlines()[0] if error else ''}", file=out)
    print(f"  results table: {storage.table_path()}  (orchestrator.results.read({storage.uri!r}))", file=out)
    print(f"  masks and run files: {storage.path('runs')}/<run_id>/", file=out)
    print(f"  MLflow: {report.mlflow_uri}  (mlflow ui --backend-store-uri {report.mlflow_uri})", file=out)
