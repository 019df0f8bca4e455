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

The loop is the trained searches' one loop (:func:`tamt_core.methods.trained.train`): it resumes from its last
checkpoint and runs data-parallel; one process or N, it computes the same steps up to the order of floating-point
sums (:mod:`tamt_core.parallel`; docs/fidelity.md says what that changes).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch

from tamt_core import hparams
from tamt_core.checkpoints import Stateful, TrainedTensors
from tamt_core.device import resolve_precision
from tamt_core.losses import (encoder_layer_states, kd_loss, loss_denominator, mlm_loss, with_encoder_mask,
                              with_mlm_positions)
from tamt_core.masks.masked_model import (apply_score_masks, base_model, current_mask, dense_weights,
                                         mask_parametrizations)
from tamt_core.masks.pruning import ROUNDINGS, n_zeros
from tamt_core.methods.base import FoundMask, SearchContext, check_choices, setting
from tamt_core.methods.omp import omp_mask
from tamt_core.methods.threshold import BandedThresholds, reset_due
from tamt_core.methods.trained import TrainingSettings, schedule_length, train
from tamt_core.models import mlm_head
from tamt_core.training import BatchStream, adamw_with_schedule

if TYPE_CHECKING:
    from tamt_core.data.pretrain import PretrainData
    from tamt_core.search.config import SearchConfig


