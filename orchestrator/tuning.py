"""Task-agnostic tuning of TAMT's lr, α and φ with Optuna through Ray Tune, on the pre-training dev loss only.

App. C: the authors did "not perform hyper-parameter search for TAMT based on the downstream performance"; a study
here keeps that rule and minimises the dev loss of the mask's own objective (MLM or KD, §4.1.2), so no downstream
data is touched. Each Optuna trial is an ordinary :class:`SearchSpec`, run by :func:`orchestrator.trial.run_trial`:
it lands in the results table like any search, shares its run directory and MLflow child with an identical search
of another sweep, and is never computed twice.

The study lives in an Optuna RDB store beside the runs (``<storage>/optuna.db``). A rerun after a killed driver
loads it: trials the study completed stay done; a trial the driver did not live to record but whose row was
written is recorded from the table; a trial cut off mid-run is marked failed and its parameters queued again (its
search resumes from its last checkpoint). The sampler is reseeded with the number of trials already in the study, so a
resumed study draws new points instead of replaying the first ones. The best setting is written as
``<storage>/studies/<name>/best.json``, which ``--search-settings`` lays over any sweep's grids.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import optuna
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from tamt_table import write_atomically

from orchestrator import results
from orchestrator.callbacks import Progress
from orchestrator.plan import Plan
from orchestrator.ray_session import attached, fit, ray_session
from orchestrator.resources import Resources, default_concurrency
from orchestrator.storage import Storage, StorageError
from orchestrator.study import TamtStudy
from orchestrator.sweep import prepare
from orchestrator.tracking import MlflowTracker
from orchestrator.trial import TrialSettings, run_trial, worker_setup

def study_storage_uri(storage: Storage) -> str:
    if not storage.is_local:
        raise StorageError(f"storage {storage.uri} is remote; an Optuna study needs a database: run the study on a "
                           "local or shared-filesystem --storage")
    return f"sqlite:///{storage.local_root / 'optuna.db'}"


def load_study(study: TamtStudy, storage: Storage) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines say what the study does
    return optuna.create_study(storage=study_storage_uri(storage), study_name=study.name, direction="minimize",
                               load_if_exists=True)


def recover(study: TamtStudy, ostudy: optuna.Study, storage: Storage) -> dict[str, int]:
    """Settle the trials a killed driver left RUNNING: record those whose row exists, requeue the others."""
    finished = results.finished_run_ids(storage)
    recorded = requeued = 0
    for trial in ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        spec = study.spec(trial.params)
        if spec.run_id in finished:
            ostudy.tell(trial.number, results.read_row(storage, spec.run_id)[study.objective])
            recorded += 1
        else:
            ostudy.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            ostudy.enqueue_trial(trial.params)
            requeued += 1
    return {"recorded": recorded, "requeued": requeued}


def completed(ostudy: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def best_path(storage: Storage, study: TamtStudy) -> str:
    return storage.path("studies", study.name, "best.json")


def write_best(study: TamtStudy, ostudy: optuna.Study, storage: Storage) -> dict[str, Any] | None:
    """``{method: best params}`` as ``--search-settings`` reads it; ``None`` before any trial completed."""
    if not completed(ostudy):
        return None
    best = {study.method: dict(ostudy.best_params)}
    fs, _ = storage.filesystem()
    write_atomically(fs, best_path(storage, study), (json.dumps(best, indent=2, sort_keys=True) + "\n").encode())
    return best


def study_trial(config: dict[str, Any]) -> None:
    """The Ray Tune trainable of a study: one search with the sampled setting, reported as its dev loss."""
    study = TamtStudy.from_dict(config["study"])
    row = run_trial(study.spec(study.params_of(config)), TrialSettings(**config["settings"]), tune.report,
                    worker_setup())
    tune.report({"objective": row[study.objective], "mlm_dev_loss": row["mlm_dev_loss"],
                 "kd_dev_loss": row["kd_dev_loss"], "tamt_done": 1})


class StudyCounts(tune.Callback):
    """What :class:`~orchestrator.callbacks.Progress` reads from a searcher, counted from Tune's trial events."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.succeeded: set[str] = set()
        self.failed: set[str] = set()
        self.blocked: set[str] = set()
        self.created = 0

    @property
    def unsuggested(self) -> int:
        return max(0, self.total - self.created)

    def on_step_end(self, iteration, trials, **info) -> None:
        self.created = len(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.succeeded.add(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.failed.add(trial.trial_id)


@dataclass
class StudyReport:
    study: TamtStudy
    completed: int
    ran: int
    recovered: dict[str, int]
    best: dict[str, Any] | None
    best_value: float | None
    best_file: str


def run_study(study: TamtStudy, *, storage: Storage, mlflow_uri: str | None = None,
              resources: Resources = Resources(), max_concurrent: int | None = None, max_failures: int = 3,
              checkpoint_every_s: float = 300.0, device: str | None = None, ray_address: str | None = None,
              ray_init: dict[str, Any] | None = None, progress_every_s: float = 10.0,
              out: TextIO | None = None, deterministic: bool = False) -> StudyReport:
    """Run the study's missing trials on Ray Tune with Optuna's TPE; safe to rerun after any interruption."""
    out = out or sys.stdout
    _, uri = prepare(Plan.of([study.spec(study.midpoint())]), storage, mlflow_uri)  # storage, MLflow, model
    ostudy = load_study(study, storage)
    recovered = recover(study, ostudy, storage)
    done = len(completed(ostudy))
    todo = max(0, study.trials - done)
    print(f"[tamt] study {study.name}: {study.trials} trials, {done} already complete, {todo} to run"
          + (f" ({recovered['recorded']} recorded from the table, {recovered['requeued']} requeued)"
             if any(recovered.values()) else ""), file=out, flush=True)
    ran = 0
    if todo:
        searcher = OptunaSearch(space=study.distributions(), metric="objective", mode="min",
                                sampler=optuna.samplers.TPESampler(seed=study.sampler_seed + len(ostudy.trials)),
                                study_name=study.name, storage=optuna.storages.RDBStorage(study_storage_uri(storage)))
        counts = StudyCounts(todo)
        tracker = MlflowTracker(uri, study.name, {"study": json.dumps(study.to_dict(), sort_keys=True)},
                                spec_of=lambda config: study.spec(study.params_of(config)))
        with ray_session(ray_address, ray_init):
            resources = resources.on_cluster(True, attached(ray_address))
            settings = resources.trial_settings(storage, checkpoint_every_s, device, max_failures,
                                                deterministic=deterministic)
            fit(tune.with_resources(study_trial, resources.for_trial(study.spec(study.midpoint()).to_dict())),
                searcher, num_samples=todo, name=f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}", storage=storage,
                max_concurrent=max_concurrent or default_concurrency(resources, attached=attached(ray_address)),
                max_failures=max_failures, param_space={"study": study.to_dict(), "settings": settings.to_dict()},
                callbacks=[counts, tracker, Progress(counts, todo, done, progress_every_s, out)])
            tracker.finish()
            ran = len(counts.succeeded)
        ostudy = load_study(study, storage)
    best = write_best(study, ostudy, storage)
    return StudyReport(study, len(completed(ostudy)), ran, recovered, best,
                       ostudy.best_value if best else None, best_path(storage, study))
