"""One look for every figure: the paper's method and task names, one colour per method, PNG + PDF output."""

from __future__ import annotations

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

TASKS: dict[str, str] = {"mnli": "MNLI", "sst2": "SST-2", "cola": "CoLA", "stsb": "STS-B", "mrpc": "MRPC",
                         "rte": "RTE", "squad": "SQuAD"}
"""Task names in the order of the paper's Tab. 1."""

METRICS: dict[str, str] = {"accuracy": "Acc", "accuracy_matched": "Acc (m)", "accuracy_mismatched": "Acc (mm)",
                           "mcc": "Mcc", "pearson": "Pearson", "spearman": "Spearman", "f1": "F1",
                           "exact_match": "EM", "combined": "Acc+F1"}

MODELS: dict[str, str] = {"bert-base-uncased": "BERT-base", "roberta-base": "RoBERTa-base"}


def method_name(method: str) -> str:
    return METHODS.get(method, method)


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
    color = color or COLORS.get(method, None)
    ax.plot(x, mean, marker=marker or MARKERS.get(method, "o"), markersize=4, color=color, linestyle=linestyle,
            label=label or (method_name(method) if method else None))
    if np.any(std > 0):
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.18, linewidth=0)


def reference(ax, value: float, label: str = "Full model") -> None:
    """The full model's score as a horizontal dashed line."""
    ax.axhline(value, color=COLORS["full"], linestyle="--", linewidth=1, label=label)


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
    figure.legend([handles[label] for label in labels], labels, loc="lower center", ncol=columns, frameon=False,
                  bbox_to_anchor=(0.5, 0.0))
    figure.tight_layout(rect=(0, min(0.4, 0.3 * rows / height), 1, top))


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
