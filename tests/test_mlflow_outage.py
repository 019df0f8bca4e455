"""MLflow at scale and under failure: the tracker's hooks never wait for the tracking server, an outage delays the
logging and loses nothing, and a rerun finds its children by tag without listing them all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator.grid import Grid
from orchestrator.tracking import EXPERIMENT, PARENT_TAG, RUN_ID_TAG, MlflowTracker

pytestmark = pytest.mark.slow  # an MLflow server


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(directory: Path, port: int) -> subprocess.Popen:
    """An MLflow tracking server on ``port`` with its sqlite store in ``directory`` (light: one worker, no jobs)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
         "--default-artifact-root", str(directory / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return server
        except OSError:
            assert server.poll() is None, "the MLflow server exited"
            time.sleep(0.2)
    raise AssertionError("the MLflow server did not answer in 60 s")


def _stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(30)


class Trial:
    def __init__(self, number: int, spec) -> None:
        self.trial_id, self.config = f"t{number}", {"spec": spec.to_dict()}


def test_an_mlflow_outage_delays_logging_and_loses_no_child_or_metric(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the tracker retries, not the client
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    specs = list(Grid(models=("m",), methods=("omp",), sparsities=(0.5,), mask_seeds=(1,),
                      finetune_seeds=(1, 2, 3), tasks=("rte",)).plan().finetunes.values())
    trials = [Trial(number, spec) for number, spec in enumerate(specs)]
    server = _serve(tmp_path, port)
    try:
        tracker = MlflowTracker(uri, "outage", {"trials": len(trials)}, retry_s=0.2)

        def run(trial: Trial, score: float) -> None:
            tracker.on_trial_start(0, [], trial)
            for step in (1, 2):
                tracker.on_trial_result(0, [], trial, {"step": step, "accuracy": score + step, "tamt_done": 0})
            tracker.on_trial_complete(0, [], trial)

        for trial in trials[:2]:
            run(trial, 50.0)
        _stop(server)
        for trial in trials[2:]:
            run(trial, 60.0)  # the hooks return at once: they only queue
        assert tracker._queue.unfinished_tasks > 0
        time.sleep(1.0)
        server = _serve(tmp_path, port)
        assert tracker.finish() and tracker.retries > 0

        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        children = [run for run in runs if PARENT_TAG in run.data.tags]
        assert sorted(run.data.tags[RUN_ID_TAG] for run in children) == sorted(spec.run_id for spec in specs)
        assert {run.info.status for run in children} == {"FINISHED"}
        for run in children:
            history = client.get_metric_history(run.info.run_id, "accuracy")
            assert sorted(m.step for m in history) == [1, 2] and run.data.metrics["accuracy"] in (52.0, 62.0)
        parent = next(run for run in runs if PARENT_TAG not in run.data.tags)
        assert parent.info.status == "FINISHED"
        # A rerun of the sweep finds each child by its tag, without listing the experiment's runs.
        again = MlflowTracker(uri, "outage", {})
        assert again.parent_id == parent.info.run_id
        assert again.child_for(specs[0]) == next(r.info.run_id for r in children
                                                 if r.data.tags[RUN_ID_TAG] == specs[0].run_id)
        again.finish()
    finally:
        _stop(server)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
