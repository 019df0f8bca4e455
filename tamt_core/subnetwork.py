"""Pre-training losses of a subnetwork f(·; M ⊙ θ0) on held-out data, and export of a subnetwork.

The dev losses are what Fig. 1 and Fig. 4 plot against downstream accuracy: MLM cross-entropy and the KD loss of
Eq. 6 on the validation split, deterministic for a given seed (the corruption is drawn once, so every mask is
scored on the same masked positions). The subnetwork keeps the checkpoint's own MLM head (reference-impl §9).
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import torch

from tamt_core import hparams
from tamt_core.data import pretrain
from tamt_core.device import pick_device
from tamt_core.losses import evaluate_kd, evaluate_mlm
from tamt_core.masks.masked_model import apply_fixed_mask, remove_masks, weight_shapes
from tamt_core.masks import Mask, check_mask_matches
from tamt_core.models import Pretrained, load_pretrained
from tamt_table.atomic import replacing

OBJECTIVES = ("mlm", "kd")


def load_for_mask(mask: Mask | None, model: str | None, *, with_mlm_head: bool = True) -> Pretrained:
    """θ0 of the model a mask was made on (or ``model``), checked against the mask's names, shapes, fingerprint."""
    pretrained = load_pretrained(model if model is not None or mask is None else mask.meta["model"],
                                 with_mlm_head=with_mlm_head)
    if mask is not None:
        check_mask_matches(mask, weight_shapes(pretrained.model), pretrained.fingerprint, model_name=pretrained.name)
    return pretrained


def pretrain_losses(masks: dict[str, Mask | None], *, model: str | None = None, data: str | None = None,
                    objectives: tuple[str, ...] = OBJECTIVES, kd_distance: str = "cosine",
                    seed: int = hparams.DEV_LOSS_SEED,
                    batch_size: int = hparams.DEV_LOSS_BATCH_SIZE, block_size: int = hparams.TAMT_MLM.max_length,
                    max_batches: int | None = None, device: str | None = None,
                    precision: str | None = None) -> dict[str, dict[str, float]]:
    """``{label: {"mlm_loss": ..., "kd_loss": ...}}`` for each mask (``None`` = the dense model).

    All masks must belong to the same model; data is tokenised and corrupted once and shared by all of them.
    ``kd_distance="mse"`` is the released eval scripts' KD dev loss, computed as they did: sequences padded to
    ``block_size`` and every position averaged, padding included (reference-impl §9). ``precision`` as the search
    that found the masks computed (:mod:`tamt_core.device`).
    """
    unknown = set(objectives) - set(OBJECTIVES)
    if unknown:
        raise ValueError(f"unknown objective(s) {sorted(unknown)}; choose from {OBJECTIVES}")
    torch_device = pick_device(device)
    first = next((m for m in masks.values() if m is not None), None)
    pretrained = load_pretrained(model if model is not None or first is None else first.meta["model"])
    for mask in masks.values():
        if mask is not None:
            check_mask_matches(mask, weight_shapes(pretrained.model), pretrained.fingerprint, pretrained.name)
    lines = pretrain.load_wikitext(data)["validation"]
    tokenizer = pretrained.tokenizer
    mlm_batches = kd_batches = None
    if "mlm" in objectives:
        blocks = pretrain.mlm_blocks(lines, tokenizer, block_size=block_size)
        max_blocks = None if max_batches is None else max_batches * batch_size
        mlm_batches = pretrain.fixed_mlm_eval_batches(blocks, tokenizer, batch_size=batch_size, seed=seed,
                                                      max_blocks=max_blocks)
    released_mse = kd_distance == "mse"
    if "kd" in objectives:
        sequences = pretrain.kd_sequences(lines, tokenizer, max_seq_len=block_size, seed=seed)
        # The released eval script's MSE KD loss averaged over every position of sequences padded to the block
        # length (reference-impl §9); padding to the longest row instead would make it depend on the batching.
        kd_batches = pretrain.fixed_kd_eval_batches(
            sequences, tokenizer, batch_size=batch_size, pad_to=block_size if released_mse else None,
            max_sequences=None if max_batches is None else max_batches * batch_size)
    model_ = pretrained.model.to(torch_device)
    teacher = copy.deepcopy(model_).eval() if kd_batches is not None else None
    results = {}
    for label, mask in masks.items():
        if mask is not None:
            apply_fixed_mask(model_, mask.tensors)
        row = {}
        if mlm_batches is not None:
            row["mlm_loss"] = evaluate_mlm(model_, mlm_batches, torch_device, precision)
        if kd_batches is not None:
            row["kd_loss"] = evaluate_kd(model_, teacher, kd_batches, torch_device, precision, distance=kd_distance,
                                         include_padding=released_mse)
        if mask is not None:
            row["sparsity"] = mask.sparsity
            remove_masks(model_)
        results[label] = row
    return results


def export_subnetwork(mask: Mask, out_dir: Path, *, model: str | None = None) -> Path:
    """Write θ0 ⊙ M as a plain ``save_pretrained`` directory (encoder + pooler + tokenizer) for stock transformers.

    Each file is written atomically (:mod:`tamt_table.atomic`), with the permissions of any file the user creates.
    """
    pretrained = load_for_mask(mask, model, with_mlm_head=False)
    apply_fixed_mask(pretrained.model, mask.tensors)
    with torch.no_grad():
        remove_masks(pretrained.model, bake=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as staging:
        pretrained.model.save_pretrained(staging)
        pretrained.tokenizer.save_pretrained(staging)
        for written in sorted(Path(staging).iterdir()):
            with replacing(out_dir / written.name) as tmp:
                os.replace(written, tmp)
    return out_dir
