"""My experiment: OMP against TAMT-MLM subnetworks at 50 % and 70 % sparsity on SST-2 and RTE, beside the full
model.

Copy this file anywhere, rename it and edit the grids: it imports the installed tamt (`pip install -e .` in the
checkout), so it runs from any folder. docs/sweeps.md lists what a grid takes.

    python my_sweep.py --dry-run                 # the plan: trials per stage, dependencies, GPU-hours
    python my_sweep.py                           # smoke preset without a GPU, paper preset with one
    python my_sweep.py --preset paper --storage /mnt/shared/tamt-runs
"""

from __future__ import annotations

from sweeps.common import paper_grid, smoke_grid, sweep_main

PRESETS = {
    # The paper's settings (§4.1): BERT-base, WikiText-103, the hub's GLUE, 3 mask seeds × 3 fine-tune seeds,
    # Tab. 2's TAMT steps. Its trials are all among sweeps/main_results.py's: a storage both use runs each once.
    "paper": lambda: [paper_grid(methods=("omp", "tamt-mlm"), sparsities=(0.5, 0.7), tasks=("sst2", "rte"))],
    # Offline on a laptop in minutes: the built-in model, corpus and task data, one seed of each kind.
    "smoke": lambda: [smoke_grid(methods=("omp", "tamt-mlm"), sparsities=(0.5,), tasks=("sst2",))],
}

if __name__ == "__main__":
    raise SystemExit(sweep_main("my_sweep", PRESETS, description=__doc__))
