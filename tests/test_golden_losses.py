"""Golden numbers: the first training losses of every registered search method and of fine-tuning, on the tiny
BERT, recorded here. A change to any method's numerics (its loss, optimizer, schedule, masking, data order) fails
this test; a deliberate one records the new numbers and raises the method's version in
``version`` in its module together (docs/results.md, "Stale rows").

Methods that do not train (OMP, random) are pinned by their masks' content hashes. A method added to the registry
without golden numbers fails here with the numbers to record.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from tamt_core.finetune import FinetuneConfig, finetune
from tamt_core.masks import load_mask
from tamt_core.methods import METHODS
from tamt_core.search.config import SearchConfig
from tamt_core.search import read_log, run_search

SMALL = dict(sparsity=0.5, block_size=32, batch_size=4, lr=1e-2)
STEPS = 4
SETTINGS = {
    "omp": dict(method="omp", sparsity=0.5),
    "rand": dict(method="rand", sparsity=0.5, seed=1),
    "imp": dict(method="imp", pruning_interval=2, **{**SMALL, "sparsity": 0.3}),
    "tamt-mlm": dict(method="tamt-mlm", steps=STEPS, **SMALL),
    "tamt-kd": dict(method="tamt-kd", steps=STEPS, **SMALL),
    "wanda": dict(method="wanda", sparsity=0.5, seed=1, samples=8, block_size=32),
}
"""A few steps of each method; IMP to 30 % trains two intervals of 2 steps between its three prunes."""

GOLDEN: dict[str, list[float] | str] = {
    "omp": "1719950791db5d36e05ddaad0ffd213850bcf2f32fa0e1501ff8d2e5230dd5b3",
    "rand": "7580376f76dc2b7c525bcb8cd4bc99007c10f1b8af4c046e58753466e8b5e258",
    "imp": [10.286968231201172, 10.235169410705566, 10.27999496459961, 10.171456336975098],
    "tamt-mlm": [10.294371604919434, 10.311485290527344, 10.262489318847656, 10.300824165344238],
    "tamt-kd": [0.0684068351984024, 0.06652834266424179, 0.10415901243686676, 0.14487715065479279],
    "wanda": "c8365774426cb70a0310ca64ea73006d6dadeddc7c21301b22061102b2703d21",
}
"""Per method: the loss of each training step, or the sha256 of the kept entries of the mask of a method that does
not train (the mask file's own content hash also covers its metadata, which names the model's directory)."""

FINETUNE_GOLDEN: list[float] = [0.6923940181732178, 0.6929234862327576, 0.6872715950012207, 0.6920790076255798]
"""The mean training loss between evaluations of a 4-step SST-2 fine-tune of the tiny BERT (evaluated every step)."""


def _observed(method: str, model_dir, out) -> list[float] | str:
    config = SearchConfig.of(**SETTINGS[method])
    result = run_search(config, out, model=str(model_dir), log_every=1)
    if config.objective is None:
        (path,) = result.paths
        tensors = load_mask(path).tensors
        return hashlib.sha256(b"".join(tensors[name].numpy().tobytes() for name in sorted(tensors))).hexdigest()
    return [entry["loss"] for entry in read_log(out)]


@pytest.mark.parametrize("method", list(METHODS))
def test_first_losses_of_each_method_are_the_recorded_ones(method, tiny_bert_dir, tmp_path):
    assert method in SETTINGS, f"{method} has no golden settings: add a few steps of it to SETTINGS"
    observed = _observed(method, tiny_bert_dir, tmp_path)
    assert method in GOLDEN, f"{method} has no golden numbers: record {observed!r} in GOLDEN"
    if isinstance(GOLDEN[method], str):
        assert observed == GOLDEN[method]
    else:
        torch.testing.assert_close(torch.tensor(observed, dtype=torch.float64),
                                   torch.tensor(GOLDEN[method], dtype=torch.float64), rtol=1e-4, atol=1e-6)


def test_first_losses_of_fine_tuning_are_the_recorded_ones(tiny_bert_dir, tmp_path):
    config = FinetuneConfig(task="sst2", seed=1, model=str(tiny_bert_dir), train_size=64, batch_size=16, epochs=1,
                            eval_every=1)
    result = finetune(config, tmp_path / "run")
    torch.testing.assert_close(torch.tensor([e.train_loss for e in result.curve], dtype=torch.float64),
                               torch.tensor(FINETUNE_GOLDEN, dtype=torch.float64), rtol=1e-4, atol=1e-6)
