"""The fine-tuning loop: claim the output directory, set up, train with periodic evaluations and checkpoints,
write the result (§4.1, App. C)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DataCollatorWithPadding

from tamt_core import hparams
from tamt_core.checkpoints import CheckpointFile, ResumableRun, RngStreams, RunStopped, Stateful, TrainedTensors
from tamt_core.device import autocast, pick_device, resolve_precision
from tamt_core.finetune.checkpoint_layout import bake_parametrized_checkpoint
from tamt_core.finetune.config import Evaluation, FinetuneConfig, FinetuneResult, best_evaluation
from tamt_core.finetune.data import TaskData, load_task_data, train_batches
from tamt_core.finetune.evaluation import chance_metrics, evaluate_task, task_model
from tamt_core.masks import Mask
from tamt_core.masks.masked_model import bake_fixed_mask
from tamt_core.outputs import claim_directory, write_json
from tamt_core.subnetwork import load_for_mask
from tamt_core.tasks import Task, get_task
from tamt_core.training import adamw_with_schedule, to_device, update

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_S = 300.0
"""Seconds between checkpoints: one is taken at the first evaluation point after this much time has passed, so
short GLUE runs evaluated every 50 steps do not spend their time writing 1.3 GB BERT-base states."""
CHECKPOINT_FILE = "checkpoint.safetensors"


def _claim(out_dir: Path, config: FinetuneConfig, mask_path: str | None) -> FinetuneResult | None:
    """Make ``out_dir`` this run's, or find it already is; returns the finished result if there is one.

    Raises:
        OutputDirectoryError: when the directory holds another run or files that are not a run.
    """
    claim_directory(out_dir, "run.json", {"run_id": config.run_id, "config": config.to_dict(), "mask_path": mask_path},
                    kind="fine-tuning", describe=_describe)
    result = out_dir / "result.json"
    return FinetuneResult.from_dict(json.loads(result.read_text())) if result.exists() else None


def _describe(identity: dict[str, Any]) -> str:
    config = identity.get("config", {})
    return f"task {config.get('task')}, seed {config.get('seed')}, mask {config.get('mask_hash')}"


# --- the loop --------------------------------------------------------------------------------------------------


def train_step(model: nn.Module, batch: dict[str, torch.Tensor], params: list[nn.Parameter],
               optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler,
               precision: str | None = None) -> torch.Tensor:
    """One optimizer step on a batch already on the model's device (the searches' update, clipped at Tab. 1's norm);
    returns the (detached) loss.

    A separate function so ``bench/bench_finetune.py`` times exactly the step the loop takes.
    """
    with autocast(next(model.parameters()).device, precision):
        loss = model(**batch).loss
    update(loss, params, optimizer, schedule, hparams.FINETUNE_MAX_GRAD_NORM)
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


@dataclass
class _Training:
    """What one fine-tune trains with: the task and its Tab. 1 settings, the data, θ0 ⊙ M with a fresh head, its
    optimizer and schedule, and the step counts."""

    task: Task
    hp: hparams.FinetuneHParams
    device: torch.device
    precision: str
    data: TaskData
    collate: DataCollatorWithPadding
    model: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    steps_per_epoch: int
    total_steps: int
    eval_every: int

    def checkpointed(self) -> dict[str, Stateful]:
        """What a checkpoint holds: every trained weight, AdamW, the schedule and the dropout RNG."""
        return {"model": TrainedTensors(self.model), "optimizer": self.optimizer, "schedule": self.schedule,
                "rng": RngStreams(self.device)}


def finetune(config: FinetuneConfig, out_dir: Path, *, mask: Mask | None = None, mask_path: str | None = None,
             device: str | None = None, on_evaluation: Callable[[Evaluation], None] | None = None,
             checkpoint_every_s: float = CHECKPOINT_EVERY_S, keep_checkpoint: bool = False,
             on_step: Callable[[int], None] = lambda step: None,
             stop_requested: Callable[[], bool] = lambda: False) -> FinetuneResult:
    """Fine-tune θ0 ⊙ M (or θ0 when ``mask`` is ``None``) on ``config.task`` and return the best evaluation.

    Checks everything (the config, the directory, the mask against the model's names, shapes and weights, the
    data and the subset size) before the first step. Resumes from ``out_dir``'s checkpoint when there is one (an
    unreadable one is set aside). ``on_evaluation`` is called after each evaluation, once the checkpoint (if due)
    is written. ``keep_checkpoint`` keeps the final state (fine-tuned weights, optimizer) instead of deleting it.
    ``on_step`` is called after every step; when ``stop_requested()`` turns true (read after every step), the run
    checkpoints and raises :class:`~tamt_core.checkpoints.RunStopped`, and calling it again resumes there.
    The result records the precision it computed in and whether deterministic kernels were on (a caller turns them
    on with :func:`tamt_core.device.deterministic`).
    """
    out_dir = Path(out_dir)
    if (mask is None) != (config.mask_hash is None) or (mask is not None and mask.content_hash != config.mask_hash):
        raise ValueError("config.mask_hash must be the content hash of the mask passed (None for the full model)")
    finished = _claim(out_dir, config, mask_path)
    if finished is not None:
        log.info("%s: already finished (%s %.2f at step %d)", out_dir, finished.select_metric,
                 finished.best_score, finished.best.step if finished.best else -1)
        return finished
    t = _set_up(config, mask, device)
    store = CheckpointFile(out_dir / CHECKPOINT_FILE)
    run = ResumableRun({"run_id": config.run_id}, store, device=t.device, checkpoint_every_s=checkpoint_every_s,
                       kind="fine-tune")
    torch.manual_seed(config.seed)  # dropout draws
    step, curve = 0, []
    if mask is not None:  # a checkpoint from before the mask was baked in: rewritten in the baked layout
        bake_parametrized_checkpoint(store.path, t.model, t.checkpointed(), run.identity)
    found = run.resume(t.checkpointed())
    if found is not None:
        _, progress = found
        step, curve = progress["step"], [Evaluation(**e) for e in progress["curve"]]
        log.info("%s: resuming at step %d of %d", out_dir, step, t.total_steps)
    log.info("fine-tuning %s on %s: %d examples, %d steps (%d epochs × %d), evaluating every %d, device %s",
             "θ0 ⊙ M" if mask is not None else "the full model", t.task.name, len(t.data.train), t.total_steps,
             t.hp.max_epochs, t.steps_per_epoch, t.eval_every, t.device)

    while step < t.total_steps:
        epoch, done_in_epoch = divmod(step, t.steps_per_epoch)
        for batch in train_batches(t.data.train, t.collate, t.hp.batch_size, config.seed, epoch, done_in_epoch):
            run.add_loss(train_step(t.model, to_device(batch, t.device), t.params, t.optimizer, t.schedule,
                                    t.precision))
            step += 1
            on_step(step)
            if step < t.total_steps and stop_requested():
                run.save(step, t.checkpointed(), {"curve": [asdict(e) for e in curve]})
                raise RunStopped(step)
            if step % t.eval_every:
                continue
            train_seconds = run.clock.pause()  # evaluating is not training
            train_loss, checkpoint_due, _ = run.sync()
            evaluation = Evaluation(step, step / t.steps_per_epoch, train_loss,
                                    evaluate_task(t.model, t.task, t.data, t.collate, t.device, t.precision))
            curve.append(evaluation)
            _log_evaluation(t.task, evaluation, best_evaluation(curve, t.hp.metric), t.hp.metric, t.total_steps,
                            step * t.hp.batch_size / max(train_seconds, 1e-9))
            write_json(out_dir / "curve.json", [asdict(e) for e in curve])
            if step < t.total_steps and checkpoint_due:
                run.save(step, t.checkpointed(), {"curve": [asdict(e) for e in curve]})
            if on_evaluation is not None:
                on_evaluation(evaluation)
            run.clock.start()
    train_seconds = run.clock.pause()

    result = FinetuneResult(config.run_id, config.to_dict(), t.hp.metric, best_evaluation(curve, t.hp.metric), curve, {
        "mask_path": mask_path, "mask_sparsity": None if mask is None else mask.sparsity,
        "mask_method": None if mask is None else mask.meta.get("method"),
        "train_examples": len(t.data.train), "steps": t.total_steps, "eval_every": t.eval_every,
        "chance": chance_metrics(t.task, t.data),
        "hparams": asdict(t.hp), "device": str(t.device), "precision": t.precision,
        "deterministic": torch.are_deterministic_algorithms_enabled(), "train_seconds": train_seconds,
        "train_examples_per_s": t.total_steps * t.hp.batch_size / max(train_seconds, 1e-9)})
    if keep_checkpoint:
        run.save(step, t.checkpointed(), {"curve": [asdict(e) for e in curve]})
    write_json(out_dir / "result.json", result.to_dict())
    if not keep_checkpoint:
        store.clear()
    return result


def _set_up(config: FinetuneConfig, mask: Mask | None, device: str | None) -> _Training:
    """θ0 checked against the mask, the task's data, the task model with the mask baked in, AdamW with Tab. 1's
    linear decay; evaluation every Eval Iter steps, at least once per epoch for a SQuAD subset (reference-impl
    §7.4) and at least once per run."""
    task, hp = get_task(config.task), config.hparams
    torch_device = pick_device(device)
    pretrained = load_for_mask(mask, config.model, with_mlm_head=False)
    data = load_task_data(task, config, pretrained.tokenizer)
    if len(data.train) < 1:
        raise ValueError(f"{task.name} has no training examples")
    steps_per_epoch = math.ceil(len(data.train) / hp.batch_size)
    total_steps = steps_per_epoch * hp.max_epochs
    eval_every = hp.eval_every
    if (task.kind == "span" and config.train_size is not None) or eval_every > total_steps:
        eval_every = min(eval_every, steps_per_epoch)

    model, tokenizer = task_model(task, pretrained.source, config.seed), pretrained.tokenizer
    del pretrained  # θ0 as a bare encoder was only needed to check the mask against the weights
    model.to(torch_device)
    if mask is not None:
        bake_fixed_mask(model, mask.tensors)  # θ0 ⊙ M written once; masked gradients zeroed (its docstring says why)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, schedule = adamw_with_schedule(params, lr=hp.lr, weight_decay=hparams.FINETUNE_WEIGHT_DECAY,
                                              eps=hparams.FINETUNE_ADAM_EPSILON, total_steps=total_steps)
    return _Training(task, hp, torch_device, resolve_precision(config.precision, torch_device), data,
                     DataCollatorWithPadding(tokenizer), model, params, optimizer, schedule, steps_per_epoch,
                     total_steps, eval_every)


def _log_evaluation(task: Task, evaluation: Evaluation, best: Evaluation | None, metric: str, total_steps: int,
                    examples_per_s: float) -> None:
    shown = ", ".join(f"{k} {v:.2f}" for k, v in evaluation.metrics.items())
    best_text = "none yet" if best is None else f"{best.metrics[metric]:.2f} at step {best.step}"
    log.info("%s step %d/%d (epoch %.2f): train loss %.4f, %s; best %s %s; %.1f train examples/s", task.name,
             evaluation.step, total_steps, evaluation.epoch, evaluation.train_loss, shown, metric, best_text,
             examples_per_s)
