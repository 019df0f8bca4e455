"""Read a sweep's results table and pick out what the paper's figures average.

The analysis reads the Parquet rows the orchestrator writes (``<runs>/table/``, documented in ``docs/results.md``)
with pyarrow and ``tamt_table`` alone: no training code, no Ray, no MLflow. Everything a figure needs is a pure
function of the DataFrame :func:`load` returns, so the figures can be recomputed from a copied table anywhere.

Two choices decide which rows stand for "the" result of a method at a sparsity; ``docs/analysis.md`` explains them:

* :func:`main_masks`: a search run can write several masks (TAMT along training, IMP one per 10 %), and several
  runs can share a seed (IMP with different pruning intervals). The paper's main results use one mask per seed:
  Tab. 2's TAMT step and IMP at its default interval. Sweeps fine-tune that mask on every task and the others on
  the analysis tasks only, so the mask whose fine-tunes cover the most tasks is the main one.
* :func:`main_size`: the main results fine-tune on the whole training set; a store without whole-set rows for a
  task (the smoke presets train on a subset) uses its largest subset.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import tamt_table
from tamt_table.atomic import replacing
from tamt_table import FORMAT_VERSION

REPLICATE = ["mask_seed", "finetune_seed"]
"""What the paper averages over: 3 masks × 3 fine-tuning runs = 9 runs per method (§4.1.3)."""

MASK = ["mask_run_id", "mask_step"]
"""One mask: the search that wrote it and the training step it was taken at."""


class TableError(ValueError):
    """The results table cannot be read (missing, empty, or of another storage format)."""


def load(runs: str | Path, cache: Path | None = None, log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Every row of the results table under ``runs`` (a directory or a pyarrow URI such as ``s3://bucket/runs``),
    one per run id.

    The table is parts (``tamt_table``: many rows each, read whole) and row files of trials finished since the last
    compaction. A row never changes once written (its file name is its run id), so ``cache``, one Parquet file of
    the row files read so far, stays valid: only row files written since are read (a few ms each), and cached rows
    whose file is gone (merged into a part, or deleted) are dropped. ``log`` hears what is being read.

    Raises:
        TableError: no table there, or rows of a storage format this analysis does not read.
    """
    runs = str(runs)
    fs, root = tamt_table.filesystem(runs)
    table_dir = f"{root.rstrip('/')}/table"
    for attempt in range(tamt_table.READ_ATTEMPTS):
        found = tamt_table.listing(fs, table_dir)
        if not found.rows and not found.parts:
            raise TableError(f"no results table under {runs}: expected Parquet rows in {table_dir}/. Point --runs "
                             "at the --storage of a sweep (default ./tamt-runs) that has finished at least one "
                             "trial.")
        try:
            table, singles = _read(fs, table_dir, found, cache, log)
            break
        except FileNotFoundError:  # a compaction merged files it listed: list again
            if attempt == tamt_table.READ_ATTEMPTS - 1:
                raise
    versions = set(table.column("format_version").to_pylist())
    if versions != {FORMAT_VERSION}:
        raise TableError(f"the table under {runs} has rows of storage format {sorted(versions)}; this analysis "
                         f"reads format {FORMAT_VERSION}. Use the tamt version that wrote the sweep.")
    if cache is not None and singles is not None:
        with replacing(cache) as partial:  # a reader sees the old cache or the new one
            pq.write_table(singles, partial)
    return table.to_pandas(maps_as_pydicts="strict")


def _read(fs: pafs.FileSystem, table_dir: str, found: tamt_table.Listing, cache: Path | None,
          log: Callable[[str], None] | None) -> tuple[pa.Table, pa.Table | None]:
    """The parts and the row files of ``found``, the row files through ``cache``, one row per run id; and the rows
    of the row files when some were read anew (what the cache should hold next)."""
    parts = tamt_table.read_files(fs, sorted(found.parts)) if found.parts else None
    if parts is not None and log:
        log(f"read {len(found.parts)} parts of {table_dir}/ ({parts.num_rows:,} rows)")
    known = _read_cache(cache, set(found.rows))
    cached_ids = set(known.column("run_id").to_pylist()) if known is not None else set()
    new = sorted(path for run_id, path in found.rows.items() if run_id not in cached_ids)
    if new and log:
        log(f"reading {len(new):,} rows from {table_dir}/" + (f" ({known.num_rows:,} cached)" if known else ""))
        if len(found.rows) >= tamt_table.COMPACT_MIN_ROWS:
            log(f"{len(found.rows):,} rows are still one file each; `python -m sweeps compact --storage "
                f"{table_dir.rsplit('/', 1)[0]}` merges them into parts, which read in a second")
    with ThreadPoolExecutor(max_workers=4) as pool:
        tables = list(pool.map(lambda path: pq.ParquetFile(path, filesystem=fs).read(use_threads=False), new))
    # Rows written before a column was added lack it; "permissive" fills it with nulls (docs/results.md).
    singles = [known] if known is not None else []
    singles += tables
    table = tamt_table.unique_runs(pa.concat_tables(([parts] if parts is not None else []) + singles,
                                                    promote_options="permissive"))
    return table, pa.concat_tables(singles, promote_options="permissive") if new else None


