"""The results table's files: one Parquet file per finished run, compacted into parts, read back as one table.

Layout of a table directory (``<storage>/table``)::

    <run_id>.parquet                          a finished trial's row: its presence is what "finished" means
    parts/part-<rows>-<uuid>.parquet          rows merged by :func:`compact`, ``<rows>`` of them

A trial publishes its row as its own file (one atomic write, never a read-modify-write of shared state), so any
number of trials on any number of nodes commit without coordination. Reading one file per row does not scale (a
paper-sized table is ~9K files, a large study 100K: minutes, and on an object store one request each), so
:func:`compact` merges row files, and small parts, into parts. Its commit protocol:

1. write the new part, whole, under a fresh name (atomically: a reader sees all of it or nothing);
2. then delete the row files and parts it merged.

Killed between the two steps, or racing another compaction, a row is in two files for a while; a reader keeps
one row per run id (:func:`unique_runs`; the rows of one run id are the same run), and the next compaction merges
the copies. A row is deleted only once a part holding it exists, so none is ever lost. The directory listing is
the manifest: parts are immutable and named by their row count, so no index file has to be kept in step (object
stores offer no compare-and-swap to update one safely), and reading a table takes two listings and one read per
part, however many rows it holds.

This package imports pyarrow and numpy only, so the analysis reads tables without importing the training code. Its
:mod:`tamt_table.atomic` (the standard library only) is the one atomic file write of the project: masks and
checkpoints use it too.
"""

from __future__ import annotations

import io
import os
import re
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tamt_table import atomic

SUFFIX = ".parquet"
PARTS = "parts"
PART_NAME = re.compile(r"^part-(\d+)-[0-9a-f]{32}\.parquet$")
COMPACT_MIN_ROWS = 500
"""Row files that make a compaction worth it (reading them costs ~2 ms each on a local disk, a request each on an
object store)."""
PART_ROWS = 10_000
"""Rows a compaction holds at once, and the size of a full part: parts below it are merged again with newer rows,
so a table of N rows has about N / PART_ROWS parts and one small one, and a compaction's memory (in the sweep's
driver) stays that of PART_ROWS rows however large the table grows."""
FORMAT_VERSION = 1
"""The storage format: the layout of a store and the results schema. Bump it when either changes incompatibly; a
store or a row of another version is refused (``orchestrator.storage``, ``analysis.table``)."""
PART_ROW_GROUP = 1_000
"""Rows per row group of a part, whose rows are sorted by run id: a lookup of one run id (:func:`contains`,
:func:`read_run`) reads the row group whose run-id range holds it, found from the part's footer statistics."""
READ_ATTEMPTS = 5
"""Listings a reader retries when a compaction removes a file it listed (it then finds the rows in a new part)."""

T = TypeVar("T")


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and root path of a storage location: a URI (``s3://``, ``gs://``, ``file://``) or a
    local path (``~`` expanded, made absolute)."""
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))


def write_atomically(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` so readers see the old file or the whole new one, never a part (a synced temporary file
    renamed on local disks; object stores publish a PUT atomically)."""
    if isinstance(fs, pafs.LocalFileSystem):
        atomic.write_bytes(path, data)
        return
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=row_group_size)
    return buffer.getvalue()


@dataclass(frozen=True)
class Listing:
    """What a table directory holds: row files by run id, and parts by path with their row counts."""

    rows: dict[str, str]
    parts: dict[str, int]

    @property
    def files(self) -> list[str]:
        return [*sorted(self.parts), *sorted(self.rows.values())]


def _files(fs: pafs.FileSystem, directory: str) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(directory, allow_not_found=True)
    return [info for info in fs.get_file_info(selector) if info.type == pafs.FileType.File]


def listing(fs: pafs.FileSystem, table_dir: str) -> Listing:
    """Row files first, parts second: a compaction that runs between the two listings has written its part before
    deleting the row files, so the second listing finds every row the first one missed."""
    rows = {info.base_name[:-len(SUFFIX)]: info.path for info in _files(fs, table_dir)
            if info.base_name.endswith(SUFFIX) and not info.base_name.startswith(".")}
    parts = {}
    for info in _files(fs, f"{table_dir}/{PARTS}"):
        match = PART_NAME.match(info.base_name)
        if match:
            parts[info.path] = int(match.group(1))
    return Listing(rows, parts)


def unique_runs(table: pa.Table) -> pa.Table:
    """One row per run id: the first of each (copies left by a killed or concurrent compaction are the same run)."""
    if table.num_rows == 0:
        return table
    ids = np.asarray(table.column("run_id").to_pylist(), dtype=object)
    _, first = np.unique(ids, return_index=True)
    return table if len(first) == table.num_rows else table.take(np.sort(first))


READ_BLOCK = 64
"""Files read as one dataset at a time: a dataset of thousands of one-row files holds ~250 KiB per file until it is
read (1.2 GB for 4,000). Reading 4,000 row files in blocks of 256 raised the process's peak by 124 MB, in blocks
of 64 by 56 MB, as fast (a compaction runs in the sweep's driver, whose memory keeps its peak)."""


def read_files(fs: pafs.FileSystem, paths: list[str], schema: pa.Schema | None = None) -> pa.Table:
    """The rows of ``paths`` (parts and row files) as one table: under ``schema`` when given (columns a file lacks
    read as nulls), else each file's own schema, unified."""
    if not paths:
        return schema.empty_table() if schema is not None else pa.table({"run_id": pa.array([], pa.string())})
    blocks = []
    for start in range(0, len(paths), READ_BLOCK):
        block = paths[start:start + READ_BLOCK]
        if schema is not None:
            table = pads.dataset(block, schema=schema, format="parquet", filesystem=fs).to_table()
        else:
            table = pa.concat_tables([pq.read_table(path, filesystem=fs) for path in block],
                                     promote_options="permissive")
        blocks.append(table.combine_chunks())
    return pa.concat_tables(blocks, promote_options="permissive")


