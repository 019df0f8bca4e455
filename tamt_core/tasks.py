"""The downstream tasks a subnetwork is fine-tuned on (paper §4.1.1, App. B): six GLUE tasks and SQuAD v1.1.

A :class:`Task` says where the data lives on the hub, which columns hold the text, what kind of head the task
needs and which dev splits are evaluated. Training hyper-parameters are not here: they are the paper's, in
:data:`tamt_core.hparams.FINETUNE` (Tab. 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["classification", "regression", "span"]

GLUE_HUB = "nyu-mll/glue"
SQUAD_HUB = "rajpurkar/squad"


GLUE_METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "cola": ("mcc",),
    "sst2": ("accuracy",),
    "rte": ("accuracy",),
    "mnli": ("accuracy",),
    "mrpc": ("accuracy", "f1", "accuracy_and_f1"),
    "stsb": ("pearson", "spearman", "pearson_and_spearman"),
}
"""The keys ``tamt_core.metrics.glue_metrics`` returns per task. MNLI's ``_matched``/``_mismatched`` suffix is added by
the caller, which evaluates the two dev sets separately (reference-impl §7.3)."""


class UnknownTaskError(ValueError):
    """The task name is not one of :data:`TASKS`."""


@dataclass(frozen=True)
class Task:
    """One downstream task, in the schema of its hub dataset.

    ``dev_splits`` maps the name a metric is reported under to the hub split (MNLI has two dev sets, matched and
    mismatched, reference-impl §7.3; every other task has one, named ``""`` so its metrics carry no suffix).
    """

    name: str
    hub_path: str
    hub_config: str | None
    text_fields: tuple[str, ...]
    kind: Kind
    num_labels: int
    dev_splits: tuple[tuple[str, str], ...]
    train_split: str = "train"
    paper_train_size: int = 0
    """Training examples (questions for SQuAD) in the paper's data (App. B, Tab. 1), for cost estimates."""


TASKS: dict[str, Task] = {
    "cola": Task("cola", GLUE_HUB, "cola", ("sentence",), "classification", 2, (("", "validation"),),
                 paper_train_size=8_551),
    "sst2": Task("sst2", GLUE_HUB, "sst2", ("sentence",), "classification", 2, (("", "validation"),),
                 paper_train_size=67_349),
    "rte": Task("rte", GLUE_HUB, "rte", ("sentence1", "sentence2"), "classification", 2, (("", "validation"),),
                paper_train_size=2_490),
    "mrpc": Task("mrpc", GLUE_HUB, "mrpc", ("sentence1", "sentence2"), "classification", 2,
                 (("", "validation"),), paper_train_size=3_668),
    "stsb": Task("stsb", GLUE_HUB, "stsb", ("sentence1", "sentence2"), "regression", 1, (("", "validation"),),
                 paper_train_size=5_749),
    "mnli": Task("mnli", GLUE_HUB, "mnli", ("premise", "hypothesis"), "classification", 3,
                 (("matched", "validation_matched"), ("mismatched", "validation_mismatched")),
                 paper_train_size=392_702),
    "squad": Task("squad", SQUAD_HUB, None, ("question", "context"), "span", 2, (("", "validation"),),
                  paper_train_size=87_599),
}
"""Every task of the paper's Tab. 1, by the short name used on the command line and in result tables."""


def get_task(name: str) -> Task:
    try:
        return TASKS[name.lower()]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None


def metric_names(task: Task) -> tuple[str, ...]:
    """Every metric an evaluation of ``task`` reports (MNLI's carry ``_matched``/``_mismatched``)."""
    if task.kind == "span":
        return ("exact_match", "f1")
    return tuple(f"{key}_{split}" if split else key for split, _ in task.dev_splits
                 for key in GLUE_METRIC_KEYS[task.name])
