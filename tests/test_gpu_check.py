"""``bench/gpu_check.py --tiny`` runs every check of the GPU check at tiny shapes (on the CPU here) and reports
every row, in the table and in the JSON; the JSON's throughput block is what the estimate reads."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.estimate import measured_throughput
from orchestrator.plan import PlanError

pytestmark = pytest.mark.slow  # a subprocess that builds tiny models and runs three short searches

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("_gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_tiny_check_prints_and_writes_every_row(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "",  # the CPU path, even on a machine with a GPU
           "OMP_NUM_THREADS": "1"}  # a check of the paths, not a timing: leave the other core to the other tests
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    gpu_check = _script()
    keys = gpu_check.row_keys()
    record = json.loads(out.read_text())
    assert record["schema"] == gpu_check.SCHEMA and record["tiny"] is True and record["failed"] == []
    assert list(record["rows"]) == keys
    table = done.stdout
    assert "reset/exact" in keys and record["rows"]["reset/exact"]["verdict"] == "met"
    for key in keys:
        row = record["rows"][key]
        assert row["label"] in table and row["figure"], key
        assert "failed" not in row["figure"] and row["figure"] != "not run", (key, row)
    for method in gpu_check.TRAIN_ROWS:
        for precision in gpu_check.PRECISIONS:
            assert record["figures"]["train"][precision][method]["tokens_per_s"] > 0
    # What the CPU can check, it checks: one sync per TAMT step, none per IMP step, an exact resume.
    syncs = record["figures"]["host_syncs"]
    # one transfer per TAMT step; a second only on a step whose τ band missed (rare: median of five steps)
    assert syncs["tamt-mlm"]["per_step"] == 1 and syncs["tamt-kd"]["per_step"] == 1
    assert syncs["tamt-mlm"]["calls"] == {"tolist": 1} and len(syncs["tamt-mlm"]["each_step"]) == 5
    assert syncs["imp"]["per_step"] == 0
    assert record["figures"]["kill_and_resume"]["equal"] is True
    assert record["rows"]["resume/cpu-to-cuda"]["figure"] == "skipped: no CUDA"
    assert "skipped: no CUDA" in record["rows"]["train/tamt-mlm/bf16"]["peak"]
    assert 0 <= record["figures"]["precision_loss"]["max_relative_difference"] < 0.1
    throughput = record["throughput"]
    assert set(throughput["search_s_per_iteration"]["bf16"]) == {"tamt-mlm", "tamt-kd", "imp"}
    # A tiny record measures nothing: the estimate refuses it.
    with pytest.raises(PlanError, match="--tiny"):
        measured_throughput(out)
