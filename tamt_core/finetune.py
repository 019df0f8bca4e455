"""Fine-tuning a subnetwork f(·; M ⊙ θ0) on a downstream task, the paper's measure of a ticket (§4.1, App. C).

A subnetwork starts from the pre-trained weights θ0 with a mask M applied and a fresh task head; the mask stays
attached for the whole run, so pruned entries are exactly zero at every forward pass and receive no gradient
(reference-impl §7.2, check vector 26). Every other weight is trained with Tab. 1's settings: AdamW, linear
decay to zero, no warm-up, no weight decay, gradient norm clipped at 1.0. The dev set is evaluated every
"Eval Iter" steps and the result is the best of those periodic evaluations (App. C, check vector 28); every
evaluation is kept as the curve. The same loop with no mask is the paper's "Full" line.

A run is a :class:`FinetuneConfig` (its content hash is the run id) and an output directory. The directory
holds the run's identity (``run.json``), the curve so far (``curve.json``), a checkpoint taken at evaluation
points (``checkpoint.safetensors``) and, once done, ``result.json``; calling :func:`finetune` again on the same
directory continues an interrupted run, or returns the finished result without computing anything.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification, DataCollatorWithPadding,
                          PreTrainedTokenizerBase)

from tamt_core import hparams
from tamt_core.checkpoint import (CorruptCheckpointError, claim_directory, load_training_state,
                                  save_training_state, write_json)
from tamt_core.data import downstream, squad
from tamt_core.device import autocast, pick_device
from tamt_core.evaluate import load_for_mask
from tamt_core.ids import run_id
from tamt_core.masking import apply_fixed_mask
from tamt_core.masks import Mask
from tamt_core.metrics import glue_metrics, squad_metrics
from tamt_core.models import BUILTIN_MODEL_NAME, TRAINING_DTYPE
from tamt_core.tasks import GLUE_METRIC_KEYS, Task, get_task, metric_names
from tamt_core.training import adamw_with_schedule, to_device

log = logging.getLogger(__name__)

SUBSET_UNITS = ("questions", "features")
EVAL_BATCH_SIZE = 64
"""Evaluation batch size: any value gives the same predictions; this one keeps BERT-base at 384 tokens in memory."""
CHECKPOINT_EVERY_S = 300.0
"""Seconds between checkpoints: one is taken at the first evaluation point after this much time has passed, so
short GLUE runs evaluated every 50 steps do not spend their time writing 1.3 GB BERT-base states."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides a fine-tuning result; its content hash is the run id.

    ``None`` in ``lr``/``batch_size``/``epochs``/``eval_every``/``select_metric`` means Tab. 1's value
    (:data:`tamt_core.hparams.FINETUNE`). ``mask_hash`` is the mask's content hash (``None``: the full model).
    ``data`` is ``None`` for the built-in smoke data, else a hub id or directory (:mod:`tamt_core.data.downstream`).
    ``train_size`` draws the low-data subset of Fig. 7; for SQuAD it counts questions, or features (384-token
    windows) with ``subset_unit="features"`` as the released code did (reference-impl §7.4).
    """

    task: str
    seed: int
    model: str = BUILTIN_MODEL_NAME
    data: str | None = None
    mask_hash: str | None = None
    train_size: int | None = None
    subset_unit: str = "questions"
    select_metric: str | None = None
    lr: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    eval_every: int | None = None

    def __post_init__(self) -> None:
        task = get_task(self.task)
        object.__setattr__(self, "task", task.name)
        if self.seed < 0:
            raise ValueError(f"--seed must be ≥ 0, got {self.seed}")
        if self.train_size is not None and self.train_size <= 0:
            raise ValueError(f"--train-size must be a positive number of examples, got {self.train_size}")
        if self.subset_unit not in SUBSET_UNITS:
            raise ValueError(f"subset unit {self.subset_unit!r} is not one of {SUBSET_UNITS}")
        if self.select_metric is not None and self.select_metric not in metric_names(task):
            raise ValueError(f"{task.name} reports {', '.join(metric_names(task))}; --select-metric "
                             f"{self.select_metric!r} is none of them")
        for name in ("lr", "batch_size", "epochs", "eval_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")

    @property
    def hparams(self) -> hparams.FinetuneHParams:
        """Tab. 1's settings for the task with this config's overrides applied."""
        tab1 = hparams.FINETUNE[self.task]
        return replace(tab1, lr=self.lr or tab1.lr, batch_size=self.batch_size or tab1.batch_size,
                       max_epochs=self.epochs or tab1.max_epochs, eval_every=self.eval_every or tab1.eval_every,
                       metric=self.select_metric or tab1.metric)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def run_id(self) -> str:
        """The id of this fine-tune of the mask ``mask_hash`` names (:func:`tamt_core.ids.run_id`): same config,
        same id, same directory. A sweep's fine-tune names its mask by the search that makes it instead
        (``orchestrator.specs.FinetuneSpec``), since the mask's content is not known when the sweep is planned."""
        return run_id(self.to_dict(), "finetune")


