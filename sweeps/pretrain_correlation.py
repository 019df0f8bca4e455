"""Fig. 1, 4, 8, 10, 11: the MLM and KD dev losses of subnetworks beside their downstream scores (§4.2.2): OMP and
random masks at 10–90 % (3 random seeds), IMP's masks, TAMT's masks along training, and the full model.

    python sweeps/pretrain_correlation.py --preset paper --dry-run
"""

from __future__ import annotations

from sweeps.common import SMOKE_COST_STEPS, SMOKE_SPARSITIES, paper_grid, smoke_grid, sweep_main
from tamt_core import hparams
from tamt_core.tasks import TASKS

PRESETS = {
    "paper": lambda: [
        # Fig. 1, 8: OMP vs random (3 seeds) at 10-90 % on every task, the full model's losses and scores.
        paper_grid(methods=("omp", "rand"), sparsities=hparams.OMP_RAND_SPARSITIES, tasks=tuple(TASKS),
                   dense_loss=True),
        # Fig. 4, 10, 11: IMP (3 seeds) and TAMT's masks along training at 50-80 % on the tasks of App. E.
        paper_grid(methods=("imp",), sparsities=hparams.CORRELATION_SPARSITIES, tasks=hparams.ANALYSIS_TASKS,
                   full_model=False),
        paper_grid(methods=("tamt-mlm", "tamt-kd"), sparsities=hparams.CORRELATION_SPARSITIES,
                   tasks=hparams.ANALYSIS_TASKS, finetune_steps=hparams.TAMT_COST_STEPS, full_model=False),
    ],
    "smoke": lambda: [
        smoke_grid(methods=("omp", "rand"), sparsities=SMOKE_SPARSITIES, tasks=("sst2",), dense_loss=True),
        smoke_grid(methods=("imp", "tamt-mlm", "tamt-kd"), sparsities=SMOKE_SPARSITIES, tasks=("sst2",),
                   finetune_steps=SMOKE_COST_STEPS, full_model=False),
    ],
}

if __name__ == "__main__":
    raise SystemExit(sweep_main("pretrain_correlation", PRESETS, description=__doc__))
