"""Fig. 3 (and Fig. 8, 9): downstream scores of OMP, random, IMP, TAMT-MLM and TAMT-KD subnetworks of BERT and
RoBERTa at 20–90 % sparsity on the seven tasks, with the full models as reference (§4.2).

    python sweeps/main_results.py                  # smoke preset on a laptop, paper preset on a GPU cluster
    python sweeps/main_results.py --preset paper --dry-run
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from orchestrator.cli import sweep_main  # noqa: E402
from orchestrator.grid import Grid  # noqa: E402
from tamt_core import hparams  # noqa: E402
from tamt_core.methods.base import METHOD_NAMES  # noqa: E402
from tamt_core.models import BUILTIN_MODEL_NAME  # noqa: E402
from tamt_core.tasks import TASKS  # noqa: E402

PRESETS = {
    # §4.1: BERT-base and RoBERTa-base, 8 sparsities, 3 mask seeds × 3 fine-tune seeds, 7 tasks, Tab. 1/2 settings.
    "paper": lambda: [Grid(models=("bert-base-uncased", "roberta-base"), methods=METHOD_NAMES,
                           sparsities=hparams.SPARSITIES, mask_seeds=hparams.MASK_SEEDS,
                           finetune_seeds=hparams.FINETUNE_SEEDS, tasks=tuple(TASKS),
                           pretrain_data="Salesforce/wikitext", task_data="hub")],
    # Offline, on 2 CPU cores in minutes: the shipped model and data, every method, two sparsities and two tasks.
    "smoke": lambda: [Grid(models=(BUILTIN_MODEL_NAME,), methods=METHOD_NAMES, sparsities=(0.5, 0.7),
                           mask_seeds=(1,), finetune_seeds=(1,), tasks=("rte", "sst2"), train_sizes=(320,),
                           search={"pruning_interval": 4, "steps": {0.5: 16, 0.7: 24}, "batch_size": 8,
                                   "block_size": 64, "tamt-mlm": {"lr": 2e-3}, "tamt-kd": {"lr": 2e-3}},
                           finetune={"epochs": 2, "lr": 1e-4, "batch_size": 16, "eval_every": 20},
                           dev_loss_batches=2)],
}

if __name__ == "__main__":
    raise SystemExit(sweep_main("main_results", PRESETS, description=__doc__.splitlines()[0]))
