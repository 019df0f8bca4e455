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


def test_a_running_trials_setup_does_not_count_in_its_pace():
    """A search spends 60 s loading, then 1 s per unit of 100: at unit 11 (71 s) it has 89 s left. Its first
    report anchors the pace; projecting 71 s over 11 % would say 574 s."""
    model = EtaModel({"s": TrialCost("search", "search:tamt-kd", 100.0, 100)}, slots=1)
    model.start("s", 0.0)
    model.report("s", 1, 61.0)
    assert model.eta(61.0)["search"] is not None  # nothing paces it yet: its own fraction of the way
    model.report("s", 11, 71.0)
    assert model.eta(71.0)["search"] == pytest.approx(89.0)
    assert model.calibration(71.0)["search:tamt-kd"] == pytest.approx(160.0 / 100.0)


def test_a_trial_past_its_estimate_is_not_shown_as_done():
    model = _model(slots=1)
    model.start("s", 0.0)
    model.finish("s", 100.0)  # calibrates searches at 1×
    model.start("f0", 100.0)
    model.finish("f0", 110.0)  # and fine-tunes at 1×
    model.start("f1", 110.0)
    assert model.remaining("f1", model.calibration(140.0), 140.0) == pytest.approx(1.0)
