"""Run a plan on Ray: every unfinished trial, in Tune experiments whose searcher hands out trials as their inputs exist.

:func:`run_sweep` is a sweep's driver. It checks what can be checked before Ray starts (:func:`prepare`), records
the plan for ``python -m sweeps status`` (:func:`plan_record`), runs the trials in windows
(:mod:`orchestrator.scheduler`) as Ray Tune experiments (:mod:`orchestrator.ray_session`) watched by MLflow, the
ledger and the progress line (:mod:`orchestrator.callbacks`), and returns what happened (:class:`SweepReport`).
Tune keeps doing what it does well: placing trials on nodes with the resources they ask for
(:mod:`orchestrator.resources`), retrying a failed trial (``FailureConfig``), stopping cleanly on Ctrl-C. Which
trials are already done is read from the results table, not from Tune's experiment state, so a rerun (even of a grid
that has grown) runs only what is missing, and an interrupted fine-tune continues from the checkpoint in its run
directory.
"""

from __future__ import annotations

import itertools
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from ray import tune

from tamt_core.ids import FIRST_VERSION, algorithm_versions

from orchestrator import ledger, results
from orchestrator.callbacks import SweepLedger
from orchestrator.compaction import Compactor
from orchestrator.control import STOP_GRACE_S, Drain, StallLimits, SweepControl, Watchdog, on_sigterm
from orchestrator.estimate import THROUGHPUT, UNIT_SECONDS, Throughput, table_for, trial_seconds
from orchestrator.memory import release_freed_memory
from orchestrator.plan import Plan
from orchestrator.progress import EtaModel, LiveProgress, progress_units, trial_costs
from orchestrator.prefetch import check_offline_inputs
from orchestrator.provenance import package_versions, source_revision
from orchestrator.ray_session import attached, fit, logs_directory, ray_session
from orchestrator.resources import Resources, cluster_size, default_concurrency
from orchestrator.scheduler import WINDOW_TRIALS, PlanSearcher, SweepCounts, next_window
from orchestrator.specs import FinetuneSpec, SearchSpec, Spec
from orchestrator.storage import Storage
from orchestrator.tracking import MlflowTracker, TrackingError, check_tracking_uri, run_name
from orchestrator.train import trains
from orchestrator.trial import check_models, tune_trial


def plan_record(plan: Plan, table: Throughput = THROUGHPUT["v100"]) -> list[dict[str, Any]]:
    """Every trial of ``plan`` as ``status`` needs it: stage, method, label, the searches it waits for, its
    estimated seconds by ``table`` (``gpu_s``, in the table's unit) and, once a version has been raised, the ids of
    its rows under older algorithm versions (stale rows)."""
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


def several_models(plan: Plan) -> bool:
    """Whether the plan's trials use more than one model (their run names then say which)."""
    return len({spec.model for spec in plan.specs()}) > 1


def stale_rows(plan: Plan, finished: set[str]) -> dict[str, str]:
    """Rows of the plan's trials by older code: stale row id → the trial's run id today."""
    return {earlier: run_id for run_id in plan.run_ids() for earlier in plan.earlier_ids(run_id)
            if earlier in finished}


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
    signalled: bool = False
    """Stopped on SIGTERM (a time limit, a preemption, ``scancel``): the running trials were asked to checkpoint."""
    cut_off: int = 0
    """Of those, how many had not checkpointed when the grace period ended."""
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
    check_offline_inputs(spec for spec in plan.specs() if spec.run_id not in finished)  # before check_models' reads
    check_models(spec for spec in plan.specs() if spec.run_id not in finished)
    return finished, uri


