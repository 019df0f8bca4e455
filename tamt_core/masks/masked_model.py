"""Binary masks that sit beside frozen BERT-family weights.

A subnetwork is f(·; M ⊙ θ0) (paper §3.2, Eq. 2): the pre-trained weights θ0 stay untouched and a mask M picks the
entries that survive. The masks live in ``torch.nn.utils.parametrize`` parametrizations, so ``module.weight``
*is* ``W ⊙ M`` on every access while the dense ``W`` stays in ``parametrizations.weight.original``. Two kinds:

* :class:`FixedMask` — a boolean buffer (OMP, random, IMP, the dev losses).
* :class:`ScoreMask` — TAMT's real-valued mask M̄ binarised as ``M = [M̄ > τ]`` (Eq. 3 with the released code's
  strict ``>``, reference-impl §5.1), trained through the straight-through estimator of Eq. 4:
  ∂L/∂M̄ := ∂L/∂M = ∂L/∂(W ⊙ M) ⊙ W.

The masked set is the paper's θ0 (word embeddings and Q, K, V, attention-output, FFN-in, FFN-out of every layer,
§3.2) plus the pooler, as in the released code (reference-impl §1.1): 74 matrices for BERT-base. Names are those
``AutoModel`` gives (``encoder.layer.0.attention.self.query.weight``), so a mask found on an MLM model applies to
any head class. With a tied MLM decoder, only the input embedding lookup is masked: the parametrization replaces
``word_embeddings.weight`` while the decoder keeps pointing at the dense Parameter (reference-impl §1.1).

Fine-tuning trains under a mask that never changes, and there :func:`bake_fixed_mask` replaces the parametrization:
M is written into the weights once and the masked entries' gradients are zeroed, which costs a step next to nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from tamt_core.hparams import PHI
from tamt_core.masks.files import check_mask_matches

LAYER_MATRICES: tuple[str, ...] = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
"""Per-layer masked matrices in canonical order: Q, K, V, attention output, FFN in, FFN out (§3.2)."""
EMBEDDING = "embeddings.word_embeddings.weight"
POOLER = "pooler.dense.weight"


class NotBertFamilyError(ValueError):
    """The model is not a BERT-family encoder: its config names another architecture, or it lacks the BERT encoder
    layout that the masked set (§3.2) is defined on."""


def base_model(model: nn.Module) -> nn.Module:
    """The encoder under any head class (``BertForMaskedLM.bert``); ``AutoModel`` instances are their own base."""
    return getattr(model, "base_model", model)


def masked_parameter_names(model: nn.Module) -> list[str]:
    """Names (relative to the base model) of the matrices a mask covers, in canonical order.

    Order: word embeddings, then per layer Q, K, V, AO, FI, FO, then the pooler when the model has one
    (reference-impl check vector 2).

    Raises:
        NotBertFamilyError: when a matrix of the BERT layout is missing.
    """
    base = base_model(model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not hasattr(getattr(base, "embeddings", None), "word_embeddings"):
        raise NotBertFamilyError(
            f"{type(model).__name__} is not a BERT-family encoder: it has no embeddings.word_embeddings and "
            "encoder.layer[...] modules. tamt masks BERT-style encoders (bert, roberta, ...); pass such a model.")
    names = [EMBEDDING]
    names += [f"encoder.layer.{i}.{matrix}.weight" for i in range(len(layers)) for matrix in LAYER_MATRICES]
    if getattr(base, "pooler", None) is not None:
        names.append(POOLER)
    params = dict(_dense_named_parameters(base))
    missing = [n for n in names if n not in params]
    if missing:
        raise NotBertFamilyError(
            f"{type(model).__name__} lacks the BERT-family matrices {missing[:3]}...; tamt masks BERT-style "
            "encoders (bert, roberta, ...).")
    return names


def masked_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{parameter name: owning module}`` for the masked set, in canonical order."""
    base = base_model(model)
    return {name: base.get_submodule(name.rsplit(".", 1)[0]) for name in masked_parameter_names(model)}


