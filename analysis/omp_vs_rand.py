"""Fig. 1 and 8: OMP vs random subnetworks across sparsities (§1, App. A).

Fig. 1: the average downstream score (left) and the MLM dev loss (right) vs sparsity; Fig. 8: the score on each
task, with the OMP − Rand gap as a dashed red line on a second axis. The full model is the reference.
"""

from __future__ import annotations

import pandas as pd

from analysis import style, table
from analysis.figure import Drawing, Figure, missing_cells, require, task_title

METHODS = ("omp", "rand")


def _results(rows: pd.DataFrame) -> pd.DataFrame:
    results = table.main_results(rows)
    results = results[results["method"].isin([*METHODS, "full"])]
    have = set(results["method"])
    require(set(METHODS) <= have, "needs fine-tunes of both OMP and Rand subnetworks; the table has "
                                  f"{', '.join(style.method_name(m) for m in sorted(have & set(METHODS))) or 'neither'}"
                                  " (run sweeps/pretrain_correlation.py)")
    return results


def _dev_losses(rows: pd.DataFrame) -> pd.DataFrame:
    costs = table.mask_costs(rows)
    costs = costs[costs["method"].isin(METHODS)].dropna(subset=["mlm_dev_loss"])
    return table.summarize(costs, ["method", "sparsity"], value="mlm_dev_loss")


def _dense_loss(rows: pd.DataFrame) -> float | None:
    dense = table.stage(rows, "dense-loss")["mlm_dev_loss"].dropna()
    return float(dense.mean()) if len(dense) else None


def draw_overview(rows: pd.DataFrame) -> Drawing:
    results = _results(rows)
    tasks = style.ordered(results["task"].unique(), style.TASKS)
    sparsities = sorted(results.loc[results["method"].isin(METHODS), "sparsity"].unique())
    missing = missing_cells(results, METHODS, sparsities, tasks)
    losses = _dev_losses(rows)
    if losses.empty:
        missing.append("MLM dev losses of OMP/Rand masks (searches ran with dev_loss_batches=0)")
    figure, axes = style.grid(1, 2 if not losses.empty else 1, width=4.2, height=3.2)
    averages = table.task_average(results, ["method", "sparsity"], tasks)
    averages = averages[averages["complete"]]
    ax = axes[0, 0]
    for method in METHODS:
        curve = averages[averages["method"] == method]
        style.line(ax, 100 * curve["sparsity"], curve["mean"], curve["std"], method=method)
    full = averages[averages["method"] == "full"]
    if not full.empty:
        style.reference(ax, full["mean"].iloc[0])
    ax.set(xlabel="Sparsity (%)", ylabel="Average dev score",
           title=f"Downstream: {style.tasks_text(tasks)}")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    if not losses.empty:
        ax = axes[0, 1]
        for method in METHODS:
            curve = losses[losses["method"] == method]
            style.line(ax, 100 * curve["sparsity"], curve["mean"], curve["std"], method=method)
        dense = _dense_loss(rows)
        if dense is not None:
            style.reference(ax, dense)
        ax.set(xlabel="Sparsity (%)", ylabel="MLM dev loss", title="Pre-training")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    style.legend_below(figure, axes)
    return Drawing(figure, missing)


def draw_per_task(rows: pd.DataFrame) -> Drawing:
    results = _results(rows)
    tasks = style.ordered(results["task"].unique(), style.TASKS)
    sparsities = sorted(results.loc[results["method"].isin(METHODS), "sparsity"].unique())
    summary = table.summarize(results, ["method", "sparsity", "task"])
    columns = min(len(tasks), 4)
    figure, axes = style.grid((len(tasks) + columns - 1) // columns, columns, width=3.6, height=3.0)
    for ax, task in zip(axes.ravel(), tasks):
        ours = summary[summary["task"] == task]
        for method in METHODS:
            curve = ours[ours["method"] == method].sort_values("sparsity")
            ax.errorbar(100 * curve["sparsity"], curve["mean"], yerr=curve["std"].fillna(0), capsize=2,
                        marker=style.MARKERS[method], markersize=4, color=style.COLORS[method],
                        label=style.method_name(method))
        full = ours[ours["method"] == "full"]
        if not full.empty:
            style.reference(ax, full["mean"].iloc[0])
        gap = (ours[ours["method"] == "omp"].set_index("sparsity")["mean"]
               - ours[ours["method"] == "rand"].set_index("sparsity")["mean"]).dropna()
        if not gap.empty:
            twin = ax.twinx()
            twin.plot(100 * gap.index, gap.values, color="red", linestyle="--", linewidth=1, label="OMP − Rand")
            twin.set_ylabel("OMP − Rand", color="red", fontsize=8)
            twin.tick_params(axis="y", colors="red", labelsize=7)
            ax.plot([], [], color="red", linestyle="--", linewidth=1, label="OMP − Rand")  # in the shared legend
        ax.set(xlabel="Sparsity (%)", title=task_title(results, task))
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("Dev score")
    style.hide_unused(axes, len(tasks))
    style.legend_below(figure, axes)
    return Drawing(figure, missing_cells(results, METHODS, sparsities, tasks))


FIGURES = (
    Figure("fig1_omp_vs_rand", "Fig. 1: OMP vs Rand, average score and MLM dev loss vs sparsity", draw_overview),
    Figure("fig8_omp_vs_rand_per_task", "Fig. 8: OMP vs Rand per task, with their gap", draw_per_task),
)
