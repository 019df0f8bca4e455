"""One resumable training run: what a search loop and a fine-tuning loop both need besides their maths.

A search runs for hours (Tab. 2: up to 25K steps) and a sweep runs fine-tunes by the thousand, on machines that get
preempted; a restarted run must continue the same run. :class:`ResumableRun` is the part of that which does not
depend on the loop:

* **Resuming.** :meth:`ResumableRun.resume` loads the newest readable checkpoint of its store into the loop's
  components, after checking that the checkpoint is this run's (its identity record); a checkpoint that cannot be
  read is set aside and the one before it used.
* **Training time.** A :class:`Stopwatch` counts training seconds only (paused while the loop evaluates, writes
  masks or checkpoints); it is saved with each checkpoint, so a restart does not count time twice (Fig. 5's axis).
* **The loss window.** The loop adds each step's loss on the device; a *sync point* (:meth:`ResumableRun.sync`)
  reads the window's mean with one host synchronisation, summed over data-parallel ranks in the same collective
  that carries rank 0's verdict on whether a checkpoint is due, so every rank checkpoints at the same step.
* **Checkpoint cadence.** A checkpoint is due every ``checkpoint_every_s`` seconds, or at once when the store has a
  preemption notice; :meth:`ResumableRun.save` writes one (rank 0 writes, every rank takes part).
* **Stopping on request.** ``stop_requested`` (a scheduler's SIGTERM, a sweep that drains) is read at sync points,
  in the same collective; the loop then writes a checkpoint and raises :class:`RunStopped`, and running it again
  resumes there. The loss window is saved with a checkpoint, so a run stopped between two sync points logs the
  losses the uninterrupted run logs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from tamt_core.checkpoints.state import (STATE_FILE, CheckpointError, CorruptCheckpointError, Stateful, load_state,
                                         read_progress, save_state)
from tamt_core.checkpoints.stores import CheckpointStore, link_or_copy
from tamt_core.parallel import Ranks

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_S = 600.0
"""Seconds between time-based checkpoints. A BERT-base search checkpoint (scores or weights, AdamW's moments: about
1.3 GB) takes a few seconds to write (bench/README.md), so this period keeps checkpointing under 1 % of the run, and
a preemption loses at most ten minutes."""
LOG_EVERY = 10
"""Steps between a search's sync points: the loss is read (one host synchronisation) and a checkpoint may be
written."""
FILES_DIR = "masks"
"""Where a checkpoint keeps the files saved with it (a search's masks so far)."""


class RunStopped(Exception):
    """The run wrote a checkpoint at ``step`` and stopped, as asked (``stop_requested``); running it again resumes
    there."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped on request after a checkpoint at step {step}; run it again to resume there")
        self.step = step


class Stopwatch:
    """Training seconds: runs during steps, paused while the loop evaluates or writes masks and checkpoints."""

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


class ResumableRun:
    """The resumable part of one training run (see the module docstring).

    Args:
        identity: what makes a checkpoint this run's (its run id, the model's fingerprint); compared on resume.
        store: where checkpoints go; ``None`` runs without checkpoints (a test, a throw-away run).
        device: where the loop trains (the loss window lives there).
        ranks: the data-parallel processes; the default is one process.
        checkpoint_every_s: the period of time-based checkpoints.
        kind: what the run is, for messages (``search``, ``fine-tune``).
        stop_requested: whether to checkpoint and stop (read at each sync point; cheap: called often).
    """

    def __init__(self, identity: Mapping[str, Any], store: CheckpointStore | None, *, device: torch.device,
                 ranks: Ranks = Ranks(), checkpoint_every_s: float = CHECKPOINT_EVERY_S, kind: str = "run",
                 stop_requested: Callable[[], bool] = lambda: False) -> None:
        self.identity, self.store, self.ranks, self.kind = dict(identity), store, ranks, kind
        self.checkpoint_every_s, self.stop_requested = checkpoint_every_s, stop_requested
        self.clock = Stopwatch()
        self._loss_sum = torch.zeros((), device=device)
        self._window = 0
        self._last_checkpoint = time.monotonic()
        self._unreadable = 0

    def resume(self, components: Mapping[str, Stateful]) -> tuple[Path, dict[str, Any]] | None:
        """Load the newest readable checkpoint into ``components``; returns its state file and progress record,
        ``None`` when there is none. Starts the stopwatch from the checkpoint's training seconds.

        Data-parallel ranks resume from one step: each finds its newest readable checkpoint, they agree on the
        newest step all of them hold (one collective per round), and each loads that one; ranks that hold no common
        checkpoint stop with the steps each sees. A checkpoint without an identity record (a fine-tune's, written
        before they carried one) is taken as the run's own: its directory was claimed by the run's id.

        Raises:
            CheckpointError: the newest checkpoint belongs to another run or another layout, or the ranks hold no
                common checkpoint (names the fix).
        """
        candidates = iter(self.store.candidates() if self.store is not None else ())
        found, limit = None, None
        while True:
            found = self._newest(candidates, found, limit)
            steps = [int(s) for s in self.ranks.all_gather(torch.tensor([found[1]["step"] if found else -1]))]
            if len(set(steps)) > 1:
                if min(steps) < 0:
                    seen = ", ".join(f"rank {rank}: step {step}" if step >= 0 else f"rank {rank}: none"
                                     for rank, step in enumerate(steps))
                    raise CheckpointError(
                        f"the data-parallel ranks of this {self.kind} hold no common checkpoint (the newest each "
                        f"can read: {seen}); put the checkpoint directory on a file system every rank sees, or move "
                        "the checkpoints away to start over")
                limit = min(steps)
                continue
            loaded = found is None or self._load(found, components)
            if all(bool(ok) for ok in self.ranks.all_gather(torch.tensor([float(loaded)]))):
                break
            limit, found = steps[0] - 1, None  # a rank could not load it: every rank takes the one before
        if found is None and self._unreadable:
            log.warning("no readable checkpoint is left: the %s starts over from step 0", self.kind)
        if found is not None:
            progress = found[1]
            self.clock = Stopwatch(progress.get("train_s", progress.get("train_seconds", 0.0)))
            loss_sum, self._window = progress.get("loss_window", (0.0, 0))
            self._loss_sum.fill_(loss_sum)
        self.clock.start()
        return found

    def _newest(self, candidates: Iterator[Path], current: tuple[Path, dict[str, Any]] | None,
                limit: int | None) -> tuple[Path, dict[str, Any]] | None:
        """The newest readable checkpoint at step ``limit`` or before: ``current`` if it is, else the next of
        ``candidates`` that is (unreadable ones are set aside on the way)."""
        if current is not None and (limit is None or current[1]["step"] <= limit):
            return current
        for state_file in candidates:
            try:
                progress = read_progress(state_file)
            except CorruptCheckpointError as error:
                self._set_aside(state_file, error)
                continue
            self._check_identity(progress, state_file)
            if limit is None or progress["step"] <= limit:
                return state_file, progress
        return None

    def _load(self, found: tuple[Path, dict[str, Any]], components: Mapping[str, Stateful]) -> bool:
        """Load ``found`` into ``components``; false when its tensors cannot be read (it is set aside)."""
        try:
            load_state(found[0], components)
        except CorruptCheckpointError as error:
            self._set_aside(found[0], error)
            return False
        return True

    def _set_aside(self, state_file: Path, error: Exception) -> None:
        self._unreadable += 1
        aside = self.store.set_aside(state_file) if self.ranks.writes else state_file
        log.warning("checkpoint %s cannot be read (%s); set aside as %s, trying the one before", state_file, error,
                    aside)

    def _check_identity(self, progress: dict[str, Any], state_file: Path) -> None:
        theirs = progress.get("identity", self.identity)
        if theirs != self.identity:
            raise CheckpointError(
                f"the checkpoint {state_file.parent} belongs to another {self.kind} ({theirs}); this {self.kind} is "
                f"{self.identity}. Pass a new output directory, or move that checkpoint away to start this {self.kind} "
                "over.")

    def add_loss(self, loss: torch.Tensor) -> None:
        """Add one step's loss to the window, on the device (no host synchronisation)."""
        self._loss_sum += loss.detach().float()
        self._window += 1

    def sync(self) -> tuple[float, bool, bool]:
        """A sync point: the mean loss of the window (over every rank), whether a checkpoint is due (the period has
        passed on rank 0, or the store has a preemption notice) and whether to stop (any rank was asked to); one
        host synchronisation, one collective. Empties the window."""
        due = float(self.ranks.writes and time.monotonic() - self._last_checkpoint >= self.checkpoint_every_s)
        if self.store is not None and self.store.urgent():
            due = 1.0
        flags = self._loss_sum.new_tensor([due, float(self.stop_requested())])
        loss_sum, due, stop = self.ranks.all_sum(torch.cat([self._loss_sum.view(1), flags])).tolist()
        mean = loss_sum / max(self._window, 1)
        self._loss_sum.zero_()
        self._window = 0
        return mean, bool(due) and self.store is not None, bool(stop) and self.store is not None

    def save(self, step: int, components: Mapping[str, Stateful], progress: Mapping[str, Any],
             metrics: dict[str, Any] | None = None, files: Iterable[Path] = ()) -> None:
        """Write a checkpoint of ``components`` at ``step`` now, with the loop's ``progress`` record and copies of
        ``files`` (every rank calls it: a component's ``state_dict`` may be a collective; rank 0 writes)."""
        self.clock.pause()
        states = {name: component.state_dict() for name, component in components.items()}
        staging = None
        if self.ranks.writes:
            staging = self.store.staging(step)
            save_state(staging / STATE_FILE, states, {
                "step": step, "train_s": self.clock.elapsed, "identity": self.identity,
                "loss_window": [float(self._loss_sum), self._window], **progress})
            files = list(files)
            if files:
                (staging / FILES_DIR).mkdir()
                link_or_copy(files, staging / FILES_DIR)
        self.store.publish(staging, step, metrics or {})
        self._last_checkpoint = time.monotonic()
        self.clock.start()
