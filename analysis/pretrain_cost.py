"""Fig. 5 and 12-14: downstream score against pre-training cost, TAMT vs IMP (§4.2.3, App. F).

TAMT's cost is the step its mask was taken at (masks along one run); IMP's is the step its run reached the target
sparsity, (10·s − 1)·P, varied through the pruning interval P. Time is the training time up to that mask,
evaluation excluded (the ``train_s`` of the search's ``masks``). The paper's headline: TAMT reaches the best
score IMP achieves with 8.4× fewer iterations and 8.7× less time (70 %, average score); :func:`reach` recomputes
that from the table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import style, table
from analysis.figure import Drawing, Figure, require, task_title

TAMT = ("tamt-mlm", "tamt-kd")
METHODS = ("imp", *TAMT)


@dataclass(frozen=True)
class Reach:
    """When a TAMT curve first reaches IMP's best score (Fig. 5: "8.4× fewer iterations, 8.7× less time")."""

    imp_best: float
    imp_step: int
    imp_seconds: float
    tamt_step: int | None
    tamt_seconds: float | None

    @property
    def fewer_iterations(self) -> float | None:
        return self.imp_step / self.tamt_step if self.tamt_step else None

    @property
    def less_time(self) -> float | None:
        if not self.tamt_seconds or pd.isna(self.tamt_seconds) or pd.isna(self.imp_seconds):
            return None
        return self.imp_seconds / self.tamt_seconds


def reach(tamt: pd.DataFrame, imp: pd.DataFrame) -> Reach:
    """IMP's best mean score (the cheapest IMP point that attains it) and the first TAMT step at or above it.

    Both frames have one row per mask step: ``mask_step``, ``train_s`` and ``mean`` (the score).
    """
    best = imp["mean"].max()
    at_best = imp[imp["mean"] == best].sort_values("mask_step").iloc[0]
    reached = tamt[tamt["mean"] >= best].sort_values("mask_step")
    first = reached.iloc[0] if len(reached) else None
    return Reach(float(best), int(at_best["mask_step"]), float(at_best["train_s"]),
                 None if first is None else int(first["mask_step"]),
                 None if first is None else float(first["train_s"]))


def describe(method: str, sparsity: float, result: Reach, tamt_last_step: int, tasks: list[str]) -> str:
    head = (f"{style.percent(sparsity)}, {style.tasks_text(tasks)}: IMP's best {result.imp_best:.1f} took "
            f"{result.imp_step:,} iterations")
    if result.tamt_step is None:
        return f"{head}; {style.method_name(method)} stays below it up to {tamt_last_step:,} iterations"
    time = f", {result.less_time:.1f}× less time" if result.less_time else ""
    return (f"{head}; {style.method_name(method)} reaches it at {result.tamt_step:,}: "
            f"{result.fewer_iterations:.1f}× fewer iterations{time} (paper, 70 %: 8.4× and 8.7×)")


def cost_runs(rows: pd.DataFrame) -> pd.DataFrame:
    """Fine-tunes (main training set) of every step of the main TAMT runs and of every IMP mask, with the
    training seconds of their mask."""
    tuned = table.main_size(table.finetunes(rows))
    chosen = table.main_masks(tuned)
    tamt_runs = chosen.loc[chosen["method"].isin(TAMT), "mask_run_id"]
    ours = tuned[tuned["mask_run_id"].isin(tamt_runs) | (tuned["method"] == "imp")]
    costs = table.mask_costs(rows)[["mask_run_id", "mask_step", "train_s"]]
    return ours.merge(costs, on=["mask_run_id", "mask_step"], how="left")


def _sparsities(runs: pd.DataFrame) -> list[float]:
    steps = runs.groupby(["sparsity", "method"])["mask_step"].nunique().unstack(fill_value=0)
    return sorted(s for s, counts in steps.iterrows() if counts.max() >= 2
                  and any(m in counts.index and counts[m] > 0 for m in TAMT) and counts.get("imp", 0) > 0)


def _curves(runs: pd.DataFrame, task: str | None, tasks: list[str]) -> pd.DataFrame:
    """Mean ± std per (method, step) on ``task``, or of the average over ``tasks``; with mean training seconds."""
    by = ["method", "mask_step"]
    if task is None:
        curves = table.task_average(runs, by, tasks)
        curves = curves[curves["complete"]]
    else:
        curves = table.summarize(runs[runs["task"] == task], by)
    seconds = runs.groupby(by)["train_s"].mean().rename("train_s").reset_index()
    return curves.merge(seconds, on=by, how="left")


