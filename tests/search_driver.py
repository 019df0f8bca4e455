"""A search run as a subprocess by the resume and data-parallel tests, so they can SIGKILL it or run it under torchrun.

Usage: python tests/search_driver.py SETTINGS.json    (or: torchrun --nproc-per-node N tests/search_driver.py ...)

Settings: ``model``; ``config`` (SearchConfig fields); ``rank_checkpoints`` (each rank its own checkpoint
directory, as on a disk of its own); ``runs``, run in order, each ``{"out": DIR,
"kill_at": STEP or null, "config": {fields laid over the shared ones}}``; ``log_every``; ``checkpoint_every_s``;
``report`` (under torchrun, a JSON file per rank: each rank's checksum of every trained tensor after each step,
gathered from all ranks).
A run with ``kill_at`` sends itself SIGKILL once it has logged that step: a real kill at a chosen step.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tamt_core.checkpoints import CheckpointDirectory
from tamt_core.console import quiet_libraries
from tamt_core.search.config import SearchConfig
from tamt_core.search import run_search
from tamt_core.search.resumable import SearchRun


def kill_at(step: int):
    def log_step(metrics: dict) -> None:
        if metrics["step"] >= step:
            os.kill(os.getpid(), signal.SIGKILL)

    return log_step


def checksum(run: SearchRun) -> int:
    """A 63-bit digest of every tensor the loop trains (scores or weights, thresholds, masks) on this rank."""
    digest = hashlib.sha256()
    for name, tensor in sorted(run.components["trained"].state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def record_rank_checksums(steps: dict[int, list[int]]) -> None:
    """After every step, gather each rank's checksum of its trained state into ``steps``."""
    original = SearchRun.end_step

    def end_step(self, step, loss, **kwargs):
        original(self, step, loss, **kwargs)
        steps[step] = [int(t) for t in self.ranks.all_gather(torch.tensor([checksum(self)]))]

    SearchRun.end_step = end_step


def main() -> None:
    settings = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(1)
    quiet_libraries()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    checksums: dict[int, list[int]] = {}
    if settings.get("report"):
        record_rank_checksums(checksums)
    for run in settings["runs"]:
        fields = {**settings["config"], **run.get("config", {})}
        config = SearchConfig.of(**fields)
        rank = dist.get_rank() if dist.is_initialized() else 0
        checkpoints = (CheckpointDirectory(Path(run["out"]) / f"checkpoints-rank{rank}")  # as if on its own disk
                       if settings.get("rank_checkpoints") else None)
        run_search(config, Path(run["out"]), model=settings["model"], checkpoints=checkpoints,
                   log_step=kill_at(run["kill_at"]) if run.get("kill_at") else None,
                   checkpoint_every_s=settings.get("checkpoint_every_s", 1e9), log_every=settings.get("log_every", 10))
    if settings.get("report"):
        rank = dist.get_rank() if dist.is_initialized() else 0
        Path(f"{settings['report']}.rank{rank}").write_text(json.dumps(checksums))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
