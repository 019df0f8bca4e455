"""The registry of subnetwork-search methods: one small module each (:mod:`.base` says what a method declares).

A method is registered by its line below; everything else (configs, sweep grids, the command line, estimates,
the tables and figures) asks the registry.
"""

from tamt_core.methods.base import FoundMask, SearchContext, SearchMethod
from tamt_core.methods.imp import IMP
from tamt_core.methods.omp import OMP
from tamt_core.methods.random_mask import RandomPruning
from tamt_core.methods.tamt import TAMT
from tamt_core.methods.wanda import Wanda

METHODS: dict[str, SearchMethod] = {method.name: method for method in (
    OMP(),
    RandomPruning(),
    IMP(),
    TAMT("mlm"),
    TAMT("kd"),
    Wanda(),
)}

__all__ = ["METHODS", "FoundMask", "SearchContext", "SearchMethod"]
