"""A tuning-study driver run as a subprocess by the study tests, so they can SIGKILL it.

Usage: python tests/study_driver.py SETTINGS.json   (keys: storage, model, temp_dir, trials)
Prints one JSON line with the report at the end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from orchestrator.storage import Storage
from orchestrator.study import TamtStudy
from orchestrator.tuning import run_study


def study(settings: dict) -> TamtStudy:
    return TamtStudy(name="tiny", model=settings["model"], method="tamt-kd", sparsity=0.5,
                     trials=settings["trials"], dev_loss_batches=1, sampler_seed=7,
                     search={"steps": 2, "batch_size": 2, "block_size": 32})


def main() -> None:
    settings = json.loads(Path(sys.argv[1]).read_text())
    report = run_study(study(settings), storage=Storage.at(settings["storage"]), max_concurrent=1,
                       progress_every_s=1.0,
                       ray_init={"num_cpus": 1, "_temp_dir": settings["temp_dir"], "include_dashboard": False,
                                 "object_store_memory": 200 * 1024**2})
    print(json.dumps({"completed": report.completed, "ran": report.ran, "recovered": report.recovered,
                      "best": report.best, "best_value": report.best_value}))


if __name__ == "__main__":
    main()
