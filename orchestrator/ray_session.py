"""Ray and Tune as a sweep and a study use them: one session on a cluster or a private local Ray, and one Tune
experiment run without Tune's per-trial loggers.

A sweep may attach to a cluster that outlives it (``--address``, ``RAY_ADDRESS``), run inside a Ray a caller
already started (the tests, a notebook), or start a Ray of its own; :func:`ray_session` shuts down only the Ray it
started, whichever way the run ends. A Ray it starts or attaches to sets up each worker's logging
(:mod:`orchestrator.ray_logging`).

**A quiet console.** A sweep prints its own progress and results; what Ray and Tune print beside them needs no
action from a user (the token-authentication notice, "Started a local Ray instance", a worker's C++ log line about
an actor's constructor arguments, Tune's experiment box and its "View detailed results here" folder of trial
directories, a failed attempt's traceback that Tune retries, "Resume experiment with: Tuner.restore", which is not
how a sweep resumes, the raylet's count of worker processes started on a small machine). Unless ``verbose``, Ray's
driver logs warnings and errors only, worker output stays in Ray's log files (the sweep prints where, once), and
Tune runs with its old, silent reporter; a trial that fails for good is still reported by the sweep, with its run id
and its error. ``--verbose`` shows everything.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray
from ray import tune
from ray.tune.search import Searcher

from orchestrator import ray_logging
from orchestrator.storage import Storage


def attached(ray_address: str | None) -> bool:
    """Whether a run goes to a cluster (``ray_address`` or ``RAY_ADDRESS``) rather than to a local Ray."""
    return bool(ray_address or os.environ.get("RAY_ADDRESS"))


def connect(ray_address: str | None, ray_init: dict[str, Any] | None, verbose: bool = False) -> bool:
    """Attach to ``ray_address`` or ``RAY_ADDRESS``, else start a private local Ray with ``ray_init`` (never a
    cluster some other ``ray start`` left on the machine); returns whether the caller should shut it down. Quiet
    unless ``verbose`` (see the module docstring)."""
    if ray.is_initialized():
        return False
    options = dict(ray_init or {})
    runtime_env = {"worker_process_setup_hook": ray_logging.SETUP_HOOK, **options.pop("runtime_env", {})}
    quiet = {} if verbose else {"log_to_driver": False, "logging_level": logging.ERROR}
    if attached(ray_address):
        ray.init(address=ray_address or os.environ["RAY_ADDRESS"], runtime_env=runtime_env, **quiet)
    else:
        system = {"worker_maximum_startup_concurrency": LOCAL_STARTUP_CONCURRENCY, **options.pop("_system_config", {})}
        ray.init(address="local", runtime_env=runtime_env, _system_config=system, **{**quiet, **options})
    return True


LOCAL_STARTUP_CONCURRENCY = 8
"""Worker processes a private local Ray starts at once. Ray's default is the machine's CPU count, and its raylet
warns once more than four times that have started; a Ray Train search starts about six helper processes of its own
(controller, synchronisation, data, preemption and placement-group watchers) beside its workers, so two searches
on a 2-CPU laptop set off that warning, which asks nothing of a user."""


def logs_directory() -> str | None:
    """Where this node's Ray writes its processes' logs (the trials' output among them)."""
    try:
        return ray._private.worker.global_worker.node.get_logs_dir_path()
    except AttributeError:  # attached through Ray Client: the logs are on the cluster
        return None


@contextmanager
def ray_session(ray_address: str | None, ray_init: dict[str, Any] | None, verbose: bool = False) -> Iterator[None]:
    """Ray for the length of the ``with`` block (:func:`connect`); on leaving it, even by an error or Ctrl-C, the
    Ray this session started is shut down, and a Ray that was already running is left as it was."""
    started_here = connect(ray_address, ray_init, verbose)
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


QUIET_TUNE = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0",
              "TUNE_PRINT_ALL_TRIAL_ERRORS": "0"}
"""Tune without its per-trial loggers, its experiment box and its per-attempt tracebacks (read when ``fit`` starts)."""
QUIET_LOGGERS = {"ray.tune.analysis.experiment_analysis": logging.ERROR, "ray.tune.tune": logging.ERROR,
                 "ray.tune": logging.ERROR, "mlflow": logging.WARNING}
"""Loggers of the driver held to these levels while an experiment runs quietly."""


@contextmanager
def _quiet_tune(verbose: bool) -> Iterator[None]:
    """Tune's per-trial CSV, JSON and TensorBoard loggers off while an experiment runs (a trial's results go to the
    table and to MLflow), and so also the warning its result grid then logs for each trial it finds no metrics file
    of; unless ``verbose``, Tune's console output too (see the module docstring)."""
    variables = QUIET_TUNE if not verbose else {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
    loggers = QUIET_LOGGERS if not verbose else {"ray.tune.analysis.experiment_analysis": logging.ERROR}
    before = {name: os.environ.get(name) for name in variables}
    levels = {name: logging.getLogger(name).level for name in loggers}
    os.environ.update(variables)
    for name, level in loggers.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def fit(trainable: Callable[[dict], None], searcher: Searcher, *, num_samples: int, name: str, storage: Storage,
        max_concurrent: int, max_failures: int, callbacks: list[tune.Callback],
        param_space: dict[str, Any] | None = None, trial_names: Callable[[Any], str] | None = None,
        stopper: tune.Stopper | None = None, verbose: bool = False) -> tune.ResultGrid:
    """One Tune experiment of a sweep or a study: ``num_samples`` trials that ``searcher`` suggests, actors reused,
    retried ``max_failures`` times, under ``<storage>/ray/<name>``; ``stopper`` may end it early.

    Tune's own per-trial loggers are left out: a trial's results go to the table and to MLflow, and each
    TensorBoard writer stayed in the driver's memory after its trial ended (about 50 KiB per trial,
    ``bench/bench_scale.py --part driver``)."""
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=num_samples, reuse_actors=True,
                                    max_concurrent_trials=max_concurrent,
                                    trial_name_creator=trial_names, trial_dirname_creator=trial_names),
        run_config=tune.RunConfig(name=name, storage_path=storage.ray_storage_path(), verbose=int(verbose),
                                  stop=stopper, failure_config=tune.FailureConfig(max_failures=max_failures),
                                  callbacks=callbacks))
    with _quiet_tune(verbose):
        return tuner.fit()
