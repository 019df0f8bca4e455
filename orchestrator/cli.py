"""The command line every sweep script shares: pick a preset, check everything, dry-run or run, say where it all is.

A sweep script declares ``{"paper": [Grid, ...], "smoke": [Grid, ...]}`` and calls :func:`sweep_main` (through
``sweeps.common.sweep_main``, which hands in the analysis's results table to print when a sweep ends, and the
analysis's figures, table and report to attach to the sweep's MLflow parent run: the orchestrator writes the table
and never imports the package that reads it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from tamt_core.console import quiet_libraries
from tamt_core.cli import seconds
from tamt_core.device import PRECISIONS
from tamt_core.methods import METHODS

from orchestrator.control import STOP_GRACE_S, StallLimits
from orchestrator.estimate import (THROUGHPUT, UNIT_SECONDS, Throughput, gpu_hours, measured_throughput, table_for,
                                   trial_seconds)
from orchestrator.grid import Grid, MaskSimilarity
from orchestrator.plan import Plan, PlanError
from orchestrator.prefetch import invoked_as
from orchestrator.storage import DEFAULT_STORAGE, Storage, StorageError
from orchestrator.study import TamtStudy
from orchestrator.tracking import ArtifactWriter, attach_artifacts, runs_view

Declaration = Grid | MaskSimilarity | Plan | TamtStudy
"""What a preset lists: grids, similarity trials and plans (anything with a ``plan()``), or tuning studies."""
Presets = Mapping[str, Callable[[], Sequence[Declaration]]]
ResultsPrinter = Callable[[Storage, TextIO], None]
"""Prints the results so far in a storage, at the end of a sweep (``sweeps.common.print_results``)."""


def plan_of(declarations: Sequence[Declaration]) -> Plan:
    plan = Plan()
    for declaration in declarations:
        plan = plan.merge(declaration.plan())
    return plan


def with_search_settings(declaration: Declaration, settings: Mapping[str, Mapping[str, Any]]) -> Declaration:
    """``declaration`` with per-method search settings (e.g. a tuned TAMT setting) laid over its grids' own."""
    if isinstance(declaration, Grid):
        search = declaration.search
        for method, own in settings.items():
            search = search.with_method(method, own)
        return replace(declaration, search=search)
    if isinstance(declaration, MaskSimilarity):
        return replace(declaration, grids=tuple(with_search_settings(g, settings) for g in declaration.grids))
    return declaration


def notes_of(declarations: Sequence[Declaration]) -> list[str]:
    """The notes of the declarations' grids (:attr:`Grid.notes`), each once, in order."""
    grids = [g for d in declarations for g in (d.grids if isinstance(d, MaskSimilarity) else (d,))]
    return list(dict.fromkeys(note for grid in grids if isinstance(grid, Grid) for note in grid.notes))


def print_notes(notes: Sequence[str], out: TextIO) -> None:
    for note in notes:
        print(f"[tamt] note: {note}", file=out)


def with_precision(declaration: Declaration, precision: str) -> Declaration:
    """``declaration`` computing in ``precision`` (``bf16``, ``fp32``): its searches that train and its fine-tunes;
    their run ids are those of that precision (:mod:`tamt_core.device`)."""
    if isinstance(declaration, Grid):
        return replace(declaration, search=declaration.search.updated(precision=precision),
                       finetune={**declaration.finetune, "precision": precision})
    if isinstance(declaration, MaskSimilarity):
        return replace(declaration, grids=tuple(with_precision(g, precision) for g in declaration.grids))
    if isinstance(declaration, TamtStudy):
        return replace(declaration, search={**declaration.search, "precision": precision})
    return declaration


def read_search_settings(path: str) -> dict[str, dict[str, Any]]:
    """A ``{method: {setting: value}}`` JSON file, as ``sweeps/tune_tamt.py`` writes its best setting.

    Raises:
        PlanError: unreadable file, or not a mapping of method names to settings.
    """
    try:
        settings = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise PlanError(f"--search-settings {path}: cannot read it as JSON ({error}); give the best.json that "
                        "sweeps/tune_tamt.py writes, or a file like {\"tamt-mlm\": {\"lr\": 1e-4}}") from error
    if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
        raise PlanError(f"--search-settings {path} must map method names to settings, e.g. "
                        "{\"tamt-mlm\": {\"lr\": 1e-4, \"alpha\": 2.0}}")
    unknown = sorted(set(settings) - set(METHODS))
    if unknown:
        raise PlanError(f"--search-settings {path} names unknown method(s) {unknown}; choose from "
                        f"{', '.join(METHODS)}")
    return settings


