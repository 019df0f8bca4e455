"""Fine-tuning cost: a masked model's step against a dense one's, and training examples/s per task.

Two parts, each printed as a table (``--json PATH`` appends the full record as one JSON line):

* **ratio** (``--part ratio``): one fixed random batch (``--batch-size`` × ``--seq-len``, Tab. 1: 32 × 128) through a
  sequence-classification model of one shape, timed with ``tamt_core.finetune.train_step`` (the loop's own step:
  forward under the loop's autocast, backward, clip at 1.0, AdamW, schedule, ``zero_grad``), once dense and once
  with a ``--sparsity`` (70 %) mask baked in by ``bake_fixed_mask``, as the loop does; ``--parametrized`` adds the
  same mask attached as a parametrization (``apply_fixed_mask``, how fine-tunes masked before 2026-12). Iterations
  alternate between the models so drifts of the machine hit them alike; medians after ``--warmup``, of wall time and
  of the process's CPU time (on a CPU shared with other work, the CPU time of a ``--threads 1`` run is the steadier
  measure). Target: masked / dense ≤ 1.05.
* **tasks** (``--part tasks``): the real loop's data path for each task (``load_task_data``: the built-in smoke data
  by default, ``--data DIR`` for real GLUE/SQuAD), the first ``--task-steps`` batches of Tab. 1's batch size, timed
  through ``train_step``: examples/s per task. From those, the implied device-hours of one paper cell (one mask, one
  fine-tuning seed, the 7 tasks at Tab. 1's training-set sizes and epochs; evaluation not included). Smoke sentences
  are shorter than GLUE's, so on the smoke data the hours are a lower bound; run with ``--data`` on real data for
  the paper's figure.

``python bench/bench_finetune.py --help``; ``bench/README.md`` lists the usual invocations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from torch import nn
from transformers import AutoTokenizer, DataCollatorWithPadding

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step_time import CONFIGS, random_batch, synchronize

from tamt_core import hparams
from tamt_core.finetune import FinetuneConfig, load_task_data, task_model, train_batches, train_step
from tamt_core.masks.masked_model import apply_fixed_mask, bake_fixed_mask, weight_shapes
from tamt_core.models import BUILTIN_MODEL_NAME, resolve_source
from tamt_core.tasks import TASKS, get_task
from tamt_core.training import adamw_with_schedule, to_device

SCHEDULE_STEPS = 10_000
"""Linear-decay length while timing: the learning rate stays near Tab. 1's."""


def _optimizer(model: nn.Module, lr: float):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, schedule = adamw_with_schedule(params, lr=lr, weight_decay=hparams.FINETUNE_WEIGHT_DECAY,
                                              eps=hparams.FINETUNE_ADAM_EPSILON, total_steps=SCHEDULE_STEPS)
    return params, optimizer, schedule


def _classifier(config: str, model: str | None, seed: int) -> nn.Module:
    if model is not None:
        return task_model(get_task("sst2"), resolve_source(model)[1], seed)
    from transformers import BertConfig, BertForSequenceClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BertForSequenceClassification(BertConfig(**CONFIGS[config], num_labels=2))


def _random_mask(model: nn.Module, sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    """A uniform random mask at ``sparsity``: step time does not depend on which entries are kept."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(shape, generator=generator) >= sparsity for name, shape in weight_shapes(model).items()}


def _timed(device: torch.device, fn) -> float:
    return _timed_both(device, fn)[0]


def _timed_both(device: torch.device, fn) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds (all threads) of ``fn``."""
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def part_ratio(args, device: torch.device) -> dict:
    names = ("dense", "masked", "parametrized") if args.parametrized else ("dense", "masked")
    models = {name: _classifier(args.config, args.model, 0) for name in names}
    mask = _random_mask(models["dense"], args.sparsity, 0)
    if args.parametrized:
        apply_fixed_mask(models["parametrized"], mask)
    steps = {}
    for name, model in models.items():
        model.to(device).train()
        if name == "masked":
            bake_fixed_mask(model, mask)  # as tamt_core.finetune's _set_up: after the move to the device
        params, optimizer, schedule = _optimizer(model, hparams.FINETUNE["sst2"].lr)
        batch = random_batch(model.config.vocab_size, args.batch_size, args.seq_len, 0, device)
        batch = {k: v for k, v in batch.items() if k != "labels"} | {
            "labels": torch.randint(0, 2, (args.batch_size,), generator=torch.Generator().manual_seed(0)).to(device)}
        steps[name] = (lambda m=model, b=batch, p=params, o=optimizer, s=schedule: train_step(m, b, p, o, s))
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.warmup + args.steps):
        for name in names:
            wall, cpu = _timed_both(device, steps[name])
            if i >= args.warmup:
                times[name].append(wall)
                cpu_times[name].append(cpu)
    wall = {name: statistics.median(times[name]) for name in names}
    cpu = {name: statistics.median(cpu_times[name]) for name in names}
    record = {"dense_step_s": wall["dense"], "masked_step_s": wall["masked"], "ratio": wall["masked"] / wall["dense"],
              "cpu_step_s": cpu, "cpu_ratio": cpu["masked"] / cpu["dense"], "times": times, "cpu_times": cpu_times}
    if args.parametrized:
        record |= {"parametrized_step_s": wall["parametrized"],
                   "parametrized_ratio": wall["parametrized"] / wall["dense"],
                   "parametrized_cpu_ratio": cpu["parametrized"] / cpu["dense"]}
    print(f"\nstep time, batch {args.batch_size} × {args.seq_len}, sparsity {args.sparsity}, "
          f"{args.model or args.config}, {device}, {torch.get_num_threads()} threads; medians of wall and CPU time")
    for name in names:
        label = {"masked": "masked (baked)", "parametrized": "parametrized"}.get(name, name)
        print(f"  {label:15} {wall[name] * 1e3:9.1f} ms wall  {cpu[name] * 1e3:9.1f} ms CPU"
              + ("" if name == "dense" else f"   ratio to dense {wall[name] / wall['dense']:.3f} wall, "
                                            f"{cpu[name] / cpu['dense']:.3f} CPU"))
    print("  target: masked / dense ≤ 1.05")
    return record


