"""A mask search that trains (IMP, TAMT) as a Ray Train job: checkpointed, restarted after failures, data-parallel.

The pattern Ray documents for Train inside Tune (Train V2): the search's Tune trial is a small function that builds
a :class:`~ray.train.torch.TorchTrainer` and waits for it; the trainer's workers run the search, and their reports
reach Tune (and so MLflow) through ``TuneReportCallback``. What each piece does:

* **Identity.** The Train run is named after the search's run id and stored under the sweep's storage, with no
  timestamp: a retried trial, a resubmitted one and a rerun of the sweep after a killed driver all open the same
  run, and ``ray.train.get_checkpoint()`` hands them its newest checkpoint.
* **Checkpoints.** ``tamt_core`` writes a checkpoint (its state file and the masks written so far) into a local
  directory at every saved mask and every ``--checkpoint-every`` seconds; :class:`RayTrainCheckpoints` reports it to
  Ray Train, which uploads it to the storage in the background while training goes on, and keeps the newest two.
  When Ray announces that a node of the run is being preempted (a spot reclaim), the workers checkpoint at the
  next sync point instead of waiting for the period.
* **Failures.** ``FailureConfig`` restarts the workers after a worker or node loss; they resume from the newest
  checkpoint. A checkpoint that cannot be read is set aside into the run directory and the one before is used.
* **Workers.** ``--workers-per-search N`` runs the search on N workers (gloo on CPUs, nccl on GPUs) that split
  each global batch (:mod:`tamt_core.parallel`); rank 0 writes the masks, the checkpoints and the results row.

Only this module and ``orchestrator.trial`` import Ray Train; ``tamt_core`` knows nothing of it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray.train
from ray.train import (Checkpoint, CheckpointConfig, CheckpointUploadMode, FailureConfig, LoggingConfig, RunConfig,
                       ScalingConfig)
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from tamt_core.checkpoints import STATE_FILE
from tamt_core.methods import METHODS

from orchestrator.specs import SearchSpec
from orchestrator.storage import Storage

TRAIN_RUN_PREFIX = "search-"


def trains(spec_dict: dict[str, Any]) -> bool:
    """Whether a trial's spec is a search whose method trains (IMP, TAMT: it has an objective), and so runs as a
    Train job."""
    return spec_dict["stage"] == "search" and METHODS[spec_dict["config"]["method"]].objective is not None


def train_run_name(run_id: str) -> str:
    return f"{TRAIN_RUN_PREFIX}{run_id}"


def fit_search(spec: SearchSpec, settings: TrialSettings, worker_loop) -> None:  # noqa: F821
    """Run ``worker_loop`` on the search's Train workers until the search is done (called in its Tune trial)."""
    storage = Storage.at(settings.storage)
    TorchTrainer(
        worker_loop,
        train_loop_config={"spec": spec.to_dict(), "settings": settings.to_dict()},
        scaling_config=ScalingConfig(num_workers=settings.workers_per_search, use_gpu=settings.search_gpu > 0,
                                     resources_per_worker={"CPU": settings.search_cpu, "GPU": settings.search_gpu}),
        run_config=RunConfig(name=train_run_name(spec.run_id), storage_path=storage.ray_storage_path(),
                             failure_config=FailureConfig(max_failures=settings.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             logging_config=LoggingConfig(log_level="WARNING"),  # the sweep prints its own progress
                             callbacks=[TuneReportCallback()]),
    ).fit()


def worker_device(settings: TrialSettings) -> str | None:  # noqa: F821
    """The device of this Train worker: its own GPU (Ray sets the visible devices), else the settings' choice."""
    if settings.search_gpu > 0:
        return str(ray.train.torch.get_device())
    return settings.device


def world_rank() -> int:
    return ray.train.get_context().get_world_rank()


class RayTrainCheckpoints:
    """``tamt_core``'s :class:`~tamt_core.checkpoints.CheckpointStore` on Ray Train's checkpoints.

    Checkpoints are assembled in ``scratch`` (local to the worker), reported, uploaded asynchronously and deleted
    locally once uploaded. ``set_aside_dir`` (in the run directory) receives copies of unreadable ones.
    """

    def __init__(self, scratch: Path, set_aside_dir: Path) -> None:
        self.scratch, self.set_aside_dir = Path(scratch), Path(set_aside_dir)
        self._preempted = False

    def candidates(self) -> Iterator[Path]:
        """The state files of the run's committed checkpoints, newest first, each checkpoint downloaded only when
        the one before was unreadable."""
        reported = ray.train.get_all_reported_checkpoints(
            consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
        for index, entry in enumerate(sorted(reported, key=lambda r: r.metrics.get("step", -1), reverse=True)):
            target = self.scratch / f"restored-{index}"
            shutil.rmtree(target, ignore_errors=True)
            yield Path(entry.checkpoint.to_directory(str(target))) / STATE_FILE

    def staging(self, step: int) -> Path:
        self.scratch.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"checkpoint-{step:08d}-", dir=self.scratch))

    def publish(self, staging: Path | None, step: int, metrics: dict[str, Any]) -> None:
        """Report the checkpoint; uploaded in the background, except the last one of a run that stops: the driver
        ends the experiment once it is committed."""
        checkpoint = None if staging is None else Checkpoint.from_directory(str(staging))
        mode = CheckpointUploadMode.SYNC if metrics.get("stopped") else CheckpointUploadMode.ASYNC
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint-{step:08d}",
                         checkpoint_upload_mode=mode, delete_local_checkpoint_after_upload=checkpoint is not None)

    def set_aside(self, state_file: Path) -> Path:
        checkpoint = state_file.parent
        target = self.set_aside_dir / f"{checkpoint.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.set_aside_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(checkpoint, target)  # Ray Train keeps its own copy until a newer checkpoint replaces it
        return target

    def urgent(self) -> bool:
        """Whether a node of this run is being preempted and no checkpoint was taken for it yet (all ranks call it:
        Ray agrees on one answer)."""
        if ray.train.get_preemption_info() is None or self._preempted:
            return False
        self._preempted = True
        return True
