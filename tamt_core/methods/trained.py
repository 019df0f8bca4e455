"""What the trained searches (IMP, TAMT) share: their common settings, and the loop that trains, saves masks and
checkpoints, written once.

A trained method sets up a :class:`Training` (the model under its masks, the trainable tensors, AdamW with Tab. 1's
linear decay, the batch stream) and supplies only what differs: its loss on a batch, what happens after each
update (TAMT re-sets τ, IMP prunes every P steps) and the masks that come out of it. :func:`train` runs the steps
from the last checkpoint (``SearchContext.run``), data-parallel over however many processes there are
(:mod:`tamt_core.parallel`), and yields each mask as it is found.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from tamt_core import hparams
from tamt_core.checkpoints import Stateful
from tamt_core.device import PRECISIONS, autocast, check_precision
from tamt_core.methods.base import FoundMask, SearchContext, setting
from tamt_core.training import BatchStream, steps_per_epoch, to_device, update

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingSettings:
    """The settings every trained search takes; ``None`` takes the method's column of Tab. 1."""

    lr: float | None = setting(None, "learning rate (default: Tab. 1 for the method: 5e-5 MLM, 2e-5 KD)")
    batch_size: int | None = setting(None, "sequences per global batch, split over data-parallel processes "
                                           "(default: Tab. 1, 16)")
    weight_decay: float | None = setting(None, "AdamW weight decay (default: the released scripts', 0 for MLM, "
                                               "0.01 for KD)")
    block_size: int = setting(hparams.TAMT_MLM.max_length, "pre-training sequence length (Tab. 1: 512)")
    schedule_steps: int | None = setting(None, "length of the linear LR decay (default: 2 epochs of the training "
                                               "data, or the run's own length when that is longer; Tab. 1)")
    max_grad_norm: float = setting(1.0, "global gradient-norm clipping (the released scripts: 1.0)")
    adam_epsilon: float | None = setting(None, "AdamW's epsilon (default 1e-8, HF's, as the released MLM trainers; "
                                               "the released TAMT-KD trainer used "
                                               f"{hparams.RELEASED_KD_ADAM_EPSILON:g}, reference-impl §5.6)")
    precision: str | None = setting(None, "bf16 or fp32 (the paper's); default bf16 on a GPU, fp32 on the CPU "
                                          "(tamt_core/device.py says why)", choices=PRECISIONS)

    def __post_init__(self) -> None:
        for name in ("batch_size", "schedule_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise hparams.SettingError(name, f"{name} must be a positive integer, got {value}")
        if self.block_size < 8:
            raise hparams.SettingError("block_size", f"block_size must be ≥ 8, got {self.block_size}")
        if self.lr is not None and not self.lr > 0:
            raise hparams.SettingError("lr", f"lr must be positive, got {self.lr}")
        if self.adam_epsilon is not None and not self.adam_epsilon > 0:
            raise hparams.SettingError("adam_epsilon", f"adam_epsilon must be positive, got {self.adam_epsilon}")
        check_precision(self.precision)

    def resolved(self, column: hparams.PretrainHParams) -> hparams.PretrainHParams:
        """Tab. 1's ``column`` with the values these settings give."""
        return replace(column, lr=self.lr or column.lr, batch_size=self.batch_size or column.batch_size,
                       weight_decay=column.weight_decay if self.weight_decay is None else self.weight_decay,
                       adam_epsilon=column.adam_epsilon if self.adam_epsilon is None else self.adam_epsilon,
                       max_length=self.block_size, max_grad_norm=self.max_grad_norm)


def schedule_length(settings: TrainingSettings, hp: hparams.PretrainHParams, sequences: int, run_steps: int) -> int:
    """The linear decay's length: as set, else Tab. 1's 2 epochs of ``sequences`` or the run's own length when
    that is longer."""
    return settings.schedule_steps or max(hp.max_epochs * steps_per_epoch(sequences, hp.batch_size), run_steps)


class Training(Protocol):
    """One trained search's state and what its method does differently; what a checkpoint saves."""

    model: torch.nn.Module
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    batches: BatchStream
    hp: hparams.PretrainHParams
    steps: int
    """The run's last step."""
    precision: str
    """What the forward passes compute in (``bf16``, ``fp32``)."""

    def checkpointed(self) -> dict[str, Stateful]:
        """The components a checkpoint saves, live (a loop may swap its optimizer)."""

    def initial_masks(self) -> list[FoundMask]:
        """The masks of step 0 (written only by a run that starts there, not by a resumed one)."""

    def denominator(self, global_batch: dict[str, torch.Tensor]) -> int:
        """What the loss of ``global_batch`` is divided by, so that the ranks' losses add up to one process's."""

    def on_host(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch`` (this rank's share, on the CPU) with what its loss needs computed before it moves to the
        device, so that the step does not wait for the device to find it out (MLM: the corrupted positions)."""

    def loss(self, batch: dict[str, torch.Tensor], denominator: int | None) -> torch.Tensor:
        """The method's objective on ``batch`` (on the model's device)."""

    def after_update(self, step: int) -> list[FoundMask]:
        """What follows the update of ``step`` (τ's re-set, a prune), with its gradients still there; returns the
        masks found at this step."""

    def step_metrics(self, step: int) -> dict[str, float]:
        """What the log records of ``step`` besides its loss and learning rate."""


def training_step(training: Training, batch: dict[str, torch.Tensor], denominator: int | None = None,
                  gradients_summed: Callable[[], None] = lambda: None) -> torch.Tensor:
    """One step on ``batch`` (on the model's device): the method's loss and the update (Tab. 1); the gradients are
    left for :meth:`Training.after_update`. ``bench/`` times exactly this step."""
    with autocast(next(training.model.parameters()).device, training.precision):
        loss = training.loss(batch, denominator)
    update(loss, training.trainable, training.optimizer, training.schedule, training.hp.max_grad_norm,
           gradients_summed)
    return loss


def train(training: Training, context: SearchContext) -> Iterator[FoundMask]:
    """Run ``training`` from its last checkpoint to its last step, yielding each mask as it is found.

    Every process of a data-parallel search runs this loop on its share of each global batch; the trainable
    tensors' gradients are summed across processes during backward (:meth:`~tamt_core.parallel.Ranks.summed_gradients`).
    """
    run, ranks = context.run, context.run.ranks
    start = run.resume(training.checkpointed())
    log.info("training steps %d-%d on %s in %s (the loss every %d steps)", start + 1, training.steps, context.device,
             training.precision, run.log_every)
    if start == 0:
        yield from training.initial_masks()
    training.model.train()
    with ranks.summed_gradients(training.trainable) as gradients_summed:
        for step in range(start + 1, training.steps + 1):
            global_batch = next(training.batches)
            denominator = training.denominator(global_batch) if ranks.parallel else None
            batch = to_device(training.on_host(ranks.shard(global_batch)), context.device)
            loss = training_step(training, batch, denominator, gradients_summed)
            lr = training.schedule.get_last_lr()[0]
            found = training.after_update(step)
            training.optimizer.zero_grad(set_to_none=True)
            yield from found
            run.end_step(step, loss, lr=lr, last=step == training.steps, mask_saved=bool(found),
                         **training.step_metrics(step))