def _has_gpu_or_cluster(address: str | None) -> bool:
    if address or os.environ.get("RAY_ADDRESS"):
        return True
    import torch

    return torch.cuda.is_available()


def check_address_answers(address: str | None, timeout_s: float = 3.0) -> None:
    """Refuse a Ray address (``--address`` or ``RAY_ADDRESS``) where nothing listens, before a preset is chosen
    from it and before any work: ``HOST:PORT`` and ``ray://HOST:PORT`` are tried with one TCP connection;
    ``auto`` and other forms are left to ``ray.init``.

    Raises:
        PlanError: naming the address, where it came from and the fix.
    """
    given = address or os.environ.get("RAY_ADDRESS")
    if not given:
        return
    host, _, port = given.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as error:
        source = "--address" if address else "RAY_ADDRESS"
        raise PlanError(f"no Ray cluster answers at {given} ({source}: {error.strerror or error}). Start it (ray up "
                        "cluster.yaml, or ray start --head on that node) or correct the address; without "
                        f"{source} the sweep runs on a private local Ray.") from error


def _program() -> str | None:
    """How the running sweep was started, for its usage line: ``python my_sweep.py`` (the path as typed),
    ``python -m sweeps``; ``None`` (argparse's own) when not started from a script."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is None or script.suffix != ".py":
        return None
    return f"python -m {script.parent.name}" if script.name == "__main__.py" else f"python {sys.argv[0]}"


def build_parser(description: str, presets: Presets) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_program(), description=description)
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
    parser.add_argument("--cpus-per-trial", type=float, default=1.0,
                        help="CPUs each trial holds, and each Ray Train worker of a search (default 1)")
    parser.add_argument("--gpus-per-search", type=float, help="default 1 when GPUs are used, else 0")
    parser.add_argument("--gpus-per-finetune", type=float,
                        help="default 1 when GPUs are used, else 0; a fraction (0.5) packs small tasks on one GPU")
    parser.add_argument("--workers-per-search", type=int, default=1, metavar="N",
                        help="Ray Train workers of each IMP/TAMT search, each with --cpus-per-trial CPUs and "
                             "--gpus-per-search GPUs; they split the global batch (default 1)")
    parser.add_argument("--max-failures", type=int, default=3,
                        help="retries of a failed trial, and restarts of a search's workers (node loss, OOM)")
    parser.add_argument("--checkpoint-every", type=seconds, default=300.0, metavar="SECONDS",
                        help="checkpoint period of fine-tunes and searches (searches also checkpoint at each mask; "
                             "default 300)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="bf16 or fp32 (the paper's) for the searches that train and the fine-tunes; default bf16 "
                             "on a GPU, fp32 on the CPU; a precision named here is part of the trials' run ids")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic kernels in every search and fine-tune: on GPUs a rerun or a resumed "
                             "trial then repeats its numbers exactly, as on CPUs (slower; docs/fidelity.md)")
    parser.add_argument("--stop-grace", type=seconds, default=STOP_GRACE_S, metavar="SECONDS",
                        help="on SIGTERM (a time limit, a preemption, scancel), how long running trials get to "
                             f"checkpoint before the sweep exits (default {STOP_GRACE_S:.0f}); rerun to go on")
    parser.add_argument("--stall-limit", type=seconds, metavar="SECONDS",
                        help="stop and retry a trial without progress for this long (default per kind: searches "
                             f"{StallLimits().search:.0f}, fine-tunes {StallLimits().finetune:.0f}, measurements "
                             f"{StallLimits().measurement:.0f}; 0 turns the watchdog off)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show what Ray and Tune print too (by default their logs stay in Ray's log files)")
    parser.add_argument("--search-settings", metavar="FILE",
                        help="JSON {method: {setting: value}} laid over the preset's search settings, e.g. the "
                             "best.json of sweeps/tune_tamt.py")
    parser.add_argument("--throughput", metavar="FILE",
                        help="with --dry-run: GPU-hours from the figures bench/gpu_check.py --out FILE measured on "
                             "your GPU (in --precision, default bf16) instead of the V100 table's")
    return parser


def union(parts: Mapping[str, Presets]) -> Presets:
    """The presets of several sweeps as one: each preset lists every part's declarations (merged by run id)."""
    names = set.intersection(*(set(presets) for presets in parts.values()))
    return {preset: (lambda preset=preset: [d for presets in parts.values() for d in presets[preset]()])
            for preset in sorted(names)}


