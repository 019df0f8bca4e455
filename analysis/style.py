"""One look for every figure: the paper's method and task names, one colour per method, PNG + PDF output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: the analysis runs on clusters and in CI, never with a display

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd

METHODS: dict[str, str] = {"omp": "OMP", "rand": "Rand", "imp": "IMP", "tamt-mlm": "TAMT-MLM",
                           "tamt-kd": "TAMT-KD", "full": "Full model"}
"""Table values → the paper's names (§4.1.1), in the order of its legends."""

COLORS: dict[str, str] = {"omp": "#1f77b4", "rand": "#7f7f7f", "imp": "#2ca02c", "tamt-mlm": "#d62728",
                          "tamt-kd": "#ff7f0e", "full": "#000000"}
"""One colour per method, the same in every figure."""

MARKERS: dict[str, str] = {"omp": "o", "rand": "v", "imp": "s", "tamt-mlm": "^", "tamt-kd": "D", "full": "*"}

FALLBACK_COLORS: tuple[str, ...] = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79", "#ad494a",
                                    "#637939")
"""Colours of methods the paper does not have (a method registered later, e.g. ``wanda``): none of them is one
of :data:`COLORS`."""
FALLBACK_MARKERS: tuple[str, ...] = ("P", "X", "h", "p", "<", ">", "d", "8", "H")
"""Their markers: 9 against 8 colours, so the first 72 extra methods each get a pair of their own."""

_extra: dict[str, int] = {}
"""Methods outside :data:`METHODS` → their index in the fallback palette, in the order :func:`register` met them."""

TASKS: dict[str, str] = {"mnli": "MNLI", "sst2": "SST-2", "cola": "CoLA", "stsb": "STS-B", "mrpc": "MRPC",
                         "rte": "RTE", "squad": "SQuAD"}
"""Task names in the order of the paper's Tab. 1."""

METRICS: dict[str, str] = {"accuracy": "Acc", "accuracy_matched": "Acc (m)", "accuracy_mismatched": "Acc (mm)",
                           "mcc": "Mcc", "pearson": "Pearson", "spearman": "Spearman", "f1": "F1",
                           "exact_match": "EM", "combined": "Acc+F1"}

MODELS: dict[str, str] = {"bert-base-uncased": "BERT-base", "roberta-base": "RoBERTa-base"}


def method_name(method: str) -> str:
    return METHODS.get(method, method)


def register(methods) -> None:
    """Give every method outside the paper's a colour and marker of the fallback palette, in alphabetical order,
    so that they are the same in every figure of a run (``analysis.figures`` registers the table's methods first;
    a method met later is registered then)."""
    for method in sorted(set(methods) - set(COLORS) - set(_extra), key=str):
        _extra[method] = len(_extra)


def method_color(method: str) -> str:
    """The method's colour: the paper's, or one of :data:`FALLBACK_COLORS` for any other method."""
    if method in COLORS:
        return COLORS[method]
    register([method])
    return FALLBACK_COLORS[_extra[method] % len(FALLBACK_COLORS)]


def method_marker(method: str) -> str:
    """The method's marker: the paper's, or one of :data:`FALLBACK_MARKERS` for any other method."""
    if method in MARKERS:
        return MARKERS[method]
    register([method])
    return FALLBACK_MARKERS[_extra[method] % len(FALLBACK_MARKERS)]


def method_order(methods) -> list[str]:
    """The paper's methods in its order, then any other method alphabetically."""
    return ordered(methods, METHODS)


def task_name(task: str) -> str:
    return TASKS.get(task, task)


def model_name(model: str) -> str:
    return MODELS.get(model, model)


def ordered(values, order) -> list:
    """``values`` in the order of ``order`` (a dict's keys), unknown ones last, alphabetically."""
    values = set(values)
    return [v for v in order if v in values] + sorted(v for v in values if v not in order)


def score_label(task: str, metric: str | None) -> str:
    return f"{task_name(task)} ({METRICS.get(metric, metric)})" if metric else task_name(task)


def tasks_text(tasks) -> str:
    """"SST-2", or "average of MNLI, SST-2": what a score axis shows."""
    names = [task_name(task) for task in tasks]
    return names[0] if len(names) == 1 else f"average of {', '.join(names)}"


