"""One code path for CPU and GPU: CUDA with bf16 autocast when present, fp32 on the CPU otherwise."""

from __future__ import annotations

import contextlib

import torch

from tamt_core.hparams import SettingError


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given (``"cpu"``, ``"cuda"``, ``"cuda:1"``), else CUDA when available, else the CPU."""
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SettingError("device", f"device {requested!r} asked for, but torch sees no CUDA device; ask for "
                                         "'cpu'")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (weights and optimizer state stay fp32); a no-op on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
