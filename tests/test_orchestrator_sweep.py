"""A sweep on real Ray, a real MLflow store and real Parquet files, with the tiny BERT: rerun, extension,
driver kill, Ctrl-C and losing a node mid-sweep; searches as Ray Train jobs that survive a killed worker or driver
and run on two workers."""

from __future__ import annotations

import io
import json
import re
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from orchestrator import results
from orchestrator.grid import Grid
from orchestrator.storage import Storage
from orchestrator.tracking import EXPERIMENT, PARENT_TAG, RUN_ID_TAG, SWEEP_TAG

pytestmark = pytest.mark.slow  # every test starts Ray or a driver subprocess

DRIVER = Path(__file__).with_name("sweep_driver.py")
ROOT = DRIVER.parent.parent


def attempts(storage: Path) -> Counter:
    """Executions per run id, from the line each trial attempt appends."""
    return Counter({p.parent.name: len(p.read_text().splitlines())
                    for p in (storage / "runs").glob("*/attempts.jsonl")})


def mlflow_runs(storage: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=10_000)
    parents = [r for r in runs if SWEEP_TAG in r.data.tags]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    return parents, children


def assert_table_matches(storage: Path, plan) -> None:
    table = results.read(str(storage))
    ids = table.column("run_id").to_pylist()
    assert Counter(ids) == Counter(set(plan.searches) | set(plan.finetunes)), "each planned run id exactly once"


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2,
             log_to_driver=False)
    yield ray
    ray.shutdown()


def test_sweep_runs_every_trial_once_then_resumes_and_extends(ray_session, tmp_path, tiny_bert_dir):
    from orchestrator.sweep import run_sweep
    from orchestrator.grid import Grid

    def grid(seeds):
        return Grid(models=(str(tiny_bert_dir),), methods=("omp", "rand", "imp", "tamt-mlm", "tamt-kd"),
                    sparsities=(0.2,), mask_seeds=(1,), finetune_seeds=seeds, tasks=("stsb",),
                    train_sizes=(32,), search={"pruning_interval": 1, "steps": 2, "batch_size": 2, "block_size": 32},
                    finetune={"epochs": 1, "eval_every": 2, "batch_size": 8}, dev_loss_batches=1)

    storage = tmp_path / "runs"
    plan = grid((1,)).plan()
    assert len(plan.searches) == 5 and len(plan.finetunes) == 6
    report = run_sweep(plan, name="main", storage=Storage.at(storage), progress_every_s=1.0)
    assert report.complete and report.succeeded == set(plan.searches) | set(plan.finetunes)
    assert_table_matches(storage, plan)
    assert set(attempts(storage).values()) == {1}

    table = results.read_frame(str(storage)).set_index("run_id")
    searches, finetunes = table[table.stage == "search"], table[table.stage == "finetune"]
    assert sorted(searches.method) == ["imp", "omp", "rand", "tamt-kd", "tamt-mlm"]
    imp = searches[searches.method == "imp"].iloc[0]
    assert [m["sparsity"] for m in imp.masks] == [0.1, 0.2] and imp.mask_step == 1
    assert searches.mlm_dev_loss.notna().all() and searches.kd_dev_loss.notna().all()
    for _run_id, row in finetunes.iterrows():
        assert row.best_score == max(e["metrics"][row.select_metric] for e in row.curve)
        assert row.select_metric == "pearson" and row.task == "stsb"
        if row.method == "full":
            assert pd.isna(row.mask_run_id) and row.sparsity == 0.0
        else:  # the fine-tune used the mask its search wrote
            search = searches.loc[row.mask_run_id]
            assert search.method == row.method and row.mask_hash == search.mask_hash
            assert (storage / "runs" / row.mask_run_id / row.mask_file).is_file()
    parents, children = mlflow_runs(storage)
    assert len(parents) == 1 and Counter(c.data.tags[RUN_ID_TAG] for c in children) == Counter(table.index)
    child = next(c for c in children if c.data.tags[RUN_ID_TAG] == finetunes.index[0])
    assert child.info.status == "FINISHED" and child.data.params["config.task"] == finetunes.iloc[0].task

    # The same script again: nothing runs.
    before = attempts(storage)
    again = run_sweep(plan, name="main", storage=Storage.at(storage))
    assert again.skipped == len(plan) and not again.succeeded and attempts(storage) == before

    # One more fine-tune seed: only the new cells run; MLflow gains exactly their children.
    extended = grid((1, 2)).plan()
    new = (set(extended.searches) | set(extended.finetunes)) - (set(plan.searches) | set(plan.finetunes))
    assert len(new) == 6
    report = run_sweep(extended, name="main", storage=Storage.at(storage))
    assert report.succeeded == new and report.skipped == len(plan)
    after = attempts(storage)
    assert {k: v for k, v in after.items() if k in before} == before and set(after) - set(before) == new
    assert_table_matches(storage, extended)
    parents, children = mlflow_runs(storage)
    assert len(parents) == 1 and len(children) == len(extended)
    assert len({c.data.tags[RUN_ID_TAG] for c in children}) == len(children)


