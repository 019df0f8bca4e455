"""Random pruning: a uniformly random subset of ``round(s·n)`` entries of each matrix (reference-impl §3).

The same per-matrix counts as OMP, drawn from one ``torch.Generator`` seeded with the mask seed and consumed in
canonical matrix order, so a seed reproduces its mask on any machine (check vector 4).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import torch

from tamt_core.masks.masked_model import dense_weights
from tamt_core.masks.pruning import n_zeros
from tamt_core.methods.base import FoundMask, OneShot, SearchContext

if TYPE_CHECKING:
    from tamt_core.search.config import SearchConfig


def random_mask(weights: Mapping[str, torch.Tensor], sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    """Keep-masks with exactly ``round(s·n)`` uniformly chosen zeros per matrix."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in weights.items():
        keep = torch.ones(w.numel(), dtype=torch.bool)
        keep[torch.randperm(w.numel(), generator=generator)[: n_zeros(w.numel(), sparsity)]] = False
        out[name] = keep.view(w.shape)
    return out


class RandomPruning(OneShot):
    name = "rand"
    version = 1
    first_record = True

    def search(self, context: SearchContext, config: SearchConfig) -> Iterator[FoundMask]:
        weights = dense_weights(context.pretrained.model)
        yield FoundMask(0, config.sparsity, random_mask(weights, config.sparsity, config.seed))
