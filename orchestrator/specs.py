"""Trials as data: a mask search and a fine-tune are frozen dataclasses whose content hash is their run id.

Equal specs have equal ids, so a sweep recognises a trial it has already run (its row is in the results table) and
never runs it twice; a rerun resumes unfinished trials in the run directory named by the id. A fine-tune names the
mask it needs by the search's run id plus the (sparsity, step) of the mask within that search, so the plan is a DAG
whose edges are plain data too.

The specs wrap ``tamt_core``'s own configurations (:class:`SearchConfig`, :class:`FinetuneConfig`), which validate
every field on construction; this module adds only what a sweep needs on top: the model, the data source and the
edge from a fine-tune to its mask.

Every spec also has its id under other algorithm versions (``id_under``): the id it had under older code, which is
how a sweep recognises the rows of its trials that older code wrote (stale rows, :meth:`Plan.earlier_ids`), and its
*cell* (:func:`cell_id`), the id under the first versions, which every row records so that the analysis can tell
old and new results of one experiment apart without importing this code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tamt_core.finetune import FinetuneConfig
from tamt_core.ids import FIRST_VERSION, Versions, algorithm_versions, first_versions, run_id
from tamt_core.search.config import SearchConfig

SPARSITY_DIGITS = 4
"""Sparsities are compared and hashed rounded to this many digits (IMP yields 3/10, a grid may say 0.3)."""


@dataclass(frozen=True)
class SearchSpec:
    """One subnetwork search: ``config`` run on ``model`` with pre-training data ``data``.

    ``model``/``data`` are what ``tamt_core`` accepts: a hub id or a directory, ``None`` data = the built-in smoke
    corpus. One search may yield several masks (IMP: one per 10 %; TAMT: one per saved step), see :meth:`yields`.

    ``dev_loss_batches`` (how many dev batches measure each mask's MLM and KD losses, ``None`` = the whole dev
    set, 0 = skip) is an evaluation setting, not part of the search, so it is left out of the run id: two sweeps
    that measure differently still share the mask.
    """

    model: str
    config: SearchConfig
    data: str | None = None
    dev_loss_batches: int | None = field(default=None, compare=False)

    stage = "search"

    def __post_init__(self) -> None:
        rounded = round(self.config.sparsity, SPARSITY_DIGITS)  # 0.1 + 0.2 and 0.3 are the same search
        if rounded != self.config.sparsity:
            object.__setattr__(self, "config", replace(self.config, sparsity=rounded))

    @property
    def run_id(self) -> str:
        return self.config.run_id(self.model, self.data)

    def id_under(self, versions: Versions | None = None, search_ids: Mapping[str, str] | None = None) -> str:
        """The run id under algorithm ``versions`` (``search_ids`` is for the specs that read masks)."""
        return self.config.run_id(self.model, self.data, versions)

    @property
    def algorithm(self) -> str:
        """The algorithm (:func:`tamt_core.ids.algorithm_versions`) whose version this trial's result depends on."""
        return self.config.method

    def yields(self) -> tuple[tuple[float, int], ...]:
        """(sparsity, step) of every mask the search writes, in order, as its method declares them."""
        return tuple((round(sparsity, SPARSITY_DIGITS), step)
                     for sparsity, step in self.config.search_method.yields(self.config))

    def final_mask(self, sparsity: float | None = None) -> MaskRef:
        """The last mask of ``sparsity`` (default: the search's own) the search yields."""
        wanted = round(self.config.sparsity if sparsity is None else sparsity, SPARSITY_DIGITS)
        steps = [step for s, step in self.yields() if s == wanted]
        if not steps:
            raise ValueError(f"{self.config.method} search {self.run_id} yields no mask of sparsity {wanted}")
        return MaskRef(self.run_id, wanted, max(steps))

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "model": self.model, "data": self.data, "config": self.config.to_dict(),
                "dev_loss_batches": self.dev_loss_batches}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpec:
        return cls(d["model"], SearchConfig.from_dict(d["config"]), d.get("data"), d.get("dev_loss_batches"))


@dataclass(frozen=True)
class MaskRef:
    """The edge of the DAG: which search, and which of its masks (sparsity, training step)."""

    search_id: str
    sparsity: float
    step: int

    def to_dict(self) -> dict[str, Any]:
        return {"search_id": self.search_id, "sparsity": self.sparsity, "step": self.step}

    def renamed(self, search_ids: Mapping[str, str] | None) -> MaskRef:
        """This mask with its search named by ``search_ids`` (today's id → the id under other versions)."""
        return replace(self, search_id=(search_ids or {}).get(self.search_id, self.search_id))


@dataclass(frozen=True)
class FinetuneSpec:
    """One fine-tune of a subnetwork (``mask``) or of the full model (``mask=None``).

    ``config`` is ``tamt_core``'s :class:`FinetuneConfig` with ``mask_hash=None``: the mask's content hash is only
    known once the search has run, so the edge ``mask`` stands for it in the run id, and the trial fills the hash in.
    """

    config: FinetuneConfig
    mask: MaskRef | None = None

    stage = "finetune"

    def __post_init__(self) -> None:
        if self.config.mask_hash is not None:
            raise ValueError("a FinetuneSpec names its mask by MaskRef; leave config.mask_hash None")

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def run_id(self) -> str:
        return self.id_under()

    def id_under(self, versions: Versions | None = None, search_ids: Mapping[str, str] | None = None) -> str:
        """The run id under algorithm ``versions``, its mask's search named as ``search_ids`` maps it."""
        mask = None if self.mask is None else self.mask.renamed(search_ids).to_dict()
        return run_id({"stage": self.stage, "mask": mask, "config": self.config.to_dict()}, self.algorithm, versions)

    algorithm = "finetune"

    def with_mask_hash(self, mask_hash: str | None) -> FinetuneConfig:
        return replace(self.config, mask_hash=mask_hash)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "config": self.config.to_dict(),
                "mask": None if self.mask is None else self.mask.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneSpec:
        return cls(FinetuneConfig(**d["config"]), None if d["mask"] is None else MaskRef(**d["mask"]))


