"""Fig. 5, 12-14: downstream scores against pre-training iterations and time (§4.2.3): TAMT's masks along one run
per sparsity, and IMP with pruning intervals P from 200 to 2792, at 60/70/80 %. Each search row records the
iterations and training seconds behind every mask it wrote.

    python sweeps/pretrain_cost.py --preset paper --dry-run
"""

from __future__ import annotations

from sweeps.common import SMOKE_COST_STEPS, SMOKE_IMP_INTERVALS, paper_grid, smoke_grid, sweep_main, with_interval
from tamt_core import hparams

PRESETS = {
    # TAMT: 2 objectives × 3 sparsities × 3 seeds × 7 steps; IMP: 6 intervals × 3 seeds × 3 sparsities; each mask
    # on the 5 tasks of App. F × 3 fine-tune seeds.
    "paper": lambda: [
        paper_grid(methods=("tamt-mlm", "tamt-kd"), sparsities=hparams.COST_SPARSITIES, tasks=hparams.ANALYSIS_TASKS,
                   finetune_steps=hparams.TAMT_COST_STEPS, full_model=False),
        *[with_interval(paper_grid(methods=("imp",), sparsities=hparams.COST_SPARSITIES, tasks=hparams.ANALYSIS_TASKS,
                                   full_model=False), interval) for interval in hparams.IMP_COST_INTERVALS],
    ],
    "smoke": lambda: [
        smoke_grid(methods=("tamt-mlm", "tamt-kd"), sparsities=(0.7,), tasks=("sst2",),
                   finetune_steps=SMOKE_COST_STEPS, full_model=False),
        *[with_interval(smoke_grid(methods=("imp",), sparsities=(0.7,), tasks=("sst2",), full_model=False), interval)
          for interval in SMOKE_IMP_INTERVALS],
    ],
}

if __name__ == "__main__":
    raise SystemExit(sweep_main("pretrain_cost", PRESETS, description=__doc__))
