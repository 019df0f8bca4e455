"""Adding a search method takes its own module, its golden numbers and one registry line: a toy method written in
a temporary module, registered by one line, is planned by a grid, run as a sweep's trials and tabulated."""

from __future__ import annotations

import importlib
import io

import torch

from orchestrator.grid import Grid
from orchestrator.results import read_frame
from orchestrator.storage import Storage
from orchestrator.trial import TrialSettings, execute
from tamt_core.masks import load_mask
from tamt_core.methods import METHODS

TOY_MODULE = '''
"""Row magnitude: keep the largest |W| of each output row (a toy one-shot method)."""

import torch

from tamt_core.masks.masked_model import dense_weights
from tamt_core.masks.pruning import n_zeros
from tamt_core.methods.base import FoundMask, OneShot


def row_magnitude_mask(weights, sparsity):
    masks = {}
    for name, w in weights.items():
        rows = w.detach().abs().reshape(w.shape[0], -1)
        smallest = rows.argsort(dim=1)[:, : n_zeros(rows.shape[1], sparsity)]
        masks[name] = torch.ones_like(rows, dtype=torch.bool).scatter_(1, smallest, False).view(w.shape)
    return masks


class RowMagnitude(OneShot):
    name = "row-magnitude"
    version = 1
    seeded = False
    first_record = False

    def search(self, context, config):
        yield FoundMask(0, config.sparsity, row_magnitude_mask(dense_weights(context.pretrained.model),
                                                               config.sparsity))
'''


def test_a_method_in_its_own_module_plans_runs_and_tabulates(tiny_bert_dir, tmp_path, monkeypatch):
    (tmp_path / "toy_method.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    toy = importlib.import_module("toy_method")
    monkeypatch.setitem(METHODS, "row-magnitude", toy.RowMagnitude())  # the registry line

    grid = Grid(models=(str(tiny_bert_dir),), methods=("row-magnitude",), sparsities=(0.5,), mask_seeds=(1, 2),
                finetune_seeds=(1,), tasks=("sst2",), full_model=False, train_sizes=(32,), dev_loss_batches=1,
                finetune={"epochs": 1, "batch_size": 16, "eval_every": 1}, search={"steps": 9, "lr": 1e-3})
    plan = grid.plan()
    assert {stage: dict(counts) for stage, counts in plan.counts().items()} == {
        "search": {"row-magnitude": 1}, "finetune": {"row-magnitude": 1}, "measure": {}}  # unseeded: one search

    storage = Storage.at(str(tmp_path / "runs"))
    storage.prepare()
    settings = TrialSettings(storage.uri, device="cpu")
    for spec in plan.specs():  # the trials a sweep hands out, searches first, each run as its Ray trial runs it
        execute(spec, settings)

    table = read_frame(storage.uri).set_index("stage")
    search, finetune = table.loc["search"], table.loc["finetune"]
    assert search["method"] == finetune["method"] == "row-magnitude" and finetune["sparsity"] == 0.5
    mask = load_mask(tmp_path / "runs" / "runs" / search["run_id"] / search["mask_file"])
    rows = torch.stack([keep.reshape(keep.shape[0], -1).sum(1).float().std() for keep in mask.tensors.values()])
    assert mask.sparsity == 0.5 and float(rows.max()) == 0.0  # every row of every matrix keeps the same count

    from analysis.results_table import print_so_far

    printed = io.StringIO()
    print_so_far(storage.uri, printed)
    assert "row-magnitude" in printed.getvalue() and "SST-2" in printed.getvalue()
