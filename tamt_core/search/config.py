"""A search's configuration: the method, the sparsity, the seed, and the method's own settings.

The settings are the method's own frozen dataclass (``tamt_core.methods``: each method declares what it takes,
with the paper's defaults), so a config holds only what applies to its method and refuses anything else. A config
is data: :meth:`SearchConfig.run_id` is the content hash that names the search everywhere (``tamt search --out``'s
directory, a sweep's trial, the results table).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tamt_core import hparams, ids
from tamt_core.methods import METHODS
from tamt_core.methods.base import SearchMethod, setting_names

FIRST_RECORD: dict[str, Any] = {
    "steps": None, "lr": None, "batch_size": None, "weight_decay": None, "block_size": 512, "schedule_steps": None,
    "threshold_period": 1, "save_steps": [], "pruning_interval": hparams.IMP_PRUNING_INTERVAL, "rewind": True,
    "zero_rounding": "floor", "kd_include_padding": False, "max_grad_norm": 1.0, "alpha": hparams.ALPHA,
    "phi": hparams.PHI, "adam_epsilon": None, "kd_sequence_mean": False, "precision": None,
}
"""The config record the first search ids were computed from: one record that held every method's settings, each
at its default where the method had no such setting. The methods that existed then (``first_record``) keep these
fields in their ids, so existing stores keep their ids; a method added later hashes only its own settings."""
ADDED_LATER = ("alpha", "phi", "adam_epsilon", "kd_sequence_mean", "precision")
"""Fields added to that record after ids were first computed: at their first value they stay out of the id, so a
search planned before they existed keeps its id."""


def search_method(name: str) -> SearchMethod:
    """The registered method ``name``.

    Raises:
        ValueError: no such method; names the registered ones.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def method_settings(method: SearchMethod, given: dict[str, Any]) -> Any:
    """``method``'s settings dataclass with ``given`` laid over its defaults.

    Raises:
        SettingError: a setting ``method`` does not take (named, with what it takes) or a value it refuses.
    """
    takes = setting_names(method.settings)
    foreign = sorted(set(given) - set(takes))
    if foreign:
        why = (f"; it takes {', '.join(takes)}" if takes else
               f": {method.name} has none" + (" (one-shot: it trains nothing)" if method.objective is None else ""))
        raise hparams.SettingError(foreign[0], f"search setting(s) {foreign} do not apply to {method.name}{why}")
    if "save_steps" in given:
        given = {**given, "save_steps": tuple(given["save_steps"])}
    return method.settings(**given)


@dataclass(frozen=True)
class SearchConfig:
    """Everything that determines a search run.

    Args:
        method: a registered method (``tamt_core.methods.METHODS``: ``omp``, ``rand``, ``imp``, ``tamt-mlm``,
            ``tamt-kd``).
        sparsity: fraction of each masked matrix set to zero, in [0, 1). For IMP, the last sparsity reached.
        seed: seeds the random mask, the data order and the MLM corruption.
        settings: the method's settings (its own dataclass); ``None`` takes its defaults, the paper's. Build a
            config from keyword settings with :meth:`of`.
    """

    method: str
    sparsity: float
    seed: int = 0
    settings: Any = None

    def __post_init__(self) -> None:
        method = search_method(self.method)
        if not (isinstance(self.sparsity, (int, float)) and 0.0 <= self.sparsity < 1.0):
            raise ValueError(f"sparsity must be a fraction in [0, 1) (0.7 = 70 % of weights zeroed), "
                             f"got {self.sparsity!r}")
        if self.settings is None:
            object.__setattr__(self, "settings", method.settings())
        elif not isinstance(self.settings, method.settings):
            raise TypeError(f"{self.method} takes {method.settings.__name__}, got {type(self.settings).__name__}")
        method.check(self)

    @classmethod
    def of(cls, method: str, sparsity: float, seed: int = 0, **settings: Any) -> SearchConfig:
        """A config from keyword settings (``SearchConfig.of("tamt-kd", 0.7, seed=1, lr=1e-4)``).

        Raises:
            ValueError, SettingError: an unknown method, a setting the method does not take, a value out of range.
        """
        return cls(method, sparsity, seed, method_settings(search_method(method), settings))

    @property
    def search_method(self) -> SearchMethod:
        return METHODS[self.method]

    @property
    def objective(self) -> str | None:
        """The pre-training loss the method trains with (``mlm``, ``kd``), ``None`` for a one-shot method."""
        return self.search_method.objective

    def given(self) -> dict[str, Any]:
        """The settings, by name (tuples as lists: JSON-ready)."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in asdict(self.settings).items()}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields: method, sparsity, seed and the method's settings (mask metadata, the table)."""
        return {"method": self.method, "sparsity": self.sparsity, "seed": self.seed, **self.given()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        """Inverse of :meth:`to_dict`; also reads a record of the first layout, which listed every method's
        settings (those the method lacks must hold their :data:`FIRST_RECORD` value)."""
        d = dict(d)
        method = search_method(d.pop("method"))
        sparsity, seed = d.pop("sparsity"), d.pop("seed", 0)
        takes = set(setting_names(method.settings))
        stray = sorted(k for k, v in d.items() if k not in takes and not (k in FIRST_RECORD and FIRST_RECORD[k] == v))
        if stray:
            raise ValueError(f"a {method.name} search config has no settings {stray}")
        return cls.of(method.name, sparsity, seed, **{k: v for k, v in d.items() if k in takes})

    def identity(self) -> dict[str, Any]:
        """What the run id hashes: :meth:`to_dict`, laid over :data:`FIRST_RECORD` for the methods that existed when
        ids were first computed, without the :data:`ADDED_LATER` fields at their first values."""
        record = self.to_dict()
        if not self.search_method.first_record:
            return record
        record = {**FIRST_RECORD, **record}
        return {k: v for k, v in record.items() if not (k in ADDED_LATER and v == FIRST_RECORD[k])}

    def run_id(self, model: str, data: str | None, versions: ids.Versions | None = None) -> str:
        """The id of this search on ``model`` with pre-training data ``data`` (``None``: the built-in corpus): the
        sweep's run id and the ``tamt search`` directory's are this one id (:func:`tamt_core.ids.run_id`, under
        the code's algorithm versions or ``versions``)."""
        return ids.run_id({"stage": "search", "model": model, "data": data, "config": self.identity()}, self.method,
                          versions)