@dataclass(frozen=True)
class DenseLossSpec:
    """The MLM and KD dev losses of the unpruned model: the full-model point of Fig. 1 and 4.

    Measured exactly as each mask's losses in its search trial (``tamt_core.subnetwork.pretrain_losses``), so here
    ``dev_loss_batches`` is what the trial computes and is part of the run id.
    """

    model: str
    data: str | None = None
    dev_loss_batches: int | None = None

    stage = "dense-loss"

    @property
    def run_id(self) -> str:
        return self.id_under()

    def id_under(self, versions: Versions | None = None, search_ids: Mapping[str, str] | None = None) -> str:
        return run_id(self.to_dict(), self.algorithm, versions)

    algorithm = "dense-loss"

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "model": self.model, "data": self.data, "dev_loss_batches": self.dev_loss_batches}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DenseLossSpec:
        return cls(d["model"], d.get("data"), d.get("dev_loss_batches"))


@dataclass(frozen=True)
class SimilaritySpec:
    """Similarity of binary masks of one model and sparsity (§4.2.4: mean per-matrix IoU of the kept sets).

    With a ``reference`` (Fig. 6 left: the OMP mask), each mask is compared to it; without, every pair of ``masks``
    is compared (Fig. 6 right, Fig. 15). The trial waits for every search that writes one of the masks.
    """

    model: str
    sparsity: float
    masks: tuple[MaskRef, ...]
    reference: MaskRef | None = None

    stage = "similarity"

    def __post_init__(self) -> None:
        object.__setattr__(self, "masks", tuple(self.masks))
        refs = [*self.masks, *([self.reference] if self.reference is not None else [])]
        if len(set(refs)) != len(refs):
            raise ValueError("a similarity trial lists each mask once (the reference not among the others)")
        if len(refs) < 2:
            raise ValueError("a similarity trial needs at least two masks")
        off = sorted({r.sparsity for r in refs} - {self.sparsity})
        if off:
            raise ValueError(f"similarity of sparsity {self.sparsity} got masks of sparsity {off}; compare masks of "
                             "one sparsity")

    @property
    def run_id(self) -> str:
        return self.id_under()

    def id_under(self, versions: Versions | None = None, search_ids: Mapping[str, str] | None = None) -> str:
        """The run id under algorithm ``versions``, each mask's search named as ``search_ids`` maps it."""
        renamed = SimilaritySpec(self.model, self.sparsity, tuple(m.renamed(search_ids) for m in self.masks),
                                 None if self.reference is None else self.reference.renamed(search_ids))
        return run_id(renamed.to_dict(), self.algorithm, versions)

    algorithm = "similarity"

    def pairs(self) -> list[tuple[MaskRef, MaskRef]]:
        """The compared pairs, in a fixed order: (reference, mask) for each mask, or every unordered pair."""
        if self.reference is not None:
            return [(self.reference, mask) for mask in self.masks]
        return [(a, b) for i, a in enumerate(self.masks) for b in self.masks[i + 1:]]

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "model": self.model, "sparsity": self.sparsity,
                "masks": [m.to_dict() for m in self.masks],
                "reference": None if self.reference is None else self.reference.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimilaritySpec:
        return cls(d["model"], d["sparsity"], tuple(MaskRef(**m) for m in d["masks"]),
                   None if d["reference"] is None else MaskRef(**d["reference"]))


Spec = SearchSpec | FinetuneSpec | DenseLossSpec | SimilaritySpec
STAGES: dict[str, type] = {"search": SearchSpec, "finetune": FinetuneSpec, "dense-loss": DenseLossSpec,
                           "similarity": SimilaritySpec}


def spec_from_dict(d: dict[str, Any]) -> Spec:
    """Inverse of ``to_dict`` for any stage (what a Ray trial receives as its config)."""
    return STAGES[d["stage"]].from_dict(d)


def mask_refs(spec: Spec) -> tuple[MaskRef, ...]:
    """The masks a trial reads: its DAG edges (one search per mask)."""
    if isinstance(spec, FinetuneSpec):
        return () if spec.mask is None else (spec.mask,)
    if isinstance(spec, SimilaritySpec):
        return (*spec.masks, *([spec.reference] if spec.reference is not None else []))
    return ()


def cell_id(spec: Spec, search_cells: Mapping[str, str]) -> str:
    """The id of ``spec`` with every algorithm at its first version, its masks' searches named by their own cells
    (``search_cells``: search run id → that search's cell): equal for the runs of one experiment under any code."""
    return spec.id_under(first_versions(), search_cells)


def lineage(spec: Spec, search_rows: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, int], str]:
    """What a row records of the code behind it: the version of every algorithm its result depends on (its own and,
    for a trial that reads masks, their searches'), and its :func:`cell_id`. ``search_rows`` are the rows of the
    searches of its masks (``cell_id`` and ``algorithm_versions`` absent from rows written before both existed:
    their cell is their run id, their versions the first)."""
    versions = {spec.algorithm: algorithm_versions()[spec.algorithm]}
    cells = {}
    for search_id, row in search_rows.items():
        versions.update(dict(row.get("algorithm_versions") or {row["method"]: FIRST_VERSION}))
        cells[search_id] = row.get("cell_id") or search_id
    return versions, cell_id(spec, cells)
