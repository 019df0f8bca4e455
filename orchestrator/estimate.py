"""GPU-hours a plan will cost, from a documented throughput table (``docs/orchestrator.md`` explains each figure).

Search figures are the paper's own: Tab. 3 times 22.34K IMP / 22K TAMT iterations on one V100, which gives seconds
per iteration. The paper gives no fine-tuning times, so the fine-tuning figures are assumptions for a V100 in fp32
(BERT-base, dynamic padding), marked as such; ``bench/bench_finetune.py`` measures the real figure on your GPU, and
:data:`THROUGHPUT` is the one place to put it. ``bench/gpu_check.py --out FILE`` measures the search and GLUE
fine-tuning figures on your own GPU, and :func:`measured_throughput` lays them over the V100 table (a sweep's
``--dry-run --throughput FILE``).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from tamt_core.models import BUILTIN_MODEL_NAME
from tamt_core.tasks import get_task

from orchestrator.plan import Plan, PlanError
from orchestrator.specs import DenseLossSpec, FinetuneSpec, SearchSpec, Spec


@dataclass(frozen=True)
class Throughput:
    """Seconds per pre-training iteration by (model family, pace: the Tab. 3 row a method's steps cost like,
    ``SearchMethod.pace``), and fine-tuning examples per second."""

    source: str
    search_s_per_iteration: dict[tuple[str, str], float]
    glue_train_per_s: float
    glue_eval_per_s: float
    squad_train_per_s: float
    squad_eval_per_s: float
    load_s: float
    dev_loss_s: float
    unit: str = "GPU-h"
    """How plans are costed by this table: one GPU's hours, or one CPU trial's minutes (``CPU-min``) on the machine
    it was measured on (:data:`UNIT_SECONDS`)."""


_TAB3_S = {("bert", "imp"): 4 * 3600 + 6 * 60 + 26, ("bert", "tamt-mlm"): 3 * 3600 + 54 * 60 + 58,
           ("bert", "tamt-kd"): 4 * 3600 + 46 * 60 + 46, ("roberta", "imp"): 4 * 3600 + 33 * 60 + 9,
           ("roberta", "tamt-mlm"): 4 * 3600 + 17 * 60 + 15, ("roberta", "tamt-kd"): 4 * 3600 + 51 * 60 + 55}
_TAB3_ITERATIONS = {"imp": 22_340, "tamt-mlm": 22_000, "tamt-kd": 22_000}

THROUGHPUT: dict[str, Throughput] = {
    "v100": Throughput(
        source="search: paper Tab. 3 (one 32GB V100); fine-tuning: assumed V100 fp32 BERT-base figures",
        search_s_per_iteration={key: seconds / _TAB3_ITERATIONS[key[1]] for key, seconds in _TAB3_S.items()},
        glue_train_per_s=400.0, glue_eval_per_s=1600.0, squad_train_per_s=90.0, squad_eval_per_s=300.0,
        load_s=30.0, dev_loss_s=60.0),
}
"""Per device class. Fine-tuning figures are assumptions until measured (``bench/bench_finetune.py``)."""
CPU_BUILTIN = Throughput(
    source="the built-in model on two CPU cores, one core per trial (measured, docs/smoke.md)",
    search_s_per_iteration={("bert", "imp"): 1.9, ("bert", "tamt-mlm"): 1.0, ("bert", "tamt-kd"): 1.0},
    glue_train_per_s=64.0, glue_eval_per_s=400.0, squad_train_per_s=16.0, squad_eval_per_s=100.0,
    load_s=6.0, dev_loss_s=6.0, unit="CPU-min")
"""The smoke presets' own figures: trials on the built-in model where no GPU is used, in CPU trial-minutes; a
trial's ``load_s`` includes starting it in Ray (a few seconds per trial, which the GPU table's load time hides)."""
UNIT_SECONDS = {"GPU-h": 3600.0, "CPU-min": 60.0}
"""Seconds in one of each :attr:`Throughput.unit`."""
KEPT = {"glue_eval_per_s": "GLUE evaluation", "squad_train_per_s": "SQuAD training",
        "squad_eval_per_s": "SQuAD evaluation", "load_s": "model loading", "dev_loss_s": "dev losses"}
"""The figures ``bench/gpu_check.py`` does not measure: a measured table keeps the V100 table's."""


