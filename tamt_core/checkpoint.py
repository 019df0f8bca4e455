"""Resumable training state in one safetensors file: weights, optimizer moments, schedule, RNG and progress.

A sweep of thousands of fine-tuning runs on preemptible GPUs loses runs mid-way; restarting one must continue the
same run, not begin another. So the state is complete (everything that decides the next step: trainable
weights, AdamW's moments and step counts, the LR schedule, torch's RNG for dropout, the progress record) and
written atomically (temporary file, then ``os.replace``), so a crash while saving leaves the previous
checkpoint intact. safetensors rather than pickle: loading a checkpoint never executes code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT = "tamt-training-state-1"


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from: not ours, another format, or another model/optimizer layout."""


def save_training_state(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                        schedule: torch.optim.lr_scheduler.LRScheduler, progress: dict[str, Any]) -> None:
    """Write the complete state needed to continue training; ``progress`` is any JSON-serialisable record."""
    tensors: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        tensors[f"model/{name}"] = param.detach().to("cpu", copy=True).contiguous()
    optimizer_state = optimizer.state_dict()
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            tensors[f"optimizer/{index}/{key}"] = torch.as_tensor(value).detach().to("cpu", copy=True).contiguous()
    tensors["rng/cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state
    metadata = {
        "format": FORMAT,
        "progress": json.dumps(progress),
        "param_groups": json.dumps(optimizer_state["param_groups"]),
        "schedule": json.dumps(schedule.state_dict()),
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_training_state(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                        schedule: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """Restore everything :func:`save_training_state` wrote into these objects; returns the progress record.

    Raises:
        CheckpointError: when the file is not such a checkpoint or was written for other parameters.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tamt training checkpoint ({FORMAT}); delete it to start over")
    tensors = load_file(str(path))
    params = dict(model.named_parameters())
    saved = {k.removeprefix("model/") for k in tensors if k.startswith("model/")}
    if saved != set(params):
        raise CheckpointError(f"{path} holds parameters of another model ({len(saved ^ set(params))} names "
                              "differ); delete it to start over")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[f"model/{name}"])
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    schedule.load_state_dict(json.loads(metadata["schedule"]))
    torch.set_rng_state(tensors["rng/cpu"])
    cuda_states = [tensors[f"rng/cuda/{i}"] for i in range(torch.cuda.device_count()) if f"rng/cuda/{i}" in tensors]
    if cuda_states:
        torch.cuda.set_rng_state_all(cuda_states)
    return json.loads(metadata["progress"])
