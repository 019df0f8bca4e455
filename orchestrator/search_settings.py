"""A grid's search settings, typed: overrides of :class:`~tamt_core.methods.base.SearchConfig` shared by the
methods they concern, per-method overrides on top, and settings that differ by sparsity (Tab. 2's steps).

A setting left ``None`` keeps the method's own value (the paper's: Tab. 1, Tab. 2). A shared setting applies to
the methods that have it (:data:`APPLIES_TO`) and is ignored by the others, so one grid can run OMP beside
TAMT with ``steps`` set; a per-method setting must apply to its method. A per-sparsity setting must name every
sparsity it is asked for: a value taken from a neighbouring sparsity would run another experiment than the grid
declares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Generic, TypeVar

from tamt_core.methods.base import METHOD_NAMES, SearchConfig

from orchestrator.plan import PlanError

T = TypeVar("T")

_TRAINING = frozenset({"lr", "batch_size", "weight_decay", "block_size", "schedule_steps", "max_grad_norm",
                       "adam_epsilon"})
_TAMT = frozenset({"steps", "save_steps", "threshold_period", "zero_rounding", "alpha", "phi"})
APPLIES_TO: dict[str, frozenset[str]] = {
    "omp": frozenset(),
    "rand": frozenset(),
    "imp": _TRAINING | {"pruning_interval", "rewind"},
    "tamt-mlm": _TRAINING | _TAMT,
    "tamt-kd": _TRAINING | _TAMT | {"kd_include_padding", "kd_sequence_mean"},
}
"""The settings each method has; a shared setting is ignored by the methods without it."""


@dataclass(frozen=True)
class PerSparsity(Generic[T]):
    """A setting with one value per sparsity, e.g. ``PerSparsity(hparams.TAMT_STEPS)`` (Tab. 2)."""

    values: Mapping[float, T]

    def at(self, sparsity: float, name: str) -> T:
        """The value of ``sparsity`` (up to float rounding).

        Raises:
            PlanError: ``sparsity`` is not a key; names the setting and the fix.
        """
        for key, value in self.values.items():
            if math.isclose(key, sparsity, abs_tol=1e-9):
                return value
        raise PlanError(f"{name} maps sparsities {sorted(self.values)} but not {sparsity}, a sparsity of the grid; "
                        f"add {sparsity} to it")


@dataclass(frozen=True)
class SearchSettings:
    """Overrides of :class:`SearchConfig` for a grid's searches (``None``: the method's own value); ``per_method``
    maps a method to overrides of its own, laid over the shared ones (``{"tamt-kd": SearchSettings(lr=1e-4)}``)."""

    steps: int | PerSparsity[int] | None = None
    save_steps: tuple[int, ...] | PerSparsity[tuple[int, ...]] | None = None
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float | None = None
    block_size: int | None = None
    schedule_steps: int | None = None
    max_grad_norm: float | None = None
    adam_epsilon: float | None = None
    pruning_interval: int | None = None
    rewind: bool | None = None
    threshold_period: int | None = None
    zero_rounding: str | None = None
    alpha: float | None = None
    phi: float | None = None
    kd_include_padding: bool | None = None
    kd_sequence_mean: bool | None = None
    per_method: Mapping[str, SearchSettings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.per_method) - set(METHOD_NAMES))
        if unknown:
            raise PlanError(f"per-method search settings for unknown method(s) {unknown}; choose from "
                            f"{', '.join(METHOD_NAMES)}")
        for method, own in self.per_method.items():
            if not isinstance(own, SearchSettings) or own.per_method:
                raise PlanError(f"the search settings of {method} must be settings without methods of their own, "
                                f"e.g. {{'lr': 1e-4}}; got {own!r}")
            wrong = sorted(set(own.given()) - APPLIES_TO[method])
            if wrong:
                raise PlanError(f"search setting(s) {wrong} do not apply to {method}; it takes "
                                f"{sorted(APPLIES_TO[method]) or 'none'}")

    @classmethod
    def of(cls, settings: SearchSettings | Mapping[str, Any]) -> SearchSettings:
        """``settings``, or a plain mapping (JSON, ``--search-settings``) read into them: setting names, method
        names mapping to their own settings, and sparsity-keyed mappings for ``steps`` and ``save_steps``.

        Raises:
            PlanError: an unknown setting or method, named with the known ones.
        """
        if isinstance(settings, SearchSettings):
            return settings
        if not isinstance(settings, Mapping):
            raise PlanError(f"search settings must be SearchSettings or a mapping, got {settings!r}")
        known = [f.name for f in fields(cls) if f.name != "per_method"]
        unknown = sorted(set(settings) - set(known) - set(METHOD_NAMES))
        if unknown:
            raise PlanError(f"unknown search setting(s) {unknown}; known: {sorted(known)} (or a method name mapping "
                            "to its own settings)")
        shared = {name: _typed(name, value) for name, value in settings.items() if name in known}
        per_method = {}
        for method in set(settings) & set(METHOD_NAMES):
            own = settings[method]
            if not isinstance(own, Mapping) or set(own) & set(METHOD_NAMES):
                raise PlanError(f"search[{method!r}] must map settings to values, e.g. {{'lr': 1e-4}}; got {own!r}")
            wrong = sorted(set(own) - APPLIES_TO[method])
            if wrong:
                raise PlanError(f"search setting(s) {wrong} do not apply to {method}; it takes "
                                f"{sorted(APPLIES_TO[method]) or 'none'}")
            per_method[method] = cls.of(own)
        return cls(**shared, per_method=per_method)

    def given(self) -> dict[str, Any]:
        """The settings set here (not ``None``), without ``per_method``."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "per_method" and getattr(self, f.name) is not None}

    def with_method(self, method: str, settings: SearchSettings | Mapping[str, Any]) -> SearchSettings:
        """These settings with ``settings`` laid over ``method``'s own (e.g. a tuned TAMT setting)."""
        own = self.per_method.get(method, SearchSettings())
        return replace(self, per_method={**self.per_method,
                                         method: replace(own, **SearchSettings.of(settings).given())})

    def config(self, method: str, sparsity: float, seed: int) -> SearchConfig:
        """The :class:`SearchConfig` of one search: the shared settings ``method`` has, then its own.

        Raises:
            PlanError: a per-sparsity setting without ``sparsity``, or values the config refuses.
        """
        given = {k: v for k, v in self.given().items() if k in APPLIES_TO[method]}
        given.update(self.per_method.get(method, SearchSettings()).given())
        for name in ("steps", "save_steps"):
            if isinstance(given.get(name), PerSparsity):
                given[name] = given[name].at(sparsity, f"search[{name!r}]")
        if "save_steps" in given:
            given["save_steps"] = tuple(given["save_steps"])
        try:
            return SearchConfig(method=method, sparsity=sparsity, seed=seed, **given)
        except (TypeError, ValueError) as error:
            raise PlanError(f"search settings for {method}: {error}") from error


def _typed(name: str, value: Any) -> Any:
    """A mapping's value as a field of :class:`SearchSettings`: sparsity-keyed mappings become
    :class:`PerSparsity`."""
    if name in ("steps", "save_steps") and isinstance(value, Mapping):
        return PerSparsity({float(k): (tuple(v) if name == "save_steps" else v) for k, v in value.items()})
    return tuple(value) if name == "save_steps" else value
