"""A search loop's link to the outside world: resuming, progress, ranks, its masks and its own training time.

IMP and TAMT hand their stateful pieces to :meth:`SearchRun.resume` once, then call :meth:`SearchRun.end_step` after
every step. That call keeps the loss on the device and synchronises with the host only at *sync points*: every
``log_every`` steps, at a step whose mask is saved, and at the last step. There it logs the mean loss of the steps
since the previous sync point and, when forced (a mask was saved) or when a checkpoint is due, writes one. The
resumable part (stopwatch, loss window, checkpoint cadence, unreadable checkpoints) is the
:class:`~tamt_core.checkpoints.ResumableRun` that fine-tunes use too; this module adds what only a search has: the
mask files written so far, which every checkpoint carries and a resume restores, and the dropout streams of every
data-parallel rank.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from tamt_core.checkpoints import CHECKPOINT_EVERY_S, LOG_EVERY, CheckpointStore, ResumableRun, RunStopped, Stateful
from tamt_core.checkpoints.run import FILES_DIR
from tamt_core.checkpoints.components import RankRngStreams
from tamt_core.parallel import Ranks

log = logging.getLogger(__name__)


class SearchRun:
    """A search loop's link to the outside world; one per search run.

    Args:
        identity: what makes a checkpoint this search's (config id, model fingerprint); compared on resume.
        store: where checkpoints go; ``None`` runs without checkpoints (a test, a throw-away run).
        mask_dir: where the search's mask files are written; checkpoints carry copies and restore them.
        log: receives ``{"step", "loss", "lr", "train_s", ...}`` at every sync point (rank 0 only).
        ranks: the data-parallel processes; the default is one process.
        device: where the loop trains (its RNG stream is checkpointed).
        seed: the search's seed (reseeds dropout when resuming on another number of ranks).
        stop_requested: whether to checkpoint at the next sync point and stop (:class:`RunStopped`).
    """

    def __init__(self, identity: Mapping[str, Any], *, store: CheckpointStore | None, mask_dir: Path,
                 log: Callable[[dict[str, Any]], None], ranks: Ranks = Ranks(), device: torch.device,
                 seed: int = 0, checkpoint_every_s: float = CHECKPOINT_EVERY_S, log_every: int = LOG_EVERY,
                 stop_requested: Callable[[], bool] = lambda: False) -> None:
        self.run = ResumableRun(identity, store, device=device, ranks=ranks, checkpoint_every_s=checkpoint_every_s,
                                kind="search", stop_requested=stop_requested)
        self.mask_dir, self.log, self.ranks, self.log_every = mask_dir, log, ranks, log_every
        self.rng = RankRngStreams(device, ranks, seed)
        self.masks: list[dict[str, Any]] = []  # the mask files written so far, in order (``WrittenMask`` fields)
        self.components: Mapping[str, Stateful] = {}
        self.resumed_from = 0

    @property
    def identity(self) -> dict[str, Any]:
        return self.run.identity

    def resume(self, components: Mapping[str, Stateful]) -> int:
        """Load the newest readable checkpoint into ``components``; returns its step, 0 when there is none.

        Raises:
            CheckpointError: the newest checkpoint belongs to another search or another layout (names the fix).
        """
        self.components = components  # live: a loop may swap a component (IMP's fresh optimizer after a prune)
        found = self.run.resume({**self.components, "rng": self.rng})
        if found is None:
            return 0
        state_file, progress = found
        self.resumed_from = progress["step"]
        self.masks = list(progress["masks"])
        if self.ranks.writes:
            self._restore_masks(state_file.parent)
        if self.rng.reseeded:
            log.warning("the checkpoint was written by %d processes and this run has %d: dropout is reseeded, "
                        "so the resumed search is not the uninterrupted one", len(progress["ranks"]),
                        self.ranks.world_size)
        log.info("resuming from the checkpoint of step %d (%.0f training seconds so far)", self.resumed_from,
                 self.run.clock.elapsed)
        return self.resumed_from

    def _restore_masks(self, checkpoint: Path) -> None:
        self.mask_dir.mkdir(parents=True, exist_ok=True)
        for mask in self.masks:
            saved, current = checkpoint / FILES_DIR / mask["file"], self.mask_dir / mask["file"]
            if not current.exists() or current.stat().st_size != saved.stat().st_size:
                shutil.copy2(saved, current)

    def end_step(self, step: int, loss: torch.Tensor, *, lr: float, last: bool, mask_saved: bool = False,
                 **extra: Any) -> None:
        """After step ``step``: add its loss to the window; at a sync point log it and maybe checkpoint.

        ``mask_saved`` forces a sync point and a checkpoint (the masks written so far go into it); the last step
        is a sync point without a checkpoint, since the finished search needs none.

        Raises:
            RunStopped: a stop was requested; the checkpoint of this step is written (the last step finishes).
        """
        self.run.add_loss(loss)
        self.run.clock.start()
        if not (last or mask_saved or step % self.log_every == 0):
            return
        mean_loss, due, stop = self.run.sync()
        metrics = {"step": step, "loss": mean_loss, "lr": lr, "train_s": self.run.clock.seconds(), **extra}
        if self.ranks.writes:
            self.log(metrics)
        if last:
            return
        if stop:
            self.checkpoint(step, {**metrics, "stopped": 1})
            raise RunStopped(step)
        if self.run.store is not None and (mask_saved or due):
            self.checkpoint(step, metrics)

    def mask_written(self, path: Path, **found: Any) -> None:
        """Record a mask file the search wrote, with the training seconds up to it; it goes into every later
        checkpoint. Pauses the clock until the loop's next :meth:`end_step`."""
        self.masks.append({"file": path.name, **found, "train_s": self.run.clock.pause()})

    def checkpoint(self, step: int, metrics: dict[str, Any]) -> None:
        """Write a checkpoint of every component now (every rank calls it: the RNG streams are gathered)."""
        self.run.save(step, {**self.components, "rng": self.rng},
                      {"masks": self.masks, "ranks": list(range(self.ranks.world_size))}, metrics,
                      files=[self.mask_dir / mask["file"] for mask in self.masks])