@dataclass
class Evaluation:
    """One periodic dev evaluation: a point of the curve."""

    step: int
    epoch: float
    train_loss: float
    metrics: dict[str, float]


@dataclass
class FinetuneResult:
    """The best periodic evaluation, every evaluation, and what the run was."""

    run_id: str
    config: dict[str, Any]
    select_metric: str
    best: Evaluation | None
    curve: list[Evaluation]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def best_score(self) -> float:
        return math.nan if self.best is None else self.best.metrics[self.select_metric]

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "config": self.config, "select_metric": self.select_metric,
                "best_score": self.best_score, "best": None if self.best is None else asdict(self.best),
                "curve": [asdict(e) for e in self.curve], "info": self.info}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneResult:
        return cls(d["run_id"], d["config"], d["select_metric"],
                   None if d["best"] is None else Evaluation(**d["best"]),
                   [Evaluation(**e) for e in d["curve"]], d.get("info", {}))


def best_evaluation(curve: list[Evaluation], metric: str) -> Evaluation | None:
    """The first evaluation with the highest ``metric`` (NaN never wins), as the reference's strict ``>`` update
    keeps the earliest of equal scores (reference-impl §7.3, check vector 28)."""
    best = None
    for evaluation in curve:
        value = evaluation.metrics[metric]
        if not math.isnan(value) and (best is None or value > best.metrics[metric]):
            best = evaluation
    return best


# --- data ------------------------------------------------------------------------------------------------------


@dataclass
class TaskData:
    """Tokenised training set and what evaluation needs: GLUE dev sets, or SQuAD examples and window features."""

    train: datasets.Dataset
    dev: dict[str, datasets.Dataset]
    squad_examples: datasets.Dataset | None = None


def load_task_data(task: Task, config: FinetuneConfig, tokenizer: PreTrainedTokenizerBase) -> TaskData:
    """Load, subset and tokenise a task's data; every problem with the data is raised here, before training."""
    raw = downstream.load_task_dataset(task, config.data)
    train = raw[task.train_split]
    max_length = config.hparams.max_length
    if task.kind == "span":
        if config.train_size is not None and config.subset_unit == "questions":
            train = train.select(downstream.subset_indices(len(train), config.train_size, config.seed,
                                                           task_name=task.name))
        features = squad.squad_train_features(train, tokenizer, max_length=max_length)
        if config.train_size is not None and config.subset_unit == "features":
            features = features.select(downstream.subset_indices(len(features), config.train_size, config.seed,
                                                                 task_name=f"{task.name} (features)"))
        examples = raw[task.dev_splits[0][1]]
        dev = squad.squad_eval_features(examples, tokenizer, max_length=max_length)
        return TaskData(features.remove_columns("example_index"), {"": dev}, examples)
    if config.train_size is not None:
        train = train.select(downstream.subset_indices(len(train), config.train_size, config.seed,
                                                       task_name=task.name))
    tokenize = lambda split: downstream.tokenize_glue(split, task, tokenizer, max_length=max_length)  # noqa: E731
    return TaskData(tokenize(train), {suffix: tokenize(raw[split]) for suffix, split in task.dev_splits})


