"""Run ids: equal runs get equal ids, so a run is recognised (and resumed, or reused) wherever it is asked for.

Every id of the project, whatever the run (a search, a fine-tune, a dense-model dev loss, a mask similarity; in a
sweep or from the ``tamt`` command line), is :func:`run_id` of the run's canonical payload and of the algorithm that
computes it. :data:`ALGORITHM_VERSIONS` is the one table of those algorithms' versions. Raise an entry when a
change alters what that method or stage computes (a fix to its loss, its threshold search, its loop): every run
id it reaches becomes new, so a sweep runs those trials again instead of reusing rows of the old code (which stay
in the table under their old ids, their ``versions`` column naming the version). A search's id enters the ids of
the fine-tunes of its masks, so raising a method's version renews its searches and their fine-tunes, and nothing
else.

Version 1 is the code from before versions existed: it leaves the payload as it was, so the ids, and the rows of
existing stores, are unchanged.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

FIRST_VERSION = 1
ALGORITHM_VERSIONS: dict[str, int] = {
    "omp": 1,         # tamt_core/methods/omp.py, tamt_core/pruning.py
    "rand": 1,        # tamt_core/methods/rand.py
    "imp": 1,         # tamt_core/methods/imp.py
    "tamt-mlm": 1,    # tamt_core/methods/tamt.py, masking.py, threshold.py, losses.mlm_loss
    "tamt-kd": 1,     # tamt_core/methods/tamt.py, masking.py, threshold.py, losses.kd_loss
    "finetune": 1,    # tamt_core/finetune.py, tasks.py, metrics.py, squad.py
    "dense-loss": 1,  # tamt_core/evaluate.pretrain_losses on the unpruned model
    "similarity": 1,  # tamt_core/masks.similarity
}
"""Algorithm → version; the keys are the search methods and the stages that are not searches."""


def content_id(payload: dict[str, Any]) -> str:
    """16 hex digits of sha256 over the canonical JSON of ``payload`` (sorted keys, no spaces)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def run_id(payload: dict[str, Any], algorithm: str) -> str:
    """The id of a run of ``algorithm`` (a key of :data:`ALGORITHM_VERSIONS`) described by ``payload``."""
    version = ALGORITHM_VERSIONS[algorithm]
    return content_id(payload if version == FIRST_VERSION else {**payload, "algorithm_version": version})
