"""MLflow tracking from the driver: one parent run per sweep, one child run per trial, never duplicated.

Only the driver talks to MLflow, so trials on any node need no tracking credentials and an embedded sqlite store
works on a multi-node cluster. Ray's ``MLflowLoggerCallback`` creates a fresh run for every Tune trial and knows
nothing of nesting, so a rerun or resumed sweep would duplicate runs; this callback finds the sweep's parent by its
``tamt.sweep`` tag and each child by its ``tamt.run_id`` tag instead, and logs metrics to the existing run, from a
thread of its own, so that MLflow never slows the sweep down.

What a child shows in MLflow's runs table: a name that says what the trial is (``sst2 · TAMT-MLM 50% · seed 3``),
the params a researcher groups and filters by (``method``, ``sparsity``, ``task``, ``mask_seed``,
``finetune_seed``, ``model``, ``train_size``) beside the flattened spec, and one headline metric per kind of trial:
``score`` for a fine-tune (its selected metric's best value), ``mlm_dev_loss``/``kd_dev_loss`` and ``sparsity`` for
a search (each mask's, the final mask's last), read from the trial's results row when it ends.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from tamt_core.methods import METHODS

from orchestrator import results
from orchestrator.provenance import provenance, source_revision
from orchestrator.specs import DenseLossSpec, FinetuneSpec, SearchSpec, SimilaritySpec, Spec, spec_from_dict
from orchestrator.storage import Storage

log = logging.getLogger(__name__)

EXPERIMENT = "tamt"
SWEEP_TAG, RUN_ID_TAG, STAGE_TAG, PARENT_TAG = "tamt.sweep", "tamt.run_id", "tamt.stage", "mlflow.parentRunId"
ARTIFACTS_DIR = "mlflow-artifacts"
"""Where the artifacts of an sqlite store's experiment go: beside ``mlflow.db`` (MLflow's default is ``./mlruns``
under whatever directory the driver was started from)."""
_NOT_METRICS = {"step", "tamt_done"}
_TUNE_KEYS = {"time_this_iter_s", "time_total_s", "timestamp", "training_iteration", "pid", "time_since_restore",
              "iterations_since_restore"}

METHOD_NAMES: dict[str, str] = {"omp": "OMP", "rand": "Rand", "imp": "IMP", "tamt-mlm": "TAMT-MLM",
                                "tamt-kd": "TAMT-KD", "full": "full model"}
"""The paper's names of the methods (§4.1.1), as run names write them; a method without one goes by its key."""

SearchOf = Callable[[str], SearchSpec | None]
"""A search's run id → its spec (``None``: unknown); how a fine-tune's child learns its mask's method and seed."""


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


def artifact_location(uri: str) -> str | None:
    """Where a new ``tamt`` experiment keeps its artifacts: beside an sqlite store's file; ``None`` (the server's
    or database's default) otherwise."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIR).resolve().as_uri()
    return None


def _flat_params(spec: Spec) -> dict[str, str]:
    """Spec fields as MLflow params (``config.task``, ``mask.search_id``, ...); MLflow caps values at 6000 chars."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            flat[prefix] = value

    walk("", spec.to_dict())
    return {key: str(value)[:6000] for key, value in flat.items()}


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def _percent(sparsity: float) -> str:
    return f"{sparsity * 100:.4g}%"


def _seeded(method: str) -> bool:
    """Whether a method's masks depend on its seed (OMP's do not: its name leaves the seed out)."""
    return getattr(METHODS.get(method), "seeded", True)


def _model_name(model: str) -> str:
    return model.rstrip("/").rsplit("/", 1)[-1]


def _no_search(search_id: str) -> None:  # noqa: ARG001 (a SearchOf that knows no search)
    return None


def run_name(spec: Spec) -> str:
    """A trial's short label in ``python -m sweeps status`` (``search rand s0.5 seed1``, ``finetune sst2 mask
    c91420 s0.5 seed3 n320``); MLflow names its child run by :func:`child_name`."""
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


