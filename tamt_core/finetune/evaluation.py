"""The task model (a fresh head on θ0) and its dev-set evaluation: the task's metrics (GLUE, SQuAD v1.1), and
what chance scores on the same dev set."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

from tamt_core.data import squad
from tamt_core.device import autocast
from tamt_core.finetune.data import TaskData
from tamt_core.metrics import glue_metrics, squad_metrics
from tamt_core.models import TRAINING_DTYPE
from tamt_core.tasks import GLUE_METRIC_KEYS, Task
from tamt_core.training import to_device

EVAL_BATCH_SIZE = 64
"""Evaluation batch size: any value gives the same predictions; this one keeps BERT-base at 384 tokens in memory."""


def task_model(task: Task, source: str, seed: int) -> nn.Module:
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


def _forward(model: nn.Module, dataset: datasets.Dataset, collate: Callable, device: torch.device,
             precision: str | None) -> Iterator[tuple[Any, list[int]]]:
    """Model outputs over ``dataset`` batch by batch, in order, with each row's unpadded length."""
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dataset.column_names]
    loader = DataLoader(dataset.select_columns(columns), batch_size=EVAL_BATCH_SIZE, collate_fn=collate)
    with torch.no_grad(), autocast(device, precision):
        for batch in loader:
            yield model(**to_device(batch, device)), batch["attention_mask"].sum(dim=1).tolist()


def evaluate_task(model: nn.Module, task: Task, data: TaskData, collate: Callable,
                  device: torch.device, precision: str | None = None) -> dict[str, float]:
    """The dev metrics of Tab. 1 for the current weights (MNLI: matched and mismatched)."""
    was_training = model.training
    model.eval()
    try:
        if task.kind == "span":
            features = data.dev[""]
            starts, ends = [], []
            for out, lengths in _forward(model, features, collate, device, precision):
                for start, end, n in zip(out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy(),
                                         lengths):
                    starts.append(start[:n])
                    ends.append(end[:n])
            predictions = squad.squad_predictions(data.squad_examples, features, starts, ends)
            references = dict(zip(data.squad_examples["id"], (a["text"] for a in data.squad_examples["answers"])))
            return squad_metrics(predictions, references)
        metrics: dict[str, float] = {}
        for suffix, dev in data.dev.items():
            logits = np.concatenate([out.logits.float().cpu().numpy()
                                     for out, _ in _forward(model, dev, collate, device, precision)])
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
