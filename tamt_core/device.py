"""One code path for CPU and GPU, with the precision and the determinism a run asks for.

**Precision.** ``fp32`` is the paper's and the released code's (reference-impl: no mixed precision). ``bf16``
runs the forward passes under bf16 autocast while weights, scores and optimizer state stay fp32: about twice the
GPU throughput on A100/H100-class GPUs (``bench/gpu_check.py``), at the cost of bf16 rounding in activations. The
default (``None``) is bf16 on CUDA, for that throughput, and fp32 on the CPU, where bf16 autocast is slower; a
run that names its precision gets its own run id, and every row records the precision it ran in
(``docs/fidelity.md``).

**Determinism.** ``deterministic`` runs a block with torch's deterministic algorithms, cuBLAS's fixed workspace and
the math attention kernel (SDPA's CUDA backward kernels accumulate in a nondeterministic order): on a GPU a run,
and a resumed run, then repeat their floating-point results exactly; on the CPU they do anyway.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from tamt_core.hparams import SettingError

PRECISIONS = ("bf16", "fp32")
CUBLAS_WORKSPACE = ":4096:8"
"""The cuBLAS workspace setting that makes its GEMMs deterministic (CUDA's reproducibility notes)."""


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given (``"cpu"``, ``"cuda"``, ``"cuda:1"``), else CUDA when available, else the CPU."""
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SettingError("device", f"device {requested!r} asked for, but torch sees no CUDA device; ask for "
                                         "'cpu'")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_precision(precision: str | None) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise SettingError("precision", f"precision must be one of {', '.join(PRECISIONS)} (or unset: bf16 on a "
                                        f"GPU, fp32 on the CPU), got {precision!r}")


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """The precision a run on ``device`` computes in: as asked, else bf16 on CUDA and fp32 on the CPU."""
    check_precision(precision)
    return precision or ("bf16" if device.type == "cuda" else "fp32")


def autocast(device: torch.device, precision: str | None = None) -> contextlib.AbstractContextManager:
    """bf16 autocast when the run computes in bf16 (weights and optimizer state stay fp32); a no-op in fp32."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Deterministic algorithms, cuBLAS workspace and attention kernel while the block runs (see the module
    docstring); the previous settings afterwards. A no-op when ``enabled`` is false."""
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(True)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        if before[1] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = before[1]


SYNCING = ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")
"""Tensor methods that copy a device's value to the host (or, for ``nonzero``, its size)."""


@contextlib.contextmanager
def counted_host_syncs() -> Iterator[Counter]:
    """Count, while the block runs, the calls that would make the host wait for a GPU: :data:`SYNCING`,
    ``torch.nonzero`` and boolean-mask indexing, by patching torch (so it counts on the CPU too, where nothing
    waits). A training step should make as few as it can (``tests/test_host_syncs.py``, ``bench/gpu_check.py``)."""
    counts: Counter = Counter()
    patched: list[tuple[object, str, object]] = []

    def patch(owner: object, name: str, replacement: object) -> None:
        patched.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)

    def counting(name: str, original):
        def counted(*args, **kwargs):
            counts[name] += 1
            return original(*args, **kwargs)
        return counted

    getitem = torch.Tensor.__getitem__

    def counting_getitem(self, index):
        if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
            counts["boolean index"] += 1
        return getitem(self, index)

    try:
        for name in SYNCING:
            patch(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
        patch(torch, "nonzero", counting("nonzero", torch.nonzero))
        patch(torch.Tensor, "__getitem__", counting_getitem)
        yield counts
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
