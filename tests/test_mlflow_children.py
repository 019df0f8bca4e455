"""What a researcher sees of a sweep in MLflow: children named after what they ran, with the params to group and
filter by (method, sparsity, task, seeds, model, train size), one headline metric per kind of trial (a search's dev
losses and final sparsity, a fine-tune's score), and the sweep's analysis as the parent's artifacts. A real sqlite
MLflow store and real results rows; Tune's hooks are called as Tune calls them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_rte_scores
from mlflow.tracking import MlflowClient

from orchestrator import results
from orchestrator.grid import Grid
from orchestrator.specs import DenseLossSpec, FinetuneSpec, MaskRef, SearchSpec, SimilaritySpec
from orchestrator.storage import Storage
from orchestrator.tracking import (ARTIFACTS_DIR, EXPERIMENT, PARENT_TAG, RUN_ID_TAG, MlflowTracker,
                                   attach_artifacts, child_name, child_params)


class Trial:
    def __init__(self, trial_id: str, spec) -> None:
        self.trial_id, self.config = trial_id, {"spec": spec.to_dict()}


@pytest.fixture()
def plan():
    """OMP, IMP and TAMT-MLM at 50 % (IMP from a run to 50 %), three random masks paired with three fine-tune seeds,
    the full model; SST-2 with 320 training examples."""
    common = {"models": ("m",), "sparsities": (0.5,), "tasks": ("sst2",), "train_sizes": (320,),
              "search": {"pruning_interval": 4, "steps": 8}}
    return (Grid(methods=("omp", "imp", "tamt-mlm"), mask_seeds=(1,), finetune_seeds=(3,), **common).plan()
            .merge(Grid(methods=("rand",), mask_seeds=(1, 2, 3), finetune_seeds=(1, 2, 3), paired_seeds=True,
                        **common).plan()))


def by_method(plan, method: str, stage: str = "search"):
    if stage == "search":
        return next(spec for spec in plan.searches.values() if spec.config.method == method)
    return next(spec for spec in plan.finetunes.values() if plan.method_of(spec) == method)


def search_row(spec: SearchSpec, masks: list[tuple[float, int, float, float]]) -> dict:
    """A search's row with masks of (sparsity, step, MLM dev loss, KD dev loss); measured sparsity a bit above."""
    entries = [{"sparsity": s, "step": step, "file": f"masks/{step}.npz", "mask_hash": f"h{step}",
                "actual_sparsity": s + 0.001, "train_s": 1.0, "mlm_dev_loss": mlm, "kd_dev_loss": kd}
               for s, step, mlm, kd in masks]
    final = entries[-1]
    return {"run_id": spec.run_id, "stage": "search", "model": spec.model, "method": spec.config.method,
            "sparsity": spec.config.sparsity, "mask_seed": spec.config.seed, "masks": entries,
            "mask_step": final["step"], "mlm_dev_loss": final["mlm_dev_loss"], "kd_dev_loss": final["kd_dev_loss"],
            "spec": spec.to_dict()}


def finetune_row(spec: FinetuneSpec, best: float, best_step: int) -> dict:
    return {"run_id": spec.run_id, "stage": "finetune", "model": spec.model, "task": spec.config.task,
            "select_metric": "accuracy", "best_score": best, "best_step": best_step, "accuracy": best,
            "spec": spec.to_dict()}


def child(tracker: MlflowTracker, spec):
    found = tracker.client.search_runs([tracker.experiment_id], f"tags.`{RUN_ID_TAG}` = '{spec.run_id}'")
    assert len(found) == 1, spec
    return found[0]


def run(tracker: MlflowTracker, trial: Trial, *reports: dict) -> None:
    tracker.on_trial_start(0, [], trial)
    for report in reports:
        tracker.on_trial_result(0, [], trial, report)
    tracker.on_trial_complete(0, [], trial)


def test_names_say_what_each_trial_ran(plan):
    imp, tamt, omp = (by_method(plan, m) for m in ("imp", "tamt-mlm", "omp"))
    assert child_name(tamt) == "TAMT-MLM 50% · seed 1 · search"
    assert child_name(omp) == "OMP 50% · search"  # OMP has no seed
    assert child_name(by_method(plan, "tamt-mlm", "finetune"), plan.searches.get) == (
        "sst2 · TAMT-MLM 50% · seed 3 · mask seed 1 · n=320")
    assert child_name(by_method(plan, "omp", "finetune"), plan.searches.get) == "sst2 · OMP 50% · seed 3 · n=320"
    full = next(spec for spec in plan.finetunes.values() if spec.mask is None and spec.config.seed == 3)
    assert child_name(full, plan.searches.get) == "sst2 · full model · seed 3 · n=320"
    assert child_name(full, plan.searches.get, with_model=True) == "sst2 · full model · seed 3 · n=320 · m"
    # a mask that is not its search's last says which step it is; a search nobody knows goes by its id
    early = FinetuneSpec(by_method(plan, "imp", "finetune").config, MaskRef(imp.run_id, 0.5, 3))
    assert child_name(early, plan.searches.get).endswith("IMP 50% · seed 3 · mask seed 1 · mask step 3 · n=320")
    assert child_name(early).startswith(f"sst2 · mask {imp.run_id[:6]} 50% · seed 3")
    assert child_name(DenseLossSpec("m")) == "full model · dev losses"
    similarity = SimilaritySpec("m", 0.5, (tamt.final_mask(),), omp.final_mask())
    assert child_name(similarity, plan.searches.get) == "mask similarity 50% · 1 masks · vs OMP"