def _common_tasks(runs: pd.DataFrame) -> list[str]:
    per_point = runs.groupby(["method", "mask_step"])["task"].agg(frozenset)
    return style.ordered(frozenset.intersection(*per_point), style.TASKS)


def _time_axis(seconds: pd.Series) -> tuple[float, str]:
    longest = np.nanmax(seconds.to_numpy(dtype=float)) if len(seconds) else 0.0
    if longest >= 2 * 3600:
        return 3600.0, "Training time (h)"
    if longest >= 120:
        return 60.0, "Training time (min)"
    return 1.0, "Training time (s)"


def _check(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[float]]:
    runs = cost_runs(rows)
    sparsities = _sparsities(runs)
    require(bool(sparsities), "needs fine-tunes of TAMT masks and IMP masks at one sparsity, one of them at two "
                              "or more pre-training costs (run sweeps/pretrain_cost.py)")
    return runs, sparsities


def draw_average(rows: pd.DataFrame) -> Drawing:
    runs, sparsities = _check(rows)
    figure, axes = style.grid(len(sparsities), 2, width=4.2, height=3.0)
    findings, missing = [], []
    for row, sparsity in enumerate(sparsities):
        here = runs[runs["sparsity"] == sparsity]
        tasks = _common_tasks(here)
        if not tasks:
            missing.append(f"{style.percent(sparsity)}: no task that every TAMT step and IMP mask was fine-tuned on")
            for ax in axes[row]:
                ax.set_visible(False)
            continue
        curves = _curves(here, None, tasks)
        scale, time_label = _time_axis(curves["train_s"])
        for method in METHODS:
            curve = curves[curves["method"] == method]
            if curve.empty:
                missing.append(f"{style.method_name(method)} {style.percent(sparsity)}: no fine-tunes")
                continue
            style.line(axes[row, 0], curve["mask_step"], curve["mean"], curve["std"], method=method)
            timed = curve.dropna(subset=["train_s"])
            style.line(axes[row, 1], timed["train_s"] / scale, timed["mean"], timed["std"], method=method)
        imp = curves[curves["method"] == "imp"]
        for method in TAMT:
            tamt = curves[curves["method"] == method]
            if not tamt.empty and not imp.empty:
                findings.append(describe(method, sparsity, reach(tamt, imp), int(tamt["mask_step"].max()), tasks))
        title = f"{style.percent(sparsity)} sparsity, {style.tasks_text(tasks)}"
        axes[row, 0].set(xlabel="Pre-training iterations", ylabel="Average dev score")
        axes[row, 1].set(xlabel=time_label)
        for ax in axes[row]:
            ax.set_title(title, fontsize=8)
            ax.grid(alpha=0.3)
    style.legend_below(figure, axes)
    return Drawing(figure, missing, findings)


def draw_per_task(rows: pd.DataFrame) -> Drawing:
    runs, sparsities = _check(rows)
    runs = runs[runs["sparsity"].isin(sparsities)]
    costs = runs.groupby(["sparsity", "task", "method"])["mask_step"].nunique().groupby("task").max()
    tasks = style.ordered(costs[costs >= 2].index, style.TASKS)  # tasks fine-tuned at several costs
    figure, axes = style.grid(len(sparsities), len(tasks), width=3.2, height=2.8)
    missing = []
    for row, sparsity in enumerate(sparsities):
        here = runs[runs["sparsity"] == sparsity]
        for column, task in enumerate(tasks):
            ax = axes[row, column]
            curves = _curves(here, task, [task])
            if curves.empty:
                missing.append(f"{style.task_name(task)} {style.percent(sparsity)}: no fine-tunes")
                ax.set_visible(False)
                continue
            for method in METHODS:
                curve = curves[curves["method"] == method]
                if not curve.empty:
                    style.line(ax, curve["mask_step"], curve["mean"], curve["std"], method=method)
            ax.set_title(f"{task_title(here, task)}, {style.percent(sparsity)}", fontsize=9)
            ax.set_xlabel("Pre-training iterations")
            ax.grid(alpha=0.3)
        axes[row, 0].set_ylabel("Dev score")
    style.legend_below(figure, axes)
    return Drawing(figure, missing)


FIGURES = (
    Figure("fig5_pretrain_cost", "Fig. 5: average score vs pre-training iterations and time, TAMT vs IMP",
           draw_average),
    Figure("fig12-14_pretrain_cost_per_task", "Fig. 12-14: score per task vs pre-training iterations",
           draw_per_task),
)
