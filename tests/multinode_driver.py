"""A Ray driver run as a subprocess by tests/test_multinode.py against a cluster of ``ray start`` processes.

The test process itself may already hold a local Ray (other tests' ``ray.init``), so everything that attaches to
the multi-node cluster runs here, in a process of its own.

Usage:
    python tests/multinode_driver.py nodes ADDRESS COUNT TIMEOUT_S
        waits until the cluster has COUNT alive nodes; prints one JSON line: a list of
        {"node_id", "ip", "cpu", "store"} (exit 3 when they are not all up in time)
    python tests/multinode_driver.py sweep SETTINGS.json   (keys: address, storage, model, seeds)
        runs the smoke grid with ``run_sweep(..., ray_address=address)``; prints one JSON line with the report
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def grid(settings: dict):
    """2 searches (OMP, random) and 6 fine-tunes (each mask and the full model, 2 seeds): 8 one-CPU trials."""
    from orchestrator.grid import Grid  # not at the top: the `nodes` mode needs only Ray

    return Grid(models=(settings["model"],), methods=("omp", "rand"), sparsities=(0.5,), mask_seeds=(1,),
                finetune_seeds=tuple(settings.get("seeds", (1, 2))), tasks=("rte",), train_sizes=(64,),
                finetune={"epochs": 1, "eval_every": 1, "batch_size": 8}, dev_loss_batches=0)


def nodes(address: str, count: int, timeout_s: float) -> int:
    import ray

    ray.init(address=address, log_to_driver=False)
    try:
        deadline = time.time() + timeout_s
        while True:
            alive = [n for n in ray.nodes() if n["Alive"]]
            if len(alive) >= count or time.time() > deadline:
                break
            time.sleep(0.2)
        print(json.dumps([{"node_id": n["NodeID"], "ip": n["NodeManagerAddress"],
                           "cpu": n["Resources"].get("CPU", 0.0), "store": n["ObjectStoreSocketName"]}
                          for n in alive]), flush=True)
        return 0 if len(alive) >= count else 3
    finally:
        ray.shutdown()


def sweep(settings: dict) -> int:
    from orchestrator.sweep import run_sweep
    from orchestrator.storage import Storage

    report = run_sweep(grid(settings).plan(), name="multinode", storage=Storage.at(settings["storage"]),
                       ray_address=settings["address"], max_concurrent=2, progress_every_s=2.0)
    print(json.dumps({"planned": report.planned, "skipped": report.skipped, "succeeded": sorted(report.succeeded),
                      "failed": report.failed, "blocked": sorted(report.blocked),
                      "interrupted": report.interrupted, "complete": report.complete}), flush=True)
    return 0


def main() -> int:
    if sys.argv[1] == "nodes":
        return nodes(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    if sys.argv[1] == "sweep":
        return sweep(json.loads(Path(sys.argv[2]).read_text()))
    raise SystemExit(f"unknown mode {sys.argv[1]!r}")


if __name__ == "__main__":
    sys.exit(main())
