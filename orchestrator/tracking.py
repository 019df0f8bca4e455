"""MLflow tracking from the driver: one parent run per sweep, one child run per trial, never duplicated.

Only the driver talks to MLflow, so trials on any node need no tracking credentials and an embedded sqlite store
works on a multi-node cluster. Ray's ``MLflowLoggerCallback`` creates a fresh run for every Tune trial and knows
nothing of nesting, so a rerun or resumed sweep would duplicate runs; this callback finds the sweep's parent by its
``tamt.sweep`` tag and each child by its ``tamt.run_id`` tag instead, and logs metrics to the existing run, from a
thread of its own, so that MLflow never slows the sweep down.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from orchestrator.provenance import provenance, source_revision
from orchestrator.specs import Spec, spec_from_dict

log = logging.getLogger(__name__)

EXPERIMENT = "tamt"
SWEEP_TAG, RUN_ID_TAG, STAGE_TAG, PARENT_TAG = "tamt.sweep", "tamt.run_id", "tamt.stage", "mlflow.parentRunId"
_NOT_METRICS = {"step", "tamt_done"}
_TUNE_KEYS = {"time_this_iter_s", "time_total_s", "timestamp", "training_iteration", "pid", "time_since_restore",
              "iterations_since_restore"}


class TrackingError(ValueError):
    """The MLflow tracking URI cannot be used; names the fix."""


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast on an unreachable tracking server (MLflow's own client would retry for minutes).

    Raises:
        TrackingError: the server does not answer ``/health``, or the URI scheme is not one MLflow stores to.
    """
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
                return
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise TrackingError(f"MLflow tracking server {uri} does not answer ({error}); start it "
                                "(docs/orchestrator.md: `mlflow server --backend-store-uri sqlite:///… --port 5000`) "
                                "or drop --mlflow-uri to use the store inside --storage") from error
    elif not uri.startswith(("sqlite:///", "postgresql", "mysql", "databricks")):
        raise TrackingError(f"unsupported MLflow tracking URI {uri!r}; use http(s)://host:port, sqlite:///path or a "
                            "database URI")


def runs_view(uri: str, experiment_id: str | None, port: int = 5000) -> tuple[str | None, str]:
    """How to look at a sweep's runs: the command that serves a local store (``None`` for a server) and the URL of
    the runs table of its experiment (the UI's start page when ``experiment_id`` is unknown). MLflow 3's UI opens
    an experiment on its GenAI overview, which lists no runs; ``workflowType=machine_learning`` opens the runs."""
    page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning" if experiment_id else ""
    if uri.startswith(("http://", "https://")):
        return None, f"{uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {uri} --port {port}", f"http://127.0.0.1:{port}/{page}"


