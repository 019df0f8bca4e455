"""Resumable training state: one safetensors file per checkpoint, every non-tensor value as JSON in its header.

Searches run for hours and fine-tunes by the thousand on preemptible GPUs; a restarted run must continue the same
run, not begin another. A checkpoint therefore holds everything that decides the next step, gathered from named
*components* that each expose ``state_dict()`` / ``load_state_dict()`` (torch's own optimizers and schedules, and
the small stateful pieces of our loops: trained tensors, data position, RNG streams, threshold bands). Their
nested state dicts are flattened into one safetensors file: tensors by their path (``optimizer/state/0/exp_avg``),
everything else as JSON in the header, where each tensor is replaced by a reference to its path. Tied tensors
(one storage under two names) are stored once. safetensors rather than pickle: loading never executes code.

Writes are atomic (a temporary file, then ``os.replace``), so a crash while saving leaves the previous checkpoint
intact. :class:`CheckpointDirectory` keeps the newest checkpoints of a run as directories, each a state file plus
whatever files the run wants restored with it (a search's masks), and sets aside a checkpoint that cannot be read
instead of deleting it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from tamt_table.atomic import replacing, write_bytes

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


# --- components ------------------------------------------------------------------------------------------------


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


# --- checkpoints of a run as directories -------------------------------------------------------------------------


class CheckpointDirectory:
    """A run's checkpoints under ``root``: ``step-00000120/`` holds ``state.safetensors`` and the files saved with it.

    A new checkpoint is assembled in a hidden directory and renamed into place, so a directory named
    ``step-*`` is always complete. The newest ``keep`` are kept, so a checkpoint that turns out unreadable has a
    predecessor to fall back to; an unreadable one is moved into ``root/set-aside/``, never deleted.
    """

    def __init__(self, root: Path, keep: int = 2) -> None:
        self.root, self.keep = Path(root), keep

    def candidates(self) -> list[Path]:
        """Complete checkpoints, newest first."""
        if not self.root.is_dir():
            return []
        return sorted((p for p in self.root.glob("step-*") if p.is_dir()), key=lambda p: p.name, reverse=True)

    def staging(self, step: int) -> Path:
        """An empty directory to assemble the checkpoint of ``step`` in."""
        staging = self.root / f".staging-step-{step:08d}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def publish(self, staging: Path, step: int) -> Path:
        final = self.root / f"step-{step:08d}"
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        for old in self.candidates()[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def set_aside(self, checkpoint: Path) -> Path:
        target = self.root / "set-aside" / f"{checkpoint.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(checkpoint, target)
        return target

    def clear(self) -> None:
        """Remove every checkpoint (a finished run needs none); set-aside ones stay for inspection."""
        for path in [*self.candidates(), *self.root.glob(".staging-*")]:
            shutil.rmtree(path, ignore_errors=True)


def link_or_copy(sources: Iterable[Path], directory: Path) -> None:
    """Put ``sources`` into ``directory`` as hard links (free on one filesystem), else as copies."""
    for source in sources:
        target = directory / source.name
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


# --- run directories ---------------------------------------------------------------------------------------------


class OutputDirectoryError(ValueError):
    """The output directory belongs to a different run, or cannot be one (a file, not writable)."""


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON so readers see the old file or the whole new one."""
    write_bytes(path, (json.dumps(obj, indent=2, allow_nan=True) + "\n").encode())


def claim_directory(out_dir: Path, identity_file: str, identity: dict[str, Any], *, kind: str,
                    describe: Callable[[dict[str, Any]], str]) -> None:
    """Make ``out_dir`` this run's (writing ``identity_file``), or check that it already is.

    ``identity`` must carry the ``run_id``; ``describe`` summarises the other run's recorded identity in the error.

    Raises:
        OutputDirectoryError: the directory holds another run, or files that are not a run of this kind.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirectoryError(f"{out_dir} is a file, not a directory; pass a new or empty output directory")
    recorded_path = out_dir / identity_file
    if recorded_path.exists():
        recorded = json.loads(recorded_path.read_text())
        if recorded.get("run_id") != identity["run_id"]:
            raise OutputDirectoryError(
                f"{out_dir} holds another {kind} run (run id {recorded.get('run_id')}: {describe(recorded)}); this "
                f"one is {identity['run_id']}. Pass a new output directory, or delete {out_dir} to discard the "
                "other run.")
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        raise OutputDirectoryError(f"{out_dir} is not empty and holds no {kind} run (no {identity_file}); pass an "
                                   "empty or new output directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a parent is a file, or not writable
        raise OutputDirectoryError(f"cannot create {out_dir} ({error.strerror}); pass an output directory you can "
                                   "write") from error
    write_json(recorded_path, identity)


# --- the fine-tuning loop's checkpoint (one file) ----------------------------------------------------------------


def save_training_state(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                        schedule: torch.optim.lr_scheduler.LRScheduler, progress: dict[str, Any]) -> None:
    """The fine-tuning loop's whole state (every trained weight, AdamW, schedule, dropout RNG) in one file."""
    components = _training_components(model, optimizer, schedule)
    save_state(path, {name: component.state_dict() for name, component in components.items()}, progress)


def load_training_state(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                        schedule: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote; returns the progress record (see :func:`load_state`)."""
    return load_state(path, _training_components(model, optimizer, schedule))


def _training_components(model, optimizer, schedule) -> dict[str, Stateful]:
    device = next(model.parameters()).device
    return {"model": TrainedTensors(model), "optimizer": optimizer, "schedule": schedule, "rng": RngStreams(device)}
