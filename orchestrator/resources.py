"""What each trial asks Ray for, whether a search's workers can ever be placed, and how many trials run at once.

A sweep's trials differ in what they hold: a fine-tune holds its own CPUs and GPU (a fraction packs small tasks on
one GPU); a search that trains holds only the share of the Tune trial that drives its Ray Train workers, which hold
the search's CPUs and GPUs. :class:`Resources` turns the command line's per-trial numbers into those requests, once
Ray is up places the search drivers on nodes safe from preemption, and refuses a plan whose searches ask for more
workers than the cluster can ever hold, before any trial starts rather than when Ray Train's worker start times out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
import yaml

from orchestrator.plan import PlanError
from orchestrator.storage import Storage
from orchestrator.train import trains
from orchestrator.trial import TrialSettings

log = logging.getLogger(__name__)


SEARCH_DRIVER_RESOURCE = "tamt_search_driver"
"""A custom resource that nodes safe from preemption declare (the head in cluster.yaml and k8s/): where it exists,
the Tune trial that drives a search's Ray Train job, and so Train's controller beside it, is placed on such a node,
and a spot reclaim takes only workers, which Train restarts."""
SEARCH_DRIVER_MEMORY = 512 * 2**20
"""What the Tune trial driving a Train search holds: no CPU (it waits for its workers, which hold the search's
CPUs and GPUs), the memory of a Python process that has imported torch."""


@dataclass(frozen=True)
class Resources:
    """What one trial holds while it runs (Ray logical resources); fractional GPUs pack small fine-tunes.

    A search that trains runs on ``workers_per_search`` Ray Train workers of ``search_cpu`` CPUs and
    ``search_gpu`` GPUs each; its Tune trial only drives them. ``search_driver_resource`` is the custom resource
    that keeps those drivers off spot nodes, when the cluster has it (set once Ray is up).
    """

    search_cpu: float = 1.0
    search_gpu: float = 0.0
    finetune_cpu: float = 1.0
    finetune_gpu: float = 0.0
    workers_per_search: int = 1
    search_driver_resource: str | None = None

    def __post_init__(self) -> None:
        for name in ("search_cpu", "search_gpu", "finetune_cpu", "finetune_gpu"):
            value = getattr(self, name)
            if value < 0 or (name.endswith("gpu") and value > 1 and value != int(value)):
                raise PlanError(f"{name} must be ≥ 0 (a fraction ≤ 1 or a whole number of GPUs), got {value}")
        if self.search_cpu + self.search_gpu == 0 or self.finetune_cpu + self.finetune_gpu == 0:
            raise PlanError("a trial must hold some CPU or GPU (Ray cannot schedule an empty request); "
                            "give --cpus-per-trial > 0")
        if not (isinstance(self.workers_per_search, int) and self.workers_per_search >= 1):
            raise PlanError(f"--workers-per-search must be a whole number ≥ 1 (1 runs each search on one GPU or "
                            f"CPU worker, N splits its batch over N), got {self.workers_per_search}")

    def for_stage(self, stage: str) -> dict[str, float]:
        """A search's resources for searches and dense-model losses (a model on a GPU), a fine-tune's for
        fine-tunes; mask similarities count bits on the CPU."""
        if stage == "similarity":
            return {"cpu": self.search_cpu or 1.0, "gpu": 0.0}
        cpu, gpu = (self.finetune_cpu, self.finetune_gpu) if stage == "finetune" else (self.search_cpu, self.search_gpu)
        return {"cpu": cpu, "gpu": gpu}

    def for_trial(self, spec: dict[str, Any]) -> dict[str, float]:
        """The Tune trial's own request: a search that trains holds only its driver's share (its Train workers
        hold ``search_cpu``/``search_gpu`` each), every other trial its stage's resources."""
        if not trains(spec):
            return self.for_stage(spec["stage"])
        driver = {"cpu": 0.0, "gpu": 0.0, "memory": SEARCH_DRIVER_MEMORY}
        return driver if self.search_driver_resource is None else {**driver, self.search_driver_resource: 0.01}

    def trial_settings(self, storage: Storage, checkpoint_every_s: float, device: str | None,
                       max_failures: int, control: str | None = None, deterministic: bool = False) -> TrialSettings:
        return TrialSettings(storage.uri, checkpoint_every_s, device, workers_per_search=self.workers_per_search,
                             search_cpu=self.search_cpu, search_gpu=self.search_gpu, max_failures=max_failures,
                             control=control, deterministic=deterministic)

    def on_cluster(self, plan_trains: bool, attached: bool) -> Resources:
        """These resources placed on the connected cluster: search drivers on the nodes that declare
        :data:`SEARCH_DRIVER_RESOURCE`, if any.

        Raises:
            PlanError: a search's workers can never all be placed (more workers, or bigger ones, than the cluster
                holds at its largest).
        """
        cluster = ray.cluster_resources()
        placed = replace(self, search_driver_resource=SEARCH_DRIVER_RESOURCE if cluster.get(SEARCH_DRIVER_RESOURCE)
                         else None)
        if plan_trains:
            check_search_capacity(placed, largest_cluster(attached))
        return placed


