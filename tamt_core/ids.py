"""Run ids: equal runs get equal ids, so a run is recognised (and resumed, or reused) wherever it is asked for.

Every id of the project, whatever the run (a search, a fine-tune, a dense-model dev loss, a mask similarity; in a
sweep or from the ``tamt`` command line), is :func:`run_id` of the run's canonical payload and of the algorithm that
computes it. :func:`algorithm_versions` is the one table of those algorithms' versions: each search method declares
its own ``version`` in its module (``tamt_core.methods``), and :data:`STAGE_VERSIONS` holds the stages that are
not searches. Raise a version when a change alters what that method or stage computes (a fix to its loss, its
threshold search, its loop): every run id it reaches becomes new, so a sweep runs those trials again instead of
reusing rows of the old code (which stay in the table under their old ids, their ``versions`` column naming the
version). A search's id enters the ids of the fine-tunes of its masks, so raising a method's version renews its
searches and their fine-tunes, and nothing else.

Version 1 is the code from before versions existed: it leaves the payload as it was, so the ids, and the rows of
existing stores, are unchanged.

A run's *cell* is what it computes whatever the code's versions: its id with every algorithm at
:data:`FIRST_VERSION` (:func:`first_versions`). Rows of one cell under different versions are the same experiment
run by older and newer code; the older ones are *stale* (:func:`earlier_versions` enumerates the versions a cell
may have been run under before).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping
from typing import Any

FIRST_VERSION = 1
STAGE_VERSIONS: dict[str, int] = {
    "finetune": 1,    # tamt_core/finetune/, tasks.py, metrics.py, data/squad.py
    "dense-loss": 1,  # tamt_core/subnetwork.pretrain_losses on the unpruned model
    "similarity": 1,  # tamt_core/masks/files.similarity
}
"""Stage → version, for the stages that are not searches."""


def algorithm_versions() -> dict[str, int]:
    """Algorithm → version: every registered search method's own ``version`` and :data:`STAGE_VERSIONS`. A
    search's row also holds its masks' pre-training dev losses (``tamt_core.subnetwork.pretrain_losses``), so a
    change to how they are measured raises every method's version and ``dense-loss``'s."""
    from tamt_core.methods import METHODS  # not at import: the mask files the methods write hash with this module

    return {**{name: method.version for name, method in METHODS.items()}, **STAGE_VERSIONS}


def canonical_json(obj: Any) -> str:
    """One fixed JSON text per value (sorted keys, no spaces, ASCII, no NaN), so hashes of it (run ids, mask
    content hashes) do not depend on formatting."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def content_id(payload: dict[str, Any]) -> str:
    """16 hex digits of sha256 over the canonical JSON of ``payload``."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]


Versions = Mapping[str, int]
"""Algorithm → version, as :func:`algorithm_versions`; an algorithm it does not name is at :data:`FIRST_VERSION`."""


def run_id(payload: dict[str, Any], algorithm: str, versions: Versions | None = None) -> str:
    """The id of a run of ``algorithm`` (a key of :func:`algorithm_versions`) described by ``payload``, under the
    code's versions or under ``versions`` (the id the same run had, or has, under other code)."""
    version = (algorithm_versions() if versions is None else versions).get(algorithm, FIRST_VERSION)
    return content_id(payload if version == FIRST_VERSION else {**payload, "algorithm_version": version})


def first_versions() -> dict[str, int]:
    """Every algorithm at :data:`FIRST_VERSION`: the versions under which a run's id is its cell."""
    return dict.fromkeys(algorithm_versions(), FIRST_VERSION)


def earlier_versions(algorithms: Iterable[str]) -> list[dict[str, int]]:
    """Every versions table under which a run that depends on ``algorithms`` had another id than today: each of
    them at any version from the first to today's, not all at today's (none while every version is the first)."""
    algorithms, current = sorted(set(algorithms)), algorithm_versions()
    ranges = [range(FIRST_VERSION, current[name] + 1) for name in algorithms]
    today = tuple(current[name] for name in algorithms)
    return [{**current, **dict(zip(algorithms, combination))}
            for combination in itertools.product(*ranges) if combination != today]

