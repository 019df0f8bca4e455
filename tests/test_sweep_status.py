"""``python -m sweeps status`` and stale rows: a store with done, failed, blocked, running and stale trials, read
back from the storage alone; the analysis leaves stale rows out unless asked."""

from __future__ import annotations

import io
import json
import re
import time

import pandas as pd
import pytest

from analysis import figures, table
from orchestrator import ledger, results, status
from orchestrator.sweep import plan_record, stale_rows
from orchestrator.grid import Grid
from orchestrator.provenance import provenance
from orchestrator.specs import lineage
from orchestrator.storage import Storage
from tamt_core.methods import METHODS
from tamt_core import ids

ERROR = ("Traceback (most recent call last):\n  File \"trial.py\", line 1, in execute\n"
         "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")


def _plan():
    # 3 searches (OMP, random, TAMT-MLM at 50 %) → one RTE fine-tune each, and the full model's: 7 trials.
    return Grid(models=("m",), methods=("omp", "rand", "tamt-mlm"), sparsities=(0.5,), mask_seeds=(1,),
                finetune_seeds=(1,), tasks=("rte",)).plan()


def _write(storage: Storage, spec, search_rows=(), **values) -> dict:
    """A row as a trial writes it (its lineage and provenance included), with made-up values."""
    versions, cell = lineage(spec, {row["run_id"]: row for row in search_rows})
    row = {"run_id": spec.run_id, "stage": spec.stage, "cell_id": cell, "algorithm_versions": versions,
           "versions": provenance(spec.algorithm, source={}), "model": "m", **values}
    results.write_row(storage, row)
    return row


def _by_method(plan):
    searches = {spec.config.method: spec for spec in plan.searches.values()}
    finetunes = {plan.method_of(spec): spec for spec in plan.finetunes.values()}
    return searches, finetunes


@pytest.fixture()
def store(tmp_path, monkeypatch):
    """TAMT-MLM's search and fine-tune done under version 1, then TAMT-MLM raised to 2 and the sweep planned
    again: OMP and the full model done, random failed (its fine-tune blocked), TAMT-MLM's search running."""
    storage = Storage.at(tmp_path / "runs")
    storage.prepare()
    searches, finetunes = _by_method(_plan())
    old_search = _write(storage, searches["tamt-mlm"], method="tamt-mlm", sparsity=0.5, mask_seed=1)
    old_finetune = _write(storage, finetunes["tamt-mlm"], [old_search], method="tamt-mlm", sparsity=0.5,
                          mask_seed=1, mask_run_id=old_search["run_id"], task="rte", finetune_seed=1,
                          select_metric="accuracy", best_score=60.0)
    monkeypatch.setattr(METHODS["tamt-mlm"], "version", 2)
    plan = _plan()
    searches, finetunes = _by_method(plan)
    omp = _write(storage, searches["omp"], method="omp", sparsity=0.5, mask_seed=1)
    _write(storage, finetunes["omp"], [omp], method="omp", sparsity=0.5, mask_seed=1, mask_run_id=omp["run_id"],
           task="rte", finetune_seed=1,
                          select_metric="accuracy", best_score=65.0)
    _write(storage, finetunes["full"], method="full", sparsity=0.0, task="rte", finetune_seed=1,
                          select_metric="accuracy", best_score=70.0)
    ledger.write_plan(storage, "main_results", plan_record(plan), {"tamt": "0.1.0"}, ids.algorithm_versions())
    ledger.record_failure(storage, searches["rand"].run_id, sweep="main_results", stage="search",
                          label="search rand s0.5 seed1", error=ERROR)
    ledger.write_heartbeat(storage, "main_results", time.time() - 60, [searches["tamt-mlm"].run_id])
    return storage, plan, old_search, old_finetune


def _counts(printed: str, stage: str) -> dict[str, float]:
    line = next(line for line in printed.splitlines() if line.strip().startswith(stage + " "))
    numbers = line.split()[1:]
    names = ["planned", *status.STATES, "stale", "gpu_h_done", "gpu_h_left"]
    return dict(zip(names, map(float, numbers)))


def test_status_counts_every_state_and_keeps_the_error_of_a_failed_trial(store):
    storage, plan, _old_search, _old_finetune = store
    printed = io.StringIO()
    assert status.main(["--storage", storage.uri], printed) == 0
    text = printed.getvalue()
    assert "1 sweep, 5 rows in the results table" in text
    assert _counts(text, "search") == pytest.approx({
        "planned": 3, "done": 1, "running": 1, "interrupted": 0, "failed": 1, "blocked": 0, "not started": 0,
        "stale": 1, **_hours(plan, "search")}, abs=0.05)
    assert _counts(text, "finetune") == pytest.approx({
        "planned": 4, "done": 2, "running": 0, "interrupted": 0, "failed": 0, "blocked": 1, "not started": 1,
        "stale": 1, **_hours(plan, "finetune")}, abs=0.05)
    assert _counts(text, "total")["planned"] == 7 and _counts(text, "total")["stale"] == 2
    rand = next(spec for spec in plan.searches.values() if spec.config.method == "rand")
    assert (f"search rand s0.5 seed1 [{rand.run_id}]: torch.OutOfMemoryError: CUDA out of memory. Tried to "
            "allocate 2.00 GiB") in text
    assert "driver: running on" in text and "stale: 2 rows" in text
    failure = json.loads((storage.local_root / "failures" / f"{rand.run_id}.json").read_text())
    assert failure["error"] == ERROR and failure["sweep"] == "main_results"


