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

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from tamt_core import hparams
from tamt_core.checkpoints import TrainedTensors
from tamt_core.device import autocast
from tamt_core.losses import loss_denominator, mlm_loss
from tamt_core.masks.masked_model import apply_fixed_mask, base_model, dense_weights, mask_parametrizations
from tamt_core.methods.base import FoundMask, SearchConfig, SearchContext
from tamt_core.masks.pruning import prune_smallest
from tamt_core.training import BatchStream, adamw_with_schedule, steps_per_epoch, to_device, update

ROUNDS = round(1 / hparams.IMP_PRUNE_FRACTION)
"""Prunes of one run: each removes :data:`~tamt_core.hparams.IMP_PRUNE_FRACTION` of the original size (10)."""


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
    """What one IMP run trains and steps: the model under its fixed mask, θ0 to rewind to, the trainable
    parameters, their optimizer and schedule (fresh after each prune), and the batch stream."""

    model: torch.nn.Module
    theta0: dict[str, torch.Tensor]
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    batches: BatchStream
    lr: float
    weight_decay: float
    adam_epsilon: float
    total_steps: int
    _checkpointed: dict[str, object] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._checkpointed = {"trained": TrainedTensors(self.model), "batches": self.batches,
                              "optimizer": self.optimizer, "schedule": self.schedule}

    def fresh_optimizer(self) -> None:
        """After each prune the optimizer and LR schedule restart (reference-impl §4.5); the checkpoint saves the
        new ones from then on."""
        self.optimizer, self.schedule = adamw_with_schedule(self.trainable, lr=self.lr, weight_decay=self.weight_decay,
                                                            eps=self.adam_epsilon, total_steps=self.total_steps)
        self._checkpointed.update(optimizer=self.optimizer, schedule=self.schedule)

    def checkpointed(self) -> dict[str, object]:
        """What the checkpoint saves, live (:meth:`fresh_optimizer` swaps the optimizer in); the round is step // P
        and the mask a buffer of the trained tensors."""
        return self._checkpointed


class IMP:
    name = "imp"

    def search(self, context: SearchContext, config: SearchConfig) -> Iterator[FoundMask]:
        period = config.pruning_interval
        steps = (round(config.sparsity * ROUNDS) - 1) * period
        run, ranks = context.run, context.run.ranks
        training, keep = self.setup(context.pretrained.model.to(context.device), context.train_data("mlm"), config)
        masks = mask_parametrizations(training.model)
        start = run.resume(training.checkpointed())
        if start == 0:
            yield FoundMask(0, 1 / ROUNDS, {n: k.cpu().clone() for n, k in keep.items()})
        training.model.train()
        with ranks.summed_gradients(training.trainable) as gradients_summed:
            for step in range(start + 1, steps + 1):
                global_batch = next(training.batches)
                denominator = loss_denominator(global_batch, "mlm") if ranks.parallel else None
                batch = to_device(ranks.shard(global_batch), context.device)
                loss = self.train_step(training, batch, config, denominator, gradients_summed)
                training.optimizer.zero_grad(set_to_none=True)
                lr_now = training.schedule.get_last_lr()[0]
                pruned = step % period == 0
                if pruned:
                    prunes_done = step // period
                    keep = imp_prune(dense_weights(training.model), {n: m.mask for n, m in masks.items()},
                                     prunes_done)
                    with torch.no_grad():
                        for name, parametrization in masks.items():
                            parametrization.mask.copy_(keep[name])
                        if config.rewind:
                            _rewind(training.model, training.theta0)
                    if step < steps:
                        training.fresh_optimizer()
                    yield FoundMask(step, (prunes_done + 1) / ROUNDS, {n: k.cpu().clone() for n, k in keep.items()})
                run.end_step(step, loss, lr=lr_now, last=step == steps, mask_saved=pruned,
                             sparsity=((step - 1) // period + 1) / ROUNDS)

    def setup(self, model: torch.nn.Module, data, config: SearchConfig
              ) -> tuple[ImpTraining, dict[str, torch.Tensor]]:
        """The first prune (10 % of each matrix by |θ0|) as a fixed mask on ``model`` (on its device), θ0 kept to
        rewind to, every unmasked parameter trainable with AdamW and Tab. 1's linear decay over 2 epochs of
        ``data`` or the run's length when longer; returns the training and the first mask."""
        hp = config.pretrain_hparams()
        batch_size = config.batch_size or hp.batch_size
        total_steps = config.schedule_steps or max(hp.max_epochs * steps_per_epoch(len(data.dataset), batch_size),
                                                   round(config.sparsity * ROUNDS) * config.pruning_interval)
        theta0 = {name: p.detach().clone() for name, p in base_model(model).state_dict().items()}  # the rewind point
        weights = dense_weights(model)
        keep = imp_prune(weights, {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}, 0)
        apply_fixed_mask(model, keep)
        trainable = [p for p in model.parameters() if p.requires_grad]
        lr = config.lr or hp.lr
        weight_decay = hp.weight_decay if config.weight_decay is None else config.weight_decay
        optimizer, schedule = adamw_with_schedule(trainable, lr=lr, weight_decay=weight_decay, eps=hp.adam_epsilon,
                                                  total_steps=total_steps)
        return ImpTraining(model, theta0, trainable, optimizer, schedule,
                           BatchStream(data.dataset, data.collate, batch_size, config.seed), lr, weight_decay,
                           hp.adam_epsilon, total_steps), keep

    def train_step(self, training: ImpTraining, batch: dict[str, torch.Tensor], config: SearchConfig,
                   denominator: int | None = None, gradients_summed=lambda: None) -> torch.Tensor:
        """One MLM step on ``batch`` (on the model's device) and the update; pruning and ``zero_grad`` are the
        loop's."""
        with autocast(next(training.model.parameters()).device):
            loss = mlm_loss(training.model, batch, denominator)
        update(loss, training.trainable, training.optimizer, training.schedule, config.max_grad_norm,
               gradients_summed)
        return loss


def _rewind(model: torch.nn.Module, theta0: dict[str, torch.Tensor]) -> None:
    """Copy θ0 back into every encoder parameter (masked matrices through their dense originals); the word
    embedding is the MLM decoder's tied weight, so the decoder is rewound too."""
    base = base_model(model)
    for name, param in base.named_parameters():
        plain = name.replace(".parametrizations.weight.original", ".weight")
        param.copy_(theta0[plain])