def read(fs: pafs.FileSystem, table_dir: str, schema: pa.Schema | None = None) -> pa.Table:
    """Every row of the table, one per run id.

    Raises:
        OSError: files kept vanishing under :data:`READ_ATTEMPTS` listings (compactions without pause).
    """
    return _from_listing(fs, table_dir, lambda found: unique_runs(read_files(fs, found.files, schema)))


def _from_listing(fs: pafs.FileSystem, table_dir: str, read: Callable[[Listing], T]) -> T:
    """``read`` of a fresh listing, listed again when a compaction removed a file it names (the rows are then in a
    new part), up to :data:`READ_ATTEMPTS` times."""
    for attempt in range(READ_ATTEMPTS):
        found = listing(fs, table_dir)
        try:
            return read(found)
        except FileNotFoundError:
            if attempt == READ_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def part_run_ids(fs: pafs.FileSystem, paths: list[str]) -> set[str]:
    """The run ids the parts hold: their ``run_id`` column only."""
    ids: set[str] = set()
    for path in paths:
        ids.update(pq.read_table(path, filesystem=fs, columns=["run_id"]).column("run_id").to_pylist())
    return ids


def run_ids(fs: pafs.FileSystem, table_dir: str) -> set[str]:
    """Run ids with a row: two listings and one column of each part, no row file opened."""
    return _from_listing(fs, table_dir, lambda found: set(found.rows) | part_run_ids(fs, sorted(found.parts)))


def _part_row(fs: pafs.FileSystem, parts: Collection[str], run_id: str, schema: pa.Schema | None,
              columns: list[str] | None) -> pa.Table | None:
    """The row of ``run_id`` in the parts, or ``None``: of each part only the row group whose run-id range holds
    it is read."""
    if not parts:
        return None
    hits = pads.dataset(sorted(parts), schema=schema, format="parquet", filesystem=fs).to_table(
        columns=columns, filter=pads.field("run_id") == run_id)
    return unique_runs(hits) if hits.num_rows else None


def read_run(fs: pafs.FileSystem, table_dir: str, run_id: str, schema: pa.Schema | None = None,
             columns: list[str] | None = None) -> pa.Table | None:
    """The row of one run id (from its row file, else from the part that holds it), or ``None``; ``columns``
    limits what is read."""
    def read(found: Listing) -> pa.Table | None:
        if run_id in found.rows:
            table = read_files(fs, [found.rows[run_id]], schema)
            return table.select(columns) if columns is not None else table
        return _part_row(fs, found.parts, run_id, schema, columns)
    return _from_listing(fs, table_dir, read)


def contains(fs: pafs.FileSystem, table_dir: str, run_id: str) -> bool:
    """Whether ``run_id`` has a row. A listed row file answers without a read (it was renamed into place whole);
    otherwise one row group of each part that may hold it is read."""
    return _from_listing(fs, table_dir, lambda found: run_id in found.rows
                         or _part_row(fs, found.parts, run_id, None, ["run_id"]) is not None)


def remove(fs: pafs.FileSystem, path: str) -> None:
    """Delete a merged file; one already gone (removed by a concurrent compaction) is fine."""
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class Compaction:
    """What one :func:`compact` did: the part it wrote (``None``: nothing to do) and what it merged."""

    part: str | None
    rows: int
    row_files: int
    parts_merged: int


def compact(fs: pafs.FileSystem, table_dir: str, schema: pa.Schema | None = None,
            min_rows: int = COMPACT_MIN_ROWS, part_rows: int = PART_ROWS) -> Compaction:
    """Merge the row files (when there are at least ``min_rows``) and the parts below ``part_rows`` rows into new
    parts of at most ``part_rows`` rows, one at a time, deleting what each merged (the module's commit protocol);
    returns the last part written and the totals. Safe while trials write rows and other readers or compactions
    run."""
    done = Compaction(None, 0, 0, 0)
    while True:
        step = _compact_round(fs, table_dir, schema, min_rows, part_rows)
        if step.part is None:
            return done
        done = Compaction(step.part, done.rows + step.rows, done.row_files + step.row_files,
                          done.parts_merged + step.parts_merged)


def _compact_round(fs: pafs.FileSystem, table_dir: str, schema: pa.Schema | None, min_rows: int,
                   part_rows: int) -> Compaction:
    """One part: the small parts, smallest first, then row files, up to ``part_rows`` rows."""
    found = listing(fs, table_dir)
    small, rows = [], 0
    for path in sorted((p for p, n in found.parts.items() if n < part_rows), key=lambda p: (found.parts[p], p)):
        if rows + found.parts[path] > part_rows:
            break
        small.append(path)
        rows += found.parts[path]
    row_files = sorted(found.rows.values())[:part_rows - rows]
    if len(row_files) < min_rows and len(small) < 2:
        return Compaction(None, 0, 0, 0)
    try:
        merged = unique_runs(read_files(fs, [*small, *row_files], schema)).sort_by("run_id")
    except FileNotFoundError:  # another compaction merged some of them first: leave it to the next round
        return Compaction(None, 0, 0, 0)
    part = f"{table_dir}/{PARTS}/part-{merged.num_rows}-{uuid.uuid4().hex}{SUFFIX}"
    fs.create_dir(f"{table_dir}/{PARTS}", recursive=True)
    write_atomically(fs, part, parquet_bytes(merged, row_group_size=PART_ROW_GROUP))
    for path in [*row_files, *small]:
        remove(fs, path)
    return Compaction(part, merged.num_rows, len(row_files), len(small))
