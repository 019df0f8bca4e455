"""What every sweep's presets share, so that a mask two experiments need comes from one search.

The authors trained each TAMT mask for 2 epochs with a checkpoint every 1000 steps, took Fig. 3's masks at Tab. 2's
step and Fig. 4-6's along the way, and ran IMP to 90 % (reference-impl §10.2-10.3). The paper presets do the same:
a TAMT run at 50-80 % goes on to the last step of Fig. 5 (25K), saving Tab. 2's step and every step of Fig. 5, and
every IMP run prunes to 90 %. So main_results, pretrain_correlation, pretrain_cost, mask_similarity and low_data
name identical searches, and a storage they share runs each once. The smoke presets follow the same pattern on
the built-in model in minutes.

Every script starts through :func:`sweep_main`, which ends a sweep with the analysis's results table, and leaves
the analysis's figures, table and report in the sweep's MLflow parent run.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from orchestrator import cli, results
from orchestrator.grid import Grid
from orchestrator.search_settings import PerSparsity, SearchSettings
from orchestrator.storage import Storage
from tamt_core import hparams
from tamt_core.methods import METHODS
from tamt_core.models import BUILTIN_MODEL_NAME

BERT, ROBERTA = "bert-base-uncased", "roberta-base"
PAPER_METHODS = ("omp", "rand", "imp", "tamt-mlm", "tamt-kd")
"""The methods the paper compares (§4.1.2); ``sweeps/one_shot.py`` sets the methods added since beside them."""
WIKITEXT = "Salesforce/wikitext"


def _tamt_run_steps(sparsity: float) -> int:
    if sparsity in hparams.CORRELATION_SPARSITIES:
        return max(hparams.TAMT_STEPS[sparsity], *hparams.TAMT_COST_STEPS)
    return hparams.TAMT_STEPS[sparsity]


def _tamt_save_steps(sparsity: float) -> tuple[int, ...]:
    if sparsity not in hparams.CORRELATION_SPARSITIES:
        return ()  # the run's last mask is Tab. 2's, and no analysis follows it
    return tuple(sorted({hparams.TAMT_STEPS[sparsity], *hparams.TAMT_COST_STEPS}))


PAPER_SEARCH = SearchSettings(steps=PerSparsity({s: _tamt_run_steps(s) for s in hparams.SPARSITIES}),
                              save_steps=PerSparsity({s: _tamt_save_steps(s) for s in hparams.SPARSITIES}))
"""TAMT runs of the paper presets: Tab. 2's length, or on to 25K at the sparsities the analyses follow."""


PAPER_GRID: dict[str, Any] = {
    "models": (BERT,), "mask_seeds": hparams.MASK_SEEDS, "finetune_seeds": hparams.FINETUNE_SEEDS,
    "pretrain_data": WIKITEXT, "task_data": "hub", "search": PAPER_SEARCH, "imp_until": hparams.IMP_FINAL_SPARSITY,
    "finetune_steps": PerSparsity(hparams.TAMT_STEPS)}
"""What :func:`paper_grid` sets of a :class:`~orchestrator.grid.Grid`."""


def paper_grid(**axes: Any) -> Grid:
    """A grid of the paper's studies (§4.1): BERT-base, WikiText-103, the hub's GLUE/SQuAD, 3 mask seeds × 3
    fine-tune seeds, Tab. 1 settings, the shared search runs, Tab. 2's masks.

    Args:
        **axes: :class:`~orchestrator.grid.Grid` parameters: the experiment's own axes (``methods``,
            ``sparsities``, ``tasks``, ...), and any of ``PAPER_GRID`` to set otherwise.
    """
    return Grid(**{**PAPER_GRID, **axes})


SMOKE_SPARSITIES = (0.5, 0.7)
SMOKE_COST_STEPS = (45, 90)
"""The smoke presets' Fig. 5 steps: every TAMT run saves these."""
SMOKE_STEPS = PerSparsity({0.5: 90, 0.7: 90})
"""The smoke presets' Tab. 2: the step of each sparsity's run that main_results fine-tunes."""
SMOKE_IMP_INTERVALS = (2, 4)
SMOKE_SEARCH = SearchSettings(save_steps=SMOKE_COST_STEPS, per_method={
    name: SearchSettings(**method.smoke) for name, method in METHODS.items() if method.smoke})
"""Short searches in which every method does its job: each method's own smoke settings (docs/smoke.md has the scan
behind them: at 50 % and 70 %, 90 steps of TAMT at lr 3e-4 end with TAMT-MLM's MLM dev loss and TAMT-KD's KD dev
loss well below OMP's), and every TAMT run saving Fig. 5's smoke steps."""
SMOKE_FINETUNE: dict[str, Any] = {"epochs": 2, "lr": 1e-4, "batch_size": 16, "eval_every": 20}
SMOKE_FINETUNE_MEASURED = ("sst2",)
"""The smoke tasks on which ``SMOKE_FINETUNE`` was measured to tell masks apart from chance (docs/smoke.md)."""
SMOKE_TRAIN_SIZE = 320
SMOKE_SEEDS = (1, 2, 3)
"""The main job's replicates: three fine-tuning seeds per cell, and three random masks (one per fine-tuning seed)."""


