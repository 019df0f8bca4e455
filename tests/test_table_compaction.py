"""The results table's compaction: never a row lost or shown twice, killed at any step, while rows are written and
read; and reading a compacted table costs the same number of filesystem calls at any size."""

from __future__ import annotations

import shutil
import sys
import threading
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tamt_table
from orchestrator import results
from orchestrator.storage import Storage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from fs_requests import counting_filesystem


class Killed(BaseException):
    """The compaction process dies here (BaseException: no handler of the code under test catches it)."""


def _row(run_id: str, score: float = 1.0) -> dict:
    return {"run_id": run_id, "stage": "finetune", "model": "m", "method": "omp", "task": "rte",
            "best_score": score, "versions": {"tamt": "test"}, "algorithm_versions": {"finetune": 1}}


def _store(path: Path, ids: list[str]) -> Storage:
    storage = Storage.at(path)
    storage.prepare()
    for run_id in ids:
        results.write_row(storage, _row(run_id))
    return storage


def _ids_once(storage: Storage) -> Counter:
    table = results.read(storage)
    return Counter(table.column("run_id").to_pylist())


def _layered_store(path: Path) -> tuple[Storage, list[str]]:
    """A small part (two compactions of three rows, the second merging the first) and six newer row files."""
    storage = _store(path, [f"a{i}" for i in range(3)])
    results.compact(storage, min_rows=1)
    for i in range(3):
        results.write_row(storage, _row(f"b{i}"))
    results.compact(storage, min_rows=1)
    for i in range(6):
        results.write_row(storage, _row(f"c{i}"))
    return storage, [*(f"a{i}" for i in range(3)), *(f"b{i}" for i in range(3)), *(f"c{i}" for i in range(6))]


def _mutations(monkeypatch, kill_at: int | None) -> list[str]:
    """Count the compaction's writes and deletes (its commit steps); die before step ``kill_at``."""
    steps: list[str] = []
    write, remove = tamt_table.write_atomically, tamt_table.remove

    def step(name, action, *args):
        if kill_at is not None and len(steps) == kill_at:
            raise Killed(name)
        steps.append(name)
        return action(*args)

    monkeypatch.setattr(tamt_table, "write_atomically", lambda fs, path, data: step("write", write, fs, path, data))
    monkeypatch.setattr(tamt_table, "remove", lambda fs, path: step("remove", remove, fs, path))
    return steps


def test_a_compaction_merges_row_files_and_small_parts_into_one_part(tmp_path, monkeypatch):
    storage, ids = _layered_store(tmp_path / "runs")
    steps = _mutations(monkeypatch, None)
    done = results.compact(storage, min_rows=1)
    assert (done.rows, done.row_files, done.parts_merged) == (12, 6, 1)
    assert steps == ["write"] + ["remove"] * 7  # publish the part, then delete what it holds
    found = tamt_table.listing(*storage.filesystem()[:1], storage.table_path())
    assert not found.rows and list(found.parts.values()) == [12]
    assert _ids_once(storage) == Counter(ids) and results.finished_run_ids(storage) == set(ids)
    assert results.read_row(storage, "b1")["algorithm_versions"] == {"finetune": 1}
    assert results.has_row(storage, "c5") and not results.has_row(storage, "z")
    with pytest.raises(KeyError, match="no row"):
        results.read_row(storage, "z")


def test_a_part_is_sorted_by_run_id_in_row_groups_that_a_lookup_picks_by_their_statistics(tmp_path, monkeypatch):
    """A lookup of one run id (``has_row`` at each trial's start, ``read_row``) reads the row group whose run-id
    range holds it, not the run ids of every row; ``has_row`` of a row file opens nothing."""
    monkeypatch.setattr(tamt_table, "PART_ROW_GROUP", 10)
    ids = [f"{(i * 37) % 100:03d}" for i in range(100)]  # written out of order
    storage = _store(tmp_path / "runs", ids)
    results.compact(storage, min_rows=1)
    results.write_row(storage, _row("row-file"))
    fs, _ = storage.filesystem()
    (part,) = tamt_table.listing(fs, storage.table_path()).parts
    metadata = pq.ParquetFile(part, filesystem=fs).metadata
    column = metadata.schema.names.index("run_id")
    ranges = [(metadata.row_group(g).column(column).statistics.min, metadata.row_group(g).column(column).statistics.max)
              for g in range(metadata.num_row_groups)]
    assert ranges == [(f"{g * 10:03d}", f"{g * 10 + 9:03d}") for g in range(10)]  # one narrow range each
    assert all(results.has_row(storage, run_id) for run_id in [*ids, "row-file"])
    assert not any(results.has_row(storage, run_id) for run_id in ("", "0055", "100", "zzz"))
    assert results.read_row(storage, "042")["run_id"] == "042"
    monkeypatch.setattr(tamt_table, "read_files", None)  # a listed row file answers without being opened
    assert results.has_row(storage, "row-file")