def test_a_sweep_leaves_its_plan_heartbeat_and_failures_for_status(ray_session, tmp_path, tiny_bert_dir,
                                                                   monkeypatch):
    """What ``python -m sweeps status`` reads is written by a real sweep: its plan, the driver's end, the error of
    a trial that failed for good (its fine-tunes blocked); a rerun under a raised version names the stale rows,
    clears the failure and reruns exactly the renewed trials, while compactions merge the table under it."""
    import io
    import threading

    from orchestrator import status
    from orchestrator.sweep import run_sweep
    from orchestrator.grid import Grid
    from tamt_core.methods import METHODS

    def plan():
        return Grid(models=(str(tiny_bert_dir),), methods=("omp", "rand"), sparsities=(0.5,), mask_seeds=(1,),
                    finetune_seeds=(1, 2, 3), tasks=("rte",), full_model=False).plan()

    failing = next(run_id for run_id, spec in plan().searches.items() if spec.config.method == "rand")

    def trial(fails: str | None):
        def trainable(config):  # no model: the bookkeeping around trials is what is tested
            import ray.tune

            from orchestrator import results as table
            from orchestrator.storage import Storage as Store

            if config["run_id"] == fails:
                raise RuntimeError("the random search cannot run here")
            table.write_row(Store.at(config["settings"]["storage"]),
                            {"run_id": config["run_id"], "stage": config["spec"]["stage"]})
            ray.tune.report({"tamt_done": 1})
        return trainable

    storage = Storage.at(tmp_path / "runs")
    report = run_sweep(plan(), name="main", storage=storage, max_failures=0, trainable=trial(failing))
    blocked = {run_id for run_id, spec in plan().finetunes.items() if spec.mask.search_id == failing}
    assert set(report.failed) == {failing} and report.blocked == blocked

    def status_of(stage: str) -> tuple[str, list[str]]:
        printed = io.StringIO()
        assert status.main(["--storage", storage.uri], printed) == 0
        return printed.getvalue(), next(line for line in printed.getvalue().splitlines()
                                        if line.strip().startswith(stage + " ")).split()[1:9]

    text, search = status_of("search")
    assert search == ["2", "1", "0", "0", "1", "0", "0", "0"]  # planned, done, running, interrupted, failed, …
    assert status_of("finetune")[1] == ["6", "3", "0", "0", "0", "3", "0", "0"]
    assert "RuntimeError: the random search cannot run here" in text and "driver: ended incomplete" in text

    first_ids = plan().run_ids()
    monkeypatch.setattr(METHODS["omp"], "version", 2)
    printed = io.StringIO()
    renewed = plan()
    running = threading.Event()
    running.set()

    def compact_all_the_time():
        while running.is_set():
            results.compact(storage, min_rows=1)

    compactor = threading.Thread(target=compact_all_the_time)
    compactor.start()
    try:
        report = run_sweep(renewed, name="main", storage=storage, max_failures=0, out=printed,
                           trainable=trial(None))
    finally:
        running.clear()
        compactor.join()
    omp_trials = {run_id for run_id, spec in renewed.searches.items() if spec.config.method == "omp"}
    omp_trials |= {run_id for run_id, spec in renewed.finetunes.items() if spec.mask.search_id in omp_trials}
    assert report.complete and report.succeeded == omp_trials | {failing} | blocked
    assert "4 rows in the table are results of these trials by older code (this code has omp v2)" in printed.getvalue()
    text, search = status_of("search")
    assert search == ["2", "2", "0", "0", "0", "0", "0", "1"] and "driver: ended complete" in text
    assert not list((storage.local_root / "failures").glob("*.json"))
    table = Counter(results.read(storage).column("run_id").to_pylist())
    assert set(table.values()) == {1} and set(table) == first_ids | renewed.run_ids()  # the stale rows kept too