def _hours(plan, stage: str) -> dict[str, float]:
    """GPU-hours done and left of a stage by the estimate table, for the rows the fixture wrote."""
    record = [t for t in plan_record(plan) if t["stage"] == stage]
    done = {"omp", "full"}
    return {"gpu_h_done": sum(t["gpu_s"] for t in record if t["method"] in done) / 3600,
            "gpu_h_left": sum(t["gpu_s"] for t in record if t["method"] not in done) / 3600}


def test_a_silent_driver_turns_running_trials_into_interrupted_ones(store):
    storage, plan, *_ = store
    tamt = next(spec for spec in plan.searches.values() if spec.config.method == "tamt-mlm")
    beat = json.loads((storage.local_root / "sweeps" / "main_results.driver.json").read_text())
    beat["beat_at"] -= 600
    (storage.local_root / "sweeps" / "main_results.driver.json").write_text(json.dumps(beat))
    printed = io.StringIO()
    status.main(["--storage", storage.uri], printed)
    counts = _counts(printed.getvalue(), "search")
    assert (counts["running"], counts["interrupted"]) == (0, 1), tamt.run_id
    assert "without ending: killed, or its machine lost" in printed.getvalue()
    ledger.write_heartbeat(storage, "main_results", time.time(), [], ended="complete")
    printed = io.StringIO()
    status.main(["--storage", storage.uri], printed)
    assert _counts(printed.getvalue(), "search")["not started"] == 1 and "driver: ended complete" in printed.getvalue()


def test_a_raised_version_finds_the_rows_of_older_code_and_only_those(store):
    storage, plan, old_search, old_finetune = store
    stale = stale_rows(plan, results.finished_run_ids(storage))
    searches, finetunes = _by_method(plan)
    assert stale == {old_search["run_id"]: searches["tamt-mlm"].run_id,
                     old_finetune["run_id"]: finetunes["tamt-mlm"].run_id}
    # The renewed trials name the same cells as the old rows: the analysis can pair them without this code.
    new_search = _write(storage, searches["tamt-mlm"], method="tamt-mlm", sparsity=0.5, mask_seed=1)
    assert new_search["cell_id"] == old_search["cell_id"] == old_search["run_id"]
    assert new_search["algorithm_versions"] == {"tamt-mlm": 2} and old_search["algorithm_versions"] == {"tamt-mlm": 1}
    new_finetune = _write(storage, finetunes["tamt-mlm"], [new_search], method="tamt-mlm", sparsity=0.5, mask_seed=1,
                          mask_run_id=new_search["run_id"], task="rte", finetune_seed=1,
                          select_metric="accuracy", best_score=66.0)
    assert new_finetune["cell_id"] == old_finetune["run_id"]
    assert new_finetune["algorithm_versions"] == {"finetune": 1, "tamt-mlm": 2}


def test_the_analysis_uses_the_newest_row_of_each_cell_and_says_what_it_left_out(store, tmp_path):
    storage, plan, old_search, old_finetune = store
    searches, finetunes = _by_method(plan)
    new_search = _write(storage, searches["tamt-mlm"], method="tamt-mlm", sparsity=0.5, mask_seed=1)
    new_finetune = _write(storage, finetunes["tamt-mlm"], [new_search], method="tamt-mlm", sparsity=0.5,
                          mask_seed=1, mask_run_id=new_search["run_id"], task="rte", finetune_seed=1,
                          select_metric="accuracy", best_score=66.0)
    rows = table.load(storage.uri)
    current, stale = table.newest(rows)
    assert set(stale["run_id"]) == {old_search["run_id"], old_finetune["run_id"]}
    assert set(current["run_id"]) == set(rows["run_id"]) - set(stale["run_id"])
    assert table.describe_stale(stale) == ["1 finetune rows of tamt-mlm (finetune v1, tamt-mlm v1)",
                                           "1 search rows of tamt-mlm (tamt-mlm v1)"]
    assert new_finetune["run_id"] in set(current["run_id"])

    printed = io.StringIO()
    assert figures.main(["--runs", storage.uri, "--out", str(tmp_path / "figures")], printed) == 0
    assert "[tamt] 5 rows from" in printed.getvalue()
    assert ("2 stale rows, of trials that newer code ran again, left out (--include-stale keeps them)"
            in printed.getvalue())
    page = (tmp_path / "figures" / "report.html").read_text()
    assert "<h2>Stale rows</h2>" in page and "left out of" in page

    def tamt_rte(out: str) -> pd.Series:
        cells = pd.read_csv(tmp_path / out / "results.csv")
        return cells[(cells["method"] == "tamt-mlm") & (cells["task"] == "rte")].iloc[0]

    assert (tamt_rte("figures")["mean"], tamt_rte("figures")["n"]) == (66.0, 1)  # the stale 60.0 is left out
    printed = io.StringIO()
    figures.main(["--runs", storage.uri, "--out", str(tmp_path / "with"), "--include-stale"], printed)
    assert "kept (--include-stale)" in printed.getvalue() and "[tamt] 7 rows from" in printed.getvalue()


