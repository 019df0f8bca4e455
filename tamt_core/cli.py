"""``tamt``: single runs from the shell, the way a researcher works before a sweep.

    tamt search {omp,rand,imp,tamt-mlm,tamt-kd} --sparsity S [--model M] [--seed N] [--steps T] --out DIR
    torchrun --nproc-per-node N -m tamt_core.cli search ...      (data-parallel over N processes)
    tamt pretrain-loss --mask FILE [--mask FILE ...] [--dense]
    tamt mask-info FILE
    tamt similarity FILE FILE
    tamt export --mask FILE --out DIR
    tamt finetune --mask FILE|--full --task T --seed N [--train-size N] [--model M] --out DIR
    tamt demo [--out DIR]

``--model`` takes a hub id, a local directory, or nothing (the built-in smoke model).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import types
import typing
from collections.abc import Iterator
from pathlib import Path

from tamt_core import hparams
from tamt_core.checkpoints import CHECKPOINT_EVERY_S
from tamt_core.console import quiet_libraries
from tamt_core.device import PRECISIONS, deterministic
from tamt_core.methods import METHODS
from tamt_core.methods.base import setting_names
from tamt_core.search.config import SearchConfig



def _parse_steps(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({int(s) for s in text.split(",") if s.strip()}))
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated step numbers such as 1000,2000: {text!r}") from error


def _sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"sparsity must be a number in [0, 1), got {text!r}") from error
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"sparsity must be in [0, 1) (0.7 = 70 % zeros), got {value}")
    return value


def seconds(text: str) -> float:
    """An argparse type: a number of seconds ≥ 0 (a negative or nan period is refused at parse time)."""
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from error
    if not value >= 0:  # nan too
        raise argparse.ArgumentTypeError(f"expected a number of seconds ≥ 0, got {value:g}")
    return value


DETERMINISTIC_HELP = ("deterministic kernels (torch's deterministic algorithms, cuBLAS workspace, math attention): on "
                      "a GPU a rerun or a resumed run repeats its numbers exactly, as on the CPU; slower")


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting of a registered method, from its settings dataclass (name, type, default, help): a flag
    says which methods take it, and a method refuses a setting it does not take. Absent flags keep the method's
    defaults (the paper's)."""
    owners: dict[str, list[str]] = {}
    declared = {}
    for method in METHODS.values():
        hints = typing.get_type_hints(method.settings)
        for f in dataclasses.fields(method.settings):
            owners.setdefault(f.name, []).append(method.name)
            declared.setdefault(f.name, (f, hints[f.name]))
    for name, (f, hint) in declared.items():
        flag, kind = "--" + name.replace("_", "-"), _scalar(hint)
        text = f"{', '.join(owners[name])}: {f.metadata.get('help', '')}"
        if kind is bool:
            negated = f.default is True
            parser.add_argument(f"--no-{name.replace('_', '-')}" if negated else flag, dest=name,
                                action="store_false" if negated else "store_true", default=argparse.SUPPRESS,
                                help=text)
        elif kind is tuple:
            parser.add_argument(flag, dest=name, type=_parse_steps, default=argparse.SUPPRESS, metavar="STEPS",
                                help=text)
        else:
            parser.add_argument(flag, dest=name, type=kind, choices=f.metadata.get("choices"),
                                default=argparse.SUPPRESS, help=text)


