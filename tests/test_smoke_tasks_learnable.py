"""The built-in smoke task data is learnable: dense fine-tuning of the built-in model beats chance on every task.

Without this, a smoke run that "works" could be fitting noise and no bug in the fine-tuning path would show. The
GLUE tasks run with Tab. 1's settings exactly (what `tamt finetune --full --task T` does on the smoke data);
SQuAD, whose 384-token windows make a CPU step slow, runs a short version: one epoch on 160 questions at 5× the
learning rate.
"""

from __future__ import annotations

import pytest

from tamt_core.finetune import FinetuneConfig, finetune

SQUAD_SHORT = dict(train_size=160, epochs=1, lr=1.5e-4)

# task: (config overrides, chance level of the selecting metric, required margin over chance)
CASES = {
    "sst2": ({}, 50.0, 30.0),        # accuracy, balanced classes
    "cola": ({}, 0.0, 30.0),         # MCC × 100
    "rte": ({}, 50.0, 20.0),         # accuracy, balanced
    "mrpc": ({}, 50.0, 10.0),        # accuracy, balanced
    "mnli": ({}, 100 / 3, 20.0),     # matched accuracy, three balanced classes
    "stsb": ({}, 0.0, 30.0),         # Pearson × 100
    "squad": (SQUAD_SHORT, 0.0, 15.0),  # F1; an untrained head scores about 0
}


@pytest.mark.slow
@pytest.mark.parametrize("task", list(CASES))
def test_dense_builtin_model_beats_chance_on_smoke_task(task, builtin_model_dir, tmp_path):
    overrides, chance, margin = CASES[task]
    result = finetune(FinetuneConfig(task=task, seed=1, **overrides), tmp_path / task)
    assert result.best_score >= chance + margin, (task, [e.metrics for e in result.curve])