def test_rows_of_the_same_cell_that_no_version_orders_are_both_kept():
    rows = pd.DataFrame({"run_id": ["a", "b", "c"], "cell_id": ["x", "x", None], "stage": "search",
                         "method": "tamt-kd",
                         "algorithm_versions": [{"tamt-kd": 2, "finetune": 1}, {"tamt-kd": 1, "finetune": 2}, None]})
    current, stale = table.newest(rows)
    assert list(current["run_id"]) == ["a", "b", "c"] and stale.empty


def test_status_refuses_a_place_that_is_no_store_and_an_unknown_sweep(tmp_path, store, capsys):
    assert status.main(["--storage", str(tmp_path / "nowhere")]) == 2
    assert "no tamt store at" in capsys.readouterr().err
    storage = store[0]
    assert status.main(["--storage", storage.uri, "--sweep", "low_data"]) == 2
    assert re.search(r"no sweep named low_data .* it has: main_results", capsys.readouterr().err)


def test_status_reads_an_object_store_uri(store):
    storage = store[0]
    printed = io.StringIO()
    assert status.main(["--storage", f"file://{storage.local_root}"], printed) == 0
    assert _counts(printed.getvalue(), "total")["planned"] == 7


def test_trials_running_when_the_driver_was_interrupted_count_as_interrupted(store):
    """A Ctrl-C or SIGTERM leaves the running trials in the last heartbeat: ``status`` shows them as interrupted,
    not as not started; a sweep that ended complete has none."""
    storage, plan, *_ = store
    tamt = next(spec for spec in plan.searches.values() if spec.config.method == "tamt-mlm")
    ledger.write_heartbeat(storage, "main_results", time.time() - 60, [tamt.run_id], ended="interrupted")
    printed = io.StringIO()
    status.main(["--storage", storage.uri], printed)
    counts = _counts(printed.getvalue(), "search")
    assert (counts["running"], counts["interrupted"], counts["not started"]) == (0, 1, 0)


def test_the_heartbeat_counts_running_trials_as_the_progress_line_does(tmp_path):
    """SweepLedger and LiveProgress see the same trials start and end; the heartbeat follows within its change
    period, and an interrupted end keeps the running trials while a complete one clears them."""
    from types import SimpleNamespace

    from orchestrator.callbacks import SweepLedger

    storage = Storage.at(tmp_path / "runs")
    storage.prepare()
    sweep_ledger = SweepLedger(storage, "s", time.time(), {})
    trials = [SimpleNamespace(trial_id=f"t{i}", config={"run_id": f"r{i}"}) for i in range(3)]
    for trial in trials:
        sweep_ledger.on_trial_start(0, trials, trial)
    sweep_ledger.on_trial_complete(0, trials, trials[0])
    sweep_ledger.last_beat -= SweepLedger.CHANGE_EVERY_S
    sweep_ledger.on_step_end(0, trials)
    assert ledger.read_heartbeat(storage, "s")["running"] == ["r1", "r2"]
    sweep_ledger.on_trial_complete(0, trials, trials[1])
    sweep_ledger.on_step_end(0, trials)  # within the change period: not yet written
    assert ledger.read_heartbeat(storage, "s")["running"] == ["r1", "r2"]
    sweep_ledger.beat(ended="interrupted")
    assert ledger.read_heartbeat(storage, "s")["running"] == ["r2"]
    sweep_ledger.beat(ended="complete")
    assert ledger.read_heartbeat(storage, "s")["running"] == []


def test_a_sweep_on_cpus_is_costed_in_cpu_minutes(store):
    """A plan on the built-in model without GPUs is costed by the CPU table, and ``status`` prints its unit."""
    from orchestrator.estimate import CPU_BUILTIN, table_for
    from orchestrator.sweep import plan_record
    from sweeps.common import smoke_grid

    smoke = smoke_grid(methods=("omp",), sparsities=(0.5,), tasks=("sst2",)).plan()
    assert table_for(smoke, on_gpu=False) is CPU_BUILTIN
    assert table_for(smoke, on_gpu=True).unit == "GPU-h" and table_for(_plan(), on_gpu=False).unit == "GPU-h"
    storage = store[0]
    ledger.write_plan(storage, "smoke", plan_record(smoke, CPU_BUILTIN), {}, ids.algorithm_versions(), "CPU-min",
                      60.0)
    printed = io.StringIO()
    status.main(["--storage", storage.uri, "--sweep", "smoke"], printed)
    text = printed.getvalue()
    assert "CPU-min done" in text and "GPU-h" not in text
    left = _counts(text, "total")["gpu_h_left"]
    assert left == pytest.approx(sum(t["gpu_s"] for t in plan_record(smoke, CPU_BUILTIN)) / 60, abs=0.05)
