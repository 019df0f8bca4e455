"""The driver's hold on its running trials: a stop on SIGTERM that lets them checkpoint first, and a watchdog for
trials that hang.

A scheduler's time limit, a preemption or ``scancel --signal=TERM --batch`` ends a sweep with SIGTERM; a stuck
collective, a dead file-system mount or a data loader that never returns holds a GPU forever. Both need a channel
between the driver and its trials, which Ray Tune does not have for either: :class:`SweepControl`, one small actor
per sweep. Each trial holds a :class:`TrialLink` to it, whose thread reports the trial's progress (a count its
steps, evaluations and checkpoints raise) every few seconds and learns whether the driver asks it to stop.

* **Stopping** (:class:`Drain`). On SIGTERM the driver hands out no new trial and asks the running ones to stop:
  a fine-tune checkpoints at its next step, a search at its next sync point (every ``log_every`` steps, the point
  where its data-parallel ranks agree), and each reports ``stopped``. Once every running trial has reported, or the
  grace period is over, Tune ends the experiment; the driver exits and a rerun of the same command (or the
  scheduler's requeue) resumes each trial from its checkpoint. A trial that could not checkpoint in time loses at
  most the work since its last periodic checkpoint (``--checkpoint-every``).
* **Hung trials** (:class:`Watchdog`). A trial whose progress count has not moved for longer than its stall limit
  is stopped (its actor killed, which Tune treats as a failure): Tune retries it from its checkpoint up to
  ``--max-failures`` times, then records it failed, with the reason "stalled", and blocks the trials that wait for
  it, as for any failure.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ray
from ray import tune

log = logging.getLogger(__name__)

BEAT_EVERY_S = 2.0
"""How often a trial's link reports its progress and asks whether to stop."""
STOP_GRACE_S = 60.0
"""Seconds the driver gives its running trials to checkpoint after SIGTERM before it ends the experiment anyway."""


@dataclass(frozen=True)
class StallLimits:
    """Seconds without progress after which a trial counts as hung, per kind of trial (0 turns the watchdog off).

    The defaults are the longest quiet phases a healthy trial of that kind has at paper scale, with a margin: a
    search reports every ``log_every`` steps (seconds apart on a GPU), but before its first step it tokenises the
    pre-training corpus (minutes for WikiText-103 on first use, then cached) and after its last it measures the dev
    losses of every mask it saved; a fine-tune reports every step, and its longest quiet phase is an evaluation of
    the dev set (SQuAD's 10,570 questions, MNLI's 19,647 pairs: a few minutes on a slow GPU); a measurement (a dense
    model's dev losses, mask similarities) reports at its end or per pair.
    """

    search: float = 1800.0
    finetune: float = 900.0
    measurement: float = 1800.0

    @classmethod
    def every(cls, seconds: float) -> StallLimits:
        """One limit for every kind (``--stall-limit``)."""
        return cls(seconds, seconds, seconds)

    def of(self, stage: str) -> float:
        return {"search": self.search, "finetune": self.finetune}.get(stage, self.measurement)


@ray.remote(num_cpus=0)
class SweepControl:
    """One per running sweep: whether the driver asks its trials to stop, and when each trial last made progress."""

    def __init__(self) -> None:
        self.stopping = False
        self.progress: dict[str, tuple[int, float]] = {}  # run id → (count, time the count last moved)

    def request_stop(self) -> None:
        self.stopping = True

    def beat(self, run_id: str, count: int) -> bool:
        """A trial's progress count; returns whether it should stop."""
        known = self.progress.get(run_id)
        if known is None or known[0] != count:
            self.progress[run_id] = (count, time.time())
        return self.stopping

    def last_progress(self) -> dict[str, tuple[int, float]]:
        """Run id → its progress count, and when it last moved (epoch seconds)."""
        return dict(self.progress)

    def forget(self, run_id: str) -> None:
        """A new attempt of ``run_id`` starts: its old count says nothing of it."""
        self.progress.pop(run_id, None)


class TrialLink:
    """A trial's side of :class:`SweepControl`: :meth:`progress` counts what the trial did (cheap: an integer), a
    thread reports the count every :data:`BEAT_EVERY_S` and sets :attr:`stop` when the driver asks to stop.

    Without a control actor (a trial run outside a sweep, or a driver that is gone) it only counts."""

    def __init__(self, control: str | None, run_id: str) -> None:
        self.run_id, self.count = run_id, 0
        self.stop = threading.Event()
        self._closed = threading.Event()
        self._actor = None
        if control is not None:
            with contextlib.suppress(ValueError):  # no such actor: the sweep's driver has gone
                self._actor = ray.get_actor(control)
        if self._actor is not None:
            threading.Thread(target=self._beat, name=f"tamt-link-{run_id}", daemon=True).start()

    def progress(self, *_: Any) -> None:
        """One unit of progress (a step, an evaluation, a checkpoint); takes and ignores any arguments, so it can
        stand for a loop's callback."""
        self.count += 1

    def _beat(self) -> None:
        while not self._closed.wait(BEAT_EVERY_S):
            try:
                if ray.get(self._actor.beat.remote(self.run_id, self.count), timeout=30):
                    self.stop.set()
            except Exception as error:  # the actor or the driver is gone: the trial goes on, its driver decides
                log.debug("no beat from %s: %s", self.run_id, error)

    def close(self) -> None:
        self._closed.set()