def test_children_carry_readable_params_and_headline_metrics(tmp_path, plan):
    storage = Storage.at(tmp_path / "runs")
    storage.prepare()
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "main", {}, searches=plan.searches,
                            storage=storage)
    imp, omp, tamt = (by_method(plan, m) for m in ("imp", "omp", "tamt-mlm"))
    imp_masks = [(0.1, 0, 7.0, 2.0), (0.2, 4, 7.1, 2.1), (0.3, 8, 7.2, 2.2), (0.4, 12, 7.3, 2.3),
                 (0.5, 16, 7.4, 2.4)]
    results.write_row(storage, search_row(imp, imp_masks))
    results.write_row(storage, search_row(omp, [(0.5, 0, 8.0, 3.0)]))
    results.write_row(storage, search_row(tamt, [(0.5, 4, 6.5, 1.9), (0.5, 8, 6.0, 1.5)]))
    # IMP reports the sparsity each step trained at, and its last step reports nothing (no checkpoint)
    run(tracker, Trial("imp", imp), *({"step": s, "loss": 7.0, "sparsity": (s - 1) // 4 / 10 + 0.1}
                                      for s in (4, 8, 12)))
    run(tracker, Trial("omp", omp), {"tamt_done": 1, "step": 0})  # OMP trains nothing: no metric of its own
    run(tracker, Trial("tamt", tamt), {"step": 4, "loss": 6.9}, {"step": 8, "loss": 6.1})
    finetune = by_method(plan, "tamt-mlm", "finetune")
    results.write_row(storage, finetune_row(finetune, 81.5, 20))
    run(tracker, Trial("ft", finetune), {"step": 20, "accuracy": 81.5}, {"step": 40, "accuracy": 79.0},
        {"tamt_done": 1, "step": 40, "best_score": 81.5})
    assert tracker.finish(timeout_s=60)

    searched = child(tracker, imp)
    assert searched.info.run_name == "IMP 50% · seed 1 · search" and searched.info.status == "FINISHED"
    assert {k: searched.data.params[k] for k in ("method", "sparsity", "mask_seed", "model", "stage")} == {
        "method": "imp", "sparsity": "0.5", "mask_seed": "1", "model": "m", "stage": "search"}
    assert searched.data.metrics["sparsity"] == pytest.approx(0.501)  # the final mask's, not 0.3 of step 12
    assert (searched.data.metrics["mlm_dev_loss"], searched.data.metrics["kd_dev_loss"]) == (7.4, 2.4)
    history = tracker.client.get_metric_history(searched.info.run_id, "mlm_dev_loss")
    assert sorted((m.step, m.value) for m in history) == [(step, mlm) for _, step, mlm, _ in imp_masks]
    for spec, mlm, kd in ((omp, 8.0, 3.0), (tamt, 6.0, 1.5)):  # OMP and random log their losses too
        metrics = child(tracker, spec).data.metrics
        assert (metrics["mlm_dev_loss"], metrics["kd_dev_loss"], metrics["sparsity"]) == (mlm, kd, 0.501)

    tuned = child(tracker, finetune)
    assert tuned.info.run_name == "sst2 · TAMT-MLM 50% · seed 3 · mask seed 1 · n=320"
    params = tuned.data.params
    assert {k: params[k] for k in ("method", "sparsity", "task", "mask_seed", "finetune_seed", "model",
                                   "train_size", "mask_step", "score_metric")} == {
        "method": "tamt-mlm", "sparsity": "0.5", "task": "sst2", "mask_seed": "1", "finetune_seed": "3",
        "model": "m", "train_size": "320", "mask_step": "8", "score_metric": "accuracy"}
    assert params["mask.search_id"] == tamt.run_id and params["config.lr"]  # and the flattened spec
    assert tuned.data.metrics["score"] == 81.5 and tuned.data.metrics["accuracy"] == 79.0
    assert "best_score" not in tuned.data.metrics or tuned.data.metrics["best_score"] == 81.5

    # a filter the docs give finds the fine-tunes of one method
    found = tracker.client.search_runs([tracker.experiment_id], "params.method = 'tamt-mlm' and params.stage = "
                                       "'finetune'")
    assert [r.info.run_id for r in found] == [tuned.info.run_id]


def test_a_mask_of_an_earlier_sweep_is_named_from_its_row_and_a_stopped_trial_is_killed(tmp_path, plan):
    storage = Storage.at(tmp_path / "runs")
    storage.prepare()
    rand = next(spec for spec in plan.searches.values() if spec.config.method == "rand" and spec.config.seed == 2)
    results.write_row(storage, search_row(rand, [(0.5, 0, 8.5, 3.5)]))
    finetune = next(spec for spec in plan.finetunes.values() if spec.mask and spec.mask.search_id == rand.run_id)
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "later", {}, storage=storage)  # no searches
    run(tracker, Trial("ft", finetune), {"step": 20, "accuracy": 70.0})  # stopped: completes without a row
    assert tracker.finish(timeout_s=60)
    stopped = child(tracker, finetune)
    assert stopped.info.run_name == "sst2 · Rand 50% · seed 2 · mask seed 2 · n=320"
    assert (stopped.data.params["method"], stopped.data.params["mask_seed"]) == ("rand", "2")
    assert stopped.info.status == "KILLED" and "score" not in stopped.data.metrics