def tasks_title(axes, task_sets: dict) -> str | None:
    """Which tasks the scores average: a title for the whole figure when every column shares them (returned, for
    :func:`legend_below`), else added to each column's title (``task_sets``: column → tasks, in column order)."""
    distinct = {tuple(tasks) for tasks in task_sets.values()}
    if len(distinct) == 1:
        return f"Score: {tasks_text(next(iter(distinct)))}"
    for ax, tasks in zip(axes[0], task_sets.values()):
        ax.set_title(f"{ax.get_title()}\n{tasks_text(tasks)}", fontsize=8)
    return None


def percent(sparsity) -> str:
    return f"{100 * float(sparsity):.0f}%"


def grid(rows: int, columns: int, *, width: float = 3.4, height: float = 2.8, **kwargs):
    """A figure of ``rows`` × ``columns`` panels, returned as a 2-D array of axes."""
    figure, axes = plt.subplots(rows, columns, figsize=(max(width * columns, 5.5), height * rows), squeeze=False,
                                **kwargs)
    return figure, axes


def line(ax, x, mean, std, *, method: str | None = None, label: str | None = None, color: str | None = None,
         marker: str | None = None, linestyle: str = "-") -> None:
    """A mean curve with its standard deviation shaded (the paper's "shaded areas denote standard deviations")."""
    order = np.argsort(np.asarray(x, dtype=float))
    x, mean = np.asarray(x, dtype=float)[order], np.asarray(mean, dtype=float)[order]
    std = np.nan_to_num(np.asarray(std, dtype=float)[order])
    color = color or (method_color(method) if method else None)
    shape = marker or (method_marker(method) if method else "o")
    label = label or (method_name(method) if method else None)
    if len(np.unique(x)) == 1:  # one x: a shaded band would have no width
        ax.errorbar(x[:1], mean[:1], yerr=std[:1], marker=shape, markersize=5, color=color, linestyle="none",
                    capsize=3, label=label)
        return
    ax.plot(x, mean, marker=shape, markersize=4, color=color, linestyle=linestyle, label=label)
    if np.any(std > 0):
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.18, linewidth=0)


def reference(ax, value: float, label: str = "Full model", std: float | None = None) -> None:
    """The full model's score as a horizontal dashed line, its standard deviation (when given) a faint band."""
    ax.axhline(value, color=COLORS["full"], linestyle="--", linewidth=1, label=label)
    if std is not None and not pd.isna(std) and std > 0:
        ax.axhspan(value - std, value + std, color=COLORS["full"], alpha=0.06, linewidth=0)


CHANCE_LABEL = "hollow: at chance (°)"
"""The legend note of a hollow marker: a cell the results table marks ° (``analysis.results_table``)."""


@dataclass
class Series:
    """One curve of a comparison panel: mean ± std at each x, and which points are at chance level."""

    label: str
    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    color: str
    marker: str
    chance: np.ndarray | None = None
    """One bool per point: drawn hollow (:data:`CHANCE_LABEL`)."""
    linestyle: str = "-"

    @classmethod
    def of(cls, method: str, curve: pd.DataFrame, x: str = "sparsity", scale: float = 100.0,
           chance: str | None = "at_chance") -> Series:
        """A method's curve from a frame with ``x``, ``mean``, ``std`` (and a bool column ``chance``)."""
        curve = curve.sort_values(x)
        flags = curve[chance].fillna(False).to_numpy(dtype=bool) if chance and chance in curve else None
        return cls(method_name(method), scale * curve[x].to_numpy(dtype=float), curve["mean"].to_numpy(dtype=float),
                   curve["std"].to_numpy(dtype=float), method_color(method), method_marker(method), flags)


def dodge_step(xs: Sequence[float], slots: int) -> tuple[float, bool]:
    """How far apart neighbouring series are drawn, and whether the panel has one x value only.

    One x: the series stand one axis unit apart around it (a category, not a scale). Several: a small fraction of
    the closest two x values, so that the points of methods with equal means stay side by side."""
    values = np.unique(np.asarray(list(xs), dtype=float))
    if len(values) <= 1:
        return 1.0, True
    return float(np.min(np.diff(values))) * min(0.04, 0.3 / max(slots - 1, 1)), False


