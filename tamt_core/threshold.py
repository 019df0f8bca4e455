"""Sparsity control for TAMT: re-set τ so that each matrix keeps exactly its target count (paper §3.4.2).

After a re-set, τ is the k-th smallest *signed* score of the matrix (k = number of zeros), so ``[M̄ > τ]``
prunes exactly k entries when no score ties τ (reference-impl §5.3, check vector 14). A large negative score is
therefore pruned, not kept; the paper's "absolute values" ranking is not what the code does (docs/fidelity.md).

A full ``kthvalue`` over every matrix costs about as much as a training step on a CPU (env-notes §11), so the
re-set that runs every step searches near the previous threshold instead: scores move by about one learning rate
per step, so the k-th value lies in a narrow band around the last τ. Counting the entries below the band and
selecting inside it gives the same value as a full ``kthvalue`` (exact, not approximate), at the cost of two
comparisons over the matrix plus a selection over a few entries. When the band misses, it widens, and after a few
misses falls back to the full selection.
"""

from __future__ import annotations

import torch


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Exact k-th smallest entry (1-indexed) of ``values``; ``-inf`` for k = 0 (nothing pruned)."""
    flat = values.detach().reshape(-1)
    if k == 0:
        return torch.tensor(float("-inf"), dtype=flat.dtype, device=flat.device)
    return torch.kthvalue(flat.float(), k).values.to(flat.dtype)


class BandedKthValue:
    """Exact k-th smallest value of a tensor that changes little between calls.

    One instance per matrix keeps the width of the search band between calls (state of the training loop, not
    global). ``attempts`` bounds the widening before a full ``kthvalue`` is used.
    """

    def __init__(self, initial_width: float = 1e-4, min_width: float = 1e-7, attempts: int = 4) -> None:
        self.width = initial_width
        self.min_width = min_width
        self.attempts = attempts
        self.full_selections = 0

    def __call__(self, values: torch.Tensor, k: int, previous: torch.Tensor) -> torch.Tensor:
        flat = values.detach().reshape(-1)
        if k == 0:
            return kth_smallest(flat, 0)
        centre = previous.to(flat.dtype)
        if not torch.isfinite(centre):
            return self._full(flat, k)
        width = self.width
        for _ in range(self.attempts):
            low, high = centre - width, centre + width
            below = int((flat < low).sum())
            band = flat[(flat >= low) & (flat <= high)]
            if below < k <= below + band.numel():
                lowest, highest = torch.aminmax(band)
                if lowest == highest:  # a block of tied scores (e.g. never-seen embedding rows, §5.7)
                    value = lowest
                else:
                    value = torch.kthvalue(band.float(), k - below).values.to(flat.dtype)
                # Next band: wide enough for a few times this move; narrow bands keep the selection small.
                self.width = max(4.0 * float((value - centre).abs()), self.min_width)
                return value
            width *= 8.0
        self.width = width
        return self._full(flat, k)

    def _full(self, flat: torch.Tensor, k: int) -> torch.Tensor:
        self.full_selections += 1
        return kth_smallest(flat, k)
