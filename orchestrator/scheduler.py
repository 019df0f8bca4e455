"""The order a plan's trials run in: a Tune searcher that keeps the plan's DAG, and the windows a big plan runs in.

Ray Tune has no trial dependencies, so :class:`PlanSearcher` (a Tune ``Searcher``) keeps the DAG: it suggests a
mask search at once and a fine-tune only when the search it needs has finished, so no stage waits for a whole stage.

Tune keeps every trial of an experiment until it ends, so a big plan runs as consecutive experiments of
:data:`WINDOW_TRIALS` trials (:func:`next_window`), and :class:`SweepCounts` adds up what the windows did for the
progress line and the report.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ray.tune.search import Searcher

from orchestrator.plan import Plan
from orchestrator.trial import TrialSettings


class PlanSearcher(Searcher):
    """Suggests the plan's unfinished trials in dependency order: searches first, every other trial once each search
    it reads masks from has finished.

    A search that fails for good (after Tune's retries) blocks the trials that wait for it; they are reported, not
    run.
    """

    def __init__(self, plan: Plan, todo: list[str], settings: TrialSettings,
                 hold: Callable[[], bool] = lambda: False) -> None:
        """``hold()`` true: hand out nothing more (the sweep is stopping)."""
        super().__init__()
        self.plan, self.settings, self.hold = plan, settings, hold
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
        if self.hold():
            return None
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


WINDOW_TRIALS = 2_000
"""Trials per Tune experiment. Tune keeps every trial of an experiment until it ends (~100 KiB each), so a plan
runs as consecutive experiments of this many trials: the driver's memory follows the window, not the plan."""


class SweepCounts:
    """What :class:`~orchestrator.callbacks.Progress` counts, over the windows run so far and the current window's
    searcher: the run ids that succeeded, failed and were blocked, and how many trials are not yet suggested."""

    def __init__(self, later: int) -> None:
        """``later``: the trials of the windows not yet started (at first, every trial to run)."""
        self._searcher: PlanSearcher | None = None
        self._later = later
        self._done: set[str] = set()
        self._lost: set[str] = set()
        self._cut_off: set[str] = set()

    def start(self, searcher: PlanSearcher) -> None:
        """A window starts: its trials are counted by ``searcher`` until :meth:`close`."""
        self._searcher = searcher
        self._later -= searcher.unsuggested

    def close(self) -> None:
        """The current window has ended: its counts join the earlier windows'."""
        if self._searcher is not None:
            self._done |= self._searcher.succeeded
            self._lost |= self._searcher.failed
            self._cut_off |= self._searcher.blocked
            self._searcher = None

    def failed_earlier(self, run_ids: Iterable[str]) -> bool:
        """Whether any of ``run_ids`` failed for good in a window that has ended."""
        return any(run_id in self._lost for run_id in run_ids)

    def block(self, run_id: str) -> None:
        """A trial of a window not yet started will not run: a search it reads failed in an earlier window."""
        self._cut_off.add(run_id)
        self._later -= 1

    def _with_window(self, earlier: set[str], attribute: str) -> set[str]:
        return earlier | getattr(self._searcher, attribute) if self._searcher is not None else earlier

    @property
    def succeeded(self) -> set[str]:
        return self._with_window(self._done, "succeeded")

    @property
    def failed(self) -> set[str]:
        return self._with_window(self._lost, "failed")

    @property
    def blocked(self) -> set[str]:
        return self._with_window(self._cut_off, "blocked")

    @property
    def unsuggested(self) -> int:
        return self._later + (self._searcher.unsuggested if self._searcher is not None else 0)


def next_window(plan: Plan, remaining: deque[str], counts: SweepCounts, size: int) -> list[str]:
    """Up to ``size`` trials from the front of ``remaining`` (dependency order: searches come before the trials
    that read their masks, so a trial's searches are in its window or an earlier one). A trial whose search failed
    in an earlier window is blocked, not handed out."""
    window: list[str] = []
    while remaining and len(window) < size:
        run_id = remaining.popleft()
        if counts.failed_earlier(plan.dependencies(plan.get(run_id))):
            counts.block(run_id)
        else:
            window.append(run_id)
    return window
