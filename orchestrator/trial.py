"""What one trial does: run a spec through ``tamt_core`` in its run directory and publish its results row.

This is the only module that calls ``tamt_core``'s entry points (``run_search``, ``pretrain_losses``,
``finetune``, ``similarity``); it passes specs and files, never touches a model. :func:`execute` knows nothing of
Ray, so tests and a debugger can run a trial directly; :func:`tune_trial` is the Ray Tune trainable around it, and
a search that trains runs as a Ray Train job (:mod:`orchestrator.train`) whose workers call :func:`search_worker`.

A trial is idempotent: it appends one line to ``attempts.jsonl`` (so retries can be counted), resumes a fine-tune
or a search from its checkpoint, and writes its row last.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

from tamt_core.console import quiet_libraries
from tamt_core.device import deterministic
from tamt_core.subnetwork import pretrain_losses
from tamt_core.finetune import finetune
from tamt_core.masks import Mask, load_mask, similarity
from tamt_core.models import ModelUnavailableError, check_model
from tamt_core.search.runner import IDENTITY_FILE
from tamt_core.search import SearchResult, run_search
from tamt_core.checkpoints import CheckpointStore, RunStopped

from orchestrator import results
from orchestrator.plan import PlanError
from orchestrator.provenance import provenance
from orchestrator.specs import (DenseLossSpec, FinetuneSpec, MaskRef, SearchSpec, SimilaritySpec, Spec, lineage,
                                mask_refs, spec_from_dict)
from orchestrator.storage import RunDirectory, Storage

Report = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Hooks:
    """How a running trial talks to its driver (:mod:`orchestrator.control`): ``progress`` after each step,
    evaluation or compared pair (the watchdog watches it), ``stop_requested`` read after each step (a sweep stopping
    on SIGTERM; the trial then checkpoints and raises :class:`~tamt_core.checkpoints.RunStopped`)."""

    progress: Callable[..., None] = lambda *_: None
    stop_requested: Callable[[], bool] = lambda: False


@dataclass(frozen=True)
class TrialSettings:
    """How trials run, as opposed to what they compute (not part of any run id).

    ``checkpoint_every_s`` is the period of fine-tune and search checkpoints; ``workers_per_search`` Train
    workers, each holding ``search_cpu`` CPUs and ``search_gpu`` GPUs, run a search that trains, restarted up to
    ``max_failures`` times after a worker or node failure. ``control`` names the sweep's
    :class:`~orchestrator.control.SweepControl` actor (``None`` outside a sweep). ``deterministic`` runs searches
    and fine-tunes with deterministic kernels (:func:`tamt_core.device.deterministic`).
    """

    storage: str
    checkpoint_every_s: float = 300.0
    device: str | None = None
    workers_per_search: int = 1
    search_cpu: float = 1.0
    search_gpu: float = 0.0
    max_failures: int = 3
    control: str | None = None
    deterministic: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_models(specs: Iterable[Spec]) -> None:
    """Every model the specs name can be loaded (its config is read, no weights): run before any trial starts.

    Raises:
        PlanError: with ``tamt_core``'s message, which names the model and how to provide it (offline too).
    """
    for model in sorted({spec.model for spec in specs}):
        try:
            check_model(model)
        except ModelUnavailableError as error:
            raise PlanError(str(error)) from error


def execute(spec: Spec, settings: TrialSettings, report: Report = lambda metrics: None,
            node: str | None = None, scratch_root: Path | None = None,
            checkpoints: CheckpointStore | None = None, hooks: Hooks = Hooks()) -> dict[str, Any]:
    """Run ``spec`` to completion (resuming what an earlier attempt left) and publish its row; returns the row.

    ``scratch_root`` is where remote-storage trials work locally (default: the system temp directory);
    ``checkpoints`` is where a search keeps its checkpoints (default: in its run directory).

    Raises:
        RunStopped: ``hooks.stop_requested`` turned true; the trial checkpointed, and running it again resumes.
    """
    storage = Storage.at(settings.storage)
    if results.has_row(storage, spec.run_id):  # a retry after the row was published: nothing to do
        return results.read_row(storage, spec.run_id)
    run_dir = RunDirectory(storage, spec.run_id, scratch_root)
    run_dir.pull()
    node = node or socket.gethostname()
    started = time.time()
    attempts = _record_attempt(run_dir.local, spec, node)
    with deterministic(settings.deterministic):
        if spec.stage == "search":
            row = _search(spec, settings, run_dir, checkpoints, hooks)
        else:
            run = {"finetune": _finetune, "dense-loss": _dense_loss, "similarity": _similarity}[spec.stage]
            row = run(spec, settings, run_dir, report, hooks)
    algorithm_versions, cell = lineage(spec, {ref.search_id: results.read_row(storage, ref.search_id)
                                              for ref in mask_refs(spec)})
    computed = {key: str(value) for key in ("precision", "deterministic") if (value := row.pop(key, None)) is not None}
    row.update(run_id=spec.run_id, stage=spec.stage, spec=spec.to_dict(), wall_s=time.time() - started,
               attempts=attempts, node=node, versions={**provenance(spec.algorithm), **computed}, cell_id=cell,
               algorithm_versions=algorithm_versions,
               finished_at=datetime.fromtimestamp(int(time.time()), tz=UTC))
    run_dir.push()
    results.write_row(storage, row)
    return row


def _record_attempt(directory: Path, spec: Spec, node: str) -> int:
    (directory / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True) + "\n")
    log = directory / "attempts.jsonl"
    with log.open("a") as handle:
        handle.write(json.dumps({"time": time.time(), "node": node, "pid": os.getpid()}) + "\n")
    return sum(1 for _ in log.open())


def _search(spec: SearchSpec, settings: TrialSettings, run_dir: RunDirectory,
            checkpoints: CheckpointStore | None = None, hooks: Hooks = Hooks()) -> dict[str, Any]:
    masks_dir = run_dir.local / "masks"
    if masks_dir.exists() and not (masks_dir / IDENTITY_FILE).exists():
        shutil.rmtree(masks_dir)  # files of an attempt that kept no identity (and so no checkpoint): start over
    result = run_search(spec.config, masks_dir, model=spec.model, data=spec.data, device=settings.device,
                        checkpoints=checkpoints, checkpoint_every_s=settings.checkpoint_every_s,
                        log_step=hooks.progress, stop_requested=hooks.stop_requested)
    return search_row(spec, settings, result)


def search_row(spec: SearchSpec, settings: TrialSettings, result: SearchResult) -> dict[str, Any]:
    """The results row of a finished search: every mask with its dev losses (Fig. 1, 4 set OMP's and random
    masks beside the rest, so every method's are measured) and the training seconds up to it (Fig. 5)."""
    loaded = {path.name: load_mask(path) for path in result.paths}
    losses = {}
    if spec.dev_loss_batches != 0:
        losses = pretrain_losses(dict(loaded), model=spec.model, data=spec.data, max_batches=spec.dev_loss_batches,
                                 device=settings.device, precision=result.precision)
    masks = []
    for written in result.masks:
        mask = loaded[written.file]
        masks.append({"sparsity": round(float(mask.meta["sparsity"]), 4), "step": int(mask.meta["step"]),
                      "file": f"masks/{written.file}", "mask_hash": mask.content_hash,
                      "actual_sparsity": mask.sparsity, "train_s": written.train_s,
                      "mlm_dev_loss": losses.get(written.file, {}).get("mlm_loss"),
                      "kd_dev_loss": losses.get(written.file, {}).get("kd_loss")})
    final = masks[-1]
    config = spec.config
    return {"model": spec.model, "method": config.method, "objective": config.objective,
            "sparsity": config.sparsity, "mask_seed": config.seed, "mask_step": final["step"],
            "mask_hash": final["mask_hash"], "mask_file": final["file"], "masks": masks,
            "mlm_dev_loss": final["mlm_dev_loss"], "kd_dev_loss": final["kd_dev_loss"],
            "steps": final["step"], "device": settings.device, "info": {"search_config": config.to_dict()},
            "precision": result.precision, "deterministic": result.deterministic}


def _finetune(spec: FinetuneSpec, settings: TrialSettings, run_dir: RunDirectory, report: Report,
              hooks: Hooks) -> dict[str, Any]:
    storage = run_dir.storage
    mask = mask_entry = search_row = None
    if spec.mask is not None:
        search_row = results.read_row(storage, spec.mask.search_id)
        mask_entry = _mask_entry(search_row, spec.mask)
        mask = load_mask(run_dir.fetch(spec.mask.search_id, mask_entry["file"]))
    config = spec.with_mask_hash(None if mask is None else mask.content_hash)

    def on_evaluation(evaluation) -> None:
        run_dir.push()  # a checkpoint written at this evaluation reaches remote storage before the report
        report({"step": evaluation.step, "train_loss": evaluation.train_loss, **evaluation.metrics})

    result = finetune(config, run_dir.local / "finetune", mask=mask,
                      mask_path=None if mask_entry is None else f"runs/{spec.mask.search_id}/{mask_entry['file']}",
                      device=settings.device, on_evaluation=on_evaluation,
                      checkpoint_every_s=settings.checkpoint_every_s, on_step=hooks.progress,
                      stop_requested=hooks.stop_requested)
    best = result.best
    row = {"model": spec.model, "task": config.task, "finetune_seed": config.seed, "train_size": config.train_size,
           "select_metric": result.select_metric, "best_score": result.best_score,
           "best_step": None if best is None else best.step,
           **({} if best is None else {k: v for k, v in best.metrics.items() if k in results.METRIC_COLUMNS}),
           "curve": [{"step": e.step, "epoch": e.epoch, "train_loss": e.train_loss, "metrics": e.metrics}
                     for e in result.curve],
           "steps": result.info.get("steps"), "train_examples": result.info.get("train_examples"),
           "device": result.info.get("device"), "info": result.info, "method": "full",
           "precision": result.info.get("precision"), "deterministic": result.info.get("deterministic")}
    if search_row is not None:
        row.update(method=search_row["method"], objective=search_row["objective"], sparsity=spec.mask.sparsity,
                   mask_seed=search_row["mask_seed"], mask_step=spec.mask.step, mask_run_id=spec.mask.search_id,
                   mask_hash=mask_entry["mask_hash"], mask_file=mask_entry["file"],
                   mlm_dev_loss=mask_entry["mlm_dev_loss"], kd_dev_loss=mask_entry["kd_dev_loss"])
    else:
        row["sparsity"] = 0.0
    return row


def _mask_entry(search_row: dict[str, Any], ref: MaskRef) -> dict[str, Any]:
    """The ``masks`` entry of a search's row that ``ref`` names."""
    return next(m for m in search_row["masks"] if round(m["sparsity"], 4) == ref.sparsity and m["step"] == ref.step)


def _dense_loss(spec: DenseLossSpec, settings: TrialSettings, run_dir: RunDirectory, report: Report,  # noqa: ARG001 (one signature for every stage)
                hooks: Hooks) -> dict[str, Any]:  # noqa: ARG001
    losses = pretrain_losses({"dense": None}, model=spec.model, data=spec.data, max_batches=spec.dev_loss_batches,
                             device=settings.device)["dense"]
    report({"mlm_dev_loss": losses["mlm_loss"], "kd_dev_loss": losses["kd_loss"]})
    return {"model": spec.model, "method": "full", "sparsity": 0.0, "mlm_dev_loss": losses["mlm_loss"],
            "kd_dev_loss": losses["kd_loss"], "device": settings.device}


def _similarity(spec: SimilaritySpec, settings: TrialSettings, run_dir: RunDirectory, report: Report,  # noqa: ARG001 (one signature for every stage)
                hooks: Hooks) -> dict[str, Any]:
    """Every pair of ``spec.pairs()``; masks are loaded once, and with a reference each other mask is dropped after
    its pair, so memory holds two masks however long the list (a BERT-base mask is 109M booleans)."""
    search_rows: dict[str, dict[str, Any]] = {}
    loaded: dict[MaskRef, Mask] = {}

    def describe(ref: MaskRef) -> dict[str, Any]:
        if ref.search_id not in search_rows:
            search_rows[ref.search_id] = results.read_row(run_dir.storage, ref.search_id)
        row = search_rows[ref.search_id]
        entry = _mask_entry(row, ref)
        if ref not in loaded:
            loaded[ref] = load_mask(run_dir.fetch(ref.search_id, entry["file"]))
        return {"run_id": ref.search_id, "method": row["method"], "seed": row["mask_seed"], "step": ref.step,
                "hash": entry["mask_hash"]}

    pairs = []
    for done, (a, b) in enumerate(spec.pairs(), start=1):
        first, second = describe(a), describe(b)
        value = similarity(loaded[a], loaded[b])
        pairs.append({**{f"a_{k}": v for k, v in first.items()}, **{f"b_{k}": v for k, v in second.items()},
                      "similarity": value})
        if spec.reference is not None:
            loaded.pop(b)
        report({"step": done, "similarity": value})
        hooks.progress()
    return {"model": spec.model, "sparsity": spec.sparsity, "pairs": pairs, "steps": len(pairs)}


def worker_setup() -> str:
    """Per-trial set-up inside a Ray worker; returns the node id the trial runs on."""
    import ray
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))  # a reused worker keeps old counts
    quiet_libraries()
    logging.getLogger("tamt_core").setLevel(logging.WARNING)  # the sweep prints progress; Train workers log INFO
    return ray.get_runtime_context().get_node_id()


