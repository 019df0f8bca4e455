"""Step time of TAMT-MLM mask training against dense MLM training, on one model and one batch, in one process.

What is timed (each a median over ``--steps`` iterations after ``--warmup`` iterations; CUDA is synchronised before
every clock read):

* **dense**: the dense MLM training step: every weight and the MLM head trainable, AdamW (Tab. 1 TAMT-MLM values:
  lr 5e-5, no weight decay, linear decay), forward through ``tamt_core.losses.mlm_loss``, backward, gradient
  clipping at norm 1, optimizer and schedule step, ``zero_grad``.
* **tamt**: the same step on a model prepared exactly as ``tamt_core.methods.tamt.TAMT.search`` prepares it
  (``TAMT.trainable_scores``: ``initial_scores`` from OMP, weights frozen, scores + MLM head minus the tied decoder
  trainable, AdamW), *without* the threshold re-set.
* **reset (banded)**: ``ThresholdController.reset()`` right after that step: the per-step τ re-set of TAMT, with the
  scores moved by a real optimizer step since the previous re-set (so the banded selection sees realistic drift).
* **reset (full kthvalue)**: the naive alternative, ``torch.kthvalue`` over every whole matrix
  (``tamt_core.methods.threshold.kth_smallest``); the values are computed, compared with the banded result (they must be
  equal) and discarded.

The banded re-set is at its slowest in the first ~100 TAMT steps: the scores start at 0 and α·φ and Adam moves them
in steps of about one learning rate, so many sit near τ and the band holds 10-50 % of the entries (printed as "in the
starting band"). ``--pretrain-steps N`` runs N untimed TAMT steps first to time a later phase (after 150 steps the band
holds ~0.3 %).

Dense and TAMT iterations are interleaved (dense step, TAMT step, banded reset, full reset, repeat), so slow drifts
of the machine (other processes, clocks) hit both sides alike. The headline figure is
``(TAMT step + banded reset) / dense step``; the paper's Tab. 3 puts TAMT at the cost of dense MLM training, so the
target is ≤ 1.05.

Run ``python bench/bench_step_time.py --help``; ``bench/README.md`` lists the usual invocations.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from torch import nn

from tamt_core.device import autocast as tamt_autocast
from tamt_core.hparams import MLM_PROBABILITY, TAMT_MLM
from tamt_core.losses import mlm_loss
from tamt_core.search.config import SearchConfig
from tamt_core.methods.tamt import TAMT, ThresholdController
from tamt_core.methods.threshold import kth_smallest
from tamt_core.training import adamw_with_schedule

CONFIGS: dict[str, dict[str, int]] = {
    # The shape of tests/conftest.py's tiny BERT: a smoke shape, dominated by the 30522-row embedding.
    "tiny": dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64),
    # The built-in smoke model's shape (all-MiniLM-L6-v2).
    "minilm": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536),
    # BERT-base: 74 masked matrices, 108,965,376 masked entries.
    "base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072),
}
SCHEDULE_STEPS = 28_000
"""Length of the linear-decay schedule: about Tab. 1's 2 epochs, so the lr stays ≈ 5e-5 while benchmarking."""


# --- building blocks (shared with bench_finetune.py) -------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp_context(device: torch.device, dtype: str) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast as the training loops use it (``tamt_core.device.autocast``, CUDA only), or plain fp32."""
    if dtype == "bf16":
        if device.type != "cuda":
            raise SystemExit("--dtype bf16 needs CUDA: tamt_core.device.autocast is a no-op on the CPU. "
                             "Use --dtype fp32 (the CPU default).")
        return lambda: tamt_autocast(device)
    return contextlib.nullcontext


