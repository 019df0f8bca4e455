"""Run a plan on Ray: one Tune experiment whose searcher hands out trials as their inputs exist.

Ray Tune has no trial dependencies, so :class:`PlanSearcher` (a Tune ``Searcher``) keeps the DAG: it suggests a
mask search at once and a fine-tune only when the search it needs has finished, so no stage waits for a whole stage.
Tune keeps doing what it does well: placing trials on nodes with the resources they ask for, retrying a failed trial
(``FailureConfig``), stopping cleanly on Ctrl-C. Which trials are already done is read from the results table, not
from Tune's experiment state, so a rerun (even of a grid that has grown) runs only what is missing, and an
interrupted fine-tune continues from the checkpoint in its run directory.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import ray
import yaml
from ray import tune
from ray.tune.search import Searcher

from tamt_core.ids import FIRST_VERSION, algorithm_versions

from orchestrator import ledger, ray_logging, results
from orchestrator.compaction import Compactor
from orchestrator.estimate import THROUGHPUT, trial_seconds
from orchestrator.memory import release_freed_memory
from orchestrator.plan import Plan, PlanError
from orchestrator.provenance import package_versions, source_revision
from orchestrator.specs import FinetuneSpec, SearchSpec, Spec, spec_from_dict
from orchestrator.storage import Storage
from orchestrator.tracking import MlflowTracker, TrackingError, check_tracking_uri, run_name
from orchestrator.train import trains
from orchestrator.trial import TrialSettings, check_models, tune_trial

log = logging.getLogger(__name__)


SEARCH_DRIVER_RESOURCE = "tamt_search_driver"
"""A custom resource that nodes safe from preemption declare (the head in cluster.yaml and k8s/): where it exists,
the Tune trial that drives a search's Ray Train job, and so Train's controller beside it, is placed on such a node,
and a spot reclaim takes only workers, which Train restarts."""
SEARCH_DRIVER_MEMORY = 512 * 2**20
"""What the Tune trial driving a Train search holds: no CPU (it waits for its workers, which hold the search's
CPUs and GPUs), the memory of a Python process that has imported torch."""


@dataclass(frozen=True)
class Resources:
    """What one trial holds while it runs (Ray logical resources); fractional GPUs pack small fine-tunes.

    A search that trains runs on ``workers_per_search`` Ray Train workers of ``search_cpu`` CPUs and
    ``search_gpu`` GPUs each; its Tune trial only drives them. ``search_driver_resource`` is the custom resource
    that keeps those drivers off spot nodes, when the cluster has it (set once Ray is up).
    """

    search_cpu: float = 1.0
    search_gpu: float = 0.0
    finetune_cpu: float = 1.0
    finetune_gpu: float = 0.0
    workers_per_search: int = 1
    search_driver_resource: str | None = None

    def __post_init__(self) -> None:
        for name in ("search_cpu", "search_gpu", "finetune_cpu", "finetune_gpu"):
            value = getattr(self, name)
            if value < 0 or (name.endswith("gpu") and value > 1 and value != int(value)):
                raise PlanError(f"{name} must be ≥ 0 (a fraction ≤ 1 or a whole number of GPUs), got {value}")
        if self.search_cpu + self.search_gpu == 0 or self.finetune_cpu + self.finetune_gpu == 0:
            raise PlanError("a trial must hold some CPU or GPU (Ray cannot schedule an empty request); "
                            "give --cpus-per-trial > 0")
        if not (isinstance(self.workers_per_search, int) and self.workers_per_search >= 1):
            raise PlanError(f"--workers-per-search must be a whole number ≥ 1 (1 runs each search on one GPU or "
                            f"CPU worker, N splits its batch over N), got {self.workers_per_search}")

    def for_stage(self, stage: str) -> dict[str, float]:
        """A search's resources for searches and dense-model losses (a model on a GPU), a fine-tune's for
        fine-tunes; mask similarities count bits on the CPU."""
        if stage == "similarity":
            return {"cpu": self.search_cpu or 1.0, "gpu": 0.0}
        cpu, gpu = (self.finetune_cpu, self.finetune_gpu) if stage == "finetune" else (self.search_cpu, self.search_gpu)
        return {"cpu": cpu, "gpu": gpu}

    def for_trial(self, spec: dict[str, Any]) -> dict[str, float]:
        """The Tune trial's own request: a search that trains holds only its driver's share (its Train workers
        hold ``search_cpu``/``search_gpu`` each), every other trial its stage's resources."""
        if not trains(spec):
            return self.for_stage(spec["stage"])
        driver = {"cpu": 0.0, "gpu": 0.0, "memory": SEARCH_DRIVER_MEMORY}
        return driver if self.search_driver_resource is None else {**driver, self.search_driver_resource: 0.01}

    def trial_settings(self, storage: Storage, checkpoint_every_s: float, device: str | None,
                       max_failures: int) -> TrialSettings:
        return TrialSettings(storage.uri, checkpoint_every_s, device, workers_per_search=self.workers_per_search,
                             search_cpu=self.search_cpu, search_gpu=self.search_gpu, max_failures=max_failures)

    def on_cluster(self, plan_trains: bool, attached: bool) -> Resources:
        """These resources placed on the connected cluster: search drivers on the nodes that declare
        :data:`SEARCH_DRIVER_RESOURCE`, if any.

        Raises:
            PlanError: a search's workers can never all be placed (more workers, or bigger ones, than the cluster
                holds at its largest).
        """
        cluster = ray.cluster_resources()
        placed = replace(self, search_driver_resource=SEARCH_DRIVER_RESOURCE if cluster.get(SEARCH_DRIVER_RESOURCE)
                         else None)
        if plan_trains:
            check_search_capacity(placed, largest_cluster(attached))
        return placed


