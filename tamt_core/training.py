"""Small pieces the pre-training and fine-tuning loops share: batches, the optimizer and the linear-decay schedule."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader


def endless_batches(dataset, collate: Callable, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled batches epoch after epoch; epoch e is shuffled with seed ``seed + e`` (reproducible).

    Incomplete last batches are dropped, as the released KD trainer does (reference-impl §5.6).
    """
    if len(dataset) < batch_size:
        raise ValueError(f"the training data has {len(dataset)} sequences, fewer than one batch of {batch_size}; "
                         "use more data or a smaller --batch-size")
    for epoch in itertools.count():
        generator = torch.Generator().manual_seed(seed + epoch)
        yield from DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, collate_fn=collate,
                              generator=generator)


def steps_per_epoch(num_sequences: int, batch_size: int) -> int:
    return num_sequences // batch_size


def linear_decay(total_steps: int) -> Callable[[int], float]:
    """LR multiplier ``max(0, 1 − t/T)``, no warm-up (Tab. 1 "Lr (linear decay)"; reference-impl §4.5)."""
    return lambda step: max(0.0, 1.0 - step / total_steps)


def adamw_with_schedule(params: Iterable[torch.nn.Parameter], *, lr: float, weight_decay: float, eps: float,
                        total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (Tab. 1) with the linear-decay schedule over ``total_steps``.

    The fused kernel updates all parameters in one pass: 5× faster than the default on a CPU for BERT-base's
    109M masked entries (bench/README.md), on GPUs too.
    """
    optimizer = torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay, eps=eps, fused=True)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay(total_steps))


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
