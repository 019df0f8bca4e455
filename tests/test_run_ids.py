"""Run ids: one function, versioned algorithms, and the ids of existing stores kept.

The recorded ids were computed by the code before algorithm versions existed; a change that moves any of them
would make every existing store rerun its trials (or, worse, reuse none of its rows), so they are asserted here.
"""

from __future__ import annotations

import pytest

from orchestrator.grid import Grid
from orchestrator.plan import Plan
from orchestrator.specs import DenseLossSpec, MaskRef, SearchSpec, SimilaritySpec
from tamt_core import ids
from tamt_core.finetune import FinetuneConfig
from tamt_core.methods import METHODS
from tamt_core.search.config import SearchConfig
from sweeps import SWEEPS, presets_of

RECORDED = {
    "search omp 0.5": "337a0646272e5a3d", "search omp 0.7": "e1e002294070861f",
    "search rand 0.5": "3949c1366dc232d6", "search rand 0.7": "5c94a8a25cd2ee43", "search imp 0.7": "1dcd0e7e932a610f",
    "search tamt-mlm 0.5": "66b9d062aa29b5f2", "search tamt-mlm 0.7": "18a334e26b4e9f3d",
    "search tamt-kd 0.5": "dceb82c27927478f", "search tamt-kd 0.7": "e525554dd9aa4af4",
    "finetune full 0": "a7f81e7363a871dd", "finetune omp 0.5": "be2491a03a975485",
    "finetune omp 0.7": "7b204602764bbc8d", "finetune rand 0.5": "8a9172dd2d465f3b",
    "finetune rand 0.7": "75f66425fcb8b5c9", "finetune imp 0.5": "4ca292e954fe7b91",
    "finetune imp 0.7": "6f3deed59e5b3b86", "finetune tamt-mlm 0.5": "add16d406629e0bf",
    "finetune tamt-mlm 0.7": "0af2d75574db9d6c", "finetune tamt-kd 0.5": "583b7631672a5599",
    "finetune tamt-kd 0.7": "32eb49470192d7e0",
    "finetune_config rte": "aee4ca5a99bf38ab", "dense-loss": "c866f11015837933", "similarity": "cce484d952a9003e",
}
"""Ids computed by the code before algorithm versions existed (every version at 1 describes that code)."""


def _plan() -> Plan:
    return Grid(models=("bert-base-uncased",), methods=("omp", "rand", "imp", "tamt-mlm", "tamt-kd"),
                sparsities=(0.5, 0.7), mask_seeds=(1,), finetune_seeds=(1,), tasks=("rte",)).plan()


def _ids(plan: Plan) -> dict[str, str]:
    out = {f"search {s.config.method} {s.config.sparsity}": r for r, s in plan.searches.items()}
    out |= {f"finetune {plan.method_of(s)} {s.mask.sparsity if s.mask else 0}": r for r, s in plan.finetunes.items()}
    searches = {(s.config.method, s.config.sparsity): s for s in plan.searches.values()}
    omp, kd = searches[("omp", 0.7)], searches[("tamt-kd", 0.7)]
    reference = MaskRef(omp.run_id, 0.7, 0)
    compared = MaskRef(kd.run_id, 0.7, kd.config.search_method.training_steps(kd.config))
    out["finetune_config rte"] = FinetuneConfig(task="rte", seed=1).run_id
    out["dense-loss"] = DenseLossSpec("bert-base-uncased", None, 2).run_id
    out["similarity"] = SimilaritySpec("bert-base-uncased", 0.7, (compared,), reference=reference).run_id
    return out


def test_todays_ids_are_the_ids_recorded_before_versions_existed():
    assert all(version == ids.FIRST_VERSION for version in ids.algorithm_versions().values())
    assert _ids(_plan()) == RECORDED


def test_raising_a_method_version_renews_exactly_its_searches_and_their_finetunes(monkeypatch):
    monkeypatch.setattr(METHODS["tamt-kd"], "version", 2)
    changed = {name for name, run_id in _ids(_plan()).items() if RECORDED[name] != run_id}
    # The similarity compares a TAMT-KD mask: its edge names the renewed search, so it is renewed too.
    assert changed == {"search tamt-kd 0.5", "search tamt-kd 0.7", "finetune tamt-kd 0.5", "finetune tamt-kd 0.7",
                       "similarity"}