def largest_cluster(attached: bool) -> list[dict[str, float]] | None:
    """Each node the cluster can ever have, as its resources: a local Ray's nodes; on an attached cluster, the node
    types of the cluster launcher's autoscaling config on the head (``~/ray_bootstrap_config.yaml``, each up to its
    ``max_workers``); ``None`` when neither tells (another autoscaler, such as KubeRay's, may add nodes)."""
    if not attached:
        return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]
    bootstrap = Path.home() / "ray_bootstrap_config.yaml"
    if not bootstrap.exists():
        return None
    config = yaml.safe_load(bootstrap.read_text())
    return [dict(node.get("resources", {})) for node in config.get("available_node_types", {}).values()
            for _ in range(max(1, int(node.get("max_workers", 0))))]


def check_search_capacity(resources: Resources, nodes: list[dict[str, float]] | None) -> None:
    """Every search's ``workers_per_search`` workers fit the cluster at its largest (first fit, node by node)."""
    if nodes is None:
        log.info("the cluster's largest size is unknown (an autoscaler); a search whose workers never fit fails "
                 "when Ray Train's worker start times out")
        return
    worker = {"CPU": resources.search_cpu, "GPU": resources.search_gpu}
    free = [dict(node) for node in nodes]
    placed = 0
    for node in free:
        while placed < resources.workers_per_search and all(node.get(k, 0.0) >= v for k, v in worker.items() if v):
            for key, value in worker.items():
                node[key] = node.get(key, 0.0) - value
            placed += 1
    if placed < resources.workers_per_search:
        total_gpu = sum(node.get("GPU", 0.0) for node in nodes)
        total_cpu = sum(node.get("CPU", 0.0) for node in nodes)
        raise PlanError(
            f"a search asks for {resources.workers_per_search} Ray Train workers of {resources.search_cpu:g} CPU "
            f"and {resources.search_gpu:g} GPU each, but this cluster holds at most {placed} such workers "
            f"({total_cpu:g} CPUs, {total_gpu:g} GPUs over {len(nodes)} nodes at its largest); lower "
            "--workers-per-search (or --cpus-per-trial / --gpus-per-search), or add nodes")


