"""Task-agnostic tuning of TAMT's lr, α and φ (Eq. 5) with Optuna, on the pre-training dev loss of each
objective only: no downstream data is touched (App. C). The study is stored beside the runs and resumes where it
stopped; its best setting feeds any sweep through --search-settings.

    python sweeps/tune_tamt.py --preset paper
    python sweeps/main_results.py --search-settings tamt-runs/studies/tamt-mlm-bert-0.7/best.json
"""

from __future__ import annotations

from orchestrator.study import TamtStudy
from sweeps.common import BERT, WIKITEXT, sweep_main
from tamt_core.methods import METHODS
from tamt_core.models import BUILTIN_MODEL_NAME

TRIALS = 24
"""Per objective: TPE's 10 random start-up points, then 14 guided ones."""
PROXY_STEPS = 3000
"""Each trial trains 3K steps, Tab. 2's 20 % length: the LR schedule spans 2 epochs whatever the length (Tab. 1),
so a trial is the first 3K steps of a full run at a sixth of its cost."""

PRESETS = {
    "paper": lambda: [TamtStudy(name=f"{method}-bert-0.7", model=BERT, data=WIKITEXT, method=method, sparsity=0.7,
                                trials=TRIALS, search={"steps": PROXY_STEPS}) for method in ("tamt-mlm", "tamt-kd")],
    "smoke": lambda: [TamtStudy(name="tamt-mlm-smoke-0.7", model=BUILTIN_MODEL_NAME, method="tamt-mlm",
                                sparsity=0.7, trials=6, dev_loss_batches=2,
                                search={"batch_size": METHODS["tamt-mlm"].smoke["batch_size"],
                                        "block_size": METHODS["tamt-mlm"].smoke["block_size"], "steps": 16})],
}

if __name__ == "__main__":
    raise SystemExit(sweep_main("tune_tamt", PRESETS, description=__doc__))
