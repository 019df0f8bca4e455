"""Project-level rules: the science core stays free of Ray/MLflow, the analysis reads tables only (each checked in a
fresh interpreter, so the module is slow)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a subprocess each

ROOT = Path(__file__).resolve().parents[1]


def test_tamt_core_imports_no_ray_or_mlflow():
    code = ("import sys, tamt_core.cli, tamt_core.search, tamt_core.subnetwork, tamt_core.methods; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow', 'optuna')); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for path in (ROOT / "tamt_core").rglob("*.py"):
        text = path.read_text()
        assert "import ray" not in text and "import mlflow" not in text, path


def test_analysis_imports_no_training_code():
    """analysis/ draws from the Parquet table alone: no torch, no Ray, no MLflow, no tamt_core or orchestrator."""
    code = ("import sys, analysis.figures; bad = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'transformers', 'ray', 'mlflow', 'optuna', 'tamt_core', 'orchestrator'}); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

