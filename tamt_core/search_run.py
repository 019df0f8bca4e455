"""What a search loop needs besides its maths: checkpoints, progress, ranks and its own training time.

IMP and TAMT run for hours (Tab. 2: up to 25K steps), on machines that get preempted. Their loops hand their
stateful pieces to :meth:`SearchRun.resume` once, then call :meth:`SearchRun.end_step` after every step. That
call keeps the loss on the device and synchronises with the host only at *sync points*: every ``log_every`` steps,
at a step whose mask is saved, and at the last step. There it logs the mean loss of the steps since the previous
sync point and, when forced (a mask was saved) or when ``checkpoint_every_s`` has passed, writes a checkpoint. On N
data-parallel processes the sync point is one collective (the loss summed over ranks, and rank 0's verdict on
whether a checkpoint is due), so every rank checkpoints at the same step.

A checkpoint holds the loop's components, the files of the masks written so far and a progress record: the step,
the training seconds so far (Fig. 5's time axis, which must not count a restart twice), the mask files, and the
search's identity (a checkpoint of another search is refused). Where checkpoints live is a :class:`CheckpointStore`:
a directory beside the masks for ``tamt search`` (:class:`tamt_core.checkpoint.CheckpointDirectory`), or Ray Train's
checkpoints in a sweep (``orchestrator``). A checkpoint that cannot be read is set aside and the previous one used.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch

from tamt_core.checkpoint import (STATE_FILE, CheckpointDirectory, CheckpointError, CorruptCheckpointError, Stateful,
                                  link_or_copy, load_state, read_progress, save_state)
from tamt_core.parallel import RankRngStreams, Ranks

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_S = 600.0
"""Seconds between time-based checkpoints of a search. A BERT-base checkpoint (scores or weights, AdamW's moments:
about 1.3 GB) takes a few seconds to write (bench/README.md), so this period keeps checkpointing under 1 % of the
search, and a preemption loses at most ten minutes."""
LOG_EVERY = 10
"""Steps between sync points: the loss is read (one host synchronisation) and a checkpoint may be written."""
MASKS_DIR = "masks"


class CheckpointStore(Protocol):
    """Where a search's checkpoints live; each checkpoint is a local directory once assembled or fetched."""

    def candidates(self) -> Iterable[Path]:
        """Checkpoints to resume from, newest first, as local directories (fetched as the iteration reaches them)."""

    def staging(self, step: int) -> Path:
        """An empty local directory to assemble the checkpoint of ``step`` in (called on rank 0 only)."""

    def publish(self, staging: Path | None, step: int, metrics: dict[str, Any]) -> None:
        """Make the assembled checkpoint the newest; every rank calls it, with ``staging=None`` except rank 0."""

    def set_aside(self, checkpoint: Path) -> Path:
        """Move an unreadable checkpoint out of the way (never delete it); returns where it went."""

    def urgent(self) -> bool:
        """Whether to checkpoint at this sync point whatever the period (a preemption notice); every rank calls it
        at every sync point and gets the same answer."""


class LocalCheckpoints(CheckpointDirectory):
    """:class:`CheckpointDirectory` as a :class:`CheckpointStore` (``tamt search --out DIR``)."""

    def publish(self, staging: Path | None, step: int, metrics: dict[str, Any]) -> None:
        if staging is not None:
            super().publish(staging, step)

    def urgent(self) -> bool:
        return False


