"""IMP and TAMT runs on a tiny BERT: schedules, trainable sets, exact sparsity, rewinding (check vectors 7, 10,
14-16, 19) and the mask files a search writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tamt_core.hparams import PHI
from tamt_core.masks.masked_model import POOLER, current_mask, dense_weights, mask_parametrizations
from tamt_core.masks import load_mask
from tamt_core.methods import METHODS
from tamt_core.search.config import SearchConfig
from tamt_core.methods.base import SearchContext
from tamt_core.methods.tamt import initial_scores
from tamt_core.models import load_pretrained, mlm_head
from tamt_core.masks.pruning import n_zeros
from tamt_core.search.runner import pretraining_data
from tamt_core.search import run_search
from tamt_core.search.resumable import SearchRun

SMALL = dict(block_size=64, batch_size=4)


def _run(model_dir, config, log_every=1):
    """Run a method directly (no checkpoints); returns the found masks, the logged steps and the model it trained."""
    pretrained = load_pretrained(str(model_dir))
    logs = []
    run = SearchRun({}, store=None, mask_dir=Path("unused"), log=logs.append, device=torch.device("cpu"),
                    log_every=log_every)
    context = SearchContext(pretrained, torch.device("cpu"), pretraining_data(pretrained, None, config.seed), run)
    found = list(METHODS[config.method].search(context, config))
    return found, logs, pretrained.model


def test_imp_emits_each_sparsity_at_its_step_and_restarts_the_lr(tiny_bert_dir):
    """Check vectors 7 and 10: mask of sparsity s at (10s − 1)·P; the LR returns to its base after each prune."""
    period = 3
    found, logs, _ = _run(tiny_bert_dir, SearchConfig.of(method="imp", sparsity=0.4, pruning_interval=period,
                                                      schedule_steps=30, **SMALL))
    assert [(f.step, f.sparsity) for f in found] == [(0, 0.1), (3, 0.2), (6, 0.3), (9, 0.4)]
    lrs = [entry["lr"] for entry in logs]
    assert len(lrs) == 9
    assert lrs[0] == lrs[3] == lrs[6] == pytest.approx(5e-5 * (1 - 1 / 30))  # fresh schedule after each prune
    assert lrs[2] == pytest.approx(5e-5 * (1 - 3 / 30))
    for earlier, later in zip(found, found[1:]):  # nested (check vector 6)
        assert all(not (later.tensors[n] & ~earlier.tensors[n]).any() for n in earlier.tensors)


@pytest.mark.parametrize("rewind", [True, False])
def test_imp_rewinds_kept_weights_to_theta0_unless_asked_not_to(tiny_bert_dir, rewind):
    """Check vector 9: with rewinding (paper §4.1.3) weights equal θ0 after a prune; without, they stay trained."""
    theta0 = {n: w.detach().clone() for n, w in dense_weights(load_pretrained(str(tiny_bert_dir)).model).items()}
    config = SearchConfig.of(method="imp", sparsity=0.2, pruning_interval=2, rewind=rewind, lr=1e-3, **SMALL)
    _, _, model = _run(tiny_bert_dir, config)
    query = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(dense_weights(model)[query], theta0[query]) is rewind
    assert torch.equal(dense_weights(model)[POOLER], theta0[POOLER])  # no gradient reaches the pooler
    # The MLM decoder is the word embedding (tied): trained through the output layer, and rewound with it.
    embedding = "embeddings.word_embeddings.weight"
    decoder = mlm_head(model).predictions.decoder.weight
    assert decoder.data_ptr() == dense_weights(model)[embedding].data_ptr()
    assert torch.equal(decoder, theta0[embedding]) is rewind


def test_imp_pooler_mask_is_magnitude_mask_of_theta0(tiny_bert_dir):
    """Check vector 8: the pooler gets no gradient, so its IMP mask ranks θ0's magnitudes."""
    found, _, model = _run(tiny_bert_dir, SearchConfig.of(method="imp", sparsity=0.3, pruning_interval=2, rewind=False,
                                                       lr=1e-3, **SMALL))
    pooler = dense_weights(model)[POOLER].abs()
    kept = found[-1].tensors[POOLER]
    assert pooler[kept].min() >= pooler[~kept].max()


