"""Wanda: one-shot pruning by weight magnitude times input activation norm (Sun et al. 2023, "A Simple and Effective
Pruning Approach for Large Language Models", arXiv 2306.11695).

A weight's score is S_ij = |W_ij| · ‖X_j‖₂ (Wanda's Eq. 1), where ‖X_j‖₂ is the norm of input feature j over the
tokens of a few calibration sequences; within each output row i the smallest scores are pruned (Wanda §3, "per
output"), the weights that stay keep their pre-trained values: a mask over θ0, exactly the lottery-ticket setting,
found with one forward pass and no labels, like TAMT's masks from pre-training data alone.

What differs from the LLM setting Wanda was made for:

* **The masked set is TAMT's** (§3.2: Q, K, V, attention output, FFN in and out of every layer, the pooler; 74
  matrices of BERT-base). Each linear one is scored by its own input: Q, K and V by the layer's input, the
  attention output by the attention context, FFN in by the attention block's (layer-normed) output, FFN out by
  the GELU activations, the pooler by the last layer's [CLS] state. BERT is post-LN, so these inputs are
  normalised states, as in Wanda's pre-LN LLMs the linear layers' inputs are.
* **The word embedding has no input activation** (a lookup, not a product), and Wanda leaves embeddings unpruned;
  TAMT's masked set includes it, so it is pruned by magnitude, as OMP prunes it.
* **Exact sparsity per matrix**: ``round(s·n)`` zeros, as OMP; per-row comparison gives ⌊·⌋ or ⌈·⌉ zeros per row,
  the rows whose next score is smallest taking the extra one.

The calibration sample is ``samples`` blocks of ``block_size`` tokens of the pre-training corpus's training split
(Wanda: 128 sequences of C4; here WikiText-103, the paper's corpus), drawn by the search's seed; norms accumulate
in fp32 from an fp32 forward pass in eval mode (no dropout).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch
from torch import nn

from tamt_core import hparams
from tamt_core.masks.masked_model import EMBEDDING, base_model, dense_weights
from tamt_core.masks.pruning import n_zeros, prune_smallest
from tamt_core.methods.base import FoundMask, OneShot, SearchContext, check_choices, setting
from tamt_core.methods.omp import omp_mask

if TYPE_CHECKING:
    from tamt_core.search.config import SearchConfig

COMPARISONS = ("row", "matrix")
CALIBRATION_BATCH = 8
"""Calibration sequences per forward pass (what fits any GPU; the norms do not depend on it beyond float sums)."""


@dataclass(frozen=True)
class WandaSettings:
    """Wanda's settings (Sun et al. 2023, §3 and §4.1: 128 calibration sequences, per-output comparison)."""

    samples: int = setting(128, "calibration sequences (Wanda §4.1: 128)")
    block_size: int = setting(hparams.TAMT_MLM.max_length, "tokens per calibration sequence (the paper's 512)")
    comparison: str = setting("row", "compare scores within each output row (Wanda's) or within each matrix",
                              choices=COMPARISONS)

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise hparams.SettingError("samples", f"samples must be a positive number of sequences, got {self.samples}")
        if self.block_size < 8:
            raise hparams.SettingError("block_size", f"block_size must be ≥ 8, got {self.block_size}")
        check_choices(self)


def wanda_mask(weight: torch.Tensor, input_norm: torch.Tensor, sparsity: float, comparison: str = "row"
               ) -> torch.Tensor:
    """Keep-mask of one matrix W (out × in): S = |W| · ‖X‖₂ (Wanda's Eq. 1, the norm of each input feature
    broadcast over the rows); ``round(s·n)`` zeros in all, the smallest scores of each row (⌊·⌋ or ⌈·⌉ per row,
    rows with the smallest next score taking the extra one) or of the whole matrix."""
    scores = weight.detach().abs().float() * input_norm.float()[None, :]
    zeros = n_zeros(scores.numel(), sparsity)
    if comparison == "matrix":
        return prune_smallest(scores, zeros)
    base, extra = divmod(zeros, scores.shape[0])
    ranked, order = torch.sort(scores, dim=1, stable=True)
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep.scatter_(1, order[:, :base], False)
    if extra:
        takers = torch.argsort(ranked[:, base], stable=True)[:extra]  # base < columns whenever extra > 0
        keep[takers, order[takers, base]] = False
    return keep


@torch.no_grad()
def input_norms(model: nn.Module, names: list[str], batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ of the input of each linear matrix ``names`` (parameter names of the base model) over every token of
    ``batches`` (input ids), accumulated in fp32 by forward hooks that are removed afterwards."""
    base = base_model(model)
    squares: dict[str, torch.Tensor] = {}

    def accumulate(name: str):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            features = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            squares[name] = squares.get(name, 0) + features.square().sum(dim=0)
        return hook

    handles = [base.get_submodule(name.removesuffix(".weight")).register_forward_pre_hook(accumulate(name))
               for name in names]
    was_training = base.training
    base.eval()
    try:
        for input_ids in batches:
            base(input_ids=input_ids)
    finally:
        for handle in handles:
            handle.remove()
        base.train(was_training)
    return {name: squares[name].sqrt() for name in names}


class Wanda(OneShot):
    name = "wanda"
    version = 1
    settings = WandaSettings
    reads_corpus = True
    first_record = False
    smoke = MappingProxyType({"samples": 32, "block_size": 64})

    def calibration(self, context: SearchContext, config: SearchConfig) -> list[torch.Tensor]:
        """``samples`` blocks of the corpus's training split drawn by the seed, as batches of input ids on the
        device."""
        settings = config.settings
        blocks = context.train_data("mlm", block_size=settings.block_size).dataset
        generator = torch.Generator().manual_seed(config.seed)
        chosen = torch.randperm(len(blocks), generator=generator)[:settings.samples].tolist()
        ids = torch.tensor([blocks[i]["input_ids"] for i in sorted(chosen)])
        return [ids[start:start + CALIBRATION_BATCH].to(context.device)
                for start in range(0, len(ids), CALIBRATION_BATCH)]

    def search(self, context: SearchContext, config: SearchConfig) -> Iterator[FoundMask]:
        model = context.pretrained.model.to(context.device)
        weights = dense_weights(model)
        linear = [name for name in weights if name != EMBEDDING]
        norms = input_norms(model, linear, self.calibration(context, config))
        masks = {name: wanda_mask(weights[name], norms[name], config.sparsity, config.settings.comparison).cpu()
                 for name in linear}
        masks[EMBEDDING] = omp_mask({EMBEDDING: weights[EMBEDDING]}, config.sparsity)[EMBEDDING]
        yield FoundMask(0, config.sparsity, {name: masks[name] for name in weights})

