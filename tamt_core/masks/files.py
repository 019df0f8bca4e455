"""Binary masks over the masked weight matrices of a BERT-family model: the file format, checks and similarity.

A mask is a mapping ``{param_name: torch.BoolTensor}`` (True = weight kept) over the masked matrices of a model,
keyed the way ``transformers.AutoModel`` names its parameters (no ``bert.``/``roberta.`` prefix), e.g.
``embeddings.word_embeddings.weight`` or ``encoder.layer.0.attention.self.query.weight`` (reference-impl §1: 74
matrices for BERT-base). "Sparsity" is always the fraction of entries set to zero (False), relative to the masked
set (reference-impl §1.3).

File format (``FORMAT_VERSION`` 1) — a safetensors file, chosen so that loading never unpickles anything:

* one ``uint8`` tensor per masked parameter, under the parameter's name, holding ``numpy.packbits`` of the
  flattened (row-major) bool array: 1 bit per entry plus at most 7 padding bits per matrix, so a BERT-base mask
  (108,965,376 entries) takes ~13.6 MB instead of ~109 MB as bools;
* safetensors metadata (str → str): ``format_version``, ``names`` (JSON list, the caller's key order — safetensors
  itself does not keep tensor order), ``shapes`` (JSON list of lists, same order), ``meta`` (canonical JSON of the
  user meta) and ``content_hash`` (sha256, see :func:`_content_hash`).

The content hash covers the format version, ordered names, shapes, packed bytes and meta, so any changed bit,
name, shape or meta value is detected on load. The meta records which model (and which exact pretrained weights,
via :func:`weights_fingerprint`) a mask belongs to, so a mask is never silently applied to another model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy
import torch

from tamt_table.atomic import write_bytes
from tamt_core.ids import canonical_json

__all__ = [
    "FORMAT_VERSION",
    "REQUIRED_META_KEYS",
    "Mask",
    "MaskFileError",
    "MaskMismatchError",
    "save_mask",
    "load_mask",
    "check_mask_matches",
    "weights_fingerprint",
    "similarity",
    "distance",
    "mask_summary",
]

FORMAT_VERSION = 1
"""Version of the on-disk layout; bump it when the layout or the hash encoding changes."""

REQUIRED_META_KEYS: tuple[str, ...] = ("model", "model_fingerprint", "method", "sparsity", "seed", "step")
"""Meta keys every saved mask must carry (values may be ``None`` where not applicable, e.g. ``seed`` for OMP)."""

_MAGIC = b"tamt-mask\x00"
_REGENERATE_HINT = "regenerate it with `tamt search ...` (or restore it from the original run's output)"


class MaskFileError(ValueError):
    """A mask file cannot be used: not a tamt mask, unknown version, corrupted, or made for another model."""


class MaskMismatchError(MaskFileError):
    """A mask (on disk or in memory) does not fit the model it is being applied to."""


@dataclass(frozen=True, eq=False)
class Mask:
    """A loaded (or in-memory) mask: ordered bool tensors plus JSON-serialisable meta.

    ``eq=False`` because element-wise tensor comparison has no single truth value; compare masks with
    :attr:`content_hash` or :func:`similarity`.
    """

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_entries(self) -> int:
        """Total number of entries over all masked matrices."""
        return sum(int(t.numel()) for t in self.tensors.values())

    @property
    def num_zeros(self) -> int:
        """Total number of pruned (False) entries over all masked matrices."""
        return sum(int(t.numel()) - int(torch.count_nonzero(t)) for t in self.tensors.values())

    @property
    def sparsity(self) -> float:
        """Global sparsity: zeros / entries over all masked matrices (reference-impl §1.3)."""
        n = self.num_entries
        return self.num_zeros / n if n else 0.0

    def per_matrix_sparsity(self) -> dict[str, float]:
        """Fraction of zeros of each matrix, in the mask's key order."""
        out: dict[str, float] = {}
        for name, t in self.tensors.items():
            n = int(t.numel())
            out[name] = (n - int(torch.count_nonzero(t))) / n if n else 0.0
        return out

    @property
    def content_hash(self) -> str:
        """sha256 (hex) of this mask's content; equals the ``content_hash`` of the file ``save_mask`` writes."""
        names, shapes, packed = _pack_all(self.tensors)
        return _content_hash(names, shapes, packed, canonical_json(self.meta))


