"""What every figure module shares: the :class:`Figure` interface, skipping, and the report of missing cells.

A figure is a pure function of the results DataFrame: it returns a :class:`Drawing` (the matplotlib figure, the
cells of the grid it lacked, and any number the paper quotes, recomputed from the data), or raises :class:`Skip`
with the reason when the table has nothing to draw. It never draws an empty panel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pandas as pd

from analysis import style


class Skip(Exception):
    """The table lacks a figure's inputs; the message says which rows and which sweep would provide them."""


@dataclass
class Drawing:
    figure: object
    missing: list[str] = field(default_factory=list)
    """Cells of the figure's grid the table lacks, e.g. ``"Rand 90%: CoLA, SQuAD"``: drawn without them."""
    findings: list[str] = field(default_factory=list)
    """Numbers the paper quotes, from this table (e.g. Fig. 5's "8.4× fewer iterations")."""


@dataclass(frozen=True)
class Figure:
    """One figure of the paper: ``name`` is the file stem, ``draw`` the pure function that draws it."""

    name: str
    title: str
    draw: Callable[[pd.DataFrame], Drawing]
    per_model: bool = True
    """Drawn for one model (the paper's analyses are on BERT-base); False: every model in one figure (Fig. 3, 9)."""


def missing_cells(rows: pd.DataFrame, methods: Iterable[str], sparsities: Iterable[float],
                  tasks: Iterable[str], prefix: str = "") -> list[str]:
    """Which (method, sparsity) lack which tasks among ``rows`` (fine-tunes): one line per incomplete cell."""
    have = set(zip(rows["method"], rows["sparsity"].round(4), rows["task"]))
    out = []
    for method in methods:
        for sparsity in sorted(sparsities):
            absent = [task for task in tasks if (method, round(sparsity, 4), task) not in have]
            if absent:
                out.append(f"{prefix}{style.method_name(method)} {style.percent(sparsity)}: "
                           f"{', '.join(style.task_name(t) for t in absent)}")
    return out


def task_title(rows: pd.DataFrame, task: str) -> str:
    """"MNLI (Acc (m))": the task and the metric its scores are, when all of ``rows`` agree on one."""
    metrics = rows.loc[rows["task"] == task, "select_metric"].dropna().unique()
    return style.score_label(task, metrics[0] if len(metrics) == 1 else None)


def require(condition: bool, reason: str) -> None:
    if not condition:
        raise Skip(reason)
