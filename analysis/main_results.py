"""Fig. 3: downstream score per task and on average vs sparsity, five methods, one row of panels per model, the
full model as a reference line (§4.2.1). Fig. 9: BERT vs RoBERTa under OMP (App. D)."""

from __future__ import annotations

import pandas as pd

from analysis import style, table
from analysis.figure import Drawing, Figure, missing_cells, require, task_title

MASKED = ("omp", "rand", "imp", "tamt-mlm", "tamt-kd")


def _score_panels(rows: pd.DataFrame) -> list[str]:
    """Tasks in the paper's order, then "average" when more than one task was run."""
    tasks = style.ordered(rows["task"].unique(), style.TASKS)
    return tasks + (["average"] if len(tasks) > 1 else [])


def _panel_title(rows: pd.DataFrame, panel: str) -> str:
    return "Average" if panel == "average" else task_title(rows, panel)


def _curves(rows: pd.DataFrame, panel: str, tasks: list[str], by: list[str]) -> pd.DataFrame:
    """Mean ± std per group of ``by`` on one task, or the complete task averages for the "average" panel."""
    if panel == "average":
        averages = table.task_average(rows, by, tasks)
        return averages[averages["complete"]]
    return table.summarize(rows[rows["task"] == panel], by)


def _grid_sparsities(results: pd.DataFrame, methods: list[str]) -> list[float]:
    """The sparsities of Fig. 3's grid: those most methods ran (OMP and Rand also run at 10 % for Fig. 1, the
    other methods need not)."""
    ran = results[results["method"].isin(methods)].groupby("sparsity")["method"].nunique()
    return sorted(ran[ran > len(methods) / 2].index)


def draw_main(rows: pd.DataFrame) -> Drawing:
    results = table.main_results(rows)
    masked = results[results["method"].isin(MASKED)]
    require(not masked.empty, "no fine-tunes of pruned subnetworks (run sweeps/main_results.py)")
    models = style.ordered(masked["model"].unique(), style.MODELS)
    panels = _score_panels(results[results["model"].isin(models)])
    figure, axes = style.grid(len(models), len(panels), sharex=True)
    missing: list[str] = []
    for row, model in enumerate(models):
        ours = results[results["model"] == model]
        tasks = style.ordered(ours["task"].unique(), style.TASKS)
        methods = style.ordered(ours.loc[ours["method"].isin(MASKED), "method"].unique(), style.METHODS)
        missing += missing_cells(ours, methods, _grid_sparsities(ours, methods), tasks,
                                 prefix=f"{style.model_name(model)} ")
        for column, panel in enumerate(panels):
            ax = axes[row, column]
            if panel != "average" and panel not in tasks:
                ax.text(0.5, 0.5, f"no {style.task_name(panel)} runs", ha="center", transform=ax.transAxes)
                missing.append(f"{style.model_name(model)}: no {style.task_name(panel)} fine-tunes")
                continue
            curves = _curves(ours, panel, tasks, ["method", "sparsity"])
            for method in methods:
                curve = curves[curves["method"] == method]
                if not curve.empty:
                    style.line(ax, 100 * curve["sparsity"], curve["mean"], curve["std"], method=method)
            full = curves[curves["method"] == "full"]
            if not full.empty:
                style.reference(ax, full["mean"].iloc[0])
            ax.set_title(f"{style.model_name(model)}: {_panel_title(ours, panel)}", fontsize=9)
            ax.set_xlabel("Sparsity (%)")
            if column == 0:
                ax.set_ylabel("Dev score")
            ax.grid(alpha=0.3)
    style.legend_below(figure, axes)
    return Drawing(figure, missing)


def draw_models(rows: pd.DataFrame) -> Drawing:
    results = table.main_results(rows)
    omp = results[results["method"].isin(["omp", "full"])]
    models = style.ordered(omp.loc[omp["method"] == "omp", "model"].unique(), style.MODELS)
    require(len(models) >= 2, f"needs OMP fine-tunes of two models; the table has {len(models)} "
                              f"({', '.join(map(style.model_name, models)) or 'none'}): run main_results' paper "
                              "preset (BERT-base and RoBERTa-base)")
    omp = omp[omp["model"].isin(models)]
    shared = set.intersection(*(set(omp.loc[omp["model"] == m, "task"]) for m in models))
    require(bool(shared), "the models share no task")
    tasks = style.ordered(shared, style.TASKS)
    panels = tasks + (["average"] if len(tasks) > 1 else [])
    figure, axes = style.grid(1, len(panels))
    for column, panel in enumerate(panels):
        ax = axes[0, column]
        curves = _curves(omp[omp["task"].isin(tasks)], panel, tasks, ["model", "method", "sparsity"])
        for index, model in enumerate(models):
            color = f"C{index}"
            ours = curves[curves["model"] == model]
            pruned = ours[ours["method"] == "omp"]
            style.line(ax, 100 * pruned["sparsity"], pruned["mean"], pruned["std"], color=color, marker="o",
                       label=f"{style.model_name(model)} OMP")
            full = ours[ours["method"] == "full"]
            if not full.empty:
                ax.axhline(full["mean"].iloc[0], color=color, linestyle="--", linewidth=1,
                           label=f"{style.model_name(model)} full")
        ax.set_title(_panel_title(omp, panel), fontsize=9)
        ax.set_xlabel("Sparsity (%)")
        if column == 0:
            ax.set_ylabel("Dev score")
        ax.grid(alpha=0.3)
    style.legend_below(figure, axes)
    return Drawing(figure)


FIGURES = (
    Figure("fig3_main_results", "Fig. 3: downstream score vs sparsity, five methods, per model", draw_main,
           per_model=False),
    Figure("fig9_bert_vs_roberta", "Fig. 9: BERT vs RoBERTa subnetworks under OMP", draw_models, per_model=False),
)
