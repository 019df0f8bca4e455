"""One-shot magnitude pruning (OMP), local per matrix (paper §3.4.2, §4.1.2; reference-impl §2).

Each masked matrix loses exactly ``round(s·n)`` of its smallest-|W| entries, as
``torch.nn.utils.prune.l1_unstructured`` computes it (check vector 3).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import torch

from tamt_core.masks.masked_model import dense_weights
from tamt_core.masks.pruning import n_zeros, prune_smallest
from tamt_core.methods.base import FoundMask, OneShot, SearchContext

if TYPE_CHECKING:
    from tamt_core.search.config import SearchConfig


def omp_mask(weights: Mapping[str, torch.Tensor], sparsity: float, rounding: str = "half_even"
             ) -> dict[str, torch.Tensor]:
    """Keep-masks pruning the ``n_zeros(n, s)`` smallest |W| entries of each matrix."""
    return {name: prune_smallest(w.detach().abs(), n_zeros(w.numel(), sparsity, rounding)).cpu()
            for name, w in weights.items()}


class OMP(OneShot):
    name = "omp"
    version = 1
    seeded = False  # the smallest |θ0| are the smallest whatever the seed
    first_record = True

    def search(self, context: SearchContext, config: SearchConfig) -> Iterator[FoundMask]:
        yield FoundMask(0, config.sparsity, omp_mask(dense_weights(context.pretrained.model), config.sparsity))
