"""Fine-tune checkpoints written while the mask was a parametrization, brought to the baked layout.

Until 2026-12 a fine-tune attached its mask as a ``FixedMask`` parametrization (``apply_fixed_mask``), so its
checkpoints hold each masked matrix as ``….parametrizations.weight.original`` (θ0 at the masked entries) beside the
mask buffer ``….parametrizations.weight.0.mask``, and AdamW's state is numbered in that model's parameter order, in
which a masked Linear's weight comes after its bias. A fine-tune now bakes the mask into the weights
(``bake_fixed_mask``): plain ``….weight`` names holding θ ⊙ M, the weight before the bias.

:func:`bake_parametrized_checkpoint` rewrites such a checkpoint in the new layout before the run resumes from it, so a
sweep preempted before the change loses nothing: the weights are written as ``original ⊙ mask`` (what the
parametrization computed in every forward), the mask buffers dropped, and AdamW's state renumbered to the new
parameter order. Nothing else changes: AdamW's moments are 0 at the masked entries either way (their gradient was
always 0), so the resumed run continues the same training.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import nn

from tamt_core.checkpoints import CheckpointError, load_state, save_state

log = logging.getLogger(__name__)

ORIGINAL = ".parametrizations.weight.original"
MASK_BUFFER = ".parametrizations.weight.0.mask"


class _Held:
    """A checkpoint component that only holds the state it is given."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return self.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state


def is_parametrized_checkpoint(path: Path) -> bool:
    """Whether the checkpoint at ``path`` holds masked matrices under parametrized names (from its header alone);
    ``False`` for a file that cannot be read (resuming sets it aside)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return any(name.endswith(ORIGINAL) for name in handle.keys())
    except (SafetensorError, OSError, ValueError):
        return False


def bake_parametrized_checkpoint(path: Path, model: nn.Module, components: Iterable[str],
                                 identity: Mapping[str, Any]) -> bool:
    """Rewrite the checkpoint at ``path`` (atomically) in ``model``'s baked layout when it was written with the mask
    as a parametrization and belongs to the run ``identity``; returns whether it did.

    ``model`` is the fine-tune's model with the mask baked in, ``components`` the names of the checkpoint's
    components (``model``: its trained tensors, ``optimizer``: AdamW over ``model``'s trainable parameters in
    order). A checkpoint of another run is left alone (resuming reports it).

    Raises:
        CheckpointError: the checkpoint does not fit ``model`` (another model, or a layout this cannot map).
    """
    path = Path(path)
    if not path.is_file() or not is_parametrized_checkpoint(path):
        return False
    held = {name: _Held() for name in components}
    progress = load_state(path, held)
    if progress.get("identity", identity) != dict(identity):
        return False
    model_state, optimizer_state = held["model"].state, held["optimizer"].state
    held["model"].state = _baked_tensors(model_state)
    held["optimizer"].state = _renumbered(optimizer_state, model, model_state)
    save_state(path, {name: component.state for name, component in held.items()}, progress)
    log.warning("%s was written while the mask was a parametrization; rewritten with the mask baked into the weights "
                "(AdamW's state renumbered to match), resuming from it", path)
    return True


def _baked_tensors(state: Mapping[str, Any]) -> dict[str, Any]:
    """``….parametrizations.weight.original`` ⊙ its mask under ``….weight``; the mask buffers dropped."""
    out = {}
    for name, value in state.items():
        if name.endswith(MASK_BUFFER):
            continue
        if name.endswith(ORIGINAL):
            prefix = name.removesuffix(ORIGINAL)
            if prefix + MASK_BUFFER not in state:
                raise CheckpointError(f"the checkpoint holds {name} without its mask {prefix + MASK_BUFFER}")
            name, value = prefix + ".weight", value * state[prefix + MASK_BUFFER]
        out[name] = value
    return out


def _renumbered(optimizer: dict[str, Any], model: nn.Module, legacy: Mapping[str, Any]) -> dict[str, Any]:
    """AdamW's state dict with its parameter numbers mapped from the parametrized model's parameter order to
    ``model``'s.

    torch numbers an optimizer's parameters by position and matches a loaded state to the current parameters by
    position. The parametrized model's order is that of its trained tensors in the checkpoint (a state dict lists a
    module's parameters before its children's, as ``parameters()`` does), where a masked weight sits under its
    parametrized name after its module's bias.
    """
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    legacy_name = {name: name.removesuffix(".weight") + ORIGINAL if name.removesuffix(".weight") + ORIGINAL in legacy
                   else name for name, _ in params}
    wanted = set(legacy_name.values())
    legacy_order = [name for name in legacy if name in wanted]
    groups = optimizer["param_groups"]
    if len(legacy_order) != len(params) or len(groups) != 1 or len(groups[0]["params"]) != len(params):
        covered = sum(len(group["params"]) for group in groups)
        raise CheckpointError(f"the checkpoint's optimizer covers {covered} parameters in {len(groups)} groups, this "
                              f"fine-tune trains {len(params)} in one: it was written for another model")
    number = dict(zip(legacy_order, groups[0]["params"]))
    renumbered = [number[legacy_name[name]] for name, _ in params]
    for (name, param), key in zip(params, renumbered):
        moment = optimizer["state"].get(key, {}).get("exp_avg")
        if moment is not None and tuple(moment.shape) != tuple(param.shape):
            raise CheckpointError(f"AdamW's state for {name} has shape {tuple(moment.shape)}, the parameter "
                                  f"{tuple(param.shape)}: the checkpoint was written for another model")
    return {**optimizer, "param_groups": [{**groups[0], "params": renumbered}]}
