"""A run asked to stop (a scheduler's SIGTERM reaches it through the sweep, or through ``tamt``) writes a checkpoint
and raises ``RunStopped``; running it again gives what the uninterrupted run gives."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from tamt_core.checkpoints import RunStopped
from tamt_core.finetune import FinetuneConfig, finetune
from tamt_core.search import SearchResult, read_log, run_search
from tamt_core.search.config import SearchConfig
from tamt_core.search.runner import CHECKPOINTS_DIR


def _after(step: int):
    """A stop request that turns true once ``step`` steps have been counted."""
    counted = []
    return counted.append, lambda: len(counted) >= step


def test_a_search_asked_to_stop_checkpoints_at_its_sync_point_and_resumes_to_the_same_masks(tiny_bert_dir, tmp_path):
    config = SearchConfig.of("tamt-mlm", 0.5, seed=1, steps=20, save_steps=(15,), lr=1e-2, block_size=32,
                             batch_size=4)
    reference = run_search(config, tmp_path / "reference", model=str(tiny_bert_dir), log_every=4)
    count, stop = _after(2)  # asked after the second sync point (step 8): it stops at the third (step 12)
    with pytest.raises(RunStopped) as stopped:
        run_search(config, tmp_path / "stopped", model=str(tiny_bert_dir), log_every=4, log_step=count,
                   stop_requested=stop)
    assert stopped.value.step == 12
    assert sorted(p.name for p in (tmp_path / "stopped" / CHECKPOINTS_DIR).glob("step-*")) == ["step-00000012"]
    assert SearchResult.read(tmp_path / "stopped") is None

    resumed = run_search(config, tmp_path / "stopped", model=str(tiny_bert_dir), log_every=4)
    assert [m.content_hash for m in resumed.masks] == [m.content_hash for m in reference.masks]
    assert ([(e["step"], e["loss"]) for e in read_log(tmp_path / "stopped")]
            == [(e["step"], e["loss"]) for e in read_log(tmp_path / "reference")])


def test_a_fine_tune_asked_to_stop_between_evaluations_resumes_to_the_same_curve(tiny_bert_dir, tmp_path):
    """Stopped at step 3 of an evaluation period of 4: the checkpoint carries the loss window, so the resumed run's
    evaluation at step 4 averages steps 1-4 as the uninterrupted run's does."""
    config = FinetuneConfig(task="sst2", seed=1, model=str(tiny_bert_dir), train_size=64, batch_size=8, epochs=1,
                            eval_every=4)
    reference = finetune(config, tmp_path / "reference")
    count, stop = _after(3)
    with pytest.raises(RunStopped) as stopped:
        finetune(config, tmp_path / "stopped", on_step=count, stop_requested=stop)
    assert stopped.value.step == 3 and (tmp_path / "stopped" / "checkpoint.safetensors").exists()
    resumed = finetune(config, tmp_path / "stopped")
    assert [asdict(e) for e in resumed.curve] == [asdict(e) for e in reference.curve]
    assert json.loads((tmp_path / "stopped" / "result.json").read_text())["best"] == asdict(reference.best)
    assert not (tmp_path / "stopped" / "checkpoint.safetensors").exists()
