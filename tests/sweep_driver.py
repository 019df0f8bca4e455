"""A sweep driver run as a subprocess by the reliability tests, so they can SIGKILL or Ctrl-C it.

Usage: python tests/sweep_driver.py SETTINGS.json   (keys: storage, model, temp_dir, seeds, cluster, ...)
Prints one JSON line with the report at the end; exits 143 when the sweep stopped on SIGTERM. ``blocked_attempts``
makes the first N attempts of every trial hang before they start (the watchdog tests).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from orchestrator.control import StallLimits
from orchestrator.resources import Resources
from orchestrator.scheduler import WINDOW_TRIALS
from orchestrator.sweep import run_sweep
from orchestrator.grid import Grid
from orchestrator.storage import Storage
from orchestrator.trial import tune_trial


def grid(settings: dict) -> Grid:
    return Grid(models=(settings["model"],), methods=tuple(settings.get("methods", ("omp", "rand"))),
                sparsities=tuple(settings.get("sparsities", (0.5,))), mask_seeds=(1,),
                finetune_seeds=tuple(settings.get("seeds", (1,))), tasks=tuple(settings.get("tasks", ("rte",))),
                train_sizes=(settings.get("train_size", 64),), full_model=settings.get("full_model", True),
                search=settings.get("search", {}),
                finetune={"epochs": settings.get("epochs", 1), "eval_every": 1, "batch_size": 8},
                dev_loss_batches=0)


def remove_node_when_busy(cluster, node, storage: Path) -> None:
    """Remove ``node`` while a trial runs on it (an attempt recorded there, no row yet)."""
    deadline = time.time() + 120
    while time.time() < deadline:
        for attempts in (storage / "runs").glob("*/attempts.jsonl"):
            run_id = attempts.parent.name
            nodes = [json.loads(line)["node"] for line in attempts.read_text().splitlines()]
            if node.node_id in nodes and not (storage / "table" / f"{run_id}.parquet").exists():
                (storage / "removed-during.txt").write_text(run_id)
                cluster.remove_node(node)
                return
        time.sleep(0.05)


def hanging_first(attempts: int):
    """A trainable whose first ``attempts`` attempts of each trial hang without a word of progress (a stuck
    collective, a dead mount), counted in ``<storage>/hung/<run_id>``; later attempts run the trial."""

    def trainable(config: dict) -> None:
        marker = Path(config["settings"]["storage"]) / "hung" / config["run_id"]
        marker.parent.mkdir(parents=True, exist_ok=True)
        with marker.open("a") as handle:
            handle.write("attempt\n")
        if len(marker.read_text().splitlines()) <= attempts:
            time.sleep(3600)
        tune_trial(config)

    return trainable


def main() -> None:
    settings = json.loads(Path(sys.argv[1]).read_text())
    storage = Storage.at(settings["storage"])
    plan = grid(settings).plan()
    cluster = None
    kwargs = {"ray_init": {"num_cpus": settings.get("num_cpus", 2), "_temp_dir": settings["temp_dir"],
                           "include_dashboard": False, "object_store_memory": 200 * 1024**2}}
    if settings.get("cluster"):
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "temp_dir": settings["temp_dir"], "include_dashboard": False,
            "object_store_memory": 200 * 1024**2})
        workers = [cluster.add_node(num_cpus=1, object_store_memory=200 * 1024**2) for _ in range(2)]
        cluster.wait_for_nodes()
        kwargs = {"ray_address": cluster.address}
        threading.Thread(target=remove_node_when_busy, args=(cluster, workers[0], storage.local_root),
                         daemon=True).start()
    if settings.get("stall_limit_s") is not None:
        kwargs["stall_limits"] = StallLimits.every(settings["stall_limit_s"])
    if settings.get("blocked_attempts"):
        kwargs["trainable"] = hanging_first(settings["blocked_attempts"])
    report = run_sweep(plan, name="reliability", storage=storage, max_concurrent=settings.get("max_concurrent"),
                       checkpoint_every_s=settings.get("checkpoint_every_s", 0.0), progress_every_s=1.0,
                       resources=Resources(workers_per_search=settings.get("workers_per_search", 1)),
                       window_trials=settings.get("window_trials", WINDOW_TRIALS),
                       max_failures=settings.get("max_failures", 3), stop_grace_s=settings.get("stop_grace_s", 60.0),
                       **kwargs)
    if cluster is not None:
        cluster.shutdown()
    print(json.dumps({"planned": report.planned, "skipped": report.skipped, "succeeded": sorted(report.succeeded),
                      "failed": report.failed, "complete": report.complete, "signalled": report.signalled,
                      "cut_off": report.cut_off}))
    if report.signalled:
        sys.exit(143)


if __name__ == "__main__":
    main()
