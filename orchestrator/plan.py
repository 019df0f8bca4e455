"""A plan: the DAG of mask searches → fine-tunes that a sweep runs, deduplicated by run id and validated up front.

A fine-tune depends on exactly one search (the one that writes its mask) or on nothing (full model). Plans from
several grids or sweeps merge by run id, so a mask two experiments need is searched once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from orchestrator.specs import FinetuneSpec, SearchSpec, Spec


class PlanError(ValueError):
    """The grid or plan is malformed; the message names the fix. Raised before anything runs."""


@dataclass
class Plan:
    """Searches and fine-tunes by run id, in declaration order (searches first when run)."""

    searches: dict[str, SearchSpec] = field(default_factory=dict)
    finetunes: dict[str, FinetuneSpec] = field(default_factory=dict)

    @classmethod
    def of(cls, specs: Iterable[Spec]) -> Plan:
        plan = cls()
        for spec in specs:
            plan.add(spec)
        return plan

    def add(self, spec: Spec) -> None:
        table = self.searches if isinstance(spec, SearchSpec) else self.finetunes
        table.setdefault(spec.run_id, spec)

    def merge(self, other: Plan) -> Plan:
        merged = Plan(dict(self.searches), dict(self.finetunes))
        for spec in [*other.searches.values(), *other.finetunes.values()]:
            merged.add(spec)
        return merged

    def __len__(self) -> int:
        return len(self.searches) + len(self.finetunes)

    def specs(self) -> list[Spec]:
        return [*self.searches.values(), *self.finetunes.values()]

    def get(self, run_id: str) -> Spec:
        return self.searches.get(run_id) or self.finetunes[run_id]

    def dependency(self, spec: Spec) -> str | None:
        """Run id of the search a fine-tune waits for (``None``: nothing to wait for)."""
        return spec.mask.search_id if isinstance(spec, FinetuneSpec) and spec.mask is not None else None

    def validate(self, finished: Iterable[str] = ()) -> None:
        """Every fine-tune's mask comes from a search in the plan (or already finished) that yields it.

        Raises:
            PlanError: naming the first fine-tune whose mask no search provides, and how to fix the grid.
        """
        finished = set(finished)
        for run_id, spec in self.finetunes.items():
            if spec.mask is None:
                continue
            search = self.searches.get(spec.mask.search_id)
            if search is None:
                if spec.mask.search_id in finished:
                    continue
                raise PlanError(f"fine-tune {run_id} ({spec.config.task}, seed {spec.config.seed}) needs a mask of "
                                f"search {spec.mask.search_id}, which is neither in the plan nor finished in the "
                                "storage; add that search's method to the grid's methods (or its spec to the plan)")
            if (spec.mask.sparsity, spec.mask.step) not in search.yields():
                raise PlanError(f"fine-tune {run_id} asks search {search.run_id} ({search.config.method}) for a "
                                f"mask at sparsity {spec.mask.sparsity}, step {spec.mask.step}, but that search "
                                f"yields {list(search.yields())}; take the mask from SearchSpec.final_mask()")

    def counts(self) -> dict[str, Counter]:
        """Trials per stage and method (``full`` for full-model fine-tunes): what ``--dry-run`` prints."""
        searches = Counter(spec.config.method for spec in self.searches.values())
        finetunes = Counter(self.method_of(spec) for spec in self.finetunes.values())
        return {"search": searches, "finetune": finetunes}

    def method_of(self, spec: FinetuneSpec) -> str:
        if spec.mask is None:
            return "full"
        search = self.searches.get(spec.mask.search_id)
        return search.config.method if search is not None else "?"
