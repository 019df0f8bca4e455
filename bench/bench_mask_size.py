"""Size and speed of tamt's mask files for a BERT-base-shaped mask (74 matrices, 108,965,376 entries).

Builds random masks with the masked set's names and shapes (``tamt_core.masks.masked_model.weight_shapes`` on a
``BertModel(BertConfig())`` built on the meta device, so no weights are allocated), saves one with
``tamt_core.masks.save_mask`` and reports:

* file bytes, entries, and bits per masked entry over the whole file and without the safetensors header
  (target: ≤ 1.01 bits per entry plus metadata; the format packs 1 bit per entry plus ≤ 7 padding bits per matrix);
* the entropy of a random mask of that sparsity, the floor any lossless compression of such a mask could reach;
* median wall time of ``save_mask``, ``load_mask`` (with the shape check) and ``similarity`` between two masks.

Run ``python bench/bench_mask_size.py --help``; ``bench/README.md`` lists the usual invocations.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch

from tamt_core.masks.masked_model import weight_shapes
from tamt_core.masks import load_mask, save_mask, similarity

TARGET_BITS_PER_ENTRY = 1.01


def bert_base_shapes(layers: int | None = None) -> dict[str, tuple[int, ...]]:
    """Names and shapes of BERT-base's masked set (with pooler), from a meta-device model."""
    from transformers import BertConfig, BertModel

    config = BertConfig() if layers is None else BertConfig(num_hidden_layers=layers)
    with torch.device("meta"):
        model = BertModel(config)
    return weight_shapes(model)


def random_mask(shapes: dict[str, tuple[int, ...]], sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    """Bool masks (True = kept) with each entry pruned independently with probability ``sparsity``."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(shape, generator=generator) >= sparsity for name, shape in shapes.items()}


def safetensors_header_bytes(path: str) -> int:
    """Bytes before the tensor data: the 8-byte length prefix plus the JSON header (names, shapes, metadata)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
    return 8 + length


def binary_entropy(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def median_time(fn, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = bert_base_shapes(args.layers)
    entries = sum(math.prod(s) for s in shapes.values())
    started = time.perf_counter()
    first = random_mask(shapes, args.sparsity, args.seed)
    second = random_mask(shapes, args.sparsity, args.seed + 1)
    build_s = time.perf_counter() - started
    meta = {"model": "bert-base-uncased (shape only)", "model_fingerprint": None, "method": "random",
            "sparsity": args.sparsity, "seed": args.seed, "step": 0}

    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        path = os.path.join(directory, "mask.safetensors")
        save_s, _ = median_time(lambda: save_mask(path, first, meta), args.repeats)
        file_bytes = os.path.getsize(path)
        header = safetensors_header_bytes(path)
        load_s, loaded = median_time(lambda: load_mask(path, expected_shapes=shapes), args.repeats)
        roundtrip_ok = all(torch.equal(loaded.tensors[n], first[n]) for n in shapes)
        similarity_s, value = median_time(lambda: similarity(first, second), args.repeats)
        self_similarity_s, self_value = median_time(lambda: similarity(loaded, first), args.repeats)

    payload = file_bytes - header
    padding_bits = sum(8 * ((math.prod(s) + 7) // 8) - math.prod(s) for s in shapes.values())
    return {
        "benchmark": "mask_size",
        "matrices": len(shapes),
        "entries": entries,
        "sparsity": args.sparsity,
        "file_bytes": file_bytes,
        "header_bytes": header,
        "payload_bytes": payload,
        "padding_bits": padding_bits,
        "bits_per_entry": 8 * file_bytes / entries,
        "bits_per_entry_without_header": 8 * payload / entries,
        "entropy_bits_per_entry": binary_entropy(args.sparsity),
        "target_bits_per_entry": TARGET_BITS_PER_ENTRY,
        "meets_target": 8 * payload / entries <= TARGET_BITS_PER_ENTRY,
        "build_s": build_s,
        "save_s": save_s,
        "load_s": load_s,
        "similarity_s": similarity_s,
        "similarity": value,
        "self_similarity_s": self_similarity_s,
        "self_similarity": self_value,
        "roundtrip_ok": roundtrip_ok,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def print_table(r: dict[str, Any], out=sys.stdout) -> None:
    print(f"# mask file: {r['matrices']} matrices, {r['entries']:,} entries, random mask at sparsity "
          f"{r['sparsity']}, median of {r['repeats']}", file=out)
    rows = [
        ("file bytes", f"{r['file_bytes']:,}"),
        ("  safetensors header (names, shapes, metadata)", f"{r['header_bytes']:,}"),
        ("  packed payload", f"{r['payload_bytes']:,}"),
        ("  padding bits (≤ 7 per matrix)", f"{r['padding_bits']:,}"),
        ("bits per entry, whole file", f"{r['bits_per_entry']:.5f}"),
        ("bits per entry, without header", f"{r['bits_per_entry_without_header']:.5f}  "
         f"({'meets' if r['meets_target'] else 'misses'} target ≤ {r['target_bits_per_entry']})"),
        ("entropy of such a random mask (bits/entry)", f"{r['entropy_bits_per_entry']:.5f}"),
        ("save_mask", f"{r['save_s']:.3f} s"),
        ("load_mask (hash + shape check)",
         f"{r['load_s']:.3f} s  (round trip {'ok' if r['roundtrip_ok'] else 'BROKEN'})"),
        ("similarity, two random masks", f"{r['similarity_s']:.3f} s  (IoU {r['similarity']:.4f})"),
        ("similarity, loaded vs original", f"{r['self_similarity_s']:.3f} s  (IoU {r['self_similarity']:.4f})"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:{width}}  {value}", file=out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of entries pruned (default 0.5)")
    p.add_argument("--layers", type=int, default=None, help="encoder layers (default: BERT-base's 12)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions of each operation (median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--dir", default=None, help="directory for the temporary mask file (default: the system tmp)")
    p.add_argument("--json", default=None, metavar="PATH", help="append the results as one JSON line to PATH")
    args = p.parse_args(argv)
    if not 0.0 <= args.sparsity <= 1.0 or args.repeats < 1:
        p.error("--sparsity must be in [0, 1] and --repeats ≥ 1")
    result = run(args)
    print_table(result)
    if args.json:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), **result}
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    return result


if __name__ == "__main__":
    main()
