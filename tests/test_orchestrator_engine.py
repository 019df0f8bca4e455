"""The pieces of the engine without Ray: the DAG searcher, the results rows, the MLflow tracker's dedupe."""

from __future__ import annotations

import logging

import math

import pytest
from conftest import write_rte_scores
from ray.tune.search import Searcher

from orchestrator import results
from orchestrator.callbacks import Progress
from orchestrator.scheduler import PlanSearcher
from orchestrator.grid import Grid
from orchestrator.storage import Storage
from orchestrator.tracking import MlflowTracker
from orchestrator.trial import TrialSettings


@pytest.fixture()
def plan():
    # 2 searches (OMP 0.5, rand 0.5 seed 1) → 2 fine-tunes each; plus 2 full-model fine-tunes.
    return Grid(models=("m",), methods=("omp", "rand"), sparsities=(0.5,), mask_seeds=(1,), finetune_seeds=(1, 2),
                tasks=("rte",)).plan()


def drain(searcher: PlanSearcher, start: int = 0) -> list[str]:
    """Suggest until the searcher has nothing ready; returns the run ids in order."""
    out = []
    while True:
        config = searcher.suggest(f"t{start + len(out)}")
        if not isinstance(config, dict):
            return out
        out.append(config["run_id"])


def test_searcher_gives_searches_and_free_finetunes_first_then_dependents_as_masks_appear(plan):
    searcher = PlanSearcher(plan, [*plan.searches, *plan.finetunes], TrialSettings("/tmp/x"))
    first = drain(searcher)
    omp, rand = plan.searches
    full = [r for r, s in plan.finetunes.items() if s.mask is None]
    assert first == [omp, rand, *full]  # searches first; full-model fine-tunes wait for nothing
    assert searcher.suggest("t-wait") is None  # the masked fine-tunes wait for their searches: not finished
    searcher.on_trial_complete("t1", {})  # rand's search finishes → its two fine-tunes, and only those, are ready
    released = drain(searcher, 100)
    assert sorted(released) == sorted(r for r, s in plan.finetunes.items() if s.mask and s.mask.search_id == rand)
    assert searcher.suggest("t-wait2") is None
    searcher.on_trial_complete("t0", {})
    assert len(drain(searcher, 200)) == 2
    assert searcher.suggest("t-end") == Searcher.FINISHED


def test_failed_search_blocks_only_its_finetunes(plan):
    searcher = PlanSearcher(plan, [*plan.searches, *plan.finetunes], TrialSettings("/tmp/x"))
    drain(searcher)
    omp = next(iter(plan.searches))
    searcher.on_trial_complete("t0", error=True)
    assert searcher.failed == {omp}
    assert searcher.blocked == {r for r, s in plan.finetunes.items() if s.mask and s.mask.search_id == omp}
    searcher.on_trial_complete("t1", {})
    assert len(drain(searcher, 10)) == 2 and searcher.suggest("t-end") == Searcher.FINISHED


def test_finished_search_leaves_its_finetunes_ready_at_once(plan):
    omp = next(iter(plan.searches))
    todo = [r for r in [*plan.searches, *plan.finetunes] if r != omp]  # the OMP search finished in an earlier run
    searcher = PlanSearcher(plan, todo, TrialSettings("/tmp/x"))
    ready = drain(searcher)
    assert {r for r, s in plan.finetunes.items() if s.mask and s.mask.search_id == omp} <= set(ready)


def test_progress_line_counts_and_eta(plan):
    searcher = PlanSearcher(plan, [*plan.searches, *plan.finetunes], TrialSettings("/tmp/x"))
    drain(searcher)
    searcher.on_trial_complete("t0", {})

    class Trial:
        def __init__(self, status):
            self.status = status

    progress = Progress(searcher, total=len(plan), skipped=3)
    line = progress.line([Trial("RUNNING"), Trial("TERMINATED"), Trial("PENDING")])
    assert f"done 1/{len(plan)} (+3 already done)" in line and "running 1" in line
    assert f"pending {1 + searcher.unsuggested}" in line and "ETA" in line and "ETA —" not in line


def test_results_row_round_trip_and_overwrite_keeps_one_row(tmp_path):
    storage = Storage.at(tmp_path)
    storage.prepare()
    row = {"run_id": "abc", "stage": "finetune", "task": "rte", "best_score": 71.5, "accuracy": 71.5,
           "curve": [{"step": 50, "epoch": 0.5, "train_loss": 0.7, "metrics": {"accuracy": 60.0}},
                     {"step": 100, "epoch": 1.0, "train_loss": 0.6, "metrics": {"accuracy": 71.5}}],
           "versions": {"torch": "2.13.0"}, "spec": {"stage": "finetune"}}
    results.write_row(storage, row)
    results.write_row(storage, row)  # a retry that publishes again: still one row
    frame = results.read_frame(storage)
    assert list(frame.run_id) == ["abc"] and frame.format_version[0] == 1
    assert frame.curve[0][1]["metrics"] == {"accuracy": 71.5} and frame.versions[0] == {"torch": "2.13.0"}
    assert math.isnan(frame.f1[0]) and frame.accuracy[0] == 71.5
    assert results.finished_run_ids(storage) == {"abc"}
    assert results.read_row(storage, "abc")["task"] == "rte"
    assert not list((tmp_path / "table").glob(".tmp-*")), "no temporary file is left behind"
    with pytest.raises(KeyError, match="outside the schema"):
        results.write_row(storage, {"run_id": "x", "stage": "finetune", "bogus": 1})