def test_raising_a_stage_version_renews_that_stage_only(monkeypatch):
    monkeypatch.setitem(ids.STAGE_VERSIONS, "finetune", 2)
    changed = {name for name, run_id in _ids(_plan()).items() if RECORDED[name] != run_id}
    assert changed == {name for name in RECORDED if name.startswith("finetune")}
    monkeypatch.setitem(ids.STAGE_VERSIONS, "finetune", 1)
    monkeypatch.setitem(ids.STAGE_VERSIONS, "dense-loss", 3)
    assert {n for n, r in _ids(_plan()).items() if RECORDED[n] != r} == {"dense-loss"}


def test_a_tamt_search_directory_and_the_sweep_share_one_id(tiny_bert_dir):
    """``tamt search --out DIR`` and a sweep's trial of the same search are one run, with one id."""
    from tamt_core.search.runner import search_identity

    config = SearchConfig.of(method="tamt-kd", sparsity=0.5, seed=2, steps=10)
    spec = SearchSpec(str(tiny_bert_dir), config)
    assert search_identity(config, str(tiny_bert_dir), None)["run_id"] == spec.run_id


def test_a_field_added_later_stays_out_of_the_id_at_its_default():
    base = SearchConfig.of(method="tamt-kd", sparsity=0.7, seed=1)
    assert SearchSpec("bert-base-uncased", base).run_id == RECORDED["search tamt-kd 0.7"]
    released_eps = SearchConfig.of(method="tamt-kd", sparsity=0.7, seed=1, adam_epsilon=1e-6)
    assert SearchSpec("bert-base-uncased", released_eps).run_id != RECORDED["search tamt-kd 0.7"]
    column = METHODS["tamt-kd"].hparams
    assert released_eps.settings.resolved(column).adam_epsilon == 1e-6
    assert base.settings.resolved(column).adam_epsilon == 1e-8


@pytest.mark.parametrize("config, words", [
    (dict(method="tamt-mlm", sparsity=0.5, steps=100, save_steps=(50, 150)), ["save_steps [150]", "100 steps"]),
    (dict(method="tamt-kd", sparsity=0.5, save_steps=(11001,)), ["11000 steps"]),  # Tab. 2's length at 50 %
    (dict(method="tamt-kd", sparsity=0.5, adam_epsilon=0.0), ["adam_epsilon must be positive"]),
])
def test_search_settings_that_cannot_take_effect_are_refused(config, words):
    with pytest.raises(ValueError) as error:
        SearchConfig.of(**config)
    assert all(word in str(error.value) for word in words), error.value


PRESET_IDS: dict[str, tuple[str, int]] = {
    "main_results": ("31ec42f6b1fec4c7", 4601),
    "pretrain_correlation": ("d9ab839e0555f92f", 3566),
    "pretrain_cost": ("fe9b114a663509e5", 2746),
    "mask_similarity": ("18460cfc51c6332e", 52),
    "low_data": ("9b8696622d1684e8", 1151),
    "tune_tamt": ("9f4ed465e53aa1af", 3),
    "one_shot": ("643b1360863c29ca", 1796),
}
"""Per sweep: 16 hex digits of sha256 over the sorted run ids of its smoke and paper presets (studies by their
midpoint), and their count. The first six were recorded by the code before the refactors that made a method own its
facts (they reproduce them): a change that moves one id fails here; a new sweep fails with the numbers to record."""


@pytest.mark.parametrize("name", SWEEPS)
def test_every_preset_plans_the_recorded_run_ids(name):
    import hashlib

    from orchestrator.cli import plan_of
    from orchestrator.study import TamtStudy

    ids = set()
    for preset in ("smoke", "paper"):
        declared = presets_of(name)[preset]()
        ids |= plan_of([d for d in declared if not isinstance(d, TamtStudy)]).run_ids()
        ids |= {d.spec(d.midpoint()).run_id for d in declared if isinstance(d, TamtStudy)}
    observed = (hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16], len(ids))
    assert name in PRESET_IDS, f"sweep {name} has no recorded run ids: record {observed!r} in PRESET_IDS"
    assert observed == PRESET_IDS[name]
