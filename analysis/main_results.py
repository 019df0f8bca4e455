"""Fig. 3: downstream score per task and on average vs sparsity, every method the table holds (the paper's five,
and any other), one row of panels per model, the full model as a reference line (§4.2.1). Fig. 9: BERT vs RoBERTa
under OMP (App. D). Points are the results table's cells; those it marks at chance level are hollow."""

from __future__ import annotations

import pandas as pd

from analysis import results_table, style, table
from analysis.figure import Drawing, Figure, missing_cells, require, task_title


def _score_panels(rows: pd.DataFrame) -> list[str]:
    """Tasks in the paper's order, then "average" when more than one task was run."""
    tasks = style.ordered(rows["task"].unique(), style.TASKS)
    return tasks + (["average"] if len(tasks) > 1 else [])


def _panel_title(rows: pd.DataFrame, panel: str) -> str:
    return "Average" if panel == "average" else task_title(rows, panel)


def _curves(rows: pd.DataFrame, panel: str, tasks: list[str], by: list[str]) -> pd.DataFrame:
    """Mean ± std per group of ``by`` on one task, or the complete task averages for the "average" panel; with
    the chance level of each (the mean of its tasks') and ``at_chance`` (the results table's ° rule)."""
    if panel == "average":
        averages = table.task_average(rows, by, tasks)
        out = averages[averages["complete"]].copy()
        levels = rows[rows["task"].isin(tasks)].groupby("task")["chance"].mean()
        out["chance"] = levels.mean() if len(levels) else float("nan")
    else:
        here = rows[rows["task"] == panel]
        out = table.summarize(here, by)
        out["chance"] = here.groupby(by, dropna=False)["chance"].mean().to_numpy()
    out["at_chance"] = [results_table.at_chance(c.mean, c.std, c.chance) for c in out.itertuples()]
    return out


def _grid_sparsities(results: pd.DataFrame, methods: list[str]) -> list[float]:
    """The sparsities of Fig. 3's grid: those most methods ran (OMP and Rand also run at 10 % for Fig. 1, the
    other methods need not)."""
    ran = results[results["method"].isin(methods)].groupby("sparsity")["method"].nunique()
    return sorted(ran[ran > len(methods) / 2].index)


def draw_main(rows: pd.DataFrame) -> Drawing:
    results = table.main_results(rows)
    masked = results[results["method"] != "full"]
    require(not masked.empty, "no fine-tunes of pruned subnetworks (run sweeps/main_results.py)")
    models = style.ordered(masked["model"].unique(), style.MODELS)
    panels = _score_panels(results[results["model"].isin(models)])
    cells = results_table.marked_cells(rows)
    xs = sorted(100 * masked["sparsity"].unique())
    figure, axes = style.grid(len(models), len(panels), sharex=True)
    missing: list[str] = []
    for row, model in enumerate(models):
        ours = results[results["model"] == model]
        tasks = style.ordered(ours["task"].unique(), style.TASKS)
        methods = style.method_order(ours.loc[ours["method"] != "full", "method"].unique())
        missing += missing_cells(ours, methods, _grid_sparsities(ours, methods), tasks,
                                 prefix=f"{style.model_name(model)} ")
        for column, panel in enumerate(panels):
            ax = axes[row, column]
            if panel != "average" and panel not in tasks:
                ax.text(0.5, 0.5, f"no {style.task_name(panel)} runs", ha="center", transform=ax.transAxes)
                missing.append(f"{style.model_name(model)}: no {style.task_name(panel)} fine-tunes")
                continue
            curves = cells[(cells["model"] == model) & (cells["task"] == panel)]
            if panel == "average":
                curves = curves[curves["complete"].fillna(False).astype(bool)]
            style.dodged(ax, [style.Series.of(m, curves[curves["method"] == m]) for m in methods
                              if (curves["method"] == m).any()], slots=len(methods), xs=xs)
            full = curves[curves["method"] == "full"]
            if not full.empty:
                style.reference(ax, full["mean"].iloc[0], std=full["std"].iloc[0])
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
    xs = sorted(100 * omp.loc[omp["method"] == "omp", "sparsity"].unique())
    figure, axes = style.grid(1, len(panels))
    for column, panel in enumerate(panels):
        ax = axes[0, column]
        curves = _curves(omp[omp["task"].isin(tasks)], panel, tasks, ["model", "method", "sparsity"])
        series = []
        for index, model in enumerate(models):
            ours = curves[curves["model"] == model]
            pruned = ours[ours["method"] == "omp"].sort_values("sparsity")
            series.append(style.Series(f"{style.model_name(model)} OMP", 100 * pruned["sparsity"].to_numpy(float),
                                       pruned["mean"].to_numpy(float), pruned["std"].to_numpy(float), f"C{index}",
                                       "os^vD"[index % 5], pruned["at_chance"].to_numpy(bool)))
            full = ours[ours["method"] == "full"]
            if not full.empty:
                ax.axhline(full["mean"].iloc[0], color=f"C{index}", linestyle="--", linewidth=1,
                           label=f"{style.model_name(model)} full")
        style.dodged(ax, series, xs=xs)
        ax.set_title(_panel_title(omp, panel), fontsize=9)
        ax.set_xlabel("Sparsity (%)")
        if column == 0:
            ax.set_ylabel("Dev score")
        ax.grid(alpha=0.3)
    style.legend_below(figure, axes)
    return Drawing(figure)


FIGURES = (
    Figure("fig3_main_results", "Fig. 3: downstream score vs sparsity, every method, per model", draw_main,
           per_model=False),
    Figure("fig9_bert_vs_roberta", "Fig. 9: BERT vs RoBERTa subnetworks under OMP", draw_models, per_model=False),
)