def measured_throughput(path: str | Path, precision: str = "bf16") -> Throughput:
    """The V100 table with the figures ``bench/gpu_check.py --out FILE`` measured on a GPU laid over it: seconds per
    search iteration of each pace for the model family it measured, and GLUE training examples/s (its 70 %-masked
    fine-tuning at 32 × 128), in ``precision``. Every other figure stays the V100 table's; ``source`` names the GPU,
    what was measured and what was kept.

    Raises:
        PlanError: an unreadable file, one of another layout, one written by ``--tiny``, or a missing or
            non-positive figure (naming the fix).
    """
    def refuse(why: str) -> PlanError:
        return PlanError(f"--throughput {path}: {why}; give the JSON that `python bench/gpu_check.py --out FILE` "
                         "writes on the GPU")

    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise refuse(f"cannot read it as JSON ({error})") from error
    measured = record.get("throughput") if isinstance(record, dict) else None
    if not isinstance(measured, dict) or not str(record.get("schema", "")).startswith("tamt-gpu-check/"):
        raise refuse("it is not a gpu_check.py record (no 'schema' tamt-gpu-check/… and 'throughput')")
    if measured.get("tiny"):
        raise refuse("it was written by --tiny, whose figures measure nothing; run the check without --tiny")
    v100 = THROUGHPUT["v100"]
    paces = sorted({pace for _, pace in v100.search_s_per_iteration})
    family = measured.get("family")
    if family not in {f for f, _ in v100.search_s_per_iteration}:
        raise refuse(f"unknown model family {family!r}")

    def figure(name: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise refuse(f"{name} must be a positive number of seconds or examples, got {value!r}")
        return float(value)

    search = measured.get("search_s_per_iteration", {})
    glue = measured.get("glue_train_per_s", {})
    if not isinstance(search, dict) or not isinstance(glue, dict) or not isinstance(search.get(precision), dict) \
            or precision not in glue:
        held = sorted(set(search) & set(glue)) if isinstance(search, dict) and isinstance(glue, dict) else []
        raise refuse(f"it holds no {precision} figures (it holds: {', '.join(held) or 'none'}); measure {precision} "
                     "or pass --precision with one it holds")
    missing = [pace for pace in paces if pace not in search[precision]]
    if missing:
        raise refuse(f"search_s_per_iteration.{precision} lacks the pace(s) {missing}")
    per_iteration = {**v100.search_s_per_iteration, **{
        (family, pace): figure(f"search_s_per_iteration.{precision}.{pace}", search[precision][pace])
        for pace in paces}}
    kept = [f"{other} searches" for other in sorted({f for f, _ in per_iteration} - {family})] + list(KEPT.values())
    device = str(measured.get("device_name") or "an unnamed GPU")
    source = (f"{device}, {precision}: {family} searches and GLUE training measured by bench/gpu_check.py "
              f"({measured.get('date', 'undated')}); kept from the V100 table: {', '.join(kept)}")
    return replace(v100, source=source, search_s_per_iteration=per_iteration,
                   glue_train_per_s=figure(f"glue_train_per_s.{precision}", glue[precision]))


DEV_SIZES = {"cola": 1_043, "sst2": 872, "rte": 277, "mrpc": 408, "stsb": 1_500, "mnli": 9_815 + 9_832,
             "squad": 10_570}
"""GLUE / SQuAD v1.1 dev-set sizes (examples evaluated at each evaluation point)."""


def _family(model: str) -> str:
    return "roberta" if "roberta" in model.lower() else "bert"


def search_seconds(spec: SearchSpec, table: Throughput) -> float:
    """Loading, training (the method's steps at its Tab. 3 pace) and the dev losses of every mask the search
    writes."""
    method = spec.config.search_method
    dev_losses = 0.0 if spec.dev_loss_batches == 0 else len(spec.yields()) * table.dev_loss_s
    steps = method.training_steps(spec.config)
    if not steps:
        return table.load_s + dev_losses
    return table.load_s + dev_losses + steps * table.search_s_per_iteration[(_family(spec.model), method.pace)]


def finetune_seconds(spec: FinetuneSpec, table: Throughput) -> float:
    config = spec.config
    task, hp = get_task(config.task), config.hparams
    examples = config.train_size or task.paper_train_size
    steps = math.ceil(examples / hp.batch_size) * hp.max_epochs
    eval_every = hp.eval_every
    if task.kind == "span" and config.train_size is not None:  # as tamt_core.finetune: at least once per epoch
        eval_every = min(eval_every, math.ceil(examples / hp.batch_size))
    evaluations = max(1, steps // eval_every)
    squad = task.kind == "span"
    train_rate, eval_rate = ((table.squad_train_per_s, table.squad_eval_per_s) if squad
                             else (table.glue_train_per_s, table.glue_eval_per_s))
    return table.load_s + steps * hp.batch_size / train_rate + evaluations * DEV_SIZES[task.name] / eval_rate


def measurement_seconds(spec: Spec, table: Throughput) -> float:
    """GPU seconds of a measurement trial: a dense-model dev loss is one model load and a pass over the dev set;
    a mask similarity runs on the CPU and costs no GPU time."""
    if isinstance(spec, DenseLossSpec):
        return table.load_s + table.dev_loss_s
    return 0.0


def trial_seconds(spec: Spec, table: Throughput) -> float:
    """GPU seconds of one trial of any stage."""
    if isinstance(spec, SearchSpec):
        return search_seconds(spec, table)
    if isinstance(spec, FinetuneSpec):
        return finetune_seconds(spec, table)
    return measurement_seconds(spec, table)


def table_for(plan: Plan, on_gpu: bool) -> Throughput:
    """The table a plan's estimates come from: :data:`CPU_BUILTIN` for a plan on the built-in model without GPUs,
    whose V100 GPU-hours would say nothing of the wait; the V100 table otherwise."""
    if not on_gpu and all(spec.model == BUILTIN_MODEL_NAME for spec in plan.specs()):
        return CPU_BUILTIN
    return THROUGHPUT["v100"]


def gpu_hours(plan: Plan, device: str | Throughput = "v100") -> dict[str, dict[str, float]]:
    """GPU-hours per stage and method (one GPU per trial; measurements by kind), by a device class of
    :data:`THROUGHPUT` or a table (:func:`measured_throughput`)."""
    table = device if isinstance(device, Throughput) else THROUGHPUT[device]
    out: dict[str, dict[str, float]] = {"search": defaultdict(float), "finetune": defaultdict(float),
                                        "measure": defaultdict(float)}
    for spec in plan.searches.values():
        out["search"][spec.config.method] += trial_seconds(spec, table) / 3600
    for spec in plan.finetunes.values():
        out["finetune"][plan.method_of(spec)] += trial_seconds(spec, table) / 3600
    for spec in plan.measurements.values():
        out["measure"][spec.stage] += trial_seconds(spec, table) / 3600
    return {stage: dict(values) for stage, values in out.items()}
