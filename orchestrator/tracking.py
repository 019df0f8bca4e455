"""MLflow tracking from the driver: one parent run per sweep, one child run per trial, never duplicated.

Only the driver talks to MLflow, so trials on any node need no tracking credentials and an embedded sqlite store
works on a multi-node cluster. Ray's ``MLflowLoggerCallback`` creates a fresh run for every Tune trial and knows
nothing of nesting, so a rerun or resumed sweep would duplicate runs; this callback finds the sweep's parent by its
``tamt.sweep`` tag and each child by its ``tamt.run_id`` tag instead, and logs metrics to the existing run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
import urllib.error
import urllib.request
from typing import Any

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from orchestrator.provenance import provenance, source_revision
from orchestrator.specs import Spec, spec_from_dict

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
            raise TrackingError(f"MLflow tracking server {uri} does not answer ({error}); start it (docs/orchestrator.md: "
                                "`mlflow server --backend-store-uri sqlite:///… --port 5000`) or drop --mlflow-uri "
                                "to use the store inside --storage") from error
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
    """The Tune callback that mirrors trials into MLflow (parent per sweep, child per run id)."""

    def __init__(self, tracking_uri: str, sweep: str, settings: dict[str, Any],
                 spec_of: Callable[[dict[str, Any]], Spec] = lambda config: spec_from_dict(config["spec"])) -> None:
        self.spec_of = spec_of  # a trial's config → its spec (a study's trials carry sampled values, not a spec)
        self.source = source_revision()  # once: the driver's checkout does not change during a sweep
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
        self.children = self._existing_children()
        self._child_of_trial: dict[str, str] = {}

    def _existing_children(self) -> dict[str, str]:
        children, token = {}, None
        while True:
            page = self.client.search_runs([self.experiment_id], f"tags.`{PARENT_TAG}` = '{self.parent_id}'",
                                           max_results=1000, page_token=token)
            children.update({run.data.tags[RUN_ID_TAG]: run.info.run_id for run in page if RUN_ID_TAG in run.data.tags})
            token = page.token
            if not token:
                return children

    def child_for(self, spec: Spec) -> str:
        """The child run of ``spec`` (created with its params on first sight)."""
        existing = self.children.get(spec.run_id)
        if existing is not None:
            self.client.update_run(existing, status=RunStatus.to_string(RunStatus.RUNNING))
            return existing
        child = self.client.create_run(self.experiment_id, run_name=run_name(spec), tags={
            PARENT_TAG: self.parent_id, RUN_ID_TAG: spec.run_id, STAGE_TAG: spec.stage,
            **{f"tamt.{key}": value for key, value in provenance(spec.algorithm, source=self.source).items()}}
        ).info.run_id
        self.client.log_batch(child, params=_flat_params(spec))
        self.children[spec.run_id] = child
        return child

    def start(self, trial_id: str, spec: Spec) -> None:
        self._child_of_trial[trial_id] = self.child_for(spec)

    # --- Tune callback hooks -----------------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.start(trial.trial_id, self.spec_of(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        child = self._child_of_trial.get(trial.trial_id)
        if child is None:
            return
        step = int(result.get("step", 0) or 0)
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in result.items()
                   if key in self._metric_keys(result) and not math.isnan(float(value))]
        if metrics:
            self.client.log_batch(child, metrics=metrics)

    @staticmethod
    def _metric_keys(result: dict[str, Any]) -> set[str]:
        """Numeric keys the trial reported itself, without Tune's bookkeeping (time, iteration, pid, ...)."""
        numeric = {k for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return numeric - _TUNE_KEYS - _NOT_METRICS

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        child = self._child_of_trial.pop(trial.trial_id, None)
        if child is not None:
            self.client.set_terminated(child, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        child = self._child_of_trial.pop(trial.trial_id, None)
        if child is not None:
            self.client.set_terminated(child, "FAILED")

    def finish(self, status: str = "FINISHED") -> None:
        """End the sweep's parent run (and any child still open): once, after the sweep's last experiment."""
        for child in self._child_of_trial.values():
            self.client.set_terminated(child, "KILLED")
        self._child_of_trial.clear()
        self.client.set_terminated(self.parent_id, status)
