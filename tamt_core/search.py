"""Run one subnetwork search and write its masks as files.

This is the single entry point the CLI and the orchestrator call: it validates the configuration and the inputs
(model, data) before any compute, runs the method, and writes each mask it yields with its metadata.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tamt_core.data import pretrain
from tamt_core.device import pick_device
from tamt_core.masks import save_mask
from tamt_core.methods import METHODS
from tamt_core.methods.base import FoundMask, SearchConfig, SearchContext
from tamt_core.models import Pretrained, load_config, load_pretrained

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainData:
    """A tokenised pre-training split and the collate function that turns rows into model inputs."""

    dataset: object
    collate: Callable


def mask_filename(config: SearchConfig, found: FoundMask) -> str:
    return f"{config.method}_s{found.sparsity:.2f}_seed{config.seed}_step{found.step}.safetensors"


def pretraining_data(pretrained: Pretrained, source: str | None, config: SearchConfig) -> Callable[[str], PretrainData]:
    """Lazily tokenised WikiText (or the smoke corpus): MLM blocks or KD sequences (reference-impl §4.6, §6.2)."""

    def load(objective: str) -> PretrainData:
        lines = pretrain.load_wikitext(source)["train"]
        tokenizer = pretrained.tokenizer
        if objective == "mlm":
            blocks = pretrain.mlm_blocks(lines, tokenizer, block_size=config.block_size)
            return PretrainData(blocks, pretrain.mlm_collator(tokenizer, seed=config.seed))
        sequences = pretrain.kd_sequences(lines, tokenizer, max_seq_len=config.block_size, seed=config.seed)
        return PretrainData(sequences, pretrain.kd_collator(tokenizer))

    return load


def run_search(config: SearchConfig, out_dir: Path, *, model: str | None = None, data: str | None = None,
               device: str | None = None, log_step: Callable[[dict], None] | None = None) -> list[Path]:
    """Search masks with ``config`` on ``model`` (hub id, directory or None = built-in) and write them to ``out_dir``.

    Returns the written mask files, in the order found. Bad input (model, data, device) fails before training.
    """
    load_config(model)  # cheap: rejects unknown or non-BERT models before loading weights
    torch_device = pick_device(device)
    if config.needs_data:
        pretrain.load_wikitext(data)  # fails with the files to provide when the corpus is missing
    pretrained = load_pretrained(model)
    context = SearchContext(pretrained, torch_device, pretraining_data(pretrained, data, config),
                            log_step or _log_progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    devices = [torch_device.index or 0] if torch_device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # dropout draws from torch's RNG: seed it, leave the caller's alone
        torch.manual_seed(config.seed)
        return list(_search_and_save(config, context, out_dir))


def _search_and_save(config: SearchConfig, context: SearchContext, out_dir: Path) -> Iterator[Path]:
    pretrained = context.pretrained
    for found in METHODS[config.method].search(context, config):
        meta = {"model": pretrained.name, "model_fingerprint": pretrained.fingerprint, "method": config.method,
                "objective": config.objective, "sparsity": found.sparsity, "seed": config.seed, "step": found.step,
                "config": config.to_dict(), "config_id": config.config_id}
        path = out_dir / mask_filename(config, found)
        save_mask(path, found.tensors, meta)
        log.info("wrote %s", path)
        yield path


def _log_progress(metrics: dict) -> None:
    step = metrics["step"]
    if step == 1 or step % (10 if step < 100 else 100) == 0:
        log.info("step %d  loss %.4f  lr %.2e  %.2fs/step", step, metrics["loss"], metrics["lr"], metrics["step_s"])
