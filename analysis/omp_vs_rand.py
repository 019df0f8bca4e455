"""Fig. 1 and 8: OMP vs random subnetworks across sparsities (§1, App. A).

Fig. 1: the average downstream score (left) and the MLM dev loss (right) vs sparsity; Fig. 8: the score on each
task, with the OMP − Rand gap on a second axis (red, symmetric around 0). The full model is the reference.
"""

from __future__ import annotations

import pandas as pd

from analysis import results_table, style, table
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


def _cells(rows: pd.DataFrame, task: str) -> pd.DataFrame:
    """The results table's cells of OMP, Rand and the full model on ``task`` (or "average": complete ones only),
    with ``at_chance``."""
    cells = results_table.marked_cells(rows)
    cells = cells[cells["method"].isin([*METHODS, "full"]) & (cells["task"] == task)]
    return cells[cells["complete"].fillna(True).astype(bool)] if task == results_table.AVERAGE else cells


def _full(ax, cells: pd.DataFrame) -> None:
    full = cells[cells["method"] == "full"]
    if not full.empty:
        style.reference(ax, full["mean"].iloc[0], std=full["std"].iloc[0])


def draw_overview(rows: pd.DataFrame) -> Drawing:
    results = _results(rows)
    tasks = style.ordered(results["task"].unique(), style.TASKS)
    sparsities = sorted(results.loc[results["method"].isin(METHODS), "sparsity"].unique())
    missing = missing_cells(results, METHODS, sparsities, tasks)
    losses = _dev_losses(rows)
    if losses.empty:
        missing.append("MLM dev losses of OMP/Rand masks (searches ran with dev_loss_batches=0)")
    figure, axes = style.grid(1, 2 if not losses.empty else 1, width=4.2, height=3.2)
    averages = _cells(rows, results_table.AVERAGE if len(tasks) > 1 else tasks[0])
    xs = [100 * s for s in sparsities]
    ax = axes[0, 0]
    style.dodged(ax, [style.Series.of(m, averages[averages["method"] == m]) for m in METHODS
                      if (averages["method"] == m).any()], xs=xs)
    _full(ax, averages)
    ax.set(xlabel="Sparsity (%)", ylabel="Average dev score" if len(tasks) > 1 else "Dev score",
           title=f"Downstream: {style.tasks_text(tasks)}")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    if not losses.empty:
        ax = axes[0, 1]
        style.dodged(ax, [style.Series.of(m, losses[losses["method"] == m]) for m in METHODS
                          if (losses["method"] == m).any()])
        dense = _dense_loss(rows)
        if dense is not None:
            style.reference(ax, dense)
        ax.set(xlabel="Sparsity (%)", ylabel="MLM dev loss", title="Pre-training")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    style.legend_below(figure, axes)
    return Drawing(figure, missing)


GAP_MIN_SPAN = 2.0
"""Fig. 8's gap axis spans at least ± this many points around 0, so that a gap within the seed noise looks small."""
GAP_COLOR = "#d62728"
GAP_LABEL = "OMP − Rand (right axis)"


def gap(cells: pd.DataFrame) -> pd.DataFrame:
    """OMP's mean minus Rand's per sparsity, with the spread of that difference (√(std_OMP² + std_Rand²), the
    two sets of runs independent; NaN where either is one run)."""
    omp = cells[cells["method"] == "omp"].set_index("sparsity")
    rand = cells[cells["method"] == "rand"].set_index("sparsity")
    both = omp.index.intersection(rand.index)
    out = pd.DataFrame({"sparsity": both, "mean": (omp.loc[both, "mean"] - rand.loc[both, "mean"]).to_numpy(),
                        "std": ((omp.loc[both, "std"] ** 2 + rand.loc[both, "std"] ** 2) ** 0.5).to_numpy()})
    return out.sort_values("sparsity").reset_index(drop=True)


def gap_limit(gaps: pd.DataFrame) -> float:
    """Half the span of the gap axis, symmetric around 0: the largest |gap| + its spread, with a margin, and at
    least :data:`GAP_MIN_SPAN`."""
    reach = (gaps["mean"].abs() + gaps["std"].fillna(0)).max()
    return max(GAP_MIN_SPAN, 1.15 * float(reach)) if len(gaps) else GAP_MIN_SPAN


def draw_per_task(rows: pd.DataFrame) -> Drawing:
    results = _results(rows)
    tasks = style.ordered(results["task"].unique(), style.TASKS)
    sparsities = sorted(results.loc[results["method"].isin(METHODS), "sparsity"].unique())
    xs = [100 * s for s in sparsities]
    all_cells = results_table.marked_cells(rows)
    columns = min(len(tasks), 4)
    figure, axes = style.grid((len(tasks) + columns - 1) // columns, columns, width=3.6, height=3.0)
    for ax, task in zip(axes.ravel(), tasks):
        ours = all_cells[all_cells["method"].isin([*METHODS, "full"]) & (all_cells["task"] == task)]
        style.dodged(ax, [style.Series.of(m, ours[ours["method"] == m]) for m in METHODS
                          if (ours["method"] == m).any()], slots=3, xs=xs)
        _full(ax, ours)
        gaps = gap(ours)
        if not gaps.empty:
            twin = ax.twinx()
            series = style.Series("OMP − Rand", 100 * gaps["sparsity"].to_numpy(dtype=float),
                                  gaps["mean"].to_numpy(dtype=float), gaps["std"].to_numpy(dtype=float), GAP_COLOR,
                                  "D", linestyle="--")
            style.dodged(twin, [series], slots=3, first=2, xs=xs)
            limit = gap_limit(gaps)
            twin.set_ylim(-limit, limit)
            twin.axhline(0, color=GAP_COLOR, linestyle=":", linewidth=0.8)
            twin.set_ylabel("OMP − Rand (points)", color=GAP_COLOR, fontsize=8)
            twin.tick_params(axis="y", colors=GAP_COLOR, labelsize=7)
            ax.errorbar([], [], yerr=[], color=GAP_COLOR, linestyle="--", marker="D", markersize=4,
                        label=GAP_LABEL)  # in the shared legend
        title = task_title(results, task)
        if len(gaps) == 1:  # one sparsity: the gap is one number, said in words too
            one = gaps.iloc[0]
            spread = "" if pd.isna(one["std"]) else f" ± {one['std']:.1f}"
            title += f"\nOMP − Rand at {style.percent(one['sparsity'])}: {one['mean']:+.1f}{spread} points"
        ax.set(xlabel="Sparsity (%)", title=title)
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