def test_a_child_of_older_code_gains_todays_name_and_params(tmp_path, plan):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    finetune = by_method(plan, "omp", "finetune")
    first = MlflowTracker(uri, "main", {})  # knows no search: no method
    old = first.child_for(finetune)
    first.client.update_run(old, name="finetune sst2 mask c91420 s0.5 seed3 n320")
    assert "method" not in first.client.get_run(old).data.params
    first.finish()
    again = MlflowTracker(uri, "main", {}, searches=plan.searches)
    assert again.child_for(finetune) == old
    run_ = again.client.get_run(old)
    assert run_.info.run_name == "sst2 · OMP 50% · seed 3 · n=320" and run_.data.params["method"] == "omp"
    again.finish()


def test_child_params_of_every_kind(plan):
    params = child_params(DenseLossSpec("m", dev_loss_batches=2))
    assert {k: params[k] for k in ("method", "sparsity", "model", "stage")} == {
        "method": "full", "sparsity": "0", "model": "m", "stage": "dense-loss"}
    full = next(spec for spec in plan.finetunes.values() if spec.mask is None)
    params = child_params(full)
    assert (params["method"], params["sparsity"], params["task"]) == ("full", "0", "sst2")
    assert "mask_seed" not in params
    assert "method" not in child_params(by_method(plan, "omp", "finetune"))  # its search unknown: no guess


def test_the_parent_holds_the_analysis_of_the_sweep(tmp_path):
    """With the analysis's writer (what ``sweeps/`` hands in), the parent run holds the results table, the figures
    and report.html, in the artifact folder beside the sqlite store; nothing is attached while the table is empty,
    and a writer that fails costs one line, never the sweep."""
    from sweeps.common import write_analysis

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = Storage.at(tmp_path / "runs")
    storage.prepare()
    tracker = MlflowTracker(uri, "main", {})
    tracker.finish()
    assert attach_artifacts(uri, "main", storage, write_analysis) is None  # nothing has finished yet
    assert not tracker.client.list_artifacts(tracker.parent_id)
    assert attach_artifacts(uri, "no-such-sweep", storage, write_analysis) is None

    write_rte_scores(storage)
    line = attach_artifacts(uri, "main", storage, write_analysis)
    assert line and "report.html" in line, line
    names = {artifact.path for artifact in MlflowClient(uri).list_artifacts(tracker.parent_id)}
    assert {"report.html", "results.md", "results.csv", "analysis.log"} <= names, names
    assert "rows.parquet" not in names  # the analysis's cache stays out
    stored = Path(tmp_path / ARTIFACTS_DIR)
    assert (stored / tracker.parent_id / "artifacts" / "report.html").is_file()
    assert "<html" in (stored / tracker.parent_id / "artifacts" / "report.html").read_text()

    def broken(storage, out):
        raise RuntimeError("matplotlib ran out of ink")

    line = attach_artifacts(uri, "main", storage, broken)
    assert "not attached" in line and "matplotlib ran out of ink" in line and "\n" not in line


def test_children_stay_in_the_tamt_experiment(tmp_path, plan):
    """Sanity: the children are children of the sweep's parent (the runs view nests them under it)."""
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "main", {}, searches=plan.searches)
    spec = by_method(plan, "rand")
    run(tracker, Trial("rand", spec))
    assert tracker.finish(timeout_s=60)
    found = child(tracker, spec)
    assert found.data.tags[PARENT_TAG] == tracker.parent_id
    assert tracker.client.get_experiment(tracker.experiment_id).name == EXPERIMENT
