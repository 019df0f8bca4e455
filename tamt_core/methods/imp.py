"""Iterative magnitude pruning with MLM training (IMP; paper §4.1.2-4.1.3, App. C; reference-impl §4).

One run yields every sparsity: prune 10 % of each matrix's *original* size at step 0 and after every P training
steps, so the mask of sparsity s comes out at step (10·s − 1)·P (Tab. 2). Each prune removes, among the entries
still kept, the smallest |W| of the *trained* weights: the per-matrix cumulative count is
``c_{j+1} = c_j + round((n − c_j) / (10 − j))`` (torch's iterative pruning with amount 1/(10 − j), check vector 5),
so masks are nested. After each prune the optimizer and LR schedule restart (reference-impl §4.5) and, by default,
all encoder weights go back to θ0 (paper §4.1.3: "resetting the remaining weights to θ0"); ``rewind=False``
reproduces the released code, whose rewind was a no-op (reference-impl §4.4). The MLM head's own parameters
(its transform and output bias) are not rewound; its decoder is tied to the word-embedding matrix, an encoder
weight, so the decoder does go back to θ0 with it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch

from tamt_core import hparams
from tamt_core.checkpoints import Stateful, TrainedTensors
from tamt_core.device import resolve_precision
from tamt_core.losses import loss_denominator, mlm_loss, with_encoder_mask, with_mlm_positions
from tamt_core.masks.masked_model import apply_fixed_mask, base_model, dense_weights, mask_parametrizations
from tamt_core.masks.pruning import prune_smallest
from tamt_core.methods.base import FoundMask, SearchContext, setting
from tamt_core.methods.trained import TrainingSettings, schedule_length, train
from tamt_core.training import BatchStream, adamw_with_schedule

if TYPE_CHECKING:
    from tamt_core.data.pretrain import PretrainData
    from tamt_core.search.config import SearchConfig

ROUNDS = round(1 / hparams.IMP_PRUNE_FRACTION)
"""Prunes of a run to 100 %: each removes :data:`~tamt_core.hparams.IMP_PRUNE_FRACTION` of the original size (10)."""


@dataclass(frozen=True)
class ImpSettings(TrainingSettings):
    """IMP's settings (Tab. 1 for the optimizer, Tab. 2 and App. C for the schedule)."""

    pruning_interval: int = setting(hparams.IMP_PRUNING_INTERVAL, "P: training steps between two prunes "
                                                                  f"(Tab. 2: {hparams.IMP_PRUNING_INTERVAL})")
    rewind: bool = setting(True, "rewind the kept weights to θ0 after each prune (§4.1.3); off: keep the trained "
                                 "weights, as the released code did")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pruning_interval < 1:
            raise hparams.SettingError("pruning_interval", f"pruning_interval must be ≥ 1, got {self.pruning_interval}")


def prunes(sparsity: float) -> int:
    """Prunes of a run that stops at ``sparsity`` (a multiple of 10 %)."""
    return round(sparsity * ROUNDS)


def prune_step(prune: int, pruning_interval: int) -> int:
    """The step of the ``prune``-th prune (1-based): the first at step 0, then one every P steps, so the mask of
    sparsity s comes out at step (10·s − 1)·P (Tab. 2, App. C)."""
    return (prune - 1) * pruning_interval


def imp_prune(weights: dict[str, torch.Tensor], keep: dict[str, torch.Tensor], prunes_done: int
              ) -> dict[str, torch.Tensor]:
    """The (j+1)-th prune: remove ``round((n − c_j)/(10 − j))`` more smallest-|W| entries of each matrix."""
    out = {}
    for name, w in weights.items():
        remaining = int(keep[name].sum())
        k = round(remaining / (ROUNDS - prunes_done))
        out[name] = prune_smallest(w.detach().abs(), k, keep[name])
    return out


