"""Tests for tamt_core.masks.files: file format round trip, corruption detection, model checks, size, similarity."""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from tamt_core.masks import files as M
from tamt_core.masks.files import (
    FORMAT_VERSION,
    Mask,
    MaskFileError,
    MaskMismatchError,
    check_mask_matches,
    distance,
    load_mask,
    mask_summary,
    save_mask,
    similarity,
    weights_fingerprint,
)

META = {
    "model": "toy-bert",
    "model_fingerprint": "0123456789abcdef",
    "method": "random",
    "sparsity": 0.7,
    "seed": 3,
    "step": 0,
    "objective": None,
}


def _random_mask(shapes: dict[str, tuple[int, ...]], keep: float = 0.3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(s, generator=g) < keep for n, s in shapes.items()}


# Deliberately not in sorted order, and with sizes not divisible by 8.
SHAPES = {
    "embeddings.word_embeddings.weight": (37, 11),
    "encoder.layer.0.attention.self.query.weight": (13, 13),
    "encoder.layer.0.attention.self.key.weight": (8, 8),
    "encoder.layer.0.intermediate.dense.weight": (29, 13),
    "encoder.layer.0.output.dense.weight": (13, 29),
    "pooler.dense.weight": (3, 5),
    "a.single.row": (7,),
}


def _bert_base_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"embeddings.word_embeddings.weight": (30522, 768)}
    for layer in range(12):
        p = f"encoder.layer.{layer}."
        for q in ("query", "key", "value"):
            shapes[p + f"attention.self.{q}.weight"] = (768, 768)
        shapes[p + "attention.output.dense.weight"] = (768, 768)
        shapes[p + "intermediate.dense.weight"] = (3072, 768)
        shapes[p + "output.dense.weight"] = (768, 3072)
    shapes["pooler.dense.weight"] = (768, 768)
    return shapes


def _read_header(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n])


def _rewrite_header(path: Path, header: dict) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    data = raw[8 + n :]
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + data)


# ----------------------------------------------------------------------------------------------------------------
# Round trip
# ----------------------------------------------------------------------------------------------------------------


def test_round_trip_identical_bits_order_meta(tmp_path: Path) -> None:
    tensors = _random_mask(SHAPES, keep=0.4, seed=1)
    digest = save_mask(tmp_path / "m.safetensors", tensors, META)
    m = load_mask(tmp_path / "m.safetensors")
    assert list(m.tensors) == list(SHAPES)  # caller's order, not sorted
    for name, t in tensors.items():
        assert m.tensors[name].dtype == torch.bool
        assert tuple(m.tensors[name].shape) == SHAPES[name]
        assert torch.equal(m.tensors[name], t)
    assert m.meta == META
    assert m.content_hash == digest
    assert len(digest) == 64
    # Equal content → equal hash and equal header/payload across two saves (safetensors may order the JSON
    # header's keys differently between writes, so compare the parsed header, not raw bytes).
    digest2 = save_mask(tmp_path / "m2.safetensors", {k: v.clone() for k, v in tensors.items()}, dict(META))
    assert digest2 == digest
    n1, h1 = _read_header(tmp_path / "m.safetensors")
    n2, h2 = _read_header(tmp_path / "m2.safetensors")
    assert h1 == h2
    assert (tmp_path / "m.safetensors").read_bytes()[8 + n1 :] == (tmp_path / "m2.safetensors").read_bytes()[8 + n2 :]
    # Counts.
    n = sum(math.prod(s) for s in SHAPES.values())
    zeros = sum(int((~t).sum()) for t in tensors.values())
    assert m.num_entries == n
    assert m.num_zeros == zeros
    assert m.sparsity == zeros / n
    pms = m.per_matrix_sparsity()
    assert list(pms) == list(SHAPES)
    for name, t in tensors.items():
        assert pms[name] == int((~t).sum()) / t.numel()


def test_hash_changes_with_bit_name_shape_and_meta() -> None:
    tensors = _random_mask(SHAPES, seed=2)
    base = Mask(tensors, dict(META)).content_hash
    flipped = {k: v.clone() for k, v in tensors.items()}
    flipped["pooler.dense.weight"][2, 4] ^= True
    renamed = {("x" + k if k == "a.single.row" else k): v for k, v in tensors.items()}
    reshaped = dict(tensors)
    key = "encoder.layer.0.attention.self.key.weight"
    reshaped[key] = tensors[key].reshape(4, 16)
    reordered = dict(reversed(list(tensors.items())))
    hashes = {
        Mask(flipped, dict(META)).content_hash,
        Mask(renamed, dict(META)).content_hash,
        Mask(reshaped, dict(META)).content_hash,
        Mask(reordered, dict(META)).content_hash,
        Mask(tensors, {**META, "step": 1}).content_hash,
        Mask(tensors, {**META, "sparsity": 0.7000001}).content_hash,
    }
    assert base not in hashes
    assert len(hashes) == 6


