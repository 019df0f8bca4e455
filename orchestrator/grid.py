"""A grid model × method × sparsity × mask seed × fine-tune seed × task (× train size) and its expansion to a plan.

How the grid maps to searches follows the paper (§4.1.3, App. C), from what each method declares
(``tamt_core.methods``):

* A method without a seed (OMP, ``seeded = False``) is deterministic: one search per model × sparsity whatever the
  mask seeds (its seed is normalised to 0), so its fine-tunes over mask seeds collapse to one run id each.
* Random pruning, TAMT-MLM, TAMT-KD: one search per model × sparsity × mask seed.
* A method whose one run passes every lower sparsity (IMP, ``yields_lower_sparsities``): one run per model × mask
  seed, to the grid's highest sparsity (or ``imp_until``, so that sweeps share runs); each grid sparsity is
  fine-tuned from that run's mask of it.
* A method that saves masks along a run (TAMT, ``save_steps``): ``finetune_steps`` picks which of them are
  fine-tuned (Fig. 5: every one; Fig. 3: Tab. 2's step of a longer run, as the authors took ``checkpoint-17000``
  of a 2-epoch run).

Every check runs when the grid is built, so a malformed grid fails before Ray starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from tamt_core.finetune import FinetuneConfig
from tamt_core.methods import METHODS
from tamt_core.tasks import TASKS

from orchestrator.plan import Plan, PlanError
from orchestrator.search_settings import PerSparsity, SearchSettings, takes
from orchestrator.specs import SPARSITY_DIGITS, DenseLossSpec, FinetuneSpec, MaskRef, SearchSpec, SimilaritySpec

_FINETUNE_FIELDS = {f.name for f in fields(FinetuneConfig)} - {"task", "seed", "model", "data", "mask_hash",
                                                               "train_size"}


Steps = int | tuple[int, ...]


@dataclass(frozen=True)
class Grid:
    """The axes of one experiment and the settings shared by its trials.

    Args:
        models: hub ids or directories (``tamt_core.models.BUILTIN_MODEL_NAME`` for the shipped model).
        methods: registered methods (``tamt_core.methods.METHODS``: ``omp``, ``rand``, ``imp``, ``tamt-mlm``,
            ``tamt-kd``).
        sparsities: fractions in (0, 1).
        mask_seeds, finetune_seeds: non-negative ints. Every mask is fine-tuned with every fine-tune seed, unless
            ``paired_seeds``.
        paired_seeds: replicates instead of a cross product: the i-th mask seed's masks are fine-tuned with the
            i-th fine-tune seed only (both axes as long), so n seeds cost n fine-tunes per cell, each with its own
            mask; OMP's one mask and the full model take every fine-tune seed.
        tasks: GLUE task names and ``squad``; empty = no fine-tunes (searches and measurements only).
        train_sizes: low-data subset sizes (Fig. 7); ``None`` = the whole training set.
        full_model: also fine-tune each model without a mask (the dashed line of Fig. 3).
        dense_loss: also measure each unpruned model's MLM and KD dev losses (the full-model point of Fig. 1, 4).
        pretrain_data: WikiText source for the trained methods (``None`` = built-in smoke corpus).
        task_data: downstream data source (``None`` = built-in smoke task data; ``"hub"`` = the hub datasets).
        search: :class:`~orchestrator.search_settings.SearchSettings`, shared by the methods they concern and
            per method; ``steps`` and ``save_steps`` may be :class:`~orchestrator.search_settings.PerSparsity`
            like Tab. 2. A plain mapping is read into them (``{"steps": 90, "tamt-kd": {"lr": 1e-4}}``).
        finetune: :class:`FinetuneConfig` overrides (``lr``, ``batch_size``, ``epochs``, ``eval_every``, ...).
        dev_loss_batches: dev batches for each mask's MLM/KD dev loss (``None`` all, 0 none).
        imp_until: the sparsity every IMP run prunes to (default: the grid's highest). One run yields all lower
            multiples of 10 %, so sweeps that set the same value share their IMP runs (the paper's: 0.9, Tab. 2).
        finetune_steps: which saved TAMT masks are fine-tuned: ``None`` = each run's last; a step or steps for
            every sparsity; or per sparsity (``PerSparsity(hparams.TAMT_STEPS)``: Tab. 2's; a mapping is read as
            one).
        notes: what a reader of this grid's results should know (settings measured on other tasks, say); the
            dry run prints them, and so does a sweep when it ends. They plan nothing.
    """

    models: tuple[str, ...]
    methods: tuple[str, ...]
    sparsities: tuple[float, ...]
    mask_seeds: tuple[int, ...]
    finetune_seeds: tuple[int, ...]
    tasks: tuple[str, ...]
    train_sizes: tuple[int | None, ...] = (None,)
    full_model: bool = True
    dense_loss: bool = False
    pretrain_data: str | None = None
    task_data: str | None = None
    search: SearchSettings = field(default_factory=SearchSettings)
    finetune: Mapping[str, Any] = field(default_factory=dict)
    dev_loss_batches: int | None = None
    imp_until: float | None = None
    finetune_steps: Steps | PerSparsity[Steps] | None = None
    paired_seeds: bool = False
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "notes", tuple(self.notes))
        for name in ("models", "methods", "sparsities", "mask_seeds", "finetune_seeds", "tasks", "train_sizes"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
                raise PlanError(f"grid axis {name} must be a list or tuple, got {values!r}")
            values = tuple(values)
            object.__setattr__(self, name, values)
            repeated = sorted({str(v) for v in values if values.count(v) > 1})
            if repeated:
                raise PlanError(f"grid axis {name} repeats {', '.join(repeated)}; list each value once")
        needed = ["models"]
        if self.methods:
            needed += ["sparsities", "mask_seeds"]
        if self.tasks:
            needed += ["finetune_seeds", "train_sizes"]
        for name in needed:
            if not getattr(self, name):
                raise PlanError(f"grid axis {name} is empty; give at least one value")
        if not self.methods and not (self.tasks and self.full_model) and not self.dense_loss:
            raise PlanError("the grid plans nothing: give methods, or tasks with full_model=True, or dense_loss=True")
        for model in self.models:
            if not isinstance(model, str) or not model.strip():
                raise PlanError(f"model {model!r} is not a hub id or directory; name one, e.g. 'bert-base-uncased'")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise PlanError(f"unknown method(s) {', '.join(map(repr, unknown))}; choose from {', '.join(METHODS)}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise PlanError(f"unknown task(s) {', '.join(map(repr, unknown))}; choose from {', '.join(TASKS)}")
        for s in self.sparsities:
            if not _is_fraction(s):
                raise PlanError(f"sparsity {s!r} is outside (0, 1); give the fraction of weights zeroed, e.g. 0.7")
        if self.imp_until is not None:
            if not _is_fraction(self.imp_until):
                raise PlanError(f"imp_until must be a fraction in (0, 1), got {self.imp_until!r}")
            if self.sparsities and self.imp_until < max(self.sparsities):
                raise PlanError(f"imp_until {self.imp_until} is below the grid's highest sparsity "
                                f"{max(self.sparsities)}; IMP cannot yield masks past the sparsity it stops at")
        if self.paired_seeds and self.methods and self.tasks and len(self.mask_seeds) != len(self.finetune_seeds):
            raise PlanError(f"paired_seeds pairs the i-th mask seed with the i-th fine-tune seed, but there are "
                            f"{len(self.mask_seeds)} mask seeds and {len(self.finetune_seeds)} fine-tune seeds; give "
                            "as many of each, or cross them (paired_seeds=False)")
        for name in ("mask_seeds", "finetune_seeds"):
            bad = [s for s in getattr(self, name) if isinstance(s, bool) or not isinstance(s, int) or s < 0]
            if bad:
                raise PlanError(f"{name} must be non-negative integers, got {bad}")
        bad = [n for n in self.train_sizes
               if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1)]
        if bad:
            raise PlanError(f"train_sizes must be positive integers or None (whole set), got {bad}")
        object.__setattr__(self, "search", SearchSettings.of(self.search))
        if isinstance(self.finetune_steps, Mapping):
            object.__setattr__(self, "finetune_steps", PerSparsity(dict(self.finetune_steps)))
        unknown = set(self.finetune) - _FINETUNE_FIELDS
        if unknown:
            raise PlanError(f"unknown fine-tune setting(s) {sorted(unknown)}; known: {sorted(_FINETUNE_FIELDS)}")
        if self.dev_loss_batches is not None and self.dev_loss_batches < 0:
            raise PlanError(f"dev_loss_batches must be ≥ 0 (0 skips dev losses), got {self.dev_loss_batches}")
        if self.dense_loss and self.dev_loss_batches == 0:
            raise PlanError("dense_loss measures dev losses, but dev_loss_batches is 0 (skip them); give a number of "
                            "batches or None (the whole dev set)")
        for method in self.methods:
            self._check_sparsities(method)

    def _check_sparsities(self, method: str) -> None:
        """Every sparsity of the grid comes out of ``method``'s searches (IMP: of its one run to ``imp_until``)."""
        for run_sparsity in self._search_sparsities(method):
            try:
                config = self.search.config(method, round(run_sparsity, SPARSITY_DIGITS), 0)
            except PlanError as error:
                raise PlanError(f"{error}; change the grid's sparsities or drop {method!r} from methods") from error
            if METHODS[method].yields_lower_sparsities:
                passed = sorted({round(s, SPARSITY_DIGITS) for s, _ in METHODS[method].yields(config)})
                off = [s for s in self.sparsities if round(s, SPARSITY_DIGITS) not in passed]
                if off:
                    raise PlanError(f"one {method} run to {run_sparsity} yields the masks of sparsities {passed}, "
                                    f"so sparsities {off} cannot come from it; use those or drop {method!r} from "
                                    "methods")

    # --- expansion -------------------------------------------------------------------------------------------

    def searches(self) -> list[SearchSpec]:
        """One spec per search the grid needs, deduplicated (OMP ignores the mask seed)."""
        out: dict[str, SearchSpec] = {}
        for model in self.models:
            for method in self.methods:
                seeds = self.mask_seeds if METHODS[method].seeded else (0,)
                for seed in seeds:
                    for sparsity in self._search_sparsities(method):
                        config = self.search.config(method, round(sparsity, SPARSITY_DIGITS), seed)
                        spec = SearchSpec(model, config, self.pretrain_data, self.dev_loss_batches)
                        out.setdefault(spec.run_id, spec)
        return list(out.values())

    def _search_sparsities(self, method: str) -> list[float]:
        if METHODS[method].yields_lower_sparsities:
            return [max(self.sparsities) if self.imp_until is None else self.imp_until]
        return list(self.sparsities)

    def masks(self) -> list[tuple[SearchSpec, MaskRef]]:
        """Every mask the grid studies (fine-tunes, compares): per search, the masks of the grid's sparsities at
        the steps ``finetune_steps`` picks.

        Raises:
            PlanError: a picked step is not one the search saves.
        """
        out = []
        for search in self.searches():
            method = search.config.method
            chooses_steps = "save_steps" in takes(method)  # finetune_steps picks among the steps it saves
            wanted = self.sparsities if METHODS[method].yields_lower_sparsities else (search.config.sparsity,)
            for sparsity in wanted:
                final = search.final_mask(sparsity)
                steps = self._steps_to_finetune(sparsity) if chooses_steps else None
                if steps is None:
                    out.append((search, final))
                    continue
                saved = {step for s, step in search.yields() if s == final.sparsity}
                missing = sorted(set(steps) - saved)
                if missing:
                    raise PlanError(f"finetune_steps asks the {method} run at sparsity {sparsity} for steps {missing}, "
                                    f"but it saves {sorted(saved)}; add them to search['save_steps'] (and make "
                                    "'steps' reach them)")
                out += [(search, MaskRef(search.run_id, final.sparsity, step)) for step in steps]
        return out

    def _steps_to_finetune(self, sparsity: float) -> tuple[int, ...] | None:
        steps = self.finetune_steps
        if isinstance(steps, PerSparsity):
            steps = steps.at(sparsity, "finetune_steps")
        if steps is None:
            return None
        return (steps,) if isinstance(steps, int) else tuple(steps)

    def _finetune_spec(self, model: str, task: str, seed: int, train_size: int | None, mask) -> FinetuneSpec:
        try:
            config = FinetuneConfig(task=task, seed=seed, model=model, data=self.task_data, train_size=train_size,
                                    **self.finetune)
        except (TypeError, ValueError) as error:
            raise PlanError(f"fine-tune settings for {task}: {error}") from error
        return FinetuneSpec(config, mask)

    def _finetunes(self, model: str, mask: MaskRef | None, seeds: tuple[int, ...] | None = None
                   ) -> list[FinetuneSpec]:
        return [self._finetune_spec(model, task, seed, train_size, mask)
                for task in self.tasks for train_size in self.train_sizes for seed in seeds or self.finetune_seeds]

    def _finetune_seeds_of(self, search: SearchSpec) -> tuple[int, ...]:
        """The fine-tune seeds a search's masks get: all of them, or with ``paired_seeds`` its mask seed's own."""
        if not self.paired_seeds or not METHODS[search.config.method].seeded:
            return self.finetune_seeds
        return (self.finetune_seeds[self.mask_seeds.index(search.config.seed)],)

    def plan(self) -> Plan:
        """The DAG: every search, every fine-tune of every mask the grid picks, the full models and dense losses."""
        plan = Plan.of(self.searches())
        for search, mask in self.masks():
            for spec in self._finetunes(search.model, mask, self._finetune_seeds_of(search)):
                plan.add(spec)
        for model in self.models:
            if self.full_model:
                for spec in self._finetunes(model, None):
                    plan.add(spec)
            if self.dense_loss:
                plan.add(DenseLossSpec(model, self.pretrain_data, self.dev_loss_batches))
        plan.validate()
        return plan


def _is_fraction(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and not math.isnan(value)
            and 0.0 < value < 1.0)


@dataclass(frozen=True)
class MaskSimilarity:
    """Similarity trials over the masks some grids study (§4.2.4, Fig. 6, 15), per model × sparsity.

    Without a ``reference`` every pair of masks is compared (Fig. 6 right: OMP and the seeds of each method);
    with ``reference="omp"`` each mask is compared to the OMP mask of its sparsity (Fig. 6 left: distance from
    OMP along training). The grids' searches join the plan; their fine-tunes only if the grids have tasks.

    Args:
        grids: the grids whose masks are compared (one grid or several); masks of one model and sparsity form a
            group.
        reference: a method (``"omp"``) whose one mask per group every other mask is compared to; ``None`` =
            every pair.
    """

    grids: tuple[Grid, ...]
    reference: str | None = None

    def __post_init__(self) -> None:
        grids = (self.grids,) if isinstance(self.grids, Grid) else tuple(self.grids)
        object.__setattr__(self, "grids", grids)
        if not grids:
            raise PlanError("MaskSimilarity needs at least one grid whose masks it compares")
        if self.reference is not None and self.reference not in METHODS:
            raise PlanError(f"reference {self.reference!r} is not a method; choose from {', '.join(METHODS)}")

    def plan(self) -> Plan:
        plan = Plan()
        groups: dict[tuple[str, float], dict[MaskRef, str]] = {}
        for grid in self.grids:
            plan = plan.merge(grid.plan())
            for search, mask in grid.masks():
                groups.setdefault((search.model, mask.sparsity), {})[mask] = search.config.method
        for (model, sparsity), masks in groups.items():
            reference = None
            if self.reference is not None:
                found = [mask for mask, method in masks.items() if method == self.reference]
                if len(found) != 1:
                    raise PlanError(f"the grids give {len(found)} {self.reference} masks of {model} at sparsity "
                                    f"{sparsity}; the reference must be exactly one: add a grid with "
                                    f"methods=({self.reference!r},) at that sparsity")
                reference = found[0]
            others = tuple(mask for mask in masks if mask != reference)
            if len(others) < (1 if reference is not None else 2):
                continue  # nothing to compare at this sparsity
            try:
                plan.add(SimilaritySpec(model, sparsity, others, reference))
            except ValueError as error:
                raise PlanError(f"similarity of {model} at {sparsity}: {error}") from error
        plan.validate()
        return plan
