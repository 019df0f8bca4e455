"""Task-agnostic mask training (TAMT; paper §3.4), with the MLM or the KD objective.

The weights θ0 stay frozen; each masked matrix gets a real-valued mask M̄ initialised from OMP (Eq. 5: α·φ where
OMP keeps, 0 where it prunes), binarised as [M̄ > τ] (Eq. 3) and trained with the straight-through estimator
(Eq. 4). τ starts at φ and is re-set to the k-th smallest score of each matrix after every step by default, so
the sparsity is exact at every step (§3.4.2 "dynamically adjust the threshold"); ``threshold_period`` N re-sets
where the released trainers did (:func:`~tamt_core.methods.threshold.reset_due`); and always before a mask is saved, as
the released code does (reference-impl §5.3-5.4).

* TAMT-MLM trains M̄ and the MLM head except the tied decoder (§3.4.3), AdamW lr 5e-5, no weight decay (Tab. 1).
* TAMT-KD trains M̄ only, lr 2e-5, weight decay 0.01 (Tab. 1; decay from the released scripts), on Eq. 6 against
  the unmasked model as teacher, in eval mode.

The loop resumes from its last checkpoint and runs data-parallel through its :class:`SearchRun` (``context.run``);
one process or N, it computes the same steps (:mod:`tamt_core.parallel`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tamt_core import hparams
from tamt_core.checkpoints import TrainedTensors
from tamt_core.device import autocast
from tamt_core.losses import encoder_layer_states, kd_loss, loss_denominator, mlm_loss
from tamt_core.masks.masked_model import (apply_score_masks, base_model, current_mask, dense_weights,
                                          mask_parametrizations)
from tamt_core.methods.base import FoundMask, SearchConfig, SearchContext
from tamt_core.methods.omp import omp_mask
from tamt_core.models import mlm_head
from tamt_core.masks.pruning import n_zeros
from tamt_core.methods.threshold import BandedThresholds, reset_due
from tamt_core.training import BatchStream, adamw_with_schedule, steps_per_epoch, to_device, update


def initial_scores(weights: dict[str, torch.Tensor], sparsity: float, rounding: str = "floor", *,
                   alpha: float = hparams.ALPHA, phi: float = hparams.PHI) -> dict[str, torch.Tensor]:
    """Eq. 5: M̄ = α·φ where the OMP mask keeps, 0 where it prunes (φ = 1e-2, α = 2, §4.1.3)."""
    return {name: keep.to(weights[name].dtype) * (alpha * phi)
            for name, keep in omp_mask(weights, sparsity, rounding).items()}


class ThresholdController:
    """Re-sets τ of every score mask to its k-th smallest score (k = target zeros of that matrix)."""

    def __init__(self, model: torch.nn.Module, sparsity: float, rounding: str) -> None:
        self.masks = mask_parametrizations(model)
        self.zeros = {name: n_zeros(m.scores.numel(), sparsity, rounding) for name, m in self.masks.items()}
        self.search = BandedThresholds(self.zeros)

    def reset(self, only_trained: bool = True) -> None:
        """Re-set τ; with ``only_trained``, only matrices whose scores have a gradient now (call it between the
        optimizer step and ``zero_grad``): a matrix no loss reaches (the pooler) keeps its init mask either way
        (reference-impl §5.7), and skipping it saves its selection every step."""
        masks = {n: m for n, m in self.masks.items() if not only_trained or m.scores.grad is not None}
        self.search.reset({n: m.scores for n, m in masks.items()}, {n: m.threshold for n, m in masks.items()})


@dataclass
class TamtTraining:
    """What one TAMT run trains and steps: the masked model, the teacher (KD), the threshold controller, the
    trainable tensors, their optimizer and schedule, and the batch stream: the parts the checkpoint saves."""

    model: torch.nn.Module
    teacher: torch.nn.Module | None
    thresholds: ThresholdController
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    batches: BatchStream

    def checkpointed(self) -> dict[str, object]:
        return {"trained": TrainedTensors(self.model), "optimizer": self.optimizer, "schedule": self.schedule,
                "batches": self.batches, "thresholds": self.thresholds.search}


class TAMT:
    """TAMT with objective ``mlm`` or ``kd``."""

    def __init__(self, objective: str) -> None:
        self.objective = objective
        self.name = f"tamt-{objective}"

    def search(self, context: SearchContext, config: SearchConfig) -> Iterator[FoundMask]:
        steps = config.resolved_steps()
        save_steps = set(config.save_steps) | {steps}
        run, ranks = context.run, context.run.ranks
        training = self.setup(context.pretrained.model.to(context.device), context.train_data(self.objective),
                              config)
        start = run.resume(training.checkpointed())
        if start == 0 and 0 in save_steps:
            yield FoundMask(0, config.sparsity, current_mask(training.model))
        training.model.train()
        with ranks.summed_gradients(training.trainable) as gradients_summed:
            for step in range(start + 1, steps + 1):
                global_batch = next(training.batches)
                denominator = (loss_denominator(global_batch, self.objective, config.kd_include_padding,
                                                config.kd_sequence_mean) if ranks.parallel else None)
                batch = to_device(ranks.shard(global_batch), context.device)
                loss = self.train_step(training, batch, config, denominator, gradients_summed)
                if reset_due(step, config.threshold_period, self.objective) or step in save_steps:
                    training.thresholds.reset()
                training.optimizer.zero_grad(set_to_none=True)
                if step in save_steps:
                    yield FoundMask(step, config.sparsity, current_mask(training.model))
                run.end_step(step, loss, lr=training.schedule.get_last_lr()[0], last=step == steps,
                             mask_saved=step in save_steps)

    def setup(self, model: torch.nn.Module, data, config: SearchConfig) -> TamtTraining:
        """§3.4 on ``model`` (on its device): score masks initialised from OMP (Eq. 5) over frozen weights; the
        scores trainable, and for MLM the head except the decoder tied to the frozen embedding (§3.4.3); for KD
        a frozen copy of the dense encoder as teacher (Eq. 6); AdamW with Tab. 1's linear decay over 2 epochs of
        ``data`` (a :class:`~tamt_core.data.pretrain.PretrainData`), or the run's own length when longer."""
        hp = config.pretrain_hparams()
        batch_size = config.batch_size or hp.batch_size
        total_steps = config.schedule_steps or max(hp.max_epochs * steps_per_epoch(len(data.dataset), batch_size),
                                                   config.resolved_steps())
        teacher = copy.deepcopy(base_model(model)).eval().requires_grad_(False) if self.objective == "kd" else None
        thresholds, trainable = self.trainable_scores(model, config)
        optimizer, schedule = adamw_with_schedule(
            trainable, lr=config.lr or hp.lr, weight_decay=hp.weight_decay if config.weight_decay is None
            else config.weight_decay, eps=hp.adam_epsilon, total_steps=total_steps)
        return TamtTraining(model, teacher, thresholds, trainable, optimizer, schedule,
                            BatchStream(data.dataset, data.collate, batch_size, config.seed))

    def trainable_scores(self, model: torch.nn.Module, config: SearchConfig
                         ) -> tuple[ThresholdController, list[torch.nn.Parameter]]:
        """Score masks on ``model``'s matrices, initialised from OMP (Eq. 5, τ = φ), every weight frozen; returns
        the threshold controller and the tensors TAMT trains (``bench/bench_step_time.py`` times them too)."""
        embedding = dense_weights(model)["embeddings.word_embeddings.weight"]
        apply_score_masks(model, initial_scores(dense_weights(model), config.sparsity, config.zero_rounding,
                                                alpha=config.alpha, phi=config.phi), threshold=config.phi)
        thresholds = ThresholdController(model, config.sparsity, config.zero_rounding)
        model.requires_grad_(False)
        trainable = [m.scores.requires_grad_(True) for m in thresholds.masks.values()]
        if self.objective == "mlm":  # the head is trainable, except the decoder tied to the frozen embedding
            trainable += [p.requires_grad_(True) for p in mlm_head(model).parameters() if p is not embedding]
        return thresholds, trainable

    def train_step(self, training: TamtTraining, batch: dict[str, torch.Tensor], config: SearchConfig,
                   denominator: int | None = None, gradients_summed=lambda: None) -> torch.Tensor:
        """One step on ``batch`` (on the model's device): the objective's loss (Eq. 4's straight-through
        gradients reach the scores) and the update; τ's re-set and ``zero_grad`` are the loop's."""
        with autocast(next(training.model.parameters()).device):
            loss = self._loss(training.model, training.teacher, batch, config, denominator)
        update(loss, training.trainable, training.optimizer, training.schedule, config.max_grad_norm,
               gradients_summed)
        return loss

    def _loss(self, model, teacher, batch, config: SearchConfig, denominator: int | None) -> torch.Tensor:
        if self.objective == "mlm":
            return mlm_loss(model, batch, denominator)
        with torch.no_grad():
            targets = encoder_layer_states(teacher, batch)
        return kd_loss(encoder_layer_states(base_model(model), batch), targets, batch.get("attention_mask"),
                       include_padding=config.kd_include_padding, per_sequence=config.kd_sequence_mean,
                       denominator=denominator)
