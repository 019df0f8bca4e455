"""Project-level rules: the science core stays free of Ray/MLflow, the analysis reads tables only, the orchestrator
imports neither the analysis nor model internals (each checked in a fresh interpreter, so the module is slow)."""

from __future__ import annotations

import re
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


def test_orchestrator_imports_no_analysis():
    """orchestrator/ writes the table and analysis/ reads it: no orchestrator module imports the analysis, not even
    inside a function (the results table a sweep prints at its end is handed in by sweeps/)."""
    sources = sorted((ROOT / "orchestrator").rglob("*.py"))
    modules = [".".join(path.relative_to(ROOT).with_suffix("").parts) for path in sources if path.stem != "__init__"]
    code = (f"import sys, {', '.join(modules)}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'analysis'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for path in sources:
        assert not re.search(r"^\s*(from|import)\s+analysis\b", path.read_text(), re.MULTILINE), path


MODEL_INTERNALS = ("transformers", "tamt_core.masks.masked_model", "tamt_core.losses", "tamt_core.training",
                   "tamt_core.parallel", "tamt_core.data", "tamt_core.methods.trained", "tamt_core.methods.imp",
                   "tamt_core.methods.tamt", "tamt_core.methods.omp", "tamt_core.methods.random_mask",
                   "tamt_core.finetune.loop", "tamt_core.finetune.evaluation")
"""What trains a model: the orchestrator reaches it through tamt_core's entry points (``run_search``, ``finetune``,
``pretrain_losses``, the mask files, the methods' registry), never directly."""


def test_orchestrator_imports_no_model_internals():
    imports = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import|import\s+([\w.]+))", re.MULTILINE)
    for path in sorted((ROOT / "orchestrator").rglob("*.py")):
        for match in imports.finditer(path.read_text()):
            module = match.group(1) or match.group(2)
            assert not any(module == inner or module.startswith(inner + ".") for inner in MODEL_INTERNALS), \
                f"{path.name} imports {module}"

