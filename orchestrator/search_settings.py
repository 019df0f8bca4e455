"""A grid's search settings: overrides of the methods' own settings shared by the methods they concern, per-method
overrides on top, and settings that differ by sparsity (Tab. 2's steps).

Each method declares the settings it takes (its settings dataclass in ``tamt_core.methods``), so these hold no list
of their own: a setting is known when some registered method takes it. A setting left out keeps the method's own
value (the paper's: Tab. 1, Tab. 2). A shared setting applies to the methods that take it and is ignored by the
others, so one grid can run OMP beside TAMT with ``steps`` set; a per-method setting must be one its method takes.
A per-sparsity setting must name every sparsity it is asked for: a value taken from a neighbouring sparsity would
run another experiment than the grid declares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tamt_core.methods import METHODS
from tamt_core.methods.base import setting_names
from tamt_core.search.config import SearchConfig

from orchestrator.plan import PlanError

T = TypeVar("T")


def takes(method: str) -> tuple[str, ...]:
    """The settings ``method`` takes."""
    return setting_names(METHODS[method].settings)


def known_settings() -> set[str]:
    """Every setting some registered method takes."""
    return {name for method in METHODS for name in takes(method)}


def check_methods(names, what: str) -> None:
    """Every name is a registered method.

    Raises:
        PlanError: naming the unknown ones and the registered ones.
    """
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise PlanError(f"{what} for unknown method(s) {unknown}; choose from {', '.join(METHODS)}")


def check_taken(method: str, names) -> None:
    """Every name is a setting ``method`` takes.

    Raises:
        PlanError: naming the settings it does not take and those it does.
    """
    wrong = sorted(set(names) - set(takes(method)))
    if wrong:
        raise PlanError(f"search setting(s) {wrong} do not apply to {method}; it takes "
                        f"{', '.join(takes(method)) or 'none'}")


@dataclass(frozen=True)
class PerSparsity(Generic[T]):
    """A setting with one value per sparsity, e.g. ``PerSparsity(hparams.TAMT_STEPS)`` (Tab. 2).

    Args:
        values: ``{sparsity: value}``; it must name every sparsity of the grids it is used in.
    """

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


class SearchSettings:
    """Overrides of the methods' settings for a grid's searches, by name (``SearchSettings(steps=90, lr=3e-4)``);
    ``per_method`` maps a method to overrides of its own, laid over the shared ones
    (``{"tamt-kd": SearchSettings(lr=1e-4)}``). A value ``None`` keeps the method's own. Treat it as immutable:
    :meth:`updated` and :meth:`with_method` return new settings.

    Args:
        per_method: ``{method: SearchSettings}``, each laid over the shared settings for its method; every
            setting must be one its method takes.
        **values: shared settings by name, each applied to the methods that take it (their settings dataclasses
            in ``tamt_core.methods`` declare them); a value may be a :class:`PerSparsity`.

    Raises:
        PlanError: a setting no registered method takes, or a per-method setting its method does not take.
    """

    def __init__(self, per_method: Mapping[str, SearchSettings] | None = None, **values: Any) -> None:
        unknown = sorted(set(values) - known_settings())
        if unknown:
            raise PlanError(f"unknown search setting(s) {unknown}; known: {sorted(known_settings())} (or a method "
                            "name mapping to its own settings)")
        per_method = dict(per_method or {})
        check_methods(per_method, "per-method search settings")
        for method, own in per_method.items():
            if not isinstance(own, SearchSettings) or own.per_method:
                raise PlanError(f"the search settings of {method} must be settings without methods of their own, "
                                f"e.g. {{'lr': 1e-4}}; got {own!r}")
            check_taken(method, own.given())
        self._values = {k: v for k, v in values.items() if v is not None}
        self.per_method = per_method

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSettings) and (self._values, self.per_method) == (other._values,
                                                                                          other.per_method)

    def __repr__(self) -> str:
        items = [f"{k}={v!r}" for k, v in self._values.items()]
        return f"SearchSettings({', '.join(items + ([f'per_method={self.per_method!r}'] if self.per_method else []))})"

    @classmethod
    def of(cls, settings: SearchSettings | Mapping[str, Any]) -> SearchSettings:
        """``settings``, or a plain mapping (JSON, ``--search-settings``) read into them: setting names, method
        names mapping to their own settings, and sparsity-keyed mappings for per-sparsity values.

        Raises:
            PlanError: an unknown setting or method, named with the known ones.
        """
        if isinstance(settings, SearchSettings):
            return settings
        if not isinstance(settings, Mapping):
            raise PlanError(f"search settings must be SearchSettings or a mapping, got {settings!r}")
        per_method = {}
        for method in set(settings) & set(METHODS):
            own = settings[method]
            if not isinstance(own, Mapping) or set(own) & set(METHODS):
                raise PlanError(f"search[{method!r}] must map settings to values, e.g. {{'lr': 1e-4}}; got {own!r}")
            check_taken(method, own)
            per_method[method] = cls.of(own)
        shared = {name: _typed(value) for name, value in settings.items() if name not in METHODS}
        return cls(per_method, **shared)

    def given(self) -> dict[str, Any]:
        """The settings set here, without ``per_method``."""
        return dict(self._values)

    def updated(self, **values: Any) -> SearchSettings:
        """These settings with ``values`` laid over the shared ones."""
        return SearchSettings(self.per_method, **{**self._values, **values})

    def with_method(self, method: str, settings: SearchSettings | Mapping[str, Any]) -> SearchSettings:
        """These settings with ``settings`` laid over ``method``'s own (e.g. a tuned TAMT setting)."""
        own = self.per_method.get(method, SearchSettings())
        return SearchSettings({**self.per_method, method: own.updated(**SearchSettings.of(settings).given())},
                              **self._values)

    def config(self, method: str, sparsity: float, seed: int) -> SearchConfig:
        """The :class:`SearchConfig` of one search: the shared settings ``method`` takes, then its own.

        Raises:
            PlanError: a per-sparsity setting without ``sparsity``, or values the method refuses.
        """
        given = {k: v for k, v in self._values.items() if k in takes(method)}
        given.update(self.per_method.get(method, SearchSettings()).given())
        given = {name: value.at(sparsity, f"search[{name!r}]") if isinstance(value, PerSparsity) else value
                 for name, value in given.items()}
        try:
            return SearchConfig.of(method, sparsity, seed, **given)
        except (TypeError, ValueError) as error:
            raise PlanError(f"search settings for {method}: {error}") from error


def _typed(value: Any) -> Any:
    """A mapping's value as a setting: a sparsity-keyed mapping becomes :class:`PerSparsity` (its lists tuples),
    a list a tuple."""
    if isinstance(value, Mapping):
        return PerSparsity({float(k): tuple(v) if isinstance(v, list) else v for k, v in value.items()})
    return tuple(value) if isinstance(value, list) else value
