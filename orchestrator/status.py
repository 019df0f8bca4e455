"""Where the sweeps of a storage stand, from the storage alone: ``python -m sweeps status --storage DIR|s3://…``.

For each sweep that recorded its plan there (:mod:`orchestrator.ledger`) and each stage: trials planned, done,
running, interrupted (running when the driver stopped), failed, blocked (waiting for a failed search), not started,
and stale rows (results of the same trials by older algorithm versions, kept but not reused); hours done and
left from the plan's estimates (V100 GPU-hours, or CPU trial-minutes for a sweep on CPUs); the last error of each
failed trial; and whether the driver is alive.

It reads a handful of small files, the listings of the results table and the run ids of its parts, writes
nothing, and imports no training code, so it answers in well under a second on a paper-sized store, on a shared
filesystem or an object store, while a sweep runs or after.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import pyarrow.fs as pafs

import tamt_table
from tamt_core.ids import algorithm_versions

from orchestrator import ledger
from orchestrator.storage import DEFAULT_STORAGE, MARKER, Storage

STATES = ("done", "running", "interrupted", "failed", "blocked", "not started")
"""What a planned trial can be, in the order the table prints them."""
STAGE_ORDER = ("search", "finetune", "dense-loss", "similarity")
SHOWN_FAILURES = 20
"""Failed trials listed with their error per sweep (the others are counted; each error is one small file)."""


@dataclass
class StageStatus:
    """One stage of one sweep: trials per state, stale rows, and the plan's GPU seconds done and left."""

    planned: int = 0
    states: Counter = field(default_factory=Counter)
    stale: int = 0
    gpu_s_done: float = 0.0
    gpu_s_left: float = 0.0

    def add(self, other: StageStatus) -> None:
        self.planned += other.planned
        self.states.update(other.states)
        self.stale += other.stale
        self.gpu_s_done += other.gpu_s_done
        self.gpu_s_left += other.gpu_s_left


@dataclass
class SweepStatus:
    name: str
    planned_at: float
    provenance: dict[str, str]
    driver: str
    """``running``, ``lost`` (no heartbeat for three periods, and no end recorded), ``ended <how>`` or ``unknown``."""
    heartbeat: dict[str, Any] | None
    stages: dict[str, StageStatus]
    failed: list[dict[str, Any]]
    """Trials failed for good: ``run_id``, ``label``, ``stage``, ``error`` (the kept text), ``path``."""
    outdated: dict[str, tuple[int, int]]
    """Algorithms whose version in this code differs from the one the plan was made with: (planned, now)."""
    unit: str = "GPU-h"
    """The unit of the plan's estimates: V100 ``GPU-h``, or ``CPU-min`` of a sweep on CPUs (the plan records it)."""
    unit_s: float = 3600.0
    """Seconds in one :attr:`unit`."""

    @property
    def total(self) -> StageStatus:
        total = StageStatus()
        for stage in self.stages.values():
            total.add(stage)
        return total


def driver_state(heartbeat: dict[str, Any] | None, now: float) -> str:
    if heartbeat is None:
        return "unknown"
    if heartbeat.get("ended"):
        return f"ended {heartbeat['ended']}"
    return "running" if now - heartbeat["beat_at"] < 3 * heartbeat.get("every_s", ledger.HEARTBEAT_EVERY_S) else "lost"


def sweep_status(plan: dict[str, Any], finished: set[str], failures: dict[str, str],
                 heartbeat: dict[str, Any] | None, now: float) -> SweepStatus:
    """The status of one recorded ``plan`` given the run ids with a row (``finished``), the failure records
    (``failures``: run id → path) and the driver's last ``heartbeat``."""
    driver = driver_state(heartbeat, now)
    in_flight = set(heartbeat.get("running", [])) if heartbeat is not None else set()
    failed_here = {trial["run_id"] for trial in plan["trials"]
                   if trial["run_id"] in failures and trial["run_id"] not in finished}
    stages: dict[str, StageStatus] = {}
    failed = []
    for trial in plan["trials"]:
        run_id = trial["run_id"]
        stage = stages.setdefault(trial["stage"], StageStatus())
        stage.planned += 1
        stage.stale += sum(1 for earlier in trial.get("earlier", ()) if earlier in finished)
        if run_id in finished:
            state = "done"
        elif run_id in failed_here:
            state = "failed"
            failed.append({**trial, "path": failures[run_id]})
        elif any(need in failed_here for need in trial["needs"]):
            state = "blocked"
        elif run_id in in_flight:  # the driver's last heartbeat had it running
            state = "running" if driver == "running" else "interrupted"
        else:
            state = "not started"
        stage.states[state] += 1
        if state == "done":
            stage.gpu_s_done += trial["gpu_s"]
        else:
            stage.gpu_s_left += trial["gpu_s"]
    stages = {name: stages[name] for name in sorted(stages, key=lambda n: (STAGE_ORDER + (n,)).index(n))}
    planned_versions = plan.get("algorithm_versions", {})
    outdated = {name: (planned_versions.get(name, 1), version) for name, version in algorithm_versions().items()
                if planned_versions.get(name, 1) != version}
    return SweepStatus(plan["sweep"], plan["planned_at"], plan.get("provenance", {}), driver, heartbeat, stages,
                       failed, outdated, plan.get("hours_unit", "GPU-h"),
                       plan.get("unit_s", 3600.0))