def sweep_main(name: str, presets: Presets, argv: Sequence[str] | None = None, *, description: str = "",
               out: TextIO | None = None, parts: Mapping[str, Presets] | None = None,
               results: ResultsPrinter | None = None, artifacts: ArtifactWriter | None = None) -> int:
    """Entry point of ``sweeps/<name>.py``; returns the process exit code (2: bad input, 1: failed trials).

    ``parts`` (``python -m sweeps``): the sweeps that ``presets`` unites, broken down in a dry run. ``results``:
    what prints the results table after the summary of a sweep that ran; ``None`` prints none. ``artifacts``: what
    writes the analysis (results table, figures, report) that the sweep's MLflow parent run then holds, once a
    sweep that was not interrupted ends (:func:`orchestrator.tracking.attach_artifacts`); ``None`` attaches none.
    """
    out = out or sys.stdout
    args = build_parser(description, presets).parse_args(argv)
    quiet_libraries()  # the driver reads model configs (and builds the built-in model once) before Ray starts
    if not args.verbose:  # MLflow's notes on creating its store's tables
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    if not (args.dry_run and args.preset):  # the address decides the preset, or the sweep will attach to it
        try:
            check_address_answers(args.address)
        except PlanError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    gpus = _has_gpu_or_cluster(args.address)
    preset = args.preset or ("paper" if gpus and "paper" in presets else "smoke")
    if preset not in presets:
        print(f"error: this sweep has no {preset} preset, the default here; choose with --preset "
              f"{'/'.join(sorted(presets))}", file=sys.stderr)
        return 2
    if args.preset is None:
        why = "a GPU or a Ray cluster was found" if gpus else "no GPU and no Ray cluster address were found"
        print(f"[tamt] preset: {preset} ({why}; choose with --preset {'/'.join(sorted(presets))})", file=out)
    try:
        declarations = presets[preset]()
        if args.search_settings:
            settings = read_search_settings(args.search_settings)
            declarations = [with_search_settings(d, settings) for d in declarations]
        if args.precision:
            declarations = [with_precision(d, args.precision) for d in declarations]
        studies = [d for d in declarations if isinstance(d, TamtStudy)]
        plan = plan_of([d for d in declarations if not isinstance(d, TamtStudy)])
        storage = Storage.at(args.storage)
        if args.throughput and not args.dry_run:
            raise PlanError("--throughput changes the GPU-hour estimate of a dry run only; add --dry-run")
        if args.dry_run:
            table = (measured_throughput(args.throughput, args.precision or "bf16") if args.throughput
                     else table_for(plan, on_gpu=gpus and preset != "smoke"))
            if parts:
                print_parts(parts, preset, out, table)
            if len(plan) or not studies:
                slots = max(1, int((args.num_cpus or os.cpu_count() or 1) // args.cpus_per_trial))
                print_plan(plan, name, preset, storage, out, table, slots)
            for study in studies:
                print_study(study, out, table)
            print_notes(notes_of(declarations), out)
            return 0
        with invoked_as("--all" if name == "all" and parts else " ".join(name.split("+")), preset):
            code = _run(name, plan, studies, storage, args, use_gpu=gpus and preset != "smoke", out=out,
                        results=results, artifacts=artifacts)
            print_notes(notes_of(declarations), out)
            return code
    except (PlanError, StorageError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"[tamt] interrupted: finished trials stay in {args.storage}, running ones resume from their last "
              "checkpoint; rerun the same command to go on", file=out)
        return 130


def _run(name: str, plan: Plan, studies: list[TamtStudy], storage: Storage, args: argparse.Namespace, *,
         use_gpu: bool, out: TextIO, results: ResultsPrinter | None,
         artifacts: ArtifactWriter | None = None) -> int:
    from orchestrator.resources import Resources
    from orchestrator.sweep import run_sweep
    from orchestrator.tuning import run_study

    resources = Resources(search_cpu=args.cpus_per_trial, finetune_cpu=args.cpus_per_trial,
                          search_gpu=args.gpus_per_search if args.gpus_per_search is not None else float(use_gpu),
                          finetune_gpu=(args.gpus_per_finetune if args.gpus_per_finetune is not None
                                        else float(use_gpu)), workers_per_search=args.workers_per_search)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise PlanError(f"--max-concurrent must be ≥ 1, got {args.max_concurrent}")
    ray_init = {"num_cpus": args.num_cpus} if args.num_cpus else {}
    complete = True
    stall_limits = StallLimits() if args.stall_limit is None else StallLimits.every(args.stall_limit)
    if len(plan):
        report = run_sweep(plan, name=name, storage=storage, mlflow_uri=args.mlflow_uri, resources=resources,
                           max_concurrent=args.max_concurrent, max_failures=args.max_failures,
                           checkpoint_every_s=args.checkpoint_every, ray_address=args.address, ray_init=ray_init,
                           out=out, stop_grace_s=args.stop_grace, stall_limits=stall_limits,
                           deterministic=args.deterministic, verbose=args.verbose)
        print_where(report, out, results)
        if report.signalled:
            return 128 + signal.SIGTERM
        if artifacts is not None and not report.interrupted:
            line = attach_artifacts(report.mlflow_uri, name, storage, artifacts)
            if line:
                print(line, file=out, flush=True)
        complete = report.complete
    for study in studies:
        report = run_study(study, storage=storage, mlflow_uri=args.mlflow_uri, resources=resources,
                           max_concurrent=args.max_concurrent, max_failures=args.max_failures,
                           checkpoint_every_s=args.checkpoint_every, ray_address=args.address, ray_init=ray_init,
                           out=out, deterministic=args.deterministic)
        print_study_report(report, out)
        complete = complete and report.completed >= study.trials
    return 0 if complete else 1


def print_parts(parts: Mapping[str, Presets], preset: str, out: TextIO, table: Throughput = THROUGHPUT["v100"]
                ) -> None:
    """Each sweep's own plan beside their union: what running them one by one, or together, costs."""
    print(f"sweeps, preset {preset}:      trials  searches  fine-tunes  measurements  {table.unit:>8s}", file=out)
    separate = 0.0
    sweeps_of: dict[str, int] = {}
    for name, presets in parts.items():
        declarations = presets[preset]()
        plan = plan_of([d for d in declarations if not isinstance(d, TamtStudy)])
        studies = [d for d in declarations if isinstance(d, TamtStudy)]
        hours = (sum(sum(h.values()) for h in gpu_hours(plan, table).values())
                 + sum(study_gpu_hours(study, table) for study in studies)) * 3600 / UNIT_SECONDS[table.unit]
        separate += hours
        for run_id in plan.run_ids():
            sweeps_of[run_id] = sweeps_of.get(run_id, 0) + 1
        searches = len(plan.searches) + sum(study.trials for study in studies)
        print(f"  {name:24s} {len(plan) + searches - len(plan.searches):8d}  {searches:8d}  {len(plan.finetunes):10d}"
              f"  {len(plan.measurements):12d}  {hours:8.1f}"
              + ("  (Optuna trials: drawn at run time, never shared)" if studies else ""), file=out)
    shared = sum(1 for count in sweeps_of.values() if count > 1)
    print(f"  {shared} trials belong to more than one sweep and run once; {separate:.1f} {table.unit} if every sweep "
          "ran on its own storage", file=out)


def study_gpu_hours(study: TamtStudy, table: Throughput = THROUGHPUT["v100"]) -> float:
    """A study's budget: its trials, each a search at the middle of the space (``table``'s pace)."""
    from orchestrator.estimate import search_seconds

    return study.trials * search_seconds(study.spec(study.midpoint()), table) / 3600


def print_study(study: TamtStudy, out: TextIO, table: Throughput = THROUGHPUT["v100"]) -> None:
    space = ", ".join(f"{k} ∈ [{lo:g}, {hi:g}]" for k, (lo, hi) in study.space.items())
    print(f"study {study.name}: {study.trials} Optuna trials of {study.method} at sparsity {study.sparsity:g} on "
          f"{study.model}, minimising {study.objective} over {space} (log-uniform); "
          f"{study_gpu_hours(study, table) * 3600 / UNIT_SECONDS[table.unit]:.1f} {table.unit}", file=out)


def print_study_report(report, out: TextIO) -> None:
    study = report.study
    print(f"[tamt] study {study.name}: {report.completed}/{study.trials} trials complete ({report.ran} ran now)",
          file=out)
    if report.best is not None:
        print(f"  best {study.objective} {report.best_value:.4f} at "
              + ", ".join(f"{k}={v:.4g}" for k, v in report.best[study.method].items()), file=out)
        print(f"  written to {report.best_file}; use it with: python sweeps/main_results.py --search-settings "
              f"{report.best_file}", file=out)


STAGE_NAMES = {"search": "mask searches", "finetune": "fine-tunes", "measure": "measurements"}


def print_plan(plan: Plan, name: str, preset: str, storage: Storage, out: TextIO,
               table: Throughput = THROUGHPUT["v100"], slots: int = 1) -> None:
    """The plan's trials and estimated hours per stage and method; for a CPU table also the wall time at ``slots``
    trials at a time."""
    from orchestrator.results import finished_run_ids

    done = finished_run_ids(storage) if storage.is_local and storage.local_root.exists() else set()
    counts, hours = plan.counts(), gpu_hours(plan, table)
    scale = 3600 / UNIT_SECONDS[table.unit]
    hours = {stage: {method: value * scale for method, value in values.items()} for stage, values in hours.items()}
    tables = {"search": plan.searches, "finetune": plan.finetunes, "measure": plan.measurements}
    print(f"sweep {name}, preset {preset}: {len(plan)} unique trials ("
          + ", ".join(f"{len(tables[stage])} {STAGE_NAMES[stage]}" for stage in tables) + ")", file=out)
    for stage, ids in tables.items():
        if not ids:
            continue
        finished = sum(1 for run_id in ids if run_id in done)
        print(f"  {stage:8s} {len(ids):6d} trials  {sum(hours[stage].values()):9.1f} {table.unit}"
              f"{f'  ({finished} already done)' if finished else ''}", file=out)
        for method, count in sorted(counts[stage].items()):
            print(f"    {method:10s} {count:6d}  {hours[stage].get(method, 0.0):9.1f} {table.unit}", file=out)
    waiting = sum(1 for spec in plan.specs() if plan.dependencies(spec))
    print(f"  dependencies: {waiting} trials wait for the searches that write their masks; "
          f"{len(plan) - len(plan.searches) - waiting} others wait for nothing", file=out)
    total = sum(sum(h.values()) for h in hours.values())
    print(f"  total {total:.1f} {table.unit} ({table.source})", file=out)
    if table.unit == "CPU-min":
        left = sum(trial_seconds(spec, table) for spec in plan.specs() if spec.run_id not in done) / 60
        print(f"  about {max(1, round(left / slots))} min of wall time here for the trials not done yet, {slots} "
              f"trial{'s' * (slots > 1)} at a time", file=out)


def print_where(report, out: TextIO, results: ResultsPrinter | None = None) -> None:
    storage = report.storage
    status = "complete" if report.complete else ("interrupted" if report.interrupted else "incomplete")
    print(f"[tamt] sweep {status}: {len(report.succeeded)} trials ran, {report.skipped} were already done, "
          f"{len(report.failed)} failed, {len(report.blocked)} blocked by a failed search", file=out)
    if report.signalled:
        print("[tamt] stopped on SIGTERM: the running trials checkpointed"
              + (f" ({report.cut_off} did not in time and resume from their last periodic checkpoint)"
                 if report.cut_off else "") + "; rerun the same command (or requeue the job) to go on", file=out)
    elif report.interrupted:
        print("[tamt] the trials that were running resume from their last checkpoint: rerun the same command to go "
              "on", file=out)
    for run_id, error in report.failed.items():
        print(f"  failed {run_id}: {error.splitlines()[0] if error else ''}", file=out)
    if results is not None:
        results(storage, out)
    print(f"  results table: {storage.table_path()}  (orchestrator.results.read_frame({storage.uri!r}))", file=out)
    print(f"  masks and run files: {storage.path('runs')}/<run_id>/", file=out)
    serve, page = runs_view(report.mlflow_uri, report.experiment_id)
    print(f"  MLflow runs: {page}" + (f"  (after: {serve})" if serve else ""), file=out)
    print(f"  figures and the full results table: python -m analysis.figures --runs {storage.uri} --out figures/",
          file=out)

