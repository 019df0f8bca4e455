"""One short script per experiment of the paper; ``python -m sweeps`` runs or budgets several as one sweep."""

from __future__ import annotations

import importlib

SWEEPS: tuple[str, ...] = ("main_results", "pretrain_correlation", "pretrain_cost", "mask_similarity", "low_data",
                           "tune_tamt", "one_shot")
"""Every experiment script, in the paper's order (§4.2.1-4.2.5), then the tuning study and the experiments beyond
the paper."""


def presets_of(name: str):
    """The ``PRESETS`` of ``sweeps/<name>.py``."""
    return importlib.import_module(f"sweeps.{name}").PRESETS
