"""OMP, random and IMP selection, TAMT's init and threshold, with the reference's exact counts (check vectors 3-6,
11, 12, 14) and against torch.nn.utils.prune where it computes the same thing."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from tamt_core.hparams import ALPHA, PHI
from tamt_core.methods.imp import imp_prune
from tamt_core.methods.omp import omp_mask
from tamt_core.methods.random_mask import random_mask
from tamt_core.methods.tamt import initial_scores
from tamt_core.masks import similarity
from tamt_core.masks.pruning import n_zeros
from tamt_core.methods.threshold import BandedThresholds, kth_smallest


def _weights(*shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {f"m{i}": torch.randn(shape, generator=generator) for i, shape in enumerate(shapes)}


@pytest.mark.parametrize("shape, expected", [
    ((768, 768), {0.5: 294_912, 0.6: 353_894, 0.7: 412_877, 0.8: 471_859, 0.9: 530_842}),
    ((3072, 768), {0.5: 1_179_648, 0.6: 1_415_578, 0.7: 1_651_507, 0.8: 1_887_437, 0.9: 2_123_366}),
    ((30522, 768), {0.7: 16_408_627}),
])
def test_omp_zero_counts_match_reference(shape, expected):
    """Check vector 3: exactly round_half_even(s·n) zeros per matrix."""
    n = torch.Size(shape).numel()
    assert {s: n_zeros(n, s) for s in expected} == expected


def test_omp_prunes_the_smallest_magnitudes_like_torch_prune():
    weights = _weights((64, 48), (96, 40), (7, 13))
    for sparsity in (0.1, 0.5, 0.7, 0.93):
        ours = omp_mask(weights, sparsity)
        for name, w in weights.items():
            kept = ours[name]
            assert int((~kept).sum()) == round(sparsity * w.numel())
            assert w[kept].abs().min() >= w[~kept].abs().max()
            module = nn.Linear(w.shape[1], w.shape[0])
            module.weight.data.copy_(w)
            prune.l1_unstructured(module, "weight", amount=sparsity)
            assert torch.equal(module.weight_mask.bool(), kept)


def test_random_masks_have_omp_counts_and_are_seeded():
    """Check vector 4: same counts as OMP; same seed same mask; IoU of two seeds ≈ (1 − s)/(1 + s)."""
    weights = _weights((256, 256), (129, 33))
    a, again, b = random_mask(weights, 0.7, 1), random_mask(weights, 0.7, 1), random_mask(weights, 0.7, 2)
    for name, w in weights.items():
        assert int((~a[name]).sum()) == round(0.7 * w.numel())
        assert torch.equal(a[name], again[name])
    assert not torch.equal(a["m0"], b["m0"])
    iou = similarity({"m0": a["m0"]}, {"m0": b["m0"]})
    assert abs(iou - 0.3 / 1.7) < 0.01


def test_imp_cumulative_counts_follow_reference_rule():
    """Check vectors 5 and 6: 768×768 zeros after prune j, never 1 − 0.9^j; masks nested."""
    weights = _weights((768, 768))
    keep = {"m0": torch.ones(768, 768, dtype=torch.bool)}
    zeros, masks = [], []
    for j in range(9):
        keep = imp_prune(weights, keep, j)
        zeros.append(int((~keep["m0"]).sum()))
        masks.append(keep["m0"])
    assert zeros == [58_982, 117_964, 176_946, 235_929, 294_911, 353_894, 412_876, 471_859, 530_841]
    for earlier, later in zip(masks, masks[1:]):
        assert not (later & ~earlier).any()  # nothing revived


def test_imp_prune_matches_torch_iterative_pruning():
    """torch's PruningContainer with amount 1/(10 − j) ranks |W| among kept entries only: same masks."""
    torch.manual_seed(3)
    module = nn.Linear(40, 30)
    trained = module.weight.detach().clone()
    keep = {"w": torch.ones_like(trained, dtype=torch.bool)}
    for j in range(6):
        trained += 0.05 * torch.randn_like(trained)  # weights move between prunes (IMP trains them)
        with torch.no_grad():
            (module.weight_orig if j else module.weight).copy_(trained)
        module(torch.zeros(1, 40))  # torch ranks module.weight, refreshed by the forward pre-hook
        prune.l1_unstructured(module, "weight", amount=1 / (10 - j))
        keep = imp_prune({"w": trained}, keep, j)
        assert torch.equal(module.weight_mask.bool(), keep["w"])


def test_tamt_init_scores_follow_eq5_with_floor_counts():
    """Check vector 11: scores ∈ {0, αφ}; int(s·n) zeros; [M̄ > φ] reproduces it; ⊇ OMP's kept set."""
    weights = _weights((768, 768), (3072, 768))
    for sparsity, extra_kept in ((0.5, (0, 0)), (0.6, (0, 1)), (0.7, (1, 0)), (0.8, (0, 1)), (0.9, (1, 0))):
        scores = initial_scores(weights, sparsity)
        omp = omp_mask(weights, sparsity)
        for (name, s), extra in zip(scores.items(), extra_kept):
            assert set(s.unique().tolist()) == {0.0, torch.tensor(ALPHA * PHI).item()}
            kept = s > PHI
            assert int((~kept).sum()) == int(sparsity * s.numel())
            assert not (omp[name] & ~kept).any()
            assert int(kept.sum() - omp[name].sum()) == extra


def test_threshold_reset_keeps_exact_count_by_signed_score():
    """Check vector 14: τ is the int(s·n)-th smallest signed score; a large negative score is pruned."""
    scores = torch.tensor([[-5.0, 0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7]])
    k = n_zeros(scores.numel(), 0.5, "floor")
    tau = kth_smallest(scores, k)
    assert float(tau) == pytest.approx(0.3)
    kept = scores > tau
    assert int(kept.sum()) == 4 and not kept[0, 0]


def test_banded_thresholds_equal_full_kthvalue_as_scores_drift():
    """The cheap per-step re-set is exact: the same τ as a full kthvalue, through small and large moves."""
    generator = torch.Generator().manual_seed(0)
    scores = {name: torch.where(torch.rand(shape, generator=generator) < 0.3, ALPHA * PHI, 0.0)
              for name, shape in (("a", (300, 200)), ("b", (64, 32)), ("frozen", (16, 16)))}
    zeros = {name: n_zeros(s.numel(), 0.7, "floor") for name, s in scores.items()}
    thresholds = {name: torch.tensor(PHI) for name in scores}
    search = BandedThresholds(zeros)
    for step in range(60):
        for name in ("a", "b"):  # "frozen" never changes, like the pooler's scores
            scores[name] += 5e-4 * torch.randn(scores[name].shape, generator=generator) * (1 + (step % 7 == 0) * 40)
        search.reset(scores, thresholds)
        for name in ("a", "b"):
            assert float(thresholds[name]) == float(kth_smallest(scores[name], zeros[name]))
            assert int((scores[name] <= thresholds[name]).sum()) == zeros[name]  # exact once ties are gone
    assert float(thresholds["frozen"]) == 0.0  # k-th smallest of {0, 2φ} scores: reproduces the init mask
    assert search.full_selections <= 10


def test_threshold_of_zero_sparsity_keeps_everything():
    search = BandedThresholds({"m": 0})
    thresholds = {"m": torch.tensor(PHI)}
    search.reset({"m": torch.full((3, 3), -1.0)}, thresholds)
    assert float(thresholds["m"]) == float("-inf")