def test_empty_storage_reads_as_empty_table_with_schema(tmp_path):
    table = results.read(Storage.at(tmp_path))
    assert table.num_rows == 0 and table.schema == results.SCHEMA


def test_tracker_finds_its_parent_and_children_again(tmp_path, plan):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = next(iter(plan.finetunes.values()))
    first = MlflowTracker(uri, "main", {"trials": 1})
    child = first.child_for(spec)
    assert first.child_for(spec) == child
    first.finish()
    again = MlflowTracker(uri, "main", {"trials": 1})  # a rerun of the same sweep
    assert again.parent_id == first.parent_id and again.child_for(spec) == child
    other = MlflowTracker(uri, "other-sweep", {})
    assert other.parent_id != first.parent_id and other.child_for(spec) != child
    runs = first.client.search_runs([first.experiment_id])
    assert len(runs) == 4  # 2 parents, 1 child each
    assert first.client.get_run(child).data.params["config.task"] == spec.config.task
    tags = first.client.get_run(child).data.tags
    assert (tags["tamt.algorithm"], tags["tamt.algorithm_version"]) == ("finetune", "1") and tags["tamt.tamt"]


def test_a_sweep_ends_with_its_results_and_the_runs_view_of_mlflow(tmp_path, plan):
    """The end of a sweep prints the compact results table (mean ± std over seeds, with the marks) and a link
    that opens MLflow's runs table, not its GenAI overview."""
    import io

    from sweeps.common import print_results
    from orchestrator.tracking import runs_view

    storage = Storage.at(tmp_path / "runs")
    write_rte_scores(storage)
    printed = io.StringIO()
    print_results(storage, printed)
    lines = printed.getvalue().splitlines()
    assert any("Full model" in line and "91.0 ± 1.4" in line for line in lines), lines
    assert any("OMP" in line and "72.0 ± 2.8" in line for line in lines), lines

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "main", {})
    serve, page = runs_view(uri, tracker.experiment_id)
    assert serve == f"mlflow ui --backend-store-uri {uri} --port 5000"
    assert page == f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
    assert runs_view("http://tracking:5000/", "7") == (
        None, "http://tracking:5000/#/experiments/7/runs?workflowType=machine_learning")


def test_unknown_model_is_refused_before_any_trial(tmp_path):
    from orchestrator.sweep import prepare
    from orchestrator.plan import PlanError

    plan = Grid(models=(str(tmp_path / "no-such-model"),), methods=("omp",), sparsities=(0.5,), mask_seeds=(1,),
                finetune_seeds=(1,), tasks=("rte",)).plan()
    with pytest.raises(PlanError, match="does not exist"):
        prepare(plan, Storage.at(tmp_path / "runs"), None)
    assert not (tmp_path / "runs" / "runs").exists()


def test_trials_run_directly_against_object_store_storage(tmp_path, tiny_bert_dir):
    """A ``file://`` URI takes the object-store path: scratch directory, pull, push, remote rows and masks."""
    from orchestrator.trial import execute

    storage = Storage(f"file://{tmp_path / 'store'}")
    storage.prepare()
    plan = Grid(models=(str(tiny_bert_dir),), methods=("omp",), sparsities=(0.5,), mask_seeds=(1,),
                finetune_seeds=(1,), tasks=("rte",), train_sizes=(16,), full_model=False,
                finetune={"epochs": 1, "batch_size": 8, "eval_every": 1}, dev_loss_batches=1).plan()
    settings = TrialSettings(storage.uri, checkpoint_every_s=0.0)
    reported = []
    search_row = execute(next(iter(plan.searches.values())), settings, scratch_root=tmp_path / "scratch")
    finetune_row = execute(next(iter(plan.finetunes.values())), settings, reported.append,
                           scratch_root=tmp_path / "scratch")
    assert (tmp_path / "store" / "runs" / search_row["run_id"] / search_row["mask_file"]).is_file()
    assert (tmp_path / "store" / "runs" / finetune_row["run_id"] / "finetune" / "result.json").is_file()
    assert finetune_row["mask_hash"] == search_row["mask_hash"] and search_row["mlm_dev_loss"] > 0
    assert [r["step"] for r in reported] == [1, 2]
    assert results.finished_run_ids(storage) == set(plan.searches) | set(plan.finetunes)
    # Provenance: the code that computed each row (a checkout here: its commit; tamt's version; the algorithm's).
    table = results.read_frame(storage.uri).set_index("run_id")
    search_versions, finetune_versions = (table.loc[row["run_id"], "versions"] for row in (search_row, finetune_row))
    assert (search_versions["algorithm"], search_versions["algorithm_version"]) == ("omp", "1")
    assert (finetune_versions["algorithm"], finetune_versions["algorithm_version"]) == ("finetune", "1")
    assert search_versions["tamt"] and len(search_versions["git_commit"]) == 40
    assert search_versions["git_dirty"] in ("true", "false")


