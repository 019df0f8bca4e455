"""Fig. 3 (and Fig. 8, 9): downstream scores of OMP, random, IMP, TAMT-MLM and TAMT-KD subnetworks of BERT and
RoBERTa at 20–90 % sparsity on the seven tasks, with the full models as reference (§4.2.1).

    python sweeps/main_results.py                  # smoke preset on a laptop, paper preset on a GPU cluster
    python sweeps/main_results.py --preset paper --dry-run
"""

from __future__ import annotations

from sweeps.common import BERT, PAPER_METHODS, ROBERTA, SMOKE_SEEDS, paper_grid, smoke_grid, sweep_main
from tamt_core import hparams
from tamt_core.tasks import TASKS

PRESETS = {
    # §4.1: BERT-base and RoBERTa-base × 5 methods × 8 sparsities × 3 mask seeds × 3 fine-tune seeds × 7 tasks, and
    # the full models; TAMT masks at Tab. 2's step, IMP's from runs to 90 %.
    "paper": lambda: [paper_grid(models=(BERT, ROBERTA), methods=PAPER_METHODS, sparsities=hparams.SPARSITIES,
                                 tasks=tuple(TASKS))],
    # Offline, on 2 CPU cores in minutes: every method at 50 % and the full model on the smoke SST-2, three
    # fine-tuning seeds each. Random masks have a seed of their own per replicate; IMP and TAMT one search each (a
    # TAMT search costs two of the smoke's minutes).
    "smoke": lambda: [
        smoke_grid(methods=("omp", "imp", "tamt-mlm", "tamt-kd"), sparsities=(0.5,), tasks=("sst2",),
                   finetune_seeds=SMOKE_SEEDS, imp_until=0.5),
        smoke_grid(methods=("rand",), sparsities=(0.5,), tasks=("sst2",), mask_seeds=SMOKE_SEEDS,
                   finetune_seeds=SMOKE_SEEDS, paired_seeds=True),
    ],
}

if __name__ == "__main__":
    raise SystemExit(sweep_main("main_results", PRESETS, description=__doc__))