# --------------------------------------------------------------------------------------------------------------
# Encoding helpers
# --------------------------------------------------------------------------------------------------------------


def _packed_len(numel: int) -> int:
    return (numel + 7) // 8


def _pack(name: str, t: torch.Tensor) -> np.ndarray:
    """Bit-pack one bool tensor (row-major, MSB first within each byte, zero padding at the end)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"mask entry {name!r} is a {type(t).__name__}, expected a torch.BoolTensor")
    if t.dtype != torch.bool:
        raise TypeError(
            f"mask entry {name!r} has dtype {t.dtype}, expected torch.bool (True = kept); "
            "convert a 0/1 mask with `.bool()` first"
        )
    arr = t.detach().to("cpu").contiguous().reshape(-1).numpy()
    return np.packbits(arr)


def _pack_all(tensors: Mapping[str, torch.Tensor]) -> tuple[list[str], list[list[int]], list[np.ndarray]]:
    names = list(tensors.keys())
    shapes = [[int(d) for d in tensors[n].shape] for n in names]
    packed = [_pack(n, tensors[n]) for n in names]
    return names, shapes, packed


def _content_hash(names: list[str], shapes: list[list[int]], packed: list[np.ndarray], meta_json: str) -> str:
    """sha256 over a length-prefixed encoding of (version, names, shapes, packed bytes, meta JSON).

    Every variable-length field is preceded by its 8-byte little-endian length, so no two different contents
    encode to the same byte stream.
    """
    h = hashlib.sha256()

    def put(b: bytes) -> None:
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)

    h.update(_MAGIC)
    h.update(int(FORMAT_VERSION).to_bytes(8, "little"))
    put(canonical_json(names).encode("utf-8"))
    put(canonical_json(shapes).encode("utf-8"))
    for p in packed:
        h.update(int(p.nbytes).to_bytes(8, "little"))
        h.update(memoryview(np.ascontiguousarray(p, dtype=np.uint8)))
    put(meta_json.encode("utf-8"))
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------------------------


def save_mask(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
) -> str:
    """Write ``tensors`` (bool, True = kept) with ``meta`` to ``path`` as a bit-packed safetensors file.

    ``meta`` must contain :data:`REQUIRED_META_KEYS` and be JSON-serialisable. The file is written to a temporary
    file in the same directory and moved into place (:mod:`tamt_table.atomic`), so a crash never leaves a half-written
    mask under ``path``. Returns the content hash (hex sha256).
    """
    path = os.fspath(path)
    if not tensors:
        raise ValueError("refusing to save an empty mask (no tensors)")
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a mapping, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"mask meta is missing required keys {missing}; required: {list(REQUIRED_META_KEYS)}")
    try:
        meta_json = canonical_json(dict(meta))
    except (TypeError, ValueError) as e:
        raise ValueError(f"mask meta must be JSON-serialisable (no NaN/inf): {e}") from e

    names, shapes, packed = _pack_all(tensors)
    digest = _content_hash(names, shapes, packed, meta_json)
    header = {
        "format_version": str(FORMAT_VERSION),
        "names": canonical_json(names),
        "shapes": canonical_json(shapes),
        "meta": meta_json,
        "content_hash": digest,
    }
    data = safetensors.numpy.save(dict(zip(names, packed)), metadata=header)
    write_bytes(path, data)
    return digest


def load_mask(
    path: str | os.PathLike[str],
    *,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
    expected_fingerprint: str | None = None,
    model_name: str | None = None,
) -> Mask:
    """Read a mask written by :func:`save_mask`, verify its integrity and (optionally) that it fits a model.

    Raises :class:`MaskFileError` if the file is not a tamt mask, has an unknown format version, is corrupted
    (content hash or packed lengths do not match), or — when ``expected_shapes`` / ``expected_fingerprint`` are
    given — was made for another model (:class:`MaskMismatchError`, see :func:`check_mask_matches`).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mask file not found: {path}")
    try:
        with safetensors.safe_open(path, framework="numpy") as f:
            header = f.metadata() or {}
            keys = set(f.keys())
            raw = {k: f.get_tensor(k) for k in keys}
    except Exception as e:  # safetensors raises its own error type for malformed/truncated files
        raise MaskFileError(
            f"{path}: cannot be read as a safetensors file ({type(e).__name__}: {e}); the file is probably "
            f"truncated or not a mask file; {_REGENERATE_HINT}"
        ) from e

    needed = ("format_version", "names", "shapes", "meta", "content_hash")
    absent = [k for k in needed if k not in header]
    if absent:
        raise MaskFileError(
            f"{path}: not a tamt mask file (safetensors metadata lacks {absent}); it may be a raw state dict or "
            f"a mask from another tool. Use a mask written by tamt's save_mask, or {_REGENERATE_HINT}"
        )
    if header["format_version"] != str(FORMAT_VERSION):
        raise MaskFileError(
            f"{path}: unknown mask format version {header['format_version']!r} (this tamt reads version "
            f"{FORMAT_VERSION}); upgrade tamt or {_REGENERATE_HINT}"
        )
    try:
        names = json.loads(header["names"])
        shapes = json.loads(header["shapes"])
        meta = json.loads(header["meta"])
    except json.JSONDecodeError as e:
        raise MaskFileError(f"{path}: corrupted mask metadata ({e}); {_REGENERATE_HINT}") from e
    if (
        not isinstance(names, list)
        or not all(isinstance(n, str) for n in names)
        or not isinstance(shapes, list)
        or len(shapes) != len(names)
        or not all(isinstance(s, list) and all(isinstance(d, int) and d >= 0 for d in s) for s in shapes)
        or not isinstance(meta, dict)
        or len(set(names)) != len(names)
    ):
        raise MaskFileError(f"{path}: corrupted mask metadata (names/shapes/meta malformed); {_REGENERATE_HINT}")
    if set(names) != keys:
        raise MaskFileError(
            f"{path}: stored tensors {sorted(keys - set(names))[:5]} / listed names {sorted(set(names) - keys)[:5]} "
            f"disagree; the file was modified after it was written; {_REGENERATE_HINT}"
        )

    packed: list[np.ndarray] = []
    for name, shape in zip(names, shapes):
        p = raw[name]
        numel = math.prod(shape)
        if p.dtype != np.uint8 or p.ndim != 1 or p.shape[0] != _packed_len(numel):
            raise MaskFileError(
                f"{path}: packed tensor {name!r} has {p.shape[0] if p.ndim == 1 else p.shape} bytes "
                f"(dtype {p.dtype}) but shape {tuple(shape)} needs {_packed_len(numel)} uint8 bytes; the file was "
                f"modified or truncated after it was written; {_REGENERATE_HINT}"
            )
        packed.append(p)

    digest = _content_hash(names, shapes, packed, canonical_json(meta))
    if digest != header["content_hash"]:
        raise MaskFileError(
            f"{path}: content hash mismatch (stored {header['content_hash'][:16]}…, computed {digest[:16]}…): "
            f"the file was modified or truncated after it was written; {_REGENERATE_HINT}"
        )
    missing_meta = [k for k in REQUIRED_META_KEYS if k not in meta]
    if missing_meta:
        raise MaskFileError(f"{path}: mask meta lacks required keys {missing_meta}; {_REGENERATE_HINT}")

    tensors: dict[str, torch.Tensor] = {}
    for name, shape, p in zip(names, shapes, packed):
        numel = math.prod(shape)
        bits = np.unpackbits(p, count=numel).view(np.bool_).reshape(shape)
        tensors[name] = torch.from_numpy(bits)
    mask = Mask(tensors=tensors, meta=meta)

    if expected_shapes is not None or expected_fingerprint is not None:
        try:
            check_mask_matches(mask, expected_shapes, expected_fingerprint, model_name=model_name)
        except MaskMismatchError as e:
            raise MaskMismatchError(f"{path}: {e}") from e
    return mask


