"""The results table: one Parquet file per finished trial, compacted into parts, read back as one Arrow table.

A trial writes its row last, atomically, to ``table/<run_id>.parquet``: the file's presence is what "finished"
means, so a crash can never leave half a row. :func:`compact` merges row files into parts (``tamt_table``, whose
commit protocol never loses a row, and whose readers never show one twice). :func:`read` returns the whole sweep
(every stage, every sweep that shared the storage) under :data:`SCHEMA`, documented in ``docs/results.md``.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

import tamt_table
from tamt_core.tasks import TASKS, metric_names

from orchestrator.storage import FORMAT_VERSION, Storage

METRIC_COLUMNS: tuple[str, ...] = tuple(sorted({m for task in TASKS.values() for m in metric_names(task)}))
"""Every dev metric any task reports; a fine-tune row fills its task's and leaves the others null."""

_METRIC_MAP = pa.map_(pa.string(), pa.float64())
_MASK = pa.struct([("sparsity", pa.float64()), ("step", pa.int64()), ("file", pa.string()),
                   ("mask_hash", pa.string()), ("actual_sparsity", pa.float64()), ("train_s", pa.float64()),
                   ("mlm_dev_loss", pa.float64()), ("kd_dev_loss", pa.float64())])
_PAIR = pa.struct([*[(f"{side}_{key}", kind) for side in ("a", "b")
                     for key, kind in (("run_id", pa.string()), ("method", pa.string()), ("seed", pa.int64()),
                                       ("step", pa.int64()), ("hash", pa.string()))],
                   ("similarity", pa.float64())])
_EVALUATION = pa.struct([("step", pa.int64()), ("epoch", pa.float64()), ("train_loss", pa.float64()),
                         ("metrics", _METRIC_MAP)])

SCHEMA = pa.schema([
    ("run_id", pa.string()), ("stage", pa.string()), ("format_version", pa.int32()),
    # what was run
    ("model", pa.string()), ("method", pa.string()), ("objective", pa.string()), ("sparsity", pa.float64()),
    ("mask_seed", pa.int64()), ("mask_step", pa.int64()), ("mask_run_id", pa.string()), ("mask_hash", pa.string()),
    ("mask_file", pa.string()), ("task", pa.string()), ("finetune_seed", pa.int64()), ("train_size", pa.int64()),
    # outcome
    ("select_metric", pa.string()), ("best_score", pa.float64()), ("best_step", pa.int64()),
    *[(name, pa.float64()) for name in METRIC_COLUMNS],
    ("curve", pa.list_(_EVALUATION)), ("masks", pa.list_(_MASK)), ("pairs", pa.list_(_PAIR)),
    ("mlm_dev_loss", pa.float64()), ("kd_dev_loss", pa.float64()),
    # cost and provenance
    ("steps", pa.int64()), ("train_examples", pa.int64()), ("wall_s", pa.float64()), ("attempts", pa.int64()),
    ("device", pa.string()), ("node", pa.string()), ("finished_at", pa.timestamp("s", tz="UTC")),
    ("versions", pa.map_(pa.string(), pa.string())), ("spec", pa.string()), ("info", pa.string()),
    # the code's versions: which rows of one experiment are the newest (docs/results.md, "Stale rows")
    ("cell_id", pa.string()), ("algorithm_versions", pa.map_(pa.string(), pa.int64())),
])


def _row_table(row: dict[str, Any]) -> pa.Table:
    unknown = set(row) - set(SCHEMA.names)
    if unknown:
        raise KeyError(f"results row has columns outside the schema: {sorted(unknown)}")
    full = {name: row.get(name) for name in SCHEMA.names}
    full["format_version"] = FORMAT_VERSION
    for name in ("versions", "algorithm_versions"):
        if isinstance(full[name], dict):
            full[name] = list(full[name].items())
    for evaluation in full["curve"] or []:
        if isinstance(evaluation["metrics"], dict):
            evaluation["metrics"] = list(evaluation["metrics"].items())
    for name in ("spec", "info"):
        if full[name] is not None and not isinstance(full[name], str):
            full[name] = json.dumps(full[name], sort_keys=True)
    return pa.Table.from_pylist([full], schema=SCHEMA)


def write_row(storage: Storage, row: dict[str, Any]) -> str:
    """Publish one finished trial's row; returns its path. Overwrites are identical by construction (same run)."""
    fs, _ = storage.filesystem()
    path = f"{storage.table_path()}/{row['run_id']}{tamt_table.SUFFIX}"
    tamt_table.write_atomically(fs, path, tamt_table.parquet_bytes(_row_table(row)))
    return path


def finished_run_ids(storage: Storage) -> set[str]:
    """Run ids with a row: two listings and the ``run_id`` column of each part, no row file opened."""
    fs, _ = storage.filesystem()
    return tamt_table.run_ids(fs, storage.table_path())


def has_row(storage: Storage, run_id: str) -> bool:
    """Whether the run has a row (its row file, or one row group of a part: not every part's run ids)."""
    fs, _ = storage.filesystem()
    if fs.get_file_info(f"{storage.table_path()}/{run_id}{tamt_table.SUFFIX}").type == pafs.FileType.File:
        return True
    return tamt_table.contains(fs, storage.table_path(), run_id)


def read(storage: Storage | str) -> pa.Table:
    """The whole results table of a storage, one row per run id (:func:`read_frame` gives it as a DataFrame)."""
    storage = storage if isinstance(storage, Storage) else Storage.at(storage)
    fs, _ = storage.filesystem()
    return tamt_table.read(fs, storage.table_path(), SCHEMA)


def read_frame(storage: Storage | str):
    """:func:`read` as a pandas DataFrame, map columns (metrics, versions) as dicts."""
    return read(storage).to_pandas(maps_as_pydicts="strict")


def read_row(storage: Storage, run_id: str) -> dict[str, Any]:
    """One finished trial's row as a dict (e.g. a search's mask list, for the fine-tunes that need it); map columns
    as dicts, and columns added after the row was written as ``None``.

    Raises:
        KeyError: the run has no row.
    """
    fs, _ = storage.filesystem()
    found = tamt_table.read_run(fs, storage.table_path(), run_id, SCHEMA)
    if found is None:
        raise KeyError(f"run {run_id} has no row in {storage.table_path()}")
    row = found.to_pylist()[0]
    for name in ("versions", "algorithm_versions"):
        if row[name] is not None:
            row[name] = dict(row[name])
    return row


def compact(storage: Storage, min_rows: int = tamt_table.COMPACT_MIN_ROWS) -> tamt_table.Compaction:
    """Merge the table's row files (at least ``min_rows``) and small parts into a part (``tamt_table.compact``)."""
    fs, _ = storage.filesystem()
    return tamt_table.compact(fs, storage.table_path(), SCHEMA, min_rows=min_rows)