def largest_cluster(attached: bool) -> list[dict[str, float]] | None:
    """Each node the cluster can ever have, as its resources: a local Ray's nodes; on an attached cluster, the node
    types of the cluster launcher's autoscaling config on the head (``~/ray_bootstrap_config.yaml``, each up to its
    ``max_workers``); ``None`` when neither tells (another autoscaler, such as KubeRay's, may add nodes)."""
    if not attached:
        return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]
    bootstrap = Path.home() / "ray_bootstrap_config.yaml"
    if not bootstrap.exists():
        return None
    config = yaml.safe_load(bootstrap.read_text())
    return [dict(node.get("resources", {})) for node in config.get("available_node_types", {}).values()
            for _ in range(max(1, int(node.get("max_workers", 0))))]


def check_search_capacity(resources: Resources, nodes: list[dict[str, float]] | None) -> None:
    """Every search's ``workers_per_search`` workers fit the cluster at its largest (first fit, node by node)."""
    if nodes is None:
        log.info("the cluster's largest size is unknown (an autoscaler); a search whose workers never fit fails "
                 "when Ray Train's worker start times out")
        return
    worker = {"CPU": resources.search_cpu, "GPU": resources.search_gpu}
    free = [dict(node) for node in nodes]
    placed = 0
    for node in free:
        while placed < resources.workers_per_search and all(node.get(k, 0.0) >= v for k, v in worker.items() if v):
            for key, value in worker.items():
                node[key] = node.get(key, 0.0) - value
            placed += 1
    if placed < resources.workers_per_search:
        total_gpu = sum(node.get("GPU", 0.0) for node in nodes)
        total_cpu = sum(node.get("CPU", 0.0) for node in nodes)
        raise PlanError(
            f"a search asks for {resources.workers_per_search} Ray Train workers of {resources.search_cpu:g} CPU "
            f"and {resources.search_gpu:g} GPU each, but this cluster holds at most {placed} such workers "
            f"({total_cpu:g} CPUs, {total_gpu:g} GPUs over {len(nodes)} nodes at its largest); lower "
            "--workers-per-search (or --cpus-per-trial / --gpus-per-search), or add nodes")


AUTOSCALING_DEMAND = 32
"""On an attached cluster, at least this many trials are queued at once, so an autoscaler sees the demand and adds
workers (Tune only asks a custom searcher for as many trials as may run concurrently)."""


def default_concurrency(resources: Resources, attached: bool) -> int:
    """As many trials as the cluster's resources hold now (a fine-tune-sized request); more on an autoscaler."""
    available = ray.cluster_resources()
    request = resources.for_stage("finetune")
    fits = [available.get(key.upper(), 0.0) / amount for key, amount in request.items() if amount > 0]
    capacity = max(1, int(min(fits))) if fits else 1
    return max(capacity, AUTOSCALING_DEMAND) if attached else capacity


def cluster_size() -> dict[str, float]:
    """The connected Ray cluster now: its alive nodes and their CPUs and GPUs (what the ledger records of a run)."""
    alive = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    return {"nodes": len(alive), "cpus": sum(node.get("CPU", 0.0) for node in alive),
            "gpus": sum(node.get("GPU", 0.0) for node in alive)}