def child_name(spec: Spec, search_of: SearchOf = _no_search, with_model: bool = False) -> str:
    """A trial's run name, as MLflow's runs table shows it: ``sst2 · TAMT-MLM 50% · seed 3``
    (a fine-tune, its seed; the mask's seed follows for methods that have one, the mask's step when it is not the
    search's last, the training set's size when it is cut), ``TAMT-MLM 50% · seed 1 · search``, ``sst2 · full
    model · seed 3``; ``with_model`` adds the model (a sweep of several)."""
    parts: list[str]
    if isinstance(spec, SearchSpec):
        config = spec.config
        parts = [f"{method_name(config.method)} {_percent(config.sparsity)}",
                 *([f"seed {config.seed}"] if _seeded(config.method) else []), "search"]
    elif isinstance(spec, FinetuneSpec):
        config = spec.config
        parts = [config.task]
        if spec.mask is None:
            parts += ["full model", f"seed {config.seed}"]
        else:
            search = search_of(spec.mask.search_id)
            if search is None:
                parts += [f"mask {spec.mask.search_id[:6]} {_percent(spec.mask.sparsity)}", f"seed {config.seed}"]
            else:
                method = search.config.method
                parts += [f"{method_name(method)} {_percent(spec.mask.sparsity)}", f"seed {config.seed}"]
                if _seeded(method):
                    parts.append(f"mask seed {search.config.seed}")
                if _final_step(search, spec.mask.sparsity) != spec.mask.step:
                    parts.append(f"mask step {spec.mask.step}")
        if config.train_size is not None:
            parts.append(f"n={config.train_size}")
    elif isinstance(spec, DenseLossSpec):
        parts = ["full model", "dev losses"]
    else:
        against = "all pairs"
        if spec.reference is not None:
            reference = search_of(spec.reference.search_id)
            against = (f"vs {method_name(reference.config.method)}" if reference is not None
                       else f"vs {spec.reference.search_id[:6]}")
        parts = [f"mask similarity {_percent(spec.sparsity)}", f"{len(spec.masks)} masks", against]
    if with_model:
        parts.append(_model_name(spec.model))
    return " · ".join(parts)


def _final_step(search: SearchSpec, sparsity: float) -> int | None:
    try:
        return search.final_mask(sparsity).step
    except ValueError:
        return None


def child_params(spec: Spec, search_of: SearchOf = _no_search) -> dict[str, str]:
    """A child's params: ``method``, ``sparsity``, ``task``, ``mask_seed``, ``mask_step``, ``finetune_seed``,
    ``model``, ``train_size`` where the trial has them (a fine-tune's method is its mask's search's, ``full`` for
    the full model), then the flattened spec (``config.lr``, ``mask.search_id``, ...)."""
    readable: dict[str, Any] = {"stage": spec.stage, "model": spec.model}
    if isinstance(spec, SearchSpec):
        readable.update(method=spec.config.method, sparsity=spec.config.sparsity, mask_seed=spec.config.seed)
    elif isinstance(spec, FinetuneSpec):
        config = spec.config
        readable.update(task=config.task, finetune_seed=config.seed, train_size=config.train_size)
        if spec.mask is None:
            readable.update(method="full", sparsity=0.0)
        else:
            search = search_of(spec.mask.search_id)
            readable.update(method=None if search is None else search.config.method, sparsity=spec.mask.sparsity,
                            mask_seed=None if search is None else search.config.seed, mask_step=spec.mask.step)
    elif isinstance(spec, DenseLossSpec):
        readable.update(method="full", sparsity=0.0)
    elif isinstance(spec, SimilaritySpec):
        readable.update(sparsity=spec.sparsity)
    params = {key: f"{value:g}" if isinstance(value, float) else str(value)
              for key, value in readable.items() if value is not None}
    return {**params, **{key: value for key, value in _flat_params(spec).items() if key not in params}}


def trial_summary(row: Mapping[str, Any], timestamp: int, last_step: int = 0) -> tuple[list[Metric], dict[str, str]]:
    """What a finished trial's row adds to its child: a search's ``sparsity`` (measured), ``mlm_dev_loss`` and
    ``kd_dev_loss`` at each mask's step, the final mask's last (at ``last_step`` if the trial reported a later
    one), so that they are the values the runs table shows; a fine-tune's ``score`` (the best value of its
    selected metric, at the step it was reached) and, as a param, ``score_metric`` (which metric that is)."""
    metrics: list[Metric] = []
    params: dict[str, str] = {}

    def add(key: str, value: Any, step: int) -> None:
        if value is not None and not math.isnan(float(value)):
            metrics.append(Metric(key, float(value), timestamp, int(step)))

    if row.get("stage") == "search":
        masks = sorted(row.get("masks") or [], key=lambda mask: mask["step"])
        for index, mask in enumerate(masks):
            step = max(mask["step"], last_step) if index == len(masks) - 1 else mask["step"]
            for key in ("sparsity", "mlm_dev_loss", "kd_dev_loss"):
                add(key, mask["actual_sparsity"] if key == "sparsity" else mask[key], step)
    elif row.get("stage") == "finetune" and row.get("best_score") is not None:
        add("score", row["best_score"], row.get("best_step") or 0)
        if row.get("select_metric"):
            params["score_metric"] = str(row["select_metric"])
    return metrics, params


