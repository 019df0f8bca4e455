"""A study: task-agnostic tuning of a TAMT search's lr, α and φ, declared like a grid (run by ``tuning``).

App. C: the authors did "not perform hyper-parameter search for TAMT based on the downstream performance". A study
keeps that rule: it minimises the dev loss of the mask's own pre-training objective (MLM or KD, §4.1.2), and each
of its trials is an ordinary :class:`SearchSpec`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tamt_core.search.config import SearchConfig

from orchestrator.plan import PlanError
from orchestrator.specs import SearchSpec

TUNABLE = ("lr", "alpha", "phi")
DEFAULT_SPACE: dict[str, tuple[float, float]] = {"lr": (1e-5, 1e-2), "alpha": (1.5, 10.0), "phi": (1e-3, 1e-1)}
"""Log-uniform ranges around the paper's values (lr 5e-5 / 2e-5, α 2, φ 1e-2; Tab. 1, §4.1.3). α stays above 1 so
that the OMP-kept scores α·φ pass the strict binariser at τ = φ."""


@dataclass(frozen=True)
class TamtStudy:
    """A study: which TAMT search to tune, on what, for how many trials.

    Args:
        name: the Optuna study name (unique within a storage) and the MLflow parent run.
        model, data: as in a grid (hub id or directory; ``None`` data = the built-in corpus).
        method: ``tamt-mlm`` or ``tamt-kd``; the objective is the dev loss of its own pre-training task.
        sparsity, mask_seed: the search being tuned.
        trials: how many settings to evaluate in all (a rerun runs only the missing ones).
        search: fixed :class:`SearchConfig` settings of every trial (``steps``, ``batch_size``, ...).
        space: ``{setting: (low, high)}`` sampled log-uniformly; settings from :data:`TUNABLE`.
        dev_loss_batches: dev batches of the objective (``None`` = the whole dev set).
        sampler_seed: seed of Optuna's TPE sampler.
    """

    name: str
    model: str
    method: str
    sparsity: float
    trials: int
    data: str | None = None
    mask_seed: int = 1
    search: Mapping[str, Any] = field(default_factory=dict)
    space: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_SPACE))
    dev_loss_batches: int | None = None
    sampler_seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ("tamt-mlm", "tamt-kd"):
            raise PlanError(f"a TAMT study tunes tamt-mlm or tamt-kd, not {self.method!r}")
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise PlanError(f"trials must be a positive integer, got {self.trials!r}")
        if not self.name or "/" in self.name:
            raise PlanError(f"study name {self.name!r} must be non-empty and without '/'")
        unknown = sorted(set(self.space) - set(TUNABLE))
        if unknown or not self.space:
            raise PlanError(f"a study samples some of {TUNABLE}; got {sorted(self.space)}")
        for key, bounds in self.space.items():
            low, high = bounds
            if not 0 < low < high:
                raise PlanError(f"space[{key!r}] = {bounds}: give (low, high) with 0 < low < high (log-uniform)")
        if "alpha" in self.space and self.space["alpha"][0] <= 1:
            raise PlanError("alpha's lower bound must exceed 1 (Eq. 5 keeps OMP's weights only if α·φ > φ)")
        overlap = sorted(set(self.search) & set(self.space))
        if overlap:
            raise PlanError(f"{overlap} are both fixed (search) and sampled (space); keep each in one place")
        if self.dev_loss_batches == 0:
            raise PlanError("the objective is a dev loss; dev_loss_batches 0 would skip it")
        self.spec(self.midpoint())  # the fixed settings are valid

    @property
    def objective(self) -> str:
        """The results column minimised: the dev loss of the method's own objective."""
        return "mlm_dev_loss" if self.method == "tamt-mlm" else "kd_dev_loss"

    def spec(self, params: Mapping[str, float]) -> SearchSpec:
        """The search one trial runs: the fixed settings with ``params`` sampled by Optuna."""
        try:
            config = SearchConfig.of(self.method, self.sparsity, self.mask_seed, **{**self.search, **params})
        except (TypeError, ValueError) as error:
            raise PlanError(f"study {self.name}: {error}") from error
        return SearchSpec(self.model, config, self.data, self.dev_loss_batches)

    def midpoint(self) -> dict[str, float]:
        """The geometric middle of the space: a representative setting for checks and estimates."""
        return {key: math.sqrt(low * high) for key, (low, high) in self.space.items()}

    def distributions(self) -> dict[str, Any]:
        """The space as Optuna distributions (log-uniform floats)."""
        from optuna.distributions import FloatDistribution

        return {key: FloatDistribution(low, high, log=True) for key, (low, high) in self.space.items()}

    def params_of(self, config: Mapping[str, Any]) -> dict[str, float]:
        return {key: float(config[key]) for key in self.space}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["search"], out["space"] = dict(self.search), {k: list(v) for k, v in self.space.items()}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TamtStudy:
        return cls(**{**d, "space": {k: tuple(v) for k, v in d["space"].items()}})