class PlanSearcher(Searcher):
    """Suggests the plan's unfinished trials in dependency order: searches first, every other trial once each search
    it reads masks from has finished.

    A search that fails for good (after Tune's retries) blocks the trials that wait for it; they are reported, not
    run.
    """

    def __init__(self, plan: Plan, todo: list[str], settings: TrialSettings) -> None:
        super().__init__()
        self.plan, self.settings = plan, settings
        self.ready: deque[str] = deque()
        self.missing: dict[str, set[str]] = {}  # run id → unfinished searches it waits for
        self.dependents: dict[str, list[str]] = {}  # search run id → trials waiting for it
        unfinished = set(todo)
        for run_id in todo:
            waits = {dep for dep in plan.dependencies(plan.get(run_id)) if dep in unfinished}
            if waits:
                self.missing[run_id] = waits
                for dep in waits:
                    self.dependents.setdefault(dep, []).append(run_id)
            else:
                self.ready.append(run_id)
        self.run_of_trial: dict[str, str] = {}
        self.succeeded: set[str] = set()
        self.failed: set[str] = set()
        self.blocked: set[str] = set()

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.ready:
            run_id = self.ready.popleft()
            self.run_of_trial[trial_id] = run_id
            return {"spec": self.plan.get(run_id).to_dict(), "settings": self.settings.to_dict(), "run_id": run_id}
        if self.missing:
            return None  # trials wait for searches still running
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        run_id = self.run_of_trial.get(trial_id)
        if run_id is None:
            return
        (self.failed if error else self.succeeded).add(run_id)
        for dependent in self.dependents.pop(run_id, []):
            if dependent not in self.missing:
                continue  # already blocked by another failed search
            if error:
                del self.missing[dependent]
                self.blocked.add(dependent)
                continue
            self.missing[dependent].discard(run_id)
            if not self.missing[dependent]:
                del self.missing[dependent]
                self.ready.append(dependent)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: what is done lives in the results table, which a rerun reads (Tune's restore is unused)."""

    def restore(self, checkpoint_path: str) -> None:
        """See :meth:`save`."""

    @property
    def unsuggested(self) -> int:
        return len(self.ready) + len(self.missing)


class Progress(tune.Callback):
    """One line every ``every_s`` seconds: done / running / pending / failed and an ETA from this run's pace."""

    def __init__(self, counts, total: int, skipped: int, every_s: float = 10.0, out: TextIO | None = None) -> None:
        """``counts`` has the sets ``succeeded``, ``failed``, ``blocked`` and the number ``unsuggested`` (a
        :class:`SweepCounts`, or a :class:`PlanSearcher` of one experiment)."""
        self.counts, self.total, self.skipped, self.every_s, self.out = counts, total, skipped, every_s, out
        self.started = time.monotonic()
        self.last_print = 0.0

    def line(self, trials) -> str:
        status = Counter(trial.status for trial in trials)
        done = len(self.counts.succeeded)
        running = status.get("RUNNING", 0)
        pending = status.get("PENDING", 0) + self.counts.unsuggested
        elapsed = time.monotonic() - self.started
        left = self.total - done - len(self.counts.failed) - len(self.counts.blocked)
        eta = "—" if done == 0 else _duration(elapsed / done * left)
        return (f"[tamt] {elapsed:6.0f}s  done {done}/{self.total} (+{self.skipped} already done)  running {running}  "
                f"pending {pending}  failed {len(self.counts.failed)}  blocked {len(self.counts.blocked)}  "
                f"ETA {eta}")

    def on_step_end(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if now - self.last_print >= self.every_s:
            self.last_print = now
            self.print(self.line(trials))

    def on_experiment_end(self, trials, **info) -> None:
        self.print(self.line(trials))

    def print(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)  # resolved late: Tune pickles its callbacks


class SweepLedger(tune.Callback):
    """Keeps what ``python -m sweeps status`` reads in the storage (:mod:`orchestrator.ledger`): the driver's
    heartbeat with the trials running now, and the error of each trial that fails for good."""

    def __init__(self, storage: Storage, sweep: str, started_at: float) -> None:
        self.storage, self.sweep, self.started_at = storage, sweep, started_at
        self.last_beat = time.monotonic()
        self.running: list[str] = []

    def beat(self, ended: str | None = None) -> None:
        self.last_beat = time.monotonic()
        ledger.write_heartbeat(self.storage, self.sweep, self.started_at, [] if ended else self.running, ended)

    def on_step_end(self, iteration, trials, **info) -> None:
        if time.monotonic() - self.last_beat >= ledger.HEARTBEAT_EVERY_S:
            self.running = [trial.config["run_id"] for trial in trials
                            if trial.status == "RUNNING" and "run_id" in trial.config]
            self.beat()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        """Called once Tune gives a trial up (its retries spent)."""
        spec = spec_from_dict(trial.config["spec"])
        written = Path(trial.error_file) if trial.error_file else None  # Tune's text of the error, on this node
        error = (written.read_text() if written is not None and written.is_file()
                 else f"trial {trial.trial_id} failed; see {trial.local_path}")
        ledger.record_failure(self.storage, trial.config["run_id"], sweep=self.sweep, stage=spec.stage,
                              label=run_name(spec), error=str(error))


def plan_record(plan: Plan) -> list[dict[str, Any]]:
    """Every trial of ``plan`` as ``status`` needs it: stage, method, label, the searches it waits for, its GPU
    seconds (:data:`orchestrator.estimate.THROUGHPUT`'s V100) and, once a version has been raised, the ids of its
    rows under older algorithm versions (stale rows)."""
    table = THROUGHPUT["v100"]
    trials = []
    for run_id, spec in ((spec.run_id, spec) for spec in plan.specs()):
        trial = {"run_id": run_id, "stage": spec.stage, "method": method_of(plan, spec), "label": run_name(spec),
                 "needs": list(plan.dependencies(spec)), "gpu_s": round(trial_seconds(spec, table), 1)}
        earlier = plan.earlier_ids(run_id)
        if earlier:
            trial["earlier"] = sorted(earlier)
        trials.append(trial)
    return trials


def method_of(plan: Plan, spec: Spec) -> str:
    """The method of a search, or of the mask a fine-tune trains (``full``: none); a measurement's kind."""
    if isinstance(spec, SearchSpec):
        return spec.config.method
    return plan.method_of(spec) if isinstance(spec, FinetuneSpec) else spec.stage


def stale_rows(plan: Plan, finished: set[str]) -> dict[str, str]:
    """Rows of the plan's trials by older code: stale row id → the trial's run id today."""
    return {earlier: run_id for run_id in plan.run_ids() for earlier in plan.earlier_ids(run_id)
            if earlier in finished}


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@dataclass
class SweepReport:
    """What a sweep invocation did."""

    storage: Storage
    mlflow_uri: str
    planned: int
    skipped: int
    succeeded: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)
    interrupted: bool = False
    experiment_id: str | None = None
    """The MLflow experiment of the sweep's runs (known once a trial ran)."""

    @property
    def complete(self) -> bool:
        return not self.failed and not self.blocked and not self.interrupted


def prepare(plan: Plan, storage: Storage, mlflow_uri: str | None) -> tuple[set[str], str]:
    """Every check that must pass before Ray starts; returns the finished run ids and the tracking URI.

    Raises:
        StorageError, TrackingError, PlanError: with the fix in the message.
    """
    storage.prepare()
    uri = mlflow_uri or storage.default_mlflow_uri()
    if uri is None:
        raise TrackingError(f"storage {storage.uri} is remote, so the embedded sqlite MLflow store cannot live in it; "
                            "pass --mlflow-uri http://HOST:PORT of a tracking server (docs/orchestrator.md)")
    check_tracking_uri(uri)
    finished = results.finished_run_ids(storage)
    plan.validate(finished)
    check_models(spec for spec in plan.specs() if spec.run_id not in finished)
    return finished, uri


WINDOW_TRIALS = 2_000
"""Trials per Tune experiment. Tune keeps every trial of an experiment until it ends (~100 KiB each), so a plan
runs as consecutive experiments of this many trials: the driver's memory follows the window, not the plan."""


class SweepCounts:
    """What :class:`Progress` counts, over the windows run so far and the current window's searcher."""

    def __init__(self, later: int) -> None:
        self.searcher: PlanSearcher | None = None
        self.later = later
        """Trials of windows not yet started."""
        self.done: set[str] = set()
        self.lost: set[str] = set()
        self.cut_off: set[str] = set()

    def start(self, searcher: PlanSearcher) -> None:
        self.searcher = searcher
        self.later -= searcher.unsuggested

    def close(self) -> None:
        """The current window has ended: its counts join the earlier windows'."""
        if self.searcher is not None:
            self.done |= self.searcher.succeeded
            self.lost |= self.searcher.failed
            self.cut_off |= self.searcher.blocked
            self.searcher = None

    def _with_window(self, earlier: set[str], attribute: str) -> set[str]:
        return earlier | getattr(self.searcher, attribute) if self.searcher is not None else earlier

    @property
    def succeeded(self) -> set[str]:
        return self._with_window(self.done, "succeeded")

    @property
    def failed(self) -> set[str]:
        return self._with_window(self.lost, "failed")

    @property
    def blocked(self) -> set[str]:
        return self._with_window(self.cut_off, "blocked")

    @property
    def unsuggested(self) -> int:
        return self.later + (self.searcher.unsuggested if self.searcher is not None else 0)


def next_window(plan: Plan, remaining: deque[str], counts: SweepCounts, size: int) -> list[str]:
    """Up to ``size`` trials from the front of ``remaining`` (dependency order: searches come before the trials
    that read their masks, so a trial's searches are in its window or an earlier one). A trial whose search failed
    in an earlier window is blocked, not handed out."""
    window: list[str] = []
    failed = counts.lost
    while remaining and len(window) < size:
        run_id = remaining.popleft()
        if any(dep in failed for dep in plan.dependencies(plan.get(run_id))):
            counts.cut_off.add(run_id)
            counts.later -= 1
        else:
            window.append(run_id)
    return window


def run_sweep(plan: Plan, *, name: str, storage: Storage, mlflow_uri: str | None = None,
              resources: Resources = Resources(), max_concurrent: int | None = None, max_failures: int = 3,
              checkpoint_every_s: float = 300.0, device: str | None = None, ray_address: str | None = None,
              ray_init: dict[str, Any] | None = None, progress_every_s: float = 10.0,
              out: TextIO | None = None, trainable: Callable[[dict], None] = tune_trial,
              window_trials: int = WINDOW_TRIALS) -> SweepReport:
    """Run every unfinished trial of ``plan``; returns what happened. Safe to rerun: finished trials are skipped.

    ``ray_address`` attaches to a running cluster (``auto``, ``ray://…``); ``None`` attaches to a cluster
    ``RAY_ADDRESS`` names, else starts a local Ray with ``ray_init`` (e.g. ``{"num_cpus": 2}``).
    ``trainable`` runs one trial from its config (``{"spec", "settings", "run_id"}``); the default runs the spec
    through ``tamt_core`` (:func:`orchestrator.trial.tune_trial`), ``bench/bench_orchestration.py`` swaps in a
    sleep to time the orchestration alone. The trials run as consecutive Tune experiments of ``window_trials``
    (:data:`WINDOW_TRIALS`); within one, a trial starts as soon as the searches it reads have finished.
    """
    finished, uri = prepare(plan, storage, mlflow_uri)
    todo = [run_id for run_id in [*plan.searches, *plan.measurements, *plan.finetunes] if run_id not in finished]
    report = SweepReport(storage, uri, len(plan), len(plan) - len(todo))
    print(f"[tamt] sweep {name}: {len(plan)} trials planned, {report.skipped} already done, {len(todo)} to run"
          + (f", in windows of {window_trials:,}" if len(todo) > window_trials else ""),
          file=out or sys.stdout, flush=True)
    stale = stale_rows(plan, finished)
    if stale:
        raised = ", ".join(f"{algorithm} v{version}" for algorithm, version in algorithm_versions().items()
                           if version > FIRST_VERSION)
        print(f"[tamt] {len(stale)} rows in the table are results of these trials by older code (this code has "
              f"{raised}): they stay in the table but are not reused, their trials run under the new versions, "
              "and the analysis uses the newest version of each", file=out or sys.stdout, flush=True)
    ledger.write_plan(storage, name, plan_record(plan), {**package_versions(), **source_revision()},
                      algorithm_versions())
    compactor = Compactor(storage)
    merged = compactor.compact_once()
    if merged is not None and merged.part is not None:
        print(f"[tamt] merged {merged.row_files:,} row files of the results table into a part",
              file=out or sys.stdout, flush=True)
    if not todo:
        return report
    ledger.clear_failures(storage, set(todo))
    started_here = connect(ray_address, ray_init)
    try:
        resources = resources.on_cluster(any(trains(plan.get(run_id).to_dict()) for run_id in todo),
                                         attached(ray_address))
    except PlanError:
        if started_here:
            ray.shutdown()
        raise
    settings = resources.trial_settings(storage, checkpoint_every_s, device, max_failures)
    counts = SweepCounts(len(todo))
    sweep_ledger = SweepLedger(storage, name, time.time())
    sweep_ledger.beat()
    tracker = MlflowTracker(uri, name, {"trials_planned": len(plan), "storage": storage.uri})
    report.experiment_id = tracker.experiment_id
    progress = Progress(counts, len(todo), report.skipped, progress_every_s, out)
    trainable = tune.with_resources(trainable, lambda config: resources.for_trial(config["spec"]))
    max_concurrent = max_concurrent or default_concurrency(resources, attached=attached(ray_address))
    remaining = deque(todo)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    compactor.start()
    try:
        for number in itertools.count(1):
            window = next_window(plan, remaining, counts, window_trials)
            if not window:
                break
            searcher = PlanSearcher(plan, window, settings)
            counts.start(searcher)
            grid = fit(trainable, searcher, num_samples=len(window),
                       name=f"{name}-{stamp}" + (f"-w{number}" if len(todo) > window_trials else ""),
                       storage=storage, max_concurrent=max_concurrent, max_failures=max_failures,
                       callbacks=[tracker, sweep_ledger, progress], trial_names=_trial_name)
            for result in grid:
                if result.error is not None:
                    run_id = result.config.get("run_id") if result.config else None
                    report.failed[run_id or "?"] = f"{type(result.error).__name__}: {result.error}"[:2000]
            interrupted = searcher.unsuggested > 0 or grid.num_terminated + grid.num_errors < len(grid)
            del grid  # this window's trials and results go now, not when the next window's replace them
            release_freed_memory()
            if interrupted:
                report.interrupted = True
                break
            counts.close()
        tracker.finish("FINISHED")
    except KeyboardInterrupt:
        report.interrupted = True
        tracker.finish("KILLED", timeout_s=10.0)
        raise
    finally:
        counts.close()
        report.succeeded = set(counts.done)
        report.blocked = set(counts.cut_off)
        sweep_ledger.beat(ended="interrupted" if report.interrupted
                          else "complete" if report.complete else "incomplete")
        compactor.stop()
        compactor.compact_once()
        if started_here:
            ray.shutdown()
    return report


@contextmanager
def _without_tune_loggers() -> Iterator[None]:
    """Tune's per-trial CSV, JSON and TensorBoard loggers off while an experiment runs (read once, when ``fit``
    builds its callbacks), and so also the warning its result grid then logs for each trial it finds no metrics
    file of: a trial's results go to the table and to MLflow."""
    variable = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
    analysis = logging.getLogger("ray.tune.analysis.experiment_analysis")
    before, level = os.environ.get(variable), analysis.level
    os.environ[variable] = "1"
    analysis.setLevel(logging.ERROR)
    try:
        yield
    finally:
        analysis.setLevel(level)
        if before is None:
            del os.environ[variable]
        else:
            os.environ[variable] = before


def fit(trainable: Callable[[dict], None], searcher: Searcher, *, num_samples: int, name: str, storage: Storage,
        max_concurrent: int, max_failures: int, callbacks: list[tune.Callback],
        param_space: dict[str, Any] | None = None, trial_names: Callable[[Any], str] | None = None
        ) -> tune.ResultGrid:
    """One Tune experiment of a sweep or a study: ``num_samples`` trials that ``searcher`` suggests, actors reused,
    retried ``max_failures`` times, under ``<storage>/ray/<name>``.

    Tune's own per-trial loggers are left out: a trial's results go to the table and to MLflow, and each
    TensorBoard writer stayed in the driver's memory after its trial ended (about 50 KiB per trial,
    ``bench/bench_scale.py --part driver``)."""
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=num_samples, reuse_actors=True,
                                    max_concurrent_trials=max_concurrent,
                                    trial_name_creator=trial_names, trial_dirname_creator=trial_names),
        run_config=tune.RunConfig(name=name, storage_path=storage.ray_storage_path(), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=max_failures), callbacks=callbacks))
    with _without_tune_loggers():
        return tuner.fit()


