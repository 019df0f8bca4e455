"""Two sweeps on one storage, on real Ray with the tiny BERT: the second reuses the first's searches, adds mask
similarities and the dense model's dev losses, and their values equal what ``tamt_core`` computes directly."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

from orchestrator import results
from orchestrator.sweep import run_sweep
from orchestrator.grid import Grid, MaskSimilarity
from orchestrator.storage import Storage
from orchestrator.tracking import RUN_ID_TAG
from tamt_core.subnetwork import pretrain_losses
from tamt_core.masks import load_mask, similarity
from test_orchestrator_sweep import attempts, mlflow_runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2,
             log_to_driver=False)
    yield ray
    ray.shutdown()


def grid(model: str, **axes) -> Grid:
    """The tiny study both sweeps declare: TAMT-KD saves masks at steps 1-3, IMP prunes to 30 % one step apart."""
    return Grid(**{"models": (model,), "methods": ("omp", "imp", "tamt-kd"), "sparsities": (0.2,),
                   "mask_seeds": (1,), "finetune_seeds": (1,), "tasks": ("stsb",), "train_sizes": (32,),
                   "search": {"pruning_interval": 1, "steps": 3, "save_steps": (1, 2), "batch_size": 2,
                              "block_size": 32},
                   "finetune": {"epochs": 1, "eval_every": 2, "batch_size": 8}, "dev_loss_batches": 1,
                   "imp_until": 0.3, **axes})


def test_second_sweep_reuses_masks_and_adds_similarities_and_dense_losses(ray_session, tmp_path, tiny_bert_dir):
    model = str(tiny_bert_dir)
    storage = tmp_path / "runs"
    first = grid(model).plan()  # "main results": 3 searches, 3 masks + the full model on STS-B
    assert (len(first.searches), len(first.finetunes)) == (3, 4)
    report = run_sweep(first, name="main", storage=Storage.at(storage), progress_every_s=5.0)
    assert report.complete

    masks_only = {"tasks": (), "full_model": False}
    second = MaskSimilarity((grid(model, **masks_only),)).plan().merge(
        MaskSimilarity((grid(model, finetune_steps=(1, 2, 3), **masks_only),), reference="omp").plan()).merge(
        grid(model, methods=(), dense_loss=True, **masks_only).plan())
    assert set(second.searches) == set(first.searches) and not second.finetunes
    assert Counter(spec.stage for spec in second.measurements.values()) == {"similarity": 2, "dense-loss": 1}
    before = attempts(storage)
    report = run_sweep(second, name="analysis", storage=Storage.at(storage), progress_every_s=5.0)
    assert report.complete and report.skipped == 3 and report.succeeded == set(second.measurements)
    assert {k: v for k, v in attempts(storage).items() if k in before} == before, "no search ran twice"

    table = results.read_frame(str(storage)).set_index("run_id")
    searches = table[table.stage == "search"]

    def mask_file(run_id: str, step: int, sparsity: float = 0.2):
        entry = next(m for m in searches.loc[run_id].masks if m["step"] == step and m["sparsity"] == sparsity)
        return load_mask(storage / "runs" / run_id / entry["file"])

    pairwise = table.loc[next(r for r, s in second.measurements.items() if s.stage == "similarity"
                              and s.reference is None)]
    # OMP, IMP's 20 % mask and TAMT-KD's last mask: 3 pairs, each the mean per-matrix IoU of tamt_core.
    assert len(pairwise.pairs) == 3 and pairwise.sparsity == 0.2
    for pair in pairwise.pairs:
        expected = similarity(mask_file(pair["a_run_id"], pair["a_step"]), mask_file(pair["b_run_id"], pair["b_step"]))
        assert pair["similarity"] == pytest.approx(expected, abs=1e-12)
        assert {pair["a_method"], pair["b_method"]} <= {"omp", "imp", "tamt-kd"} and pair["a_seed"] in (0, 1)
    against_omp = table.loc[next(r for r, s in second.measurements.items() if s.stage == "similarity"
                                 and s.reference is not None)]
    # TAMT-KD at steps 1, 2, 3 and IMP at 20 %, each against OMP.
    assert sorted((p["b_method"], p["b_step"]) for p in against_omp.pairs) == [
        ("imp", 1), ("tamt-kd", 1), ("tamt-kd", 2), ("tamt-kd", 3)]
    assert {p["a_method"] for p in against_omp.pairs} == {"omp"}
    imp_pair = next(p for p in against_omp.pairs if p["b_method"] == "imp")
    assert imp_pair["similarity"] < 1.0  # IMP's trained weights rank differently from θ0's magnitudes

    dense = table[table.stage == "dense-loss"].iloc[0]
    direct = pretrain_losses({"dense": None}, model=model, max_batches=1)["dense"]
    assert dense.mlm_dev_loss == pytest.approx(direct["mlm_loss"], rel=1e-6)
    assert dense.kd_dev_loss == pytest.approx(direct["kd_loss"], abs=1e-7) and dense.method == "full"
    # The KD loss compares the subnetwork to the unpruned model, so it is 0 for the model itself, above for masks.
    assert dense.kd_dev_loss < searches.kd_dev_loss.min()

    tamt = searches[searches.method == "tamt-kd"].iloc[0]
    assert [m["step"] for m in tamt.masks] == [1, 2, 3]
    times = [m["train_s"] for m in tamt.masks]
    assert all(t > 0 for t in times) and times == sorted(times)  # Fig. 5's time axis grows with the steps
    assert json.loads(table.loc[dense.name].spec)["stage"] == "dense-loss"

    parents, children = mlflow_runs(storage)
    assert sorted(p.data.tags["tamt.sweep"] for p in parents) == ["analysis", "main"]
    assert Counter(c.data.tags[RUN_ID_TAG] for c in children) == Counter(
        list(first.run_ids()) + list(second.measurements))
    assert pd.isna(table.loc[dense.name].best_score)