def run_sweep(plan: Plan, *, name: str, storage: Storage, mlflow_uri: str | None = None,
              resources: Resources = Resources(), max_concurrent: int | None = None, max_failures: int = 3,
              checkpoint_every_s: float = 300.0, device: str | None = None, ray_address: str | None = None,
              ray_init: dict[str, Any] | None = None, progress_every_s: float = 10.0,
              out: TextIO | None = None, trainable: Callable[[dict], None] = tune_trial,
              window_trials: int = WINDOW_TRIALS, stop_grace_s: float = STOP_GRACE_S,
              stall_limits: StallLimits = StallLimits(), deterministic: bool = False,
              verbose: bool = False) -> SweepReport:
    """Run every unfinished trial of ``plan``; returns what happened. Safe to rerun: finished trials are skipped.

    ``ray_address`` attaches to a running cluster (``auto``, ``ray://…``); ``None`` attaches to a cluster
    ``RAY_ADDRESS`` names, else starts a local Ray with ``ray_init`` (e.g. ``{"num_cpus": 2}``).
    ``trainable`` runs one trial from its config (``{"spec", "settings", "run_id"}``); the default runs the spec
    through ``tamt_core`` (:func:`orchestrator.trial.tune_trial`), ``bench/bench_orchestration.py`` swaps in a
    sleep to time the orchestration alone. The trials run as consecutive Tune experiments of ``window_trials``
    (:data:`WINDOW_TRIALS`); within one, a trial starts as soon as the searches it reads have finished.

    On SIGTERM the running trials checkpoint and the sweep returns within ``stop_grace_s`` (``report.signalled``);
    a trial without progress for longer than its ``stall_limits`` is stopped and retried (:mod:`orchestrator.control`).
    ``deterministic`` runs the trials with deterministic kernels (:func:`tamt_core.device.deterministic`);
    ``verbose`` shows what Ray and Tune print (:mod:`orchestrator.ray_session`).
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
    table = table_for(plan, on_gpu=resources.search_gpu > 0 or resources.finetune_gpu > 0)
    ledger.write_plan(storage, name, plan_record(plan, table), {**package_versions(), **source_revision()},
                      algorithm_versions(), table.unit, UNIT_SECONDS[table.unit])
    compactor = Compactor(storage)
    merged = compactor.compact_once()
    if merged is not None and merged.part is not None:
        print(f"[tamt] merged {merged.row_files:,} row files of the results table into a part",
              file=out or sys.stdout, flush=True)
    if not todo:
        return report
    ledger.clear_failures(storage, set(todo))
    with ray_session(ray_address, ray_init, verbose):
        logs = logs_directory()
        if logs and not verbose:
            print(f"[tamt] Ray's logs (the trials' own output): {logs}", file=out or sys.stdout, flush=True)
        resources = resources.on_cluster(any(trains(plan.get(run_id).to_dict()) for run_id in todo),
                                         attached(ray_address))
        control_name = f"tamt-control-{uuid.uuid4().hex[:12]}"
        control = SweepControl.options(name=control_name).remote()
        settings = resources.trial_settings(storage, checkpoint_every_s, device, max_failures, control_name,
                                            deterministic)
        drain, watchdog = Drain(control, stop_grace_s), Watchdog(control, stall_limits)
        counts = SweepCounts(len(todo))
        sweep_ledger = SweepLedger(storage, name, time.time(), cluster_size(), watchdog.reasons)
        sweep_ledger.beat()
        tracker = MlflowTracker(uri, name, {"trials_planned": len(plan), "storage": storage.uri},
                                searches=plan.searches, storage=storage, model_in_names=several_models(plan))
        report.experiment_id = tracker.experiment_id
        trainable = tune.with_resources(trainable, lambda config: resources.for_trial(config["spec"]))
        max_concurrent = max_concurrent or default_concurrency(resources, attached=attached(ray_address))
        costs = trial_costs(Plan.of(plan.get(run_id) for run_id in todo), table, progress_units)
        progress = LiveProgress(counts, EtaModel(costs, slots=max_concurrent),
                                {run_id: run_name(plan.get(run_id)) for run_id in todo}, report.skipped,
                                watchdog.latest, progress_every_s, out)
        remaining = deque(todo)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        compactor.start()
        try:
            for number in itertools.count(1):
                window = next_window(plan, remaining, counts, window_trials)
                if not window:
                    break
                searcher = PlanSearcher(plan, window, settings, hold=lambda: drain.requested)
                counts.start(searcher)
                with on_sigterm(drain.request):
                    grid = fit(trainable, searcher, num_samples=len(window),
                               name=f"{name}-{stamp}" + (f"-w{number}" if len(todo) > window_trials else ""),
                               storage=storage, max_concurrent=max_concurrent, max_failures=max_failures,
                               callbacks=[tracker, sweep_ledger, progress, drain, watchdog],
                               trial_names=_trial_name, stopper=drain, verbose=verbose)
                for result in grid:
                    if result.error is not None:
                        run_id = result.config.get("run_id") if result.config else None
                        report.failed[run_id or "?"] = f"{type(result.error).__name__}: {result.error}"[:2000]
                interrupted = (drain.requested or searcher.unsuggested > 0
                               or grid.num_terminated + grid.num_errors < len(grid))
                del grid  # this window's trials and results go now, not when the next window's replace them
                release_freed_memory()
                if interrupted:
                    report.interrupted = True
                    break
                counts.close()
            if drain.requested:
                report.signalled, report.cut_off = True, len(drain.unstopped)
                tracker.finish("KILLED", timeout_s=min(10.0, stop_grace_s / 4))
            else:
                tracker.finish("FINISHED")
        except KeyboardInterrupt:
            report.interrupted = True
            tracker.finish("KILLED", timeout_s=10.0)
            raise
        except Exception:  # Tune or Ray gave up (a node out of memory): the runs say so, not RUNNING for ever
            tracker.finish("FAILED", timeout_s=10.0)
            raise
        finally:
            counts.close()
            report.succeeded = set(counts.succeeded)
            report.blocked = set(counts.blocked)
            sweep_ledger.beat(ended="interrupted" if report.interrupted
                              else "complete" if report.complete else "incomplete")
            compactor.stop()
            if not drain.requested:  # stopping on a signal leaves the merge to the next run: the grace is short
                compactor.compact_once()
    return report


def _trial_name(trial) -> str:
    spec = trial.config.get("spec", {})
    return f"{spec.get('stage', 'trial')}-{trial.config.get('run_id', trial.trial_id)}"