def part_tasks(args, device: torch.device) -> dict:
    rows = {}
    model_name = args.model or BUILTIN_MODEL_NAME
    tokenizer = AutoTokenizer.from_pretrained(resolve_source(model_name)[1])
    collate = DataCollatorWithPadding(tokenizer)
    for name in args.tasks:
        task = get_task(name)
        tab1 = hparams.FINETUNE[task.name]
        config = FinetuneConfig(task=task.name, seed=1, model=model_name, data=args.data)
        data = load_task_data(task, config, tokenizer)
        model = task_model(task, resolve_source(model_name)[1], 1).to(device).train()
        params, optimizer, schedule = _optimizer(model, tab1.lr)
        batches = train_batches(data.train, collate, tab1.batch_size, 1, 0, 0)
        times, examples, tokens = [], 0, 0
        for i, batch in enumerate(batches):
            if i >= args.task_warmup + args.task_steps:
                break
            batch = to_device(batch, device)
            t = _timed(device, lambda b=batch, m=model, p=params, o=optimizer, s=schedule: train_step(m, b, p, o, s))
            if i >= args.task_warmup:
                times.append(t)
                examples += int(batch["input_ids"].shape[0])
                tokens += int(batch["input_ids"].numel())
        per_s = examples / sum(times)
        hours = task.paper_train_size * tab1.max_epochs / per_s / 3600
        rows[task.name] = {"examples_per_s": per_s, "padded_tokens_per_example": tokens / examples,
                           "paper_train_size": task.paper_train_size, "epochs": tab1.max_epochs,
                           "implied_hours": hours}
    total = sum(r["implied_hours"] for r in rows.values())
    print(f"\ntraining examples/s per task ({model_name}, {device}, data: {args.data or 'built-in smoke data'})")
    print(f"  {'task':6} {'ex/s':>9} {'tokens/ex':>10} {'train size':>11} {'epochs':>6} {'hours':>8}")
    for name, r in rows.items():
        print(f"  {name:6} {r['examples_per_s']:9.1f} {r['padded_tokens_per_example']:10.1f} "
              f"{r['paper_train_size']:11,d} {r['epochs']:6d} {r['implied_hours']:8.2f}")
    print(f"  one paper cell (7 tasks × 1 seed, Tab. 1 sizes, training only): {total:.2f} h on this device; "
          f"× 3 fine-tuning seeds: {3 * total:.2f} h")
    return {"tasks": rows, "cell_hours": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("ratio", "tasks", "both"), default="both")
    parser.add_argument("--config", choices=tuple(CONFIGS), default="minilm", help="random-weight shape (ratio)")
    parser.add_argument("--model", help="real checkpoint (hub id or directory); tasks default: the built-in model")
    parser.add_argument("--data", help="downstream data source (default: built-in smoke data)")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--parametrized", action="store_true",
                        help="ratio: also time the mask attached as a parametrization (the pre-2026-12 fine-tune step)")
    parser.add_argument("--batch-size", type=int, default=hparams.FINETUNE["sst2"].batch_size)
    parser.add_argument("--seq-len", type=int, default=hparams.FINETUNE["sst2"].max_length)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tasks", type=lambda s: s.split(","), default=list(TASKS))
    parser.add_argument("--task-steps", type=int, default=8)
    parser.add_argument("--task-warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", type=Path, help="append the full record to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    device = torch.device(args.device)
    record = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "loadavg": os.getloadavg()}
    if args.part in ("ratio", "both"):
        record["ratio"] = part_ratio(args, device)
    if args.part in ("tasks", "both"):
        record["tasks"] = part_tasks(args, device)
    if args.json:
        with args.json.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
