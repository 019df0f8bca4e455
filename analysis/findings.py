"""What the results table says, in sentences with its numbers: the findings that lead ``report.html``.

Every statement is read off the table's cells (:class:`analysis.results_table.ResultsTable`) with the table's own
rules, so a sentence and a cell never disagree:

* **highest**: the masked method with the highest mean at a sparsity, and which others are within its seed spread
  (their difference to it is no larger than the larger standard deviation of the two, the rule of ``≈``);
* **against OMP**: which methods the runs cannot tell apart from OMP (``≈``) and which differ beyond the spread,
  with the signed difference;
* **chance level**: the cells marked ``°``;
* **coverage**: how many runs a cell averages, averages over fewer tasks (†), and a grid of one sparsity (no trend
  over sparsity can be read from it).

For each sparsity the statements are about the average over the model's tasks (one task: that task); with several
tasks, one more line per task says which method is highest at which sparsities.
"""

from __future__ import annotations

import pandas as pd

from analysis import results_table, style
from analysis.results_table import AT_CHANCE, AVERAGE, WITHIN_NOISE, ResultsTable

CHANCE_LISTED = 8
"""Chance-level cells named one by one; more are counted."""


def _value(cell) -> str:
    return style.mean_std_text(cell["mean"], cell["std"])


def _within(a, b) -> bool:
    """``a`` and ``b`` (cells) differ by no more than the larger of their standard deviations (``≈``'s rule)."""
    return results_table.within_spread(a["mean"], a["std"], b["mean"], b["std"])


def _unmeasured(a, b) -> bool:
    """Neither cell has a spread (one run each): no statement about noise can be made."""
    return pd.isna(results_table.seed_spread(a["std"], b["std"]))


def _names(methods) -> str:
    names = [style.method_name(m) for m in methods]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _column_text(column: str, tasks: list[str]) -> str:
    return style.tasks_text(tasks) if column == AVERAGE else f"{style.task_name(column)} scores"


def highest(cells: pd.DataFrame) -> tuple[str, list[str]] | None:
    """The masked method with the highest mean among ``cells`` (one sparsity, one column), and the others within
    its seed spread, best first."""
    masked = cells[cells["method"] != "full"].dropna(subset=["mean"])
    if masked.empty:
        return None
    masked = masked.loc[sorted(masked.index, key=lambda i: (-masked.at[i, "mean"],
                                                             results_table.method_rank(masked.at[i, "method"])))]
    best = masked.iloc[0]
    tied = [row["method"] for _, row in masked.iloc[1:].iterrows() if _within(best, row)]
    return best["method"], tied


def signed(value: float) -> str:
    """+1.3, −0.4, and 0.0 for what rounds to zero (not "+0.0" or "-0.0")."""
    rounded = round(float(value), 1)
    return "0.0" if rounded == 0 else f"{rounded:+.1f}".replace("-", "−")


def _sparsity_line(cells: pd.DataFrame, full: pd.DataFrame, sparsity: float) -> str:
    here = cells.set_index("method")
    found = highest(cells)
    parts = [f"{style.percent(sparsity)}:"]
    if found is not None:
        best, tied = found
        text = f"{style.method_name(best)} scores highest, {_value(here.loc[best])}"
        if AT_CHANCE in here.loc[best, "marks"]:
            text += f" {AT_CHANCE} (at chance level)"
        if not full.empty:
            gap = here.loc[best, "mean"] - full["mean"].iloc[0]
            text += f" ({abs(round(gap, 1)):.1f} {'below' if gap < 0 else 'above'} the full model)"
        others = [m for m in here.index if m not in (best, "full")]
        if tied:
            text += "; " + ", ".join(f"{style.method_name(m)} {_value(here.loc[m])}" for m in tied) + \
                    (" is" if len(tied) == 1 else " are") + " within its seed spread"
        elif others:
            runner = sorted(others, key=lambda m: (-here.loc[m, "mean"], results_table.method_rank(m)))[0]
            relation = ("ahead of the next (one run each: no seed spread to compare)"
                        if _unmeasured(here.loc[best], here.loc[runner]) else "beyond the seed spread of the next")
            text += f", {relation}, {style.method_name(runner)} {_value(here.loc[runner])}"
        parts.append(text + ".")
    if "omp" in here.index:
        compared = [m for m in style.method_order(here.index) if m not in ("omp", "full")]
        same = [m for m in compared if WITHIN_NOISE in here.loc[m, "marks"]]
        single = [m for m in compared if m not in same and _unmeasured(here.loc[m], here.loc["omp"])]
        apart = [m for m in compared if m not in same + single and not pd.isna(here.loc[m, "mean"])]

        def diff(m):
            return f"{style.method_name(m)} {signed(here.loc[m, 'mean'] - here.loc['omp', 'mean'])}"

        against = []
        if same:
            against.append(f"within the seed spread {', '.join(map(diff, same))}")
        if apart:
            against.append(f"beyond it {', '.join(map(diff, apart))}")
        if single:
            against.append(f"one run each, no spread to compare {', '.join(map(diff, single))}")
        if against:
            parts.append(f"Against OMP ({_value(here.loc['omp'])}): {'; '.join(against)}.")
    return " ".join(parts)