def build_model(config: str, model: str | None, seed: int) -> nn.Module:
    """A BERT MLM model with a pooler, as ``tamt_core.models.load_pretrained`` returns one (74 matrices for base).

    ``model`` (a local directory or hub id) loads real weights; otherwise a BERT of shape ``config`` is initialised
    randomly under ``seed``.
    """
    if model is not None:
        from tamt_core.models import load_pretrained

        return load_pretrained(model).model
    from transformers import BertConfig, BertForMaskedLM
    from transformers.models.bert.modeling_bert import BertPooler

    bert_config = BertConfig(**CONFIGS[config])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = BertForMaskedLM(bert_config)
        net.bert.pooler = BertPooler(bert_config)  # MLM classes drop it; the masked set includes it (§1.1)
    return net


def random_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int, device: torch.device
                 ) -> dict[str, torch.Tensor]:
    """Random token ids, full attention, and labels at exactly ⌊15 %⌉ of the positions (the rest −100)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, vocab_size, (batch_size, seq_len), generator=generator)
    n_labels = max(1, round(MLM_PROBABILITY * batch_size * seq_len))
    labels = torch.full((batch_size * seq_len,), -100, dtype=torch.long)
    picked = torch.randperm(batch_size * seq_len, generator=generator)[:n_labels]
    labels[picked] = input_ids.reshape(-1)[picked]
    flat_ids = input_ids.reshape(-1).clone()
    flat_ids[picked] = 103  # [MASK] in the BERT uncased vocabulary
    batch = {
        "input_ids": flat_ids.view(batch_size, seq_len),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        "token_type_ids": torch.zeros(batch_size, seq_len, dtype=torch.long),
        "labels": labels.view(batch_size, seq_len),
    }
    return {k: v.to(device) for k, v in batch.items()}


class MLMStep:
    """One MLM training step over a fixed batch, with its parameters and optimizer; ``phases()`` times the parts."""

    def __init__(self, model: nn.Module, trainable: list[nn.Parameter], batch: dict[str, torch.Tensor],
                 amp: Callable[[], contextlib.AbstractContextManager], lr: float = TAMT_MLM.lr,
                 weight_decay: float = TAMT_MLM.weight_decay) -> None:
        self.model, self.trainable, self.batch, self.amp = model, trainable, batch, amp
        self.optimizer, self.schedule = adamw_with_schedule(trainable, lr=lr, weight_decay=weight_decay,
                                                            eps=TAMT_MLM.adam_epsilon, total_steps=SCHEDULE_STEPS)
        self.last_loss = math.nan

    def __call__(self) -> torch.Tensor:
        # Gradients are cleared at the start, so a threshold re-set right after the step still sees them (as in
        # tamt_core.methods.tamt, where the re-set runs between the optimizer step and zero_grad).
        self.optimizer.zero_grad(set_to_none=True)
        with self.amp():
            loss = mlm_loss(self.model, self.batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, TAMT_MLM.max_grad_norm)
        self.optimizer.step()
        self.schedule.step()
        return loss

    def phases(self, device: torch.device) -> dict[str, float]:
        """The same step with a clock read (after a sync) between forward, backward, clip and optimizer."""
        self.optimizer.zero_grad(set_to_none=True)
        clock = [_now(device)]
        with self.amp():
            loss = mlm_loss(self.model, self.batch)
        clock.append(_now(device))
        loss.backward()
        clock.append(_now(device))
        torch.nn.utils.clip_grad_norm_(self.trainable, TAMT_MLM.max_grad_norm)
        clock.append(_now(device))
        self.optimizer.step()
        self.schedule.step()
        clock.append(_now(device))
        return dict(zip(("forward", "backward", "clip", "optimizer"), (b - a for a, b in zip(clock, clock[1:]))))


def dense_step(model: nn.Module, batch: dict[str, torch.Tensor], amp) -> MLMStep:
    """Dense MLM training: every parameter (encoder, pooler, MLM head, tied decoder) trainable."""
    model.train()
    params = [p.requires_grad_(True) for p in model.parameters()]
    return MLMStep(model, params, batch, amp)


@dataclass
class TamtSetup:
    step: MLMStep
    thresholds: ThresholdController
    setup_s: dict[str, float] = field(default_factory=dict)


def tamt_step(model: nn.Module, batch: dict[str, torch.Tensor], amp, sparsity: float,
              rounding: str = "floor") -> TamtSetup:
    """TAMT-MLM prepared by ``TAMT.trainable_scores``, the set-up ``TAMT.search`` runs (§3.4): OMP-initialised
    scores, frozen weights, trainable scores and MLM head except the decoder tied to the frozen embedding."""
    started = time.perf_counter()
    config = SearchConfig.of(method="tamt-mlm", sparsity=sparsity, zero_rounding=rounding)
    thresholds, trainable = TAMT("mlm").trainable_scores(model, config)
    model.train()
    step = MLMStep(model, trainable, batch, amp)
    return TamtSetup(step, thresholds, {"total": time.perf_counter() - started})


@torch.no_grad()
def band_fraction(thresholds: ThresholdController) -> float:
    """Fraction of all score entries inside the band the next banded re-set starts from ([τ − w, τ + w]).

    A diagnostic of how much the banded selection has to select from (before any widening); not timed.
    """
    inside = total = 0
    for name, mask in thresholds.masks.items():
        flat, width = mask.scores.detach().reshape(-1), thresholds.search.width(name, mask.threshold)
        centre = mask.threshold.to(flat.dtype)
        if torch.isfinite(centre):
            inside += int(((flat >= centre - width) & (flat <= centre + width)).sum())
        total += flat.numel()
    return inside / total


@torch.no_grad()
def full_kthvalue_thresholds(thresholds: ThresholdController) -> dict[str, torch.Tensor]:
    """The naive re-set: ``torch.kthvalue`` over every whole score matrix (computed, not written)."""
    return {name: kth_smallest(mask.scores, thresholds.zeros[name]) for name, mask in thresholds.masks.items()}


def _now(device: torch.device) -> float:
    synchronize(device)
    return time.perf_counter()


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    start = _now(device)
    out = fn()
    return _now(device) - start, out


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


# --- the benchmark ------------------------------------------------------------------------------------------------


def parser(description: str = __doc__.splitlines()[0], **defaults: Any) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", choices=sorted(CONFIGS), default="minilm",
                   help="shape of the randomly initialised BERT (ignored with --model); default: minilm")
    p.add_argument("--model", default=None,
                   help="local checkpoint directory or hub id to load instead of random weights (offline: a dir)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=6, help="timed iterations (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first (allocator, first full reset)")
    p.add_argument("--pretrain-steps", type=int, default=0,
                   help="untimed TAMT steps (with re-sets) before the timed ones, to time the re-set later in "
                        "training, when fewer scores sit near τ (default 0: the first steps, the band's worst case)")
    p.add_argument("--sparsity", type=float, default=0.5, help="TAMT target sparsity per matrix")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default=None,
                   help="bf16 autocast (CUDA only, as the training loops) or fp32; default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--breakdown", action="store_true",
                   help="afterwards, time forward/backward/clip/optimizer separately (extra --steps iterations)")
    p.add_argument("--no-dense", action="store_true", help="skip the dense baseline (e.g. when memory is short)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="PATH", help="append the results as one JSON line to PATH")
    p.set_defaults(**defaults)
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark described by ``args`` (see :func:`parser`) and return the result record."""
    from tamt_core.device import pick_device

    try:
        device = pick_device(args.device)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    amp = amp_context(device, dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < 1 or args.warmup < 0 or args.pretrain_steps < 0:
        raise SystemExit("--steps must be ≥ 1, --warmup and --pretrain-steps ≥ 0")

    load_before = _loadavg()
    if device.type == "cpu" and load_before is not None and load_before > 0.75:
        print(f"warning: load average {load_before:.2f} before starting: other processes compete for the "
              f"{os.cpu_count()} cores, CPU timings will be noisy (try --threads 1)", file=sys.stderr)
    started = time.perf_counter()
    template = build_model(args.config, args.model, args.seed)
    vocab_size = template.config.vocab_size
    batch = random_batch(vocab_size, args.batch_size, args.seq_len, args.seed, device)
    dense = None
    if not args.no_dense:
        dense = dense_step(copy.deepcopy(template).to(device), batch, amp)
    tamt = tamt_step(template.to(device), batch, amp, args.sparsity)
    del template
    build_s = time.perf_counter() - started
    n_masked = sum(m.scores.numel() for m in tamt.thresholds.masks.values())

    times: dict[str, list[float]] = {"dense": [], "tamt": [], "reset_banded": [], "reset_full": []}
    peaks: dict[str, float] = {}
    losses: dict[str, list[float]] = {"dense": [], "tamt": []}
    band_fractions: list[float] = []
    mismatches = 0
    fallbacks_before = 0
    pre_started = time.perf_counter()
    for _ in range(args.pretrain_steps):  # untimed TAMT steps: later phases of training have other score spreads
        tamt.step()
        tamt.thresholds.reset()
    pretrain_s = time.perf_counter() - pre_started
    for i in range(args.warmup + args.steps):
        measured = i >= args.warmup
        if i == args.warmup:
            fallbacks_before = tamt.thresholds.search.full_selections
        record: dict[str, float] = {}
        if dense is not None:
            _peak_reset(device)
            record["dense"], loss = timed(dense, device)
            peaks["dense"] = max(peaks.get("dense", 0.0), _peak_gib(device) or 0.0)
            losses["dense"].append(float(loss.detach()))
        _peak_reset(device)
        record["tamt"], loss = timed(tamt.step, device)
        peaks["tamt"] = max(peaks.get("tamt", 0.0), _peak_gib(device) or 0.0)
        losses["tamt"].append(float(loss.detach()))
        if measured:
            band_fractions.append(band_fraction(tamt.thresholds))
        record["reset_banded"], _ = timed(tamt.thresholds.reset, device)
        record["reset_full"], full = timed(lambda: full_kthvalue_thresholds(tamt.thresholds), device)
        mismatches += sum(int(full[name] != mask.threshold) for name, mask in tamt.thresholds.masks.items()
                          if mask.scores.grad is not None)  # the re-set skips matrices no loss reaches
        if measured:
            for key, value in record.items():
                times[key].append(value)
    fallbacks = tamt.thresholds.search.full_selections - fallbacks_before

    breakdown: dict[str, dict[str, float]] = {}
    if args.breakdown:
        sides = {"tamt": tamt.step} if dense is None else {"dense": dense, "tamt": tamt.step}
        for name, step in sides.items():
            phase_times = [step.phases(device) for _ in range(args.steps)]
            breakdown[name] = {k: statistics.median(p[k] for p in phase_times) for k in phase_times[0]}
        breakdown["tamt"]["reset_banded"] = statistics.median(times["reset_banded"])

    median = {k: statistics.median(v) for k, v in times.items() if v}
    with_reset = statistics.median(t + r for t, r in zip(times["tamt"], times["reset_banded"]))
    with_full = statistics.median(t + r for t, r in zip(times["tamt"], times["reset_full"]))
    tokens = args.batch_size * args.seq_len
    result: dict[str, Any] = {
        "benchmark": "step_time",
        "config": None if args.model else args.config,
        "model": args.model,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "tokens_per_step": tokens,
        "sparsity": args.sparsity,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")} or None,
        "steps": args.steps,
        "warmup": args.warmup,
        "masked_matrices": len(tamt.thresholds.masks),
        "masked_entries": n_masked,
        "build_s": build_s,
        "tamt_setup_s": tamt.setup_s,
        "dense_s": median.get("dense"),
        "tamt_s": median["tamt"],
        "reset_banded_s": median["reset_banded"],
        "reset_full_s": median["reset_full"],
        "tamt_with_reset_s": with_reset,
        "tamt_with_full_reset_s": with_full,
        "ratio_tamt_with_reset_over_dense": with_reset / median["dense"] if dense is not None else None,
        "ratio_tamt_over_dense": median["tamt"] / median["dense"] if dense is not None else None,
        "ratio_tamt_with_full_reset_over_dense": with_full / median["dense"] if dense is not None else None,
        "tokens_per_s_dense": tokens / median["dense"] if dense is not None else None,
        "tokens_per_s_tamt_with_reset": tokens / with_reset,
        "pretrain_steps": args.pretrain_steps,
        "pretrain_s": pretrain_s,
        "band_fraction_median": statistics.median(band_fractions),
        "reset_full_fallbacks": fallbacks,
        "reset_mismatches": mismatches,
        "peak_gib": peaks if device.type == "cuda" else None,
        "loss_first_last": {k: [v[0], v[-1]] for k, v in losses.items() if v},
        "times_s": times,
        "breakdown_s": breakdown or None,
        "target_ratio": 1.05,
    }
    return result


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:10.1f} ms"