def test_a_plan_larger_than_a_window_runs_every_trial_once_in_dependency_order(ray_session, tmp_path,
                                                                                tiny_bert_dir, capfd, caplog):
    """Windows of three trials: a fine-tune whose search ran in an earlier window runs in a later one, and one whose
    search failed is blocked there, never handed out. Tune's result grid, which finds no per-trial metrics files
    (its loggers are off), does not warn about each trial at the end of a window."""
    from orchestrator.sweep import run_sweep
    from orchestrator.grid import Grid

    plan = Grid(models=(str(tiny_bert_dir),), methods=("omp", "rand"), sparsities=(0.5,), mask_seeds=(1,),
                finetune_seeds=(1, 2, 3), tasks=("rte",)).plan()
    failing = next(run_id for run_id, spec in plan.searches.items() if spec.config.method == "rand")

    def trainable(config):
        import time as clock

        import ray.tune

        from orchestrator import results as table
        from orchestrator.storage import Storage as Store

        if config["run_id"] == failing:
            raise RuntimeError("no random masks today")
        table.write_row(Store.at(config["settings"]["storage"]), {
            "run_id": config["run_id"], "stage": config["spec"]["stage"], "wall_s": clock.time(),
            "mask_run_id": (config["spec"].get("mask") or {}).get("search_id")})
        ray.tune.report({"tamt_done": 1})

    storage = Storage.at(tmp_path / "runs")
    printed = io.StringIO()
    report = run_sweep(plan, name="windows", storage=storage, max_failures=0, trainable=trainable, window_trials=3,
                       max_concurrent=2, out=printed)
    blocked = {run_id for run_id, spec in plan.finetunes.items() if spec.mask and spec.mask.search_id == failing}
    assert len(plan) == 11 and len(blocked) == 3
    assert set(report.failed) == {failing} and report.blocked == blocked
    assert report.succeeded == plan.run_ids() - blocked - {failing}
    rows = results.read_frame(storage).set_index("run_id")
    assert sorted(rows.index) == sorted(report.succeeded)  # once each, and nothing of the blocked ones ran
    masked = rows[rows.mask_run_id.notna()]
    assert (masked.wall_s.to_numpy() > rows.loc[masked.mask_run_id, "wall_s"].to_numpy()).all()
    experiments = sorted(p.name.rsplit("-", 1)[-1] for p in (tmp_path / "runs" / "ray").glob("windows-*"))
    assert experiments == ["w1", "w2", "w3"], experiments  # 2 searches + 1, then 3, then the 2 left unblocked
    last = printed.getvalue().splitlines()[-1]  # the progress line at the end of the last window: 7 of 11 done
    assert "in windows of 3" in printed.getvalue() and "search 1/2" in last and "finetune 6/9" in last, last
    assert "Failed to fetch metrics" not in capfd.readouterr().err + caplog.text