def test_save_validates_inputs(tmp_path: Path) -> None:
    tensors = _random_mask(SHAPES)
    with pytest.raises(ValueError, match="model_fingerprint"):
        save_mask(tmp_path / "x.safetensors", tensors, {k: v for k, v in META.items() if k != "model_fingerprint"})
    with pytest.raises(TypeError, match="bool"):
        save_mask(tmp_path / "x.safetensors", {"w": torch.ones(3, 3)}, META)
    with pytest.raises(ValueError, match="JSON"):
        save_mask(tmp_path / "x.safetensors", tensors, {**META, "sparsity": float("nan")})
    assert not (tmp_path / "x.safetensors").exists()


def test_atomic_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "m.safetensors"
    old = _random_mask(SHAPES, seed=5)
    old_hash = save_mask(target, old, META)

    def boom(src: str, dst: str) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(M.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        save_mask(target, _random_mask(SHAPES, seed=6), META)
    monkeypatch.undo()
    # The previous file is intact and no temp file is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert load_mask(target).content_hash == old_hash


def test_atomic_writes_get_the_mode_of_a_file_the_user_creates(tmp_path: Path) -> None:
    """Whatever mode the writer creates its file with (safetensors' save_file: 0600), the target respects the
    umask like ``open(path, "w")``: checkpoints, masks, exports and the table are readable as any file."""
    from safetensors.torch import save_file

    from tamt_table.atomic import replacing

    previous = os.umask(0o022)
    try:
        with replacing(tmp_path / "state.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
        save_mask(tmp_path / "m.safetensors", _random_mask(SHAPES, seed=5), META)
        (tmp_path / "plain").write_bytes(b"x")
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
    assert modes == {"state.safetensors": 0o644, "m.safetensors": 0o644, "plain": 0o644}


# ----------------------------------------------------------------------------------------------------------------
# Corruption
# ----------------------------------------------------------------------------------------------------------------


def test_flipped_bit_on_disk_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_mask(path, _random_mask(SHAPES, seed=3), META)
    n, header = _read_header(path)
    start, end = header["encoder.layer.0.attention.self.query.weight"]["data_offsets"]
    raw = bytearray(path.read_bytes())
    raw[8 + n + start + (end - start) // 2] ^= 0b0001_0000
    path.write_bytes(bytes(raw))
    with pytest.raises(MaskFileError) as ei:
        load_mask(path)
    msg = str(ei.value)
    assert str(path) in msg
    assert "modified or truncated" in msg
    assert "regenerate it with `tamt search" in msg


def test_edited_meta_value_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_mask(path, _random_mask(SHAPES, seed=3), META)
    _, header = _read_header(path)
    meta = json.loads(header["__metadata__"]["meta"])
    meta["sparsity"] = 0.8
    header["__metadata__"]["meta"] = json.dumps(meta)
    _rewrite_header(path, header)
    with pytest.raises(MaskFileError, match="content hash mismatch.*regenerate"):
        load_mask(path)


def test_truncated_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_mask(path, _random_mask(SHAPES, seed=3), META)
    raw = path.read_bytes()
    for cut in (len(raw) - 1, len(raw) // 2, 4):
        path.write_bytes(raw[:cut])
        with pytest.raises(MaskFileError, match="regenerate"):
            load_mask(path)


def test_not_a_mask_and_unknown_version(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"pooler.dense.weight": torch.ones(3, 5, dtype=torch.bool)}, str(plain))
    with pytest.raises(MaskFileError, match="not a tamt mask file"):
        load_mask(plain)

    path = tmp_path / "m.safetensors"
    save_mask(path, _random_mask(SHAPES), META)
    _, header = _read_header(path)
    header["__metadata__"]["format_version"] = str(FORMAT_VERSION + 1)
    _rewrite_header(path, header)
    with pytest.raises(MaskFileError, match=r"unknown mask format version '2'.*upgrade tamt"):
        load_mask(path)

    with pytest.raises(FileNotFoundError):
        load_mask(tmp_path / "nope.safetensors")


def test_packed_length_mismatch_is_rejected(tmp_path: Path) -> None:
    import safetensors.numpy

    tensors = {"w": torch.ones(5, 5, dtype=torch.bool)}
    path = tmp_path / "m.safetensors"
    save_mask(path, tensors, META)
    _, header = _read_header(path)
    bad_meta = dict(header["__metadata__"])
    bad_meta["shapes"] = "[[9,9]]"  # 81 entries need 11 bytes, the file holds 4
    packed = np.packbits(np.ones(25, dtype=bool))
    path.write_bytes(safetensors.numpy.save({"w": packed}, metadata=bad_meta))
    with pytest.raises(MaskFileError, match=r"'w' has 4 bytes .* needs 11 uint8 bytes"):
        load_mask(path)


# ----------------------------------------------------------------------------------------------------------------
# Model checks
# ----------------------------------------------------------------------------------------------------------------


def test_mask_for_other_model_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    tensors = _random_mask(SHAPES)
    save_mask(path, tensors, META)
    # Matching shapes and fingerprint pass.
    m = load_mask(path, expected_shapes=SHAPES, expected_fingerprint=META["model_fingerprint"])
    check_mask_matches(m, SHAPES, META["model_fingerprint"])

    other = dict(SHAPES)
    other["pooler.dense.weight"] = (5, 3)
    del other["a.single.row"]
    other["encoder.layer.0.attention.self.value.weight"] = (8, 8)
    with pytest.raises(MaskMismatchError) as ei:
        load_mask(path, expected_shapes=other, model_name="roberta-toy")
    msg = str(ei.value)
    assert isinstance(ei.value, MaskFileError) and isinstance(ei.value, ValueError)
    assert str(path) in msg
    assert "made for model 'toy-bert' (fingerprint 0123456789abcdef), not for 'roberta-toy'" in msg
    assert "encoder.layer.0.attention.self.value.weight" in msg  # missing from the mask
    assert "a.single.row" in msg  # extra
    assert "pooler.dense.weight: mask (3, 5) vs model (5, 3)" in msg

    with pytest.raises(MaskMismatchError) as ei:
        load_mask(path, expected_shapes=SHAPES, expected_fingerprint="ffffffffffffffff", model_name="toy-bert-v2")
    msg = str(ei.value)
    assert "'toy-bert'" in msg and "'toy-bert-v2'" in msg
    assert "0123456789abcdef" in msg and "ffffffffffffffff" in msg

    # In-memory check, no file involved.
    with pytest.raises(MaskMismatchError, match="made for model 'toy-bert'"):
        check_mask_matches(Mask(tensors, dict(META)), other)


# ----------------------------------------------------------------------------------------------------------------
# Size for BERT-base shapes
# ----------------------------------------------------------------------------------------------------------------


def test_bert_base_file_size(tmp_path: Path) -> None:
    shapes = _bert_base_shapes()
    assert len(shapes) == 74
    n = sum(math.prod(s) for s in shapes.values())
    assert n == 108_965_376  # reference-impl check vector 1
    g = torch.Generator().manual_seed(0)
    tensors = {k: torch.randint(0, 2, s, generator=g, dtype=torch.uint8).bool() for k, s in shapes.items()}
    path = tmp_path / "bert.safetensors"
    save_mask(path, tensors, META)
    size = path.stat().st_size
    header_len, _ = _read_header(path)
    payload = size - 8 - header_len
    assert payload == sum((math.prod(s) + 7) // 8 for s in shapes.values())
    assert payload * 8 / n <= 1.01
    assert size - n / 8 < 16 * 1024  # metadata overhead stays within a few KB
    m = load_mask(path, expected_shapes=shapes)
    for k in ("embeddings.word_embeddings.weight", "encoder.layer.11.output.dense.weight", "pooler.dense.weight"):
        assert torch.equal(m.tensors[k], tensors[k])
    assert m.num_entries == n


# ----------------------------------------------------------------------------------------------------------------
# Similarity
# ----------------------------------------------------------------------------------------------------------------


def test_similarity_hand_computed_iou() -> None:
    a = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    b = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 1]], dtype=torch.bool)
    # kept a = {00,01,10,12}; kept b = {00,02,10,13}; ∩ = {00,10} (2); ∪ = 6.
    assert similarity({"w": a}, {"w": b}) == 2 / 6
    assert distance({"w": a}, {"w": b}) == 1 - 2 / 6
    assert similarity({"w": a}, {"w": a}) == 1.0
    # All-pruned in both → IoU 1; all-pruned vs something → 0.
    z = torch.zeros(2, 4, dtype=torch.bool)
    assert similarity({"w": z}, {"w": z}) == 1.0
    assert similarity({"w": z}, {"w": a}) == 0.0


def test_similarity_is_unweighted_mean_over_matrices() -> None:
    g = torch.Generator().manual_seed(7)
    emb = torch.rand(300, 40, generator=g) < 0.3  # big matrix, identical in both masks
    a_small = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    b_small = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 1]], dtype=torch.bool)  # IoU 1/3
    c1 = torch.tensor([1, 1, 1, 0, 0], dtype=torch.bool)
    c2 = torch.tensor([0, 1, 1, 1, 0], dtype=torch.bool)  # IoU 2/4
    ma = Mask({"emb": emb, "q": a_small, "c": c1}, {})
    mb = {"c": c2, "emb": emb.clone(), "q": b_small}  # different order: paired by name
    expected = (Fraction(1) + Fraction(1, 3) + Fraction(1, 2)) / 3  # 11/18, not entry-weighted
    assert similarity(ma, mb) == pytest.approx(float(expected), abs=1e-15)
    assert similarity(mb, ma) == similarity(ma, mb)
    # Entry-weighted IoU would be ~0.99 here; the unweighted mean is 0.611.
    assert abs(similarity(ma, mb) - 11 / 18) < 1e-15


