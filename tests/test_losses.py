"""Pre-training losses: Eq. 6 KD loss (check vectors 21, 22), MLM loss on corrupted positions only."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tamt_core.losses import encoder_layer_states, evaluate_kd, kd_loss, loss_denominator, mlm_loss
from tamt_core.masks.masked_model import apply_fixed_mask, base_model, dense_weights
from tamt_core.models import load_pretrained


def _batch(seed=0, batch=3, length=20, pad_from=14):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (batch, length), generator=generator)
    attention = torch.ones(batch, length, dtype=torch.long)
    attention[0, pad_from:] = 0
    ids[0, pad_from:] = 0
    return {"input_ids": ids, "attention_mask": attention, "token_type_ids": torch.zeros_like(ids)}


def test_kd_loss_is_zero_for_the_unmasked_student(tiny_bert_dir):
    """Check vector 21: an all-ones mask with dropout off gives 0, padding included or not."""
    model = load_pretrained(str(tiny_bert_dir)).model.eval()
    teacher = copy.deepcopy(base_model(model))
    apply_fixed_mask(model, {n: torch.ones_like(w, dtype=torch.bool) for n, w in dense_weights(model).items()})
    batch = _batch()
    for include_padding in (False, True):
        loss = kd_loss(encoder_layer_states(base_model(model), batch), encoder_layer_states(teacher, batch),
                       batch["attention_mask"], include_padding=include_padding)
        assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_uses_layer_outputs_not_embeddings_and_eq6_averaging(tiny_bert_dir):
    """Check vector 22: L layer outputs (embedding output excluded); mean over non-padding tokens of 1 − cos."""
    model = load_pretrained(str(tiny_bert_dir)).model.eval()
    batch = _batch()
    with torch.no_grad():
        states = encoder_layer_states(base_model(model), batch)
    assert len(states) == model.config.num_hidden_layers
    generator = torch.Generator().manual_seed(1)
    student = [s + 0.5 * torch.randn(s.shape, generator=generator) for s in states]
    mask = batch["attention_mask"].bool()
    expected = torch.stack([(1 - F.cosine_similarity(s, t, dim=-1))[mask].mean() for s, t in zip(student, states)])
    loss = kd_loss(student, states, batch["attention_mask"])
    torch.testing.assert_close(loss, expected.mean())
    # Padding positions count only when asked (the released trainer's behaviour).
    moved = [s.clone() for s in student]
    for s in moved:
        s[0, 15:] += 3.0
    assert float(kd_loss(moved, states, batch["attention_mask"])) == pytest.approx(float(loss))
    assert float(kd_loss(moved, states, batch["attention_mask"], include_padding=True)) != pytest.approx(
        float(kd_loss(student, states, batch["attention_mask"], include_padding=True)))


def test_kd_mse_option_is_mean_squared_error(tiny_bert_dir):
    states = [torch.zeros(2, 4, 8)]
    student = [torch.full((2, 4, 8), 2.0)]
    assert float(kd_loss(student, states, None, distance="mse")) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="unknown KD distance"):
        kd_loss(student, states, None, distance="l1")


def test_mlm_loss_equals_full_logits_cross_entropy(tiny_bert_dir):
    """Scoring only the corrupted positions gives HF's MLM loss exactly."""
    model = load_pretrained(str(tiny_bert_dir)).model.eval()
    batch = _batch()
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, 2:6] = batch["input_ids"][:, 2:6]
    batch["labels"] = labels
    reference = model(**batch).loss
    torch.testing.assert_close(mlm_loss(model, batch), reference)


def test_kd_dev_loss_is_deterministic_and_zero_for_dense(tiny_bert_dir):
    model = load_pretrained(str(tiny_bert_dir)).model
    teacher = copy.deepcopy(model)
    batches = [_batch(0), _batch(1)]
    assert evaluate_kd(model, teacher, batches, torch.device("cpu")) == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_per_token_per_sequence_and_with_padding_by_hand():
    """One layer, two sequences against a teacher state (1, 0) everywhere. Sequence A has 1 real token whose
    student state (0, 1) is orthogonal (1 − cos = 1) and 2 padding positions; sequence B has 3 real tokens equal to
    the teacher (1 − cos = 0). Per token (default): 1 / 4. Per sequence (Eq. 6 as written): (1 + 0) / 2. Every
    position (the released trainer): padding rows of A are orthogonal too, so 3 / 6."""
    teacher = torch.tensor([[[1.0, 0.0]] * 3, [[1.0, 0.0]] * 3])
    student = torch.tensor([[[0.0, 1.0]] * 3, [[1.0, 0.0]] * 3])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    assert float(kd_loss((student,), (teacher,), mask)) == pytest.approx(0.25)
    assert float(kd_loss((student,), (teacher,), mask, per_sequence=True)) == pytest.approx(0.5)
    assert float(kd_loss((student,), (teacher,), mask, include_padding=True)) == pytest.approx(0.5)
    # Data parallel: each rank's share over the global count adds up to the one-process value.
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": mask}
    count = loss_denominator(batch, "kd", per_sequence=True)
    shares = [kd_loss((student[i:i + 1],), (teacher[i:i + 1],), mask[i:i + 1], per_sequence=True, denominator=count)
              for i in (0, 1)]
    assert count == 2 and float(sum(shares)) == pytest.approx(0.5)
