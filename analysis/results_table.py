"""The numbers behind Fig. 3 as a table: mean ± std per model × method × sparsity × task, and the average.

Laid out as the paper's figures read: one table per model, a row per (sparsity, method) and the full model, a
column per task in Tab. 1's order and "Average" last. The average is over the tasks the model was fine-tuned on
(the table names them); a row that lacks some of them averages the rest and is marked †.

Two marks say how much a number means. ``≈``: the cell's difference to OMP at the same sparsity is within the
seed spread (no larger than the larger of the two standard deviations, of those measured), so the runs do not
tell the two apart.
``°``: the cell is at chance level, within one standard deviation (or one point) of what a predictor that ignores
its input scores (the majority class; 0 for correlations and SQuAD): that subnetwork learnt nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pandas as pd

from analysis import style, table

AVERAGE = "average"
WITHIN_NOISE, AT_CHANCE = "≈", "°"
CHANCE_MARGIN = 1.0
"""Points above the chance level a cell with no measured spread (one run) still counts as at chance."""
LEGEND = (f"{WITHIN_NOISE} differs from OMP at this sparsity by no more than the larger seed std of the two; "
          f"{AT_CHANCE} at chance level (within one std, or {CHANCE_MARGIN:g} point, of a predictor that ignores its "
          "input).")


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
    per_task["chance"] = results.groupby(keys + ["task"], dropna=False)["chance"].mean().to_numpy()
    tasks = {model: style.ordered(group["task"].unique(), style.TASKS) for model, group in results.groupby("model")}
    averages = pd.concat([table.task_average(results[results["model"] == model], keys, model_tasks)
                          for model, model_tasks in tasks.items()], ignore_index=True)
    averages["task"] = AVERAGE
    averages["chance"] = [per_task[(per_task["model"] == a.model) & per_task["task"].isin(a.tasks.split(","))
                                   ].drop_duplicates("task")["chance"].mean() for a in averages.itertuples()]
    long = pd.concat([per_task.assign(tasks=None, complete=None), averages], ignore_index=True)
    long = long[keys + ["task", "mean", "std", "n", "chance", "tasks", "complete"]]
    long["marks"] = marks(long)
    masks = (results.groupby(keys, dropna=False)
             .agg(mask_steps=("mask_step", lambda s: ",".join(str(int(v)) for v in sorted(s.dropna().unique()))))
             .reset_index())
    sizes = (results.assign(train_examples=table.training_examples(results))
             .groupby(["model", "task"])["train_examples"].max().reset_index())
    metrics = results.dropna(subset=["select_metric"]).groupby("task")["select_metric"].first().to_dict()
    return ResultsTable(long, tasks, masks, sizes, metrics)


def marks(long: pd.DataFrame) -> pd.Series:
    """Each cell's marks: :data:`WITHIN_NOISE` against OMP at its sparsity, :data:`AT_CHANCE` (see the module)."""
    omp = long[long["method"] == "omp"].set_index(["model", "sparsity", "task"])
    out = []
    for cell in long.itertuples():
        text = ""
        key = (cell.model, cell.sparsity, cell.task)
        if cell.method not in ("omp", "full") and key in omp.index:
            reference = omp.loc[key]
            if within_spread(cell.mean, cell.std, reference["mean"], reference["std"]):
                text += WITHIN_NOISE
        if at_chance(cell.mean, cell.std, cell.chance):
            text += AT_CHANCE
        out.append(text)
    return pd.Series(out, index=long.index, dtype=object)


def seed_spread(std_a: float, std_b: float) -> float:
    """The larger of two standard deviations, of those measured (a cell of one run has none); NaN when neither
    is."""
    measured = [float(s) for s in (std_a, std_b) if not pd.isna(s)]
    return max(measured) if measured else float("nan")


def within_spread(mean_a: float, std_a: float, mean_b: float, std_b: float) -> bool:
    """Whether two cells differ by no more than :func:`seed_spread` (:data:`WITHIN_NOISE`); never when neither
    has a spread."""
    spread = seed_spread(std_a, std_b)
    return not pd.isna(spread) and abs(mean_a - mean_b) <= spread