class MlflowTracker(Callback):
    """The Tune callback that mirrors trials into MLflow (parent per sweep, child per run id).

    Tune calls its hooks from its control loop, so they only queue what is to be logged; one thread of the driver
    talks to MLflow, in order, batching a trial's metrics. A slow or unreachable tracking server delays the logging,
    never the sweep: an operation that fails is retried (every ``retry_s`` seconds, doubling up to a minute) until it
    succeeds, and :meth:`finish` waits for the queue to drain and reports what it could not log. The tracker holds
    the children of the trials running now, not of every trial the sweep ever ran: a child is looked up by its
    ``tamt.run_id`` tag when its trial starts.

    ``searches`` (the plan's, by run id) tell a fine-tune's child its mask's method and seed; with ``storage``, a
    search missing there is read from its row, and each trial's row adds its summary (:func:`trial_summary`) when
    it ends: a trial that ends without a row (stopped to be resumed) is marked ``KILLED``. ``model_in_names`` adds
    the model to the run names (a sweep of several models).
    """

    def __init__(self, tracking_uri: str, sweep: str, settings: dict[str, Any],
                 spec_of: Callable[[dict[str, Any]], Spec] = lambda config: spec_from_dict(config["spec"]),
                 retry_s: float = 5.0, *, searches: Mapping[str, SearchSpec] | None = None,
                 storage: Storage | None = None, model_in_names: bool = False) -> None:
        self.spec_of = spec_of  # a trial's config → its spec (a study's trials carry sampled values, not a spec)
        self.source = source_revision()  # once: the driver's checkout does not change during a sweep
        self.tracking_uri, self.retry_s = tracking_uri, retry_s
        self.storage, self.model_in_names = storage, model_in_names
        self._searches: dict[str, SearchSpec | None] = dict(searches or {})
        self.client = MlflowClient(tracking_uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        self.experiment_id = (experiment.experiment_id if experiment is not None
                              else self.client.create_experiment(EXPERIMENT, artifact_location(tracking_uri)))
        parents = self.client.search_runs([self.experiment_id], f"tags.`{SWEEP_TAG}` = '{sweep}'", max_results=1)
        if parents:
            self.parent_id = parents[0].info.run_id
            self.client.update_run(self.parent_id, status=RunStatus.to_string(RunStatus.RUNNING))
        else:
            self.parent_id = self.client.create_run(self.experiment_id, run_name=sweep,
                                                    tags={SWEEP_TAG: sweep}).info.run_id
            self.client.log_batch(self.parent_id, params=[Param(k, str(v)) for k, v in sorted(settings.items())])
        self._trials: dict[str, tuple[str, Spec]] = {}  # trial id → (child, spec); only the logging thread uses it
        self._last_step: dict[str, int] = {}  # trial id → the highest step it reported
        self._queue: queue.Queue = queue.Queue()
        self.retries = 0
        self._logger = threading.Thread(target=self._log_queued, name="tamt-mlflow", daemon=True)
        self._logger.start()

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks into its experiment state (never restored here: the table is the state); the
        copy leaves out the logging thread, its queue and the plan's searches."""
        return {k: v for k, v in self.__dict__.items()
                if k not in ("_queue", "_logger", "_trials", "_last_step", "_searches")}

    def search_of(self, search_id: str) -> SearchSpec | None:
        """The spec of a search: the plan's, else the one its row records (a search an earlier sweep ran)."""
        if search_id not in self._searches:
            found = None
            if self.storage is not None:
                try:
                    found = spec_from_dict(json.loads(results.read_row(self.storage, search_id)["spec"]))
                except Exception as error:  # no row, or one that cannot be read: the child goes without
                    log.debug("no spec of search %s for MLflow (%s)", search_id, error)
            self._searches[search_id] = found if isinstance(found, SearchSpec) else None
        return self._searches[search_id]

    def child_for(self, spec: Spec) -> str:
        """The child run of ``spec``: found by its tags (and given the name and params of today's code, if an older
        one created it), or created with its name and params on first sight."""
        name = child_name(spec, self.search_of, self.model_in_names)
        params = child_params(spec, self.search_of)
        found = self.client.search_runs(
            [self.experiment_id], f"tags.`{PARENT_TAG}` = '{self.parent_id}' and tags.`{RUN_ID_TAG}` = '{spec.run_id}'",
            max_results=1)
        if found:
            child = found[0]
            missing = {key: value for key, value in params.items() if key not in child.data.params}
            if missing:
                self.client.log_batch(child.info.run_id, params=[Param(k, v) for k, v in sorted(missing.items())])
            self.client.update_run(child.info.run_id, status=RunStatus.to_string(RunStatus.RUNNING),
                                   name=None if child.info.run_name == name else name)
            return child.info.run_id
        child = self.client.create_run(self.experiment_id, run_name=name, tags={
            PARENT_TAG: self.parent_id, RUN_ID_TAG: spec.run_id, STAGE_TAG: spec.stage,
            **{f"tamt.{key}": value for key, value in provenance(spec.algorithm, source=self.source).items()}}
        ).info.run_id
        self.client.log_batch(child, params=[Param(key, value) for key, value in sorted(params.items())])
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
            self._trials[trial_id] = (self.child_for(spec), spec)
        elif kind == "metrics":
            _, trial_id, metrics = operation
            child = self._trials.get(trial_id, (None,))[0]
            for start in range(0, len(metrics), 1000):  # MLflow's batch limit
                if child is not None:
                    self.client.log_batch(child, metrics=metrics[start:start + 1000])
            self._last_step[trial_id] = max([self._last_step.get(trial_id, 0), *(m.step for m in metrics)])
        elif kind == "end":
            _, trial_id, status = operation
            if trial_id in self._trials:
                child, spec = self._trials[trial_id]
                if status == "FINISHED" and self.storage is not None:
                    status = self._summarise(child, spec, self._last_step.get(trial_id, 0))
                self.client.set_terminated(child, status)
            self._trials.pop(trial_id, None)
            self._last_step.pop(trial_id, None)
        elif kind == "finish":
            for child, _ in self._trials.values():
                self.client.set_terminated(child, "KILLED")
            self._trials.clear()
            self.client.set_terminated(self.parent_id, operation[1])

    def _summarise(self, child: str, spec: Spec, last_step: int) -> str:
        """Log a finished trial's summary from its row; returns the child's status (``KILLED``: no row, the trial
        stopped to be resumed). A row that cannot be read leaves the child without its summary."""
        try:
            row = results.read_row(self.storage, spec.run_id)
        except KeyError:
            return "KILLED"
        except Exception as error:  # the storage, not MLflow: retrying would hold up the queue
            log.warning("the results row of %s could not be read for MLflow (%s)", spec.run_id, error)
            return "FINISHED"
        metrics, params = trial_summary(row, int(time.time() * 1000), last_step)
        if metrics or params:
            self.client.log_batch(child, metrics=metrics, params=[Param(k, v) for k, v in sorted(params.items())])
        return "FINISHED"

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


# --- the sweep's own artifacts -----------------------------------------------------------------------------------

ArtifactWriter = Callable[[Storage, Path], object]
"""Writes what the analysis draws from a storage's results table (results table, figures, ``report.html``) into a
directory; leaves it empty when there is nothing to draw yet (``sweeps.common.write_analysis``)."""


def attach_artifacts(uri: str, sweep: str, storage: Storage, write: ArtifactWriter) -> str | None:
    """Have ``write`` draw the analysis of ``storage`` and log it to the sweep's parent run, as its artifacts
    (replacing files of the same name from an earlier run). Returns the line to print: what the parent holds now,
    or why it holds nothing new; ``None`` when there was nothing to draw or the sweep has no parent run. Never
    raises: an artifact that failed does not fail the sweep."""
    try:
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        parents = [] if experiment is None else client.search_runs(
            [experiment.experiment_id], f"tags.`{SWEEP_TAG}` = '{sweep}'", max_results=1)
        if not parents:
            return None
        with tempfile.TemporaryDirectory(prefix="tamt-artifacts-") as directory:
            write(storage, Path(directory))
            files = sorted(path for path in Path(directory).rglob("*") if path.is_file())
            if not files:
                return None
            client.log_artifacts(parents[0].info.run_id, directory)
        figures = sum(1 for path in files if path.suffix == ".png")
        html = [path.name for path in files if path.suffix == ".html"]
        return (f"  MLflow parent run {sweep!r} holds the analysis: {figures} figures"
                + (f", {', '.join(html)}" if html else "") + f" ({len(files)} files)")
    except Exception as error:  # the analysis or MLflow: the sweep's results are in the table either way
        first = (str(error).splitlines() or [""])[0][:200]
        return (f"  MLflow parent run {sweep!r}: the analysis was not attached ({type(error).__name__}: {first}); "
                "python -m analysis.figures draws it")
