"""The masked set, the parametrizations and the straight-through estimator (paper §3.2, §3.4.1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

from tamt_core.masks.masked_model import (EMBEDDING, POOLER, ScoreMask, apply_fixed_mask, apply_score_masks,
                                          current_mask, dense_weights, masked_parameter_names, remove_masks,
                                          weight_shapes)
from tamt_core.models import load_pretrained, mlm_head


def _meta_model(cls, config):
    with torch.device("meta"):
        return cls(config)


@pytest.mark.parametrize("cls, config, entries, embedding", [
    (BertModel, BertConfig(), 108_965_376, 23_440_896),
    (RobertaModel, RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1),
     124_128_000, 38_603_520),
])
def test_base_sized_masked_set_has_74_matrices_and_reference_entry_count(cls, config, entries, embedding):
    """Check vector 1: 74 matrices, 108,965,376 entries (BERT-base) / 124,128,000 (RoBERTa-base)."""
    shapes = weight_shapes(_meta_model(cls, config))
    assert len(shapes) == 74
    assert sum(torch.Size(s).numel() for s in shapes.values()) == entries
    assert torch.Size(shapes[EMBEDDING]).numel() == embedding


def test_masked_set_order_and_exclusions():
    """Check vector 2: order emb, L0 Q,K,V,AO,I,O, ..., pooler; no bias, LayerNorm, position/type embedding."""
    names = masked_parameter_names(_meta_model(BertModel, BertConfig(num_hidden_layers=2)))
    assert names == [EMBEDDING] + [f"encoder.layer.{i}.{m}.weight" for i in range(2) for m in (
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense")] + [POOLER]
    assert not any(s in n for n in names for s in ("bias", "LayerNorm", "position", "token_type"))


def test_mlm_model_carries_pooler_and_head_stays_unmasked(tiny_bert_dir):
    pretrained = load_pretrained(str(tiny_bert_dir))
    names = masked_parameter_names(pretrained.model)
    assert len(names) == 1 + 6 * 2 + 1 and names[-1] == POOLER
    head_params = {id(p) for p in mlm_head(pretrained.model).parameters()}
    embedding = dense_weights(pretrained.model)[EMBEDDING]
    masked_ids = {id(w) for w in dense_weights(pretrained.model).values()}
    assert head_params & masked_ids == {id(embedding)}  # only through the tied decoder, which stays dense


def test_tied_decoder_stays_dense_while_embedding_lookup_is_masked(tiny_bert_dir):
    """Reference-impl §1.1: the input lookup uses W ⊙ M, the MLM output projection the dense W."""
    model = load_pretrained(str(tiny_bert_dir)).model
    dense = dense_weights(model)
    embedding_before = dense[EMBEDDING].detach().clone()
    mask = {n: torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) > 0.5 for n, w in dense.items()}
    apply_fixed_mask(model, mask)
    embeddings = model.bert.embeddings.word_embeddings
    assert torch.equal(embeddings.weight, dense[EMBEDDING] * mask[EMBEDDING])
    assert model.cls.predictions.decoder.weight is embeddings.parametrizations.weight.original
    assert torch.equal(model.cls.predictions.decoder.weight, embedding_before)
    assert torch.count_nonzero(embeddings.weight) < torch.count_nonzero(embedding_before)


def test_fixed_mask_keeps_originals_and_bake_writes_zeros(tiny_bert_dir):
    model = load_pretrained(str(tiny_bert_dir)).model
    before = {n: w.detach().clone() for n, w in dense_weights(model).items()}
    mask = {n: torch.rand(w.shape, generator=torch.Generator().manual_seed(2)) > 0.3 for n, w in before.items()}
    apply_fixed_mask(model, mask)
    assert all(torch.equal(w, before[n]) for n, w in dense_weights(model).items())  # never overwritten
    assert all(torch.equal(current_mask(model)[n], mask[n]) for n in mask)
    remove_masks(model, bake=True)
    query = model.bert.encoder.layer[0].attention.self.query.weight
    assert torch.equal(query, before["encoder.layer.0.attention.self.query.weight"]
                       * mask["encoder.layer.0.attention.self.query.weight"])


def test_mask_for_other_shapes_is_rejected(tiny_bert_dir):
    model = load_pretrained(str(tiny_bert_dir)).model
    mask = {n: torch.ones(3, 3, dtype=torch.bool) for n in dense_weights(model)}
    with pytest.raises(ValueError, match="shape mismatch"):
        apply_fixed_mask(model, mask)


def test_straight_through_gradient_is_output_gradient_times_weight():
    """Check vector 13: grad(M̄) == grad(W ⊙ M) ⊙ W elementwise; the frozen W receives no gradient."""
    torch.manual_seed(0)
    layer = nn.Linear(5, 4)
    weight = layer.weight.detach().clone()
    scores = torch.randn(4, 5)
    from torch.nn.utils import parametrize

    parametrize.register_parametrization(layer, "weight", ScoreMask(scores, threshold=0.0))
    layer.parametrizations.weight.original.requires_grad_(False)
    x = torch.randn(3, 5)
    (layer(x) ** 2).sum().backward()
    effective = (weight * (scores > 0)).requires_grad_(True)
    (nn.functional.linear(x, effective, layer.bias.detach()) ** 2).sum().backward()
    torch.testing.assert_close(layer.parametrizations.weight[0].scores.grad, effective.grad * weight)
    assert layer.parametrizations.weight.original.grad is None


def test_score_equal_to_threshold_is_pruned():
    """Check vector 12 (Eq. 3 with the released code's strict >)."""
    mask = ScoreMask(torch.tensor([[0.01, 0.0100001, 0.0099999]]), threshold=0.01)
    assert mask.binary_mask().tolist() == [[False, True, False]]
    assert mask(torch.ones(1, 3)).tolist() == [[0.0, 1.0, 0.0]]


def test_score_masks_freeze_weights(tiny_roberta_dir):
    model = load_pretrained(str(tiny_roberta_dir)).model
    scores = {n: torch.zeros_like(w) for n, w in dense_weights(model).items()}
    apply_score_masks(model, scores)
    assert not any(w.requires_grad for w in dense_weights(model).values())
    assert len(masked_parameter_names(model)) == 14