def _train_batches(train: datasets.Dataset, collate: Callable, batch_size: int, seed: int, epoch: int,
                   skip: int) -> DataLoader:
    """Epoch ``epoch``'s shuffled batches from the ``skip``-th on (so a resumed run sees the batches it missed).

    The order depends only on (seed, epoch); the last batch may be short, as in the reference's RandomSampler.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(train), generator=generator).tolist()[skip * batch_size:]
    # An explicit generator also keeps the DataLoader from drawing its base seed from torch's global RNG, which
    # drives dropout: a resumed run must see the same dropout draws as an uninterrupted one.
    return DataLoader(train, batch_size=batch_size, sampler=order, collate_fn=collate, generator=generator)


# --- model -----------------------------------------------------------------------------------------------------


def _task_model(task: Task, source: str, seed: int) -> nn.Module:
    """θ0 with a fresh task head drawn from ``seed`` (the reference seeds before ``from_pretrained``), the head
    computing in fp32 (:func:`head_in_fp32`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if task.kind == "span":
            model = AutoModelForQuestionAnswering.from_pretrained(source, dtype=TRAINING_DTYPE)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                source, dtype=TRAINING_DTYPE, num_labels=task.num_labels,
                problem_type="regression" if task.kind == "regression" else "single_label_classification")
    head_in_fp32(model.qa_outputs if task.kind == "span" else model.classifier)
    return model


def head_in_fp32(head: nn.Module) -> None:
    """Run ``head`` outside autocast on fp32 inputs, so its logits are fp32 on a GPU too.

    Under bf16 autocast the logits would carry 8 bits of mantissa: SQuAD ranks start and end logits against each
    other, and STS-B's Pearson and Spearman read the regression output itself, so rounding both changes the
    metric. The head is one or two small matrices; the encoder keeps its bf16 speed.
    """
    inner = head.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        tensors = [a for a in (*args, *kwargs.values()) if torch.is_tensor(a)]
        device_type = tensors[0].device.type if tensors else "cpu"
        def as_fp32(a: Any) -> Any:
            return a.float() if torch.is_tensor(a) and a.is_floating_point() else a

        with torch.autocast(device_type, enabled=False):
            return inner(*map(as_fp32, args), **{k: as_fp32(v) for k, v in kwargs.items()})

    head.forward = forward


# --- evaluation ------------------------------------------------------------------------------------------------


def _forward(model: nn.Module, dataset: datasets.Dataset, collate: Callable,
             device: torch.device) -> Iterator[tuple[Any, list[int]]]:
    """Model outputs over ``dataset`` batch by batch, in order, with each row's unpadded length."""
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dataset.column_names]
    loader = DataLoader(dataset.select_columns(columns), batch_size=EVAL_BATCH_SIZE, collate_fn=collate)
    with torch.no_grad(), autocast(device):
        for batch in loader:
            yield model(**to_device(batch, device)), batch["attention_mask"].sum(dim=1).tolist()


def evaluate_task(model: nn.Module, task: Task, data: TaskData, collate: Callable,
                  device: torch.device) -> dict[str, float]:
    """The dev metrics of Tab. 1 for the current weights (MNLI: matched and mismatched)."""
    was_training = model.training
    model.eval()
    try:
        if task.kind == "span":
            features = data.dev[""]
            starts, ends = [], []
            for out, lengths in _forward(model, features, collate, device):
                for start, end, n in zip(out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy(),
                                         lengths):
                    starts.append(start[:n])
                    ends.append(end[:n])
            predictions = squad.squad_predictions(data.squad_examples, features, starts, ends)
            references = dict(zip(data.squad_examples["id"], (a["text"] for a in data.squad_examples["answers"])))
            return squad_metrics(predictions, references)
        metrics: dict[str, float] = {}
        for suffix, dev in data.dev.items():
            logits = np.concatenate([out.logits.float().cpu().numpy() for out, _ in _forward(model, dev, collate,
                                                                                               device)])
            predictions = logits[:, 0] if task.kind == "regression" else logits.argmax(axis=1)
            scores = glue_metrics(task.name, predictions, np.asarray(dev["labels"]))
            metrics.update({f"{k}_{suffix}" if suffix else k: v for k, v in scores.items()})
        return metrics
    finally:
        model.train(was_training)


def chance_metrics(task: Task, data: TaskData) -> dict[str, float]:
    """The dev metrics of a predictor that ignores its input: the majority class of each dev set for classification
    (accuracy = the majority's share; MCC 0), and 0 for correlations (a constant correlates with nothing) and
    SQuAD (an answer needs the passage). A score this close tells a subnetwork that learnt nothing."""
    if task.kind == "span":
        return {"exact_match": 0.0, "f1": 0.0}
    metrics: dict[str, float] = {}
    for suffix, dev in data.dev.items():
        labels = np.asarray(dev["labels"])
        if task.kind == "regression":
            scores = {key: 0.0 for key in GLUE_METRIC_KEYS[task.name]}
        else:
            majority = np.bincount(labels.astype(np.int64)).argmax()
            scores = glue_metrics(task.name, np.full_like(labels, majority), labels)
        metrics.update({f"{k}_{suffix}" if suffix else k: v for k, v in scores.items()})
    return metrics


