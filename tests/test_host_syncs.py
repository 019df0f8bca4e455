"""A training step waits for the device as little as it can: every call that would make the host wait for a GPU is
counted over one step (on the CPU, by patching torch's synchronising calls; with CUDA,
``torch.cuda.set_sync_debug_mode`` says the same), so that a new one is caught here."""

from __future__ import annotations

import pytest

from tamt_core.device import counted_host_syncs
from tamt_core.methods import METHODS
from tamt_core.methods.trained import training_step
from tamt_core.models import load_pretrained
from tamt_core.search.config import SearchConfig
from tamt_core.search.runner import pretraining_data


@pytest.mark.parametrize("method, expected", [
    ("tamt-mlm", {"tolist": 1}),  # τ's re-set reads the band counts of every matrix in one transfer
    ("tamt-kd", {"tolist": 1}),
    ("imp", {}),  # a step between prunes
])
def test_one_training_step_synchronises_at_most_once(method, expected, tiny_bert_dir):
    settings = ({"pruning_interval": 4} if method == "imp" else {"steps": 4}) | {"block_size": 32, "batch_size": 4}
    config = SearchConfig.of(method, 0.5 if method != "imp" else 0.3, seed=1, **settings)
    pretrained = load_pretrained(str(tiny_bert_dir))
    training_method = METHODS[method]
    data = pretraining_data(pretrained, None, config.seed)
    data = (training_method.training_data(data, config) if method != "imp" else data("mlm", block_size=32))
    training = training_method.setup(pretrained.model, data, config)
    training.model.train()
    for step in (1, 2):  # the second step: the optimizer and the threshold bands exist
        batch = training.on_host(next(training.batches))  # the CPU's share of the work, before the transfer
        with counted_host_syncs() as counts:
            training_step(training, batch)
            training.after_update(step)
            training.optimizer.zero_grad(set_to_none=True)
    assert dict(counts) == expected
