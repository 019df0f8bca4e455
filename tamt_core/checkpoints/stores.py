"""Where a run's checkpoints live: a :class:`CheckpointStore` hands the run its checkpoints to resume from and takes
new ones.

A checkpoint is a state file (:mod:`tamt_core.checkpoints.state`) plus whatever files the run wants restored with
it (a search's masks), assembled in a staging directory and published at once, so a reader never sees half of one.
Three stores exist: :class:`CheckpointDirectory` (``tamt search --out DIR``: the newest checkpoints as
directories), :class:`CheckpointFile` (a fine-tune: one file, replaced), and Ray Train's checkpoints in a sweep
(``orchestrator.train``). A checkpoint that cannot be read is set aside, never deleted.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from tamt_core.checkpoints.state import STATE_FILE


class CheckpointStore(Protocol):
    """Where a run's checkpoints live; each is a state file in a local directory once assembled or fetched."""

    def candidates(self) -> Iterable[Path]:
        """State files to resume from, newest first, local (fetched as the iteration reaches them); the files
        saved with a checkpoint lie beside its state file."""

    def staging(self, step: int) -> Path:
        """An empty local directory to assemble the checkpoint of ``step`` in (called on rank 0 only)."""

    def publish(self, staging: Path | None, step: int, metrics: dict[str, Any]) -> None:
        """Make the assembled checkpoint the newest; every rank calls it, with ``staging=None`` except rank 0."""

    def set_aside(self, state_file: Path) -> Path:
        """Move the unreadable checkpoint of ``state_file`` out of the way (never delete it); returns where."""

    def urgent(self) -> bool:
        """Whether to checkpoint at this sync point whatever the period (a preemption notice); every rank calls it
        at every sync point and gets the same answer."""


class CheckpointDirectory:
    """A run's checkpoints under ``root``: ``step-00000120/`` holds ``state.safetensors`` and the files saved with it.

    A new checkpoint is assembled in a hidden directory and renamed into place, so a directory named
    ``step-*`` is always complete. The newest ``keep`` are kept, so a checkpoint that turns out unreadable has a
    predecessor to fall back to; an unreadable one is moved into ``root/set-aside/``, never deleted.
    """

    def __init__(self, root: Path, keep: int = 2) -> None:
        self.root, self.keep = Path(root), keep

    def checkpoints(self) -> list[Path]:
        """Complete checkpoint directories, newest first."""
        if not self.root.is_dir():
            return []
        return sorted((p for p in self.root.glob("step-*") if p.is_dir()), key=lambda p: p.name, reverse=True)

    def candidates(self) -> list[Path]:
        return [checkpoint / STATE_FILE for checkpoint in self.checkpoints()]

    def staging(self, step: int) -> Path:
        staging = self.root / f".staging-step-{step:08d}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def publish(self, staging: Path | None, step: int, metrics: dict[str, Any] | None = None) -> None:
        if staging is None:
            return
        final = self.root / f"step-{step:08d}"
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        for old in self.checkpoints()[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)

    def set_aside(self, state_file: Path) -> Path:
        checkpoint = state_file.parent
        target = self.root / "set-aside" / f"{checkpoint.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(checkpoint, target)
        return target

    def urgent(self) -> bool:
        return False

    def clear(self) -> None:
        """Remove every checkpoint (a finished run needs none); set-aside ones stay for inspection."""
        for path in [*self.checkpoints(), *self.root.glob(".staging-*")]:
            shutil.rmtree(path, ignore_errors=True)


class CheckpointFile:
    """A run's one checkpoint as one state file at ``path`` (a fine-tune's ``checkpoint.safetensors``), replaced at
    each save; an unreadable one is renamed beside it with a time stamp."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def candidates(self) -> list[Path]:
        return [self.path] if self.path.is_file() else []

    def staging(self, step: int) -> Path:
        staging = self.path.parent / f".staging-{self.path.stem}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def publish(self, staging: Path | None, step: int, metrics: dict[str, Any] | None = None) -> None:
        if staging is None:
            return
        os.replace(staging / STATE_FILE, self.path)
        shutil.rmtree(staging, ignore_errors=True)

    def set_aside(self, state_file: Path) -> Path:
        target = state_file.with_name(f"{self.path.stem}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}{self.path.suffix}")
        os.replace(state_file, target)
        return target

    def urgent(self) -> bool:
        return False

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def link_or_copy(sources: Iterable[Path], directory: Path) -> None:
    """Put ``sources`` into ``directory`` as hard links (free on one filesystem), else as copies."""
    for source in sources:
        target = directory / source.name
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