def test_similarity_errors() -> None:
    a = {"w": torch.ones(2, 3, dtype=torch.bool)}
    with pytest.raises(ValueError, match="different parameters"):
        similarity(a, {"v": torch.ones(2, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape mismatch for 'w'"):
        similarity(a, {"w": torch.ones(3, 2, dtype=torch.bool)})


def test_similarity_random_masks_match_theory() -> None:
    # Check vector 4: two independent random masks at sparsity s have IoU ≈ (1−s)/(1+s).
    s = 0.7
    n = 512 * 512
    k = n - round(s * n)
    masks = []
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        flat = torch.zeros(n, dtype=torch.bool)
        flat[torch.randperm(n, generator=g)[:k]] = True
        masks.append({"w": flat.reshape(512, 512)})
    sim = similarity(masks[0], masks[1])
    assert abs(sim - (1 - s) / (1 + s)) < 0.01
    assert similarity(masks[0], masks[0]) == 1.0
    assert similarity(masks[0], masks[1]) == similarity(masks[1], masks[0])


def test_mask_summary(tmp_path: Path) -> None:
    tensors = {
        "a": torch.tensor([[1, 0, 0], [0, 0, 1]], dtype=torch.bool),  # 4 zeros of 6
        "b": torch.tensor([1, 1, 1, 0], dtype=torch.bool),  # 1 zero of 4
    }
    save_mask(tmp_path / "m.safetensors", tensors, META)
    s = mask_summary(load_mask(tmp_path / "m.safetensors"))
    json.dumps(s)  # serialisable
    assert s["meta"] == META
    assert s["num_matrices"] == 2 and s["num_entries"] == 10 and s["num_zeros"] == 5
    assert s["sparsity"] == 0.5
    assert s["matrices"] == [
        {"name": "a", "shape": [2, 3], "entries": 6, "zeros": 4, "sparsity": 4 / 6},
        {"name": "b", "shape": [4], "entries": 4, "zeros": 1, "sparsity": 0.25},
    ]


# ----------------------------------------------------------------------------------------------------------------
# Fingerprint
# ----------------------------------------------------------------------------------------------------------------


def test_weights_fingerprint() -> None:
    g = torch.Generator().manual_seed(0)
    w = {"x.weight": torch.randn(64, 32, generator=g), "y.weight": torch.randn(17, generator=g)}
    fp = weights_fingerprint(w)
    assert fp == "dea8ddb565ae0812"  # pinned: masks on disk record it, and it must keep matching their models
    assert weights_fingerprint({k: v.clone() for k, v in w.items()}) == fp
    assert weights_fingerprint(dict(reversed(list(w.items())))) == fp  # order-independent
    # Non-contiguous view with the same values → same fingerprint.
    assert weights_fingerprint({"x.weight": w["x.weight"].t().contiguous().t(), "y.weight": w["y.weight"]}) == fp
    changed = {k: v.clone() for k, v in w.items()}
    changed["x.weight"][5, 7] = torch.nextafter(changed["x.weight"][5, 7], torch.tensor(float("inf")))
    assert weights_fingerprint(changed) != fp
    assert weights_fingerprint({"x.weight": w["x.weight"].reshape(32, 64), "y.weight": w["y.weight"]}) != fp
    assert weights_fingerprint({"x.weight": w["x.weight"].double(), "y.weight": w["y.weight"]}) != fp
    assert weights_fingerprint({"z.weight": w["x.weight"], "y.weight": w["y.weight"]}) != fp
    assert weights_fingerprint({k: v.bfloat16() for k, v in w.items()}) != fp
