"""A plan: the DAG of mask searches → fine-tunes and measurements that a sweep runs, deduplicated by run id and
validated up front.

A fine-tune depends on the one search that writes its mask (or on nothing: the full model); a similarity trial on
every search whose masks it compares; a dense-model loss on nothing. Plans from several grids or sweeps merge by
run id, so a mask two experiments need is searched once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from tamt_core.ids import earlier_versions

from orchestrator.specs import FinetuneSpec, SearchSpec, Spec, mask_refs


class PlanError(ValueError):
    """The grid or plan is malformed; the message names the fix. Raised before anything runs."""


@dataclass
class Plan:
    """Searches, fine-tunes and measurements (dense-model losses, mask similarities) by run id, in declaration
    order; searches are handed out first when run."""

    searches: dict[str, SearchSpec] = field(default_factory=dict)
    finetunes: dict[str, FinetuneSpec] = field(default_factory=dict)
    measurements: dict[str, Spec] = field(default_factory=dict)
    _earlier: dict[str, frozenset[str]] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, specs: Iterable[Spec]) -> Plan:
        plan = cls()
        for spec in specs:
            plan.add(spec)
        return plan

    def plan(self) -> Plan:
        """A plan is its own declaration, so a sweep preset may list plans beside grids."""
        return self

    def add(self, spec: Spec) -> None:
        self._table(spec).setdefault(spec.run_id, spec)

    def _table(self, spec: Spec) -> dict[str, Spec]:
        if isinstance(spec, SearchSpec):
            return self.searches
        return self.finetunes if isinstance(spec, FinetuneSpec) else self.measurements

    def merge(self, other: Plan) -> Plan:
        merged = Plan(dict(self.searches), dict(self.finetunes), dict(self.measurements))
        for spec in other.specs():
            merged.add(spec)
        return merged

    def __len__(self) -> int:
        return len(self.searches) + len(self.finetunes) + len(self.measurements)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self.searches or run_id in self.finetunes or run_id in self.measurements

    def run_ids(self) -> set[str]:
        return {*self.searches, *self.finetunes, *self.measurements}

    def specs(self) -> list[Spec]:
        return [*self.searches.values(), *self.finetunes.values(), *self.measurements.values()]

    def get(self, run_id: str) -> Spec:
        for table in (self.searches, self.finetunes, self.measurements):
            if run_id in table:
                return table[run_id]
        raise KeyError(run_id)

    def dependencies(self, spec: Spec) -> tuple[str, ...]:
        """Run ids of the searches a trial waits for (empty: it can start at once)."""
        return tuple(dict.fromkeys(ref.search_id for ref in mask_refs(spec)))

    def earlier_ids(self, run_id: str) -> set[str]:
        """The ids this trial had under older versions of the algorithms it depends on (its own, and its masks'
        searches' when they are in the plan): where rows of older code for the same experiment are (stale rows).
        Empty while every version is the first, so it costs nothing until a version is raised; computed once per
        trial (a sweep's start-up asks for the stale rows and for the plan record)."""
        if run_id not in self._earlier:
            spec = self.get(run_id)
            searches = [self.searches[dep] for dep in self.dependencies(spec) if dep in self.searches]
            earlier = set()
            for versions in earlier_versions({spec.algorithm, *(search.algorithm for search in searches)}):
                earlier.add(spec.id_under(versions, {search.run_id: search.id_under(versions) for search in searches}))
            self._earlier[run_id] = frozenset(earlier - {run_id})
        return set(self._earlier[run_id])

    def validate(self, finished: Iterable[str] = ()) -> None:
        """Every mask a trial reads comes from a search in the plan (or already finished) that yields it.

        Raises:
            PlanError: naming the first trial whose mask no search provides, and how to fix the grid.
        """
        finished = set(finished)
        for run_id, spec in [*self.finetunes.items(), *self.measurements.items()]:
            for ref in mask_refs(spec):
                search = self.searches.get(ref.search_id)
                if search is None:
                    if ref.search_id in finished:
                        continue
                    raise PlanError(f"{spec.stage} {run_id} needs a mask of search {ref.search_id}, which is "
                                    "neither in the plan nor finished in the storage; add that search's method to "
                                    "the grid's methods (or its spec to the plan)")
                if (ref.sparsity, ref.step) not in search.yields():
                    raise PlanError(f"{spec.stage} {run_id} asks search {search.run_id} ({search.config.method}) "
                                    f"for a mask at sparsity {ref.sparsity}, step {ref.step}, but that search yields "
                                    f"{list(search.yields())}; take the mask from SearchSpec.final_mask() or add "
                                    "the step to the search's save_steps")

    def counts(self) -> dict[str, Counter]:
        """Trials per stage and method (``full`` for full-model fine-tunes; measurements by kind): what
        ``--dry-run`` prints."""
        return {"search": Counter(spec.config.method for spec in self.searches.values()),
                "finetune": Counter(self.method_of(spec) for spec in self.finetunes.values()),
                "measure": Counter(spec.stage for spec in self.measurements.values())}

    def method_of(self, spec: FinetuneSpec) -> str:
        if spec.mask is None:
            return "full"
        search = self.searches.get(spec.mask.search_id)
        return search.config.method if search is not None else "?"