def _driver(tmp_path: Path, tiny_bert_dir: Path, **settings) -> tuple[list[str], Path, str]:
    """The command of a driver subprocess; the settings also rebuild its plan (``planned``)."""
    temp_dir = f"/tmp/tamt-ray-{uuid.uuid4().hex[:8]}"  # short: Ray's socket paths have a length limit
    settings = {"storage": str(tmp_path / "runs"), "model": str(tiny_bert_dir), "temp_dir": temp_dir, **settings}
    path = tmp_path / f"driver-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(settings))
    return [sys.executable, str(DRIVER), str(path)], tmp_path / "runs", temp_dir


def planned(tiny_bert_dir: Path, **settings):
    """The plan a driver with ``settings`` runs."""
    sys.path.insert(0, str(ROOT / "tests"))
    import sweep_driver

    return sweep_driver.grid({"model": str(tiny_bert_dir), **settings}).plan()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}


def _processes_under(temp_dir: str) -> list[int]:
    """PIDs of processes whose command line names the sweep's own Ray temp dir."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if temp_dir.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def _kill_leftovers(temp_dir: str) -> None:
    for pid in _processes_under(temp_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _wait_for_rows(storage: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> set[str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = {p.stem for p in (storage / "table").glob("*.parquet")}
        if len(rows) >= n:
            return rows
        assert proc.poll() is None, f"driver exited early: {proc.communicate()}"
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} rows after {timeout}s")


def run_driver(command: list[str], temp_dir: str) -> dict:
    """Run a driver subprocess to the end (then clear what its Ray left behind); returns its JSON report line."""
    try:
        done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    finally:
        _kill_leftovers(temp_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _start_and_wait(tmp_path: Path, tiny_bert_dir: Path, rows: int):
    """A one-at-a-time driver subprocess in windows of three trials, once ``rows`` trials have finished (the
    second window runs): (process, storage, temp dir, rows)."""
    command, storage, temp_dir = _driver(tmp_path, tiny_bert_dir, seeds=[1, 2, 3], tasks=["rte"],
                                         max_concurrent=1, window_trials=3)
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        return proc, storage, temp_dir, _wait_for_rows(storage, rows, proc)
    except BaseException:
        proc.kill()
        _kill_leftovers(temp_dir)
        raise


def test_driver_killed_mid_sweep_then_rerun_runs_nothing_twice(tmp_path, tiny_bert_dir):
    proc, storage, temp_dir, finished_before = _start_and_wait(tmp_path, tiny_bert_dir, 4)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        _kill_leftovers(temp_dir)  # a SIGKILLed driver leaves Ray's agents behind
    executions_before = attempts(storage)

    command, _, temp_dir = _driver(tmp_path, tiny_bert_dir, seeds=[1, 2, 3], tasks=["rte"])
    report = run_driver(command, temp_dir)
    assert report["complete"] and report["skipped"] >= len(finished_before)
    executions = attempts(storage)
    for run_id in finished_before:  # finished before the kill: never executed again
        assert executions[run_id] == 1 == executions_before[run_id]
    assert not set(report["succeeded"]) & finished_before
    plan = planned(tiny_bert_dir, seeds=[1, 2, 3], tasks=["rte"])
    assert_table_matches(storage, plan)
    parents, children = mlflow_runs(storage)
    assert len(parents) == 1
    assert Counter(c.data.tags[RUN_ID_TAG] for c in children) == Counter(set(plan.searches) | set(plan.finetunes))


def test_ctrl_c_stops_cleanly_and_keeps_finished_rows(tmp_path, tiny_bert_dir):
    proc, storage, temp_dir, rows = _start_and_wait(tmp_path, tiny_bert_dir, 3)
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
        deadline = time.time() + 30
        while _processes_under(temp_dir) and time.time() < deadline:
            time.sleep(0.5)
        leftovers = _processes_under(temp_dir)
    finally:
        if proc.poll() is None:
            proc.kill()
        _kill_leftovers(temp_dir)
    assert not leftovers, f"Ray processes of the sweep still alive after Ctrl-C: {leftovers}"
    table = results.read(str(storage))
    assert rows <= set(table.column("run_id").to_pylist())


def test_losing_a_worker_node_mid_sweep_retries_on_the_other(tmp_path, tiny_bert_dir):
    command, storage, temp_dir = _driver(tmp_path, tiny_bert_dir, seeds=[1, 2], tasks=["rte"], cluster=True,
                                         epochs=3)
    report = run_driver(command, temp_dir)
    assert report["complete"], report
    assert_table_matches(storage, planned(tiny_bert_dir, seeds=[1, 2], tasks=["rte"], epochs=3))
    interrupted = (storage / "removed-during.txt").read_text()
    runs = [json.loads(line) for line in (storage / "runs" / interrupted / "attempts.jsonl").read_text().splitlines()]
    assert len(runs) >= 2 and runs[0]["node"] != runs[-1]["node"], "the trial on the lost node ran again elsewhere"
    nodes = {json.loads(line)["node"] for p in (storage / "runs").glob("*/attempts.jsonl")
             for line in p.read_text().splitlines()}
    assert len(nodes) == 2, "trials ran on both worker nodes"


# --- searches as Ray Train jobs ----------------------------------------------------------------------------------

def _search_grid(model: Path, steps: int, **search) -> Grid:
    return Grid(models=(str(model),), methods=("tamt-mlm",), sparsities=(0.5,), mask_seeds=(1,), finetune_seeds=(1,),
                tasks=("rte",), train_sizes=(32,), full_model=False,
                search={"steps": steps, "batch_size": 2, "block_size": 32, "lr": 1e-2, **search},
                finetune={"epochs": 1, "eval_every": 2, "batch_size": 8}, dev_loss_batches=0)


def _logged_steps(storage: Path, run_id: str) -> list[int]:
    """Every step a search logged, attempt after attempt (the log is appended; a resumed attempt repeats steps)."""
    return [json.loads(line)["step"] for line in (storage / "runs" / run_id / "masks" / "log.jsonl").read_text()
            .splitlines()]


def _checkpointed(storage: Path, run_id: str, step: int) -> bool:
    """The search has logged ``step`` and Ray Train holds a checkpoint of it."""
    log = storage / "runs" / run_id / "masks" / "log.jsonl"
    return (log.exists() and any(s >= step for s in _logged_steps(storage, run_id))
            and any((storage / "ray" / f"search-{run_id}").glob("checkpoint-*")))


def test_a_search_whose_worker_is_killed_resumes_from_its_checkpoint(ray_session, tmp_path, tiny_bert_dir):
    """SIGKILL the Train worker of a TAMT search mid-run: Train restarts it, it resumes from the last checkpoint,
    the fine-tune of its mask runs after it, and the table has each run id once."""
    import threading

    from orchestrator.sweep import run_sweep

    plan = _search_grid(tiny_bert_dir, steps=120).plan()
    (search_id,) = plan.searches
    storage = tmp_path / "runs"
    killed: dict[str, int] = {}

    def kill_the_worker() -> None:
        deadline = time.time() + 180
        while time.time() < deadline and not _checkpointed(storage, search_id, 40):
            time.sleep(0.02)
        attempt = json.loads((storage / "runs" / search_id / "attempts.jsonl").read_text().splitlines()[-1])
        os.kill(attempt["pid"], signal.SIGKILL)
        killed.update(pid=attempt["pid"], step=_logged_steps(storage, search_id)[-1])

    threading.Thread(target=kill_the_worker, daemon=True).start()
    report = run_sweep(plan, name="worker-kill", storage=Storage.at(storage), checkpoint_every_s=0.0,
                       progress_every_s=5.0)
    assert report.complete and killed, report
    assert_table_matches(storage, plan)
    pids = [json.loads(line)["pid"] for line in (storage / "runs" / search_id / "attempts.jsonl").read_text()
            .splitlines()]
    assert len(pids) == 2 and pids[0] == killed["pid"] != pids[1], "one restart, in a new worker process"
    steps = _logged_steps(storage, search_id)
    restart = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    assert 10 < steps[restart] <= killed["step"] + 10, "the restart resumed from a checkpoint, not from step 0"
    assert len(steps) * 10 < 1.5 * 120, f"steps executed in total: about {len(steps) * 10} of 120"
    table = results.read_frame(str(storage)).set_index("run_id")
    finetune = table[table.stage == "finetune"].iloc[0]
    assert finetune.mask_run_id == search_id and finetune.mask_hash == table.loc[search_id].mask_hash


def test_driver_killed_while_a_search_runs_then_rerun_continues_the_search(tmp_path, tiny_bert_dir):
    search = {"steps": 120, "batch_size": 2, "block_size": 32, "lr": 1e-2}
    settings = dict(methods=["tamt-mlm"], search=search, seeds=[1], tasks=[], full_model=False)
    command, storage, temp_dir = _driver(tmp_path, tiny_bert_dir, **settings)
    (search_id,) = planned(tiny_bert_dir, **settings).searches
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not _checkpointed(storage, search_id, 40):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        _kill_leftovers(temp_dir)
    before = _logged_steps(storage, search_id)

    command, _, temp_dir = _driver(tmp_path, tiny_bert_dir, **settings)
    report = run_driver(command, temp_dir)
    assert report["complete"], report
    steps = _logged_steps(storage, search_id)
    rerun = steps[len(before):]
    assert rerun and rerun[0] > 10, f"the rerun logged from step {rerun[0]}: it did not start over"
    assert rerun[-1] == 120 and steps.count(10) == 1
    assert_table_matches(storage, planned(tiny_bert_dir, **settings))


def test_a_two_worker_search_writes_the_one_worker_masks(ray_session, tmp_path, tiny_bert_without_dropout_dir):
    """--workers-per-search 2 (gloo on CPUs) splits each global batch of 4 over two workers. With dropout off, the
    one thing each worker draws on its own, the masks are the one-worker search's, measured equal to the bit
    (similarity 1.0, equal content hashes); docs/orchestrator.md gives the effect of dropout."""
    from orchestrator.resources import Resources
    from orchestrator.sweep import run_sweep
    from tamt_core.masks import load_mask, similarity

    grid = _search_grid(tiny_bert_without_dropout_dir, steps=20, save_steps=(10,), batch_size=4)
    plan = replace(grid, tasks=()).plan()
    (search_id,) = plan.searches
    rows = {}
    for workers in (1, 2):
        storage = tmp_path / f"workers-{workers}"
        report = run_sweep(plan, name=f"workers-{workers}", storage=Storage.at(storage),
                           resources=Resources(workers_per_search=workers), progress_every_s=5.0)
        assert report.complete, report
        rows[workers] = results.read_row(Storage.at(storage), search_id)
    one, two = ([m["file"] for m in rows[w]["masks"]] for w in (1, 2))
    assert one == two == [f"masks/tamt-mlm_s0.50_seed1_step{step}.safetensors" for step in (10, 20)]
    for entry_one, entry_two in zip(rows[1]["masks"], rows[2]["masks"]):
        masks = [load_mask(tmp_path / f"workers-{w}" / "runs" / search_id / e["file"])
                 for w, e in ((1, entry_one), (2, entry_two))]
        assert similarity(*masks) == 1.0 and entry_one["mask_hash"] == entry_two["mask_hash"]


def test_sigterm_checkpoints_the_running_search_and_the_rerun_resumes_it(tmp_path, tiny_bert_dir):
    """SIGTERM to the driver mid-search (a time limit, a preemption, ``scancel --signal=TERM --batch``): the search
    checkpoints at its next sync point, the driver exits 143 well within the grace period, and the rerun resumes the
    search from that checkpoint and runs every trial exactly once."""
    search = {"steps": 400, "batch_size": 2, "block_size": 32, "lr": 1e-2}
    settings = dict(methods=["tamt-mlm"], search=search, seeds=[1], tasks=["rte"], full_model=False,
                    checkpoint_every_s=3600.0, stop_grace_s=90.0)
    command, storage, temp_dir = _driver(tmp_path, tiny_bert_dir, **settings)
    plan = planned(tiny_bert_dir, **settings)
    (search_id,) = plan.searches
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        log = storage / "runs" / search_id / "masks" / "log.jsonl"
        while not (log.exists() and _logged_steps(storage, search_id)[-1:] >= [30]):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - signalled
    finally:
        _kill_leftovers(temp_dir)
    assert proc.returncode == 143, err[-3000:]
    assert took < 90.0, f"the driver took {took:.0f} s to stop"
    report = json.loads(out.strip().splitlines()[-1])
    assert report["signalled"] and report["cut_off"] == 0 and not report["failed"], report
    stopped_at = _logged_steps(storage, search_id)[-1]
    assert 30 <= stopped_at < 400 and any((storage / "ray" / f"search-{search_id}").glob("checkpoint-*"))
    assert not list((storage / "failures").glob("*.json")), "a stopped trial is not a failed one"
    print(f"SIGTERM to exit: {took:.1f} s")

    command, _, temp_dir = _driver(tmp_path, tiny_bert_dir, **settings)
    report = run_driver(command, temp_dir)
    assert report["complete"], report
    steps = _logged_steps(storage, search_id)
    assert steps == sorted(set(steps)) and steps[-1] == 400, "the rerun resumed at the checkpoint: no step twice"
    assert_table_matches(storage, plan)
    assert attempts(storage)[search_id] == 2 and all(count == 1 for run_id, count in attempts(storage).items()
                                                     if run_id != search_id)


@pytest.mark.parametrize("hung, complete", [(1, True), (2, False)], ids=["retried", "failed-stalled"])
def test_a_trial_without_progress_is_stopped_and_retried_then_failed_as_stalled(tmp_path, tiny_bert_dir, hung,
                                                                                 complete):
    """A trial that hangs without progress (the driver's test hook: its first attempts sleep) is stopped by the
    watchdog after its stall limit and retried; once its retries are spent it fails with the reason "stalled",
    which ``status`` shows, and the trials that wait for it are blocked."""
    settings = dict(methods=["omp"], seeds=[1], tasks=["rte"], full_model=False, stall_limit_s=8.0,
                    max_failures=1, blocked_attempts=hung)
    command, storage, temp_dir = _driver(tmp_path, tiny_bert_dir, **settings)
    plan = planned(tiny_bert_dir, **settings)
    (search_id,) = plan.searches
    started = time.monotonic()
    try:
        done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    finally:
        _kill_leftovers(temp_dir)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["complete"] is complete, report
    tries = (storage / "hung" / search_id).read_text().splitlines()
    assert len(tries) == 2, "one retry after the stall"
    assert time.monotonic() - started < 240
    if complete:
        assert_table_matches(storage, plan)
        return
    assert search_id in report["failed"] and len(plan.finetunes) == 1
    failure = json.loads((storage / "failures" / f"{search_id}.json").read_text())
    assert failure["error"].splitlines()[-1].startswith("stalled: no progress for"), failure["error"][-300:]
    status = subprocess.run([sys.executable, "-m", "sweeps", "status", "--storage", str(storage)], env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert "stalled: no progress for" in status.stdout, status.stdout
    assert re.search(r"finetune +1 +0 +0 +0 +0 +1 ", status.stdout), "the fine-tune of its mask is blocked"
