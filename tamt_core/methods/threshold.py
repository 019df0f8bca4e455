"""Sparsity control for TAMT: re-set τ so that each matrix keeps exactly its target count (paper §3.4.2).

After a re-set, τ is the k-th smallest *signed* score of the matrix (k = number of zeros), so ``[M̄ > τ]``
prunes exactly k entries when no score ties τ (reference-impl §5.3, check vector 14). A large negative score is
therefore pruned, not kept; the paper's "absolute values" ranking is not what the code does (docs/fidelity.md).

A full ``kthvalue`` over every matrix costs about as much as a training step on a CPU (0.45 s for the built-in
model), and the re-set runs every step by default. Scores move by about one learning rate per step, so the k-th
value lies in a narrow band around the previous τ: counting the entries below the band and selecting inside it gives
the same value as a full ``kthvalue`` (exact, not approximate) for two comparisons over each matrix plus a selection
over a few entries. The counts of all matrices are read in one host transfer, so a re-set costs one GPU
synchronisation, not a few per matrix (the released code's periodic re-set, ``threshold_period`` 100 or 1000, costs
none between re-sets). A band that misses widens 8×; after a few misses the full selection is used.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def reset_due(step: int, period: int, objective: str) -> bool:
    """Whether τ is re-set after training step ``step`` (1-based) with ``threshold_period`` ``period``.

    Period 1 (the default) re-sets after every step. A longer period re-sets where the released trainers did
    (reference-impl §5.3): TAMT-MLM at every logging step, ``step % period == 0`` (τ = φ until then); TAMT-KD
    after step 1 and whenever ``(step + 1) % period == 0``, i.e. at 1, N − 1, 2N − 1, … The loop also re-sets
    before every saved mask.
    """
    if objective == "kd":
        return step == 1 or (step + 1) % period == 0
    return step % period == 0


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Exact k-th smallest entry (1-indexed) of ``values``; ``-inf`` for k = 0 (nothing pruned)."""
    flat = values.detach().reshape(-1)
    if k == 0:
        return torch.tensor(float("-inf"), dtype=flat.dtype, device=flat.device)
    return torch.kthvalue(flat.float(), k).values.to(flat.dtype)


class BandedThresholds:
    """Exact per-matrix k-th smallest scores, searched near the previous thresholds.

    One instance per training run holds the band half-widths, as 0-dim tensors on the scores' device, so that
    narrowing a band costs no host transfer: a re-set synchronises with the host once, to read the counts (a
    narrow band's size decides the selection's size). The widths are state of the training loop, checkpointed
    with it (:meth:`state_dict`), not global.

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
        self.initial_width = initial_width
        self.widths: dict[str, torch.Tensor] = {}
        self.min_width = min_width
        self.attempts = attempts
        self.full_selections = 0

    def width(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The half-width of the next band of ``name``, as a 0-dim tensor beside ``like`` (its τ)."""
        width = self.widths.get(name)
        if width is None:
            return torch.full((), self.initial_width, dtype=like.dtype, device=like.device)
        return width.to(device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def reset(self, scores: Mapping[str, torch.Tensor], thresholds: Mapping[str, torch.Tensor]) -> None:
        """Write into each ``thresholds[name]`` (a 0-dim tensor) the k-th smallest of ``scores[name]``."""
        todo = []
        for name in scores:
            if self.zeros[name] == 0:
                thresholds[name].fill_(float("-inf"))
            else:
                todo.append(name)
        widths = {name: self.width(name, thresholds[name]) for name in todo}
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
            for name, (below, upto) in zip(todo, torch.stack(counts).tolist()):  # the one host transfer
                k = self.zeros[name]
                if not below < k <= upto:
                    missed.append(name)
                    widths[name] = widths[name] * 8.0
                    continue
                flat = scores[name].detach().reshape(-1)
                band = torch.nonzero_static(upto_masks[name].logical_xor_(below_masks[name]), size=upto - below)
                value = torch.kthvalue(flat[band.squeeze(1)].float(), k - below).values.to(flat.dtype)
                # next band: a few times this step's move, so it rarely misses and stays narrow
                self.widths[name] = torch.clamp((value - thresholds[name]).abs() * self.margin, min=self.min_width)
                thresholds[name].copy_(value)
            todo = missed
        for name in todo:
            self.full_selections += 1
            thresholds[name].copy_(kth_smallest(scores[name], self.zeros[name]))
            self.widths[name] = widths[name]

    def state_dict(self) -> dict[str, object]:
        return {"widths": dict(self.widths), "full_selections": self.full_selections}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.widths = dict(state["widths"])
        self.full_selections = state["full_selections"]
