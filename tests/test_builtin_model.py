"""The built-in smoke model: the shipped MLM head joined to the encoder. (The paper's mechanism on this model, TAMT
against OMP, is tested on the smoke preset's own searches in ``test_smoke_preset.py``.)"""

from __future__ import annotations

import torch

from tamt_core.subnetwork import pretrain_losses


def test_builtin_model_joins_the_shipped_mlm_head(tmp_path):
    """The head fitted by ``tamt_core.smoke.fit_mlm_head`` ships with the package: the first build joins it to the
    encoder, and the dense model's MLM dev loss is that of a fitted head, far below a random head's ≈ 10.3."""
    from safetensors.torch import load_file
    from transformers import BertForPreTraining

    from tamt_core.smoke import HEAD_FILE, builtin_model_dir

    directory = builtin_model_dir(tmp_path)
    head = BertForPreTraining.from_pretrained(directory).cls.state_dict()
    assert all(torch.equal(head[name], value) for name, value in load_file(HEAD_FILE).items())
    losses = pretrain_losses({"dense": None}, model=str(directory), objectives=("mlm",), max_batches=2)
    assert losses["dense"]["mlm_loss"] < 7.0, losses