@dataclass(frozen=True)
class TamtSettings(TrainingSettings):
    """TAMT-MLM's settings (Tab. 1 for the optimizer, Tab. 2 for the length, §4.1.3 for α and φ)."""

    steps: int | None = setting(None, "training iterations (default: Tab. 2 for the sparsity)")
    save_steps: tuple[int, ...] = setting((), "steps whose masks are saved besides the last one (Fig. 5 takes "
                                              "masks along one run), e.g. 1000,2000,5000")
    threshold_period: int = setting(1, "re-set the threshold every N steps (1: exact sparsity at every step; the "
                                       f"released code: {hparams.REFERENCE_THRESHOLD_PERIOD['mlm']} MLM, "
                                       f"{hparams.REFERENCE_THRESHOLD_PERIOD['kd']} KD)")
    zero_rounding: str = setting("floor", "zeros per matrix: int(s·n) (floor, the released code) or round(s·n) "
                                          "(half_even, as OMP)", choices=ROUNDINGS)
    alpha: float = setting(hparams.ALPHA, "OMP-kept scores start at alpha·phi (Eq. 5, §4.1.3: 2)")
    phi: float = setting(hparams.PHI, "the starting threshold (Eq. 3, §4.1.3: 1e-2)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps is not None and self.steps < 1:
            raise hparams.SettingError("steps", f"steps must be a positive integer, got {self.steps}")
        if self.threshold_period < 1:
            raise hparams.SettingError("threshold_period", f"threshold_period must be ≥ 1, got {self.threshold_period}")
        check_choices(self)
        if not (self.alpha > 1.0 and self.phi > 0.0):
            raise hparams.SettingError("alpha", f"alpha must be > 1 and phi > 0 (Eq. 5: kept scores start at α·φ "
                                                f"above the threshold φ), got alpha={self.alpha}, phi={self.phi}")
        if any(s < 0 for s in self.save_steps):
            raise hparams.SettingError("save_steps", f"save_steps must be ≥ 0, got {self.save_steps}")


@dataclass(frozen=True)
class TamtKdSettings(TamtSettings):
    """TAMT-KD's settings: TAMT's, and how Eq. 6 averages."""

    kd_include_padding: bool = setting(False, "average the KD loss over padding positions too, as the released "
                                              "code did")
    kd_sequence_mean: bool = setting(False, "average Eq. 6 per sequence, then over the batch, as the paper writes "
                                            "it (default: over all tokens; docs/fidelity.md)")


def tabulated_steps(sparsity: float) -> int | None:
    """Tab. 2's TAMT iterations at exactly ``sparsity`` (up to float rounding), or ``None``."""
    return next((steps for tabulated, steps in hparams.TAMT_STEPS.items()
                 if math.isclose(tabulated, sparsity, abs_tol=1e-9)), None)


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
    """One TAMT run: the masked model, the teacher (KD), the threshold controller, the trainable tensors, their
    optimizer and schedule, and the batch stream (what the checkpoint saves), and when τ is re-set and masks saved."""

    model: torch.nn.Module
    teacher: torch.nn.Module | None
    thresholds: ThresholdController
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    batches: BatchStream
    hp: hparams.PretrainHParams
    steps: int
    precision: str
    save_steps: frozenset[int]
    objective: str
    sparsity: float
    settings: TamtSettings

    def checkpointed(self) -> dict[str, Stateful]:
        return {"trained": TrainedTensors(self.model), "optimizer": self.optimizer, "schedule": self.schedule,
                "batches": self.batches, "thresholds": self.thresholds.search}

    def initial_masks(self) -> list[FoundMask]:
        return [FoundMask(0, self.sparsity, current_mask(self.model))] if 0 in self.save_steps else []

    def denominator(self, global_batch: dict[str, torch.Tensor]) -> int:
        if self.objective == "mlm":
            return loss_denominator(global_batch, "mlm")
        return loss_denominator(global_batch, "kd", self.settings.kd_include_padding, self.settings.kd_sequence_mean)

    def on_host(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = with_encoder_mask(batch)
        return with_mlm_positions(batch) if self.objective == "mlm" else batch

    def loss(self, batch: dict[str, torch.Tensor], denominator: int | None) -> torch.Tensor:
        """Eq. 4's straight-through gradients reach the scores through the MLM loss or Eq. 6's KD loss."""
        if self.objective == "mlm":
            return mlm_loss(self.model, batch, denominator)
        with torch.no_grad():
            targets = encoder_layer_states(self.teacher, batch)
        return kd_loss(encoder_layer_states(base_model(self.model), batch), targets, batch.get("attention_mask"),
                       include_padding=self.settings.kd_include_padding, per_sequence=self.settings.kd_sequence_mean,
                       denominator=denominator)

    def after_update(self, step: int) -> list[FoundMask]:
        """τ re-set when due, and always before a saved mask (reference-impl §5.3-5.4), while the gradients say
        which matrices the loss reaches."""
        saved = step in self.save_steps
        if reset_due(step, self.settings.threshold_period, self.objective) or saved:
            self.thresholds.reset()
        return [FoundMask(step, self.sparsity, current_mask(self.model))] if saved else []

    def step_metrics(self, step: int) -> dict[str, float]:
        return {}


class TAMT:
    """TAMT with objective ``mlm`` or ``kd``."""

    version = 1
    reads_corpus = True
    seeded = True
    yields_lower_sparsities = False
    first_record = True
    smoke = MappingProxyType({"steps": 90, "lr": 3e-4, "batch_size": 8, "block_size": 64})
    """docs/smoke.md: at 50 % and 70 % both objectives move the mask away from OMP's within 90 steps at lr 3e-4 and
    end with their own dev loss well below OMP's."""

    def __init__(self, objective: str) -> None:
        self.objective = objective
        self.name = self.pace = f"tamt-{objective}"
        self.settings = TamtSettings if objective == "mlm" else TamtKdSettings
        self.hparams = hparams.TAMT_MLM if objective == "mlm" else hparams.TAMT_KD  # Tab. 1's column

    def steps(self, config: SearchConfig) -> int:
        """Training iterations: as set, or Tab. 2's for the sparsity (a tabulated one: checked by :meth:`check`)."""
        return config.settings.steps if config.settings.steps is not None else tabulated_steps(config.sparsity)

    def check(self, config: SearchConfig) -> None:
        if config.settings.steps is None and tabulated_steps(config.sparsity) is None:
            raise hparams.SettingError("steps", f"Tab. 2 gives TAMT's iterations at sparsities "
                                                f"{sorted(hparams.TAMT_STEPS)} only, not {config.sparsity}; set steps "
                                                "for it")
        late = sorted(s for s in config.settings.save_steps if s > self.steps(config))
        if late:
            raise hparams.SettingError("save_steps", f"save_steps {late} lie beyond the run's {self.steps(config)} "
                                                     "steps; drop them or raise steps")

    def yields(self, config: SearchConfig) -> tuple[tuple[float, int], ...]:
        """The mask of every saved step and of the last one (§4.1.3; Fig. 5 takes masks along one run)."""
        return tuple((config.sparsity, step) for step in sorted(set(config.settings.save_steps) | {self.steps(config)}))

    def training_steps(self, config: SearchConfig) -> int:
        return self.steps(config)

    def batch_size(self, config: SearchConfig) -> int | None:
        return config.settings.resolved(self.hparams).batch_size

    def caution(self, config: SearchConfig) -> str | None:
        """A kept score starts (α − 1)·φ above τ and Adam moves it by about one learning rate per step, so no mask
        entry changes for about (α − 1)·φ / lr steps (docs/smoke.md measured it): a shorter run keeps OMP's mask."""
        settings = config.settings
        lr = settings.resolved(self.hparams).lr
        crossing = (settings.alpha - 1) * settings.phi / lr
        steps = self.steps(config)
        if steps >= crossing:
            return None
        return (f"{self.name} at lr {lr:g} needs about {crossing:.0f} steps before a kept score crosses the "
                f"threshold (it starts {(settings.alpha - 1) * settings.phi:g} above it and moves about lr per "
                f"step); this run has {steps}, so its mask will stay OMP's: raise steps or lr")

    def search(self, context: SearchContext, config: SearchConfig) -> Iterator[FoundMask]:
        data = self.training_data(context.train_data, config)
        yield from train(self.setup(context.pretrained.model.to(context.device), data, config), context)

    def training_data(self, train_data: Callable[..., PretrainData], config: SearchConfig) -> PretrainData:
        """The objective's data in blocks of ``block_size``. With ``kd_include_padding``, KD sequences are padded to
        the block length, as the released KD trainer padded every sequence and averaged over all positions
        (reference-impl §6.1-6.2): with padding counted, the padded length is part of the loss."""
        settings = config.settings
        pad_to = settings.block_size if self.objective == "kd" and settings.kd_include_padding else None
        return train_data(self.objective, block_size=settings.block_size, pad_to=pad_to)

    def setup(self, model: torch.nn.Module, data: PretrainData, config: SearchConfig) -> TamtTraining:
        """§3.4 on ``model`` (on its device): score masks initialised from OMP (Eq. 5) over frozen weights; the
        scores trainable, and for MLM the head except the decoder tied to the frozen embedding (§3.4.3); for KD
        a frozen copy of the dense encoder as teacher (Eq. 6); AdamW with Tab. 1's linear decay over 2 epochs of
        ``data``, or the run's own length when longer."""
        settings = config.settings
        hp = settings.resolved(self.hparams)
        steps = self.steps(config)
        teacher = copy.deepcopy(base_model(model)).eval().requires_grad_(False) if self.objective == "kd" else None
        thresholds, trainable = self.trainable_scores(model, config)
        optimizer, schedule = adamw_with_schedule(trainable, lr=hp.lr, weight_decay=hp.weight_decay,
                                                  eps=hp.adam_epsilon,
                                                  total_steps=schedule_length(settings, hp, len(data.dataset), steps))
        return TamtTraining(model, teacher, thresholds, trainable, optimizer, schedule,
                            BatchStream(data.dataset, data.collate, hp.batch_size, config.seed), hp, steps,
                            resolve_precision(settings.precision, next(model.parameters()).device),
                            frozenset(settings.save_steps) | {steps}, self.objective, config.sparsity, settings)

    def trainable_scores(self, model: torch.nn.Module, config: SearchConfig
                         ) -> tuple[ThresholdController, list[torch.nn.Parameter]]:
        """Score masks on ``model``'s matrices, initialised from OMP (Eq. 5, τ = φ), every weight frozen; returns
        the threshold controller and the tensors TAMT trains."""
        settings = config.settings
        embedding = dense_weights(model)["embeddings.word_embeddings.weight"]
        apply_score_masks(model, initial_scores(dense_weights(model), config.sparsity, settings.zero_rounding,
                                                alpha=settings.alpha, phi=settings.phi), threshold=settings.phi)
        thresholds = ThresholdController(model, config.sparsity, settings.zero_rounding)
        model.requires_grad_(False)
        trainable = [m.scores.requires_grad_(True) for m in thresholds.masks.values()]
        if self.objective == "mlm":  # the head is trainable, except the decoder tied to the frozen embedding
            trainable += [p.requires_grad_(True) for p in mlm_head(model).parameters() if p is not embedding]
        return thresholds, trainable