def collect(storage: Storage, names: Sequence[str] | None = None) -> tuple[list[SweepStatus], int]:
    """Every recorded sweep's status (or those ``names``), and the number of rows in the table."""
    plans = ledger.read_plans(storage)
    if names:
        unknown = sorted(set(names) - set(plans))
        if unknown:
            raise StatusError(f"no sweep named {', '.join(unknown)} has recorded a plan in {storage.uri}; it has: "
                              f"{', '.join(plans) or 'none'}")
        plans = {name: plans[name] for name in names}
    fs, _ = storage.filesystem()
    finished = tamt_table.run_ids(fs, storage.table_path())
    failures = ledger.failed_run_ids(storage)
    now = time.time()
    statuses = [sweep_status(plan, finished, failures, ledger.read_heartbeat(storage, name), now)
                for name, plan in plans.items()]
    for status in statuses:
        for trial in status.failed[:SHOWN_FAILURES]:
            record = ledger.read_failure(storage, trial["path"]) or {}
            trial["error"] = record.get("error", "")
    return statuses, len(finished)


class StatusError(ValueError):
    """The storage holds no tamt store, or not the sweep asked for; names the fix."""


def _clock(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min" if seconds < 7200 else f"{seconds // 3600} h"


def _summary(error: str) -> str:
    """The line of an error text that says what went wrong: its last non-blank line."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no error text kept)"


def render(status: SweepStatus, now: float, out: TextIO) -> None:
    source = status.provenance
    code = ", ".join(part for part in (f"tamt {source['tamt']}" if "tamt" in source else "",
                                       f"git {source['git_commit'][:10]}" if "git_commit" in source else "",
                                       "uncommitted changes" if source.get("git_dirty") == "true" else "") if part)
    print(f"\nsweep {status.name} (planned {_clock(status.planned_at)}{'; ' + code if code else ''})", file=out)
    beat = status.heartbeat
    cluster = (beat or {}).get("cluster") or {}
    on = (f" on a Ray cluster of {cluster['nodes']} nodes ({cluster['cpus']:g} CPUs, {cluster['gpus']:g} GPUs)"
          if cluster.get("nodes") else "")
    if status.driver == "running":
        print(f"  driver: running on {beat['host']} (pid {beat['pid']}){on} since {_clock(beat['started_at'])} "
              f"({_ago(now - beat['started_at'])}), last heard {_ago(now - beat['beat_at'])} ago", file=out)
    elif status.driver == "lost":
        print(f"  driver: silent since {_clock(beat['beat_at'])} ({_ago(now - beat['beat_at'])}) without ending: "
              f"killed, or its machine lost; rerun the sweep to go on (finished trials are kept)", file=out)
    elif beat is not None:
        print(f"  driver: {status.driver} at {_clock(beat['beat_at'])}{on}", file=out)
    print(f"  {'stage':11s} {'planned':>7s} " + " ".join(f"{state:>{max(len(state), 5)}s}" for state in STATES)
          + f" {'stale':>5s} {status.unit + ' done':>10s} {status.unit + ' left':>10s}", file=out)
    per_unit = status.unit_s
    for name, stage in [*status.stages.items(), ("total", status.total)]:
        print(f"  {name:11s} {stage.planned:7d} "
              + " ".join(f"{stage.states.get(state, 0):{max(len(state), 5)}d}" for state in STATES)
              + f" {stage.stale:5d} {stage.gpu_s_done / per_unit:10.1f} {stage.gpu_s_left / per_unit:10.1f}", file=out)
    if status.unit == "CPU-min":
        print("  CPU-min: estimated minutes of one CPU trial on the built-in model (docs/smoke.md's figures); trials "
              "run side by side, so the wall time left is about CPU-min left / trials at a time", file=out)
    if status.total.stale:
        print(f"  stale: {status.total.stale} rows are results of these trials by older algorithm versions; the "
              "sweep does not reuse them and the analysis leaves them out (python -m analysis.figures "
              "--include-stale keeps them)", file=out)
    if status.failed:
        print(f"  failed for good ({len(status.failed)}; the whole error is in failures/<run_id>.json):", file=out)
        for trial in status.failed[:SHOWN_FAILURES]:
            print(f"    {trial['label']} [{trial['run_id']}]: {_summary(trial.get('error', ''))}", file=out)
        if len(status.failed) > SHOWN_FAILURES:
            print(f"    … and {len(status.failed) - SHOWN_FAILURES} more", file=out)
    for name, (planned, now_version) in status.outdated.items():
        print(f"  note: planned with {name} v{planned}, this code has v{now_version}; rerun the sweep to plan and "
              "run it under this code", file=out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweeps status", description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=DEFAULT_STORAGE,
                        help=f"the sweeps' --storage: a directory or s3://, gs://, file:// (default {DEFAULT_STORAGE})")
    parser.add_argument("--sweep", action="append", help="only this sweep (repeatable; default: every sweep)")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    storage = Storage.at(args.storage)
    try:
        fs, _ = storage.filesystem()
        if fs.get_file_info(storage.path(MARKER)).type != pafs.FileType.File:
            raise StatusError(f"no tamt store at {args.storage} (no {MARKER}); pass the --storage a sweep ran with")
        statuses, rows = collect(storage, args.sweep)
    except (StatusError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    now = time.time()
    sweeps = f"{len(statuses)} sweep" + ("" if len(statuses) == 1 else "s")
    print(f"[tamt] status of {storage.uri}: {sweeps}, {rows:,} rows in the results table "
          f"(read in {time.perf_counter() - started:.2f} s)", file=out)
    if not statuses:
        print("  no sweep has recorded a plan here yet (a sweep records it when it starts)", file=out)
    for status in statuses:
        render(status, now, out)
    return 0
