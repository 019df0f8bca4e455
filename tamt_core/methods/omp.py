"""One-shot magnitude pruning (OMP), local per matrix (paper §3.4.2, §4.1.2; reference-impl §2).

Each masked matrix loses exactly ``round(s·n)`` of its smallest-|W| entries, as
``torch.nn.utils.prune.l1_unstructured`` computes it (check vector 3).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from tamt_core.masks.masked_model import dense_weights
from tamt_core.methods.base import FoundMask, SearchConfig, SearchContext
from tamt_core.masks.pruning import n_zeros, prune_smallest


def omp_mask(weights: Mapping[str, torch.Tensor], sparsity: float, rounding: str = "half_even"
             ) -> dict[str, torch.Tensor]:
    """Keep-masks pruning the ``n_zeros(n, s)`` smallest |W| entries of each matrix."""
    return {name: prune_smallest(w.detach().abs(), n_zeros(w.numel(), sparsity, rounding)).cpu()
            for name, w in weights.items()}


class OMP:
    name = "omp"

    def search(self, context: SearchContext, config: SearchConfig) -> Iterator[FoundMask]:
        yield FoundMask(0, config.sparsity, omp_mask(dense_weights(context.pretrained.model), config.sparsity))
