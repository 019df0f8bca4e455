"""Pre-training losses of a subnetwork: MLM cross-entropy and the KD loss of Eq. 6.

Both serve two purposes: objectives of mask training (§3.4.3) and the "dev loss" of a subnetwork f(·; M ⊙ θ0)
(Fig. 1, Fig. 4, Tab. 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tamt_core.device import autocast
from tamt_core.masks.masked_model import base_model
from tamt_core.models import mlm_head
from tamt_core.training import to_device

KD_DISTANCES = ("cosine", "mse")


MLM_POSITIONS = "mlm_positions"
"""The batch key of the corrupted positions' flat indices, found on the CPU (:func:`with_mlm_positions`)."""
ENCODER_MASK = "encoder_attention_mask"
"""The batch key of the attention mask the encoder reads, in the 4-D form transformers takes as it is."""


def with_mlm_positions(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` (on the CPU) with the flat indices of its corrupted positions (labels ≠ −100): found on the host
    before the batch moves, the MLM loss then selects them without waiting for the device to count them."""
    return {**batch, MLM_POSITIONS: torch.nonzero(batch["labels"].reshape(-1) != -100).squeeze(1)}


def with_encoder_mask(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` (on the CPU) with its padding decided on the host: without an attention mask when nothing is
    padded (MLM blocks), else with the 4-D boolean mask beside the 2-D one (which the KD loss weighs positions
    by). transformers otherwise asks the device whether anything is padded in every forward pass."""
    mask = batch.get("attention_mask")
    if mask is None:
        return batch
    if bool(mask.all()):
        return {k: v for k, v in batch.items() if k != "attention_mask"}
    return {**batch, ENCODER_MASK: mask[:, None, None, :].bool()}


def _encoder_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    return batch.get(ENCODER_MASK, batch.get("attention_mask"))


def mlm_loss(model: nn.Module, batch: dict[str, torch.Tensor], denominator: int | None = None) -> torch.Tensor:
    """Cross-entropy over the corrupted positions only (labels ≠ −100), averaged over them as HF's MLM loss.

    The vocabulary projection runs on the selected positions alone (~15 % of tokens): the same loss, without
    computing logits nobody reads. The positions come with the batch (:func:`with_mlm_positions`, found on the CPU),
    or are found here, which on a GPU waits for the device. With ``denominator`` (the corrupted positions of a whole
    global batch of which ``batch`` is one rank's share, :mod:`tamt_core.parallel`) the loss is this share's sum
    over that count, so the ranks' losses add up to the global batch's mean.
    """
    hidden = base_model(model)(input_ids=batch["input_ids"], attention_mask=_encoder_mask(batch),
                               token_type_ids=batch.get("token_type_ids")).last_hidden_state
    positions = batch.get(MLM_POSITIONS)
    if positions is None:
        positions = torch.nonzero(batch["labels"].reshape(-1) != -100).squeeze(1)
    labels = batch["labels"].reshape(-1).index_select(0, positions)
    logits = mlm_head(model)(hidden.flatten(0, 1).index_select(0, positions))
    total = F.cross_entropy(logits.float(), labels, reduction="sum")
    return total / (positions.numel() if denominator is None else denominator)


def loss_denominator(batch: dict[str, torch.Tensor], objective: str, include_padding: bool = False,
                     per_sequence: bool = False) -> int:
    """What the loss of ``objective`` averages over in ``batch``: its corrupted positions (MLM), or its tokens
    (KD; with ``include_padding`` every position; with ``per_sequence`` its sequences)."""
    if objective == "mlm":
        return int((batch["labels"] != -100).sum())
    mask = batch.get("attention_mask")
    if include_padding or mask is None:  # as kd_loss: padding counted first, then per sequence, then per token
        return int(batch["input_ids"].numel())
    return int(batch["input_ids"].shape[0] if per_sequence else mask.sum())


def encoder_layer_states(encoder: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Outputs of the L transformer layers, without the embedding output (reference-impl check vector 22)."""
    out = encoder(input_ids=batch["input_ids"], attention_mask=_encoder_mask(batch),
                  token_type_ids=batch.get("token_type_ids"), output_hidden_states=True)
    return out.hidden_states[1:]


def kd_loss(student_states, teacher_states, attention_mask: torch.Tensor | None, *,
            distance: str = "cosine", include_padding: bool = False, per_sequence: bool = False,
            denominator: int | None = None) -> torch.Tensor:
    """Eq. 6: (1/L) Σ_l mean over tokens of 1 − cos(H^T_l, H^S_l); ``mse`` averages squared errors instead.

    By default the mean is over the non-padding tokens of the whole batch. ``per_sequence`` takes Eq. 6 as
    written, (1/|x|) Σ over each sequence x, then the mean over the batch's sequences; ``include_padding``
    averages over every position, as the released trainer did (reference-impl §6.1). ``mse`` is the released eval
    scripts' default (reference-impl §9): mean over tokens and hidden units. ``denominator``: the token (or, per
    sequence, sequence) count of the global batch of which this is one rank's share (see :func:`mlm_loss`).
    """
    if distance not in KD_DISTANCES:
        raise ValueError(f"unknown KD distance {distance!r}; choose one of {KD_DISTANCES}")
    per_layer = []
    for student, teacher in zip(student_states, teacher_states, strict=True):
        if distance == "cosine":
            per_token = 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)  # (B, T)
        else:
            per_token = (student.float() - teacher.float()).pow(2).mean(dim=-1)  # (B, T)
        if include_padding or attention_mask is None:
            per_layer.append(per_token.mean() if denominator is None else per_token.sum() / denominator)
        elif per_sequence:
            weights = attention_mask.to(per_token.dtype)
            per_row = (per_token * weights).sum(dim=1) / weights.sum(dim=1)  # (B,): Eq. 6 for each sequence
            per_layer.append(per_row.mean() if denominator is None else per_row.sum() / denominator)
        else:
            weights = attention_mask.to(per_token.dtype)
            per_layer.append((per_token * weights).sum() / (weights.sum() if denominator is None else denominator))
    return torch.stack(per_layer).mean()


@torch.no_grad()
def evaluate_mlm(model: nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device,
                 precision: str | None = None) -> float:
    """MLM dev loss: mean over batches of the batch-mean cross-entropy (as HF's Trainer, reference-impl §9)."""
    was_training = model.training
    model.eval()
    losses = []
    for batch in batches:
        with autocast(device, precision):
            losses.append(float(mlm_loss(model, to_device(with_mlm_positions(batch), device))))
    model.train(was_training)
    return sum(losses) / len(losses)


@torch.no_grad()
def evaluate_kd(student: nn.Module, teacher: nn.Module, batches: list[dict[str, torch.Tensor]],
                device: torch.device, precision: str | None = None, *, distance: str = "cosine",
                include_padding: bool = False) -> float:
    """KD dev loss of Eq. 6 (or MSE), both models in eval mode, mean over batches."""
    was_training = student.training
    student.eval()
    teacher.eval()
    losses = []
    for batch in batches:
        batch = to_device(batch, device)
        with autocast(device, precision):
            loss = kd_loss(encoder_layer_states(base_model(student), batch),
                           encoder_layer_states(base_model(teacher), batch), batch.get("attention_mask"),
                           distance=distance, include_padding=include_padding)
        losses.append(float(loss))
    student.train(was_training)
    return sum(losses) / len(losses)
