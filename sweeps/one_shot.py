"""Beyond the paper: TAMT's task-agnostic masks beside Wanda's one-shot masks (Sun et al. 2023), which also use
pre-training data alone and no labels, with OMP as the baseline both start from.

OMP, Wanda, TAMT-MLM and TAMT-KD at the paper's sparsities on the paper's tasks (BERT-base, 3 mask seeds × 3
fine-tune seeds). OMP's and TAMT's searches and fine-tunes are main_results' own (the same run ids), so run
together (``python -m sweeps --all``) this sweep adds Wanda's searches and fine-tunes only.

    python sweeps/one_shot.py --preset paper --dry-run
    python sweeps/one_shot.py                       # smoke: 50 % and 70 % on the built-in model, in minutes
"""

from __future__ import annotations

from sweeps.common import SMOKE_SEEDS, paper_grid, smoke_grid, sweep_main
from tamt_core import hparams
from tamt_core.tasks import TASKS

METHODS = ("omp", "wanda", "tamt-mlm", "tamt-kd")

PRESETS = {
    # BERT-base × 4 methods × 8 sparsities × 3 mask seeds × 3 fine-tune seeds × 7 tasks (OMP: one mask per sparsity).
    "paper": lambda: [paper_grid(methods=METHODS, sparsities=hparams.SPARSITIES, tasks=tuple(TASKS),
                                 full_model=False)],
    # The built-in model at 50 % and 70 % on the smoke SST-2, three fine-tuning seeds per cell: Wanda's masks are three
    # calibration draws (one per fine-tuning seed, a second each); TAMT's the smoke presets' own runs.
    "smoke": lambda: [
        smoke_grid(methods=("omp", "wanda"), sparsities=(0.5, 0.7), tasks=("sst2",), mask_seeds=SMOKE_SEEDS,
                   finetune_seeds=SMOKE_SEEDS, paired_seeds=True, full_model=False),
        smoke_grid(methods=("tamt-mlm", "tamt-kd"), sparsities=(0.5, 0.7), tasks=("sst2",),
                   finetune_seeds=SMOKE_SEEDS, full_model=False),
    ],
}

if __name__ == "__main__":
    raise SystemExit(sweep_main("one_shot", PRESETS, description=__doc__))
