"""The small stateful pieces a checkpoint gathers besides torch's optimizers and schedules: the tensors training
changes, and the RNG streams dropout draws from."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from tamt_core.checkpoints.state import CheckpointError
from tamt_core.parallel import Ranks, dropout_seed

log = logging.getLogger(__name__)


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
    """torch's global RNG streams that dropout draws from: the CPU generator and, on CUDA, the device's.

    A checkpoint resumes on another device type too: written on the CPU and resumed on CUDA, the device's stream is
    not in it and stays as seeded; written on CUDA and resumed on the CPU, the device's stream goes unused. Either
    way dropout draws other numbers than the uninterrupted run, which a warning says; everything else resumes
    exactly."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def state_dict(self) -> dict[str, Any]:
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["cpu"])
        restore_device_stream(self.device, state.get("cuda"))


def restore_device_stream(device: torch.device, saved: torch.Tensor | None) -> None:
    """Put back the CUDA stream ``saved`` on ``device``, warning where the checkpoint came from another device type
    (see :class:`RngStreams`)."""
    if device.type == "cuda" and saved is not None:
        torch.cuda.set_rng_state(saved, device)
    elif device.type == "cuda" or saved is not None:
        written, here = ("the CPU", "CUDA") if saved is None else ("CUDA", "the CPU")
        log.warning("the checkpoint was written on %s and resumes on %s: dropout draws other numbers from here on, "
                    "so the resumed run is not the uninterrupted one (everything else resumes exactly)", written, here)


class RankRngStreams:
    """torch's global RNG streams of every rank (dropout): each rank's CPU generator and, on CUDA, its device's.

    Saving gathers every rank's streams (all ranks must call :meth:`state_dict`); each rank restores its own. A
    checkpoint written by another number of ranks has no stream for some ranks; they are reseeded from
    ``(seed, rank, step)`` and the resumed run is no longer the uninterrupted one, which the caller says.
    """

    def __init__(self, device: torch.device, ranks: Ranks, seed: int) -> None:
        self.device, self.ranks, self.seed = device, ranks, seed
        self.reseeded = False

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        state = {"cpu": self.ranks.all_gather(torch.get_rng_state())}
        if self.device.type == "cuda":
            state["cuda"] = self.ranks.all_gather(torch.cuda.get_rng_state(self.device))
        return state

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        if len(state["cpu"]) != self.ranks.world_size:
            self.reseeded = True
            torch.manual_seed(dropout_seed(self.seed, self.ranks.rank) + 7919 * len(state["cpu"]))
            return
        torch.set_rng_state(state["cpu"][self.ranks.rank])
        restore_device_stream(self.device, state["cuda"][self.ranks.rank] if "cuda" in state else None)