@dataclass
class ImpTraining:
    """One IMP run: the model under its fixed mask, θ0 to rewind to, the trainable parameters, their optimizer and
    schedule (fresh after each prune), the batch stream, and the prune schedule."""

    model: torch.nn.Module
    theta0: dict[str, torch.Tensor]
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    batches: BatchStream
    hp: hparams.PretrainHParams
    steps: int
    precision: str
    schedule_steps: int
    first_mask: dict[str, torch.Tensor]
    settings: ImpSettings

    def __post_init__(self) -> None:
        self._checkpointed = {"trained": TrainedTensors(self.model), "batches": self.batches,
                              "optimizer": self.optimizer, "schedule": self.schedule}

    def checkpointed(self) -> dict[str, Stateful]:
        """What the checkpoint saves, live (a prune swaps the optimizer in); the round is step // P and the mask a
        buffer of the trained tensors."""
        return self._checkpointed

    def initial_masks(self) -> list[FoundMask]:
        return [FoundMask(0, 1 / ROUNDS, {n: k.cpu().clone() for n, k in self.first_mask.items()})]

    def denominator(self, global_batch: dict[str, torch.Tensor]) -> int:
        return loss_denominator(global_batch, "mlm")

    def on_host(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return with_mlm_positions(with_encoder_mask(batch))

    def loss(self, batch: dict[str, torch.Tensor], denominator: int | None) -> torch.Tensor:
        return mlm_loss(self.model, batch, denominator)

    def after_update(self, step: int) -> list[FoundMask]:
        """Every P steps, the next prune among the kept entries by the trained weights' |W|, the rewind to θ0 and,
        unless the run ends here, a fresh optimizer and schedule (reference-impl §4.5)."""
        period = self.settings.pruning_interval
        if step % period:
            return []
        prunes_done = step // period
        masks = mask_parametrizations(self.model)
        keep = imp_prune(dense_weights(self.model), {n: m.mask for n, m in masks.items()}, prunes_done)
        with torch.no_grad():
            for name, parametrization in masks.items():
                parametrization.mask.copy_(keep[name])
            if self.settings.rewind:
                _rewind(self.model, self.theta0)
        if step < self.steps:
            self.optimizer, self.schedule = adamw_with_schedule(
                self.trainable, lr=self.hp.lr, weight_decay=self.hp.weight_decay, eps=self.hp.adam_epsilon,
                total_steps=self.schedule_steps)
            self._checkpointed.update(optimizer=self.optimizer, schedule=self.schedule)
        return [FoundMask(step, (prunes_done + 1) / ROUNDS, {n: k.cpu().clone() for n, k in keep.items()})]

    def step_metrics(self, step: int) -> dict[str, float]:
        """The sparsity the step trained at."""
        return {"sparsity": ((step - 1) // self.settings.pruning_interval + 1) / ROUNDS}


class IMP:
    name = "imp"
    version = 1
    settings = ImpSettings
    objective = "mlm"
    reads_corpus = True
    seeded = True
    yields_lower_sparsities = True  # one run prunes 10 % at a time
    pace = "imp"
    first_record = True
    hparams = hparams.IMP_MLM  # Tab. 1's column
    smoke = MappingProxyType({"pruning_interval": 4, "batch_size": 8, "block_size": 64})

    def check(self, config: SearchConfig) -> None:
        """IMP prunes 10 % per round from 10 % on (§4.1.3, App. C)."""
        if not math.isclose(config.sparsity * ROUNDS, prunes(config.sparsity), abs_tol=1e-9):
            raise ValueError(f"IMP prunes 10 % per round (§4.1.3), so its sparsity must be a multiple of 0.1, "
                             f"got {config.sparsity}")
        if config.sparsity < 1 / ROUNDS:
            raise ValueError("IMP starts at 10 % sparsity (App. C); ask for 0.1 or more")

    def yields(self, config: SearchConfig) -> tuple[tuple[float, int], ...]:
        """Every multiple of 10 % up to the config's sparsity, each at its prune's step, from one run."""
        interval = config.settings.pruning_interval
        return tuple((k / ROUNDS, prune_step(k, interval)) for k in range(1, prunes(config.sparsity) + 1))

    def training_steps(self, config: SearchConfig) -> int:
        return prune_step(prunes(config.sparsity), config.settings.pruning_interval)

    def batch_size(self, config: SearchConfig) -> int | None:
        return config.settings.resolved(self.hparams).batch_size

    def caution(self, config: SearchConfig) -> str | None:
        return None

    def search(self, context: SearchContext, config: SearchConfig) -> Iterator[FoundMask]:
        data = context.train_data("mlm", block_size=config.settings.block_size)
        yield from train(self.setup(context.pretrained.model.to(context.device), data, config), context)

    def setup(self, model: torch.nn.Module, data: PretrainData, config: SearchConfig) -> ImpTraining:
        """The first prune (10 % of each matrix by |θ0|) as a fixed mask on ``model`` (on its device), θ0 kept to
        rewind to, every unmasked parameter trainable with AdamW and Tab. 1's linear decay over 2 epochs of
        ``data``, or over the run to its last prune when that is longer."""
        settings = config.settings
        hp = settings.resolved(self.hparams)
        schedule_steps = schedule_length(settings, hp, len(data.dataset),
                                         prunes(config.sparsity) * settings.pruning_interval)
        theta0 = {name: p.detach().clone() for name, p in base_model(model).state_dict().items()}  # the rewind point
        weights = dense_weights(model)
        keep = imp_prune(weights, {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}, 0)
        apply_fixed_mask(model, keep)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer, schedule = adamw_with_schedule(trainable, lr=hp.lr, weight_decay=hp.weight_decay,
                                                  eps=hp.adam_epsilon, total_steps=schedule_steps)
        return ImpTraining(model, theta0, trainable, optimizer, schedule,
                           BatchStream(data.dataset, data.collate, hp.batch_size, config.seed), hp,
                           self.training_steps(config),
                           resolve_precision(settings.precision, next(model.parameters()).device), schedule_steps,
                           keep, settings)


def _rewind(model: torch.nn.Module, theta0: dict[str, torch.Tensor]) -> None:
    """Copy θ0 back into every encoder parameter (masked matrices through their dense originals); the word
    embedding is the MLM decoder's tied weight, so the decoder is rewound too."""
    base = base_model(model)
    for name, param in base.named_parameters():
        plain = name.replace(".parametrizations.weight.original", ".weight")
        param.copy_(theta0[plain])