def print_table(r: dict[str, Any], out=sys.stdout) -> None:
    shape = r["model"] or r["config"]
    print(f"# step time: {shape}, {r['masked_matrices']} masked matrices ({r['masked_entries']:,} entries), "
          f"batch {r['batch_size']}×{r['seq_len']}, {r['device']} ({r['device_name']}), {r['dtype']}, "
          f"{r['threads']} threads, median of {r['steps']} after {r['warmup']} warm-up"

          + (f", {' '.join(f'{k}={v}' for k, v in r['malloc_env'].items())}" if r["malloc_env"] else ""), file=out)
    rows = [
        ("dense MLM step", r["dense_s"], r["tokens_per_s_dense"]),
        ("TAMT-MLM step (no reset)", r["tamt_s"], None),
        ("threshold reset, banded", r["reset_banded_s"], None),
        ("threshold reset, full kthvalue", r["reset_full_s"], None),
        ("TAMT step + banded reset", r["tamt_with_reset_s"], r["tokens_per_s_tamt_with_reset"]),
        ("TAMT step + full reset", r["tamt_with_full_reset_s"], None),
    ]
    print(f"{'':34} {'s/step':>13} {'tokens/s':>10}", file=out)
    for label, seconds, tps in rows:
        print(f"{label:34} {_fmt_s(seconds):>13} {'' if tps is None else f'{tps:10.0f}':>10}", file=out)
    if r["dense_s"] is not None:
        ratio = r["ratio_tamt_with_reset_over_dense"]
        verdict = "meets" if ratio <= r["target_ratio"] else "misses"
        print(f"ratio TAMT(+banded reset)/dense = {ratio:.3f}  ({verdict} target ≤ {r['target_ratio']}); "
              f"without reset {r['ratio_tamt_over_dense']:.3f}; "
              f"with full kthvalue reset {r['ratio_tamt_with_full_reset_over_dense']:.3f}", file=out)
    print(f"banded reset: {r['band_fraction_median']:.2%} of the entries in the starting band (median), "
          f"{r['reset_full_fallbacks']} full-selection fallbacks in timed steps, "
          f"{r['reset_mismatches']} mismatches against full kthvalue (must be 0)", file=out)
    if r["peak_gib"]:
        print("peak GPU memory (GiB, both models resident): "
              + ", ".join(f"{k} {v:.2f}" for k, v in r["peak_gib"].items()), file=out)
    if r["breakdown_s"]:
        for side, phases in r["breakdown_s"].items():
            print(f"breakdown {side:5}: " + ", ".join(f"{k} {_fmt_s(v).strip()}" for k, v in phases.items()),
                  file=out)
    load = " -> ".join("?" if v is None else f"{v:.2f}" for v in (r["loadavg_before"], r["loadavg_after"]))
    print(f"timed after {r['pretrain_steps']} untimed TAMT steps ({r['pretrain_s']:.1f} s); load average {load}",
          file=out)
    print(f"setup: build {r['build_s']:.1f} s (TAMT: OMP-initialised masks {r['tamt_setup_s']['total']:.1f} s); "
          "loss first/last: "
          + ", ".join(f"{k} {a:.3f}/{b:.3f}" for k, (a, b) in r["loss_first_last"].items()), file=out)


def write_json(path: str | None, record: dict[str, Any]) -> None:
    if path:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), **record}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    result = run(args)
    print_table(result)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
