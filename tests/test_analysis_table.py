"""``analysis.table``: the aggregates the paper's figures use, on small synthetic tables with known values.

Every expected number is computed by hand in the test (the arithmetic is written out), never by calling
pandas/numpy on the same data the code aggregates. Sample standard deviations use ddof = 1:
``sqrt(sum((x - mean) ** 2) / (n - 1))``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import table
from analysis.table import TableError
from orchestrator import results
from orchestrator.storage import Storage

NAN = float("nan")


def _is_nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _record(frame: pd.DataFrame, **where) -> dict:
    """The single row of ``frame`` matching ``where`` (column == value), as a dict."""
    mask = pd.Series(True, index=frame.index)
    for column, value in where.items():
        mask &= frame[column] == value
    matched = frame[mask]
    assert len(matched) == 1, f"expected one row for {where}, got {len(matched)}:\n{matched}"
    return matched.iloc[0].to_dict()


# --- finetunes, training_examples -----------------------------------------------------------------------------


def test_finetunes_keeps_only_finetune_rows_and_scores_them_by_best_score():
    rows = pd.DataFrame({"run_id": ["s", "f1", "d", "f2"],
                         "stage": ["search", "finetune", "dense-loss", "finetune"],
                         "best_score": [NAN, 71.5, NAN, 80.25]})
    out = table.finetunes(rows)
    assert list(out["run_id"]) == ["f1", "f2"]
    assert list(out["score"]) == [71.5, 80.25]
    assert "score" not in rows.columns  # the input frame is left as it was


def test_training_examples_is_the_subset_size_or_else_the_whole_training_set():
    # The subset size wins where there is one (the first row's train_examples is missing, as in a partial row).
    rows = pd.DataFrame({"train_size": [100.0, NAN, 1000.0], "train_examples": [NAN, 8551.0, 1000.0]})
    assert list(table.training_examples(rows)) == [100.0, 8551.0, 1000.0]


# --- summarize -------------------------------------------------------------------------------------------------


def test_summarize_gives_mean_sample_std_and_count_per_group():
    rows = pd.DataFrame({"method": ["omp", "omp", "omp", "rand", "rand"],
                         "sparsity": [0.5, 0.5, 0.5, 0.5, 0.5],
                         "score": [80.0, 84.0, 88.0, 60.0, 66.0]})
    out = table.summarize(rows, ["method", "sparsity"])
    omp = _record(out, method="omp")
    omp_mean = (80 + 84 + 88) / 3  # 84
    omp_std = math.sqrt(((80 - omp_mean) ** 2 + (84 - omp_mean) ** 2 + (88 - omp_mean) ** 2) / (3 - 1))  # 4
    assert omp["mean"] == pytest.approx(omp_mean)
    assert omp["std"] == pytest.approx(omp_std)
    assert omp["std"] != pytest.approx(math.sqrt(32 / 3))  # not the population std (ddof 0)
    assert omp["n"] == 3
    rand = _record(out, method="rand")
    rand_mean = (60 + 66) / 2  # 63
    assert rand["mean"] == pytest.approx(rand_mean)
    assert rand["std"] == pytest.approx(math.sqrt(((60 - rand_mean) ** 2 + (66 - rand_mean) ** 2) / (2 - 1)))
    assert rand["n"] == 2
    assert len(out) == 2


def test_summarize_std_is_nan_for_a_group_of_one_run():
    rows = pd.DataFrame({"task": ["cola", "rte", "rte"], "score": [55.0, 70.0, 72.0]})
    out = table.summarize(rows, ["task"])
    cola = _record(out, task="cola")
    assert cola["mean"] == 55.0 and cola["n"] == 1
    assert math.isnan(cola["std"])
    rte = _record(out, task="rte")
    assert rte["std"] == pytest.approx(math.sqrt(((70 - 71) ** 2 + (72 - 71) ** 2) / 1))


def test_summarize_aggregates_the_requested_value_column():
    rows = pd.DataFrame({"method": ["imp", "imp"], "score": [1.0, 2.0], "mlm_dev_loss": [3.0, 5.0]})
    out = table.summarize(rows, ["method"], value="mlm_dev_loss")
    assert out.loc[0, "mean"] == pytest.approx((3 + 5) / 2)
    assert out.loc[0, "std"] == pytest.approx(math.sqrt(((3 - 4) ** 2 + (5 - 4) ** 2) / 1))


# --- task_average ----------------------------------------------------------------------------------------------


def _ft(method, task, mask_seed, finetune_seed, score, **extra):
    return {"method": method, "task": task, "mask_seed": mask_seed, "finetune_seed": finetune_seed,
            "score": score, **extra}


# OMP: cola has 3 runs, rte 2, so the mean of per-task means differs from the mean of all 5 runs.
OMP_ROWS = [
    _ft("omp", "cola", 0, 0, 60.0), _ft("omp", "cola", 0, 1, 62.0), _ft("omp", "cola", 1, 0, 64.0),
    _ft("omp", "rte", 0, 0, 70.0), _ft("omp", "rte", 0, 1, 74.0),
]


def test_task_average_is_the_mean_of_per_task_means_not_the_pooled_mean():
    out = table.task_average(pd.DataFrame(OMP_ROWS), ["method"])
    omp = _record(out, method="omp")
    cola_mean = (60 + 62 + 64) / 3  # 62
    rte_mean = (70 + 74) / 2  # 72
    mean_of_means = (cola_mean + rte_mean) / 2  # 67
    pooled = (60 + 62 + 64 + 70 + 74) / 5  # 66
    assert omp["mean"] == pytest.approx(mean_of_means)
    assert omp["mean"] != pytest.approx(pooled)
    assert omp["complete"] is True or omp["complete"] == True  # noqa: E712  (numpy or Python bool)
    assert omp["tasks"] == "cola,rte"


def test_task_average_std_is_over_complete_replicates_of_their_mean_over_tasks():
    out = table.task_average(pd.DataFrame(OMP_ROWS), ["method"])
    omp = _record(out, method="omp")
    # Replicates (mask_seed, finetune_seed): (0, 0) ran cola and rte, (0, 1) too, (1, 0) only cola (left out).
    r00 = (60 + 70) / 2  # 65
    r01 = (62 + 74) / 2  # 68
    mean = (r00 + r01) / 2  # 66.5
    std = math.sqrt(((r00 - mean) ** 2 + (r01 - mean) ** 2) / (2 - 1))  # sqrt(4.5)
    assert omp["n"] == 2
    assert omp["std"] == pytest.approx(std)
    # With the incomplete replicate (1, 0) counted (its mean 64), the std would differ:
    with_incomplete = [r00, r01, 64.0]
    m3 = sum(with_incomplete) / 3
    assert omp["std"] != pytest.approx(math.sqrt(sum((x - m3) ** 2 for x in with_incomplete) / 2))


def test_task_average_replicates_differ_by_mask_seed_and_by_finetune_seed():
    # (0, 1) and (1, 0) share one seed each but are different replicates: 3 replicates, not 2.
    rows = pd.DataFrame([_ft("imp", task, m, f, score)
                         for (m, f, base) in [(0, 0, 50.0), (0, 1, 53.0), (1, 0, 59.0)]
                         for task, score in [("cola", base), ("rte", base + 10)]])
    out = _record(table.task_average(rows, ["method"]), method="imp")
    means = [(50 + 60) / 2, (53 + 63) / 2, (59 + 69) / 2]  # 55, 58, 64
    mean = sum(means) / 3  # 59
    assert out["n"] == 3
    assert out["std"] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in means) / (3 - 1)))  # sqrt(21)
    assert out["mean"] == pytest.approx(((50 + 53 + 59) / 3 + (60 + 63 + 69) / 3) / 2)


def test_task_average_counts_full_model_replicates_without_a_mask_seed():
    rows = pd.DataFrame([_ft("full", "cola", None, 0, 58.0), _ft("full", "rte", None, 0, 68.0),
                         _ft("full", "cola", None, 1, 60.0), _ft("full", "rte", None, 1, 72.0)])
    out = _record(table.task_average(rows, ["method"]), method="full")
    r0 = (58 + 68) / 2  # 63
    r1 = (60 + 72) / 2  # 66
    assert out["n"] == 2
    assert out["std"] == pytest.approx(math.sqrt(((r0 - 64.5) ** 2 + (r1 - 64.5) ** 2) / 1))
    assert out["mean"] == pytest.approx(((58 + 60) / 2 + (68 + 72) / 2) / 2)


def test_task_average_group_missing_a_task_is_incomplete_and_lists_only_its_tasks():
    rand = [_ft("rand", "cola", 0, 0, 40.0), _ft("rand", "cola", 0, 1, 46.0)]
    out = table.task_average(pd.DataFrame(OMP_ROWS + rand), ["method"])
    assert list(out["method"]) == ["omp", "rand"]
    got = _record(out, method="rand")
    assert not got["complete"]
    assert got["tasks"] == "cola"
    assert got["mean"] == pytest.approx((40 + 46) / 2)
    # Its replicates each ran every task it has (cola): both count.
    assert got["n"] == 2
    assert got["std"] == pytest.approx(math.sqrt(((40 - 43) ** 2 + (46 - 43) ** 2) / 1))
    assert _record(out, method="omp")["complete"]


def test_task_average_tasks_argument_restricts_the_averaged_tasks():
    out = table.task_average(pd.DataFrame(OMP_ROWS), ["method"], tasks=["cola"])
    omp = _record(out, method="omp")
    assert omp["tasks"] == "cola" and omp["complete"]
    assert omp["mean"] == pytest.approx((60 + 62 + 64) / 3)
    # Every replicate ran cola, so all 3 count: std of 60, 62, 64.
    assert omp["n"] == 3
    assert omp["std"] == pytest.approx(math.sqrt(((60 - 62) ** 2 + 0 + (64 - 62) ** 2) / (3 - 1)))


def test_task_average_tasks_argument_with_a_task_nobody_ran_makes_groups_incomplete():
    out = table.task_average(pd.DataFrame(OMP_ROWS), ["method"], tasks=["rte", "sst2"])
    omp = _record(out, method="omp")
    assert not omp["complete"]
    assert omp["tasks"] == "rte"
    assert omp["mean"] == pytest.approx((70 + 74) / 2)


def test_task_average_groups_by_several_columns():
    rows = pd.DataFrame([_ft("omp", "cola", 0, 0, 60.0, sparsity=0.5), _ft("omp", "cola", 0, 0, 30.0, sparsity=0.9),
                         _ft("omp", "rte", 0, 0, 70.0, sparsity=0.5), _ft("omp", "rte", 0, 0, 50.0, sparsity=0.9)])
    out = table.task_average(rows, ["method", "sparsity"])
    assert list(out.columns) == ["method", "sparsity", "mean", "std", "n", "tasks", "complete"]
    assert _record(out, sparsity=0.5)["mean"] == pytest.approx((60 + 70) / 2)
    assert _record(out, sparsity=0.9)["mean"] == pytest.approx((30 + 50) / 2)
    assert _record(out, sparsity=0.9)["n"] == 1 and math.isnan(_record(out, sparsity=0.9)["std"])


# --- main_size -------------------------------------------------------------------------------------------------


def test_main_size_keeps_whole_set_rows_when_present_else_the_largest_subset():
    rows = pd.DataFrame([
        # bert/rte: whole-set rows exist, subsets are dropped
        {"run_id": "a1", "model": "bert", "task": "rte", "train_size": NAN},
        {"run_id": "a2", "model": "bert", "task": "rte", "train_size": NAN},
        {"run_id": "a3", "model": "bert", "task": "rte", "train_size": 100.0},
        {"run_id": "a4", "model": "bert", "task": "rte", "train_size": 1000.0},
        # bert/cola: subsets only, the largest (500) is kept
        {"run_id": "b1", "model": "bert", "task": "cola", "train_size": 100.0},
        {"run_id": "b2", "model": "bert", "task": "cola", "train_size": 500.0},
        {"run_id": "b3", "model": "bert", "task": "cola", "train_size": 500.0},
        # roberta/rte: decided on its own, bert's whole-set rte rows do not count
        {"run_id": "c1", "model": "roberta", "task": "rte", "train_size": 100.0},
        {"run_id": "c2", "model": "roberta", "task": "rte", "train_size": 50.0},
    ]).assign(method="omp")
    assert sorted(table.main_size(rows)["run_id"]) == ["a1", "a2", "b2", "b3", "c1"]


def test_main_size_decides_for_masks_and_the_full_model_apart():
    """The full model's whole-set runs do not hide a mask's largest subset (and so its main mask)."""
    rows = pd.DataFrame([
        {"run_id": "m1", "model": "bert", "task": "stsb", "method": "rand", "train_size": 64.0},
        {"run_id": "m2", "model": "bert", "task": "stsb", "method": "rand", "train_size": 32.0},
        {"run_id": "f1", "model": "bert", "task": "stsb", "method": "full", "train_size": NAN},
        {"run_id": "f2", "model": "bert", "task": "stsb", "method": "full", "train_size": 64.0},
    ])
    assert sorted(table.main_size(rows)["run_id"]) == ["f1", "m1"]


# --- main_masks / main_results ---------------------------------------------------------------------------------


def _tune(run_id, method, seed, mask_run_id, mask_step, task, train_size=NAN, sparsity=0.5, model="bert"):
    return {"run_id": run_id, "stage": "finetune", "model": model, "method": method, "sparsity": sparsity,
            "mask_seed": seed, "mask_run_id": mask_run_id, "mask_step": mask_step, "task": task,
            "train_size": train_size}


def _full(run_id, task, train_size=NAN, model="bert"):
    return {"run_id": run_id, "stage": "finetune", "model": model, "method": "full", "sparsity": 0.0,
            "mask_seed": NAN, "mask_run_id": None, "mask_step": NAN, "task": task, "train_size": train_size}


def _main_masks_rows():
    rows = [
        # tamt-mlm seed 0: step 100 covers 3 tasks (1 run each), step 200 only 2 tasks with 3 runs each
        *[_tune(f"m100-{t}", "tamt-mlm", 0, "mlm", 100, t) for t in ("cola", "rte", "sst2")],
        *[_tune(f"m200-{t}-{i}", "tamt-mlm", 0, "mlm", 200, t) for t in ("cola", "rte") for i in range(3)],
        # tamt-mlm seed 1: its own search, one mask
        *[_tune(f"m1-{t}", "tamt-mlm", 1, "mlm1", 50, t) for t in ("cola", "rte")],
        # imp seed 0: two searches with 2 tasks each; iB has more fine-tunes, iA the later step: iB wins
        _tune("iA-cola", "imp", 0, "iA", 400, "cola"), _tune("iA-rte", "imp", 0, "iA", 400, "rte"),
        _tune("iB-cola-0", "imp", 0, "iB", 300, "cola"), _tune("iB-cola-1", "imp", 0, "iB", 300, "cola"),
        _tune("iB-rte", "imp", 0, "iB", 300, "rte"),
        # tamt-kd seed 0: same tasks and fine-tune count: the later step wins
        *[_tune(f"k{s}-{t}", "tamt-kd", 0, "kd", s, t) for s in (100, 200) for t in ("cola", "rte")],
        # omp seed 0: o2 has whole-set cola plus low-data rte/sst2 (whole-set rows exist for both): 1 task only,
        # so o1 (whole-set cola, rte) wins although o2 has more rows and more distinct tasks in all
        _tune("o1-cola", "omp", 0, "o1", 0, "cola"), _tune("o1-rte", "omp", 0, "o1", 0, "rte"),
        _tune("o2-cola", "omp", 0, "o2", 0, "cola"),
        *[_tune(f"o2-{t}-{i}", "omp", 0, "o2", 0, t, train_size=100.0) for t in ("rte", "sst2") for i in range(2)],
        # rand seed 0: p has whole-set cola + low-data stsb (no masked whole-set stsb, only the full model's),
        # q has whole-set cola twice: p covers 2 tasks and wins, as the full model's stsb rows are ignored
        _tune("p-cola", "rand", 0, "p", 0, "cola"), _tune("p-stsb", "rand", 0, "p", 0, "stsb", train_size=64.0),
        _tune("q-cola-0", "rand", 0, "q", 0, "cola"), _tune("q-cola-1", "rand", 0, "q", 0, "cola"),
        # the full model
        _full("full-cola", "cola"), _full("full-stsb", "stsb"),
    ]
    return pd.DataFrame(rows)


def _chosen(frame: pd.DataFrame) -> dict[tuple, tuple]:
    return {(r.model, r.method, r.sparsity, r.mask_seed): (r.mask_run_id, r.mask_step) for r in frame.itertuples()}


def test_main_masks_prefers_the_mask_covering_the_most_tasks_over_more_finetunes():
    chosen = _chosen(table.main_masks(_main_masks_rows()))
    assert chosen[("bert", "tamt-mlm", 0.5, 0)] == ("mlm", 100)
    assert chosen[("bert", "tamt-mlm", 0.5, 1)] == ("mlm1", 50)


def test_main_masks_breaks_task_ties_by_more_finetunes_before_the_later_step():
    chosen = _chosen(table.main_masks(_main_masks_rows()))
    assert chosen[("bert", "imp", 0.5, 0)] == ("iB", 300)


def test_main_masks_breaks_remaining_ties_by_the_later_step():
    chosen = _chosen(table.main_masks(_main_masks_rows()))
    assert chosen[("bert", "tamt-kd", 0.5, 0)] == ("kd", 200)


def test_main_masks_ignores_low_data_rows_where_whole_set_rows_exist():
    chosen = _chosen(table.main_masks(_main_masks_rows()))
    assert chosen[("bert", "omp", 0.5, 0)] == ("o1", 0)


def test_main_masks_ignores_full_model_rows():
    out = table.main_masks(_main_masks_rows())
    assert list(out.columns) == ["model", "method", "sparsity", "mask_seed", "mask_run_id", "mask_step"]
    assert "full" not in set(out["method"])
    # One row per (model, method, sparsity, mask seed): tamt-mlm ×2 seeds, imp, tamt-kd, omp, rand.
    assert len(out) == 6
    # The full model's whole-set stsb rows do not hide the masks' low-data stsb rows.
    assert _chosen(out)[("bert", "rand", 0.5, 0)] == ("p", 0)


def test_main_masks_chooses_per_sparsity_and_per_model():
    rows = pd.DataFrame([
        _tune("a", "imp", 0, "imp-run", 10, "cola", sparsity=0.1),
        _tune("b", "imp", 0, "imp-run", 20, "cola", sparsity=0.2),
        _tune("c", "imp", 0, "imp-run", 20, "rte", sparsity=0.2),
        _tune("d", "imp", 0, "rob-run", 30, "cola", sparsity=0.1, model="roberta"),
    ])
    assert _chosen(table.main_masks(rows)) == {("bert", "imp", 0.1, 0): ("imp-run", 10),
                                               ("bert", "imp", 0.2, 0): ("imp-run", 20),
                                               ("roberta", "imp", 0.1, 0): ("rob-run", 30)}


def test_main_results_keeps_finetunes_of_the_main_masks_and_the_full_model():
    rows = pd.DataFrame([
        {**_tune("o1-cola", "omp", 0, "o1", 0, "cola"), "best_score": 61.0},
        {**_tune("o1-rte", "omp", 0, "o1", 0, "rte"), "best_score": 66.0},
        {**_tune("o1-cola-small", "omp", 0, "o1", 0, "cola", train_size=100.0), "best_score": 30.0},  # low-data
        {**_tune("o2-cola", "omp", 0, "o2", 0, "cola"), "best_score": 59.0},  # analysis-only mask
        {**_tune("o3-cola", "omp", 1, "o3", 0, "cola"), "best_score": 62.0},  # seed 1's only mask
        {**_full("full-cola", "cola"), "best_score": 64.0},
        {**_full("full-rte", "rte"), "best_score": 70.0},
        {**_full("full-rte-small", "rte", train_size=100.0), "best_score": 40.0},  # low-data
        {"run_id": "o1", "stage": "search", "model": "bert", "method": "omp", "sparsity": 0.5, "mask_seed": 0,
         "mask_run_id": None, "mask_step": 0, "task": None, "train_size": NAN, "best_score": NAN},
        {"run_id": "dense", "stage": "dense-loss", "model": "bert", "method": "full", "sparsity": 0.0,
         "mask_seed": NAN, "mask_run_id": None, "mask_step": NAN, "task": None, "train_size": NAN,
         "best_score": NAN},
    ])
    out = table.main_results(rows)
    assert sorted(out["run_id"]) == ["full-cola", "full-rte", "o1-cola", "o1-rte", "o3-cola"]
    assert dict(zip(out["run_id"], out["score"])) == {"o1-cola": 61.0, "o1-rte": 66.0, "o3-cola": 62.0,
                                                      "full-cola": 64.0, "full-rte": 70.0}


def test_main_results_of_a_table_with_only_the_full_model_is_its_main_size_rows():
    rows = pd.DataFrame([{**_full("full-cola", "cola"), "best_score": 64.0},
                         {**_full("full-cola-small", "cola", train_size=100.0), "best_score": 40.0}])
    assert len(table.main_masks(table.finetunes(rows))) == 0
    out = table.main_results(rows)
    assert list(out["run_id"]) == ["full-cola"] and list(out["score"]) == [64.0]


# --- mask_costs ------------------------------------------------------------------------------------------------


def _mask(sparsity, step, train_s, mlm, kd):
    return {"sparsity": sparsity, "step": step, "file": f"masks/{step}.pt", "mask_hash": f"h{step}",
            "actual_sparsity": sparsity, "train_s": train_s, "mlm_dev_loss": mlm, "kd_dev_loss": kd}


def test_mask_costs_has_one_row_per_mask_with_costs_losses_and_imp_pruning_interval():
    rows = pd.DataFrame([
        {"run_id": "imp1", "stage": "search", "method": "imp", "model": "bert", "mask_seed": 1, "sparsity": 0.2,
         "masks": [_mask(0.1, 10, 1.5, 2.1, 0.3), _mask(0.2, 20, 3.0, 2.4, 0.5)],
         "info": json.dumps({"search_config": {"pruning_interval": 5, "lr": 1e-4}})},
        {"run_id": "tamt1", "stage": "search", "method": "tamt-kd", "model": "roberta", "mask_seed": 2,
         "sparsity": 0.7, "masks": [_mask(0.7, 300, 42.0, 2.9, 0.8)],
         "info": json.dumps({"search_config": {"pruning_interval": 9}})},  # not IMP: no interval
        {"run_id": "empty", "stage": "search", "method": "omp", "model": "bert", "mask_seed": 0, "sparsity": 0.5,
         "masks": None, "info": None},
        {"run_id": "ft", "stage": "finetune", "method": "imp", "model": "bert", "mask_seed": 1, "sparsity": 0.1,
         "masks": None, "info": json.dumps({"lr": 2e-5})},
    ])
    out = table.mask_costs(rows)
    assert list(out.columns) == ["mask_run_id", "method", "model", "mask_seed", "sparsity", "mask_step", "train_s",
                                 "mlm_dev_loss", "kd_dev_loss", "pruning_interval"]
    got = out.to_dict("records")
    assert [{k: v for k, v in r.items() if k != "pruning_interval"} for r in got] == [
        {"mask_run_id": "imp1", "method": "imp", "model": "bert", "mask_seed": 1, "sparsity": 0.1, "mask_step": 10,
         "train_s": 1.5, "mlm_dev_loss": 2.1, "kd_dev_loss": 0.3},
        {"mask_run_id": "imp1", "method": "imp", "model": "bert", "mask_seed": 1, "sparsity": 0.2, "mask_step": 20,
         "train_s": 3.0, "mlm_dev_loss": 2.4, "kd_dev_loss": 0.5},
        {"mask_run_id": "tamt1", "method": "tamt-kd", "model": "roberta", "mask_seed": 2, "sparsity": 0.7,
         "mask_step": 300, "train_s": 42.0, "mlm_dev_loss": 2.9, "kd_dev_loss": 0.8},
    ]
    assert [r["pruning_interval"] for r in got[:2]] == [5, 5]
    assert _is_nan(got[2]["pruning_interval"])


def test_mask_costs_imp_without_an_interval_in_info_has_none():
    rows = pd.DataFrame([{"run_id": "imp2", "stage": "search", "method": "imp", "model": "bert", "mask_seed": 0,
                          "masks": [_mask(0.1, 4, 0.5, 1.0, 1.0)], "info": json.dumps({"search_config": {}})}])
    assert _is_nan(table.mask_costs(rows).loc[0, "pruning_interval"])


# --- similarity_pairs ------------------------------------------------------------------------------------------


def _pair(a, b, similarity):
    return {"a_run_id": a, "a_method": "omp", "a_seed": 0, "a_step": 0, "a_hash": f"h{a}",
            "b_run_id": b, "b_method": "imp", "b_seed": 1, "b_step": 7, "b_hash": f"h{b}", "similarity": similarity}


def test_similarity_pairs_flattens_pairs_with_the_trials_run_id_model_and_sparsity():
    rows = pd.DataFrame([
        {"run_id": "s1", "stage": "similarity", "model": "bert", "sparsity": 0.5,
         "pairs": [_pair("x", "y", 0.25), _pair("x", "z", 0.75)]},
        {"run_id": "s2", "stage": "similarity", "model": "roberta", "sparsity": 0.9, "pairs": [_pair("u", "v", 0.5)]},
        {"run_id": "s3", "stage": "similarity", "model": "bert", "sparsity": 0.7, "pairs": None},
        {"run_id": "f", "stage": "finetune", "model": "bert", "sparsity": 0.5, "pairs": [_pair("no", "no", 1.0)]},
    ])
    out = table.similarity_pairs(rows)
    assert list(out.columns) == ["trial", "model", "sparsity", "a_run_id", "a_method", "a_seed", "a_step", "a_hash",
                                 "b_run_id", "b_method", "b_seed", "b_step", "b_hash", "similarity"]
    assert out.to_dict("records") == [
        {"trial": "s1", "model": "bert", "sparsity": 0.5, **_pair("x", "y", 0.25)},
        {"trial": "s1", "model": "bert", "sparsity": 0.5, **_pair("x", "z", 0.75)},
        {"trial": "s2", "model": "roberta", "sparsity": 0.9, **_pair("u", "v", 0.5)},
    ]


def test_similarity_pairs_keeps_a_pair_compared_by_two_trials_once_per_trial():
    rows = pd.DataFrame([
        {"run_id": "all", "stage": "similarity", "model": "bert", "sparsity": 0.5,
         "pairs": [_pair("x", "y", 0.25), _pair("y", "z", 0.5)]},
        {"run_id": "ref", "stage": "similarity", "model": "bert", "sparsity": 0.5, "pairs": [_pair("x", "y", 0.25)]},
    ])
    out = table.similarity_pairs(rows)
    assert sorted(zip(out["trial"], out["a_run_id"], out["b_run_id"])) == [
        ("all", "x", "y"), ("all", "y", "z"), ("ref", "x", "y")]


# --- load ------------------------------------------------------------------------------------------------------


def _write_sweep(root: Path) -> Storage:
    storage = Storage.at(root)
    results.write_row(storage, {"run_id": "s-imp", "stage": "search", "model": "bert", "method": "imp",
                                "sparsity": 0.2, "mask_seed": 3,
                                "masks": [_mask(0.1, 10, 1.5, 2.1, 0.3), _mask(0.2, 20, 3.0, 2.4, 0.5)],
                                "info": {"search_config": {"pruning_interval": 4}}})
    results.write_row(storage, {"run_id": "f-whole", "stage": "finetune", "model": "bert", "method": "imp",
                                "sparsity": 0.2, "mask_seed": 3, "mask_run_id": "s-imp", "mask_step": 20,
                                "task": "rte", "finetune_seed": 0, "best_score": 66.5, "train_examples": 2490,
                                "versions": {"pyarrow": "x"}})
    results.write_row(storage, {"run_id": "f-small", "stage": "finetune", "model": "bert", "method": "imp",
                                "sparsity": 0.2, "mask_seed": 3, "mask_run_id": "s-imp", "mask_step": 20,
                                "task": "rte", "finetune_seed": 0, "train_size": 100, "best_score": 52.0,
                                "train_examples": 100})
    results.write_row(storage, {"run_id": "sim", "stage": "similarity", "model": "bert", "sparsity": 0.2,
                                "pairs": [_pair("s-imp", "other", 0.4)]})
    return storage


def test_load_round_trips_rows_written_by_write_row(tmp_path):
    _write_sweep(tmp_path)
    rows = table.load(tmp_path)
    assert sorted(rows["run_id"]) == ["f-small", "f-whole", "s-imp", "sim"]
    assert set(rows["format_version"]) == {1}
    whole = _record(rows, run_id="f-whole")
    assert whole["best_score"] == 66.5 and whole["task"] == "rte" and _is_nan(whole["train_size"])
    assert whole["versions"] == {"pyarrow": "x"}  # map columns come back as dicts
    assert _record(rows, run_id="f-small")["train_size"] == 100
    # The loaded frame feeds the aggregates directly.
    tuned = table.finetunes(rows)
    assert sorted(table.main_size(tuned)["run_id"]) == ["f-whole"]
    assert list(table.training_examples(tuned.sort_values("run_id"))) == [100.0, 2490.0]  # f-small, f-whole
    costs = table.mask_costs(rows)
    assert list(zip(costs["mask_step"], costs["train_s"], costs["pruning_interval"])) == [(10, 1.5, 4),
                                                                                          (20, 3.0, 4)]
    pairs = table.similarity_pairs(rows)
    assert pairs.to_dict("records") == [{"trial": "sim", "model": "bert", "sparsity": 0.2,
                                         **_pair("s-imp", "other", 0.4)}]


def test_load_accepts_a_file_uri_and_a_relative_path(tmp_path, monkeypatch):
    _write_sweep(tmp_path / "runs")
    assert len(table.load(f"file://{tmp_path / 'runs'}")) == 4
    monkeypatch.chdir(tmp_path)
    assert len(table.load("./runs")) == 4


def test_load_without_a_table_raises_table_error_naming_the_path(tmp_path):
    missing = tmp_path / "no-sweep-here"
    with pytest.raises(TableError) as error:
        table.load(missing)
    assert str(missing) in str(error.value)
    # A table directory with no Parquet rows is no table either.
    (tmp_path / "empty" / "table").mkdir(parents=True)
    (tmp_path / "empty" / "table" / "notes.txt").write_text("not a row")
    with pytest.raises(TableError, match="no results table") as error:
        table.load(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(error.value)


def test_load_refuses_rows_of_another_format_version(tmp_path):
    _write_sweep(tmp_path)
    future = pa.table({"run_id": ["future"], "stage": ["finetune"], "format_version": pa.array([2], pa.int32())})
    pq.write_table(future, tmp_path / "table" / "future.parquet")
    with pytest.raises(TableError, match=r"storage format \[1, 2\].*reads format 1"):
        table.load(tmp_path)


def test_load_refuses_a_table_only_of_another_format_version(tmp_path):
    (tmp_path / "table").mkdir()
    old = pa.table({"run_id": ["old"], "stage": ["search"], "format_version": pa.array([2], pa.int32())})
    pq.write_table(old, tmp_path / "table" / "old.parquet")
    with pytest.raises(TableError, match=r"format \[2\]"):
        table.load(tmp_path)


def test_load_reads_columns_missing_from_older_rows_as_null(tmp_path):
    _write_sweep(tmp_path)
    older = pa.table({"run_id": ["older"], "stage": ["finetune"], "format_version": pa.array([1], pa.int32()),
                      "task": ["cola"], "best_score": [48.0]})
    pq.write_table(older, tmp_path / "table" / "older.parquet")
    rows = table.load(tmp_path)
    got = _record(rows, run_id="older")
    assert got["best_score"] == 48.0
    assert _is_nan(got["train_size"]) and got["pairs"] is None and got["masks"] is None
    assert len(rows) == 5
    assert np.isnan(_record(rows, run_id="sim")["best_score"])


# --- load's row cache ------------------------------------------------------------------------------------------


def test_load_with_a_cache_reads_only_new_rows_and_drops_rows_whose_file_is_gone(tmp_path):
    storage = _write_sweep(tmp_path / "runs")
    cache = tmp_path / "cache" / "rows.parquet"
    heard: list[str] = []
    first = table.load(tmp_path / "runs", cache=cache, log=heard.append)
    assert sorted(first["run_id"]) == ["f-small", "f-whole", "s-imp", "sim"]
    assert cache.exists() and len(heard) == 1 and "reading 4 rows" in heard[0]

    # A row file rewritten after caching is not read again (a row never changes: the cache is trusted), a new
    # row is, and a row whose file was removed is dropped.
    results.write_row(storage, {"run_id": "f-whole", "stage": "finetune", "best_score": 0.0})
    results.write_row(storage, {"run_id": "f-new", "stage": "finetune", "model": "bert", "task": "cola",
                                "best_score": 58.0})
    (tmp_path / "runs" / "table" / "sim.parquet").unlink()
    heard.clear()
    second = table.load(tmp_path / "runs", cache=cache, log=heard.append)
    assert sorted(second["run_id"]) == ["f-new", "f-small", "f-whole", "s-imp"]
    assert _record(second, run_id="f-whole")["best_score"] == 66.5  # from the cache
    assert _record(second, run_id="f-new")["best_score"] == 58.0
    assert len(heard) == 1 and "reading 1 rows" in heard[0] and "(3 cached)" in heard[0]

    # Nothing new: nothing read, nothing logged, the same rows.
    heard.clear()
    third = table.load(tmp_path / "runs", cache=cache, log=heard.append)
    assert heard == []
    assert sorted(third["run_id"]) == sorted(second["run_id"])


def test_load_rebuilds_a_damaged_cache_from_the_row_files(tmp_path):
    _write_sweep(tmp_path / "runs")
    cache = tmp_path / "rows.parquet"
    cache.write_bytes(b"not parquet")
    rows = table.load(tmp_path / "runs", cache=cache)
    assert sorted(rows["run_id"]) == ["f-small", "f-whole", "s-imp", "sim"]
    assert sorted(pq.read_table(cache).column("run_id").to_pylist()) == ["f-small", "f-whole", "s-imp", "sim"]


def test_load_with_a_cache_still_refuses_new_rows_of_another_format_version(tmp_path):
    _write_sweep(tmp_path / "runs")
    cache = tmp_path / "rows.parquet"
    table.load(tmp_path / "runs", cache=cache)
    before = cache.read_bytes()
    future = pa.table({"run_id": ["future"], "stage": ["finetune"], "format_version": pa.array([2], pa.int32())})
    pq.write_table(future, tmp_path / "runs" / "table" / "future.parquet")
    with pytest.raises(TableError, match=r"storage format \[1, 2\]"):
        table.load(tmp_path / "runs", cache=cache)
    assert cache.read_bytes() == before  # the refused rows were not cached


def test_task_average_replicate_weighs_tasks_equally_whatever_its_runs_per_task():
    # Replicate (0, 0): CoLA 60 and 62 (two runs), RTE 90 → (61 + 90) / 2 = 75.5, not (60 + 62 + 90) / 3.
    # Replicate (1, 0): CoLA 70, RTE 90 → 80. Std of (75.5, 80) = √((2.25² + 2.25²) / 1) = √10.125.
    rows = pd.DataFrame([_ft("omp", "cola", 0, 0, 60.0), _ft("omp", "cola", 0, 0, 62.0), _ft("omp", "rte", 0, 0, 90.0),
                         _ft("omp", "cola", 1, 0, 70.0), _ft("omp", "rte", 1, 0, 90.0)])
    out = table.task_average(rows, ["method"]).iloc[0]
    assert out["std"] == pytest.approx(math.sqrt(10.125))
    assert out["mean"] == pytest.approx(((60 + 62 + 70) / 3 + 90) / 2)


def test_summarize_counts_only_runs_with_a_score():
    rows = pd.DataFrame([_ft("omp", "cola", 0, s, v) for s, v in enumerate([80.0, NAN, 84.0])])
    out = table.summarize(rows, ["method"]).iloc[0]
    assert (out["mean"], out["n"]) == (82.0, 2)


def test_mask_costs_reads_a_search_row_whose_info_is_null():
    rows = pd.DataFrame([{"run_id": "s", "stage": "search", "model": "bert", "method": "imp", "mask_seed": 1,
                          "info": "null", "masks": [{"sparsity": 0.5, "step": 4, "train_s": 1.0,
                                                     "mlm_dev_loss": 2.0, "kd_dev_loss": 0.1}]}])
    out = table.mask_costs(rows)
    assert len(out) == 1 and pd.isna(out["pruning_interval"].iloc[0])


# --- results table: marks ---------------------------------------------------------------------------------------

def _scored(method, mask_seed, seed, score, *, task="sst2", sparsity=0.5, chance=50.0):
    run = None if method == "full" else f"{method}{mask_seed}"
    return {"run_id": f"{method}-{mask_seed}-{seed}-{task}", "stage": "finetune", "model": "m", "method": method,
            "sparsity": 0.0 if method == "full" else sparsity, "mask_seed": mask_seed, "mask_run_id": run,
            "mask_step": 0 if run else None, "task": task, "finetune_seed": seed, "train_size": None,
            "train_examples": 320, "best_score": score, "select_metric": "accuracy",
            "info": json.dumps({"chance": {"accuracy": chance}})}


def test_results_table_marks_cells_within_omps_seed_spread_and_at_chance():
    """OMP 80/82/84 (mean 82, std 2). TAMT-KD 81/83/85 (mean 83, std 2): |83 − 82| = 1 ≤ 2, within noise. Rand
    60/62/64: |62 − 82| = 20 > 2, a real difference. IMP 66/76/86 (std 10): |76 − 82| = 6 ≤ 10, within noise.
    On RTE (chance 50) Rand scores 49/50/51: mean 50, std 1, within one std of chance; OMP 60/62/64 is not."""
    from analysis import results_table

    rows = [_scored("full", None, seed, 95) for seed in (1, 2, 3)]
    for seed, (omp, kd, rand, imp) in enumerate([(80, 81, 60, 66), (82, 83, 62, 76), (84, 85, 64, 86)], start=1):
        rows += [_scored("omp", 0, seed, omp), _scored("tamt-kd", seed, seed, kd), _scored("rand", seed, seed, rand),
                 _scored("imp", seed, seed, imp)]
        rows += [_scored("omp", 0, seed, 58 + 2 * seed, task="rte"), _scored("rand", seed, seed, 48 + seed, task="rte")]
    built = results_table.build(pd.DataFrame(rows))
    marks = {(r.method, r.task): r.marks for r in built.long.itertuples()}
    assert marks[("tamt-kd", "sst2")] == results_table.WITHIN_NOISE
    assert marks[("imp", "sst2")] == results_table.WITHIN_NOISE
    assert marks[("rand", "sst2")] == "" and marks[("omp", "sst2")] == "" and marks[("full", "sst2")] == ""
    assert marks[("rand", "rte")] == results_table.AT_CHANCE and marks[("omp", "rte")] == ""
    cells, _ = results_table.wide(built, "m")
    rand = cells[cells["Method"] == "Rand"].iloc[0]
    assert rand.filter(like="RTE").iloc[0] == f"50.0 ± 1.0 {results_table.AT_CHANCE}"
    assert results_table.LEGEND in results_table.markdown(built)
