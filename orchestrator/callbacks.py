"""The Tune callbacks of a sweep's driver beside MLflow's: the progress line on the console, and the ledger that
``python -m sweeps status`` reads.

Both see every trial event of every window and only report; neither decides what runs (that is
:mod:`orchestrator.scheduler`'s job), so a sweep or a study can take either without the other.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import TextIO

from ray import tune

from orchestrator import ledger
from orchestrator.specs import spec_from_dict
from orchestrator.storage import Storage
from orchestrator.tracking import run_name


class Progress(tune.Callback):
    """One line every ``every_s`` seconds: done / running / pending / failed and an ETA from this run's pace."""

    def __init__(self, counts, total: int, skipped: int, every_s: float = 10.0, out: TextIO | None = None) -> None:
        """``counts`` has the sets ``succeeded``, ``failed``, ``blocked`` and the number ``unsuggested`` (a
        :class:`~orchestrator.scheduler.SweepCounts`, or a :class:`~orchestrator.scheduler.PlanSearcher` of one
        experiment)."""
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


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class SweepLedger(tune.Callback):
    """Keeps what ``python -m sweeps status`` reads in the storage (:mod:`orchestrator.ledger`): the driver's
    heartbeat with the trials running now, and the error of each trial that fails for good.

    The running trials are counted as the live progress counts them (started, not yet complete or failed for
    good), and a change is written within ``CHANGE_EVERY_S``, so ``status`` and the progress line agree. The last
    heartbeat of an interrupted sweep keeps them: ``status`` then shows them as interrupted, to be resumed."""

    CHANGE_EVERY_S = 2.0
    """The shortest time between two heartbeats written for a change of the running trials."""

    def __init__(self, storage: Storage, sweep: str, started_at: float, cluster: dict[str, float],
                 reasons: dict[str, str] | None = None) -> None:
        """``reasons``: why the driver stopped a trial itself (run id → text, the watchdog's), the last line of its
        failure record (the line ``status`` shows)."""
        self.storage, self.sweep, self.started_at, self.cluster = storage, sweep, started_at, cluster
        self.reasons = {} if reasons is None else reasons
        self.last_beat = time.monotonic()
        self.running: dict[str, str] = {}  # trial id → run id
        self.changed = False

    def beat(self, ended: str | None = None) -> None:
        """Write the heartbeat; ``ended`` (``complete``, ``incomplete``, ``interrupted``) once the driver stops,
        with the trials still running then only when it was interrupted."""
        self.last_beat, self.changed = time.monotonic(), False
        running = [] if ended in ("complete", "incomplete") else list(self.running.values())
        ledger.write_heartbeat(self.storage, self.sweep, self.started_at, running, ended, self.cluster)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if "run_id" in trial.config:
            self.running[trial.trial_id] = trial.config["run_id"]
            self.changed = True

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.changed |= self.running.pop(trial.trial_id, None) is not None

    def on_step_end(self, iteration, trials, **info) -> None:
        since = time.monotonic() - self.last_beat
        if since >= ledger.HEARTBEAT_EVERY_S or (self.changed and since >= self.CHANGE_EVERY_S):
            self.beat()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        """Called once Tune gives a trial up (its retries spent)."""
        self.changed |= self.running.pop(trial.trial_id, None) is not None
        spec = spec_from_dict(trial.config["spec"])
        written = Path(trial.error_file) if trial.error_file else None  # Tune's text of the error, on this node
        error = (written.read_text() if written is not None and written.is_file()
                 else f"trial {trial.trial_id} failed; see {trial.local_path}")
        reason = self.reasons.get(trial.config["run_id"])
        ledger.record_failure(self.storage, trial.config["run_id"], sweep=self.sweep, stage=spec.stage,
                              label=run_name(spec), error=str(error) if reason is None else f"{error}\n{reason}")