def test_a_compaction_holds_at_most_a_part_of_rows_however_large_the_table(tmp_path, monkeypatch):
    """The sweep's driver compacts: its memory must follow ``PART_ROWS``, not the table. 250 row files with parts
    of 100 rows become parts of 100, 100 and 50, each read alone; new rows later merge with the small part only."""
    storage = _store(tmp_path / "runs", [f"r{i:03d}" for i in range(250)])
    fs, _ = storage.filesystem()
    held, read_files = [], tamt_table.read_files

    def counted(*args, **kwargs):
        table = read_files(*args, **kwargs)
        held.append(table.num_rows)
        return table

    monkeypatch.setattr(tamt_table, "read_files", counted)
    done = tamt_table.compact(fs, storage.table_path(), results.SCHEMA, min_rows=1, part_rows=100)
    assert (done.rows, done.row_files) == (250, 250) and held == [100, 100, 50]
    assert sorted(tamt_table.listing(fs, storage.table_path()).parts.values()) == [50, 100, 100]
    for i in range(30):
        results.write_row(storage, _row(f"s{i:02d}"))
    held.clear()
    tamt_table.compact(fs, storage.table_path(), results.SCHEMA, min_rows=1, part_rows=100)
    assert held == [80] and sorted(tamt_table.listing(fs, storage.table_path()).parts.values()) == [80, 100, 100]
    assert _ids_once(storage) == Counter([*(f"r{i:03d}" for i in range(250)), *(f"s{i:02d}" for i in range(30))])


@pytest.mark.parametrize("kill_at", range(8))
def test_a_compaction_killed_at_any_step_loses_no_row_and_shows_none_twice(tmp_path, monkeypatch, kill_at):
    storage, ids = _layered_store(tmp_path / "runs")
    _mutations(monkeypatch, kill_at)
    with pytest.raises(Killed):
        results.compact(storage, min_rows=1)
    monkeypatch.undo()
    assert _ids_once(storage) == Counter(ids)
    assert results.finished_run_ids(storage) == set(ids)
    results.compact(storage, min_rows=1)  # the next compaction finishes the job: one part, no copies
    fs, _ = storage.filesystem()
    found = tamt_table.listing(fs, storage.table_path())
    assert not found.rows and list(found.parts.values()) == [12] and _ids_once(storage) == Counter(ids)


def test_rows_written_and_read_while_compactions_run_are_all_there_once(tmp_path):
    storage = _store(tmp_path / "runs", [])
    written: list[str] = []
    problems: list[str] = []
    done = threading.Event()

    def writer():
        for i in range(300):
            results.write_row(storage, _row(f"r{i:03d}"))
            written.append(f"r{i:03d}")
        done.set()

    def compactor():
        while not done.is_set():
            results.compact(storage, min_rows=1)

    def reader():
        while not done.is_set():
            before = set(written)
            seen = Counter(results.read(storage).column("run_id").to_pylist())
            if any(count > 1 for count in seen.values()):
                problems.append("a run id twice")
            if before - set(seen):
                problems.append(f"lost {sorted(before - set(seen))[:3]}")

    threads = [threading.Thread(target=f) for f in (writer, compactor, compactor, reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not problems, problems[:5]
    assert _ids_once(storage) == Counter(written) and len(written) == 300


def test_reading_a_compacted_table_takes_the_same_calls_at_any_size(tmp_path):
    """What an object store would bill: the calls of a read do not grow with the rows."""
    calls = {}
    for rows in (20, 200):
        storage = Storage.at(tmp_path / f"runs-{rows}")
        storage.prepare()
        table = pa.Table.from_pylist([_row(f"r{i}") for i in range(rows)])
        for i in range(rows):
            results.write_row(storage, _row(f"r{i}"))
        results.compact(storage, min_rows=1)
        fs, handler = counting_filesystem()
        assert tamt_table.read(fs, storage.table_path(), results.SCHEMA).num_rows == table.num_rows
        assert len(tamt_table.run_ids(fs, storage.table_path())) == rows
        calls[rows] = sum(handler.calls.values())
    assert calls[20] == calls[200] and calls[20] <= 8, calls


def test_a_table_of_row_files_only_still_reads_and_a_store_copy_keeps_its_parts(tmp_path):
    storage = _store(tmp_path / "runs", ["x", "y"])
    assert _ids_once(storage) == Counter({"x": 1, "y": 1})
    assert results.compact(storage).part is None  # below COMPACT_MIN_ROWS: left as files
    results.compact(storage, min_rows=1)
    shutil.copytree(tmp_path / "runs", tmp_path / "copy")
    assert _ids_once(Storage.at(tmp_path / "copy")) == Counter({"x": 1, "y": 1})


def test_the_analysis_reads_parts_row_files_and_its_cache_without_a_copy_twice(tmp_path):
    from analysis import table

    storage = _store(tmp_path / "runs", [f"a{i}" for i in range(4)])
    results.compact(storage, min_rows=1)
    for i in range(3):
        results.write_row(storage, _row(f"b{i}"))
    cache, heard = tmp_path / "figures" / "rows.parquet", []
    first = table.load(storage.uri, cache=cache, log=heard.append)
    assert sorted(first["run_id"]) == ["a0", "a1", "a2", "a3", "b0", "b1", "b2"]
    assert heard[0].startswith("read 1 parts") and "reading 3 rows" in heard[1]
    results.write_row(storage, _row("a0"))  # a retried trial's second copy of a merged row
    results.compact(storage, min_rows=1)  # the cached row files are merged now
    again = table.load(storage.uri, cache=cache)
    assert Counter(again["run_id"]) == Counter(first["run_id"])
