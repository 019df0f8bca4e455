"""A task's data for fine-tuning: tokenised train and dev splits, the low-data subset (Fig. 7), and the
training batches of each epoch in the seed's order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from tamt_core.data import downstream, squad
from tamt_core.finetune.config import FinetuneConfig
from tamt_core.tasks import Task


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


def train_batches(train: datasets.Dataset, collate: Callable, batch_size: int, seed: int, epoch: int,
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
