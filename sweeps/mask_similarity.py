"""Fig. 6, 15: how alike the masks of different methods and seeds are (§4.2.4): pairwise similarity among OMP and
the 3 seeds of IMP, TAMT-MLM and TAMT-KD, and the distance from OMP of TAMT's masks along training and of IMP's
masks at every pruning interval, at 60/70/80 %. Only searches and similarity trials: the downstream scores of
Fig. 6 left come from pretrain_cost.

    python sweeps/mask_similarity.py --preset paper --dry-run
"""

from __future__ import annotations

from orchestrator.grid import MaskSimilarity
from sweeps.common import SMOKE_COST_STEPS, SMOKE_IMP_INTERVALS, paper_grid, smoke_grid, sweep_main, with_interval
from tamt_core import hparams

MASKS_ONLY = {"tasks": (), "full_model": False}


def similarity(make, sparsities, tamt_steps, intervals) -> list[MaskSimilarity]:
    """All pairs of the main-result masks; distance from OMP of the masks along training (Fig. 6 left/right)."""
    main = make(methods=("omp", "imp", "tamt-mlm", "tamt-kd"), sparsities=sparsities, **MASKS_ONLY)
    along = [make(methods=("omp", "tamt-mlm", "tamt-kd"), sparsities=sparsities, finetune_steps=tamt_steps,
                  **MASKS_ONLY),
             *[with_interval(make(methods=("imp",), sparsities=sparsities, **MASKS_ONLY), p) for p in intervals]]
    return [MaskSimilarity((main,)), MaskSimilarity(tuple(along), reference="omp")]


PRESETS = {
    "paper": lambda: similarity(paper_grid, hparams.SIMILARITY_SPARSITIES, hparams.TAMT_COST_STEPS,
                                hparams.IMP_COST_INTERVALS),
    "smoke": lambda: similarity(smoke_grid, (0.7,), SMOKE_COST_STEPS, SMOKE_IMP_INTERVALS),
}

if __name__ == "__main__":
    raise SystemExit(sweep_main("mask_similarity", PRESETS, description=__doc__))
