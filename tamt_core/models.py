"""Loading BERT-family checkpoints by hub id, local directory, or the built-in smoke model.

Search methods need an MLM model *and* the pooler, because the masked set includes the pooler (reference-impl
§1.1) while ``*ForMaskedLM`` classes drop it. :func:`load_pretrained` therefore attaches the checkpoint's pooler
to the MLM model's encoder, so one object carries all 74 matrices of BERT-base.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer, PretrainedConfig

from tamt_core.masks.masked_model import NotBertFamilyError, base_model, dense_weights
from tamt_core.masks import weights_fingerprint


BERT_FAMILY = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
"""``config.model_type`` values whose encoders have the Q/K/V/AO/FI/FO layout the masked set is defined on."""
BUILTIN_MODEL_NAME = "builtin:minilm-l6"
"""How masks made on the built-in smoke model name it (see ``tamt_core.smoke``)."""
TRAINING_DTYPE = torch.float32
"""Every checkpoint loads in fp32, whatever dtype its files hold (transformers 5 keeps the saved dtype by default):
Adam's steps of ~5e-5 on TAMT's scores of ~2e-2 round away in bf16 (0.02 + 5e-5 == 0.02), so mask training would
silently stop, and fine-tuning would train bf16 weights. CUDA runs compute in bf16 through autocast instead
(:mod:`tamt_core.device`)."""
INIT_SEED = 0
"""Seed for any weights a checkpoint lacks (e.g. an MLM head or pooler), so masks touching them reproduce."""


class ModelUnavailableError(RuntimeError):
    """The model is neither a local directory nor loadable from the hub."""


@dataclass
class Pretrained:
    """A loaded checkpoint: the model, its tokenizer, where it came from and the fingerprint of θ0."""

    model: nn.Module
    tokenizer: object
    name: str
    source: str
    fingerprint: str


def resolve_source(model: str | None) -> tuple[str, str]:
    """``(name, source)``: the name recorded in masks and the path or hub id to load from.

    ``None`` is the built-in smoke model; an existing directory is used as is; anything else is a hub id.
    """
    if model is None or model == BUILTIN_MODEL_NAME:
        from tamt_core.smoke import builtin_model_dir

        return BUILTIN_MODEL_NAME, str(builtin_model_dir())
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve()), str(path.resolve())
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelUnavailableError(
            f"model directory {model!r} does not exist. Pass an existing directory holding config.json, the "
            "weights and the tokenizer files, a hub id such as bert-base-uncased, or no model for the "
            "built-in smoke model.")
    return model, model


def load_config(model: str | None) -> tuple[str, str, PretrainedConfig]:
    """Resolve and read only the config, to reject bad input before loading any weights."""
    name, source = resolve_source(model)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ModelUnavailableError(
            f"cannot load model {model!r}: it is not a local directory and the Hugging Face hub did not serve it "
            f"({type(error).__name__}: {str(error).splitlines()[0]}). Offline, download it elsewhere "
            f"(`hf download {model} --local-dir DIR`) and pass --model DIR, or omit --model for the built-in "
            "smoke model.") from error
    if config.model_type not in BERT_FAMILY:
        raise NotBertFamilyError(
            f"model {model!r} has model_type {config.model_type!r}, which is not BERT-family; tamt masks the "
            f"Q/K/V/attention-output/FFN matrices of BERT-style encoders ({', '.join(BERT_FAMILY)}).")
    return name, source, config


def check_model(model: str | None) -> str:
    """The name of ``model`` (a hub id, a directory, ``None`` for the built-in one) if tamt can search and fine-tune
    it: its config is read, no weights, and names a BERT-family encoder. What a sweep checks before any trial.

    Raises:
        ModelUnavailableError: it cannot be loaded, or it is not BERT-family; the message names the fix.
    """
    try:
        return load_config(model)[0]
    except NotBertFamilyError as error:
        raise ModelUnavailableError(str(error)) from error


def load_pretrained(model: str | None = None, *, with_mlm_head: bool = True) -> Pretrained:
    """Load θ0 with an MLM head (for search and pre-training losses) or as a bare encoder (for export).

    With the head, the checkpoint's pooler is attached to the encoder so the mask covers it too. Weights the
    checkpoint lacks are initialised under a fixed seed.
    """
    name, source, _ = load_config(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        if with_mlm_head:
            net = AutoModelForMaskedLM.from_pretrained(source, dtype=TRAINING_DTYPE)
            torch.manual_seed(INIT_SEED)
            base = base_model(net)
            if getattr(base, "pooler", None) is None:
                base.pooler = getattr(AutoModel.from_pretrained(source, dtype=TRAINING_DTYPE), "pooler", None)
        else:
            net = AutoModel.from_pretrained(source, dtype=TRAINING_DTYPE)
    tokenizer = AutoTokenizer.from_pretrained(source)
    net.eval()
    return Pretrained(net, tokenizer, name, source, weights_fingerprint(dense_weights(net)))


def mlm_head(model: nn.Module) -> nn.Module:
    """The MLM head of a ``*ForMaskedLM`` model (``cls`` for BERT, ``lm_head`` for RoBERTa)."""
    base = base_model(model)
    heads = [m for m in model.children() if m is not base]
    if len(heads) != 1:
        raise ValueError(f"{type(model).__name__} is not a masked-LM model with one head")
    return heads[0]