def _read_cache(cache: Path | None, run_ids: set[str]) -> pa.Table | None:
    """The cached rows that still have a row file, or None (no cache, or one written by another format)."""
    if cache is None or not cache.exists():
        return None
    try:
        cached = pq.read_table(cache)
    except (pa.ArrowInvalid, OSError):
        return None  # a damaged cache is rebuilt from the row files
    if set(cached.column("format_version").to_pylist()) - {FORMAT_VERSION}:
        return None
    keep = pa.array([run_id in run_ids for run_id in cached.column("run_id").to_pylist()])
    return cached.filter(keep)


def newest(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of the newest code for each experiment, and the stale rows left out (``docs/results.md``).

    Rows of one *cell* (``cell_id``: the run's id with every algorithm at its first version; a row without one is
    its own cell) are the same experiment computed by different code. A row is stale when another row of its cell
    has every algorithm it depends on (``algorithm_versions``; a row without them is at version 1 throughout) at
    the same or a higher version, and one higher: a fix was released and the trial was run again.
    """
    cells = rows["cell_id"].fillna(rows["run_id"]) if "cell_id" in rows else rows["run_id"]
    shared = cells.duplicated(keep=False)
    stale = pd.Series(False, index=rows.index)
    if "algorithm_versions" in rows and shared.any():
        versions = rows["algorithm_versions"].map(lambda v: v if isinstance(v, dict) else {})
        for _, index in cells[shared].groupby(cells[shared]).groups.items():
            for row in index:
                stale[row] = any(_dominates(versions[other], versions[row]) for other in index if other != row)
    return rows[~stale], rows[stale]


def _dominates(newer: dict[str, int], older: dict[str, int]) -> bool:
    names = set(newer) | set(older)
    pairs = [(newer.get(name, 1), older.get(name, 1)) for name in names]
    return all(a >= b for a, b in pairs) and any(a > b for a, b in pairs)


def describe_stale(stale: pd.DataFrame) -> list[str]:
    """One line per stage, method and code versions of the stale rows, with their count."""
    if stale.empty:
        return []
    versions = stale["algorithm_versions"].map(
        lambda v: ", ".join(f"{k} v{n}" for k, n in sorted(v.items())) if isinstance(v, dict) else "first versions")
    groups = pd.DataFrame({"stage": stale["stage"], "method": stale["method"].fillna("—"), "versions": versions})
    return [f"{count} {stage} rows of {method} ({code})"
            for (stage, method, code), count in groups.value_counts(sort=False).sort_index().items()]


def stage(rows: pd.DataFrame, name: str) -> pd.DataFrame:
    return rows[rows["stage"] == name]


def finetunes(rows: pd.DataFrame) -> pd.DataFrame:
    """Fine-tune rows with ``score`` (the task's selection metric at the best evaluation, 0-100, App. C) and
    ``chance`` (what a predictor that ignores its input scores on that metric; NaN for rows that predate it)."""
    out = stage(rows, "finetune").copy()
    out["score"] = out["best_score"]
    if "info" in out and "select_metric" in out:
        levels = info(out).map(lambda parsed: parsed.get("chance") or {})
        out["chance"] = [level.get(metric, np.nan) for level, metric in zip(levels, out["select_metric"])]
    else:
        out["chance"] = np.nan
    return out


def training_examples(rows: pd.DataFrame) -> pd.Series:
    """Examples each fine-tune trained on: the subset size, or the whole training set's size (Fig. 7's x-axis)."""
    return rows["train_size"].fillna(rows["train_examples"]).astype(float)


def main_size(rows: pd.DataFrame) -> pd.DataFrame:
    """Fine-tunes on each model and task's largest training set: the whole set where the table has it. Decided
    for the masks and for the full model apart, so that one's whole-set runs never hide the other's."""
    size = rows["train_size"].fillna(np.inf)
    largest = size.groupby([rows["model"], rows["task"], rows["method"] == "full"]).transform("max")
    return rows[size == largest]


def main_masks(finetunes: pd.DataFrame) -> pd.DataFrame:
    """The mask that stands for each (model, method, sparsity, mask seed): its fine-tunes at :func:`main_size`
    cover the most tasks; ties go to the mask with the most fine-tunes, then to the later step.

    Returns one row per mask seed with ``model, method, sparsity, mask_seed, mask_run_id, mask_step``.
    """
    masked = main_size(finetunes[finetunes["method"] != "full"])
    keys = ["model", "method", "sparsity", "mask_seed"]
    if masked.empty:
        return masked[keys + MASK].reset_index(drop=True)  # typed like the table, so merges on it still work
    per_mask = (masked.groupby(keys + MASK, dropna=False)
                .agg(tasks=("task", "nunique"), runs=("run_id", "size")).reset_index())
    per_mask = per_mask.sort_values(keys + ["tasks", "runs", "mask_step"], ascending=[True] * 4 + [False] * 3)
    return per_mask.drop_duplicates(keys)[keys + MASK].reset_index(drop=True)


def main_results(rows: pd.DataFrame) -> pd.DataFrame:
    """Fig. 3's runs: every method's main masks and the full model, fine-tuned on the main training set."""
    tuned = main_size(finetunes(rows))
    chosen = main_masks(tuned)
    masked = tuned.merge(chosen, on=list(chosen.columns))
    return pd.concat([masked, tuned[tuned["method"] == "full"]], ignore_index=True)


def summarize(rows: pd.DataFrame, by: list[str], value: str = "score") -> pd.DataFrame:
    """Mean, sample standard deviation (ddof 1, NaN for one run) and count of ``value`` per group (runs with
    a value)."""
    grouped = rows.groupby(by, dropna=False)[value]
    return grouped.agg(mean="mean", std="std", n="count").reset_index()


def task_average(rows: pd.DataFrame, by: list[str], tasks: list[str] | None = None) -> pd.DataFrame:
    """The average over tasks, per group (Fig. 1 and 3, "Average"): the mean of the per-task means.

    ``tasks`` are the tasks to average (default: every task of ``rows``); a group that lacks some averages the
    ones it has, and says so: ``tasks`` lists what it averaged and ``complete`` is False. The standard deviation
    is over replicates (mask seed × fine-tune seed) that ran every averaged task, of each replicate's mean.
    """
    tasks = sorted(rows["task"].unique()) if tasks is None else sorted(tasks)
    rows = rows[rows["task"].isin(tasks)]
    out = []
    for key, group in rows.groupby(by, dropna=False, sort=True):
        present = sorted(group["task"].unique())
        per_task = group.groupby("task")["score"].mean()
        # each replicate's average weighs its tasks equally, as the mean does, whatever its runs per task
        replicate_task = group.groupby([*REPLICATE, "task"], dropna=False)["score"].mean().reset_index()
        per_replicate = replicate_task.groupby(REPLICATE, dropna=False).agg(score=("score", "mean"),
                                                                           tasks=("task", "nunique"))
        complete_replicates = per_replicate[per_replicate["tasks"] == len(present)]["score"]
        out.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))),
                    "mean": per_task.mean(), "std": complete_replicates.std(), "n": len(complete_replicates),
                    "tasks": ",".join(present), "complete": present == tasks})
    columns = [*by, "mean", "std", "n", "tasks", "complete"]
    return pd.DataFrame(out, columns=columns)


def info(rows: pd.DataFrame) -> pd.Series:
    """The ``info`` column parsed (search rows: ``{"search_config": …}``; fine-tunes: hparams and throughput)."""
    return rows["info"].map(lambda text: (json.loads(text) or {}) if isinstance(text, str) else {})


def mask_costs(rows: pd.DataFrame) -> pd.DataFrame:
    """Every mask a search wrote, with its pre-training cost (Fig. 5's axes) and dev losses (Fig. 1, 4).

    One row per (search, mask): ``mask_run_id, method, model, sparsity, mask_seed, mask_step, train_s,
    mlm_dev_loss, kd_dev_loss, pruning_interval``; IMP runs write one mask per 10 % of sparsity.
    """
    searches = stage(rows, "search")
    interval = info(searches).map(lambda parsed: (parsed.get("search_config") or {}).get("pruning_interval"))
    out = []
    for (_, search), p in zip(searches.iterrows(), interval):
        for mask in search["masks"] if search["masks"] is not None else []:
            out.append({"mask_run_id": search["run_id"], "method": search["method"], "model": search["model"],
                        "mask_seed": search["mask_seed"], "sparsity": mask["sparsity"], "mask_step": mask["step"],
                        "train_s": mask["train_s"], "mlm_dev_loss": mask["mlm_dev_loss"],
                        "kd_dev_loss": mask["kd_dev_loss"],
                        "pruning_interval": p if search["method"] == "imp" else None})
    columns = ["mask_run_id", "method", "model", "mask_seed", "sparsity", "mask_step", "train_s", "mlm_dev_loss",
               "kd_dev_loss", "pruning_interval"]
    numbers = {name: "float64" for name in columns[3:]}  # as the table's nullable integers read: merges match
    return pd.DataFrame(out, columns=columns).astype(numbers)


def similarity_pairs(rows: pd.DataFrame) -> pd.DataFrame:
    """Every compared pair of masks of the similarity trials (§4.2.4), one row each, with the ``trial``'s run id,
    ``model`` and ``sparsity``."""
    trials = stage(rows, "similarity")
    out = [{"trial": trial["run_id"], "model": trial["model"], "sparsity": trial["sparsity"], **pair}
           for _, trial in trials.iterrows() for pair in (trial["pairs"] if trial["pairs"] is not None else [])]
    columns = ["trial", "model", "sparsity", *[f"{side}_{key}" for side in "ab"
                                      for key in ("run_id", "method", "seed", "step", "hash")], "similarity"]
    numbers = {"sparsity": "float64", "a_seed": "float64", "a_step": "float64", "b_seed": "float64",
               "b_step": "float64", "similarity": "float64"}
    return pd.DataFrame(out, columns=columns).astype(numbers)
