"""A run's output directory: claimed by the run's identity, so a rerun finds its own files and never another run's.

``tamt search --out DIR`` and ``tamt finetune --out DIR`` (and every trial of a sweep) write into a directory that
records the run's id; a rerun of the same run continues there, another run is refused with the fix.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tamt_table.atomic import write_bytes


class OutputDirectoryError(ValueError):
    """The output directory belongs to a different run, or cannot be one (a file, not writable)."""


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON so readers see the old file or the whole new one."""
    write_bytes(path, (json.dumps(obj, indent=2, allow_nan=True) + "\n").encode())


def claim_directory(out_dir: Path, identity_file: str, identity: dict[str, Any], *, kind: str,
                    describe: Callable[[dict[str, Any]], str]) -> None:
    """Make ``out_dir`` this run's (writing ``identity_file``), or check that it already is.

    ``identity`` must carry the ``run_id``; ``describe`` summarises the other run's recorded identity in the error.

    Raises:
        OutputDirectoryError: the directory holds another run, or files that are not a run of this kind.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirectoryError(f"{out_dir} is a file, not a directory; pass a new or empty output directory")
    recorded_path = out_dir / identity_file
    if recorded_path.exists():
        recorded = json.loads(recorded_path.read_text())
        if recorded.get("run_id") != identity["run_id"]:
            raise OutputDirectoryError(
                f"{out_dir} holds another {kind} run (run id {recorded.get('run_id')}: {describe(recorded)}); this "
                f"one is {identity['run_id']}. Pass a new output directory, or delete {out_dir} to discard the "
                "other run.")
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        raise OutputDirectoryError(f"{out_dir} is not empty and holds no {kind} run (no {identity_file}); pass an "
                                   "empty or new output directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a parent is a file, or not writable
        raise OutputDirectoryError(f"cannot create {out_dir} ({error.strerror}); pass an output directory you can "
                                   "write") from error
    write_json(recorded_path, identity)
