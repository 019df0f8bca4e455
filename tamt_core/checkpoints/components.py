"""The small stateful pieces a checkpoint gathers besides torch's optimizers and schedules: the tensors training
changes, and the RNG streams dropout draws from."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tamt_core.checkpoints.state import CheckpointError


class TrainedTensors:
    """The tensors of a module that training changes: parameters that require gradients, and every buffer.

    Frozen parameters (θ0 under a TAMT mask) are left out: they come from the model files, which the run's
    identity pins by fingerprint, so a checkpoint holds scores and optimizer state, not a second copy of θ0.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def _names(self) -> list[str]:
        frozen = {id(p) for p in self.module.parameters() if not p.requires_grad}
        return [name for name, value in self.module.state_dict(keep_vars=True).items() if id(value) not in frozen]

    def state_dict(self) -> dict[str, Any]:
        state = self.module.state_dict(keep_vars=True)
        return {name: state[name] for name in self._names()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = set(self._names())
        if set(state) != expected:
            raise CheckpointError(f"the checkpoint holds other trained tensors ({len(set(state) ^ expected)} names "
                                  "differ): it was written for another model or method")
        with torch.no_grad():
            current = self.module.state_dict(keep_vars=True)
            for name, value in state.items():
                if current[name].shape != value.shape:
                    raise CheckpointError(f"{name} has shape {tuple(value.shape)} in the checkpoint and "
                                          f"{tuple(current[name].shape)} in the model")
                current[name].copy_(value)


class RngStreams:
    """torch's global RNG streams that dropout draws from: the CPU generator and, on CUDA, the device's."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def state_dict(self) -> dict[str, Any]:
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["cpu"])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)
