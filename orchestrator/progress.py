"""What a sweep shows while it runs: per stage, the trials done and an ETA, and which trials run and how far along.

**The ETA.** Every trial has an estimated cost (:func:`orchestrator.estimate.trial_seconds`: seconds at the V100
pace of Tab. 3, of the GPU that ``bench/gpu_check.py`` measured, or of the built-in model on CPU cores). The
estimates are right in proportion, not in scale (a CPU, another GPU, a smaller model), so :class:`EtaModel`
calibrates them per kind of trial (the searches of each method, fine-tunes, measurements): the ratio of measured to
estimated seconds of the trials of that kind that have finished, or, before any has, of those running that report
how far they are (a search's steps, a fine-tune's steps). A running trial's own time left comes from its pace since
its first report, which leaves out its set-up (a model, a teacher, data to load). A stage's ETA is the calibrated
cost of what is left of it and of the stages before it, spread over the trials that run at once, and never less than
its longest remaining trial.

**The display** (:class:`LiveProgress`): on a terminal, a live panel (``rich``) with one bar per stage and the
running trials; elsewhere (a log file, a batch job's output), one plain line every ``every_s`` seconds.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from ray import tune

STAGE_ORDER = ("search", "measure", "finetune")
"""Stages in the order their trials can finish: masks first, then what reads them."""


@dataclass(frozen=True)
class TrialCost:
    """What the ETA knows of one trial before it runs: its stage, its kind (the unit of calibration), its estimated
    seconds, and the progress count it reaches when done (``None`` when it does not report one)."""

    stage: str
    kind: str
    estimate_s: float
    units: int | None = None


@dataclass
class EtaModel:
    """Remaining seconds per stage from the trials' estimates, calibrated by what finished and what runs."""

    costs: Mapping[str, TrialCost]
    slots: int = 1
    finished_s: dict[str, float] = field(default_factory=dict)  # run id → measured seconds
    started_at: dict[str, float] = field(default_factory=dict)  # run id → when it (last) started
    progress: dict[str, int] = field(default_factory=dict)  # run id → its progress count now
    anchors: dict[str, tuple[float, int]] = field(default_factory=dict)  # run id → (when, count) of its first report

    def start(self, run_id: str, now: float) -> None:
        self.started_at[run_id] = now
        self.progress.pop(run_id, None)
        self.anchors.pop(run_id, None)

    def report(self, run_id: str, count: int, now: float) -> None:
        """A running trial's progress count, seen at ``now``; the first one it reports anchors its pace."""
        if run_id in self.started_at and count > 0:
            self.anchors.setdefault(run_id, (now, count))
        self.progress[run_id] = count

    def finish(self, run_id: str, now: float) -> None:
        if run_id in self.started_at:
            self.finished_s[run_id] = now - self.started_at.pop(run_id)
        self.progress.pop(run_id, None)
        self.anchors.pop(run_id, None)

    def drop(self, run_id: str) -> None:
        """A trial that will not run (failed, blocked): no longer part of what is left."""
        self.started_at.pop(run_id, None)
        self.progress.pop(run_id, None)
        self.anchors.pop(run_id, None)
        self.finished_s.setdefault(run_id, float("nan"))

    def _paced_left(self, run_id: str, now: float) -> float | None:
        """Seconds left of a running trial at its pace since its first report, which leaves out its set-up
        (loading a model, a teacher, data): known once it has gone a tenth of its units past that report."""
        units, count, anchor = self.costs[run_id].units, self.progress.get(run_id), self.anchors.get(run_id)
        if not units or count is None or anchor is None:
            return None
        since, first = anchor
        if count - first < max(1.0, 0.1 * units) or now <= since:
            return None
        return (now - since) / (count - first) * max(0, units - count)

    def _fraction(self, run_id: str) -> float | None:
        units = self.costs[run_id].units
        count = self.progress.get(run_id)
        return None if not units or count is None else min(1.0, count / units)

    def calibration(self, now: float) -> dict[str, float]:
        """Measured / estimated seconds per kind, and ``"*"`` over every kind; from finished trials, and from
        running ones whose pace is known or that are a quarter done or more (their projected total)."""
        measured: Counter = Counter()
        estimated: Counter = Counter()
        for run_id, seconds in self.finished_s.items():
            if seconds == seconds:  # not a dropped trial
                cost = self.costs[run_id]
                measured[cost.kind] += seconds
                estimated[cost.kind] += cost.estimate_s
        for run_id, started in self.started_at.items():
            fraction, left = self._fraction(run_id), self._paced_left(run_id, now)
            if left is not None or (fraction is not None and fraction >= 0.25):
                cost = self.costs[run_id]
                measured[cost.kind] += now - started + left if left is not None else (now - started) / fraction
                estimated[cost.kind] += cost.estimate_s
        ratios = {kind: measured[kind] / estimated[kind] for kind in measured if estimated[kind] > 0}
        if estimated and sum(estimated.values()) > 0:
            ratios["*"] = sum(measured.values()) / sum(estimated.values())
        return ratios

    def remaining(self, run_id: str, ratios: Mapping[str, float], now: float) -> float | None:
        """Seconds left of one unfinished trial; ``None`` while nothing calibrates its kind."""
        cost = self.costs[run_id]
        ratio = ratios.get(cost.kind, ratios.get("*"))
        started = self.started_at.get(run_id)
        fraction = self._fraction(run_id) if started is not None else None
        paced = self._paced_left(run_id, now) if started is not None else None
        if paced is not None:
            return paced
        if fraction and (fraction >= 0.25 or ratio is None):
            return (now - started) * (1 - fraction) / fraction
        if ratio is None:
            return None
        expected = ratio * cost.estimate_s
        # a trial past its calibrated estimate is taken to be nine tenths done, not done
        return max(0.1 * expected, expected - (now - started if started is not None else 0.0))

    def eta(self, now: float) -> dict[str, float | None]:
        """Seconds until each stage's last trial ends (0: nothing left; ``None``: not known yet)."""
        ratios = self.calibration(now)
        out: dict[str, float | None] = {}
        total, known = 0.0, True
        for stage in STAGE_ORDER:
            ids = [run_id for run_id, cost in self.costs.items() if cost.stage == stage]
            if not ids:
                continue
            left = [self.remaining(run_id, ratios, now) for run_id in ids if run_id not in self.finished_s]
            if not left:
                out[stage] = 0.0
                continue
            known = known and all(seconds is not None for seconds in left)
            if not known:
                out[stage] = None
                continue
            total += sum(left)
            out[stage] = max(total / max(1, self.slots), max(left))
        return out


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "estimating"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class LiveProgress(tune.Callback):
    """The sweep's progress: a live panel on a terminal, plain lines otherwise (see the module docstring).

    ``counts`` has the sets ``succeeded``, ``failed``, ``blocked`` and the number ``unsuggested`` (a
    :class:`~orchestrator.scheduler.SweepCounts`); ``progress`` is the watchdog's latest view of each trial's
    progress count (run id → count), ``labels`` the trials' readable names.
    """

    def __init__(self, counts, model: EtaModel, labels: Mapping[str, str], skipped: int,
                 progress: Mapping[str, tuple[int, float]], every_s: float = 10.0, out: TextIO | None = None,
                 live: bool | None = None) -> None:
        self.counts, self.model, self.labels, self.skipped = counts, model, labels, skipped
        self.progress, self.every_s, self.out = progress, every_s, out
        self.live = live
        self.started = time.monotonic()
        self.last_print = 0.0
        self.running: dict[str, str] = {}  # trial id → run id
        self._panel = None

    # --- what happened -----------------------------------------------------------------------------------------

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        run_id = trial.config.get("run_id")
        if run_id in self.model.costs:
            self.running[trial.trial_id] = run_id
            self.model.start(run_id, time.monotonic())

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run_id = self.running.pop(trial.trial_id, None)
        if run_id is not None and run_id in self.counts.succeeded:
            self.model.finish(run_id, time.monotonic())

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        """A trial failed for good (its retries spent): say so now, with its error and where the whole text is."""
        run_id = self.running.pop(trial.trial_id, None)
        if run_id is not None:
            self.model.drop(run_id)
            self._say(f"[tamt] {self.labels.get(run_id, run_id)} [{run_id}] failed: {_last_line(trial)}"
                      + (f" (whole error: {trial.error_file})" if trial.error_file else ""))

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        """An attempt failed and Tune retries the trial (from its checkpoint, if it wrote one)."""
        run_id = trial.config.get("run_id")
        if run_id in self.model.costs:
            self.model.start(run_id, time.monotonic())
            self._say(f"[tamt] {self.labels.get(run_id, run_id)} [{run_id}]: attempt {trial.num_failures} failed "
                      f"({_last_line(trial)}); retrying")

    # --- what is shown -----------------------------------------------------------------------------------------

    def on_step_end(self, iteration, trials, **info) -> None:
        for run_id in list(self.model.started_at):
            if run_id in self.progress:
                self.model.report(run_id, self.progress[run_id][0], time.monotonic())
        for run_id in self.counts.blocked:
            if run_id in self.model.costs and run_id not in self.model.finished_s:
                self.model.drop(run_id)
        now = time.monotonic()
        if self._is_live():
            self._render_live(now)
        elif now - self.last_print >= self.every_s:
            self.last_print = now
            self._print(self.line(now))

    def on_experiment_end(self, trials, **info) -> None:
        if self._panel is not None:
            self._panel.stop()
            self._panel = None
        self._print(self.line(time.monotonic()))

    def stage_rows(self, now: float) -> list[tuple[str, int, int, str]]:
        """(stage, done, planned, ETA) per stage of the plan."""
        eta = self.model.eta(now)
        planned = Counter(cost.stage for cost in self.model.costs.values())
        done = Counter(self.model.costs[run_id].stage for run_id in self.counts.succeeded
                       if run_id in self.model.costs)
        return [(stage, done[stage], planned[stage], duration(eta.get(stage))) for stage in STAGE_ORDER
                if planned[stage]]

    def running_rows(self) -> list[tuple[str, str]]:
        """(label, how far) of each running trial."""
        rows = []
        for run_id in self.running.values():
            units, count = self.model.costs[run_id].units, self.model.progress.get(run_id)
            far = f"{count}/{units}" if units and count is not None else ""
            rows.append((self.labels.get(run_id, run_id), far))
        return rows

    def line(self, now: float) -> str:
        stages = "  ".join(f"{stage} {done}/{planned} ETA {eta}" for stage, done, planned, eta in self.stage_rows(now))
        return (f"[tamt] {now - self.started:6.0f}s  {stages}  running {len(self.running)}  failed "
                f"{len(self.counts.failed)}  blocked {len(self.counts.blocked)}"
                + (f"  (+{self.skipped} already done)" if self.skipped else ""))

    def _is_live(self) -> bool:
        if self.live is None:
            stream = self.out or sys.stdout
            self.live = bool(getattr(stream, "isatty", lambda: False)())
        return self.live

    def _render_live(self, now: float) -> None:
        from rich.console import Console, Group
        from rich.live import Live
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 2))
        for stage, done, planned, eta in self.stage_rows(now):
            filled = int(20 * done / planned) if planned else 0
            table.add_row(stage, "█" * filled + "░" * (20 - filled), f"{done}/{planned}", f"ETA {eta}")
        running = Table.grid(padding=(0, 2))
        for label, far in self.running_rows():
            running.add_row("  ▶", label, far)
        header = (f"[tamt] {now - self.started:.0f}s  running {len(self.running)}  failed {len(self.counts.failed)}"
                  f"  blocked {len(self.counts.blocked)}" + (f"  (+{self.skipped} already done)" if self.skipped
                                                             else ""))
        group = Group(Text(header), table, running)
        if self._panel is None:
            self._panel = Live(group, console=Console(file=self.out or sys.stdout), refresh_per_second=2,
                               transient=True)
            self._panel.start()
        else:
            self._panel.update(group)

    def _print(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)  # resolved late: Tune pickles its callbacks

    def _say(self, line: str) -> None:
        """A line that stays, above the live panel when there is one."""
        if self._panel is not None:
            self._panel.console.print(line, markup=False, highlight=False)
        else:
            self._print(line)