class Drain(tune.Stopper, tune.Callback):
    """Ends a sweep's experiment after SIGTERM once every running trial has checkpointed, or at the deadline.

    As a :class:`~ray.tune.Callback` it sees which trials run and which have reported ``stopped``; as a
    :class:`~ray.tune.Stopper` it tells Tune when to end the experiment (``stop_all``), which stops the trials
    without counting them finished or failed, so a rerun resumes them.
    """

    def __init__(self, control: ray.actor.ActorHandle, grace_s: float = STOP_GRACE_S) -> None:
        self.control, self.grace_s = control, grace_s
        self.signalled_at: float | None = None
        self.asked = False
        self.running: set[str] = set()
        self.stopped: set[str] = set()

    def request(self, *_: Any) -> None:
        """The signal handler: note the time only (the trials are asked from Tune's loop, not from a handler)."""
        if self.signalled_at is None:
            self.signalled_at = time.monotonic()

    @property
    def requested(self) -> bool:
        return self.signalled_at is not None

    def on_step_end(self, iteration, trials, **info) -> None:
        self.running = {trial.trial_id for trial in trials if trial.status == "RUNNING"}
        if self.requested and not self.asked:
            self.asked = True
            self.control.request_stop.remote()
            log.warning("SIGTERM: %d running trials checkpoint and stop (at most %.0f s); no new trial starts",
                        len(self.running), self.grace_s)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get("stopped"):
            self.stopped.add(trial.trial_id)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False  # trials are stopped all at once (stop_all), never one by one: that would count them done

    def stop_all(self) -> bool:
        if not self.asked:
            return False
        late = time.monotonic() - self.signalled_at > self.grace_s
        return late or self.running <= self.stopped

    @property
    def unstopped(self) -> set[str]:
        """Trials that were running and had not checkpointed when the experiment ended."""
        return self.running - self.stopped


@contextlib.contextmanager
def on_sigterm(handler) -> Iterator[None]:
    """``handler`` on SIGTERM while the block runs (from the main thread; elsewhere signals cannot be caught)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Watchdog(tune.Callback):
    """Stops a trial whose progress has not moved for longer than its stall limit (:class:`StallLimits`); Tune
    then retries it, or records it failed once its retries are spent. ``reasons`` holds, per run id, why it was
    stopped, for the failure record; ``latest`` each trial's progress as last polled (count, when it moved), which
    the progress display reads too."""

    def __init__(self, control: ray.actor.ActorHandle, limits: StallLimits, check_every_s: float = 5.0) -> None:
        self.control, self.limits, self.check_every_s = control, limits, check_every_s
        self.started: dict[str, float] = {}  # trial id → when its current attempt started (epoch seconds)
        self.reasons: dict[str, str] = {}
        self.latest: dict[str, tuple[int, float]] = {}
        self.last_check = 0.0

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._attempt(trial)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._attempt(trial)

    def _attempt(self, trial) -> None:
        self.started[trial.trial_id] = time.time()
        if "run_id" in trial.config:
            self.control.forget.remote(trial.config["run_id"])

    def on_step_end(self, iteration, trials, **info) -> None:
        if time.monotonic() - self.last_check < self.check_every_s:
            return
        self.last_check = time.monotonic()
        try:
            self.latest.clear()
            self.latest.update(ray.get(self.control.last_progress.remote(), timeout=30))
        except Exception as error:  # the actor is busy or gone: check again later
            log.debug("watchdog: no progress record (%s)", error)
            return
        now = time.time()
        for trial in trials:
            run_id = trial.config.get("run_id")
            if trial.status != "RUNNING" or run_id is None or trial.trial_id not in self.started:
                continue
            limit = self.limits.of(trial.config["spec"]["stage"])
            quiet = now - max(self.started[trial.trial_id], self.latest.get(run_id, (0, 0.0))[1])
            if limit and quiet > limit:
                self._stop(trial, run_id, quiet, limit)

    def _stop(self, trial, run_id: str, quiet: float, limit: float) -> None:
        actor = trial.temporary_state.ray_actor
        if actor is None:
            return
        self.reasons[run_id] = (f"stalled: no progress for {quiet:.0f} s (stall limit {limit:.0f} s; --stall-limit "
                                "sets it)")
        log.warning("trial %s made no progress for %.0f s (stall limit %.0f s): stopping it for a retry", run_id,
                    quiet, limit)
        self.started[trial.trial_id] = time.time()  # once per limit, while Tune notices the actor is gone
        ray.kill(actor)
