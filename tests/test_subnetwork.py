"""Pre-training dev losses of subnetworks, mask/model matching, and export to stock transformers."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

from tamt_core.subnetwork import export_subnetwork, load_for_mask, pretrain_losses
from tamt_core.masks import MaskFileError, load_mask
from tamt_core.search.config import SearchConfig
from tamt_core.search import run_search


@pytest.fixture(scope="module")
def omp_mask_file(tiny_bert_dir, tmp_path_factory):
    return run_search(SearchConfig.of(method="omp", sparsity=0.6), tmp_path_factory.mktemp("omp"),
                      model=str(tiny_bert_dir)).paths[0]


def test_export_round_trips_through_stock_automodel(omp_mask_file, tmp_path):
    mask = load_mask(omp_mask_file)
    out = export_subnetwork(mask, tmp_path / "exported")
    exported = AutoModel.from_pretrained(out)
    for name, kept in mask.tensors.items():
        weight = exported.get_parameter(name)
        assert torch.count_nonzero(weight[~kept]) == 0
        assert torch.count_nonzero(weight[kept]) == int(kept.sum())
    classifier = AutoModelForSequenceClassification.from_pretrained(out, num_labels=2)  # any head class loads it
    assert torch.count_nonzero(classifier.bert.pooler.dense.weight) == int(mask.tensors["pooler.dense.weight"].sum())


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_export_writes_files_as_the_umask_allows(omp_mask_file, tmp_path, umask, mode):
    """safetensors creates model.safetensors 0600; the export gives every file the mode of a file the user creates."""
    previous = os.umask(umask)
    try:
        out = export_subnetwork(load_mask(omp_mask_file), tmp_path / "exported")
    finally:
        os.umask(previous)
    files = sorted(out.iterdir())
    assert "model.safetensors" in [path.name for path in files]
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in files} == {path.name: mode for path in files}


def test_mask_of_another_model_is_rejected(omp_mask_file, tiny_roberta_dir):
    mask = load_mask(omp_mask_file)
    with pytest.raises(MaskFileError, match="fingerprint|made for"):
        load_for_mask(mask, str(tiny_roberta_dir))


def test_pretrain_losses_are_deterministic_and_dense_kd_is_zero(omp_mask_file, tiny_bert_dir):
    masks = {"dense": None, "omp": load_mask(omp_mask_file)}
    first = pretrain_losses(masks, block_size=64, max_batches=2, batch_size=4)
    second = pretrain_losses(masks, block_size=64, max_batches=2, batch_size=4)
    assert first == second
    assert first["dense"]["kd_loss"] == pytest.approx(0.0, abs=1e-6)
    assert first["omp"]["kd_loss"] > 1e-3
    assert first["omp"]["sparsity"] == pytest.approx(0.6, abs=1e-4)  # round(s·n) per matrix
    other_seed = pretrain_losses(masks, block_size=64, max_batches=2, batch_size=4, seed=7)
    assert other_seed["dense"]["mlm_loss"] != first["dense"]["mlm_loss"]


def test_unknown_objective_is_refused_before_loading(monkeypatch):
    import tamt_core.subnetwork as evaluate

    monkeypatch.setattr(evaluate, "load_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ValueError, match="unknown objective"):
        pretrain_losses({"dense": None}, objectives=("mlm", "nsp"))


def test_mse_kd_dev_loss_pads_every_sequence_to_the_block_as_the_released_eval_did(omp_mask_file, tiny_bert_dir):
    """reference-impl §9: the released KD dev loss is an MSE over every position of sequences padded to the block
    length. So it cannot depend on how the sequences are batched: 4 batches of 1 give the 2 batches of 2's value.
    (Padding to each batch's longest row instead, the batches of 2 average over extra padding positions.)"""
    from tamt_core.models import load_pretrained
    from tamt_core.methods import METHODS
    from tamt_core.search.runner import pretraining_data

    omp = {"omp": load_mask(omp_mask_file)}
    ones = pretrain_losses(omp, objectives=("kd",), kd_distance="mse", block_size=64, batch_size=1, max_batches=4)
    twos = pretrain_losses(omp, objectives=("kd",), kd_distance="mse", block_size=64, batch_size=2, max_batches=2)
    assert ones["omp"]["kd_loss"] == pytest.approx(twos["omp"]["kd_loss"], rel=1e-5)
    # The training data of --kd-include-padding is padded the same way: to the block, not the longest row.
    pretrained = load_pretrained(str(tiny_bert_dir))
    for padded in (True, False):
        config = SearchConfig.of(method="tamt-kd", sparsity=0.5, block_size=64, kd_include_padding=padded)
        data = METHODS["tamt-kd"].training_data(pretraining_data(pretrained, None, config.seed), config)
        batch = data.collate([data.dataset[i] for i in range(2)])
        longest = max(len(data.dataset[i]["input_ids"]) for i in range(2))
        assert batch["input_ids"].shape[1] == (64 if padded else longest)
