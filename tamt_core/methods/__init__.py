"""Registry of subnetwork-search methods: one small module each, one interface (``methods.base``)."""

from tamt_core.methods.base import METHOD_NAMES, FoundMask, SearchConfig, SearchMethod
from tamt_core.methods.imp import IMP
from tamt_core.methods.omp import OMP
from tamt_core.methods.random_mask import RandomPruning
from tamt_core.methods.tamt import TAMT

METHODS: dict[str, SearchMethod] = {
    "omp": OMP(),
    "rand": RandomPruning(),
    "imp": IMP(),
    "tamt-mlm": TAMT("mlm"),
    "tamt-kd": TAMT("kd"),
}
assert tuple(METHODS) == METHOD_NAMES

__all__ = ["METHODS", "METHOD_NAMES", "FoundMask", "SearchConfig", "SearchMethod"]
