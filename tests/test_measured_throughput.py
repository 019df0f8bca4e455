"""GPU-hour estimates from figures measured on the user's own GPU (``bench/gpu_check.py --out FILE``): a dry run's
``--throughput FILE`` lays them over the V100 table, says what it kept, and refuses a file it cannot use."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from orchestrator.cli import plan_of, sweep_main
from orchestrator.estimate import THROUGHPUT, gpu_hours, measured_throughput
from orchestrator.plan import PlanError
from sweeps import presets_of

V100 = THROUGHPUT["v100"]
PACES = ("imp", "tamt-mlm", "tamt-kd")
GPU = "NVIDIA H100 80GB HBM3"


def _record(**throughput) -> dict:
    """A gpu_check.py record: bf16 ten times and fp32 four times the V100's search pace on BERT."""
    return {"schema": "tamt-gpu-check/1", "throughput": {
        "device_name": GPU, "date": "2026-12-01T10:00:00+00:00", "tiny": False, "family": "bert",
        "search_s_per_iteration": {
            "bf16": {pace: V100.search_s_per_iteration[("bert", pace)] / 10 for pace in PACES},
            "fp32": {pace: V100.search_s_per_iteration[("bert", pace)] / 4 for pace in PACES}},
        "glue_train_per_s": {"bf16": 4000.0, "fp32": 1600.0}, **throughput}}


def _write(tmp_path: Path, record) -> Path:
    path = tmp_path / "gpu_check.json"
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    return path


def _total(out: str) -> str:
    return next(line for line in out.splitlines() if line.strip().startswith("total "))


def test_the_measured_figures_replace_the_v100_ones_and_the_rest_are_kept(tmp_path):
    path = _write(tmp_path, _record())
    table = measured_throughput(path)
    for pace in PACES:
        assert table.search_s_per_iteration[("bert", pace)] == V100.search_s_per_iteration[("bert", pace)] / 10
        assert table.search_s_per_iteration[("roberta", pace)] == V100.search_s_per_iteration[("roberta", pace)]
    assert table.glue_train_per_s == 4000.0
    assert (table.glue_eval_per_s, table.squad_train_per_s, table.squad_eval_per_s, table.load_s, table.dev_loss_s) \
        == (V100.glue_eval_per_s, V100.squad_train_per_s, V100.squad_eval_per_s, V100.load_s, V100.dev_loss_s)
    assert table.source.startswith(f"{GPU}, bf16")
    assert ("kept from the V100 table: roberta searches, GLUE evaluation, SQuAD training, SQuAD evaluation, "
            "model loading, dev losses") in table.source
    fp32 = measured_throughput(path, "fp32")
    assert fp32.glue_train_per_s == 1600.0 and fp32.source.startswith(f"{GPU}, fp32")


def test_dry_run_estimates_from_the_measured_file(tmp_path):
    path = _write(tmp_path, _record())
    presets = presets_of("main_results")
    plan = plan_of(presets["paper"]())
    runs = {}
    for name, extra in {"v100": [], "bf16": ["--throughput", str(path)],
                        "fp32": ["--throughput", str(path), "--precision", "fp32"]}.items():
        buffer = io.StringIO()
        assert sweep_main("main_results", presets, ["--preset", "paper", "--dry-run", "--storage",
                                                    str(tmp_path / "s"), *extra], out=buffer) == 0
        runs[name] = buffer.getvalue()
    totals = {name: sum(sum(stage.values()) for stage in gpu_hours(plan, table).values())
              for name, table in {"v100": V100, "bf16": measured_throughput(path),
                                  "fp32": measured_throughput(path, "fp32")}.items()}
    # The --precision fp32 plan has other run ids but the same trials, so the same hours at fp32's figures.
    assert totals["bf16"] < totals["fp32"] < totals["v100"]
    for name, out in runs.items():
        assert f"total {totals[name]:.1f} GPU-h" in _total(out)
    assert GPU not in runs["v100"] and "V100" in _total(runs["v100"])
    assert _total(runs["bf16"]).split("(", 1)[1].startswith(f"{GPU}, bf16")
    assert f"{GPU}, fp32" in _total(runs["fp32"])


@pytest.mark.parametrize("record, why", [
    ("{not json", "cannot read it as JSON"),
    ([1, 2], "not a gpu_check.py record"),
    ({"throughput": {}}, "not a gpu_check.py record"),
    (_record(tiny=True), "written by --tiny"),
    (_record(family="gpt"), "unknown model family 'gpt'"),
    (_record(glue_train_per_s={"fp32": 1600.0}), "holds no bf16 figures"),
    (_record(search_s_per_iteration={"bf16": {"imp": 0.1, "tamt-mlm": 0.1}}), r"lacks the pace\(s\) \['tamt-kd'\]"),
    (_record(glue_train_per_s={"bf16": -5}), "glue_train_per_s.bf16 must be a positive number"),
    (_record(search_s_per_iteration={"bf16": {"imp": 0.1, "tamt-mlm": "fast", "tamt-kd": 0.1}}),
     "search_s_per_iteration.bf16.tamt-mlm must be a positive number"),
], ids=["not-json", "a-list", "no-schema", "tiny", "family", "no-bf16", "no-kd", "negative", "a-string"])
def test_a_file_it_cannot_use_is_refused(tmp_path, capsys, record, why):
    path = _write(tmp_path, record)
    with pytest.raises(PlanError, match=why):
        measured_throughput(path)
    presets = presets_of("main_results")
    assert sweep_main("main_results", presets, ["--preset", "smoke", "--dry-run", "--storage", str(tmp_path / "s"),
                                                "--throughput", str(path)], out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --throughput {path}: ") and "bench/gpu_check.py --out FILE" in err


def test_a_missing_file_and_a_run_that_is_not_dry_are_refused(tmp_path, capsys):
    presets = presets_of("main_results")
    assert sweep_main("main_results", presets, ["--preset", "smoke", "--dry-run", "--storage", str(tmp_path / "s"),
                                                "--throughput", str(tmp_path / "absent.json")]) == 2
    assert "cannot read it as JSON" in capsys.readouterr().err
    path = _write(tmp_path, _record())
    assert sweep_main("main_results", presets, ["--preset", "smoke", "--storage", str(tmp_path / "s"),
                                                "--throughput", str(path)]) == 2
    assert "add --dry-run" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