def at_chance(mean: float, std: float, chance: float) -> bool:
    """Whether a cell is at chance level (:data:`AT_CHANCE`): its mean is no more than one standard deviation (at
    least :data:`CHANCE_MARGIN`) above the score of a predictor that ignores its input. The figures mark the same
    cells (hollow markers)."""
    if pd.isna(chance) or pd.isna(mean):
        return False
    return bool(mean - chance <= (CHANCE_MARGIN if pd.isna(std) else max(std, CHANCE_MARGIN)))


def marked_cells(rows: pd.DataFrame) -> pd.DataFrame:
    """The table's cells (:attr:`ResultsTable.long`) with ``at_chance``: what Fig. 1, 3 and 8 draw, so that a
    figure's point and the table's cell are one number with one mark."""
    long = build(rows).long
    return long.assign(at_chance=long["marks"].str.contains(AT_CHANCE, regex=False))


def method_rank(method: str) -> tuple[int, str]:
    """Sort key of methods: the paper's in its order, then any other alphabetically."""
    order = list(style.METHODS)
    return (order.index(method), "") if method in order else (len(order), str(method))


def wide(results: ResultsTable, model: str) -> tuple[pd.DataFrame, list[str]]:
    """One model's table as text cells: a row per (sparsity, method), a column per task and "Average", "n"; and
    the notes on averages over fewer tasks."""
    rows = results.long[results.long["model"] == model]
    tasks = results.tasks[model]
    columns = tasks + ([AVERAGE] if len(tasks) > 1 else [])
    by_cell = rows.set_index(["sparsity", "method", "task"])
    keys = sorted({(s, m) for s, m in zip(rows["sparsity"], rows["method"])},
                  key=lambda k: (k[0], method_rank(k[1])))
    lines, notes = [], []
    for sparsity, method in keys:
        line = {"Sparsity": "—" if method == "full" else style.percent(sparsity),
                "Method": style.method_name(method)}
        counts = set()
        for column in columns:
            key = (sparsity, method, column)
            if key not in by_cell.index:
                line[_heading(column, results.metrics)] = "—"
                continue
            cell = by_cell.loc[key]
            text = style.mean_std_text(cell["mean"], cell["std"]) + (f" {cell['marks']}" if cell["marks"] else "")
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
           "n = runs per cell (mask seeds × fine-tuning seeds).", LEGEND]
    masks = results.masks[results.masks["model"] == model]
    steps = masks[masks["mask_steps"].ne("") & masks["method"].isin(["imp", "tamt-mlm", "tamt-kd"])]
    if not steps.empty:
        ordered = sorted(steps.itertuples(), key=lambda r: (method_rank(r.method), r.sparsity))
        out.append("Masks at step: " + "; ".join(f"{style.method_name(r.method)} {style.percent(r.sparsity)} "
                                                 f"{r.mask_steps}" for r in ordered) + ".")
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


def text(results: ResultsTable) -> str:
    """The table for a terminal: per model, its cells aligned in columns, then the notes and marks."""
    out = ["", "Results (mean ± std over seeds; " + LEGEND[0].lower() + LEGEND[1:] + ")"]
    for model in results.tasks:
        cells, averages = wide(results, model)
        out += ["", style.model_name(model), cells.to_string(index=False), *averages, *notes_below(results, model)[2:]]
    return "\n".join(out) + "\n"


def print_so_far(runs: str | Path, out: TextIO) -> None:
    """The table of the results so far under ``runs`` (the newest row of each cell), as a sweep prints it when it
    ends; nothing when no fine-tune has finished."""
    try:
        built = build(table.newest(table.load(runs))[0])
    except (table.TableError, KeyError, ValueError):
        return
    print(text(built), file=out)


def write(results: ResultsTable, out: Path) -> list[Path]:
    """``results.md`` and ``results.csv`` (long form, one row per cell) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md, csv = out / "results.md", out / "results.csv"
    md.write_text(markdown(results))
    results.long.to_csv(csv, index=False)
    return [md, csv]
