"""Size, write time and restore time of a search checkpoint at BERT-base size, and what a checkpoint period costs.

A search checkpoint (``tamt_core.search.resumable.SearchRun.checkpoint``) holds what training changes: for TAMT the
scores of the 74 masked matrices (108,965,376 entries), the MLM head and AdamW's two moments; for IMP every weight,
its AdamW moments and the boolean masks. The script builds a BERT-base ``BertForMaskedLM`` with random weights
(the size is what matters), prepares it exactly as ``TAMT.search`` / ``IMP.search`` do, takes one real optimizer
step so AdamW's state exists, and times ``SearchRun.checkpoint`` into a ``CheckpointDirectory`` directory (state file
plus the hard-linked mask files) and ``SearchRun.resume`` from it. Each time is the median of ``--repeats``.

The cost of a period P is (write time) / P of the search's wall time; the table prints the shortest period that
keeps it at or below 1 %, and the cost at the default period.

    python bench/bench_checkpoint.py                     # TAMT-MLM and IMP at BERT-base size, ~1 min, ~6 GB RAM
    python bench/bench_checkpoint.py --config minilm     # the built-in model's shape
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import BertConfig, BertForMaskedLM

from tamt_core.checkpoints import CHECKPOINT_EVERY_S, CheckpointDirectory
from tamt_core.data.pretrain import PretrainData
from tamt_core.methods import METHODS
from tamt_core.search.config import SearchConfig
from tamt_core.search.resumable import SearchRun

STEPS = {"tamt-mlm": {"steps": 1000}, "imp": {"pruning_interval": 1000}}
"""A run long enough that the schedule does not end at the first step."""
CONFIGS = {
    "base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072),
    "minilm": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536),
}


def prepared(method: str, config: dict) -> tuple[torch.nn.Module, dict]:
    """A model set up by the method's own ``setup`` (TAMT's score masks, IMP's first prune) and the components its
    search checkpoints, after one optimizer step."""
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(**config))
    model.bert.pooler = None
    rows = [{"input_ids": [101, 102]}] * 4
    data = PretrainData(rows, lambda r: {})
    training = METHODS[method].setup(model, data, SearchConfig.of(method, 0.7, batch_size=2, **STEPS[method]))
    for p in training.trainable:
        p.grad = torch.randn_like(p) * 1e-3
    training.optimizer.step()
    training.schedule.step()
    training.optimizer.zero_grad(set_to_none=True)
    return model, training.checkpointed()


def run_once(components, directory: Path) -> tuple[float, float, int]:
    """Write one checkpoint and resume from it; returns (write s, resume s, bytes of the state file)."""
    store = CheckpointDirectory(directory / "checkpoints")
    run = SearchRun({"run_id": "bench"}, store=store, mask_dir=directory, log=lambda m: None,
                    device=torch.device("cpu"))
    run.resume(components)
    started = time.perf_counter()
    run.checkpoint(1, {"step": 1})
    written = time.perf_counter() - started
    size = store.candidates()[0].stat().st_size
    again = SearchRun({"run_id": "bench"}, store=store, mask_dir=directory, log=lambda m: None,
                      device=torch.device("cpu"))
    started = time.perf_counter()
    again.resume(components)
    return written, time.perf_counter() - started, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="base")
    parser.add_argument("--methods", default="tamt-mlm,imp")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="where to write (default: a temporary directory)")
    args = parser.parse_args(argv)
    print(f"{'method':10s} {'state file':>11s} {'write (median)':>15s} {'resume':>8s} "
          f"{'period for <=1 %':>17s} {'cost at ' + str(int(CHECKPOINT_EVERY_S)) + ' s':>12s}")
    for method in args.methods.split(","):
        model, components = prepared(method, CONFIGS[args.config])
        times = []
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            for repeat in range(args.repeats):
                times.append(run_once(components, Path(tmp) / str(repeat)))
        write = statistics.median(t[0] for t in times)
        resume = statistics.median(t[1] for t in times)
        size = times[0][2]
        print(f"{method:10s} {size / 2**30:8.2f} GiB {write:13.2f} s {resume:6.2f} s {100 * write:15.0f} s "
              f"{100 * write / CHECKPOINT_EVERY_S:10.2f} %", flush=True)
        del model, components
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{sys.platform}; median of {args.repeats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
