"""What a sweep leaves in its storage beside the results table, so that ``python -m sweeps status`` can say where
it stands from the storage alone (any machine, read-only, while the sweep runs or long after)::

    sweeps/<name>.json           the sweep's plan as of its last start: every trial's stage, method, label, the
                                 searches it waits for, its estimated GPU seconds and the ids its rows had under
                                 older algorithm versions (:func:`write_plan`)
    sweeps/<name>.driver.json    the driver's heartbeat: host, pid, the Ray cluster it runs on, when it started,
                                 its last beat, the trials it runs now, and when it ended (:func:`write_heartbeat`)
    failures/<run_id>.json       the last error of a trial that failed for good, after its retries
                                 (:func:`record_failure`); cleared when a sweep runs that trial again

Every file is written whole and atomically (``tamt_table.write_atomically``); none is needed to run a sweep, only to
report on it. This module reads and writes JSON and nothing else, so ``status`` starts in a fraction of a second.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import pyarrow.fs as pafs

from tamt_table import write_atomically

from orchestrator.storage import Storage

HEARTBEAT_EVERY_S = 30.0
"""How often a running driver rewrites its heartbeat; one older than three periods means the driver is gone."""
FAILURE_TEXT_CHARS = 20_000
"""The end of a failed trial's error text that is kept (the traceback's last frames and the message)."""


def _write_json(storage: Storage, path: str, document: dict[str, Any]) -> None:
    fs, _ = storage.filesystem()
    write_atomically(fs, path, (json.dumps(document, sort_keys=True) + "\n").encode())


def _read_json(fs: pafs.FileSystem, path: str) -> dict[str, Any] | None:
    try:
        with fs.open_input_stream(path) as stream:
            return json.loads(stream.readall())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_plan(storage: Storage, name: str, trials: list[dict[str, Any]], provenance: dict[str, str],
               algorithm_versions: dict[str, int], unit: str = "GPU-h", unit_s: float = 3600.0) -> None:
    """Record the plan of sweep ``name``: ``trials`` as :func:`orchestrator.sweep.plan_record` lists them, the
    code that planned them (``provenance``), its ``algorithm_versions`` and the ``unit`` of the trials' estimates
    (``GPU-h`` or ``CPU-min``, :class:`orchestrator.estimate.Throughput`) with its seconds ``unit_s``."""
    _write_json(storage, storage.path("sweeps", f"{name}.json"), {
        "sweep": name, "planned_at": time.time(), "provenance": provenance,
        "algorithm_versions": algorithm_versions, "hours_unit": unit, "unit_s": unit_s,
        "trials": trials})


def read_plans(storage: Storage) -> dict[str, dict[str, Any]]:
    """Every sweep's recorded plan, by sweep name."""
    fs, _ = storage.filesystem()
    plans = {}
    for stem, path in sorted(storage.stems("sweeps", ".json").items()):
        if not stem.endswith(".driver"):
            document = _read_json(fs, path)
            if document is not None:
                plans[stem] = document
    return plans


def write_heartbeat(storage: Storage, name: str, started_at: float, running: list[str],
                    ended: str | None = None, cluster: dict[str, float] | None = None) -> None:
    """The driver of sweep ``name`` is alive, on a Ray cluster of ``cluster`` (nodes, CPUs, GPUs), and runs
    ``running`` (run ids); ``ended`` (``complete``, ``incomplete``, ``interrupted``) when it stops."""
    _write_json(storage, storage.path("sweeps", f"{name}.driver.json"), {
        "sweep": name, "host": socket.gethostname(), "pid": os.getpid(), "started_at": started_at,
        "beat_at": time.time(), "every_s": HEARTBEAT_EVERY_S, "running": sorted(running), "ended": ended,
        "cluster": cluster or {}})


def read_heartbeat(storage: Storage, name: str) -> dict[str, Any] | None:
    fs, _ = storage.filesystem()
    return _read_json(fs, storage.path("sweeps", f"{name}.driver.json"))


def record_failure(storage: Storage, run_id: str, *, sweep: str, stage: str, label: str, error: str) -> None:
    """Keep the error of a trial that failed for good, so it outlives the driver that saw it."""
    _write_json(storage, storage.path("failures", f"{run_id}.json"), {
        "run_id": run_id, "sweep": sweep, "stage": stage, "label": label, "failed_at": time.time(),
        "error": error[-FAILURE_TEXT_CHARS:]})


def failed_run_ids(storage: Storage) -> dict[str, str]:
    """Run id → path of its failure record (one listing; the records are read only where shown)."""
    return storage.stems("failures", ".json")


def read_failure(storage: Storage, path: str) -> dict[str, Any] | None:
    fs, _ = storage.filesystem()
    return _read_json(fs, path)


def clear_failures(storage: Storage, run_ids: set[str]) -> None:
    """Forget the failures of trials that are about to run again."""
    fs, _ = storage.filesystem()
    for run_id, path in failed_run_ids(storage).items():
        if run_id in run_ids:
            fs.delete_file(path)