def attached(ray_address: str | None) -> bool:
    return bool(ray_address or os.environ.get("RAY_ADDRESS"))


def connect(ray_address: str | None, ray_init: dict[str, Any] | None) -> bool:
    """Attach to ``ray_address`` or ``RAY_ADDRESS``, else start a private local Ray with ``ray_init`` (never a
    cluster some other ``ray start`` left on the machine); returns whether the caller should shut it down."""
    if ray.is_initialized():
        return False
    options = dict(ray_init or {})
    runtime_env = {"worker_process_setup_hook": ray_logging.SETUP_HOOK, **options.pop("runtime_env", {})}
    if attached(ray_address):
        ray.init(address=ray_address or os.environ["RAY_ADDRESS"], runtime_env=runtime_env)
    else:
        ray.init(address="local", runtime_env=runtime_env, **options)
    return True


AUTOSCALING_DEMAND = 32
"""On an attached cluster, at least this many trials are queued at once, so an autoscaler sees the demand and adds
workers (Tune only asks a custom searcher for as many trials as may run concurrently)."""


def default_concurrency(resources: Resources, attached: bool) -> int:
    """As many trials as the cluster's resources hold now (a fine-tune-sized request); more on an autoscaler."""
    available = ray.cluster_resources()
    request = resources.for_stage("finetune")
    fits = [available.get(key.upper(), 0.0) / amount for key, amount in request.items() if amount > 0]
    capacity = max(1, int(min(fits))) if fits else 1
    return max(capacity, AUTOSCALING_DEMAND) if attached else capacity


def _trial_name(trial) -> str:
    spec = trial.config.get("spec", {})
    return f"{spec.get('stage', 'trial')}-{trial.config.get('run_id', trial.trial_id)}"

