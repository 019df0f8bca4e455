"""A grid model × method × sparsity × mask seed × fine-tune seed × task (× train size) and its expansion to a plan.

How the grid maps to searches follows the paper (§4.1.3, App. C):

* OMP is deterministic: one search per model × sparsity whatever the mask seeds (its seed is normalised to 0),
  so its fine-tunes over mask seeds collapse to one run id each and run once.
* Random pruning: one search per model × sparsity × mask seed.
* IMP: one run per model × mask seed, to the grid's highest sparsity; it yields every lower multiple of 10 %
  along the way, and each grid sparsity is fine-tuned from that run's mask.
* TAMT-MLM / TAMT-KD: one run per model × sparsity × mask seed (Tab. 2's iterations unless set).

Every check runs when the grid is built, so a malformed grid fails before Ray starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from tamt_core.finetune import FinetuneConfig
from tamt_core.methods.base import METHOD_NAMES, SearchConfig
from tamt_core.tasks import TASKS

from orchestrator.plan import Plan, PlanError
from orchestrator.specs import SPARSITY_DIGITS, FinetuneSpec, SearchSpec

_TRAINING = {"lr", "batch_size", "weight_decay", "block_size", "schedule_steps", "max_grad_norm"}
SEARCH_SETTINGS_BY_METHOD: dict[str, set[str]] = {
    "omp": set(),
    "rand": set(),
    "imp": _TRAINING | {"pruning_interval", "rewind"},
    "tamt-mlm": _TRAINING | {"steps", "save_steps", "threshold_period", "zero_rounding"},
    "tamt-kd": _TRAINING | {"steps", "save_steps", "threshold_period", "zero_rounding", "kd_include_padding"},
}
"""Which :class:`SearchConfig` fields of ``Grid.search`` apply to each method; the others are ignored for it."""

_SEARCH_FIELDS = {f.name for f in fields(SearchConfig)} - {"method", "sparsity", "seed"}
_FINETUNE_FIELDS = {f.name for f in fields(FinetuneConfig)} - {"task", "seed", "model", "data", "mask_hash",
                                                               "train_size"}


@dataclass(frozen=True)
class Grid:
    """The axes of one experiment and the settings shared by its trials.

    Args:
        models: hub ids or directories (``tamt_core.models.BUILTIN_MODEL_NAME`` for the shipped model).
        methods: subset of ``omp``, ``rand``, ``imp``, ``tamt-mlm``, ``tamt-kd``.
        sparsities: fractions in (0, 1).
        mask_seeds, finetune_seeds: non-negative ints.
        tasks: GLUE task names and ``squad``.
        train_sizes: low-data subset sizes (Fig. 7); ``None`` = the whole training set.
        full_model: also fine-tune each model without a mask (the dashed line of Fig. 3).
        pretrain_data: WikiText source for the trained methods (``None`` = built-in smoke corpus).
        task_data: downstream data source (``None`` = built-in smoke task data; ``"hub"`` = the hub datasets).
        search: :class:`SearchConfig` overrides, applied to the methods they concern
            (:data:`SEARCH_SETTINGS_BY_METHOD`); ``steps`` may map sparsity → TAMT iterations like Tab. 2; a
            method name maps to settings for that method alone (``{"tamt-kd": {"lr": 1e-4}}``).
        finetune: :class:`FinetuneConfig` overrides (``lr``, ``batch_size``, ``epochs``, ``eval_every``, ...).
        dev_loss_batches: dev batches for each mask's MLM/KD dev loss (``None`` all, 0 none).
    """

    models: tuple[str, ...]
    methods: tuple[str, ...]
    sparsities: tuple[float, ...]
    mask_seeds: tuple[int, ...]
    finetune_seeds: tuple[int, ...]
    tasks: tuple[str, ...]
    train_sizes: tuple[int | None, ...] = (None,)
    full_model: bool = True
    pretrain_data: str | None = None
    task_data: str | None = None
    search: Mapping[str, Any] = field(default_factory=dict)
    finetune: Mapping[str, Any] = field(default_factory=dict)
    dev_loss_batches: int | None = None

    def __post_init__(self) -> None:
        for name in ("models", "methods", "sparsities", "mask_seeds", "finetune_seeds", "tasks", "train_sizes"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
                raise PlanError(f"grid axis {name} must be a list or tuple, got {values!r}")
            values = tuple(values)
            object.__setattr__(self, name, values)
            mask_axis = name in ("methods", "sparsities", "mask_seeds")
            if not values and not (mask_axis and self.full_model and not (name != "methods" and self.methods)):
                raise PlanError(f"grid axis {name} is empty; give at least one value")
            repeated = sorted({str(v) for v in values if values.count(v) > 1})
            if repeated:
                raise PlanError(f"grid axis {name} repeats {', '.join(repeated)}; list each value once")
        for model in self.models:
            if not isinstance(model, str) or not model.strip():
                raise PlanError(f"model {model!r} is not a hub id or directory; name one, e.g. 'bert-base-uncased'")
        unknown = [m for m in self.methods if m not in METHOD_NAMES]
        if unknown:
            raise PlanError(f"unknown method(s) {', '.join(map(repr, unknown))}; choose from {', '.join(METHOD_NAMES)}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise PlanError(f"unknown task(s) {', '.join(map(repr, unknown))}; choose from {', '.join(TASKS)}")
        for s in self.sparsities:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 < s < 1.0 or math.isnan(s):
                raise PlanError(f"sparsity {s!r} is outside (0, 1); give the fraction of weights zeroed, e.g. 0.7")
        if "imp" in self.methods:
            off = [s for s in self.sparsities if not math.isclose(s * 10, round(s * 10), abs_tol=1e-9)]
            if off:
                raise PlanError(f"IMP prunes 10 % per round, so sparsities {off} cannot come from it; use multiples "
                                "of 0.1 or drop 'imp' from methods")
        for name in ("mask_seeds", "finetune_seeds"):
            bad = [s for s in getattr(self, name) if isinstance(s, bool) or not isinstance(s, int) or s < 0]
            if bad:
                raise PlanError(f"{name} must be non-negative integers, got {bad}")
        bad = [n for n in self.train_sizes if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1)]
        if bad:
            raise PlanError(f"train_sizes must be positive integers or None (whole set), got {bad}")
        unknown = set(self.search) - _SEARCH_FIELDS - set(METHOD_NAMES)
        if unknown:
            raise PlanError(f"unknown search setting(s) {sorted(unknown)}; known: {sorted(_SEARCH_FIELDS)} (or a "
                            "method name mapping to its own settings)")
        for method in set(self.search) & set(METHOD_NAMES):
            own = self.search[method]
            if not isinstance(own, Mapping):
                raise PlanError(f"search[{method!r}] must map settings to values, e.g. {{'lr': 1e-4}}; got {own!r}")
            wrong = set(own) - SEARCH_SETTINGS_BY_METHOD[method]
            if wrong:
                raise PlanError(f"search setting(s) {sorted(wrong)} do not apply to {method}; it takes "
                                f"{sorted(SEARCH_SETTINGS_BY_METHOD[method]) or 'none'}")
        unknown = set(self.finetune) - _FINETUNE_FIELDS
        if unknown:
            raise PlanError(f"unknown fine-tune setting(s) {sorted(unknown)}; known: {sorted(_FINETUNE_FIELDS)}")
        if self.dev_loss_batches is not None and self.dev_loss_batches < 0:
            raise PlanError(f"dev_loss_batches must be ≥ 0 (0 skips dev losses), got {self.dev_loss_batches}")

    def searches(self) -> list[SearchSpec]:
        """One spec per search the grid needs, deduplicated (OMP ignores the mask seed)."""
        out: dict[str, SearchSpec] = {}
        for model in self.models:
            for method in self.methods:
                targets = [max(self.sparsities)] if method == "imp" else list(self.sparsities)
                seeds = (0,) if method == "omp" else self.mask_seeds
                for seed in seeds:
                    for sparsity in targets:
                        spec = SearchSpec(model, self._search_config(method, sparsity, seed), self.pretrain_data,
                                          self.dev_loss_batches)
                        out.setdefault(spec.run_id, spec)
        return list(out.values())

    def _search_config(self, method: str, sparsity: float, seed: int) -> SearchConfig:
        settings = {k: v for k, v in self.search.items() if k in SEARCH_SETTINGS_BY_METHOD[method]}
        settings.update(self.search.get(method, {}))
        steps = settings.get("steps")
        if isinstance(steps, Mapping):
            nearest = min(steps, key=lambda s: abs(s - sparsity))
            settings["steps"] = steps[nearest]
        if "save_steps" in settings:
            settings["save_steps"] = tuple(settings["save_steps"])
        try:
            return SearchConfig(method=method, sparsity=round(sparsity, SPARSITY_DIGITS), seed=seed, **settings)
        except (TypeError, ValueError) as error:
            raise PlanError(f"search settings for {method}: {error}") from error

    def _finetune_spec(self, model: str, task: str, seed: int, train_size: int | None, mask) -> FinetuneSpec:
        try:
            config = FinetuneConfig(task=task, seed=seed, model=model, data=self.task_data, train_size=train_size,
                                    **self.finetune)
        except (TypeError, ValueError) as error:
            raise PlanError(f"fine-tune settings for {task}: {error}") from error
        return FinetuneSpec(config, mask)

    def plan(self) -> Plan:
        """The DAG: every search, then every fine-tune of every (search, sparsity) the grid asks for."""
        plan = Plan()
        for search in self.searches():
            plan.add(search)
            wanted = self.sparsities if search.config.method == "imp" else (search.config.sparsity,)
            for sparsity in wanted:
                mask = search.final_mask(sparsity)
                for task in self.tasks:
                    for train_size in self.train_sizes:
                        for seed in self.finetune_seeds:
                            plan.add(self._finetune_spec(search.model, task, seed, train_size, mask))
        if self.full_model:
            for model in self.models:
                for task in self.tasks:
                    for train_size in self.train_sizes:
                        for seed in self.finetune_seeds:
                            plan.add(self._finetune_spec(model, task, seed, train_size, None))
        plan.validate()
        return plan
