"""The sweep's ETA: estimates calibrated per kind by what finished and by how far running trials are."""

from __future__ import annotations

import pytest

from orchestrator.progress import EtaModel, TrialCost


def _model(slots: int = 2) -> EtaModel:
    """A search of 100 estimated seconds (10 progress units) and 8 fine-tunes of 10 s each (20 steps)."""
    costs = {"s": TrialCost("search", "search:tamt-mlm", 100.0, 10)}
    costs |= {f"f{i}": TrialCost("finetune", "finetune", 10.0, 20) for i in range(8)}
    return EtaModel(costs, slots=slots)


def test_before_anything_reports_the_eta_is_unknown():
    model = _model()
    model.start("s", 0.0)
    assert model.eta(5.0) == {"search": None, "finetune": None}


def test_a_running_trial_a_quarter_done_calibrates_its_kind():
    """The search runs 3× slower than estimated: at 25 % after 75 s it projects 300 s, 225 s left."""
    model = _model()
    model.start("s", 0.0)
    model.progress["s"] = 3  # of 10 units: 30 %
    eta = model.eta(90.0)
    assert eta["search"] == pytest.approx(90.0 * 0.7 / 0.3)
    assert eta["finetune"] is not None  # calibrated by the only ratio known so far, the search's


def test_eta_follows_a_synthetic_trace_within_ten_percent():
    """Fine-tunes take 3× their estimate, two at a time: once two have finished, the ETA of the other six is the
    true time left (6 × 30 s over 2 slots = 90 s) within 10 %; a search's own finish is known exactly."""
    model = _model()
    model.start("s", 0.0)
    model.finish("s", 250.0)  # 2.5× its estimate
    for i, start in ((0, 250.0), (1, 250.0)):
        model.start(f"f{i}", start)
    model.finish("f0", 280.0)
    model.finish("f1", 280.0)
    model.start("f2", 280.0)
    model.start("f3", 280.0)
    eta = model.eta(280.0)
    assert eta["search"] == 0.0
    assert eta["finetune"] == pytest.approx(6 * 30.0 / 2, rel=0.1)


def test_a_dropped_trial_leaves_what_is_left():
    model = _model(slots=1)
    model.start("s", 0.0)
    model.finish("s", 100.0)
    for i in range(8):
        model.drop(f"f{i}")
    assert model.eta(100.0) == {"search": 0.0, "finetune": 0.0}