def _flat_params(spec: Spec) -> list[Param]:
    """Spec fields as MLflow params (``config.task``, ``mask.search_id``, ...); MLflow caps values at 6000 chars."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            flat[prefix] = value

    walk("", spec.to_dict())
    return [Param(key, str(value)[:6000]) for key, value in sorted(flat.items())]


def run_name(spec: Spec) -> str:
    if spec.stage == "search":
        config = spec.config
        return f"search {config.method} s{config.sparsity:g} seed{config.seed}"
    if spec.stage == "dense-loss":
        return f"dense-loss {spec.model}"
    if spec.stage == "similarity":
        against = "all pairs" if spec.reference is None else f"vs {spec.reference.search_id[:6]}"
        return f"similarity s{spec.sparsity:g} {len(spec.masks)} masks {against}"
    mask = "full" if spec.mask is None else f"mask {spec.mask.search_id[:6]} s{spec.mask.sparsity:g}"
    size = "" if spec.config.train_size is None else f" n{spec.config.train_size}"
    return f"finetune {spec.config.task} {mask} seed{spec.config.seed}{size}"


class MlflowTracker(Callback):
    """The Tune callback that mirrors trials into MLflow (parent per sweep, child per run id).

    Tune calls its hooks from its control loop, so they only queue what is to be logged; one thread of the driver
    talks to MLflow, in order, batching a trial's metrics. A slow or unreachable tracking server delays the logging,
    never the sweep: an operation that fails is retried (every ``retry_s`` seconds, doubling up to a minute) until it
    succeeds, and :meth:`finish` waits for the queue to drain and reports what it could not log. The tracker holds
    the children of the trials running now, not of every trial the sweep ever ran: a child is looked up by its
    ``tamt.run_id`` tag when its trial starts.
    """

    def __init__(self, tracking_uri: str, sweep: str, settings: dict[str, Any],
                 spec_of: Callable[[dict[str, Any]], Spec] = lambda config: spec_from_dict(config["spec"]),
                 retry_s: float = 5.0) -> None:
        self.spec_of = spec_of  # a trial's config → its spec (a study's trials carry sampled values, not a spec)
        self.source = source_revision()  # once: the driver's checkout does not change during a sweep
        self.tracking_uri, self.retry_s = tracking_uri, retry_s
        self.client = MlflowClient(tracking_uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        self.experiment_id = (experiment.experiment_id if experiment is not None
                              else self.client.create_experiment(EXPERIMENT))
        parents = self.client.search_runs([self.experiment_id], f"tags.`{SWEEP_TAG}` = '{sweep}'", max_results=1)
        if parents:
            self.parent_id = parents[0].info.run_id
            self.client.update_run(self.parent_id, status=RunStatus.to_string(RunStatus.RUNNING))
        else:
            self.parent_id = self.client.create_run(self.experiment_id, run_name=sweep,
                                                    tags={SWEEP_TAG: sweep}).info.run_id
            self.client.log_batch(self.parent_id, params=[Param(k, str(v)) for k, v in sorted(settings.items())])
        self._child_of_trial: dict[str, str] = {}  # only the logging thread touches it
        self._queue: queue.Queue = queue.Queue()
        self.retries = 0
        self._logger = threading.Thread(target=self._log_queued, name="tamt-mlflow", daemon=True)
        self._logger.start()

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks into its experiment state (never restored here: the table is the state); the
        copy leaves out the logging thread and its queue."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_queue", "_logger", "_child_of_trial")}

    def child_for(self, spec: Spec) -> str:
        """The child run of ``spec``: found by its tags, or created with its params on first sight."""
        found = self.client.search_runs(
            [self.experiment_id], f"tags.`{PARENT_TAG}` = '{self.parent_id}' and tags.`{RUN_ID_TAG}` = '{spec.run_id}'",
            max_results=1)
        if found:
            self.client.update_run(found[0].info.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            return found[0].info.run_id
        child = self.client.create_run(self.experiment_id, run_name=run_name(spec), tags={
            PARENT_TAG: self.parent_id, RUN_ID_TAG: spec.run_id, STAGE_TAG: spec.stage,
            **{f"tamt.{key}": value for key, value in provenance(spec.algorithm, source=self.source).items()}}
        ).info.run_id
        self.client.log_batch(child, params=_flat_params(spec))
        return child

    # --- Tune callback hooks: queue only -------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._queue.put(("start", trial.trial_id, self.spec_of(trial.config)))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        step = int(result.get("step", 0) or 0)
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in result.items()
                   if key in self._metric_keys(result) and not math.isnan(float(value))]
        if metrics:
            self._queue.put(("metrics", trial.trial_id, metrics))

    @staticmethod
    def _metric_keys(result: dict[str, Any]) -> set[str]:
        """Numeric keys the trial reported itself, without Tune's bookkeeping (time, iteration, pid, ...)."""
        numeric = {k for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return numeric - _TUNE_KEYS - _NOT_METRICS

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._queue.put(("end", trial.trial_id, "FINISHED"))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._queue.put(("end", trial.trial_id, "FAILED"))

    # --- the logging thread ----------------------------------------------------------------------------------

    def _log_queued(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < 1000:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for operation in _merged(batch):
                self._until_done(operation)
            for _ in batch:
                self._queue.task_done()

    def _until_done(self, operation: tuple) -> None:
        wait = self.retry_s
        while True:
            try:
                self._apply(operation)
                return
            except Exception as error:  # MlflowException, connection errors: the server will be back
                self.retries += 1
                if self.retries == 1 or self.retries % 20 == 0:
                    log.warning("MLflow at %s did not take a %s (%s); retrying every %.0f s, the sweep goes on",
                                self.tracking_uri, operation[0], str(error).splitlines()[0][:200], wait)
                time.sleep(wait)
                wait = min(60.0, wait * 2)

    def _apply(self, operation: tuple) -> None:
        kind = operation[0]
        if kind == "start":
            _, trial_id, spec = operation
            self._child_of_trial[trial_id] = self.child_for(spec)
        elif kind == "metrics":
            _, trial_id, metrics = operation
            child = self._child_of_trial.get(trial_id)
            for start in range(0, len(metrics), 1000):  # MLflow's batch limit
                if child is not None:
                    self.client.log_batch(child, metrics=metrics[start:start + 1000])
        elif kind == "end":
            _, trial_id, status = operation
            child = self._child_of_trial.get(trial_id)
            if child is not None:
                self.client.set_terminated(child, status)
            self._child_of_trial.pop(trial_id, None)
        elif kind == "finish":
            for child in self._child_of_trial.values():
                self.client.set_terminated(child, "KILLED")
            self._child_of_trial.clear()
            self.client.set_terminated(self.parent_id, operation[1])

    def finish(self, status: str = "FINISHED", timeout_s: float = 300.0) -> bool:
        """End the sweep's parent run (and any child still open), once, after the sweep's last experiment; wait up to
        ``timeout_s`` for everything queued to reach MLflow. Returns whether it did (else says what is left)."""
        self._queue.put(("finish", status))
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self._queue.unfinished_tasks
        if left:
            log.warning("MLflow at %s did not answer for %.0f s; %d logging operations of this sweep are not in it "
                        "(the results table has every result)", self.tracking_uri, timeout_s, left)
        return not left


def _merged(batch: list[tuple]) -> list[tuple]:
    """``batch`` in order, consecutive metrics of one trial merged into one operation (one request)."""
    out: list[tuple] = []
    for operation in batch:
        if (operation[0] == "metrics" and out and out[-1][0] == "metrics" and out[-1][1] == operation[1]):
            out[-1] = ("metrics", operation[1], out[-1][2] + operation[2])
        else:
            out.append(operation)
    return out
