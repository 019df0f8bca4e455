"""Fig. 6 and 15: how far masks move from OMP, and how alike the methods' masks are (§4.2.4, App. G).

Similarity of two masks is the IoU of their kept weights, |Mi ∩ Mj| / |Mi ∪ Mj|, and distance is 1 − similarity
(§4.2.4), as the ``similarity`` trials measured them. Left: the average downstream score of masks against their
distance from the OMP mask (TAMT along training, IMP, OMP at 0). Right: the similarity between every pair of the
main-result masks, from the trials that compared all pairs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import style, table
from analysis.figure import Drawing, Figure, require

SEEDED = ("rand", "imp", "tamt-mlm", "tamt-kd")


def distance_points(rows: pd.DataFrame, pairs: pd.DataFrame, sparsity: float) -> tuple[pd.DataFrame, list[str]]:
    """Per (method, step): mean distance from OMP over seeds, and mean ± std of the average score over the tasks
    every such mask was fine-tuned on (OMP itself at distance 0)."""
    reference = pairs[(pairs["sparsity"] == sparsity) & (pairs["a_method"] == "omp")]
    distances = (reference.assign(distance=1 - reference["similarity"])
                 .rename(columns={"b_run_id": "mask_run_id", "b_step": "mask_step"})
                 [["mask_run_id", "mask_step", "distance"]].drop_duplicates(["mask_run_id", "mask_step"]))
    omp_runs = reference["a_run_id"].unique()
    distances = pd.concat([distances, pd.DataFrame({"mask_run_id": omp_runs, "mask_step": 0, "distance": 0.0})])
    tuned = table.main_size(table.finetunes(rows))
    scored = tuned.merge(distances, on=["mask_run_id", "mask_step"])
    if scored.empty:
        return pd.DataFrame(columns=["method", "mask_step", "distance", "mean", "std"]), []
    by = ["method", "mask_step"]
    per_point = scored.groupby(by)["task"].agg(frozenset)
    tasks = style.ordered(frozenset.intersection(*per_point), style.TASKS)
    curves = table.task_average(scored, by, tasks)
    curves = curves[curves["complete"]]
    return curves.merge(scored.groupby(by)["distance"].mean().reset_index(), on=by), tasks


def _label(method: str, seed, step, steps_of: dict) -> str:
    name = style.method_name(method)
    if method in SEEDED:
        name += f"-{int(seed)}"
    if len(steps_of.get((method, seed), ())) > 1:
        name += f"@{int(step)}"
    return name


def matrix(pairs: pd.DataFrame, sparsity: float) -> pd.DataFrame | None:
    """Symmetric similarity matrix of the masks of the all-pairs trials at ``sparsity`` (diagonal 1, NaN where a
    pair was not compared); None when no trial compared all pairs of three or more masks."""
    here = pairs[pairs["sparsity"] == sparsity]
    complete = []
    for _, trial in here.groupby("trial"):
        masks = set(zip(trial["a_run_id"], trial["a_step"])) | set(zip(trial["b_run_id"], trial["b_step"]))
        if len(masks) >= 3 and len(trial) == len(masks) * (len(masks) - 1) // 2:
            complete.append(trial)
    if not complete:
        return None
    pairs = pd.concat(complete)
    sides = [pairs[[f"{s}_run_id", f"{s}_method", f"{s}_seed", f"{s}_step"]].set_axis(
        ["run_id", "method", "seed", "step"], axis=1) for s in "ab"]
    masks = pd.concat(sides).drop_duplicates(["run_id", "step"])
    rank = {m: i for i, m in enumerate(style.METHODS)}
    masks = masks.assign(_rank=masks["method"].map(lambda m: rank.get(m, len(rank)))).sort_values(
        ["_rank", "seed", "step"])
    steps_of = masks.groupby(["method", "seed"])["step"].agg(set).to_dict()
    labels = {(r.run_id, r.step): _label(r.method, r.seed, r.step, steps_of) for r in masks.itertuples()}
    order = list(labels.values())
    out = pd.DataFrame(np.eye(len(order)), index=order, columns=order)
    out[out == 0] = np.nan
    for pair in pairs.itertuples():
        a, b = labels[(pair.a_run_id, pair.a_step)], labels[(pair.b_run_id, pair.b_step)]
        out.loc[a, b] = out.loc[b, a] = pair.similarity
    return out


def draw(rows: pd.DataFrame) -> Drawing:
    pairs = table.similarity_pairs(rows)
    require(not pairs.empty, "no similarity trials in the table (run sweeps/mask_similarity.py)")
    sparsities = sorted(pairs["sparsity"].unique())
    figure, axes = style.grid(len(sparsities), 2, width=4.6, height=3.8)
    missing = []
    for row, sparsity in enumerate(sparsities):
        curves, tasks = distance_points(rows, pairs, sparsity)
        ax = axes[row, 0]
        if curves.empty:
            missing.append(f"{style.percent(sparsity)}: no fine-tunes of masks compared with OMP")
            ax.set_visible(False)
        else:
            for method in style.ordered(curves["method"].unique(), style.METHODS):
                curve = curves[curves["method"] == method]
                if method == "omp":
                    ax.scatter(curve["distance"], curve["mean"], color=style.method_color(method), zorder=3,
                               marker=style.method_marker(method), label=style.method_name(method))
                else:
                    style.line(ax, curve["distance"], curve["mean"], curve["std"], method=method)
            ax.set(xlabel="Distance from the OMP mask", ylabel="Average dev score")
            ax.set_title(f"{style.percent(sparsity)} sparsity ({style.tasks_text(tasks)})",
                         fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        similarities = matrix(pairs, sparsity)
        ax = axes[row, 1]
        if similarities is None:
            missing.append(f"{style.percent(sparsity)}: no trial compared every pair of the main masks")
            ax.set_visible(False)
            continue
        image = ax.imshow(similarities.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(similarities)), similarities.columns, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(similarities)), similarities.index, fontsize=7)
        if len(similarities) <= 12:
            for i, j in np.ndindex(similarities.shape):
                value = similarities.iat[i, j]
                if not np.isnan(value):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if value > 0.6 else "white")
        ax.set_title(f"Mask similarity (IoU), {style.percent(sparsity)}", fontsize=9)
        figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    figure.tight_layout()
    return Drawing(figure, missing)


FIGURES = (
    Figure("fig6-15_mask_similarity", "Fig. 6 and 15: score vs distance from OMP; similarity between masks", draw),
)
