"""The orchestrator at 100,000 trials: planning, driver memory over a long run, the results table, sweep start-up.

Parts (``--part``), each printing its figures as one JSON line:

* ``plan``: plan a grid of about 100,000 trials (three models, five methods, eight sparsities, fifteen mask seeds,
  ten fine-tuning seeds, seven tasks); time it, the driver's RSS after it, and the plan record a sweep writes for
  ``status``.
* ``driver``: ``--trials`` zero-length trials (default 20,000) through ``run_sweep`` on a local Ray, in windows of
  ``--window``; the driver's RSS is sampled every 5 s against the trials done (``--samples FILE`` keeps them). Within
  a window RSS rises as Tune's trials accumulate and falls when the window ends; the slope (KiB per trial) is fitted
  to each window's peak after the first. **Target: < 5 KiB per trial.**
* ``table``: a results table of 10,000 and of 100,000 fine-tune rows (with curves) in parts, read by
  ``orchestrator.results.read`` and ``analysis.table.load``, with the filesystem calls a read makes (on an object
  store, each is a request). **Target: 100,000 rows in under 5 s.** Also: compacting 2,000 row files.
* ``startup``: a store of 100,000 rows and an MLflow store with 20,000 child runs; the sweep's start-up work
  before Ray starts (finished run ids, stale rows, the plan record, the compaction check) and the MLflow tracker's
  start, beside what listing every child (the former start-up) costs.

    python bench/bench_scale.py --part all
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_orchestration import rss_mib  # noqa: E402  (also puts the checkout on the path, Ray quiet, hubs off)


def big_grid():
    from orchestrator.grid import Grid
    from tamt_core import hparams

    return Grid(models=("bert-base-uncased", "roberta-base", "bert-large-uncased"),
                methods=("omp", "rand", "imp", "tamt-mlm", "tamt-kd"), sparsities=hparams.SPARSITIES,
                mask_seeds=tuple(range(15)), finetune_seeds=tuple(range(10)),
                tasks=("mnli", "sst2", "cola", "stsb", "mrpc", "rte", "squad"))


def plan_part() -> dict:
    from orchestrator.sweep import plan_record, stale_rows

    before = rss_mib()
    started = time.perf_counter()
    plan = big_grid().plan()
    planned_s = time.perf_counter() - started
    after = rss_mib()
    started = time.perf_counter()
    record = plan_record(plan)
    record_s = time.perf_counter() - started
    started = time.perf_counter()
    stale = stale_rows(plan, set())
    return {"trials": len(plan), "searches": len(plan.searches), "plan_s": round(planned_s, 1),
            "rss_before_mib": round(before), "rss_after_plan_mib": round(after),
            "plan_mib": round(after - before), "plan_record_s": round(record_s, 1),
            "plan_record_json_mib": round(len(json.dumps(record)) / 2**20, 1),
            "stale_rows_s": round(time.perf_counter() - started, 2), "stale": len(stale)}


def zero_trial(config: dict) -> None:
    """A trial that does no work and publishes its row, as a real trial does."""
    import ray.tune

    from orchestrator import results
    from orchestrator.storage import Storage

    results.write_row(Storage.at(config["settings"]["storage"]), {"run_id": config["run_id"], "stage": "finetune"})
    ray.tune.report({"tamt_done": 1})


def finished_counts(samples: list[tuple[float, int, float]], trials: int) -> list[tuple[float, int, float]]:
    """Samples with the rows a listing counted turned into finished trials. A compaction in flight counts rows twice
    (its part is written before the row files it merged are deleted), but never fewer than have finished: the
    smallest count from a sample onwards is the tightest bound that finished trials, which only grow, allow."""
    done, least = [], trials
    for at, counted, rss in reversed(samples):
        least = min(least, counted)
        done.append((at, least, rss))
    return done[::-1]


def driver_part(trials: int, window: int, samples_csv: Path | None = None) -> dict:
    import pyarrow.fs as pafs
    import ray

    import tamt_table

    from orchestrator.resources import Resources
    from orchestrator.sweep import run_sweep
    from orchestrator.plan import Plan
    from orchestrator.specs import FinetuneSpec
    from orchestrator.storage import Storage
    from tamt_core.finetune import FinetuneConfig

    plan = Plan.of(FinetuneSpec(FinetuneConfig(task="rte", seed=seed)) for seed in range(trials))
    samples: list[tuple[float, int, float]] = []
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "table"

        def sample() -> None:
            if samples_csv is not None:
                samples_csv.write_text("seconds,rows_listed,rss_mib\n")
            while not stop.wait(5.0):
                found = tamt_table.listing(pafs.LocalFileSystem(), str(table))  # row files and compacted parts
                samples.append((time.perf_counter(), len(found.rows) + sum(found.parts.values()), rss_mib()))
                if samples_csv is not None:  # as it goes: a run cut short still leaves its samples
                    with samples_csv.open("a") as handle:
                        handle.write(f"{samples[-1][0] - started:.1f},{samples[-1][1]},{samples[-1][2]:.1f}\n")

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        sampler = threading.Thread(target=sample, daemon=True)
        started = time.perf_counter()
        sampler.start()
        run_sweep(plan, name="bench-scale", storage=Storage.at(tmp),
                  max_concurrent=8, resources=Resources(finetune_cpu=0.25), progress_every_s=120.0,
                  window_trials=window, trainable=zero_trial)
        wall = time.perf_counter() - started
        stop.set()
        sampler.join()
        ray.shutdown()
    samples = finished_counts(samples, trials)
    # Within a window Tune's trials accumulate, and go when it ends: a sawtooth. What must stay flat is its peaks.
    peaks = {}
    for _, done, rss in samples:
        if done > window:
            number = (done - 1) // window
            peaks[number] = max(peaks.get(number, 0.0), rss)
    slope = (np.polyfit([n * window for n in peaks], list(peaks.values()), 1)[0] * 1024 if len(peaks) >= 2
             else float("nan"))
    return {"trials": trials, "window": window, "wall_s": round(wall), "trials_per_s": round(trials / wall, 1),
            "rss_mib_at": {str(done): round(rss) for _, done, rss in samples[:: max(1, len(samples) // 12)]},
            "rss_max_mib": round(max(r for _, _, r in samples)) if samples else None,
            "window_peaks_mib": {str((n + 1) * window): round(rss) for n, rss in sorted(peaks.items())},
            "slope_kib_per_trial_of_window_peaks": round(slope, 2)}


def _rows(n: int, prefix: str) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"run_id": f"{prefix}{i:07d}", "stage": "finetune", "model": "bert-base-uncased", "method": "tamt-mlm",
             "sparsity": 0.7, "mask_seed": i % 3, "mask_step": 17000, "mask_run_id": f"s{i % 500:05d}",
             "task": "mnli", "finetune_seed": i % 3, "select_metric": "accuracy_matched",
             "best_score": float(rng.normal(80, 1)), "accuracy_matched": 80.0, "accuracy_mismatched": 80.5,
             "curve": [{"step": 500 * k, "epoch": k / 10, "train_loss": 0.5,
                        "metrics": {"accuracy_matched": 80.0, "accuracy_mismatched": 80.5}} for k in range(1, 11)],
             "versions": {"tamt": "bench", "torch": "x", "transformers": "y", "algorithm": "finetune",
                          "algorithm_version": "1"},
             "spec": {"stage": "finetune", "config": {"task": "mnli", "seed": i % 3}}, "info": {"hparams": {}},
             "cell_id": f"{prefix}{i:07d}", "algorithm_versions": {"finetune": 1, "tamt-mlm": 1}}
            for i in range(n)]


def write_parts(storage, rows: int) -> None:
    """``rows`` rows as parts of ``tamt_table.PART_ROWS``, sorted by run id in row groups, as compactions leave
    them."""
    import pyarrow as pa

    import tamt_table
    from orchestrator import results

    part_rows = tamt_table.PART_ROWS
    fs, _ = storage.filesystem()
    block = pa.concat_tables([results._row_table(row) for row in _rows(min(rows, 10_000), "r")])
    written = 0
    while written < rows:
        size = min(part_rows, rows - written)
        parts = []
        for start in range(0, size, block.num_rows):
            chunk = block.slice(0, min(block.num_rows, size - start))
            ids = pa.array([f"r{written + start + i:07d}" for i in range(chunk.num_rows)])
            parts.append(chunk.set_column(0, "run_id", ids))
        table = pa.concat_tables(parts)
        fs.create_dir(f"{storage.table_path()}/{tamt_table.PARTS}", recursive=True)
        tamt_table.write_atomically(fs, f"{storage.table_path()}/{tamt_table.PARTS}/part-{table.num_rows}-"
                                        f"{os.urandom(16).hex()}.parquet",
                                   tamt_table.parquet_bytes(table, row_group_size=tamt_table.PART_ROW_GROUP))
        written += size


def table_part() -> dict:
    import tamt_table
    from analysis import table as analysis_table
    from fs_requests import counting_filesystem
    from orchestrator import results
    from orchestrator.storage import Storage

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rows in (10_000, 100_000):
            storage = Storage.at(Path(tmp) / f"runs-{rows}")
            storage.prepare()
            write_parts(storage, rows)
            started = time.perf_counter()
            read = results.read(storage)
            read_s = time.perf_counter() - started
            started = time.perf_counter()
            frame = analysis_table.load(storage.uri)
            load_s = time.perf_counter() - started
            started = time.perf_counter()
            ids = results.finished_run_ids(storage)
            ids_s = time.perf_counter() - started
            started = time.perf_counter()
            found = [results.has_row(storage, f"r{i:07d}") for i in range(0, rows, rows // 20)]
            has_row_ms = (time.perf_counter() - started) / len(found) * 1000
            fs, handler = counting_filesystem()
            tamt_table.read(fs, storage.table_path(), results.SCHEMA)
            out[str(rows)] = {"results_read_s": round(read_s, 2), "analysis_load_s": round(load_s, 2),
                              "finished_run_ids_s": round(ids_s, 2), "has_row_ms": round(has_row_ms, 1),
                              "rows": read.num_rows, "frame_rows": len(frame), "ids": len(ids),
                              "found": sum(found), "calls_per_read": dict(handler.calls)}
        storage = Storage.at(Path(tmp) / "compaction")
        storage.prepare()
        for row in _rows(2_000, "c"):
            results.write_row(storage, row)
        started = time.perf_counter()
        done = results.compact(storage, min_rows=1)
        out["compact_2000_row_files_s"] = round(time.perf_counter() - started, 2)
        out["compacted_rows"] = done.rows
    return out


def startup_part(rows: int = 100_000, children: int = 20_000) -> dict:
    from mlflow.entities import RunStatus
    from mlflow.tracking import MlflowClient

    from orchestrator import ledger, results
    from orchestrator.compaction import Compactor
    from orchestrator.sweep import plan_record, stale_rows
    from orchestrator.plan import Plan
    from orchestrator.specs import FinetuneSpec
    from orchestrator.storage import Storage
    from orchestrator.tracking import EXPERIMENT, PARENT_TAG, RUN_ID_TAG, SWEEP_TAG, MlflowTracker
    from tamt_core.finetune import FinetuneConfig

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        storage = Storage.at(Path(tmp) / "runs")
        storage.prepare()
        write_parts(storage, rows)
        plan = Plan.of(FinetuneSpec(FinetuneConfig(task="rte", seed=seed)) for seed in range(rows))
        uri = f"sqlite:///{tmp}/mlflow.db"
        client = MlflowClient(uri)
        experiment = client.create_experiment(EXPERIMENT)
        parent = client.create_run(experiment, run_name="bench", tags={SWEEP_TAG: "bench"}).info.run_id
        started = time.perf_counter()
        for i in range(children):
            client.create_run(experiment, run_name=f"c{i}", tags={PARENT_TAG: parent, RUN_ID_TAG: f"r{i:07d}"})
        out["mlflow_children_created_s"] = round(time.perf_counter() - started)
        client.set_terminated(parent, RunStatus.to_string(RunStatus.FINISHED))

        started = time.perf_counter()
        finished = results.finished_run_ids(storage)
        stale = stale_rows(plan, finished)
        ledger.write_plan(storage, "bench", plan_record(plan), {}, {})
        Compactor(storage).compact_once()
        out["startup_before_ray_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        tracker = MlflowTracker(uri, "bench", {})
        out["tracker_start_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        child = tracker.child_for(plan.get(next(iter(plan.finetunes))))
        out["child_lookup_by_tag_s"] = round(time.perf_counter() - started, 2)
        tracker.finish()
        started = time.perf_counter()
        listed, token = 0, None
        while True:  # what the tracker's start-up did before: list every child of the sweep
            page = client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{parent}'", max_results=1000,
                                      page_token=token)
            listed += len(page)
            token = page.token
            if not token:
                break
        out["former_listing_of_children_s"] = round(time.perf_counter() - started, 1)
        out.update(rows=len(finished), stale=len(stale), children=listed, child_found=bool(child))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("plan", "driver", "table", "startup", "all"), default="all")
    parser.add_argument("--trials", type=int, default=20_000, help="zero-length trials of the driver part")
    parser.add_argument("--window", type=int, default=2_000, help="trials per Tune experiment (driver part)")
    parser.add_argument("--samples", type=Path, help="write the driver part's RSS samples to this CSV file")
    args = parser.parse_args()
    for part, run in (("plan", plan_part), ("table", table_part), ("startup", startup_part),
                      ("driver", lambda: driver_part(args.trials, args.window, args.samples))):
        if args.part in (part, "all"):
            print(json.dumps({part: run()}), flush=True)


if __name__ == "__main__":
    main()