def test_a_similarity_waits_for_every_search_it_compares_and_is_blocked_by_any_failure():
    from orchestrator.grid import MaskSimilarity

    grid = Grid(models=("m",), methods=("omp", "rand", "imp"), sparsities=(0.5,), mask_seeds=(1,),
                finetune_seeds=(), tasks=(), full_model=False)
    plan = MaskSimilarity((grid,)).plan()
    (similarity,) = plan.measurements
    omp, rand, imp = (next(r for r, s in plan.searches.items() if s.config.method == m) for m in ("omp", "rand", "imp"))
    assert set(plan.dependencies(plan.get(similarity))) == {omp, rand, imp}

    searcher = PlanSearcher(plan, [*plan.searches, *plan.measurements], TrialSettings("/tmp/x"))
    trials = {run_id: trial for trial, run_id in zip(("t0", "t1", "t2"), drain(searcher))}
    assert set(trials) == {omp, rand, imp}
    searcher.on_trial_complete(trials[omp], {})
    searcher.on_trial_complete(trials[rand], {})
    assert drain(searcher, 3) == [] and searcher.unsuggested == 1  # still waits for IMP
    searcher.on_trial_complete(trials[imp], {})
    assert drain(searcher, 3) == [similarity]

    failing = PlanSearcher(plan, [*plan.searches, *plan.measurements], TrialSettings("/tmp/x"))
    trials = {run_id: trial for trial, run_id in zip(("t0", "t1", "t2"), drain(failing))}
    failing.on_trial_complete(trials[omp], error=True)
    failing.on_trial_complete(trials[rand], error=True)  # a second failed input blocks it once, not twice
    failing.on_trial_complete(trials[imp], {})
    assert failing.blocked == {similarity} and failing.unsuggested == 0 and drain(failing, 3) == []


def test_sweep_workers_silence_two_ray_train_messages_and_nothing_else():
    import logging

    import ray.train.v2._internal.execution.context as train_context

    from orchestrator import ray_logging

    ray_logging.worker_process_setup()
    ray_logging.worker_process_setup()  # a reused worker runs the hook again: still one filter
    cleaner = logging.getLogger(ray_logging.CLEANER_LOGGER)
    assert sum(isinstance(f, ray_logging.DropUnavailableStateApi) for f in cleaner.filters) == 1
    said = [cleaner.makeRecord(cleaner.name, logging.WARNING, __file__, 0, message, (), None) for message in (
        "Failed to query Ray Train Controller actor state. State API may be temporarily unavailable.",
        "Detected that the Ray Train controller actor (a1) is dead. Cleaning up placement group = [p1].")]
    assert [bool(cleaner.filter(record)) for record in said] == [False, True]
    assert ray_logging.train_context_logger() is train_context.logger
    assert not train_context.logger.isEnabledFor(logging.INFO) and train_context.logger.isEnabledFor(logging.WARNING)


def test_a_sweep_starts_ray_with_the_worker_logging_hook_and_keeps_the_callers_runtime_env(monkeypatch):
    import ray

    from orchestrator import ray_logging
    from orchestrator.ray_session import LOCAL_STARTUP_CONCURRENCY, connect

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **options: calls.append(options))
    assert connect(None, {"num_cpus": 2, "runtime_env": {"env_vars": {"A": "1"}}}) is True
    assert connect("10.0.0.1:6379", None) is True
    assert connect(None, None, verbose=True) is True
    hook = {"worker_process_setup_hook": ray_logging.SETUP_HOOK}
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}  # worker output stays in Ray's log files
    local = {"_system_config": {"worker_maximum_startup_concurrency": LOCAL_STARTUP_CONCURRENCY}}
    assert calls == [{"address": "local", "num_cpus": 2, "runtime_env": {**hook, "env_vars": {"A": "1"}}, **local,
                      **quiet},
                     {"address": "10.0.0.1:6379", "runtime_env": hook, **quiet},
                     {"address": "local", "runtime_env": hook, **local}]


def test_source_revision_names_the_commit_and_whether_the_tree_was_dirty(tmp_path):
    import subprocess

    from orchestrator.provenance import source_revision

    assert source_revision(tmp_path) == {}  # an installed package: no checkout
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "code.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert source_revision(tmp_path) == {"git_commit": head, "git_dirty": "false"}
    (tmp_path / "code.py").write_text("x = 2\n")
    assert source_revision(tmp_path) == {"git_commit": head, "git_dirty": "true"}