def run_trial(spec: Spec, settings: TrialSettings, report: Report, node: str) -> dict[str, Any]:
    """Run one trial inside a Ray Tune trial; returns its row. A search that trains runs as a Ray Train job, which
    this function drives and waits for (its rank-0 worker talks to the driver); every other trial runs here, with
    its link to the driver (:class:`~orchestrator.control.TrialLink`).

    A trial the driver asks to stop checkpoints, reports ``stopped`` and waits for the driver to end it.
    """
    from orchestrator.control import TrialLink
    from orchestrator.train import fit_search, trains

    storage = Storage.at(settings.storage)
    if trains(spec.to_dict()):
        if not results.has_row(storage, spec.run_id):
            fit_search(spec, settings, search_worker)
        return results.read_row(storage, spec.run_id)
    link = TrialLink(settings.control, spec.run_id)
    try:
        return execute(spec, settings, report, node=node, hooks=Hooks(link.progress, link.stop.is_set))
    except RunStopped as stopped:
        report({"stopped": 1, "step": stopped.step})
        link.close()
        threading.Event().wait()  # the driver ends the experiment once every running trial has stopped
        raise
    finally:
        link.close()


def tune_trial(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable: one spec per trial, metrics reported as the run goes."""
    import ray.tune

    row = run_trial(spec_from_dict(config["spec"]), TrialSettings(**config["settings"]), ray.tune.report,
                    worker_setup())
    final = {"tamt_done": 1, "step": row.get("steps") or 0}
    if row.get("best_score") is not None:
        final["best_score"] = row["best_score"]
    ray.tune.report(final)


def search_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker of a search: rank 0 runs the trial (masks, checkpoints, row); the others train beside it."""
    from orchestrator.control import TrialLink
    from orchestrator.train import RayTrainCheckpoints, worker_device, world_rank

    node = worker_setup()
    spec = spec_from_dict(config["spec"])
    settings = TrialSettings(**config["settings"])
    settings = replace(settings, device=worker_device(settings))
    rank = world_rank()
    storage = Storage.at(settings.storage)
    run_dir = RunDirectory(storage, spec.run_id)
    checkpoints = RayTrainCheckpoints(Path(tempfile.gettempdir()) / "tamt-train" / spec.run_id / f"rank{rank}",
                                      set_aside_dir=run_dir.local / "set-aside")
    link = TrialLink(settings.control if rank == 0 else None, spec.run_id)  # the others stop at rank 0's word
    try:
        if rank == 0:
            execute(spec, settings, node=node, checkpoints=checkpoints, hooks=Hooks(link.progress, link.stop.is_set))
        else:
            with deterministic(settings.deterministic):
                run_search(spec.config, run_dir.local / "masks", model=spec.model, data=spec.data,
                           device=settings.device, checkpoints=checkpoints,
                           checkpoint_every_s=settings.checkpoint_every_s)
    except RunStopped:
        link.close()
        threading.Event().wait()  # the checkpoint is reported (stopped); the driver ends the experiment
    finally:
        link.close()
