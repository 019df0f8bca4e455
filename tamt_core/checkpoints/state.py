"""Resumable training state: one safetensors file per checkpoint, every non-tensor value as JSON in its header.

Searches run for hours and fine-tunes by the thousand on preemptible GPUs; a restarted run must continue the same
run, not begin another. A checkpoint therefore holds everything that decides the next step, gathered from named
*components* that each expose ``state_dict()`` / ``load_state_dict()`` (torch's own optimizers and schedules, and
the small stateful pieces of our loops: trained tensors, data position, RNG streams, threshold bands;
:mod:`tamt_core.checkpoints.components`). Their nested state dicts are flattened into one safetensors file: tensors
by their path (``optimizer/state/0/exp_avg``), everything else as JSON in the header, where each tensor is replaced
by a reference to its path. Tied tensors (one storage under two names) are stored once. safetensors rather than
pickle: loading never executes code. Writes are atomic (a temporary file, then ``os.replace``), so a crash while
saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from tamt_table.atomic import replacing

FORMAT = "tamt-training-state-2"
STATE_FILE = "state.safetensors"
_TENSOR, _ITEMS = "__tensor__", "__items__"


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from: another run's, another format, or another parameter layout."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file that cannot be read (truncated, overwritten, not a safetensors file)."""


class Stateful(Protocol):
    """What a checkpoint component provides (``torch.distributed.checkpoint.stateful.Stateful``'s shape)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# --- the codec: nested state dicts <-> (tensors by path, JSON skeleton) ------------------------------------------


def _flatten(value: Any, path: str, tensors: dict[str, torch.Tensor], seen: dict[tuple, str]) -> Any:
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.device.type != "meta" and tensor.numel():
            identity = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
                        tuple(tensor.shape), tensor.dtype)
            if identity in seen:  # a tied tensor: one copy in the file, two references
                return {_TENSOR: seen[identity]}
            seen[identity] = path
        tensors[path] = tensor.contiguous() if tensor.device.type == "cpu" else tensor.to("cpu")  # written at once
        return {_TENSOR: path}
    if isinstance(value, Mapping):
        if all(isinstance(key, str) for key in value):
            return {key: _flatten(inner, f"{path}/{key}", tensors, seen) for key, inner in value.items()}
        return {_ITEMS: [[key, _flatten(inner, f"{path}/{key}", tensors, seen)] for key, inner in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_flatten(inner, f"{path}/{i}", tensors, seen) for i, inner in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint value at {path} is a {type(value).__name__}; components may hold tensors, "
                    "numbers, strings, lists and dicts only")


def _unflatten(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            return tensors[value[_TENSOR]]
        if set(value) == {_ITEMS}:
            return {key: _unflatten(inner, tensors) for key, inner in value[_ITEMS]}
        return {key: _unflatten(inner, tensors) for key, inner in value.items()}
    if isinstance(value, list):
        return [_unflatten(inner, tensors) for inner in value]
    return value


def save_state(path: Path, states: Mapping[str, dict[str, Any]], progress: Mapping[str, Any]) -> None:
    """Write the components' ``states`` (``{name: component.state_dict()}``) and the JSON ``progress`` record to
    ``path``, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    skeleton = {name: _flatten(state, name, tensors, seen) for name, state in states.items()}
    with replacing(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "state": json.dumps(skeleton),
                                               "progress": json.dumps(dict(progress))})


def read_progress(path: Path) -> dict[str, Any]:
    """The ``progress`` record of a checkpoint, from its header alone (no tensor is read).

    Raises:
        CorruptCheckpointError: the file cannot be read as a safetensors file.
        CheckpointError: it is not a tamt training checkpoint of this format.
    """
    return json.loads(_header(Path(path))["progress"])


def _header(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CorruptCheckpointError(f"{path} cannot be read ({type(error).__name__}: {error})") from error
    if metadata.get("format") != FORMAT:
        found = metadata.get("format", "no tamt format")
        raise CheckpointError(f"{path} is not a tamt training checkpoint of format {FORMAT} ({found}); move it away "
                              "to start the run over")
    return metadata


def load_state(path: Path, components: Mapping[str, Stateful]) -> dict[str, Any]:
    """Restore every component from ``path``; returns the progress record.

    Raises:
        CorruptCheckpointError: the file or its header cannot be read.
        CheckpointError: the file holds other components, or a component refuses its state (another model).
    """
    path = Path(path)
    metadata = _header(path)
    try:
        tensors = load_file(str(path))
        skeleton = json.loads(metadata["state"])
        progress = json.loads(metadata["progress"])
        states = {name: _unflatten(value, tensors) for name, value in skeleton.items()}
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        raise CorruptCheckpointError(f"{path} cannot be read ({type(error).__name__}: {error})") from error
    if set(states) != set(components):
        raise CheckpointError(f"{path} holds the components {sorted(states)}, this run has {sorted(components)}")
    for name, component in components.items():
        component.load_state_dict(states[name])
    return progress
