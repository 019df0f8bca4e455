"""Per-matrix selection primitives shared by the search methods.

All methods prune *locally*: every masked matrix gets the same fraction of zeros (paper §3.4.2, reference-impl
§1.3). The count of zeros follows ``torch.nn.utils.prune`` (``round(s·n)``, Python's round-half-even) for OMP,
random and IMP, and the released TAMT code's ``int(s·n)`` for mask training (reference-impl §5.2); see
``docs/fidelity.md``.
"""

from __future__ import annotations

import math

import torch

ROUNDINGS = ("half_even", "floor")


def n_zeros(numel: int, sparsity: float, rounding: str = "half_even") -> int:
    """Number of entries to prune in a matrix of ``numel`` entries at ``sparsity`` (fraction zeroed).

    ``half_even`` is ``round(s·n)`` as torch's pruning computes it; ``floor`` is ``int(s·n)`` as TAMT's init and
    threshold reset compute it (reference-impl check vectors 3 and 11).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if rounding == "half_even":
        return round(sparsity * numel)
    if rounding == "floor":
        return math.floor(sparsity * numel)
    raise ValueError(f"unknown rounding {rounding!r}; choose one of {ROUNDINGS}")


def prune_smallest(values: torch.Tensor, k: int, kept: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean keep-mask that prunes the ``k`` smallest ``values`` among the entries still ``kept``.

    Already-pruned entries stay pruned (as torch's ``PruningContainer`` does for iterative pruning), so the result
    has exactly ``(~kept).sum() + k`` zeros. Ties at the boundary are broken by ``torch.topk``.
    """
    flat = values.detach().reshape(-1).float()
    keep = torch.ones_like(flat, dtype=torch.bool) if kept is None else kept.reshape(-1).clone()
    if k > int(keep.sum()):
        raise ValueError(f"cannot prune {k} more entries: only {int(keep.sum())} are kept")
    if k > 0:
        ranked = flat.masked_fill(~keep, math.inf)
        keep[torch.topk(ranked, k, largest=False, sorted=False).indices] = False
    return keep.view(values.shape)