# --- output directory ------------------------------------------------------------------------------------------


def _claim(out_dir: Path, config: FinetuneConfig, mask_path: str | None) -> FinetuneResult | None:
    """Make ``out_dir`` this run's, or find it already is; returns the finished result if there is one.

    Raises:
        OutputDirectoryError: when the directory holds another run or files that are not a run.
    """
    claim_directory(out_dir, "run.json", {"run_id": config.run_id, "config": config.to_dict(), "mask_path": mask_path},
                    kind="fine-tuning", describe=_describe)
    result = out_dir / "result.json"
    return FinetuneResult.from_dict(json.loads(result.read_text())) if result.exists() else None


def _describe(identity: dict[str, Any]) -> str:
    config = identity.get("config", {})
    return f"task {config.get('task')}, seed {config.get('seed')}, mask {config.get('mask_hash')}"


# --- the loop --------------------------------------------------------------------------------------------------


def train_step(model: nn.Module, batch: dict[str, torch.Tensor], params: list[nn.Parameter],
               optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler) -> torch.Tensor:
    """One optimizer step on a batch already on the model's device; returns the (detached) loss.

    A separate function so ``bench/bench_finetune.py`` times exactly the step the loop takes.
    """
    with autocast(next(model.parameters()).device):
        loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, hparams.FINETUNE_MAX_GRAD_NORM)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def finetune(config: FinetuneConfig, out_dir: Path, *, mask: Mask | None = None, mask_path: str | None = None,
             device: str | None = None, on_evaluation: Callable[[Evaluation], None] | None = None,
             checkpoint_every_s: float = CHECKPOINT_EVERY_S, keep_checkpoint: bool = False) -> FinetuneResult:
    """Fine-tune θ0 ⊙ M (or θ0 when ``mask`` is ``None``) on ``config.task`` and return the best evaluation.

    Checks everything (the config, the directory, the mask against the model's names, shapes and weights, the
    data and the subset size) before the first step. Resumes from ``out_dir``'s checkpoint when there is one.
    ``on_evaluation`` is called after each evaluation, once the checkpoint (if due) is written.
    ``keep_checkpoint`` keeps the final state (fine-tuned weights, optimizer) instead of deleting it at the end.
    """
    out_dir = Path(out_dir)
    if (mask is None) != (config.mask_hash is None) or (mask is not None and mask.content_hash != config.mask_hash):
        raise ValueError("config.mask_hash must be the content hash of the mask passed (None for the full model)")
    finished = _claim(out_dir, config, mask_path)
    if finished is not None:
        log.info("%s: already finished (%s %.2f at step %d)", out_dir, finished.select_metric,
                 finished.best_score, finished.best.step if finished.best else -1)
        return finished
    task, hp = get_task(config.task), config.hparams
    torch_device = pick_device(device)
    pretrained = load_for_mask(mask, config.model, with_mlm_head=False)
    data = load_task_data(task, config, pretrained.tokenizer)
    batch_size = hp.batch_size
    if len(data.train) < 1:
        raise ValueError(f"{task.name} has no training examples")
    steps_per_epoch = math.ceil(len(data.train) / batch_size)
    total_steps = steps_per_epoch * hp.max_epochs
    eval_every = hp.eval_every
    if (task.kind == "span" and config.train_size is not None) or eval_every > total_steps:
        eval_every = min(eval_every, steps_per_epoch)  # reference-impl §7.4; and never a run with no evaluation

    model, tokenizer = _task_model(task, pretrained.source, config.seed), pretrained.tokenizer
    del pretrained  # θ0 as a bare encoder was only needed to check the mask against the weights
    if mask is not None:
        apply_fixed_mask(model, mask.tensors)
    model.to(torch_device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, schedule = adamw_with_schedule(params, lr=hp.lr, weight_decay=hparams.FINETUNE_WEIGHT_DECAY,
                                              eps=hparams.FINETUNE_ADAM_EPSILON, total_steps=total_steps)
    collate = DataCollatorWithPadding(tokenizer)
    checkpoint = out_dir / "checkpoint.safetensors"
    torch.manual_seed(config.seed)  # dropout draws
    step, curve, train_seconds = 0, [], 0.0
    if checkpoint.exists():
        try:
            progress = load_training_state(checkpoint, model=model, optimizer=optimizer, schedule=schedule)
            step, train_seconds = progress["step"], progress["train_seconds"]
            curve = [Evaluation(**e) for e in progress["curve"]]
            log.info("%s: resuming at step %d of %d", out_dir, step, total_steps)
        except CorruptCheckpointError as error:
            aside = checkpoint.with_name(f"checkpoint.set-aside-{time.strftime('%Y%m%d-%H%M%S')}.safetensors")
            os.replace(checkpoint, aside)
            log.warning("%s; set aside as %s, fine-tuning starts over from step 0", error, aside.name)
    log.info("fine-tuning %s on %s: %d examples, %d steps (%d epochs × %d), evaluating every %d, device %s",
             "θ0 ⊙ M" if mask is not None else "the full model", task.name, len(data.train), total_steps,
             hp.max_epochs, steps_per_epoch, eval_every, torch_device)

    last_checkpoint = time.monotonic()
    loss_sum, loss_steps = torch.zeros((), device=torch_device), 0
    while step < total_steps:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        started = time.monotonic()
        for batch in _train_batches(data.train, collate, batch_size, config.seed, epoch, done_in_epoch):
            loss = train_step(model, to_device(batch, torch_device), params, optimizer, schedule)
            step += 1
            loss_sum += loss.float()
            loss_steps += 1
            if step % eval_every:
                continue
            train_seconds += time.monotonic() - started
            evaluation = Evaluation(step, step / steps_per_epoch, float(loss_sum) / loss_steps,
                                    evaluate_task(model, task, data, collate, torch_device))
            curve.append(evaluation)
            loss_sum.zero_()
            loss_steps = 0
            _log_evaluation(task, evaluation, best_evaluation(curve, hp.metric), hp.metric, total_steps,
                            step * batch_size / max(train_seconds, 1e-9))
            write_json(out_dir / "curve.json", [asdict(e) for e in curve])
            if step < total_steps and time.monotonic() - last_checkpoint >= checkpoint_every_s:
                save_training_state(checkpoint, model=model, optimizer=optimizer, schedule=schedule,
                                    progress={"step": step, "train_seconds": train_seconds,
                                              "curve": [asdict(e) for e in curve]})
                last_checkpoint = time.monotonic()
            if on_evaluation is not None:
                on_evaluation(evaluation)
            started = time.monotonic()
        train_seconds += time.monotonic() - started

    result = FinetuneResult(config.run_id, config.to_dict(), hp.metric, best_evaluation(curve, hp.metric), curve, {
        "mask_path": mask_path, "mask_sparsity": None if mask is None else mask.sparsity,
        "mask_method": None if mask is None else mask.meta.get("method"),
        "train_examples": len(data.train), "steps": total_steps, "eval_every": eval_every,
        "chance": chance_metrics(task, data),
        "hparams": asdict(hp), "device": str(torch_device), "train_seconds": train_seconds,
        "train_examples_per_s": total_steps * batch_size / max(train_seconds, 1e-9)})
    if keep_checkpoint:
        save_training_state(checkpoint, model=model, optimizer=optimizer, schedule=schedule,
                            progress={"step": step, "train_seconds": train_seconds,
                                      "curve": [asdict(e) for e in curve]})
    write_json(out_dir / "result.json", result.to_dict())
    if checkpoint.exists() and not keep_checkpoint:
        checkpoint.unlink()
    return result


def _log_evaluation(task: Task, evaluation: Evaluation, best: Evaluation | None, metric: str, total_steps: int,
                    examples_per_s: float) -> None:
    shown = ", ".join(f"{k} {v:.2f}" for k, v in evaluation.metrics.items())
    best_text = "none yet" if best is None else f"{best.metrics[metric]:.2f} at step {best.step}"
    log.info("%s step %d/%d (epoch %.2f): train loss %.4f, %s; best %s %s; %.1f train examples/s", task.name,
             evaluation.step, total_steps, evaluation.epoch, evaluation.train_loss, shown, metric, best_text,
             examples_per_s)