@pytest.mark.parametrize("method", ["tamt-mlm", "tamt-kd"])
def test_tamt_keeps_exact_sparsity_at_every_step_and_pooler_fixed(tiny_bert_dir, method):
    """Check vectors 14-16 and 18: after every re-set each matrix has int(s·n) zeros (ties aside, only the
    embedding may have more); the pooler, which gets no gradient, keeps its init mask."""
    config = SearchConfig.of(method=method, sparsity=0.7, steps=6, save_steps=(0, 2, 4), lr=5e-3, **SMALL)
    found, _, _model = _run(tiny_bert_dir, config)
    assert [f.step for f in found] == [0, 2, 4, 6]
    init = found[0].tensors
    for mask in found[1:]:
        for name, kept in mask.tensors.items():
            zeros = int((~kept).sum())
            expected = n_zeros(kept.numel(), 0.7, "floor")
            assert zeros >= expected if name.startswith("embeddings") else zeros == expected, name
        assert torch.equal(mask.tensors[POOLER], init[POOLER])
    assert any(not torch.equal(found[-1].tensors[n], init[n]) for n in init)  # masks moved (check vector 17)


def test_tamt_init_mask_is_eq5(tiny_bert_dir):
    found, _, _model = _run(tiny_bert_dir, SearchConfig.of(method="tamt-mlm", sparsity=0.6, steps=1, save_steps=(0,),
                                                       **SMALL))
    scores = initial_scores(dense_weights(load_pretrained(str(tiny_bert_dir)).model), 0.6)
    assert all(torch.equal(found[0].tensors[n], s > PHI) for n, s in scores.items())


def test_tamt_alpha_and_phi_set_the_initial_scores_and_threshold(tiny_bert_dir):
    """Eq. 5 with the tunable α, φ: kept scores start at α·φ, pruned at 0, and τ starts at φ (§3.4.2).

    α·φ = 0.006 lies below the default φ = 0.01, so the step-0 mask equals the OMP init only if τ starts at φ."""
    weights = dense_weights(load_pretrained(str(tiny_bert_dir)).model)
    scores = initial_scores(weights, 0.6, alpha=1.5, phi=0.004)
    assert {round(v, 6) for s in scores.values() for v in s.unique().tolist()} == {0.0, 0.006}
    config = SearchConfig.of(method="tamt-mlm", sparsity=0.6, steps=1, save_steps=(0,), alpha=1.5, phi=0.004, **SMALL)
    found, _, _ = _run(tiny_bert_dir, config)
    assert all(torch.equal(found[0].tensors[n], s > 0) for n, s in scores.items())
    with pytest.raises(ValueError, match="alpha must be > 1"):
        SearchConfig.of(method="tamt-mlm", sparsity=0.5, alpha=1.0)
    with pytest.raises(ValueError, match="omp has none"):
        SearchConfig.of(method="omp", sparsity=0.5, phi=0.1)


def test_tamt_mlm_trains_scores_and_head_but_not_weights_or_decoder(tiny_bert_dir):
    """Check vector 19: trainable = scores + MLM head transform/bias; encoder weights and tied decoder frozen."""
    _, _, model = _run(tiny_bert_dir, SearchConfig.of(method="tamt-mlm", sparsity=0.5, steps=1, **SMALL))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    scores = {n for n in trainable if n.endswith(".scores")}
    assert len(scores) == len(mask_parametrizations(model)) == 14
    assert trainable - scores == {"cls.predictions.bias", "cls.predictions.transform.dense.weight",
                                  "cls.predictions.transform.dense.bias",
                                  "cls.predictions.transform.LayerNorm.weight",
                                  "cls.predictions.transform.LayerNorm.bias"}
    assert not mlm_head(model).predictions.decoder.weight.requires_grad


def test_tamt_kd_trains_scores_only(tiny_bert_dir):
    _, _, model = _run(tiny_bert_dir, SearchConfig.of(method="tamt-kd", sparsity=0.5, steps=1, **SMALL))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".scores") for n in trainable)


def test_sparsity_drifts_between_resets_and_is_exact_after_one(tiny_bert_dir):
    """Check vector 18: with τ frozen (the released code's periodic re-set) the sparsity drifts as scores move;
    right after a re-set it is exact again."""
    from tamt_core.masks.masked_model import apply_score_masks
    from tamt_core.methods.tamt import ThresholdController

    model = load_pretrained(str(tiny_bert_dir)).model
    apply_score_masks(model, initial_scores(dense_weights(model), 0.7))
    controller = ThresholdController(model, 0.7, "floor")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mask in controller.masks.values():
            mask.scores += 0.02 * torch.randn(mask.scores.shape, generator=generator)
    query = "encoder.layer.0.attention.self.query.weight"
    target = controller.zeros[query]
    assert int((~current_mask(model)[query]).sum()) != target
    controller.reset()  # no gradients here: a re-set of trained matrices only changes nothing
    assert int((~current_mask(model)[query]).sum()) != target
    controller.reset(only_trained=False)
    assert all(int((~kept).sum()) == controller.zeros[n] for n, kept in current_mask(model).items())


