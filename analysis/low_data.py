"""Fig. 7: downstream score against the number of fine-tuning examples, at the sparsity of the low-data study
(70 %, §4.2.5); one panel per task, the methods' main masks and the full model, mean ± std over mask seeds ×
fine-tuning seeds (which also draw the subsets). The whole-set point is the main results' own runs."""

from __future__ import annotations

import pandas as pd

from analysis import style, table
from analysis.figure import Drawing, Figure, require, task_title


def low_data_runs(rows: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """Fine-tunes of the main masks (and the full model) on every training-set size, at the sparsity with the most
    sizes, with ``examples``; requires some task to have two sizes or more."""
    tuned = table.finetunes(rows)
    chosen = table.main_masks(tuned)
    masked = tuned.merge(chosen, on=list(chosen.columns))
    masked = masked.assign(examples=table.training_examples(masked))
    sizes = masked.groupby(["sparsity", "task"])["examples"].nunique()
    require(bool(len(sizes)) and sizes.max() >= 2, "needs fine-tunes of one mask on two or more training-set "
                                                   "sizes of a task (run sweeps/low_data.py)")
    sparsity = sizes.groupby("sparsity").sum().idxmax()
    full = tuned[tuned["method"] == "full"]
    runs = pd.concat([masked[masked["sparsity"] == sparsity], full.assign(examples=table.training_examples(full))])
    return runs, float(sparsity)


def draw(rows: pd.DataFrame) -> Drawing:
    runs, sparsity = low_data_runs(rows)
    masked = runs[runs["method"] != "full"]
    counts = masked.groupby("task")["examples"].nunique()
    tasks = style.ordered(counts[counts >= 2].index, style.TASKS)
    summary = table.summarize(runs[runs["task"].isin(tasks)], ["method", "task", "examples"])
    figure, axes = style.grid(1, len(tasks), width=3.6, height=3.0)
    missing = []
    for ax, task in zip(axes[0], tasks):
        ours = summary[summary["task"] == task]
        sizes = sorted(ours.loc[ours["method"] != "full", "examples"].unique())
        spans = ours.groupby("method")["examples"].nunique()
        for method in style.ordered(spans[spans >= 2].index, style.METHODS):  # the methods the study ran
            curve = ours[ours["method"] == method]
            if method == "full":
                curve = curve[curve["examples"].isin(sizes)]
                style.line(ax, curve["examples"], curve["mean"], curve["std"], method="full", linestyle="--")
                continue
            style.line(ax, curve["examples"], curve["mean"], curve["std"], method=method)
            absent = sorted(set(sizes) - set(curve["examples"]))
            if absent:
                missing.append(f"{style.method_name(method)} {style.task_name(task)}: no runs on "
                               f"{', '.join(f'{int(n):,}' for n in absent)} examples")
        style.size_axis(ax, sizes)
        ax.set(xlabel="Fine-tuning examples", title=f"{task_title(runs, task)}, {style.percent(sparsity)}")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("Dev score")
    style.legend_below(figure, axes)
    return Drawing(figure, missing)


FIGURES = (Figure("fig7_low_data", "Fig. 7: score vs number of fine-tuning examples", draw),)