class Stopwatch:
    """Training seconds: runs during steps, paused while masks and checkpoints are written."""

    def __init__(self, elapsed: float = 0.0) -> None:
        self.elapsed, self.since = elapsed, None

    def start(self) -> None:
        if self.since is None:
            self.since = time.monotonic()

    def pause(self) -> float:
        if self.since is not None:
            self.elapsed += time.monotonic() - self.since
            self.since = None
        return self.elapsed

    def seconds(self) -> float:
        return self.elapsed + (0.0 if self.since is None else time.monotonic() - self.since)


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
    """

    def __init__(self, identity: Mapping[str, Any], *, store: CheckpointStore | None, mask_dir: Path,
                 log: Callable[[dict[str, Any]], None], ranks: Ranks = Ranks(), device: torch.device,
                 seed: int = 0, checkpoint_every_s: float = CHECKPOINT_EVERY_S, log_every: int = LOG_EVERY) -> None:
        self.identity, self.store, self.mask_dir, self.log, self.ranks = dict(identity), store, mask_dir, log, ranks
        self.device, self.checkpoint_every_s, self.log_every = device, checkpoint_every_s, log_every
        self.rng = RankRngStreams(device, ranks, seed)
        self.clock = Stopwatch()
        self.masks: list[dict[str, Any]] = []  # the mask files written so far, in order (``WrittenMask`` fields)
        self.components: Mapping[str, Stateful] = {}
        self.resumed_from = 0
        self._loss_sum = torch.zeros((), device=device)
        self._window = 0
        self._last_checkpoint = time.monotonic()

    # --- resuming -----------------------------------------------------------------------------------------------

    def resume(self, components: Mapping[str, Stateful]) -> int:
        """Load the newest readable checkpoint into ``components``; returns its step, 0 when there is none.

        Raises:
            CheckpointError: the newest checkpoint belongs to another search or another layout (names the fix).
        """
        self.components = components  # live: a loop may swap a component (IMP's fresh optimizer after a prune)
        unreadable = 0
        for candidate in self.store.candidates() if self.store is not None else ():
            state_file = candidate / STATE_FILE
            try:
                progress = read_progress(state_file)
                self._check_identity(progress, candidate)
                load_state(state_file, {**self.components, "rng": self.rng})
            except CorruptCheckpointError as error:
                unreadable += 1
                aside = self.store.set_aside(candidate) if self.ranks.writes else candidate
                log.warning("checkpoint %s cannot be read (%s); set aside as %s, trying the one before", candidate,
                            error, aside)
                continue
            self.resumed_from = progress["step"]
            self.clock = Stopwatch(progress["train_s"])
            self.masks = list(progress["masks"])
            if self.ranks.writes:
                self._restore_masks(candidate)
            if self.rng.reseeded:
                log.warning("the checkpoint was written by %d processes and this run has %d: dropout is reseeded, "
                            "so the resumed search is not the uninterrupted one", len(progress["ranks"]),
                            self.ranks.world_size)
            log.info("resuming from the checkpoint of step %d (%.0f training seconds so far)", self.resumed_from,
                     self.clock.elapsed)
            break
        else:
            if unreadable:
                log.warning("no readable checkpoint is left: the search starts over from step 0")
        self.clock.start()
        return self.resumed_from

    def _check_identity(self, progress: dict[str, Any], candidate: Path) -> None:
        theirs = progress.get("identity", {})
        if theirs != self.identity:
            raise CheckpointError(
                f"the checkpoint {candidate} belongs to another search ({theirs}); this search is {self.identity}. "
                "Pass a new output directory, or move that checkpoint away to start this search over.")

    def _restore_masks(self, checkpoint: Path) -> None:
        self.mask_dir.mkdir(parents=True, exist_ok=True)
        for mask in self.masks:
            saved, current = checkpoint / MASKS_DIR / mask["file"], self.mask_dir / mask["file"]
            if not current.exists() or current.stat().st_size != saved.stat().st_size:
                shutil.copy2(saved, current)

    # --- the loop's calls ---------------------------------------------------------------------------------------

    def end_step(self, step: int, loss: torch.Tensor, *, lr: float, last: bool, mask_saved: bool = False,
                 **extra: Any) -> None:
        """After step ``step``: add its loss to the window; at a sync point log it and maybe checkpoint.

        ``mask_saved`` forces a sync point and a checkpoint (the masks written so far go into it); the last step
        is a sync point without a checkpoint, since the finished search needs none.
        """
        self._loss_sum += loss.detach().float()
        self._window += 1
        self.clock.start()
        if not (last or mask_saved or step % self.log_every == 0):
            return
        due = float(self.ranks.writes and time.monotonic() - self._last_checkpoint >= self.checkpoint_every_s)
        if self.store is not None and self.store.urgent():
            due = 1.0
        loss_sum, due = self.ranks.all_sum(torch.stack([self._loss_sum, self._loss_sum.new_tensor(due)])).tolist()
        metrics = {"step": step, "loss": loss_sum / self._window, "lr": lr, "train_s": self.clock.seconds(), **extra}
        self._loss_sum.zero_()
        self._window = 0
        if self.ranks.writes:
            self.log(metrics)
        if self.store is not None and not last and (mask_saved or due):
            self.checkpoint(step, metrics)

    def mask_written(self, path: Path, **found: Any) -> None:
        """Record a mask file the search wrote, with the training seconds up to it; it goes into every later
        checkpoint. Pauses the clock until the loop's next :meth:`end_step`."""
        self.masks.append({"file": path.name, **found, "train_s": self.clock.pause()})

    def checkpoint(self, step: int, metrics: dict[str, Any]) -> None:
        """Write a checkpoint of every component now (every rank calls it; rank 0 writes)."""
        self.clock.pause()
        components = {**self.components, "rng": self.rng}
        states = {name: component.state_dict() for name, component in components.items()}  # rng: collective
        staging = None
        if self.ranks.writes:
            staging = self.store.staging(step)
            save_state(staging / STATE_FILE, states, {
                "step": step, "train_s": self.clock.elapsed, "masks": self.masks, "identity": self.identity,
                "ranks": list(range(self.ranks.world_size))})
            (staging / MASKS_DIR).mkdir()
            link_or_copy([self.mask_dir / mask["file"] for mask in self.masks], staging / MASKS_DIR)
        self.store.publish(staging, step, metrics)
        self._last_checkpoint = time.monotonic()
        self.clock.start()