def test_run_search_writes_mask_files_with_metadata(tiny_bert_dir, tmp_path):
    paths = run_search(SearchConfig.of(method="rand", sparsity=0.5, seed=3), tmp_path, model=str(tiny_bert_dir)).paths
    mask = load_mask(paths[0])
    assert mask.meta["method"] == "rand" and mask.meta["seed"] == 3 and mask.meta["sparsity"] == 0.5
    assert mask.meta["model_fingerprint"] == load_pretrained(str(tiny_bert_dir)).fingerprint
    assert mask.sparsity == pytest.approx(0.5, abs=1e-6)
    again = load_mask(run_search(SearchConfig.of(method="rand", sparsity=0.5, seed=3), tmp_path / "again",
                                 model=str(tiny_bert_dir)).paths[0])
    assert again.content_hash == mask.content_hash  # reproducible from the seed


@pytest.mark.parametrize("method", list(METHODS))
def test_every_registered_method_writes_masks_of_its_sparsity(method, tiny_bert_dir, tmp_path):
    """Registering a method gets it run here: each writes loadable masks with the requested sparsity."""
    options = {"imp": dict(pruning_interval=1, **SMALL), "tamt-mlm": dict(steps=2, **SMALL),
               "tamt-kd": dict(steps=2, **SMALL)}.get(method, {})
    config = SearchConfig.of(method=method, sparsity=0.3, **options)
    paths = run_search(config, tmp_path, model=str(tiny_bert_dir)).paths
    final = load_mask(paths[-1])
    assert final.meta["method"] == method and final.meta["sparsity"] == pytest.approx(0.3)
    assert final.sparsity == pytest.approx(0.3, abs=2e-3)


def test_imp_builds_a_fresh_optimizer_after_every_prune(tiny_bert_dir, monkeypatch):
    """Check vector 10: Adam moments restart at zero after each prune (a new optimizer per interval)."""
    import tamt_core.methods.imp as imp

    built = []
    original = imp.adamw_with_schedule

    def counting(params, **kwargs):
        optimizer, schedule = original(params, **kwargs)
        built.append(optimizer)
        return optimizer, schedule

    monkeypatch.setattr(imp, "adamw_with_schedule", counting)
    _run(tiny_bert_dir, SearchConfig.of(method="imp", sparsity=0.4, pruning_interval=2, **SMALL))
    assert len(built) == 3 and len({id(o) for o in built}) == 3
    # each optimizer took exactly P steps: its Adam step count never carries over from the previous interval
    assert all(int(next(iter(o.state.values()))["step"]) == 2 for o in built)


def test_same_seed_reproduces_a_tamt_run(tiny_bert_dir, tmp_path):
    config = SearchConfig.of(method="tamt-kd", sparsity=0.5, steps=3, lr=1e-2, seed=5, **SMALL)
    first = load_mask(run_search(config, tmp_path / "a", model=str(tiny_bert_dir)).paths[-1])
    second = load_mask(run_search(config, tmp_path / "b", model=str(tiny_bert_dir)).paths[-1])
    assert first.content_hash == second.content_hash


def test_roberta_tamt_mlm_trains_lm_head_but_not_its_tied_decoder(tiny_roberta_dir):
    found, _, model = _run(tiny_roberta_dir, SearchConfig.of(method="tamt-mlm", sparsity=0.5, steps=2, **SMALL))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and not n.endswith(".scores")}
    assert trainable == {"lm_head.bias", "lm_head.dense.weight", "lm_head.dense.bias", "lm_head.layer_norm.weight",
                         "lm_head.layer_norm.bias"}
    assert len(found[-1].tensors) == 14 and POOLER in found[-1].tensors


def test_missing_pooler_weights_are_initialised_reproducibly(tiny_roberta_dir):
    first, second = load_pretrained(str(tiny_roberta_dir)), load_pretrained(str(tiny_roberta_dir))
    assert torch.equal(dense_weights(first.model)[POOLER], dense_weights(second.model)[POOLER])
    assert first.fingerprint == second.fingerprint


@pytest.mark.parametrize("objective, period, resets", [
    ("kd", 100, [1, 99, 199, 299]),     # released TAMT-KD: step 1, then (step + 1) % 100 == 0
    ("mlm", 1000, [1000, 2000, 3000]),  # released TAMT-MLM: every logging step; τ = φ before
    ("kd", 1, list(range(1, 301))),     # the default: every step
    ("mlm", 1, list(range(1, 301))),
])
def test_threshold_resets_where_the_released_trainers_did(objective, period, resets):
    from tamt_core.methods.threshold import reset_due

    last = resets[-1] if period > 1 else 300
    assert [step for step in range(1, last + 1) if reset_due(step, period, objective)] == resets