def dodged(ax, series: Sequence[Series], *, slots: int | None = None, first: int = 0,
           xs: Sequence[float] | None = None, tick_format: str = "{:g}") -> list[np.ndarray]:
    """Draw ``series`` side by side so none hides another; returns the x positions each was drawn at.

    Every point is mean ± std (an error bar: a band of one x has no width). Each series is shifted horizontally
    by its slot (``first`` + its index, of ``slots``, by default as many as ``series``) around the true x. With
    one x value in the panel the points stand alone, no line joins them, and the axis spans the slots with one
    tick at that value; with several, each series is a line through its points and the ticks are the x values.
    Points at chance level are drawn hollow, with a legend note. ``xs``: every x value of the panel (default: the
    series'), when series on another axis share it."""
    slots = slots or len(series)
    xs = sorted({float(x) for s in series for x in s.x} if xs is None else set(map(float, xs)))
    if not xs:
        return []
    step, single = dodge_step(xs, slots)
    centre = (slots - 1) / 2
    positions = []
    for index, s in enumerate(series):
        at = np.asarray(s.x, dtype=float) + (first + index - centre) * step
        std = np.nan_to_num(np.asarray(s.std, dtype=float))
        ax.errorbar(at, s.mean, yerr=std, color=s.color, marker=s.marker, markersize=5 if single else 4,
                    linestyle="none" if single else s.linestyle, linewidth=1.2, elinewidth=1,
                    capsize=3 if single else 2, label=s.label, zorder=3)
        if s.chance is not None and np.any(s.chance):
            ax.plot(at[s.chance], np.asarray(s.mean)[s.chance], linestyle="none", marker=s.marker,
                    markersize=5 if single else 4, markerfacecolor="white", markeredgecolor=s.color,
                    markeredgewidth=1.2, zorder=4)
            ax.plot([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="0.3",
                    label=CHANCE_LABEL)
        positions.append(at)
    if single:
        ax.set_xlim(xs[0] - (centre + 1) * step, xs[0] + (centre + 1) * step)
    ax.set_xticks(xs, [tick_format.format(x) for x in xs])
    return positions


def _legend_rank(label: str) -> int:
    """Methods in the paper's order (a label may add a remark: "TAMT-MLM (along training)"), then the rest."""
    names = list(METHODS.values())
    return next((i for i, name in enumerate(names) if label == name or label.startswith(name + " (")), len(names))


def legend_below(figure, axes, title: str | None = None) -> None:
    """One legend for the whole figure, under the panels, from every label any panel drew, methods first; and
    ``title`` above the panels."""
    handles: dict[str, object] = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = sorted(handles, key=_legend_rank)  # stable: non-methods keep their drawing order
    height = figure.get_size_inches()[1]
    top = 1 - 0.35 / height if title else 1
    if title:
        figure.suptitle(title, fontsize=10)
    if not labels:
        figure.tight_layout(rect=(0, 0, 1, top))
        return
    width = figure.get_size_inches()[0]
    longest = max(len(label) for label in labels)
    columns = max(1, min(len(labels), int(width / (0.4 + 0.085 * longest))))
    rows = -(-len(labels) // columns)
    legend = 0.25 * rows + 0.15  # inches under the panels: the figure grows by them, the panels keep their height
    figure.set_size_inches(width, height + legend)
    figure.legend([handles[label] for label in labels], labels, loc="lower center", ncol=columns, frameon=False,
                  bbox_to_anchor=(0.5, 0.0))
    figure.tight_layout(rect=(0, legend / (height + legend), 1, 1 - (1 - top) * height / (height + legend)))


def count_text(value: float) -> str:
    """1000 → "1K", 392702 → "393K", 320 → "320"."""
    return f"{value / 1000:.3g}K" if value >= 1000 else f"{value:.0f}"


def size_axis(ax, sizes) -> None:
    """A log x-axis with a tick at each training-set size that was run (Fig. 7)."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(list(sizes), [count_text(s) for s in sizes], rotation=45 if len(sizes) > 4 else 0, fontsize=8)


def hide_unused(axes, used: int) -> None:
    for ax in np.ravel(axes)[used:]:
        ax.set_visible(False)


def save(figure, out: Path, name: str) -> list[Path]:
    """Write ``name``.png (150 dpi) and ``name``.pdf under ``out``; closes the figure."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        figure.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(figure)
    return paths


def mean_std_text(mean: float, std: float, digits: int = 1) -> str:
    if pd.isna(mean):
        return ""
    return f"{mean:.{digits}f}" if pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"
