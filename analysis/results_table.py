"""The numbers behind Fig. 3 as a table: mean ± std per model × method × sparsity × task, and the average.

Laid out as the paper's figures read: one table per model, a row per (sparsity, method) and the full model, a
column per task in Tab. 1's order and "Average" last. The average is over the tasks the model was fine-tuned on
(the table names them); a row that lacks some of them averages the rest and is marked †.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis import style, table

AVERAGE = "average"


@dataclass(frozen=True)
class ResultsTable:
    long: pd.DataFrame
    """One row per (model, method, sparsity, task or "average"): mean, std, n, and for averages the tasks."""
    tasks: dict[str, list[str]]
    """The tasks each model's average is over."""
    masks: pd.DataFrame
    """Which mask step stands for each method and sparsity, so a reader knows what was averaged."""
    sizes: pd.DataFrame
    """Training examples of each model's fine-tunes per task (the whole set, or the largest subset run)."""
    metrics: dict[str, str]
    """The metric each task's score is (Tab. 1: the one that selects the best evaluation)."""


def build(rows: pd.DataFrame) -> ResultsTable:
    results = table.main_results(rows)
    keys = ["model", "method", "sparsity"]
    per_task = table.summarize(results, keys + ["task"])
    tasks = {model: style.ordered(group["task"].unique(), style.TASKS) for model, group in results.groupby("model")}
    averages = pd.concat([table.task_average(results[results["model"] == model], keys, model_tasks)
                          for model, model_tasks in tasks.items()], ignore_index=True)
    averages["task"] = AVERAGE
    long = pd.concat([per_task.assign(tasks=None, complete=None), averages], ignore_index=True)
    long = long[keys + ["task", "mean", "std", "n", "tasks", "complete"]]
    masks = (results.groupby(keys, dropna=False)
             .agg(mask_steps=("mask_step", lambda s: ",".join(str(int(v)) for v in sorted(s.dropna().unique()))))
             .reset_index())
    sizes = (results.assign(train_examples=table.training_examples(results))
             .groupby(["model", "task"])["train_examples"].max().reset_index())
    metrics = results.dropna(subset=["select_metric"]).groupby("task")["select_metric"].first().to_dict()
    return ResultsTable(long, tasks, masks, sizes, metrics)


def wide(results: ResultsTable, model: str) -> tuple[pd.DataFrame, list[str]]:
    """One model's table as text cells: a row per (sparsity, method), a column per task and "Average", "n"; and
    the notes on averages over fewer tasks."""
    rows = results.long[results.long["model"] == model]
    tasks = results.tasks[model]
    columns = tasks + ([AVERAGE] if len(tasks) > 1 else [])
    method_rank = {m: i for i, m in enumerate(style.METHODS)}
    cells = rows.set_index(["sparsity", "method", "task"])
    keys = sorted({(s, m) for s, m in zip(rows["sparsity"], rows["method"])},
                  key=lambda k: (k[0], method_rank.get(k[1], len(method_rank))))
    lines, notes = [], []
    for sparsity, method in keys:
        line = {"Sparsity": "—" if method == "full" else style.percent(sparsity),
                "Method": style.method_name(method)}
        counts = set()
        for column in columns:
            key = (sparsity, method, column)
            if key not in cells.index:
                line[_heading(column, results.metrics)] = "—"
                continue
            cell = cells.loc[key]
            text = style.mean_std_text(cell["mean"], cell["std"])
            if column == AVERAGE and not cell["complete"]:
                text += " †"
                notes.append(f"† {style.method_name(method)} {style.percent(sparsity)}: average of "
                             f"{', '.join(style.task_name(t) for t in cell['tasks'].split(','))}")
            elif column != AVERAGE:
                counts.add(int(cell["n"]))
            line[_heading(column, results.metrics)] = text
        line["n"] = "/".join(map(str, sorted(counts)))
        lines.append(line)
    return pd.DataFrame(lines), notes


def _heading(column: str, metrics: dict[str, str]) -> str:
    return "Average" if column == AVERAGE else style.score_label(column, metrics.get(column))


def notes_below(results: ResultsTable, model: str) -> list[str]:
    """What the averages cover, which mask steps stand for each method, and the training-set sizes."""
    tasks = results.tasks[model]
    out = [f"Average over: {', '.join(style.task_name(t) for t in tasks)}; † averages fewer tasks. "
           "n = runs per cell (mask seeds × fine-tuning seeds)."]
    masks = results.masks[results.masks["model"] == model]
    steps = masks[masks["mask_steps"].ne("") & masks["method"].isin(["imp", "tamt-mlm", "tamt-kd"])]
    if not steps.empty:
        out.append("Masks at step: " + "; ".join(f"{style.method_name(r.method)} {style.percent(r.sparsity)} "
                                                 f"{r.mask_steps}" for r in steps.itertuples()) + ".")
    sizes = results.sizes[results.sizes["model"] == model].set_index("task")["train_examples"]
    out.append("Training examples: " + ", ".join(f"{style.task_name(t)} {sizes[t]:,.0f}" for t in tasks) + ".")
    return out


def markdown(results: ResultsTable) -> str:
    """The table as Markdown, one section per model."""
    out = ["# Results (mean ± std over mask seeds × fine-tuning seeds)", ""]
    for model in results.tasks:
        cells, averages = wide(results, model)
        out += [f"## {style.model_name(model)}", "", *notes_below(results, model), "",
                "| " + " | ".join(cells.columns) + " |", "|" + "---|" * len(cells.columns)]
        out += ["| " + " | ".join(line) + " |" for line in cells.itertuples(index=False)]
        out += ["", *averages, ""]
    return "\n".join(out)


def write(results: ResultsTable, out: Path) -> list[Path]:
    """``results.md`` and ``results.csv`` (long form, one row per cell) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md, csv = out / "results.md", out / "results.csv"
    md.write_text(markdown(results))
    results.long.to_csv(csv, index=False)
    return [md, csv]
