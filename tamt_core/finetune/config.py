"""What decides a fine-tuning result (:class:`FinetuneConfig`, its content hash the run id) and what a run
produces: the periodic evaluations of its curve and the best of them (App. C, check vector 28)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tamt_core import hparams
from tamt_core.device import check_precision
from tamt_core.ids import run_id
from tamt_core.models import BUILTIN_MODEL_NAME
from tamt_core.tasks import get_task, metric_names

SUBSET_UNITS = ("questions", "features")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides a fine-tuning result; its content hash is the run id.

    ``None`` in ``lr``/``batch_size``/``epochs``/``eval_every``/``select_metric`` means Tab. 1's value
    (:data:`tamt_core.hparams.FINETUNE`). ``mask_hash`` is the mask's content hash (``None``: the full model).
    ``data`` is ``None`` for the built-in smoke data, else a hub id or directory (:mod:`tamt_core.data.downstream`).
    ``train_size`` draws the low-data subset of Fig. 7; for SQuAD it counts questions, or features (384-token
    windows) with ``subset_unit="features"`` as the released code did (reference-impl §7.4). ``precision``:
    ``bf16`` or ``fp32`` (the paper's); ``None`` computes in bf16 on a GPU and fp32 on the CPU
    (:mod:`tamt_core.device`), and stays out of the run id, as configs did before it existed.
    """

    task: str
    seed: int
    model: str = BUILTIN_MODEL_NAME
    data: str | None = None
    mask_hash: str | None = None
    train_size: int | None = None
    subset_unit: str = "questions"
    select_metric: str | None = None
    lr: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    eval_every: int | None = None
    precision: str | None = None

    def __post_init__(self) -> None:
        task = get_task(self.task)
        object.__setattr__(self, "task", task.name)
        if self.seed < 0:
            raise hparams.SettingError("seed", f"seed must be ≥ 0, got {self.seed}")
        if self.train_size is not None and self.train_size <= 0:
            raise hparams.SettingError("train_size", f"train_size must be a positive number of examples, got "
                                       f"{self.train_size}")
        if self.subset_unit not in SUBSET_UNITS:
            raise ValueError(f"subset unit {self.subset_unit!r} is not one of {SUBSET_UNITS}")
        if self.select_metric is not None and self.select_metric not in metric_names(task):
            raise hparams.SettingError("select_metric", f"{task.name} reports {', '.join(metric_names(task))}; "
                                       f"select_metric {self.select_metric!r} is none of them")
        for name in ("lr", "batch_size", "epochs", "eval_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise hparams.SettingError(name, f"{name} must be positive, got {value}")
        check_precision(self.precision)

    @property
    def hparams(self) -> hparams.FinetuneHParams:
        """Tab. 1's settings for the task with this config's overrides applied."""
        tab1 = hparams.FINETUNE[self.task]
        return replace(tab1, lr=self.lr or tab1.lr, batch_size=self.batch_size or tab1.batch_size,
                       max_epochs=self.epochs or tab1.max_epochs, eval_every=self.eval_every or tab1.eval_every,
                       metric=self.select_metric or tab1.metric)

    def to_dict(self) -> dict[str, Any]:
        """The fields, without ``precision`` while it is unset: the payload of the run id (ids from before the
        field existed stay as they were)."""
        return {k: v for k, v in asdict(self).items() if not (k == "precision" and v is None)}

    @property
    def run_id(self) -> str:
        """The id of this fine-tune of the mask ``mask_hash`` names (:func:`tamt_core.ids.run_id`): same config,
        same id, same directory. A sweep's fine-tune names its mask by the search that makes it instead
        (``orchestrator.specs.FinetuneSpec``), since the mask's content is not known when the sweep is planned."""
        return run_id(self.to_dict(), "finetune")


@dataclass
class Evaluation:
    """One periodic dev evaluation: a point of the curve."""

    step: int
    epoch: float
    train_loss: float
    metrics: dict[str, float]


@dataclass
class FinetuneResult:
    """The best periodic evaluation, every evaluation, and what the run was."""

    run_id: str
    config: dict[str, Any]
    select_metric: str
    best: Evaluation | None
    curve: list[Evaluation]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def best_score(self) -> float:
        return math.nan if self.best is None else self.best.metrics[self.select_metric]

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "config": self.config, "select_metric": self.select_metric,
                "best_score": self.best_score, "best": None if self.best is None else asdict(self.best),
                "curve": [asdict(e) for e in self.curve], "info": self.info}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneResult:
        return cls(d["run_id"], d["config"], d["select_metric"],
                   None if d["best"] is None else Evaluation(**d["best"]),
                   [Evaluation(**e) for e in d["curve"]], d.get("info", {}))


def best_evaluation(curve: list[Evaluation], metric: str) -> Evaluation | None:
    """The first evaluation with the highest ``metric`` (NaN never wins), as the reference's strict ``>`` update
    keeps the earliest of equal scores (reference-impl §7.3, check vector 28)."""
    best = None
    for evaluation in curve:
        value = evaluation.metrics[metric]
        if not math.isnan(value) and (best is None or value > best.metrics[metric]):
            best = evaluation
    return best


# --- data ------------------------------------------------------------------------------------------------------