SMOKE_GRID: dict[str, Any] = {
    "models": (BUILTIN_MODEL_NAME,), "mask_seeds": (1,), "finetune_seeds": (1,), "train_sizes": (SMOKE_TRAIN_SIZE,),
    "search": SMOKE_SEARCH, "finetune": SMOKE_FINETUNE, "dev_loss_batches": 2, "imp_until": max(SMOKE_SPARSITIES),
    "finetune_steps": SMOKE_STEPS}
"""What :func:`smoke_grid` sets of a :class:`~orchestrator.grid.Grid`."""


def smoke_grid(**axes: Any) -> Grid:
    """A grid that runs offline on two CPU cores in minutes: the built-in model, corpus and task data, short
    searches (90 steps, masks at 45 and 90), dev losses on two batches (the whole MLM split, 32 KD sequences), 320
    training examples, one seed of each kind. Its fine-tuning settings were measured on SST-2 only: a grid on other
    tasks carries a note that says so.

    Args:
        **axes: :class:`~orchestrator.grid.Grid` parameters: the experiment's own axes (``methods``,
            ``sparsities``, ``tasks``, ...), and any of ``SMOKE_GRID`` to set otherwise (``finetune_seeds=(1, 2,
            3)`` for replicates).
    """
    unmeasured = [task for task in axes.get("tasks", ()) if task not in SMOKE_FINETUNE_MEASURED]
    notes = (f"the smoke fine-tuning settings (2 epochs at lr 1e-4 on {SMOKE_TRAIN_SIZE} examples) were measured on "
             f"{', '.join(SMOKE_FINETUNE_MEASURED)} only (docs/smoke.md); on {', '.join(unmeasured)} they may leave "
             "every subnetwork, and the full model, near chance: read those scores as a check that the sweep runs, "
             "not as results",) if unmeasured else ()
    return Grid(**{**SMOKE_GRID, "notes": notes, **axes})


def with_interval(grid: Grid, pruning_interval: int) -> Grid:
    """``grid`` with IMP pruning every ``pruning_interval`` steps (Fig. 5 varies P to vary IMP's cost).

    Args:
        grid: the grid to change; the other search settings stay.
        pruning_interval: P, IMP's training steps between two prunes (Tab. 2: 2792 for BERT-base).
    """
    return replace(grid, search=grid.search.with_method("imp", {"pruning_interval": pruning_interval}))


def print_results(storage: Storage, out: TextIO) -> None:
    """The results so far in ``storage``: method × sparsity, mean ± std over seeds per task, the full model, with
    the marks (:func:`analysis.results_table.print_so_far`); nothing when no fine-tune has finished. The analysis is
    imported here, once a sweep has run, not when a script starts (it draws on pandas and matplotlib)."""
    from analysis.results_table import print_so_far

    print_so_far(storage.uri, out)


def write_analysis(storage: Storage, out: Path) -> None:
    """What ``python -m analysis.figures --runs STORAGE --out OUT`` writes (every figure the table has data for, as
    PNG and PDF, ``results.md``/``results.csv`` and ``report.html``) and its log as ``analysis.log``, without the
    cache of rows it read; nothing when no trial has finished yet. What the sweep's MLflow parent run holds.

    Raises:
        RuntimeError: the analysis failed (its message).
    """
    from analysis.figures import CACHE, main

    if not results.finished_run_ids(storage):
        return
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = main(["--runs", storage.uri, "--out", str(out)], out=printed)
    (out / CACHE).unlink(missing_ok=True)
    if code:
        raise RuntimeError(errors.getvalue().strip() or f"python -m analysis.figures exited with {code}")
    (out / "analysis.log").write_text(printed.getvalue())


def sweep_main(name: str, presets: cli.Presets, argv: Sequence[str] | None = None, *, description: str | None = "",
               out: TextIO | None = None, parts: Mapping[str, cli.Presets] | None = None) -> int:
    """The command line of a sweep script: pick a preset, check everything, dry-run or run it, then print the
    results table so far (:func:`print_results`) and where everything is (:func:`orchestrator.cli.sweep_main`),
    leaving :func:`write_analysis`'s files in the sweep's MLflow parent run.

    Args:
        name: the sweep's name: what ``python -m sweeps status`` and MLflow call it, and ``SWEEPS``' entry for a
            script in ``sweeps/``.
        presets: ``{preset name: function returning the declarations}``: grids, ``MaskSimilarity`` and
            ``TamtStudy`` declarations. A preset is built only when chosen; ``smoke`` runs without a GPU and
            ``paper`` with one unless ``--preset`` says otherwise.
        argv: the flags (default: the command line's).
        description: the script's docstring (``__doc__``); its first paragraph is ``--help``'s description.
        out: where the plan, the progress and the results go (default: standard output).
        parts: the sweeps ``presets`` unites (``python -m sweeps``), broken down in a dry run.

    Returns:
        The process's exit code: 0 done, 1 failed trials, 2 bad input, 130 interrupted, 143 stopped by SIGTERM.
    """
    return cli.sweep_main(name, presets, argv, description=first_paragraph(description), out=out, parts=parts,
                          results=print_results, artifacts=write_analysis)


def first_paragraph(text: str | None) -> str:
    """The first paragraph of ``text`` on one line (a docstring's summary, for ``--help``)."""
    return " ".join((text or "").strip().split("\n\n")[0].split())
