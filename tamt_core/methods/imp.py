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

import torch

from tamt_core import hparams
from tamt_core.checkpoint import TrainedTensors
from tamt_core.device import autocast
from tamt_core.losses import loss_denominator, mlm_loss
from tamt_core.masking import apply_fixed_mask, base_model, dense_weights, mask_parametrizations
from tamt_core.methods.base import FoundMask, SearchConfig, SearchContext
from tamt_core.pruning import prune_smallest
from tamt_core.training import BatchStream, adamw_with_schedule, steps_per_epoch, to_device

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


class IMP:
    name = "imp"

    def search(self, context: SearchContext, config: SearchConfig) -> Iterator[FoundMask]:
        hp = config.pretrain_hparams()
        lr = config.lr or hp.lr
        weight_decay = hp.weight_decay if config.weight_decay is None else config.weight_decay
        batch_size = config.batch_size or hp.batch_size
        period = config.pruning_interval
        final_round = round(config.sparsity * ROUNDS)
        steps = (final_round - 1) * period
        run, ranks = context.run, context.run.ranks

        model = context.pretrained.model.to(context.device)
        data = context.train_data("mlm")
        total_steps = config.schedule_steps or max(hp.max_epochs * steps_per_epoch(len(data.dataset), batch_size),
                                                   final_round * period)
        batches = BatchStream(data.dataset, data.collate, batch_size, config.seed)
        theta0 = {name: p.detach().clone() for name, p in base_model(model).state_dict().items()}  # the rewind point

        weights = dense_weights(model)
        keep = imp_prune(weights, {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}, 0)
        apply_fixed_mask(model, keep)
        masks = mask_parametrizations(model)
        params = [p for p in model.parameters() if p.requires_grad]
        state = {"trained": TrainedTensors(model), "batches": batches}

        def fresh_optimizer() -> None:
            """After each prune the optimizer and LR schedule restart (reference-impl §4.5)."""
            state["optimizer"], state["schedule"] = adamw_with_schedule(
                params, lr=lr, weight_decay=weight_decay, eps=hp.adam_epsilon, total_steps=total_steps)

        fresh_optimizer()
        start = run.resume(state)  # the round is step // P; the current mask is a buffer of the trained tensors
        if start == 0:
            yield FoundMask(0, 1 / ROUNDS, {n: k.cpu().clone() for n, k in keep.items()})
        model.train()
        with ranks.summed_gradients(params) as gradients_summed:
            for step in range(start + 1, steps + 1):
                optimizer, schedule = state["optimizer"], state["schedule"]
                global_batch = next(batches)
                denominator = loss_denominator(global_batch, "mlm") if ranks.parallel else None
                with autocast(context.device):
                    loss = mlm_loss(model, to_device(ranks.shard(global_batch), context.device), denominator)
                loss.backward()
                gradients_summed()
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                lr_now = schedule.get_last_lr()[0]
                pruned = step % period == 0
                if pruned:
                    prunes_done = step // period
                    keep = imp_prune(dense_weights(model), {n: m.mask for n, m in masks.items()}, prunes_done)
                    with torch.no_grad():
                        for name, parametrization in masks.items():
                            parametrization.mask.copy_(keep[name])
                        if config.rewind:
                            _rewind(model, theta0)
                    if step < steps:
                        fresh_optimizer()
                    yield FoundMask(step, (prunes_done + 1) / ROUNDS, {n: k.cpu().clone() for n, k in keep.items()})
                run.end_step(step, loss, lr=lr_now, last=step == steps, mask_saved=pruned,
                             sparsity=((step - 1) // period + 1) / ROUNDS)


def _rewind(model: torch.nn.Module, theta0: dict[str, torch.Tensor]) -> None:
    """Copy θ0 back into every encoder parameter (masked matrices through their dense originals); the word
    embedding is the MLM decoder's tied weight, so the decoder is rewound too."""
    base = base_model(model)
    for name, param in base.named_parameters():
        plain = name.replace(".parametrizations.weight.original", ".weight")
        param.copy_(theta0[plain])
