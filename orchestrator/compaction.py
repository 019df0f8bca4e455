"""Keeping the results table fast to read: its row files merged into parts (``tamt_table.compact``), by the sweep
driver in the background while trials run, and on demand::

    python -m sweeps compact --storage ./tamt-runs      # or a shared path, or s3://bucket/runs

A compaction is safe at any time: while trials write rows, while the analysis or ``status`` read, while another
compaction runs, and killed at any point (``tamt_table`` explains why).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

import pyarrow.fs as pafs

import tamt_table

from orchestrator import results
from orchestrator.memory import release_freed_memory
from orchestrator.storage import DEFAULT_STORAGE, MARKER, Storage

log = logging.getLogger(__name__)

COMPACT_EVERY_S = 600.0
"""How often a running sweep's driver merges the rows finished since its last compaction."""


class Compactor:
    """Merges the table's row files every ``every_s`` seconds in a thread of the driver, off Tune's control loop;
    a compaction that fails (an unreachable object store) is logged and tried again at the next period."""

    def __init__(self, storage: Storage, every_s: float = COMPACT_EVERY_S,
                 min_rows: int = tamt_table.COMPACT_MIN_ROWS) -> None:
        self.storage, self.every_s, self.min_rows = storage, every_s, min_rows
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tamt-compactor", daemon=True)

    def start(self) -> Compactor:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.compact_once()

    def compact_once(self) -> tamt_table.Compaction | None:
        try:
            return results.compact(self.storage, self.min_rows)
        except OSError as error:
            log.warning("compacting the results table of %s failed (%s); trying again in %.0f s", self.storage.uri,
                        error, self.every_s)
            return None
        finally:
            release_freed_memory()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """``python -m sweeps compact``: merge every row file of a storage's table (and its small parts) now."""
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="python -m sweeps compact", description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=DEFAULT_STORAGE,
                        help=f"the sweeps' --storage: a directory or s3://, gs://, file:// (default {DEFAULT_STORAGE})")
    args = parser.parse_args(argv)
    storage = Storage.at(args.storage)
    fs, _ = storage.filesystem()
    if fs.get_file_info(storage.path(MARKER)).type != pafs.FileType.File:
        print(f"error: no tamt store at {args.storage} (no {MARKER}); pass the --storage a sweep ran with",
              file=sys.stderr)
        return 2
    started = time.perf_counter()
    done = results.compact(storage, min_rows=1)
    if done.part is None:
        print(f"[tamt] nothing to merge in {storage.table_path()}", file=out)
    else:
        print(f"[tamt] merged {done.row_files:,} row files and {done.parts_merged} parts into {done.part} "
              f"({done.rows:,} rows, {time.perf_counter() - started:.1f} s)", file=out)
    return 0