def _dense_named_parameters(base: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Named parameters with parametrized weights reported under their plain name (dense original)."""
    for name, param in base.named_parameters():
        yield name.replace(".parametrizations.weight.original", ".weight"), param


def dense_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The dense pre-trained matrices of the masked set (the originals when masks are attached)."""
    out = {}
    for name, module in masked_modules(model).items():
        if parametrize.is_parametrized(module, "weight"):
            out[name] = module.parametrizations.weight.original
        else:
            out[name] = module.weight
    return out


def weight_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Shapes of the masked matrices, used to check a mask file against a model."""
    return {name: tuple(w.shape) for name, w in dense_weights(model).items()}


# --- parametrizations ------------------------------------------------------------------------------------------


class FixedMask(nn.Module):
    """``W ↦ W ⊙ M`` with a fixed boolean mask (True = kept): pruned entries are exactly 0 in every forward."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask

    def binary_mask(self) -> torch.Tensor:
        return self.mask


class _MaskedByScores(torch.autograd.Function):
    """``W ⊙ [M̄ > τ]`` with the straight-through gradient ∂L/∂M̄ := ∂L/∂(W ⊙ M) ⊙ W (Eq. 4, Bengio et al. 2013).

    One op instead of binarise-then-multiply: no float copy of the mask is made or kept for backward.
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        keep = scores > threshold
        ctx.save_for_backward(weight, keep if weight.requires_grad else None)
        return weight * keep

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        weight, keep = ctx.saved_tensors
        grad_weight = grad * keep if ctx.needs_input_grad[0] else None
        grad_scores = grad * weight if ctx.needs_input_grad[1] else None
        return grad_weight, grad_scores, None


class ScoreMask(nn.Module):
    """TAMT's trainable real-valued mask M̄ with threshold τ (Eq. 3-5).

    The effective weight is ``W ⊙ [M̄ > τ]``; a score equal to τ is pruned (strict ``>``, reference-impl §5.1).
    τ is a buffer re-set by the training loop to keep the target number of zeros (see ``tamt_core.methods.threshold``).
    """

    def __init__(self, scores: torch.Tensor, threshold: float = PHI) -> None:
        super().__init__()
        self.scores = nn.Parameter(scores.detach().clone())
        # τ lives beside the scores: a CPU τ would make every re-set on a GPU a blocking copy per matrix
        self.register_buffer("threshold", torch.full((), float(threshold), dtype=scores.dtype, device=scores.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _MaskedByScores.apply(weight, self.scores, self.threshold)

    def binary_mask(self) -> torch.Tensor:
        return self.scores.detach() > self.threshold


def _attach(model: nn.Module, make: callable[[str, torch.Tensor], nn.Module]) -> None:
    _check_unmasked(model)
    for name, module in masked_modules(model).items():
        parametrize.register_parametrization(module, "weight", make(name, module.weight))


def apply_fixed_mask(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> None:
    """Attach a boolean mask to every matrix of the masked set (names as in :func:`masked_parameter_names`).

    Raises:
        MaskMismatchError: when names or shapes of ``mask`` do not match the model.
    """
    _check_fits(mask, model)
    _attach(model, lambda name, w: FixedMask(mask[name].to(device=w.device)))


BAKED_MASK = "baked_mask"
"""The buffer in which :func:`bake_fixed_mask` keeps a matrix's mask (1 kept, 0 masked) on the module that owns the
matrix, in the weight's dtype: on a CPU ``grad.mul_(mask)`` takes 3.5 ms for the 11.7M-entry MiniLM embedding with
a float mask and 31 ms with a bool one (torch upcasts a bool operand element by element; bench/README.md), for 4
bytes an entry instead of 1 (BERT-base: 436 MB). Not saved with the module's state (the mask file holds it); it moves
and converts with the module."""


def bake_fixed_mask(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> None:
    """Write a fixed boolean mask into the weights once (``W ← W ⊙ M``) and zero the masked entries' gradients from
    then on: training θ ⊙ M (fine-tuning, §4.1) at the cost of training θ.

    Why: :func:`apply_fixed_mask` recomputes ``W ⊙ M`` in every forward and ``∂L/∂(W ⊙ M) ⊙ M`` in every backward,
    for every matrix, the 23M-entry word embeddings of BERT-base included; a masked fine-tuning step cost 1.14 × a
    dense one (bench/README.md, ``bench_finetune.py --part ratio``). Baked, the forward is the dense one, and the
    backward multiplies each masked matrix's gradient by M once, in place, as it lands in ``.grad`` (a
    post-accumulate-grad hook, with M in the weight's dtype: :data:`BAKED_MASK`).

    The forward and backward compute the same values as the parametrization: the weight the layers see is W ⊙ M
    either way, and the gradient that reaches W is ``∂L/∂(W ⊙ M) ⊙ M`` either way. The masked entries then stay
    exactly 0 through clipping and AdamW, weight decay included:

    * their gradient is 0 (the hook), and clipping multiplies every gradient by one factor in [0, 1]: still 0 (but a
      NaN anywhere makes the factor NaN and every gradient NaN, masked or not: a run lost either way, since the
      parametrization's W ⊙ M passes a NaN original on too);
    * AdamW's moments start at 0 and stay 0 where the gradient is 0 (m ← β1·m + (1−β1)·0, v ← β2·v + (1−β2)·0²), so
      the Adam update there is lr · 0 / (√0 + ε) = 0 (ε > 0; Tab. 1: 1e-8), in the fused kernel too;
    * weight decay is decoupled (AdamW, Loshchilov & Hutter, ICLR 2019): W ← W · (1 − lr·λ) keeps 0 at 0. (Adam with
      an L2 term adds λ·W = 0 to the gradient: 0 too.)

    Unlike the parametrization the stored weight holds 0, not θ0, at masked entries, so a checkpoint or a saved model
    is θ ⊙ M as it stands. For a mask that stays fixed only: IMP re-prunes during training and keeps the
    parametrization. A word embedding tied to an MLM decoder is refused: baking would prune the decoder too, which
    the parametrization leaves dense (reference-impl §1.1).

    Raises:
        MaskMismatchError: when names or shapes of ``mask`` do not match the model.
        RuntimeError: when the model already carries masks, or a masked matrix is shared with another module.
    """
    _check_fits(mask, model)
    _check_unmasked(model)
    modules = masked_modules(model)
    shared = _shared_parameters(model)
    tied = [name for name, module in modules.items() if id(module.weight) in shared]
    if tied:
        raise RuntimeError(f"{tied[0]} is shared with another module (a tied MLM decoder?): baking the mask into it "
                           "would prune that module too; use apply_fixed_mask")
    with torch.no_grad():
        for name, module in modules.items():
            module.register_buffer(BAKED_MASK, mask[name].to(device=module.weight.device, dtype=torch.bool)
                                   .to(module.weight.dtype), persistent=False)
            module.weight.mul_(getattr(module, BAKED_MASK))
            module.weight.register_post_accumulate_grad_hook(_MaskGradient(module))


class _MaskGradient:
    """Zeroes the masked entries of a weight's accumulated gradient, in place. Reads the mask from its module at each
    call, so moving the model to another device after baking moves the mask with it."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, weight: torch.Tensor) -> None:
        weight.grad.mul_(getattr(self.module, BAKED_MASK))


def _shared_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters reachable under more than one name (tied weights)."""
    seen: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        seen[id(param)] = seen.get(id(param), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def _check_unmasked(model: nn.Module) -> None:
    modules = masked_modules(model).values()
    if any(hasattr(m, BAKED_MASK) for m in modules):
        raise RuntimeError("this model has a mask baked into its weights (bake_fixed_mask); load it again to mask it "
                           "otherwise")
    if any(parametrize.is_parametrized(m, "weight") for m in modules):
        raise RuntimeError("this model already carries masks; call remove_masks(model) first")


def apply_score_masks(model: nn.Module, scores: Mapping[str, torch.Tensor], threshold: float = PHI) -> None:
    """Attach TAMT score masks initialised to ``scores`` and freeze the dense originals (§3.4.1)."""
    _check_fits(scores, model)
    _attach(model, lambda name, w: ScoreMask(scores[name].to(device=w.device, dtype=w.dtype), threshold))
    for module in masked_modules(model).values():
        module.parametrizations.weight.original.requires_grad_(False)


def _check_fits(mask: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Names and shapes must match the model; a pooler entry is allowed for a model without a pooler (it would be
    unused, e.g. RoBERTa's classification head reads the [CLS] state, reference-impl §1.1)."""
    check_mask_matches(mask, weight_shapes(model), optional=(POOLER,))


def mask_parametrizations(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: FixedMask | ScoreMask}`` of the attached masks, in canonical order."""
    out = {}
    for name, module in masked_modules(model).items():
        if not parametrize.is_parametrized(module, "weight"):
            raise RuntimeError(f"{name} carries no mask; attach one with apply_fixed_mask/apply_score_masks")
        out[name] = module.parametrizations.weight[0]
    return out


def current_mask(model: nn.Module) -> dict[str, torch.Tensor]:
    """The binary mask now in force, as CPU bool tensors keyed by parameter name (True = kept)."""
    return {name: p.binary_mask().detach().to("cpu", copy=True) for name, p in mask_parametrizations(model).items()}


def remove_masks(model: nn.Module, bake: bool = False) -> None:
    """Detach every mask; with ``bake`` the zeros are written into the weights (for export), else W is restored."""
    for module in masked_modules(model).values():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=bake)
