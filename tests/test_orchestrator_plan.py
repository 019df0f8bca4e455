"""The orchestrator's plan layer, without Ray and without models: run ids, mask yields, grid → plan expansion
(counts derived by hand from the paper's rules), deduplication, up-front validation of malformed input, storage,
GPU-hour estimates and the sweep command line's dry run / error path.

Expected numbers are derived in comments from the paper (§4.1.3, App. C, Tab. 1–3) and ``tamt_core.hparams``,
never copied from a run of the code.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tamt_core.models import BUILTIN_MODEL_NAME

import orchestrator.cli
from orchestrator.estimate import DEV_SIZES, THROUGHPUT, gpu_hours
from orchestrator.grid import Grid
from orchestrator.plan import Plan, PlanError
from orchestrator.search_settings import PerSparsity, SearchSettings
from orchestrator.specs import FinetuneSpec, MaskRef, SearchSpec, spec_from_dict
from sweeps.common import PAPER_METHODS
from orchestrator.storage import FORMAT_VERSION, MARKER, RunDirectory, Storage, StorageError
from tamt_core import hparams
from tamt_core.finetune import FinetuneConfig
from tamt_core.methods.imp import prune_step, prunes
from tamt_core.search.config import FIRST_RECORD, SearchConfig

ROOT = Path(__file__).resolve().parent.parent
BERT = "bert-base-uncased"


def _load_main_results():
    """sweeps/main_results.py is a script, not a package module: load it from its path."""
    path = ROOT / "sweeps" / "main_results.py"
    spec = importlib.util.spec_from_file_location("_sweeps_main_results_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def presets():
    return _load_main_results().PRESETS


@pytest.fixture(scope="module")
def paper_plan(presets):
    from orchestrator.cli import plan_of

    return plan_of(presets["paper"]())


@pytest.fixture(autouse=True)
def _no_ray_cluster(monkeypatch):
    # The CLI treats RAY_ADDRESS as "a cluster is there"; these tests must never attach to or start one.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def _ray_started() -> bool:
    import ray

    return ray.is_initialized()


# --- 1. run ids -------------------------------------------------------------------------------------------------

def _search(**overrides) -> SearchSpec:
    base = dict(model=BERT, data="Salesforce/wikitext", method="tamt-mlm", sparsity=0.7, seed=1, steps=None)
    base.update(overrides)
    config = SearchConfig.of(method=base["method"], sparsity=base["sparsity"], seed=base["seed"], steps=base["steps"])
    return SearchSpec(base["model"], config, base["data"])


def _finetune(**overrides) -> FinetuneSpec:
    base = dict(task="rte", seed=1, train_size=None, mask=MaskRef("0" * 16, 0.7, 17000))
    base.update(overrides)
    config = FinetuneConfig(task=base["task"], seed=base["seed"], model=BERT, data="hub",
                            train_size=base["train_size"])
    return FinetuneSpec(config, base["mask"])


def test_equal_search_specs_have_equal_run_ids():
    assert _search().run_id == _search().run_id
    assert _search() == _search()
    # Pinned: stored runs are found by their ids, so a change to this one orphans every store's rows of it.
    assert _search().run_id == "72d562c4381fc479"


@pytest.mark.parametrize("change", [
    {"model": "roberta-base"}, {"data": None}, {"method": "tamt-kd"}, {"sparsity": 0.6}, {"seed": 2},
    {"steps": 1234},
])
def test_changing_any_search_field_changes_the_run_id(change):
    assert _search(**change).run_id != _search().run_id


def test_dev_loss_batches_is_not_part_of_the_search_run_id():
    a, b = _search(), replace(_search(), dev_loss_batches=2)
    assert a.run_id == b.run_id
    assert a == b  # compare=False: same search, measured differently


@pytest.mark.parametrize("change", [
    {"task": "sst2"}, {"seed": 2}, {"train_size": 1000},
    {"mask": MaskRef("1" * 16, 0.7, 17000)}, {"mask": MaskRef("0" * 16, 0.6, 17000)},
    {"mask": MaskRef("0" * 16, 0.7, 5)}, {"mask": None},
])
def test_changing_any_finetune_field_changes_the_run_id(change):
    assert _finetune().run_id == _finetune().run_id
    assert _finetune(**change).run_id != _finetune().run_id


def test_finetune_spec_refuses_a_mask_hash_in_its_config():
    with pytest.raises(ValueError, match="MaskRef"):
        FinetuneSpec(FinetuneConfig(task="rte", seed=1, mask_hash="abc"), None)


@pytest.mark.parametrize("spec", [
    _search(), replace(_search(), dev_loss_batches=3),
    SearchSpec(BERT, SearchConfig.of("tamt-kd", 0.5, seed=2, steps=20, save_steps=(5, 10))),
    SearchSpec(BERT, SearchConfig.of("imp", 0.9, seed=3, pruning_interval=7)),
    _finetune(), _finetune(mask=None, train_size=64),
], ids=["tamt-mlm", "dev-loss", "tamt-kd-save-steps", "imp", "finetune", "full"])
def test_to_dict_round_trips_through_json_to_the_same_run_id(spec):
    # What a Ray trial receives is the JSON of to_dict(); tuples come back as lists and must hash the same.
    back = spec_from_dict(json.loads(json.dumps(spec.to_dict())))
    assert type(back) is type(spec)
    assert back.run_id == spec.run_id
    assert back == spec
    if isinstance(spec, SearchSpec):
        assert back.dev_loss_batches == spec.dev_loss_batches
        assert back.yields() == spec.yields()


# --- 2. what a search yields ------------------------------------------------------------------------------------

def test_imp_yields_every_tenth_up_to_its_sparsity():
    # §4.1.3 / Tab. 2: IMP prunes 10 % every P iterations, starting with a prune at step 0, so the mask of
    # sparsity k/10 exists after (k − 1)·P iterations: 0.1 at 0, 0.2 at P, ..., 0.7 at 6P.
    P = 11
    spec = SearchSpec(BERT, SearchConfig.of("imp", 0.7, seed=1, pruning_interval=P))
    assert spec.yields() == ((0.1, 0), (0.2, P), (0.3, 2 * P), (0.4, 3 * P), (0.5, 4 * P), (0.6, 5 * P),
                             (0.7, 6 * P))
    assert spec.final_mask() == MaskRef(spec.run_id, 0.7, 6 * P)
    assert spec.final_mask(0.3) == MaskRef(spec.run_id, 0.3, 2 * P)
    with pytest.raises(ValueError, match="yields no mask of sparsity 0.8"):
        spec.final_mask(0.8)


def test_tamt_yields_its_saved_steps_and_its_last_step():
    spec = SearchSpec(BERT, SearchConfig.of("tamt-mlm", 0.5, seed=1, steps=20, save_steps=(10, 5)))
    assert spec.yields() == ((0.5, 5), (0.5, 10), (0.5, 20))
    assert spec.final_mask() == MaskRef(spec.run_id, 0.5, 20)  # the max step, not the last listed save step
    # A save step equal to the last step is not yielded twice.
    once = SearchSpec(BERT, SearchConfig.of("tamt-kd", 0.5, seed=1, steps=20, save_steps=(20, 5)))
    assert once.yields() == ((0.5, 5), (0.5, 20))
    # Without steps, Tab. 2's iterations for the sparsity: 0.7 → 17000.
    default = SearchSpec(BERT, SearchConfig.of("tamt-kd", 0.7, seed=1))
    assert default.yields() == ((0.7, hparams.TAMT_STEPS[0.7]),) == ((0.7, 17000),)


@pytest.mark.parametrize("method", ["omp", "rand"])
def test_one_shot_methods_yield_one_mask_at_step_zero(method):
    spec = SearchSpec(BERT, SearchConfig.of(method, 0.4, seed=2))
    assert spec.yields() == ((0.4, 0),)
    assert spec.final_mask() == MaskRef(spec.run_id, 0.4, 0)


# --- 3. grid → plan counts, by hand ---------------------------------------------------------------------------

def test_paper_preset_counts(paper_plan):
    models, sparsities = 2, len(hparams.SPARSITIES)             # BERT, RoBERTa; 0.2 … 0.9 = 8
    mask_seeds, ft_seeds, tasks = len(hparams.MASK_SEEDS), len(hparams.FINETUNE_SEEDS), 7  # 3, 3, 6 GLUE + SQuAD
    assert (sparsities, mask_seeds, ft_seeds) == (8, 3, 3)
    # Searches per model (§4.1.3, App. C): OMP is deterministic → one per sparsity (8); random one per sparsity ×
    # mask seed (24); IMP one run per mask seed to 0.9 that yields every lower tenth (3); TAMT-MLM and TAMT-KD one
    # per sparsity × mask seed (24 each). 8 + 24 + 3 + 24 + 24 = 83 per model, 166 for two models.
    searches = {"omp": 8 * models, "rand": 8 * 3 * models, "imp": 3 * models, "tamt-mlm": 8 * 3 * models,
                "tamt-kd": 8 * 3 * models}
    assert sum(searches.values()) == 166
    # Fine-tunes per model: OMP 8 sparsities × 7 tasks × 3 fine-tune seeds = 168 (its mask seeds collapse);
    # each of rand/IMP/TAMT-MLM/TAMT-KD: 8 × 3 masks × 7 × 3 = 504; full model 7 × 3 = 21.
    # 168 + 4·504 + 21 = 2205 per model, 4410 for two.
    finetunes = {"omp": 8 * tasks * ft_seeds * models, "full": tasks * ft_seeds * models,
                 **{m: sparsities * mask_seeds * tasks * ft_seeds * models
                    for m in ("rand", "imp", "tamt-mlm", "tamt-kd")}}
    assert finetunes["omp"] == 336 and finetunes["rand"] == 1008 and finetunes["full"] == 42
    assert sum(finetunes.values()) == 4410

    counts = paper_plan.counts()
    assert dict(counts["search"]) == searches
    assert dict(counts["finetune"]) == finetunes
    assert len(paper_plan.searches) == 166 and len(paper_plan.finetunes) == 4410
    assert len(paper_plan) == 166 + 4410 == 4576
    paper_plan.validate()  # every fine-tune's mask is yielded by a search of the plan


def test_paper_preset_imp_finetunes_use_the_imp_run_to_090(paper_plan):
    imp = [spec for spec in paper_plan.finetunes.values() if paper_plan.method_of(spec) == "imp"]
    assert len(imp) == 1008
    seen_sparsities = set()
    for spec in imp:
        search = paper_plan.searches[spec.mask.search_id]
        assert search.config.method == "imp"
        assert search.config.sparsity == pytest.approx(0.9)
        # Tab. 2 / App. C: the mask of sparsity s is written after (10·s − 1)·P iterations, P = 2792.
        assert spec.mask.step == prune_step(prunes(spec.mask.sparsity), hparams.IMP_PRUNING_INTERVAL)
        assert spec.mask.step == (round(spec.mask.sparsity * 10) - 1) * 2792
        seen_sparsities.add(spec.mask.sparsity)
    assert seen_sparsities == set(hparams.SPARSITIES)
    # Only the grid's sparsities are fine-tuned, not IMP's 0.1 intermediate.
    assert 0.1 not in seen_sparsities


def test_paper_preset_search_settings(paper_plan):
    for search in paper_plan.searches.values():
        config = search.config
        assert search.data == "Salesforce/wikitext"
        if config.method == "omp":
            assert config.seed == 0  # OMP's seed is normalised away
        else:
            assert config.seed in hparams.MASK_SEEDS
        if config.method in ("tamt-mlm", "tamt-kd"):
            # Tab. 2: the fine-tuned mask comes after TAMT_STEPS[s] iterations, whether the run ends there or goes
            # on for the analyses (sweeps/common.py).
            assert (config.sparsity, hparams.TAMT_STEPS[round(config.sparsity, 1)]) in search.yields()
    for spec in paper_plan.finetunes.values():
        assert spec.config.data == "hub" and spec.config.train_size is None
        if spec.mask is not None and paper_plan.method_of(spec).startswith("tamt"):
            assert spec.mask.step == hparams.TAMT_STEPS[round(spec.mask.sparsity, 1)]


def test_smoke_preset_counts(presets):
    from orchestrator.cli import plan_of

    plan = plan_of(presets["smoke"]())
    # One model, one task (SST-2), fine-tune seeds 1-3, every method at 50 %. Searches: OMP, IMP (to 50 %), TAMT-MLM
    # and TAMT-KD with one mask seed, random masks with seeds 1-3 = 4 + 3 = 7.
    assert dict(plan.counts()["search"]) == {"omp": 1, "rand": 3, "imp": 1, "tamt-mlm": 1, "tamt-kd": 1}
    assert next(s for s in plan.searches.values() if s.config.method == "imp").config.sparsity == 0.5
    # Fine-tunes: 3 seeds of each method's mask (random masks paired with their fine-tune seed) and of the full
    # model = 15 + 3 = 18.
    assert dict(plan.counts()["finetune"]) == {m: 3 for m in PAPER_METHODS} | {"full": 3}
    assert len(plan) == 7 + 18
    rand = sorted((s.config.seed, plan.searches[s.mask.search_id].config.seed)
                  for s in plan.finetunes.values() if plan.method_of(s) == "rand")
    assert rand == [(1, 1), (2, 2), (3, 3)]
    # The smoke settings reach the specs: IMP with P = 4 yields 0.5 at (5 − 1)·4 = 16; TAMT's masks at 50 % are the
    # 90-step ones; the fine-tunes use 320 training examples for 2 epochs.
    for spec in plan.finetunes.values():
        assert spec.config.train_size == 320 and spec.config.epochs == 2 and spec.config.eval_every == 20
        assert spec.config.lr == 1e-4 and spec.config.batch_size == 16
        if spec.mask is not None:
            steps = {"omp": 0, "rand": 0, "imp": 16, "tamt-mlm": 90, "tamt-kd": 90}
            assert spec.mask.step == steps[plan.method_of(spec)]
    for search in plan.searches.values():
        assert search.dev_loss_batches == 2  # the whole MLM dev split, 32 KD sequences
        if search.config.method in ("tamt-mlm", "tamt-kd"):
            assert search.config.settings.lr == 3e-4 and search.config.settings.steps == 90  # the per-method override
        if search.config.method == "imp":
            assert search.config.settings.lr is None and search.config.settings.pruning_interval == 4


# --- 4. deduplication --------------------------------------------------------------------------------------------

def _grid(**overrides) -> Grid:
    base = dict(models=(BERT,), methods=("omp",), sparsities=(0.5, 0.7), mask_seeds=(1,), finetune_seeds=(1,),
                tasks=("rte",), full_model=False)
    base.update(overrides)
    return Grid(**base)


def test_omp_finetunes_collapse_across_mask_seeds():
    one, three = _grid(mask_seeds=(1,)).plan(), _grid(mask_seeds=(1, 2, 3)).plan()
    # 2 sparsities × 1 task × 1 fine-tune seed, whatever the mask seeds.
    assert len(one.finetunes) == len(three.finetunes) == 2
    assert set(one.finetunes) == set(three.finetunes)
    assert set(one.searches) == set(three.searches) and len(three.searches) == 2
    # Random pruning does depend on the mask seed: 3× the searches and fine-tunes.
    rand = _grid(methods=("rand",), mask_seeds=(1, 2, 3)).plan()
    assert len(rand.searches) == 6 and len(rand.finetunes) == 6


def test_merging_plans_that_share_a_mask_searches_it_once():
    a = _grid(methods=("tamt-mlm",), sparsities=(0.7,), tasks=("rte",)).plan()
    b = _grid(methods=("tamt-mlm",), sparsities=(0.7,), tasks=("sst2",), finetune_seeds=(1, 2)).plan()
    assert set(a.searches) == set(b.searches) and len(a.searches) == 1
    merged = a.merge(b)
    assert len(merged.searches) == 1
    assert set(merged.finetunes) == set(a.finetunes) | set(b.finetunes)
    assert len(merged.finetunes) == 1 + 2
    merged.validate()
    assert len(a) == 2 and len(b) == 3  # merge builds a new plan, the inputs are unchanged
    assert len(merged.merge(a)) == len(merged)  # merging again adds nothing


def test_extending_a_grid_by_one_finetune_seed_adds_exactly_its_runs():
    methods = ("omp", "imp", "tamt-kd")
    old = _grid(methods=methods, finetune_seeds=(1, 2), tasks=("rte", "cola"), full_model=True).plan()
    new = _grid(methods=methods, finetune_seeds=(1, 2, 3), tasks=("rte", "cola"), full_model=True).plan()
    assert set(old.searches) == set(new.searches)
    assert set(old.finetunes) <= set(new.finetunes)
    added = set(new.finetunes) - set(old.finetunes)
    assert all(new.finetunes[run_id].config.seed == 3 for run_id in added)
    # Fine-tuned masks: OMP 2 + IMP 2 (both sparsities from one run) + TAMT-KD 2 = 6, plus the full model = 7
    # "subjects", each on 2 tasks: 14 new runs.
    assert len(added) == (2 + 2 + 2 + 1) * 2 == 14
    assert {run_id for run_id, spec in new.finetunes.items() if spec.config.seed == 3} == added


def test_grid_sparsities_are_rounded_before_hashing():
    # 0.1 + 0.2 = 0.30000000000000004: the grid must plan the same search as for 0.3.
    exact = _grid(methods=("omp", "imp", "tamt-mlm"), sparsities=(0.3,)).plan()
    noisy = _grid(methods=("omp", "imp", "tamt-mlm"), sparsities=(0.1 + 0.2,)).plan()
    assert set(exact.searches) == set(noisy.searches)
    assert set(exact.finetunes) == set(noisy.finetunes)


# --- 5. malformed input fails up front, naming the fix ------------------------------------------------------

_GOOD = dict(models=(BERT,), methods=("omp", "imp"), sparsities=(0.5,), mask_seeds=(1,), finetune_seeds=(1,),
             tasks=("rte",))


@pytest.mark.parametrize("change, words", [
    ({"methods": ("omp", "magnitude")}, ["unknown method", "magnitude", "choose from", "tamt-kd"]),
    ({"tasks": ("rte", "qqp")}, ["unknown task", "qqp", "choose from", "squad"]),
    ({"models": ("",)}, ["not a hub id or directory", "name one"]),
    ({"models": (None,)}, ["not a hub id or directory", "name one"]),
    ({"models": "bert-base-uncased"}, ["models", "must be a list or tuple"]),
    ({"sparsities": (1.0,)}, ["outside (0, 1)", "fraction"]),
    ({"sparsities": (-0.1,)}, ["outside (0, 1)", "fraction"]),
    ({"sparsities": (float("nan"),)}, ["outside (0, 1)", "fraction"]),
    ({"sparsities": (0.5, 0.7, 0.5)}, ["sparsities", "repeats 0.5", "list each value once"]),
    ({"tasks": ("rte", "sst2", "rte")}, ["tasks", "repeats rte", "list each value once"]),
    ({"finetune_seeds": ()}, ["finetune_seeds", "empty", "at least one value"]),
    ({"methods": ("imp",), "sparsities": (0.5, 0.75)}, ["IMP", "0.75", "multiple of 0.1", "drop 'imp'"]),
    ({"mask_seeds": (1, -1)}, ["mask_seeds", "non-negative integers"]),
    ({"finetune_seeds": (-2,)}, ["finetune_seeds", "non-negative integers"]),
    ({"train_sizes": (0,)}, ["train_sizes", "positive integers"]),
    ({"search": {"stepz": 10}}, ["unknown search setting", "stepz", "known:", "steps"]),
    ({"search": {"tamt-kd": {"bogus": 1}}}, ["bogus", "do not apply to tamt-kd", "it takes"]),
    ({"finetune": {"learning_rate": 1e-5}}, ["unknown fine-tune setting", "learning_rate", "known:", "lr"]),
    ({"dev_loss_batches": -1}, ["dev_loss_batches", "0 skips"]),
    ({"methods": ("tamt-mlm",), "search": {"steps": 0}}, ["search settings for tamt-mlm", "positive"]),
    ({"finetune": {"epochs": 0}}, ["fine-tune settings for rte", "positive"]),
    ({"methods": ("tamt-mlm",), "sparsities": (0.5, 0.7), "search": {"steps": {0.5: 90, 0.6: 90}}},
     ["search['steps'] maps sparsities [0.5, 0.6] but not 0.7", "add 0.7"]),
    ({"methods": ("tamt-mlm",), "sparsities": (0.7,), "search": {"steps": 100, "save_steps": {0.75: (50,)}}},
     ["search['save_steps'] maps sparsities [0.75] but not 0.7"]),
    ({"methods": ("tamt-kd",), "sparsities": (0.65,), "search": {"steps": 100, "save_steps": (50,)},
      "finetune_steps": {0.6: 50, 0.7: 50}}, ["finetune_steps maps sparsities [0.6, 0.7] but not 0.65", "add 0.65"]),
    ({"methods": ("tamt-mlm",), "sparsities": (0.65,)}, ["Tab. 2", "not 0.65", "set steps"]),
], ids=["method", "task", "blank-model", "none-model", "models-str", "sparsity-1", "sparsity-neg", "sparsity-nan",
        "dup-sparsity", "dup-task", "no-ft-seeds", "imp-075", "neg-mask-seed", "neg-ft-seed", "train-size-0",
        "search-key", "method-search-key", "finetune-key", "dev-loss", "search-value", "finetune-value",
        "steps-no-key", "save-steps-no-key", "finetune-steps-no-key", "tab2-no-sparsity"])
def test_malformed_grid_raises_plan_error_naming_the_fix(change, words):
    with pytest.raises(PlanError) as raised:
        Grid(**{**_GOOD, **change}).plan()
    message = str(raised.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_typed_search_settings_plan_what_their_mapping_plans():
    """``Grid.search`` is typed; a mapping (JSON, ``--search-settings``) is read into the same settings. A shared
    setting reaches the methods that have it only, a per-method one is laid over it."""
    typed = SearchSettings(steps=PerSparsity({0.5: 40, 0.7: 60}), batch_size=8, pruning_interval=5,
                           per_method={"tamt-kd": SearchSettings(lr=1e-4)})
    mapping = {"steps": {0.5: 40, 0.7: 60}, "batch_size": 8, "pruning_interval": 5, "tamt-kd": {"lr": 1e-4}}
    grid = dict(_GOOD, methods=("omp", "imp", "tamt-mlm", "tamt-kd"), sparsities=(0.5, 0.7))
    one, two = Grid(**grid, search=typed), Grid(**grid, search=mapping)
    assert one.search == two.search and set(one.plan().run_ids()) == set(two.plan().run_ids())
    configs = {(s.config.method, s.config.sparsity): s.config for s in one.searches()}
    assert configs[("tamt-mlm", 0.7)].settings.steps == 60 and configs[("tamt-mlm", 0.7)].settings.lr is None
    assert configs[("tamt-kd", 0.5)].settings.steps == 40 and configs[("tamt-kd", 0.5)].settings.lr == 1e-4
    assert configs[("imp", 0.7)].settings.pruning_interval == 5 and configs[("imp", 0.7)].settings.batch_size == 8
    assert configs[("omp", 0.5)] == SearchConfig.of(method="omp", sparsity=0.5)  # no setting of OMP's
    tuned = typed.with_method("tamt-kd", {"alpha": 2.0})
    assert tuned.per_method["tamt-kd"] == SearchSettings(lr=1e-4, alpha=2.0)
    assert "alpha" not in typed.per_method["tamt-kd"].given()  # settings are values: the original is unchanged


def test_plan_with_a_finetune_whose_search_is_missing():
    orphan = FinetuneSpec(FinetuneConfig(task="rte", seed=1, model=BERT), MaskRef("f" * 16, 0.5, 0))
    plan = Plan.of([orphan])
    with pytest.raises(PlanError, match="neither in the plan nor finished") as raised:
        plan.validate()
    assert "grid's methods" in str(raised.value) and "f" * 16 in str(raised.value)
    plan.validate(finished={"f" * 16})  # a search finished in an earlier sweep provides it
    assert plan.method_of(orphan) == "?"


def test_plan_with_a_mask_the_search_does_not_yield():
    search = SearchSpec(BERT, SearchConfig.of("tamt-mlm", 0.5, seed=1, steps=20, save_steps=(5,)))
    config = FinetuneConfig(task="rte", seed=1, model=BERT)
    good = FinetuneSpec(config, search.final_mask())
    Plan.of([search, good]).validate()
    for bad in (MaskRef(search.run_id, 0.5, 7), MaskRef(search.run_id, 0.6, 20)):
        with pytest.raises(PlanError, match="yields") as raised:
            Plan.of([search, FinetuneSpec(config, bad)]).validate()
        assert "SearchSpec.final_mask()" in str(raised.value)


def test_unreachable_tracking_server():
    from orchestrator.tracking import TrackingError, check_tracking_uri

    with pytest.raises(TrackingError) as raised:
        check_tracking_uri("http://127.0.0.1:9", timeout_s=2.0)  # port 9 (discard): nothing listens
    message = str(raised.value)
    assert "does not answer" in message and "mlflow server" in message and "drop --mlflow-uri" in message


@pytest.mark.parametrize("uri", ["ftp://example.org/mlflow", "s3://bucket/mlflow"])
def test_unsupported_tracking_uri(uri):
    from orchestrator.tracking import TrackingError, check_tracking_uri

    with pytest.raises(TrackingError, match="unsupported MLflow tracking URI") as raised:
        check_tracking_uri(uri)
    assert "http(s)://host:port" in str(raised.value) and "sqlite:///path" in str(raised.value)


def test_supported_tracking_uri_passes():
    from orchestrator.tracking import check_tracking_uri

    check_tracking_uri("sqlite:////tmp/anything.db")  # a database URI is not probed


def _unwritable(tmp_path: Path) -> Path:
    """A directory the storage cannot be created in: chmod 0o500 for a normal user; for root (whom chmod does not
    stop) a path below a regular file."""
    if os.geteuid() == 0:
        blocker = tmp_path / "f"
        blocker.write_text("a file, not a directory")
        return blocker / "sub"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked


def test_unwritable_storage(tmp_path):
    target = _unwritable(tmp_path)
    try:
        with pytest.raises(StorageError) as raised:
            Storage.at(target).prepare()
    finally:
        if target.exists():
            target.chmod(0o700)
    assert "cannot write" in str(raised.value) and "writable --storage" in str(raised.value)


def test_storage_of_another_format_version(tmp_path):
    (tmp_path / MARKER).write_text(json.dumps({"format_version": 999}))
    with pytest.raises(StorageError) as raised:
        Storage.at(tmp_path).prepare()
    message = str(raised.value)
    assert "format 999" in message and f"format {FORMAT_VERSION}" in message and "new --storage" in message


def test_non_empty_directory_that_is_not_a_store(tmp_path):
    (tmp_path / "thesis.tex").write_text("do not overwrite me")
    with pytest.raises(StorageError) as raised:
        Storage.at(tmp_path).prepare()
    assert "not a tamt store" in str(raised.value) and "empty or new --storage" in str(raised.value)
    assert not (tmp_path / MARKER).exists()


def test_resources_with_nothing_to_hold():
    from orchestrator.resources import Resources

    with pytest.raises(PlanError, match="--cpus-per-trial > 0"):
        Resources(search_cpu=0, search_gpu=0)
    with pytest.raises(PlanError, match="--cpus-per-trial > 0"):
        Resources(finetune_cpu=0.0, finetune_gpu=0.0)
    with pytest.raises(PlanError, match="≥ 0"):
        Resources(search_gpu=-1)
    with pytest.raises(PlanError, match="whole number of GPUs"):
        Resources(finetune_gpu=1.5)
    assert Resources(search_cpu=0, search_gpu=1).for_stage("search") == {"cpu": 0, "gpu": 1}


def test_workers_per_search_is_checked_before_anything_runs():
    """--workers-per-search 0 or a fraction is refused; so are more (or bigger) workers than the cluster holds at
    its largest, counted node by node; a search driver holds no CPU, and sits on preemption-safe nodes when the
    cluster declares them."""
    from orchestrator.resources import SEARCH_DRIVER_MEMORY, Resources, check_search_capacity

    for workers in (0, -1, 1.5):
        with pytest.raises(PlanError, match="--workers-per-search must be a whole number ≥ 1"):
            Resources(workers_per_search=workers)
    gpu_nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 2.0}]
    check_search_capacity(Resources(search_gpu=1, workers_per_search=2), gpu_nodes)
    with pytest.raises(PlanError, match="at most 2 such workers.*lower --workers-per-search"):
        check_search_capacity(Resources(search_gpu=1, workers_per_search=3), gpu_nodes)
    with pytest.raises(PlanError, match="at most 0 such workers"):
        check_search_capacity(Resources(search_cpu=4, search_gpu=2), gpu_nodes)  # no node has 2 GPUs
    check_search_capacity(Resources(search_cpu=1, workers_per_search=18), gpu_nodes)  # CPUs: 8 + 8 + 2
    check_search_capacity(Resources(workers_per_search=64), None)  # an autoscaler that cannot be read: no check

    tamt = {"stage": "search", "config": {"method": "tamt-kd"}}
    omp = {"stage": "search", "config": {"method": "omp"}}
    assert Resources(search_gpu=1).for_trial(omp) == {"cpu": 1.0, "gpu": 1}
    assert Resources(search_gpu=1).for_trial(tamt) == {"cpu": 0.0, "gpu": 0.0, "memory": SEARCH_DRIVER_MEMORY}
    driver = Resources(search_gpu=1, search_driver_resource="tamt_search_driver").for_trial(tamt)
    assert driver["cpu"] == driver["gpu"] == 0 and driver["tamt_search_driver"] > 0


def test_remote_storage_needs_a_tracking_server(tmp_path):
    from orchestrator.sweep import prepare
    from orchestrator.tracking import TrackingError

    storage = Storage(f"file://{tmp_path}/remote")
    with pytest.raises(TrackingError) as raised:
        prepare(Plan(), storage, None)
    assert "is remote" in str(raised.value) and "--mlflow-uri" in str(raised.value)
    assert not _ray_started()


def test_local_storage_prepare_passes_and_defaults_to_sqlite(tmp_path):
    from orchestrator.sweep import prepare

    plan = _grid(models=(BUILTIN_MODEL_NAME,)).plan()  # prepare() reads each model's config: one that is here
    finished, uri = prepare(plan, Storage.at(tmp_path / "store"), None)
    assert finished == set()
    assert uri == f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


def test_cli_bad_storage_exits_2_without_starting_ray(tmp_path, capsys, presets):
    from orchestrator.cli import sweep_main

    bad = _unwritable(tmp_path)
    try:
        code = sweep_main("main_results", presets, ["--preset", "smoke", "--storage", str(bad)])
    finally:
        if bad.exists():
            bad.chmod(0o700)
    captured = capsys.readouterr()
    assert code == 2
    assert "error:" in captured.err and "writable --storage" in captured.err
    assert not _ray_started()


@pytest.mark.parametrize("via_env", [False, True])
def test_an_address_where_no_ray_answers_is_refused_before_a_preset_is_chosen(tmp_path, capsys, presets,
                                                                               monkeypatch, via_env):
    import socket

    from orchestrator.cli import sweep_main

    with socket.socket() as probe:  # a port nothing listens on: bound, then closed
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    argv = ["--storage", str(tmp_path / "runs")]
    if via_env:
        monkeypatch.setenv("RAY_ADDRESS", address)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        argv += ["--address", address]
    code = sweep_main("main_results", presets, argv)
    captured = capsys.readouterr()
    assert code == 2
    assert f"no Ray cluster answers at {address} ({'RAY_ADDRESS' if via_env else '--address'}" in captured.err
    assert "preset:" not in captured.out and not (tmp_path / "runs").exists()
    assert not _ray_started()


# --- 6. storage ---------------------------------------------------------------------------------------------------

def test_prepare_creates_the_marker_and_accepts_its_own_store(tmp_path):
    root = tmp_path / "new" / "store"
    storage = Storage.at(root)
    storage.prepare()
    assert json.loads((root / MARKER).read_text()) == {"format_version": FORMAT_VERSION}
    (root / "runs").mkdir()  # a store in use is non-empty: still accepted
    storage.prepare()
    assert [p.name for p in root.iterdir() if p.name.startswith(".write-probe")] == []  # the probe is cleaned up


def test_file_uri_storage_push_pull_round_trip(tmp_path):
    storage = Storage(f"file://{tmp_path}/remote")
    assert not storage.is_local
    storage.prepare()
    assert json.loads((tmp_path / "remote" / MARKER).read_text())["format_version"] == FORMAT_VERSION

    run = RunDirectory(storage, "abc123", scratch_root=tmp_path / "scratch")
    assert run.local == tmp_path / "scratch" / "abc123"
    (run.local / "masks").mkdir()
    (run.local / "masks" / "m.txt").write_text("mask bits")
    (run.local / "spec.json").write_text("{}")
    run.push()
    assert (tmp_path / "remote" / "runs" / "abc123" / "masks" / "m.txt").read_text() == "mask bits"

    shutil.rmtree(run.local)
    run.local.mkdir(parents=True)
    run.pull()
    assert (run.local / "masks" / "m.txt").read_text() == "mask bits"
    assert (run.local / "spec.json").read_text() == "{}"

    other = RunDirectory(storage, "def456", scratch_root=tmp_path / "scratch")
    fetched = other.fetch("abc123", "masks/m.txt")
    assert fetched.read_text() == "mask bits" and fetched.is_relative_to(other.local)


# --- 7. GPU-hour estimates ------------------------------------------------------------------------------------

def test_search_gpu_hours_follow_tab3():
    # Tab. 3: TAMT-MLM on BERT took 3h54m58s for 22K iterations on one V100; Tab. 2: 17K iterations at 0.7;
    # plus 30 s to load the model and 60 s for the dev losses of each of the 3 masks it saves.
    tab3_seconds = 3 * 3600 + 54 * 60 + 58
    expected = (30 + 3 * 60 + 17_000 * (tab3_seconds / 22_000)) / 3600
    plan = Plan.of([SearchSpec(BERT, SearchConfig.of("tamt-mlm", 0.7, seed=1, save_steps=(1000, 5000)))])
    assert gpu_hours(plan)["search"]["tamt-mlm"] == pytest.approx(expected, rel=1e-12)
    # OMP trains nothing: the load and one mask's dev losses, or only the load when they are skipped.
    omp = Plan.of([SearchSpec(BERT, SearchConfig.of("omp", 0.7))])
    assert gpu_hours(omp)["search"]["omp"] == pytest.approx(90 / 3600)
    omp = Plan.of([SearchSpec(BERT, SearchConfig.of("omp", 0.7), dev_loss_batches=0)])
    assert gpu_hours(omp)["search"]["omp"] == pytest.approx(THROUGHPUT["v100"].load_s / 3600)


def test_finetune_gpu_hours_for_rte():
    table = THROUGHPUT["v100"]
    # RTE (Tab. 1, App. B): 2490 training examples, batch 32, 3 epochs → ceil(2490 / 32) = 78 steps per epoch,
    # 234 steps; an evaluation every 50 steps → 4 evaluations (50, 100, 150, 200) of the 277 dev examples.
    steps = math.ceil(2490 / 32) * 3
    assert steps == 234
    evaluations = steps // 50
    assert evaluations == 4 and DEV_SIZES["rte"] == 277
    expected_s = table.load_s + steps * 32 / table.glue_train_per_s + evaluations * 277 / table.glue_eval_per_s
    plan = Plan.of([FinetuneSpec(FinetuneConfig(task="rte", seed=1, model=BERT, data="hub"))])
    assert gpu_hours(plan)["finetune"]["full"] == pytest.approx(expected_s / 3600, rel=1e-12)


# --- 8. dry run ---------------------------------------------------------------------------------------------------

def test_dry_run_prints_the_plan_and_its_cost_without_ray(tmp_path, capsys, presets, paper_plan):
    from orchestrator.cli import sweep_main

    storage = tmp_path / "not-created"
    code = sweep_main("main_results", presets, ["--preset", "paper", "--dry-run", "--storage", str(storage)],
                      out=sys.stdout)
    out = capsys.readouterr().out
    assert code == 0
    # 166 searches + 4410 fine-tunes (derived in test_paper_preset_counts).
    assert "4576 unique trials" in out and "166 mask searches" in out and "4410 fine-tunes" in out
    assert "GPU-h" in out
    hours = gpu_hours(paper_plan)
    total = sum(sum(stage.values()) for stage in hours.values())
    assert f"total {total:.1f} GPU-h" in out
    assert not storage.exists()  # a dry run writes nothing
    assert not _ray_started()


# --- regressions: each of these was once accepted or misdirected ---------------------------------------------

@pytest.mark.parametrize("change", [
    {"methods": ("imp",), "sparsities": ()},
    {"methods": ("omp",), "sparsities": ()},
    {"methods": ("rand", "tamt-kd"), "mask_seeds": ()},
], ids=["imp-no-sparsities", "omp-no-sparsities", "rand-no-mask-seeds"])
def test_methods_without_sparsities_or_mask_seeds_are_refused(change):
    with pytest.raises(PlanError, match="empty"):
        Grid(**{**_GOOD, **change}).plan()


def test_method_search_settings_that_are_not_a_mapping():
    with pytest.raises(PlanError, match="omp"):
        Grid(**{**_GOOD, "search": {"omp": 5}})


def test_sweep_main_writes_to_the_current_stdout(tmp_path, presets):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = orchestrator.cli.sweep_main("main_results", presets,
                                           ["--preset", "smoke", "--dry-run", "--storage", str(tmp_path / "s")])
    assert code == 0
    assert "unique trials" in buffer.getvalue()


# --- similarity trials --------------------------------------------------------------------------------------

def test_similarity_spec_pairs_and_identity():
    from orchestrator.specs import SimilaritySpec

    a, b, c = (MaskRef(x * 16, 0.7, step) for x, step in (("a", 0), ("b", 100), ("c", 200)))
    everything = SimilaritySpec(BERT, 0.7, (a, b, c))
    assert everything.pairs() == [(a, b), (a, c), (b, c)]
    against_a = SimilaritySpec(BERT, 0.7, (b, c), reference=a)
    assert against_a.pairs() == [(a, b), (a, c)]
    assert against_a.run_id != everything.run_id
    assert SimilaritySpec.from_dict(against_a.to_dict()) == against_a
    assert SimilaritySpec(BERT, 0.7, [b, c], reference=a).run_id == against_a.run_id  # lists hash like tuples
    with pytest.raises(ValueError, match="each mask once"):
        SimilaritySpec(BERT, 0.7, (a, a))
    with pytest.raises(ValueError, match="at least two masks"):
        SimilaritySpec(BERT, 0.7, (a,))
    with pytest.raises(ValueError, match="masks of one sparsity"):
        SimilaritySpec(BERT, 0.7, (a, MaskRef("d" * 16, 0.8, 0)))


def test_mask_similarity_needs_exactly_one_reference_mask_per_sparsity():
    from orchestrator.grid import MaskSimilarity

    no_omp = Grid(models=(BERT,), methods=("rand",), sparsities=(0.5,), mask_seeds=(1, 2), finetune_seeds=(),
                  tasks=(), full_model=False)
    with pytest.raises(PlanError, match=r"0 omp masks .* at sparsity 0.5.*methods=\('omp',\)"):
        MaskSimilarity((no_omp,), reference="omp").plan()
    with pytest.raises(PlanError, match="not a method"):
        MaskSimilarity((no_omp,), reference="magnitude")
    pairs = MaskSimilarity((no_omp,)).plan()
    (spec,) = pairs.measurements.values()
    assert len(spec.pairs()) == 1 and len(pairs.searches) == 2  # the two random seeds, compared once


def test_search_ids_ignore_fields_added_later_at_their_defaults():
    """Stores written before alpha/phi (and adam_epsilon) existed keep their run ids; a changed alpha is another
    search."""
    import hashlib

    spec = SearchSpec(BERT, SearchConfig.of("tamt-mlm", 0.7, seed=1))
    added_later = ("alpha", "phi", "adam_epsilon", "kd_sequence_mean", "precision")
    first_record = {**FIRST_RECORD, **spec.config.to_dict()}  # every method's settings, as ids were first computed
    config = {k: v for k, v in first_record.items() if k not in added_later}
    before = json.dumps({"stage": "search", "model": BERT, "data": None, "config": config}, sort_keys=True,
                        separators=(",", ":"))
    assert spec.run_id == hashlib.sha256(before.encode()).hexdigest()[:16]
    assert SearchSpec(BERT, SearchConfig.of("tamt-mlm", 0.7, seed=1, alpha=3.0)).run_id != spec.run_id