def check_mask_matches(
    mask: Mask | Mapping[str, torch.Tensor],
    expected_shapes: Mapping[str, tuple[int, ...]] | None,
    expected_fingerprint: str | None = None,
    model_name: str | None = None,
    optional: Collection[str] = (),
) -> None:
    """Raise :class:`MaskMismatchError` unless ``mask`` fits a model with these masked shapes / weights.

    ``expected_shapes`` maps each masked parameter of the target model to its shape; missing, extra and
    shape-mismatched names are all reported. ``expected_fingerprint`` is :func:`weights_fingerprint` of the target
    model's pretrained weights; it must equal the mask's ``meta["model_fingerprint"]``. ``model_name`` only makes
    the message clearer. Names in ``optional`` may be in the mask although the model lacks them (they go unused).
    A bare ``{name: tensor}`` mapping is checked as a mask without metadata.
    """
    if not isinstance(mask, Mask):
        mask = Mask(dict(mask), {})
    made_for = mask.meta.get("model", "<unknown model>")
    made_fp = mask.meta.get("model_fingerprint", "<no fingerprint>")
    target = repr(model_name) if model_name else "this model"
    if expected_shapes is not None:
        exp = {k: tuple(int(d) for d in v) for k, v in expected_shapes.items()}
        have = {k: tuple(int(d) for d in t.shape) for k, t in mask.tensors.items()}
        missing = [k for k in exp if k not in have]
        extra = [k for k in have if k not in exp and k not in optional]
        wrong = [f"{k}: mask {have[k]} vs model {exp[k]}" for k in exp if k in have and have[k] != exp[k]]
        if missing or extra or wrong:
            parts = []
            if missing:
                parts.append(f"{len(missing)} parameter(s) missing from the mask (e.g. {missing[:3]})")
            if extra:
                parts.append(f"{len(extra)} extra parameter(s) not masked in the model (e.g. {extra[:3]})")
            if wrong:
                parts.append(f"{len(wrong)} shape mismatch(es) (e.g. {wrong[:3]})")
            raise MaskMismatchError(
                f"this mask was made for model {made_for!r} (fingerprint {made_fp}), not for {target}: "
                + "; ".join(parts)
                + ". Use a mask searched on this model (`tamt search ...`)."
            )
    if expected_fingerprint is not None and made_fp != expected_fingerprint:
        raise MaskMismatchError(
            f"this mask was made for model {made_for!r} with weights fingerprint {made_fp}, but {target} has "
            f"fingerprint {expected_fingerprint}: the pretrained weights differ. Use a mask searched on these "
            "weights (`tamt search ...`)."
        )


