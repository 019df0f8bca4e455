"""Wanda (Sun et al. 2023): S = |W| · ‖X‖₂, compared within each output row, exact per-matrix sparsity, the word
embedding by magnitude; checked against the definition on small tensors and on the tiny BERT."""

from __future__ import annotations

import pytest
import torch

from tamt_core.masks import load_mask
from tamt_core.masks.masked_model import EMBEDDING, dense_weights
from tamt_core.methods.omp import omp_mask
from tamt_core.methods.wanda import input_norms, wanda_mask
from tamt_core.models import load_pretrained
from tamt_core.search import run_search
from tamt_core.search.config import SearchConfig


def test_the_score_is_weight_magnitude_times_input_norm_per_output_row():
    """W = [[1, -2, 3, 4], [4, 3, -2, 1]], ‖X‖ = [4, 3, 2, 1]: S = [[4, 6, 6, 4], [16, 9, 4, 1]] with ties broken by
    position; at 50 % each row loses its two smallest scores."""
    weight = torch.tensor([[1.0, -2.0, 3.0, 4.0], [4.0, 3.0, -2.0, 1.0]])
    norm = torch.tensor([4.0, 3.0, 2.0, 1.0])
    keep = wanda_mask(weight, norm, 0.5)
    assert keep.tolist() == [[False, True, True, False], [True, True, False, False]]
    # by magnitude alone (OMP) row 1 would keep 4 and 3, row 0 keep 3 and 4: the activations move row 0's choice
    assert omp_mask({"w": weight}, 0.5)["w"].tolist() != keep.tolist()


def test_sparsity_is_exact_per_matrix_with_rows_taking_the_extra_zero_by_their_next_score():
    torch.manual_seed(0)
    weight, norm = torch.randn(5, 7), torch.rand(7) + 0.1
    keep = wanda_mask(weight, norm, 0.7)  # round(0.7 · 35) = 24 zeros: 4 per row, and 4 rows take a fifth
    per_row = (~keep).sum(dim=1)
    assert int(per_row.sum()) == 24 and sorted(per_row.tolist()) == [4, 5, 5, 5, 5]
    scores = weight.abs() * norm
    fifth = scores.sort(dim=1).values[:, 4]
    assert int(fifth.argmax()) == int(per_row.argmin()), "the row whose fifth score is largest keeps it"
    for row in range(5):  # within a row, exactly the smallest scores go
        pruned, kept = scores[row][~keep[row]], scores[row][keep[row]]
        assert pruned.max() <= kept.min()
    whole = wanda_mask(weight, norm, 0.7, "matrix")
    assert int((~whole).sum()) == 24 and scores[~whole].max() <= scores[whole].min()


def test_input_norms_are_the_norms_of_each_matrix_input(tiny_bert_dir):
    """Layer 0's Q, K and V read the embedding output; FFN out reads the GELU activations: the hooks' norms equal
    the ones computed from those tensors directly."""
    model = load_pretrained(str(tiny_bert_dir)).model
    ids = torch.randint(1000, 2000, (2, 16), generator=torch.Generator().manual_seed(0))
    names = ["encoder.layer.0.attention.self.query.weight", "encoder.layer.0.output.dense.weight",
             "pooler.dense.weight"]
    norms = input_norms(model, names, [ids[:1], ids[1:]])
    base = model.base_model.eval()
    with torch.no_grad():
        out = base(input_ids=ids, output_hidden_states=True)
        layer = base.encoder.layer[0]
        attention = layer.attention(out.hidden_states[0])[0]
        gelu = layer.intermediate(attention)
    torch.testing.assert_close(norms[names[0]], out.hidden_states[0].reshape(-1, 32).norm(dim=0))
    torch.testing.assert_close(norms[names[1]], gelu.reshape(-1, gelu.shape[-1]).norm(dim=0))
    torch.testing.assert_close(norms[names[2]], out.hidden_states[-1][:, 0].norm(dim=0))
    assert all(not m._forward_pre_hooks for m in base.modules()), "the hooks are removed"


@pytest.fixture(scope="module")
def wanda_masks(tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("wanda")
    masks = {}
    for seed in (1, 1, 2):
        directory = out / f"seed{seed}-{len(masks)}"
        config = SearchConfig.of("wanda", 0.6, seed=seed, samples=4, block_size=32)
        (path,) = run_search(config, directory, model=str(tiny_bert_dir)).paths
        masks[len(masks)] = load_mask(path)
    return masks


def test_a_search_is_exact_deterministic_for_its_seed_and_prunes_the_embedding_by_magnitude(wanda_masks, tiny_bert_dir):
    first, again, other = wanda_masks[0], wanda_masks[1], wanda_masks[2]
    assert first.tensors.keys() == again.tensors.keys()
    assert all(torch.equal(first.tensors[n], again.tensors[n]) for n in first.tensors)  # same calibration draw
    assert any(not torch.equal(first.tensors[n], other.tensors[n]) for n in first.tensors if n != EMBEDDING)
    for keep in first.tensors.values():
        assert int((~keep).sum()) == round(0.6 * keep.numel())
    embedding = dense_weights(load_pretrained(str(tiny_bert_dir)).model)[EMBEDDING]
    assert torch.equal(first.tensors[EMBEDDING], omp_mask({EMBEDDING: embedding}, 0.6)[EMBEDDING])
    assert first.meta["method"] == "wanda" and first.meta["config"]["samples"] == 4


def test_its_settings_are_its_own():
    with pytest.raises(ValueError, match="do not apply to wanda"):
        SearchConfig.of("wanda", 0.5, lr=1e-3)
    with pytest.raises(ValueError, match="comparison must be one of"):
        SearchConfig.of("wanda", 0.5, comparison="column")
    assert SearchConfig.of("wanda", 0.5).to_dict() == {"method": "wanda", "sparsity": 0.5, "seed": 0, "samples": 128,
                                                        "block_size": 512, "comparison": "row"}