def percents(chosen: list[float], grid: list[float]) -> str:
    """Sparsities as text, three or more neighbours of ``grid`` as a range: "20%, 50–90%"."""
    index = {s: i for i, s in enumerate(grid)}
    runs: list[list[float]] = []
    for sparsity in sorted(chosen):
        if runs and index[sparsity] == index[runs[-1][-1]] + 1:
            runs[-1].append(sparsity)
        else:
            runs.append([sparsity])
    return ", ".join(f"{100 * run[0]:.0f}–{style.percent(run[-1])}" if len(run) >= 3 else
                     ", ".join(map(style.percent, run)) for run in runs)


def _best_per_task(long: pd.DataFrame, tasks: list[str], sparsities: list[float]) -> list[str]:
    out = []
    for task in tasks:
        winners: dict[str, list[float]] = {}
        chance: list[float] = []
        for sparsity in sparsities:
            cells = long[(long["task"] == task) & (long["sparsity"] == sparsity)]
            found = highest(cells)
            if found is None:
                continue
            if AT_CHANCE in cells.set_index("method").loc[found[0], "marks"]:
                chance.append(sparsity)  # the highest of cells at chance level says nothing
            else:
                winners.setdefault(found[0], []).append(sparsity)
        ranked = sorted(winners.items(), key=lambda item: (-len(item[1]), results_table.method_rank(item[0])))
        text = [f"{style.method_name(m)} at {percents(at, sparsities)}" for m, at in ranked]
        if chance:
            text.append(f"every method at chance level at {percents(chance, sparsities)}")
        if text:
            out.append(f"Highest on {style.task_name(task)}: {'; '.join(text)}.")
    return out


def _chance_cells(long: pd.DataFrame) -> list[str]:
    at = long[long["marks"].str.contains(AT_CHANCE, regex=False) & (long["task"] != AVERAGE)]
    if at.empty:
        return []
    task_rank = {task: i for i, task in enumerate(style.TASKS)}
    at = at.loc[sorted(at.index, key=lambda i: (at.at[i, "sparsity"], results_table.method_rank(at.at[i, "method"]),
                                                task_rank.get(at.at[i, "task"], len(task_rank)), at.at[i, "task"]))]
    named = [f"{style.method_name(c.method)} {style.percent(c.sparsity)} {style.task_name(c.task)} "
             f"{style.mean_std_text(c.mean, c.std)} (chance {c.chance:.1f})"
             for c in at.head(CHANCE_LISTED).itertuples()]
    more = f", and {len(at) - CHANCE_LISTED} more" if len(at) > CHANCE_LISTED else ""
    return [f"At chance level ({AT_CHANCE}, no better than a predictor that ignores its input): "
            f"{'; '.join(named)}{more}."]


def model_findings(results: ResultsTable, model: str) -> list[str]:
    """The findings of one model's table, as sentences."""
    long = results.long[results.long["model"] == model]
    tasks = results.tasks[model]
    column = AVERAGE if len(tasks) > 1 else tasks[0]
    masked = long[long["method"] != "full"]
    sparsities = sorted(masked["sparsity"].unique())
    full = long[(long["method"] == "full") & (long["task"] == column)]
    lead = f"Scores below are the {_column_text(column, tasks)}"
    out = [lead + (f"; the full model scores {_value(full.iloc[0])}." if not full.empty else ".")]
    for sparsity in sparsities:
        cells = masked[(masked["sparsity"] == sparsity) & (masked["task"] == column)]
        if column == AVERAGE:
            cells = cells[cells["complete"].fillna(False).astype(bool)]
        if not cells.empty:
            out.append(_sparsity_line(cells, full, sparsity))
    if len(tasks) > 1:
        out += _best_per_task(masked, tasks, sparsities)
    out += _chance_cells(long)
    runs = sorted({int(n) for n in long.loc[long["task"] != AVERAGE, "n"].dropna()})
    if runs:
        n = f"{runs[0]}" if len(runs) == 1 else f"{runs[0]} to {runs[-1]}"
        note = (f"Each cell averages {n} run{'s' if runs[-1] > 1 else ''} (mask seeds × fine-tuning seeds); "
                "\"within the seed spread\" means the difference is no larger than the larger standard deviation of "
                "the two cells, so these runs do not tell them apart.")
        if len(sparsities) == 1:
            note += f" The table has one sparsity ({style.percent(sparsities[0])}): it shows no trend over sparsity."
        out.append(note)
    partial = long[(long["task"] == AVERAGE) & (long["complete"] == False)]  # noqa: E712 (a column of objects)
    if len(tasks) > 1 and not partial.empty:
        out.append(f"{len(partial)} average{'s' if len(partial) > 1 else ''} over fewer tasks (†) "
                   "are left out of the statements above.")
    return out


def findings(results: ResultsTable) -> dict[str, list[str]]:
    """The findings of every model's table: model → sentences."""
    return {model: model_findings(results, model) for model in results.tasks}