# --------------------------------------------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------------------------------------------

_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _le_bytes(t: torch.Tensor) -> np.ndarray:
    """The tensor's raw element bytes, contiguous and little-endian, without a float copy (works for bf16)."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    size = flat.element_size()
    view_dtype = _INT_VIEW.get(size)
    if view_dtype is None:  # e.g. complex128: no integer of that width; hash raw bytes (little-endian hosts)
        return flat.view(torch.uint8).numpy()
    arr = flat.view(view_dtype).numpy()
    if sys.byteorder != "little" and size > 1:
        arr = arr.byteswap()
    return arr


def weights_fingerprint(named_tensors: Mapping[str, torch.Tensor]) -> str:
    """Short hex digest (16 hex chars of sha256) of names, shapes, dtypes and full bytes of the given weights.

    Recorded in a mask's meta so the mask can be tied to the exact pretrained weights it was searched on.
    Names are hashed in sorted order, so the fingerprint does not depend on dict order. sha256 over the raw
    buffer hashes BERT-base (~110M float32) in ~0.25 s on a CPU with SHA extensions.
    """
    h = hashlib.sha256()
    h.update(b"tamt-weights\x00")
    for name in sorted(named_tensors):
        t = named_tensors[name]
        head = canonical_json([name, [int(d) for d in t.shape], str(t.dtype)]).encode("utf-8")
        h.update(len(head).to_bytes(8, "little"))
        h.update(head)
        data = _le_bytes(t)
        h.update(int(data.nbytes).to_bytes(8, "little"))
        h.update(memoryview(data).cast("B"))
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------
# Similarity / summary
# --------------------------------------------------------------------------------------------------------------


def _as_tensors(m: Mask | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    return m.tensors if isinstance(m, Mask) else m


def similarity(a: Mask | Mapping[str, torch.Tensor], b: Mask | Mapping[str, torch.Tensor]) -> float:
    """Unweighted mean over matrices of the per-matrix IoU of KEPT sets, |K1 ∩ K2| / |K1 ∪ K2|.

    Matches the reference ``compare_mask.py`` / ``mask_dist.py`` (reference-impl §8): every matrix counts the same,
    so the 23.4M-entry word embedding weighs 1/74 for BERT-base. Unlike the reference (which zips dicts in order),
    matrices are paired by name; differing names or shapes raise ``ValueError``. Two all-pruned matrices have
    IoU 1 (identical kept sets).
    """
    ta, tb = _as_tensors(a), _as_tensors(b)
    if not ta or not tb:
        raise ValueError("similarity of an empty mask is undefined")
    if set(ta) != set(tb):
        only_a = [k for k in ta if k not in tb]
        only_b = [k for k in tb if k not in ta]
        raise ValueError(
            f"masks cover different parameters: only in first {only_a[:3]} ({len(only_a)}), "
            f"only in second {only_b[:3]} ({len(only_b)}); compare masks of the same model"
        )
    ious: list[float] = []
    for name in ta:
        x, y = ta[name], tb[name]
        if tuple(x.shape) != tuple(y.shape):
            raise ValueError(f"shape mismatch for {name!r}: {tuple(x.shape)} vs {tuple(y.shape)}")
        xb, yb = x.to("cpu").bool(), y.to("cpu").bool()
        inter = int(torch.count_nonzero(xb & yb))
        union = int(torch.count_nonzero(xb | yb))
        ious.append(1.0 if union == 0 else inter / union)
    return math.fsum(ious) / len(ious)


def distance(a: Mask | Mapping[str, torch.Tensor], b: Mask | Mapping[str, torch.Tensor]) -> float:
    """1 − :func:`similarity` (paper §4.2.4, Fig. 6 left)."""
    return 1.0 - similarity(a, b)


def mask_summary(mask: Mask | Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """JSON-serialisable overview of a mask for ``tamt mask-info``: meta, global counts, per-matrix table."""
    m = mask if isinstance(mask, Mask) else Mask(tensors=dict(mask), meta={})
    rows = []
    total_zeros = 0
    total = 0
    for name, t in m.tensors.items():
        n = int(t.numel())
        z = n - int(torch.count_nonzero(t))
        total += n
        total_zeros += z
        rows.append(
            {
                "name": name,
                "shape": [int(d) for d in t.shape],
                "entries": n,
                "zeros": z,
                "sparsity": z / n if n else 0.0,
            }
        )
    return {
        "meta": dict(m.meta),
        "num_matrices": len(rows),
        "num_entries": total,
        "num_zeros": total_zeros,
        "sparsity": total_zeros / total if total else 0.0,
        "matrices": rows,
    }
