"""The fine-tuning loop on a tiny BERT: mask invariants (check vector 26), best-of-periodic selection (28), the
low-data subset (29), resuming, the full-model baseline, and bad input caught before any step."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tamt_core.data import downstream
from transformers import DataCollatorWithPadding

from tamt_core.outputs import OutputDirectoryError
from tamt_core.finetune import (Evaluation, FinetuneConfig, best_evaluation, evaluate_task, finetune,
                                load_task_data, task_model)
from tamt_core.masks.masked_model import apply_fixed_mask, remove_masks
from tamt_core.masks import MaskMismatchError, load_mask
from tamt_core.search.config import SearchConfig
from tamt_core.models import load_pretrained
from tamt_core.search import run_search
from tamt_core.tasks import UnknownTaskError, get_task, metric_names

QUICK = dict(train_size=64, batch_size=16, epochs=1, eval_every=2)
"""4 optimizer steps, evaluated after steps 2 and 4."""


@pytest.fixture(scope="module")
def omp_mask(tiny_bert_dir, tmp_path_factory):
    path = run_search(SearchConfig.of(method="omp", sparsity=0.6), tmp_path_factory.mktemp("omp"),
                      model=str(tiny_bert_dir)).paths[0]
    return path, load_mask(path)


def quick_config(model_dir, mask=None, **overrides) -> FinetuneConfig:
    settings = dict(task="sst2", seed=1, model=str(model_dir), mask_hash=None if mask is None else mask.content_hash)
    settings.update(QUICK)
    settings.update(overrides)
    return FinetuneConfig(**settings)


def test_pruned_entries_stay_zero_and_pruned_originals_never_move(tiny_bert_dir, omp_mask, tmp_path):
    """Check vector 26: after optimizer steps, θ ⊙ M is 0 wherever M is 0, those entries of θ are still θ0
    (no gradient or decay reached them), and the kept entries trained away from θ0."""
    path, mask = omp_mask
    theta0 = {k: v.clone() for k, v in load_pretrained(str(tiny_bert_dir), with_mlm_head=False).model
              .state_dict().items()}
    seen = []

    def inspect(evaluation: Evaluation) -> None:
        state = load_file(tmp_path / "run" / "checkpoint.safetensors")
        for name, kept in mask.tensors.items():
            module = name.rsplit(".", 1)[0]
            original = state[f"model/bert.{module}.parametrizations.weight.original"]
            effective = original * kept
            assert torch.count_nonzero(effective[~kept]) == 0
            assert torch.equal(original[~kept], theta0[name][~kept])
            if name != "embeddings.word_embeddings.weight":  # most vocabulary rows see no gradient in 4 steps
                assert not torch.equal(original[kept], theta0[name][kept]), name
        seen.append(evaluation.step)

    finetune(quick_config(tiny_bert_dir, mask), tmp_path / "run", mask=mask, mask_path=str(path),
             on_evaluation=inspect, checkpoint_every_s=0)
    assert seen == [2, 4]  # the state read at step 4 is still the one of step 2: none is due at the end


MASKED_GOLDEN_CURVE: list[tuple[int, float, float, float, float]] = [
    (3, 10.101337432861328, -2.477024797649793, -2.354092003467773, -2.415558400558783),
    (6, 11.787606557210287, -2.4898697817016155, -2.391527827564846, -2.4406988046332305),
    (9, 10.206111907958984, -2.500688092400163, -2.493056633072614, -2.4968723627363882),
    (12, 11.675732930501303, -2.5034962077121654, -2.469684571143684, -2.4865903894279247),
]
"""(step, train loss, Pearson, Spearman, their mean) of each evaluation of a 12-step STS-B fine-tune of the tiny BERT
under the 60 % OMP mask, recorded on 2026-12-07 with the mask still a ``FixedMask`` parametrization (W ⊙ M in every
forward, torch 2.13.0 CPU). STS-B because its metrics are continuous: SST-2's accuracy on the tiny model is 50.0
throughout and would not notice a change."""


def test_masked_fine_tuning_scores_are_the_recorded_ones(tiny_bert_dir, omp_mask, tmp_path):
    """Baking the mask into the weights (with masked gradients) computes what the parametrization computed: the
    curve of a short masked fine-tune is the one recorded under the parametrization."""
    _, mask = omp_mask
    config = quick_config(tiny_bert_dir, mask, task="stsb", train_size=96, epochs=2, eval_every=3)
    result = finetune(config, tmp_path / "run", mask=mask)
    observed = [(e.step, e.train_loss, e.metrics["pearson"], e.metrics["spearman"], e.metrics["pearson_and_spearman"])
                for e in result.curve]
    assert [row[0] for row in observed] == [row[0] for row in MASKED_GOLDEN_CURVE]
    torch.testing.assert_close(torch.tensor(observed, dtype=torch.float64),
                               torch.tensor(MASKED_GOLDEN_CURVE, dtype=torch.float64), rtol=1e-5, atol=1e-7)


def test_evaluations_see_the_masked_weights(tiny_bert_dir, minilm_tokenizer, omp_mask, tmp_path):
    """The reported metrics are those of θ ⊙ M: the final state reloaded under the mask reproduces them, and the
    same weights without the mask (pruned entries back at θ0) do not."""
    _, mask = omp_mask
    config = quick_config(tiny_bert_dir, mask, epochs=2, eval_every=4)
    result = finetune(config, tmp_path / "run", mask=mask, keep_checkpoint=True)
    assert [e.step for e in result.curve] == [4, 8]
    task = get_task("sst2")
    data = load_task_data(task, config, minilm_tokenizer)
    model = task_model(task, str(tiny_bert_dir), config.seed)
    apply_fixed_mask(model, mask.tensors)
    state = load_file(tmp_path / "run" / "checkpoint.safetensors")
    model.load_state_dict({k.removeprefix("model/"): v for k, v in state.items() if k.startswith("model/")},
                          strict=False)
    collate = DataCollatorWithPadding(minilm_tokenizer)
    cpu = torch.device("cpu")
    assert evaluate_task(model, task, data, collate, cpu) == result.curve[-1].metrics
    dense_logits = _logits_of(model, data, collate)
    remove_masks(model)
    assert not torch.allclose(dense_logits, _logits_of(model, data, collate))


def _logits_of(model, data, collate) -> torch.Tensor:
    batch = collate(data.dev[""].select(range(8)).select_columns(["input_ids", "attention_mask", "token_type_ids"])
                    .to_list())
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_best_is_the_max_over_periodic_evaluations_only(tiny_bert_dir, tmp_path):
    """Check vector 28: candidates are the evaluations at L, 2L, …; 7 steps with L = 2 give 2, 4, 6 and no
    evaluation at the final step 7."""
    config = quick_config(tiny_bert_dir, train_size=100, batch_size=16, epochs=1, eval_every=2)
    result = finetune(config, tmp_path / "run", checkpoint_every_s=0)
    assert result.info["steps"] == 7
    assert [e.step for e in result.curve] == [2, 4, 6]
    scores = [e.metrics["accuracy"] for e in result.curve]
    assert result.best_score == max(scores)
    assert result.best.step == result.curve[scores.index(max(scores))].step
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["best_score"] == result.best_score and len(saved["curve"]) == 3


def test_best_evaluation_takes_the_first_maximum_and_skips_nan():
    curve = [Evaluation(50, 1, 0.5, {"pearson": math.nan}), Evaluation(100, 2, 0.4, {"pearson": 80.0}),
             Evaluation(150, 3, 0.3, {"pearson": 85.0}), Evaluation(200, 4, 0.2, {"pearson": 85.0})]
    assert best_evaluation(curve, "pearson").step == 150
    assert best_evaluation(curve[:1], "pearson") is None


def test_low_data_subset_is_the_seeded_permutation_prefix(tiny_bert_dir, minilm_tokenizer):
    """Check vector 29: the subset for (N, seed) is randperm(len(train), generator=manual_seed(seed))[:N]."""
    task = get_task("sst2")
    full = downstream.tokenize_glue(downstream.load_task_dataset(task)["train"], task, minilm_tokenizer)
    for seed in (1, 2):
        data = load_task_data(task, quick_config(tiny_bert_dir, seed=seed, train_size=50), minilm_tokenizer)
        expected = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))[:50].tolist()
        assert data.train["input_ids"] == full.select(expected)["input_ids"]


def test_an_interrupted_run_resumes_to_the_same_curve(tiny_bert_dir, omp_mask, tmp_path):
    _, mask = omp_mask
    config = quick_config(tiny_bert_dir, mask, train_size=96, epochs=2, eval_every=3)  # 12 steps, 4 evaluations
    reference = finetune(config, tmp_path / "uninterrupted", mask=mask, checkpoint_every_s=0)

    class Preempted(Exception):
        pass

    def preempt_after_second(evaluation: Evaluation) -> None:
        if evaluation.step == 6:
            raise Preempted

    with pytest.raises(Preempted):
        finetune(config, tmp_path / "resumed", mask=mask, checkpoint_every_s=0, on_evaluation=preempt_after_second)
    assert (tmp_path / "resumed" / "checkpoint.safetensors").exists()
    assert not (tmp_path / "resumed" / "result.json").exists()
    resumed = finetune(config, tmp_path / "resumed", mask=mask, checkpoint_every_s=0)
    assert [e.step for e in resumed.curve] == [3, 6, 9, 12]
    for a, b in zip(reference.curve, resumed.curve):
        assert a.metrics == b.metrics
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-6)
    assert not (tmp_path / "resumed" / "checkpoint.safetensors").exists()

    again = finetune(config, tmp_path / "resumed", mask=mask)  # finished: returned from result.json, no compute
    assert again.to_dict() == json.loads((tmp_path / "resumed" / "result.json").read_text())


def test_full_model_baseline_and_mnli_reports_both_dev_sets(tiny_bert_dir, tmp_path):
    config = quick_config(tiny_bert_dir, task="mnli", epochs=1, eval_every=4)
    result = finetune(config, tmp_path / "mnli")
    assert set(result.curve[0].metrics) == {"accuracy_matched", "accuracy_mismatched"}
    assert result.select_metric == "accuracy_matched"  # Tab. 1: "Matched Acc"
    mismatched = FinetuneConfig(**{**config.to_dict(), "select_metric": "accuracy_mismatched"})
    assert mismatched.run_id != config.run_id
    assert mismatched.hparams.metric == "accuracy_mismatched"


def test_squad_runs_end_to_end_with_question_and_feature_subsets(tiny_bert_dir, minilm_tokenizer, tmp_path):
    config = quick_config(tiny_bert_dir, task="squad", train_size=32, batch_size=8, eval_every=4)
    result = finetune(config, tmp_path / "squad")
    assert set(result.curve[-1].metrics) == {"exact_match", "f1"}
    assert 0.0 <= result.best_score <= 100.0
    task = get_task("squad")
    by_questions = load_task_data(task, config, minilm_tokenizer)
    by_features = load_task_data(task, FinetuneConfig(**{**config.to_dict(), "subset_unit": "features"}),
                                 minilm_tokenizer)
    assert len(by_features.train) == 32
    assert len(by_questions.train) >= 32  # a question gives one feature per window


def test_regression_head_for_stsb(tiny_bert_dir, tmp_path):
    result = finetune(quick_config(tiny_bert_dir, task="stsb", eval_every=4), tmp_path / "stsb")
    assert set(result.curve[0].metrics) == {"pearson", "spearman", "pearson_and_spearman"}
    assert result.select_metric == "pearson"


# --- bad input, caught before any step -------------------------------------------------------------------------


def test_unknown_task_and_bad_sizes_are_rejected_in_the_config():
    with pytest.raises(UnknownTaskError, match="choose one of cola, sst2"):
        FinetuneConfig(task="qqp", seed=1)
    with pytest.raises(ValueError, match="train_size must be a positive"):
        FinetuneConfig(task="rte", seed=1, train_size=0)
    with pytest.raises(ValueError, match="reports accuracy_matched, accuracy_mismatched"):
        FinetuneConfig(task="mnli", seed=1, select_metric="accuracy")
    assert metric_names(get_task("mrpc")) == ("accuracy", "f1", "accuracy_and_f1")


def test_train_size_beyond_the_training_set_is_rejected(tiny_bert_dir, tmp_path):
    with pytest.raises(ValueError, match=r"train_size 10000000 must be between 1 and \d+ \(the size of sst2"):
        finetune(quick_config(tiny_bert_dir, train_size=10_000_000), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_a_mask_for_another_model_is_rejected(tiny_roberta_dir, omp_mask, tmp_path):
    _, mask = omp_mask
    with pytest.raises(MaskMismatchError, match="the pretrained weights differ"):
        finetune(quick_config(tiny_roberta_dir, mask), tmp_path / "run", mask=mask)


def test_an_output_directory_of_another_run_is_rejected(tiny_bert_dir, tmp_path):
    finetune(quick_config(tiny_bert_dir, epochs=1, eval_every=4), tmp_path / "run")
    with pytest.raises(OutputDirectoryError, match="holds another fine-tuning run.*Pass a new output directory"):
        finetune(quick_config(tiny_bert_dir, seed=2, epochs=1, eval_every=4), tmp_path / "run")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirectoryError, match="holds no fine-tuning run"):
        finetune(quick_config(tiny_bert_dir), tmp_path / "other")


@pytest.mark.parametrize("task", ["stsb", "squad", "rte"])
def test_task_heads_give_fp32_logits_under_bf16_autocast(tiny_bert_dir, task):
    """On a GPU the loop runs under bf16 autocast; SQuAD's span ranking and STS-B's correlations need the head's
    output in fp32. CPU autocast stands in for CUDA's here: the same dispatch casts Linear to bf16."""
    from tamt_core.finetune import task_model
    from tamt_core.tasks import get_task

    model = task_model(get_task(task), str(tiny_bert_dir), 1).eval()
    ids = torch.randint(5, 100, (2, 8))
    encoder_dtypes = []
    query = model.base_model.encoder.layer[0].attention.self.query
    query.register_forward_hook(lambda module, args, output: encoder_dtypes.append(output.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    logits = [out.start_logits, out.end_logits] if task == "squad" else [out.logits]
    assert all(tensor.dtype == torch.float32 for tensor in logits)
    assert encoder_dtypes == [torch.bfloat16]  # the encoder keeps its bf16 speed
