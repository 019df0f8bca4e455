"""Fig. 4, 10, 11: pre-training dev loss (MLM, KD) against downstream score, per sparsity (§4.2.2, App. E).

Each point is one mask: TAMT's masks along its training run (joined by a line in step order), IMP's and Rand's
masks of each seed, the OMP mask, and the full model (its dev losses are the ``dense-loss`` row). A point's score is
the mean over its fine-tuning seeds: on each task (Fig. 10 for MLM, Fig. 11 for KD), or averaged over the tasks
that every TAMT checkpoint was fine-tuned on (Fig. 4). Drawn at the sparsities where TAMT has masks along
training (pretrain_correlation's 50-80 %).
"""

from __future__ import annotations

import pandas as pd

from analysis import style, table
from analysis.figure import Drawing, Figure, require

TAMT = ("tamt-mlm", "tamt-kd")
POINTS = ("rand", "omp", "imp", *TAMT)
LOSSES = {"mlm_dev_loss": "MLM dev loss", "kd_dev_loss": "KD dev loss"}


def points(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (mask, task): the mean score over fine-tuning seeds and the mask's dev losses.

    Masks: the main mask of every method and seed, plus every step of the main TAMT runs; the full model too.
    """
    tuned = table.main_size(table.finetunes(rows))
    chosen = table.main_masks(tuned)
    tamt_runs = chosen.loc[chosen["method"].isin(TAMT), "mask_run_id"]
    masks = pd.concat([tuned.merge(chosen, on=list(chosen.columns)),
                       tuned[tuned["mask_run_id"].isin(tamt_runs)]]).drop_duplicates("run_id")
    keys = ["method", "sparsity", "mask_seed", "mask_run_id", "mask_step", "task"]
    out = masks.groupby(keys).agg(score=("score", "mean"), n=("score", "size"),
                                  mlm_dev_loss=("mlm_dev_loss", "first"),
                                  kd_dev_loss=("kd_dev_loss", "first")).reset_index()
    full = tuned[tuned["method"] == "full"].groupby("task").agg(score=("score", "mean"), n=("score", "size"))
    dense = table.stage(rows, "dense-loss")
    if not full.empty and not dense.empty:
        full = full.reset_index().assign(method="full", sparsity=0.0, mask_run_id="", mask_step=0, mask_seed=0,
                                         mlm_dev_loss=dense["mlm_dev_loss"].mean(),
                                         kd_dev_loss=dense["kd_dev_loss"].mean())
        out = pd.concat([out, full[out.columns]], ignore_index=True)
    return out


def _sparsities(found: pd.DataFrame) -> list[float]:
    tamt = found[found["method"].isin(TAMT)]
    steps = tamt.groupby(["sparsity", "mask_run_id"])["mask_step"].nunique()
    return sorted({sparsity for (sparsity, _), count in steps.items() if count >= 2})


def _average_points(found: pd.DataFrame, sparsity: float) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Per mask at ``sparsity`` (and the full model): the average over the tasks every TAMT checkpoint has."""
    here = found[(found["sparsity"] == sparsity) | (found["method"] == "full")]
    mask = ["method", "mask_run_id", "mask_step"]
    task_sets = here.groupby(mask)["task"].agg(frozenset)
    tamt_sets = [tasks for (method, _, _), tasks in task_sets.items() if method in TAMT]
    tasks = style.ordered(frozenset.intersection(*tamt_sets), style.TASKS)
    dropped = [f"{style.method_name(m)} {style.percent(sparsity)} step {int(s)}: lacks "
               f"{', '.join(style.task_name(t) for t in sorted(set(tasks) - ts))}"
               for (m, _, s), ts in task_sets.items() if not set(tasks) <= ts]
    here = here[here["task"].isin(tasks)]
    averaged = here.groupby(mask).filter(lambda g: g["task"].nunique() == len(tasks))
    averaged = averaged.groupby(mask).agg(score=("score", "mean"), mlm_dev_loss=("mlm_dev_loss", "first"),
                                          kd_dev_loss=("kd_dev_loss", "first")).reset_index()
    return averaged, tasks, dropped


def _scatter(ax, found: pd.DataFrame, loss: str) -> None:
    for method in [*POINTS, "full"]:
        ours = found[found["method"] == method].dropna(subset=[loss, "score"])
        if ours.empty:
            continue
        if method in TAMT:
            for index, (_, run) in enumerate(ours.sort_values("mask_step").groupby("mask_run_id")):
                ax.plot(run[loss], run["score"], marker=style.method_marker(method), markersize=4, linewidth=1,
                        color=style.method_color(method), label=f"{style.method_name(method)} (along training)"
                        if index == 0 else None)
        else:
            ax.scatter(ours[loss], ours["score"], marker=style.method_marker(method), s=60 if method == "full" else 28,
                       color=style.method_color(method), label=style.method_name(method), zorder=3)


def _check(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[float]]:
    found = points(rows)
    sparsities = _sparsities(found)
    require(bool(sparsities), "needs fine-tunes of TAMT masks at two or more training steps of one run "
                              "(run sweeps/pretrain_correlation.py)")
    return found, sparsities


def draw_average(rows: pd.DataFrame) -> Drawing:
    found, sparsities = _check(rows)
    losses = [loss for loss in LOSSES if found[loss].notna().any()]
    require(bool(losses), "no MLM or KD dev losses in the table (searches ran with dev_loss_batches=0)")
    figure, axes = style.grid(len(losses), len(sparsities), width=3.4, height=3.0)
    missing, task_sets = [], {}
    for column, sparsity in enumerate(sparsities):
        averaged, tasks, dropped = _average_points(found, sparsity)
        missing += dropped
        task_sets[sparsity] = tasks
        for row, loss in enumerate(losses):
            ax = axes[row, column]
            _scatter(ax, averaged, loss)
            ax.set_title(f"{style.percent(sparsity)} sparsity", fontsize=9)
            ax.set_xlabel(LOSSES[loss])
            ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("Dev score")
    style.legend_below(figure, axes, style.tasks_title(axes, task_sets))
    return Drawing(figure, missing)


def _draw_per_task(rows: pd.DataFrame, loss: str) -> Drawing:
    found, sparsities = _check(rows)
    require(found[loss].notna().any(), f"no {LOSSES[loss]} in the table (searches ran with dev_loss_batches=0)")
    tamt = found[found["method"].isin(TAMT) & found["sparsity"].isin(sparsities)]
    tasks = style.ordered(tamt["task"].unique(), style.TASKS)
    figure, axes = style.grid(len(tasks), len(sparsities), width=3.2, height=2.7)
    for row, task in enumerate(tasks):
        for column, sparsity in enumerate(sparsities):
            ax = axes[row, column]
            here = found[(found["task"] == task) & ((found["sparsity"] == sparsity) | (found["method"] == "full"))]
            _scatter(ax, here, loss)
            ax.set_title(f"{style.task_name(task)}, {style.percent(sparsity)} sparsity", fontsize=9)
            ax.set_xlabel(LOSSES[loss])
            ax.grid(alpha=0.3)
        axes[row, 0].set_ylabel("Dev score")
    style.legend_below(figure, axes)
    return Drawing(figure)


FIGURES = (
    Figure("fig4_pretrain_loss_vs_score", "Fig. 4: MLM/KD dev loss vs average downstream score", draw_average),
    Figure("fig10_mlm_loss_per_task", "Fig. 10: MLM dev loss vs score per task",
           lambda rows: _draw_per_task(rows, "mlm_dev_loss")),
    Figure("fig11_kd_loss_per_task", "Fig. 11: KD dev loss vs score per task",
           lambda rows: _draw_per_task(rows, "kd_dev_loss")),
)
