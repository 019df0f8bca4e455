"""Fig. 7: fine-tuning 70 % subnetworks and the full model on CoLA, SST-2, MNLI and SQuAD subsets from 1,000
examples up to the whole training set (§4.2.5); 3 mask seeds × 5 fine-tune seeds, which also draw the subsets.

    python sweeps/low_data.py --preset paper --dry-run
"""

from __future__ import annotations

from sweeps.common import SMOKE_FINETUNE, SMOKE_TRAIN_SIZE, paper_grid, smoke_grid, sweep_main
from tamt_core import hparams

METHODS = ("omp", "imp", "tamt-mlm", "tamt-kd")
SPARSITY = (hparams.LOW_DATA_SPARSITY,)

PRESETS = {
    # Every (task, size) of reference-impl §7.4 with its epochs; the whole-set point is main_results' own runs.
    "paper": lambda: [
        *[paper_grid(methods=METHODS, sparsities=SPARSITY, tasks=(task,), train_sizes=(size,),
                     finetune_seeds=hparams.LOW_DATA_FINETUNE_SEEDS, finetune=hparams.low_data_finetune(task, size))
          for task, sizes in hparams.LOW_DATA_SIZES.items() for size in sizes],
        paper_grid(methods=METHODS, sparsities=SPARSITY, tasks=tuple(hparams.LOW_DATA_SIZES)),
    ],
    "smoke": lambda: [
        *[smoke_grid(methods=METHODS, sparsities=SPARSITY, tasks=("sst2",), train_sizes=(size,),
                     finetune={**SMOKE_FINETUNE, **hparams.low_data_finetune("sst2", size)})
          for size in (SMOKE_TRAIN_SIZE // 4, SMOKE_TRAIN_SIZE // 2)],
        smoke_grid(methods=METHODS, sparsities=SPARSITY, tasks=("sst2",)),
    ],
}

if __name__ == "__main__":
    raise SystemExit(sweep_main("low_data", PRESETS, description=__doc__))
