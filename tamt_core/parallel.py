"""Data parallelism for the pre-training loops: N processes share each global batch and keep identical state.

Every rank draws the same global batch (the same rows in the same order, and the same MLM corruption, since each
rank runs the seeded collator over the whole batch) and keeps its 1/N of the rows. Each rank's loss is its sum
over its positions divided by the *global* batch's count (:func:`tamt_core.losses.mlm_loss`'s ``denominator``), so
the ranks' losses add up to the loss one process computes on the whole batch, and so do their gradients: the
trainable tensors' gradients are summed across ranks as backward produces them (an all-reduce launched from each
tensor's post-accumulate-grad hook, so communication overlaps the rest of backward). Every rank then clips and
steps on the same gradient, and scores, thresholds and masks stay identical on every rank.

What differs from one process: dropout, which each rank draws from its own stream for its own rows, and the order
of floating-point sums. ``docs/orchestrator.md`` gives the measured effect on masks and losses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place among the data-parallel processes of one search (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> Ranks:
        """The initialised ``torch.distributed`` process group, else a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    @property
    def writes(self) -> bool:
        """Only rank 0 writes masks, checkpoints and logs."""
        return self.rank == 0

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise ValueError(f"the global batch of {batch_size} sequences does not split evenly over "
                             f"{self.world_size} processes; choose a batch size divisible by the number of workers "
                             "(the paper's 16 splits over 1, 2, 4, 8 or 16)")

    def shard(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's rows of a global batch (the whole batch on one process)."""
        if not self.parallel:
            return batch
        size = next(iter(batch.values())).shape[0] // self.world_size
        return {key: value[self.rank * size:(self.rank + 1) * size] for key, value in batch.items()}

    @contextlib.contextmanager
    def summed_gradients(self, params: Sequence[torch.nn.Parameter]) -> Iterator[Callable[[], None]]:
        """While open, each parameter's gradient is all-reduced (summed) as soon as backward has accumulated it;
        the yielded callable waits for every reduction launched since its last call. A no-op on one process."""
        if not self.parallel:
            yield lambda: None
            return
        pending: list[dist.Work] = []

        def launch(param: torch.Tensor) -> None:
            pending.append(dist.all_reduce(param.grad, op=dist.ReduceOp.SUM, async_op=True))

        def wait() -> None:
            for work in pending:
                work.wait()
            pending.clear()

        handles = [param.register_post_accumulate_grad_hook(launch) for param in params]
        try:
            yield wait
        finally:
            for handle in handles:
                handle.remove()

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (in place); unchanged on one process."""
        if self.parallel:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def all_gather(self, value: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``value`` (same shape on every rank), on the CPU, in rank order."""
        if not self.parallel:
            return [value.cpu()]
        gathered = [torch.empty_like(value, device=_collective_device()) for _ in range(self.world_size)]
        dist.all_gather(gathered, value.to(_collective_device()))
        return [tensor.cpu() for tensor in gathered]

    def agree(self, value: bool) -> bool:
        """Rank 0's ``value``, on every rank (a decision only rank 0 can see, such as what its disk holds)."""
        if not self.parallel:
            return value
        flag = torch.tensor([float(value)], device=_collective_device())
        dist.broadcast(flag, src=0)
        return bool(flag.item())


def _collective_device() -> torch.device:
    """Where a collective's tensors must be: the current GPU for nccl, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def dropout_seed(seed: int, rank: int) -> int:
    """Rank r's dropout seed: the run's seed on rank 0 (one process draws as before), a distinct stream elsewhere."""
    return seed + 1_000_003 * rank