def _scalar(hint: object) -> type:
    """The flag type of a settings field's annotation: ``int | None`` → int, ``tuple[int, ...]`` → tuple."""
    options = [t for t in typing.get_args(hint) if t is not type(None)] if typing.get_origin(hint) in (
        typing.Union, types.UnionType) else [hint]
    kind = options[0]
    return typing.get_origin(kind) or kind


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tamt", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    search = commands.add_parser("search", help="find a subnetwork mask")
    search.add_argument("method", choices=list(METHODS))
    search.add_argument("--model", help="hub id or local directory (default: built-in smoke model)")
    search.add_argument("--data", help="WikiText-103 raw directory or hub id (default: built-in smoke corpus)")
    search.add_argument("--sparsity", type=_sparsity, required=True, help="fraction of weights zeroed, e.g. 0.7")
    search.add_argument("--seed", type=int, default=0,
                        help="seeds the random mask, the data order and the MLM corruption (default 0)")
    search.add_argument("--out", type=Path, required=True, help="directory for the mask files")
    add_setting_flags(search)
    search.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available; under torchrun the "
                                         "local rank's GPU)")
    search.add_argument("--deterministic", action="store_true", help=DETERMINISTIC_HELP)
    search.add_argument("--checkpoint-every", type=seconds, default=CHECKPOINT_EVERY_S, metavar="SECONDS",
                        help="IMP/TAMT: checkpoint at most this often, and at every saved mask (default "
                             f"{CHECKPOINT_EVERY_S:.0f}); rerun the same command to continue an interrupted search")

    loss = commands.add_parser("pretrain-loss", help="MLM / KD dev loss of subnetworks (Fig. 1, 4)")
    loss.add_argument("--mask", type=Path, action="append", default=[], help="mask file (repeatable)")
    loss.add_argument("--dense", action="store_true", help="also score the unpruned model")
    loss.add_argument("--model", help="override the model recorded in the mask")
    loss.add_argument("--data", help="WikiText-103 raw directory or hub id (default: built-in smoke corpus)")
    loss.add_argument("--objective", choices=("mlm", "kd", "both"), default="both")
    loss.add_argument("--kd-distance", choices=("cosine", "mse"), default="cosine",
                      help="Eq. 6 cosine, or the MSE the released eval scripts used")
    loss.add_argument("--seed", type=int, default=hparams.DEV_LOSS_SEED,
                      help="seed of the MLM corruption and KD sequences")
    loss.add_argument("--batch-size", type=int, default=hparams.DEV_LOSS_BATCH_SIZE)
    loss.add_argument("--block-size", type=int, default=hparams.TAMT_MLM.max_length)
    loss.add_argument("--max-batches", type=int, help="score only the first N batches")
    loss.add_argument("--device")
    loss.add_argument("--json", action="store_true", help="print JSON instead of a table")

    info = commands.add_parser("mask-info", help="metadata and per-matrix sparsity of a mask file")
    info.add_argument("file", type=Path)
    info.add_argument("--json", action="store_true")

    sim = commands.add_parser("similarity", help="mean per-matrix IoU of kept weights (§4.2.4)")
    sim.add_argument("first", type=Path)
    sim.add_argument("second", type=Path)

    export = commands.add_parser("export", help="write θ0 ⊙ M as a plain transformers directory")
    export.add_argument("--mask", type=Path, required=True)
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--model", help="override the model recorded in the mask")

    tune = commands.add_parser("finetune", help="fine-tune θ0 ⊙ M (or the full model) on a GLUE task or SQuAD")
    which = tune.add_mutually_exclusive_group(required=True)
    which.add_argument("--mask", type=Path, help="mask file from `tamt search`")
    which.add_argument("--full", action="store_true", help="no mask: the paper's full-model baseline")
    tune.add_argument("--task", required=True, help="cola, sst2, rte, mrpc, stsb, mnli or squad")
    tune.add_argument("--seed", type=int, required=True, help="fine-tuning seed (the paper: 1, 2, 3)")
    tune.add_argument("--out", type=Path, required=True,
                      help="run directory: curve.json, result.json, checkpoints; rerun to resume")
    tune.add_argument("--model", help="hub id or directory (default: the mask's model, else the built-in one)")
    tune.add_argument("--data", help="dataset hub id, 'hub', or local directory (default: built-in smoke data)")
    tune.add_argument("--train-size", type=int, help="low-data fine-tuning on N training examples (Fig. 7)")
    tune.add_argument("--subset-unit", choices=("questions", "features"), default="questions",
                      help="SQuAD: count --train-size in questions, or in 384-token features as the released code")
    tune.add_argument("--select-metric", help="metric that picks the best evaluation (default: Tab. 1's; e.g. "
                                              "accuracy_mismatched for MNLI as the released code)")
    tune.add_argument("--epochs", type=int, help="default: Tab. 1 (3; SQuAD 2)")
    tune.add_argument("--lr", type=float, help="default: Tab. 1 (2e-5; SQuAD 3e-5)")
    tune.add_argument("--batch-size", type=int, help="default: Tab. 1 (32; SQuAD 16)")
    tune.add_argument("--eval-every", type=int, help="default: Tab. 1 (50; MNLI 500; SQuAD 1000)")
    tune.add_argument("--keep-checkpoint", action="store_true", help="keep the fine-tuned state at the end")
    tune.add_argument("--precision", choices=PRECISIONS,
                      help="bf16 or fp32 (the paper's); default bf16 on a GPU, fp32 on the CPU")
    tune.add_argument("--deterministic", action="store_true", help=DETERMINISTIC_HELP)
    tune.add_argument("--device")

    demo = commands.add_parser("demo", help="OMP vs TAMT-MLM at 70 %% on the built-in model, losses side by side")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--steps", type=int, default=40)
    demo.add_argument("--sparsity", type=_sparsity, default=0.7)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    quiet_libraries()
    from tamt_core.checkpoints import CheckpointError, RunStopped
    from tamt_core.outputs import OutputDirectoryError
    from tamt_core.data.pretrain import DatasetUnavailableError
    from tamt_core.masks import MaskFileError
    from tamt_core.models import ModelUnavailableError

    try:
        return COMMANDS[args.command](args)
    except RunStopped as stopped:  # SIGTERM: a time limit, scancel
        print(f"tamt: {stopped}: rerun the same command", file=sys.stderr)
        return 128 + signal.SIGTERM
    except hparams.SettingError as error:  # the config names its field; here it is a flag
        print(f"tamt: error: {error} (--{error.setting.replace('_', '-')})", file=sys.stderr)
        return 2
    except (OutputDirectoryError, CheckpointError) as error:
        print(f"tamt: error: {error} (--out)", file=sys.stderr)
        return 2
    except ModelUnavailableError as error:
        print(f"tamt: error: {error} (--model)", file=sys.stderr)
        return 2
    except (ValueError, DatasetUnavailableError, MaskFileError,
            FileNotFoundError) as error:
        print(f"tamt: error: {error}", file=sys.stderr)
        return 2


