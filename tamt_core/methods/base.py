"""The one interface every subnetwork-search method implements.

A method turns pre-trained weights θ0 (and, for the trained methods, pre-training data) into one or more binary
masks. It is a small object with a ``name`` and a ``search(context, config)`` generator that yields
:class:`FoundMask` values as they become available: OMP and random yield one, IMP one per 10 % of sparsity along a
single run, TAMT one per requested step. The caller (``tamt_core.search``) writes them to files; methods never
touch the file system. Methods share helpers (``tamt_core.masks.pruning``, ``tamt_core.training``), not base classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

import torch

from tamt_core import hparams
from tamt_core import ids
from tamt_core.masks.pruning import ROUNDINGS

METHOD_NAMES = ("omp", "rand", "imp", "tamt-mlm", "tamt-kd")
ID_DEFAULTS: dict[str, object] = {"alpha": hparams.ALPHA, "phi": hparams.PHI, "adam_epsilon": None,
                                   "kd_sequence_mean": False}
"""Fields added after search ids were first computed, with their defaults: at the default a field is left out of
the id (:meth:`SearchConfig.run_id`), so a search planned before the field existed keeps its id and a rerun still
finds its row and its directory."""


@dataclass(frozen=True)
class SearchConfig:
    """Everything that determines a search run; defaults are the paper's (``tamt_core.hparams``).

    Args:
        method: one of ``omp``, ``rand``, ``imp``, ``tamt-mlm``, ``tamt-kd``.
        sparsity: fraction of each masked matrix set to zero, in [0, 1). For IMP, the last sparsity reached
            (a multiple of 0.1); the masks of every lower multiple come out of the same run.
        seed: seeds the random mask, the data order and the MLM corruption.
        steps: TAMT training iterations; ``None`` takes Tab. 2's value for the sparsity.
        lr, batch_size, weight_decay: ``None`` takes Tab. 1's value for the method.
        block_size: pre-training sequence length (Tab. 1: 512).
        schedule_steps: length of the linear LR decay; ``None`` = 2 epochs of the training data (Tab. 1), or the
            run's own length when that is longer.
        threshold_period: TAMT re-sets τ every this many steps (1 = every step, exact sparsity at every step;
            the released code's periods are :data:`~tamt_core.hparams.REFERENCE_THRESHOLD_PERIOD`).
        save_steps: TAMT steps whose masks are saved besides the last one (Fig. 5 needs masks along one run).
        pruning_interval: IMP's P, training iterations between two prunes (Tab. 2: 2792).
        rewind: IMP rewinds the kept weights to θ0 after each prune (paper §4.1.3); ``False`` reproduces the
            released code, where the rewind is a no-op (reference-impl §4.4).
        zero_rounding: how TAMT counts zeros per matrix: ``floor`` = int(s·n) as the released code,
            ``half_even`` = round(s·n) as OMP.
        kd_include_padding: average the KD loss over padding positions too, as the released code did.
        kd_sequence_mean: average Eq. 6 per sequence (1/|x| each), then over the batch, as the paper writes it;
            by default over all non-padding tokens of the batch (docs/fidelity.md says why).
        max_grad_norm: global gradient-norm clipping.
        alpha, phi: TAMT's mask initialisation α·φ and starting threshold φ (Eq. 5, §4.1.3: 2 and 1e-2); α must
            exceed 1 so that the OMP-kept scores α·φ pass the strict binariser ``M̄ > τ`` at τ = φ.
        adam_epsilon: AdamW's ε; ``None`` takes Tab. 1's column (1e-8, HF's default, as the released MLM
            trainers). The released TAMT-KD trainer's BertAdam used :data:`hparams.RELEASED_KD_ADAM_EPSILON`
            (reference-impl §5.6).
    """

    method: str
    sparsity: float
    seed: int = 0
    steps: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float | None = None
    block_size: int = hparams.TAMT_MLM.max_length
    schedule_steps: int | None = None
    threshold_period: int = 1
    save_steps: tuple[int, ...] = field(default_factory=tuple)
    pruning_interval: int = hparams.IMP_PRUNING_INTERVAL
    rewind: bool = True
    zero_rounding: str = "floor"
    kd_include_padding: bool = False
    kd_sequence_mean: bool = False
    max_grad_norm: float = 1.0
    alpha: float = hparams.ALPHA
    phi: float = hparams.PHI
    adam_epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHOD_NAMES:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHOD_NAMES)}")
        if not (isinstance(self.sparsity, (int, float)) and 0.0 <= self.sparsity < 1.0):
            raise ValueError(f"sparsity must be a fraction in [0, 1) (0.7 = 70 % of weights zeroed), "
                             f"got {self.sparsity!r}")
        if self.method == "imp" and not math.isclose(self.sparsity * 10, round(self.sparsity * 10), abs_tol=1e-9):
            raise ValueError(f"IMP prunes 10 % per round (§4.1.3), so its sparsity must be a multiple of 0.1, "
                             f"got {self.sparsity}")
        if self.method == "imp" and self.sparsity < 0.1:
            raise ValueError("IMP starts at 10 % sparsity (App. C); ask for 0.1 or more")
        if self.method == "imp" and self.steps is not None:
            raise hparams.SettingError("steps", "IMP's length follows from the sparsity and the pruning interval "
                                       "((10·s − 1)·P steps, Tab. 2); set pruning_interval instead of steps")
        if self.method in ("omp", "rand") and (self.steps is not None or self.save_steps):
            raise ValueError(f"{self.method} is one-shot and trains nothing; drop steps/save_steps")
        if self.method in ("imp", "omp", "rand") and self.save_steps:
            raise ValueError("save_steps selects TAMT checkpoints; IMP saves every sparsity along its run anyway")
        for name in ("steps", "batch_size", "schedule_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.threshold_period < 1 or self.pruning_interval < 1 or self.block_size < 8:
            raise ValueError("threshold_period and pruning_interval must be ≥ 1 and block_size ≥ 8")
        if self.zero_rounding not in ROUNDINGS:
            raise ValueError(f"zero_rounding must be one of {ROUNDINGS}, got {self.zero_rounding!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not (self.alpha > 1.0 and self.phi > 0.0):
            raise ValueError(f"alpha must be > 1 and phi > 0 (Eq. 5: kept scores start at α·φ above the threshold φ), "
                             f"got alpha={self.alpha}, phi={self.phi}")
        if self.method not in ("tamt-mlm", "tamt-kd") and (self.alpha, self.phi) != (hparams.ALPHA, hparams.PHI):
            raise ValueError(f"alpha and phi set TAMT's mask initialisation; {self.method} has none, drop them")
        if self.method in ("tamt-mlm", "tamt-kd") and self.steps is None and _tabulated_steps(self.sparsity) is None:
            raise hparams.SettingError("steps", f"Tab. 2 gives TAMT's iterations at sparsities "
                                       f"{sorted(hparams.TAMT_STEPS)} only, not {self.sparsity}; set steps for it")
        if any(s < 0 for s in self.save_steps):
            raise ValueError(f"save_steps must be ≥ 0, got {self.save_steps}")
        late = sorted(s for s in self.save_steps if self.method.startswith("tamt") and s > self.resolved_steps())
        if late:
            raise hparams.SettingError("save_steps", f"save_steps {late} lie beyond the run's "
                                       f"{self.resolved_steps()} steps; drop them or raise steps")
        if self.adam_epsilon is not None and not self.adam_epsilon > 0:
            raise ValueError(f"adam_epsilon must be positive, got {self.adam_epsilon}")

    def to_dict(self) -> dict:
        """Plain JSON-ready fields (tuples as lists), e.g. for mask metadata and result tables."""
        out = asdict(self)
        out["save_steps"] = list(self.save_steps)
        return out

    def run_id(self, model: str, data: str | None, versions: ids.Versions | None = None) -> str:
        """The id of this search on ``model`` with pre-training data ``data`` (``None``: the built-in corpus): the
        sweep's run id and the ``tamt search`` directory's are this one id (:func:`tamt_core.ids.run_id`, under
        the code's algorithm versions or ``versions``)."""
        config = {k: v for k, v in self.to_dict().items() if k not in ID_DEFAULTS or ID_DEFAULTS[k] != v}
        return ids.run_id({"stage": "search", "model": model, "data": data, "config": config}, self.method, versions)

    @property
    def objective(self) -> str | None:
        """``mlm`` or ``kd`` for the trained methods (IMP trains with MLM, §4.1.2), ``None`` otherwise."""
        return {"imp": "mlm", "tamt-mlm": "mlm", "tamt-kd": "kd"}.get(self.method)

    @property
    def needs_data(self) -> bool:
        return self.method in ("imp", "tamt-mlm", "tamt-kd")

    def pretrain_hparams(self) -> hparams.PretrainHParams:
        """Tab. 1's column for this method, with the optimizer settings this config overrides."""
        column = {"imp": hparams.IMP_MLM, "tamt-mlm": hparams.TAMT_MLM, "tamt-kd": hparams.TAMT_KD}[self.method]
        return column if self.adam_epsilon is None else replace(column, adam_epsilon=self.adam_epsilon)

    def resolved_steps(self) -> int:
        """TAMT iterations: as given, or Tab. 2's value for the sparsity (a tabulated one: checked at creation)."""
        if self.steps is not None:
            return self.steps
        steps = _tabulated_steps(self.sparsity)
        if steps is None:
            raise ValueError(f"Tab. 2 has no TAMT iterations for sparsity {self.sparsity}; set steps")
        return steps


def _tabulated_steps(sparsity: float) -> int | None:
    """Tab. 2's TAMT iterations at exactly ``sparsity`` (up to float rounding), or ``None``."""
    return next((steps for tabulated, steps in hparams.TAMT_STEPS.items() if math.isclose(tabulated, sparsity,
                                                                                           abs_tol=1e-9)), None)


@dataclass(frozen=True)
class FoundMask:
    """A mask produced by a search: the training step it comes from, its nominal sparsity, and the bool tensors."""

    step: int
    sparsity: float
    tensors: dict[str, torch.Tensor]


@dataclass
class SearchContext:
    """What a method may use: the pre-trained model (with MLM head and pooler), data, device, and its run.

    ``train_data()`` loads and tokenises the pre-training corpus on first use, so OMP and random never pay for it.
    ``run`` (:class:`tamt_core.search.resumable.SearchRun`) is where a training method resumes from, reports each step
    to, and learns its rank among data-parallel processes.
    """

    pretrained: tamt_core.models.Pretrained  # noqa: F821
    device: torch.device
    train_data: Callable[[str], object]
    run: tamt_core.search.resumable.SearchRun  # noqa: F821


class SearchMethod(Protocol):
    """A subnetwork-search method (paper §3.4, §4.1.2)."""

    name: str

    def search(self, context: SearchContext, config: SearchConfig) -> Iterator[FoundMask]:
        """Yield masks in the order they are found."""