def _last_line(trial) -> str:
    """The line of a trial's error text that says what went wrong: its last non-blank line."""
    text = ""
    if trial.error_file:
        try:
            with open(trial.error_file) as handle:
                text = handle.read()
        except OSError:
            text = ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no error text"


def trial_costs(plan, table, units) -> dict[str, TrialCost]:
    """The :class:`TrialCost` of every trial of ``plan`` by run id (``table``: the throughput the estimates use;
    ``units``: a function of a spec giving its progress count when done, or ``None``)."""
    from orchestrator.estimate import trial_seconds
    from orchestrator.specs import SearchSpec

    costs = {}
    for spec in plan.specs():
        stage = "measure" if spec.stage in ("dense-loss", "similarity") else spec.stage
        kind = f"search:{spec.config.method}" if isinstance(spec, SearchSpec) else stage
        costs[spec.run_id] = TrialCost(stage, kind, max(trial_seconds(spec, table), 1.0), units(spec))
    return costs


def progress_units(spec: Any) -> int | None:
    """The progress count a trial reports by its end: a fine-tune's steps, a search's logged steps (every
    ``log_every`` steps and at each saved mask), a similarity's pairs; ``None`` for what reports no count."""
    from tamt_core.checkpoints import LOG_EVERY
    from tamt_core.tasks import get_task

    from orchestrator.specs import FinetuneSpec, SearchSpec, SimilaritySpec

    if isinstance(spec, FinetuneSpec):
        config = spec.config
        hp = config.hparams
        examples = config.train_size or get_task(config.task).paper_train_size
        return -(-examples // hp.batch_size) * hp.max_epochs
    if isinstance(spec, SearchSpec):
        steps = spec.config.search_method.training_steps(spec.config)
        return steps // LOG_EVERY + len(spec.yields()) if steps else None
    if isinstance(spec, SimilaritySpec):
        return len(spec.pairs())
    return None
