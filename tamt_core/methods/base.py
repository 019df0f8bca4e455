"""The one interface every subnetwork-search method implements, and what a method declares about itself.

A method turns pre-trained weights θ0 (and, for the trained methods, pre-training data) into one or more binary
masks. It is a small object whose module holds every fact about it, so that adding a method touches its own
module, its golden numbers (``tests/test_golden_losses.py``) and one registry line (``tamt_core.methods``):

* ``name`` and ``version`` (raise it when what the method computes changes: ``tamt_core.ids``);
* ``settings``, the frozen dataclass of the settings it takes, with their defaults (the paper's, cited) and a
  ``help`` text each (:func:`setting`): configs, sweep grids and the command line read them from there;
* ``objective`` (the pre-training loss it trains with, ``None`` for a one-shot method) and ``reads_corpus``;
* :meth:`SearchMethod.check`, :meth:`SearchMethod.yields` (the masks a configuration gives: sparsity and step
  of each) and :meth:`SearchMethod.training_steps` with ``pace`` (what a cost estimate needs);
* :meth:`SearchMethod.search`, a generator of :class:`FoundMask` values as they become available: OMP and random
  yield one, IMP one per 10 % of sparsity along a single run, TAMT one per requested step. The caller
  (``tamt_core.search.runner``) writes them to files; methods never touch the file system.

Methods share helpers (``tamt_core.masks.pruning``, ``tamt_core.methods.trained``), not base classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

import torch

from tamt_core.hparams import SettingError

if TYPE_CHECKING:
    from tamt_core.data.pretrain import PretrainData
    from tamt_core.models import Pretrained
    from tamt_core.search.config import SearchConfig
    from tamt_core.search.resumable import SearchRun


def setting(default: Any, help: str, **metadata: Any) -> Any:
    """A field of a method's settings dataclass: its default and the help the command line shows (``choices``
    may list the allowed values)."""
    return field(default=default, metadata={"help": help, **metadata})


def check_choices(settings: Any) -> None:
    """Refuse a value outside the ``choices`` its :func:`setting` lists (``SettingError`` naming the field);
    ``None`` leaves a setting to its default."""
    for spec in fields(settings):
        choices, value = spec.metadata.get("choices"), getattr(settings, spec.name)
        if choices is not None and value is not None and value not in choices:
            raise SettingError(spec.name, f"{spec.name} must be one of {tuple(choices)}, got {value!r}")


@dataclass(frozen=True)
class NoSettings:
    """The settings of a method that takes none (OMP, random: sparsity and seed say everything)."""


def setting_names(settings: type) -> tuple[str, ...]:
    """The names of a settings dataclass's fields, in declaration order."""
    return tuple(f.name for f in fields(settings))


@dataclass(frozen=True)
class FoundMask:
    """A mask produced by a search: the training step it comes from, its nominal sparsity, and the bool tensors."""

    step: int
    sparsity: float
    tensors: dict[str, torch.Tensor]


@dataclass
class SearchContext:
    """What a method may use: the pre-trained model (with MLM head and pooler), data, device, and its run.

    ``train_data(objective, block_size=..., pad_to=...)`` loads and tokenises the pre-training corpus when asked
    (MLM blocks or KD sequences), so a method that reads none never pays for it. ``run``
    (:class:`~tamt_core.search.resumable.SearchRun`) is where a training method resumes from, reports each step
    to, and learns its rank among data-parallel processes.
    """

    pretrained: Pretrained
    device: torch.device
    train_data: Callable[..., PretrainData]
    run: SearchRun


class SearchMethod(Protocol):
    """A subnetwork-search method (paper §3.4, §4.1.2)."""

    name: str
    """The registry key: what a config, a grid and the command line call it."""
    version: int
    """Raised when what the method computes changes; its runs then get new ids (``tamt_core.ids``)."""
    settings: type
    """The frozen dataclass of its settings (:class:`NoSettings` for none)."""
    objective: str | None
    """``mlm`` or ``kd``: the pre-training loss it trains with; ``None`` for a method that trains nothing. A
    method that trains runs for hours: it checkpoints, resumes and runs data-parallel (a Ray Train job in a sweep)."""
    reads_corpus: bool
    """Whether it reads the pre-training corpus (checked before any compute)."""
    seeded: bool
    """Whether its masks depend on the seed; a sweep runs a method without one once per sparsity (OMP)."""
    yields_lower_sparsities: bool
    """Whether one run to sparsity s passes, and yields, the masks of lower sparsities (IMP), so that a sweep runs it
    once to its highest sparsity."""
    pace: str | None
    """Which measured pace its training steps take (a key of the estimate's per-iteration table, Tab. 3)."""
    first_record: bool
    """Whether its run ids carry the first config record (``tamt_core.search.config.FIRST_RECORD``): true of the
    methods that existed when ids were first computed, so their stores keep their ids."""
    smoke: Mapping[str, Any]
    """Settings under which it does its job on the built-in smoke model in minutes (docs/smoke.md has the
    measurements): what ``tamt search`` uses on that model, and the smoke presets' searches."""

    def check(self, config: SearchConfig) -> None:
        """Refuse a configuration that cannot run as asked (a ``ValueError`` or ``SettingError`` naming the fix)."""

    def yields(self, config: SearchConfig) -> tuple[tuple[float, int], ...]:
        """(sparsity, step) of every mask the search writes, in order."""

    def training_steps(self, config: SearchConfig) -> int:
        """Optimizer steps of one run (0 for a one-shot method)."""

    def batch_size(self, config: SearchConfig) -> int | None:
        """Sequences per global batch, which data-parallel workers split (``None``: it reads no batches)."""

    def caution(self, config: SearchConfig) -> str | None:
        """Why this configuration will likely not do the method's job (too few steps to move a mask), or ``None``;
        said before the search starts, which still runs."""

    def search(self, context: SearchContext, config: SearchConfig) -> Iterator[FoundMask]:
        """Yield masks in the order they are found."""


class OneShot:
    """The facts a one-shot method shares (OMP, random): one mask at step 0 of the config's sparsity, no training,
    no batches; a method states only what differs (its settings, whether it reads the corpus, its search)."""

    settings: type = NoSettings
    objective = None
    reads_corpus = False
    seeded = True
    yields_lower_sparsities = False
    pace = None
    smoke: Mapping[str, Any] = MappingProxyType({})

    def check(self, config: SearchConfig) -> None:
        """Any sparsity in [0, 1) prunes."""

    def yields(self, config: SearchConfig) -> tuple[tuple[float, int], ...]:
        return ((config.sparsity, 0),)

    def training_steps(self, config: SearchConfig) -> int:
        return 0

    def batch_size(self, config: SearchConfig) -> int | None:
        return None

    def caution(self, config: SearchConfig) -> str | None:
        return None
