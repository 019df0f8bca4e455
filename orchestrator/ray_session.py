"""Ray and Tune as a sweep and a study use them: one session on a cluster or a private local Ray, and one Tune
experiment run without Tune's per-trial loggers.

A sweep may attach to a cluster that outlives it (``--address``, ``RAY_ADDRESS``), run inside a Ray a caller
already started (the tests, a notebook), or start a Ray of its own; :func:`ray_session` shuts down only the Ray it
started, whichever way the run ends. A Ray it starts or attaches to sets up each worker's logging
(:mod:`orchestrator.ray_logging`).
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


@contextmanager
def ray_session(ray_address: str | None, ray_init: dict[str, Any] | None) -> Iterator[None]:
    """Ray for the length of the ``with`` block (:func:`connect`); on leaving it, even by an error or Ctrl-C, the
    Ray this session started is shut down, and a Ray that was already running is left as it was."""
    started_here = connect(ray_address, ray_init)
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


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
        param_space: dict[str, Any] | None = None, trial_names: Callable[[Any], str] | None = None,
        stopper: tune.Stopper | None = None) -> tune.ResultGrid:
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
        run_config=tune.RunConfig(name=name, storage_path=storage.ray_storage_path(), verbose=0, stop=stopper,
                                  failure_config=tune.FailureConfig(max_failures=max_failures), callbacks=callbacks))
    with _without_tune_loggers():
        return tuner.fit()