def _search(args: argparse.Namespace) -> int:
    from tamt_core.search import run_search

    given = {name: getattr(args, name) for method in METHODS.values() for name in setting_names(method.settings)
             if hasattr(args, name)}
    smoke = dict(METHODS[args.method].smoke) if args.model is None else {}
    config = SearchConfig.of(args.method, args.sparsity, args.seed, **{**smoke, **given})  # refuses foreign flags
    if smoke:
        chosen = ", ".join(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"
                           for name, value in smoke.items() if name not in given)
        print(f"[tamt] the built-in model with {args.method}'s smoke settings ({chosen}; docs/smoke.md measured "
              "them); the paper's settings (Tab. 1, Tab. 2) apply with --model bert-base-uncased, or set each flag "
              "yourself", file=sys.stderr, flush=True)
    with _process_group(args.device) as device, _stop_on_sigterm() as stop, deterministic(args.deterministic):
        result = run_search(config, args.out, model=args.model, data=args.data, device=device,
                            checkpoint_every_s=args.checkpoint_every, stop_requested=stop.is_set)
    for path in result.paths:
        print(path)
    return 0


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[threading.Event]:
    """SIGTERM (a scheduler's time limit or preemption, ``scancel``) asks the run to write a checkpoint and stop,
    instead of ending the process where it is; the same command resumes."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _process_group(device: str | None) -> Iterator[str | None]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): join the process group (nccl on GPUs, gloo on CPUs) and use the
    local rank's GPU; otherwise one process on ``device``."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield device
        return
    use_gpu = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if use_gpu:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if use_gpu else "gloo")
    try:
        yield device
        dist.barrier()  # every rank is past its last collective before any tears the group down (gloo aborts)
    finally:
        dist.destroy_process_group()


def _pretrain_loss(args: argparse.Namespace) -> int:
    from tamt_core.subnetwork import pretrain_losses
    from tamt_core.masks import load_mask

    if not args.mask and not args.dense:
        raise ValueError("give at least one --mask FILE, or --dense for the unpruned model")
    masks = {"dense": None} if args.dense else {}
    masks |= {str(path): load_mask(path) for path in args.mask}
    objectives = ("mlm", "kd") if args.objective == "both" else (args.objective,)
    results = pretrain_losses(masks, model=args.model, data=args.data, objectives=objectives,
                              kd_distance=args.kd_distance, seed=args.seed, batch_size=args.batch_size,
                              block_size=args.block_size, max_batches=args.max_batches, device=args.device)
    _print_results(results, args.json)
    return 0


def _print_results(results: dict[str, dict[str, float]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(results, indent=2))
        return
    columns = sorted({key for row in results.values() for key in row})
    width = max(len(label) for label in results)
    print(f"{'subnetwork':<{width}}  " + "  ".join(f"{c:>10}" for c in columns))
    for label, row in results.items():
        print(f"{label:<{width}}  " + "  ".join(f"{row.get(c, float('nan')):>10.4f}" for c in columns))


def _mask_info(args: argparse.Namespace) -> int:
    from tamt_core.masks import load_mask, mask_summary

    summary = mask_summary(load_mask(args.file))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(json.dumps({k: v for k, v in summary.items() if k != "matrices"}, indent=2))
    for row in summary.get("matrices", []):
        print(f"  {row['name']:<55} {str(tuple(row['shape'])):>14} zeros {row['zeros']:>10}  "
              f"sparsity {row['sparsity']:.4f}")
    return 0


def _similarity(args: argparse.Namespace) -> int:
    from tamt_core.masks import load_mask, similarity

    value = similarity(load_mask(args.first), load_mask(args.second))
    print(json.dumps({"similarity": value, "distance": 1.0 - value}))
    return 0


def _export(args: argparse.Namespace) -> int:
    from tamt_core.subnetwork import export_subnetwork
    from tamt_core.masks import load_mask

    print(export_subnetwork(load_mask(args.mask), args.out, model=args.model))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from tamt_core.finetune import FinetuneConfig, finetune
    from tamt_core.masks import load_mask
    from tamt_core.models import BUILTIN_MODEL_NAME

    mask = load_mask(args.mask) if args.mask else None
    model = args.model or (mask.meta.get("model") if mask is not None else None) or BUILTIN_MODEL_NAME
    config = FinetuneConfig(task=args.task, seed=args.seed, model=model, data=args.data,
                            mask_hash=None if mask is None else mask.content_hash, train_size=args.train_size,
                            subset_unit=args.subset_unit, select_metric=args.select_metric, lr=args.lr,
                            batch_size=args.batch_size, epochs=args.epochs, eval_every=args.eval_every,
                            precision=args.precision)
    with _stop_on_sigterm() as stop, deterministic(args.deterministic):
        result = finetune(config, args.out, mask=mask, mask_path=None if mask is None else str(args.mask.resolve()),
                          device=args.device, keep_checkpoint=args.keep_checkpoint, stop_requested=stop.is_set)
    best = result.best
    print(json.dumps({"run_id": result.run_id, "task": config.task, "select_metric": result.select_metric,
                      "best_score": result.best_score, "best_step": None if best is None else best.step,
                      "best_metrics": None if best is None else best.metrics,
                      "result": str(args.out / "result.json")}, indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    """A first look: OMP vs a short TAMT-MLM run on the built-in model, scored side by side.

    The smoke settings (short blocks, a raised learning rate, few steps) make the run fit a CPU in minutes; they
    are not the paper's (Tab. 1), which `tamt search` uses by default.
    """
    from tamt_core.subnetwork import pretrain_losses
    from tamt_core.masks import load_mask
    from tamt_core.search import run_search

    omp = run_search(SearchConfig.of("omp", args.sparsity), args.out / "omp").paths[-1]
    tamt = run_search(SearchConfig.of("tamt-mlm", args.sparsity, steps=args.steps, lr=2e-3, block_size=128,
                                      batch_size=8), args.out / "tamt-mlm").paths[-1]
    results = pretrain_losses({"dense": None, "omp": load_mask(omp), "tamt-mlm": load_mask(tamt)},
                              block_size=128, max_batches=8)
    _print_results(results, as_json=False)
    (args.out / "pretrain_losses.json").write_text(json.dumps(results, indent=2))
    return 0


COMMANDS = {"search": _search, "pretrain-loss": _pretrain_loss, "mask-info": _mask_info,
            "similarity": _similarity, "export": _export, "finetune": _finetune, "demo": _demo}

if __name__ == "__main__":
    sys.exit(main())
