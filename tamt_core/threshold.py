"""Sparsity control for TAMT: re-set τ so that each matrix keeps exactly its target count (paper §3.4.2).

After a re-set, τ is the k-th smallest *signed* score of the matrix (k = number of zeros), so ``[M̄ > τ]``
prunes exactly k entries when no score ties τ (reference-impl §5.3, check vector 14). A large negative score is
therefore pruned, not kept; the paper's "absolute values" ranking is not what the code does (docs/fidelity.md).

A full ``kthvalue`` over every matrix costs about as much as a training step on a CPU (env-notes §11), and the
re-set runs every step by default. Scores move by about one learning rate per step, so the k-th value lies in a
narrow band around the previous τ: counting the entries below the band and selecting inside it gives the same
value as a full ``kthvalue`` (exact, not approximate) for two comparisons over each matrix plus a selection over a
few entries. The counts of all matrices are read in one host transfer, so a re-set costs two GPU synchronisations,
not a few per matrix. A band that misses widens 8×; after a few misses the full selection is used.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Exact k-th smallest entry (1-indexed) of ``values``; ``-inf`` for k = 0 (nothing pruned)."""
    flat = values.detach().reshape(-1)
    if k == 0:
        return torch.tensor(float("-inf"), dtype=flat.dtype, device=flat.device)
    return torch.kthvalue(flat.float(), k).values.to(flat.dtype)


class BandedThresholds:
    """Exact per-matrix k-th smallest scores, searched near the previous thresholds.

    One instance per training run holds the band widths (state of the training loop, not global).

    Args:
        zeros: target number of zeros k per matrix.
        initial_width, min_width: half-width of the first band and the narrowest band allowed.
        attempts: band widenings before falling back to a full selection.
        margin: the next band's half-width in units of the last move of τ.
    """

    def __init__(self, zeros: Mapping[str, int], initial_width: float = 1e-4, min_width: float = 1e-7,
                 attempts: int = 4, margin: float = 1.5) -> None:
        self.zeros = dict(zeros)
        self.margin = margin
        self.widths = {name: initial_width for name in zeros}
        self.min_width = min_width
        self.attempts = attempts
        self.full_selections = 0

    @torch.no_grad()
    def reset(self, scores: Mapping[str, torch.Tensor], thresholds: Mapping[str, torch.Tensor]) -> None:
        """Write into each ``thresholds[name]`` (a 0-dim tensor) the k-th smallest of ``scores[name]``."""
        todo = []
        for name, score in scores.items():
            if self.zeros[name] == 0:
                thresholds[name].fill_(float("-inf"))
            else:
                todo.append(name)
        widths = {name: self.widths[name] for name in todo}
        moves = {}
        for _ in range(self.attempts):
            if not todo:
                break
            below_masks, upto_masks, counts = {}, {}, []
            for name in todo:
                flat, centre = scores[name].detach().reshape(-1), thresholds[name]
                below_masks[name] = flat < centre - widths[name]
                upto_masks[name] = flat <= centre + widths[name]
                counts.append(torch.stack([torch.count_nonzero(below_masks[name]),
                                           torch.count_nonzero(upto_masks[name])]))
            missed = []
            for name, (below, upto) in zip(todo, torch.stack(counts).tolist()):  # one host transfer
                k = self.zeros[name]
                if not below < k <= upto:
                    missed.append(name)
                    widths[name] *= 8.0
                    continue
                flat = scores[name].detach().reshape(-1)
                band = torch.nonzero_static(upto_masks[name].logical_xor_(below_masks[name]), size=upto - below)
                value = torch.kthvalue(flat[band.squeeze(1)].float(), k - below).values.to(flat.dtype)
                moves[name] = (value - thresholds[name]).abs()
                thresholds[name].copy_(value)
            todo = missed
        for name in todo:
            self.full_selections += 1
            thresholds[name].copy_(kth_smallest(scores[name], self.zeros[name]))
            self.widths[name] = widths[name]
        if moves:  # next band: a few times this step's move, so it rarely misses and stays narrow
            for name, move in zip(moves, torch.stack(list(moves.values())).tolist()):
                self.widths[name] = max(self.margin * move, self.min_width)
