"""Time ``python -m analysis.figures`` on a results table shaped like the paper preset's union (~8.8K rows).

The table is synthetic: every trial the paper's sweeps plan (main results for BERT and RoBERTa, OMP/Rand at
10-90 %, TAMT masks along training and IMP at six pruning intervals at 50-80 %, similarity trials, low-data
subsets), with scores from a smooth made-up model plus seeded noise, written row by row with the orchestrator's
``write_row`` exactly as trials write them. It measures how long reading and drawing take at the paper's scale,
and gives a full-size set of figures to look at; the numbers in them mean nothing. It also records the rows as a
sweep's plan (with a few failed and running trials) and times ``python -m sweeps status`` on it, as a user runs it
(a fresh process: start-up and imports included).

    python bench/bench_analysis.py --out /tmp/paper-figures      # prints write, read, draw and status times
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from analysis import figures, table
from orchestrator import ledger
from orchestrator.results import write_row
from orchestrator.storage import Storage
from tamt_core import hparams

BERT, ROBERTA = "bert-base-uncased", "roberta-base"
FULL_SCORE = {"mnli": 84.0, "sst2": 92.0, "cola": 56.0, "stsb": 88.5, "mrpc": 85.0, "rte": 66.0, "squad": 88.0}
TRAIN_SIZE = {"mnli": 392_702, "sst2": 67_349, "cola": 8_551, "stsb": 5_749, "mrpc": 3_668, "rte": 2_490,
              "squad": 87_599}
METRIC = {task: settings.metric for task, settings in hparams.FINETUNE.items()}
QUALITY = {"rand": 0.0, "omp": 0.55, "imp": 0.7, "tamt-kd": 0.78, "tamt-mlm": 0.85}
"""How much of a random mask's loss of score each method avoids (made up, ordered as the paper finds)."""


def _id(*parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


class Synthetic:
    """Rows of a paper-sized sweep with made-up, seeded values."""

    def __init__(self, seed: int = 0):
        self.random = np.random.default_rng(seed)
        self.rows: list[dict] = []
        self.written: dict[tuple, dict] = {}
        """(search run id, sparsity, step) → the mask entry, for the fine-tunes of that mask."""

    def quality(self, method: str, step: int, sparsity: float) -> float:
        base = QUALITY[method]
        if method.startswith("tamt"):
            base = QUALITY["omp"] + (base - QUALITY["omp"]) * min(1.0, step / hparams.TAMT_STEPS.get(sparsity, 17000))
        if method == "imp":
            base = QUALITY["omp"] + (base - QUALITY["omp"]) * min(1.0, step / max(1.0, (10 * sparsity - 1) * 2792))
        return base

    def score(self, model, task, method, sparsity, step, examples, seed) -> float:
        damage = 0.0 if method == "full" else (sparsity ** 3) * 60 * (1 - self.quality(method, step, sparsity))
        data = 8 * max(0.0, np.log10(TRAIN_SIZE[task] / examples))
        shift = 2.0 if model == ROBERTA else 0.0
        return float(np.clip(FULL_SCORE[task] + shift - damage * (1.3 if model == ROBERTA else 1) - data
                             + self.random.normal(0, 0.8), 0, 100))

    def losses(self, method, sparsity, step) -> tuple[float, float]:
        quality = self.quality(method, step, sparsity)
        mlm = 1.9 + 8 * sparsity ** 2 * (1 - quality) + (0.4 if method == "tamt-kd" else 0)
        kd = 0.05 + 2 * sparsity ** 2 * (1 - quality) + (0.2 if method == "tamt-mlm" else 0)
        return mlm + self.random.normal(0, 0.02), kd + self.random.normal(0, 0.005)

    def search(self, model, method, sparsity, seed, masks: list[tuple[float, int]], interval=None) -> str:
        run_id = _id("search", model, method, sparsity, seed, interval)
        written = []
        for mask_sparsity, step in masks:
            mlm, kd = self.losses(method, mask_sparsity, step)
            written.append({"sparsity": mask_sparsity, "step": step, "file": f"{method}-{step}.safetensors",
                            "mask_hash": _id(run_id, step), "actual_sparsity": mask_sparsity,
                            "train_s": 0.21 * step * (1.25 if method == "tamt-kd" else 1.0),
                            "mlm_dev_loss": mlm, "kd_dev_loss": kd})
        config = {"search_config": {"method": method, "pruning_interval": interval or 2792, "lr": 5e-5}}
        self.rows.append({"run_id": run_id, "stage": "search", "model": model, "method": method,
                          "sparsity": sparsity, "mask_seed": seed, "mask_step": masks[-1][1], "masks": written,
                          "mlm_dev_loss": written[-1]["mlm_dev_loss"], "kd_dev_loss": written[-1]["kd_dev_loss"],
                          "wall_s": 1.0, "device": "cuda", "info": config})
        self.written.update({(run_id, m["sparsity"], m["step"]): m for m in written})
        return run_id

    def finetune(self, model, method, sparsity, seed, step, search_id, tasks, seeds, size=None) -> None:
        mask = self.written.get((search_id, sparsity, step), {})
        for task in tasks:
            examples = size or TRAIN_SIZE[task]
            for finetune_seed in seeds:
                score = self.score(model, task, method, sparsity, step, examples, finetune_seed)
                self.rows.append({
                    "run_id": _id("finetune", model, search_id, step, task, finetune_seed, size), "stage": "finetune",
                    "model": model, "method": method, "sparsity": sparsity,
                    "mask_seed": seed if method != "full" else None, "mask_step": step if method != "full" else None,
                    "mask_run_id": search_id, "task": task, "finetune_seed": finetune_seed, "train_size": size,
                    "select_metric": METRIC[task], "best_score": score, METRIC[task]: score,
                    "mlm_dev_loss": mask.get("mlm_dev_loss"), "kd_dev_loss": mask.get("kd_dev_loss"),
                    "train_examples": examples, "wall_s": 1.0, "device": "cuda",
                    "info": {"hparams": {"lr": hparams.FINETUNE[task].lr}}})

    def paper(self) -> None:
        tasks, analysis = tuple(FULL_SCORE), hparams.ANALYSIS_TASKS
        seeds, low_seeds = hparams.FINETUNE_SEEDS, hparams.LOW_DATA_FINETUNE_SEEDS
        for model in (BERT, ROBERTA):
            bert = model == BERT
            self.finetune(model, "full", 0.0, None, None, None, tasks, seeds)
            for sparsity in hparams.OMP_RAND_SPARSITIES:
                main = sparsity in hparams.SPARSITIES
                for method, mask_seeds in (("omp", (0,)), ("rand", hparams.MASK_SEEDS)):
                    for seed in mask_seeds:
                        if bert or main:
                            run = self.search(model, method, sparsity, seed, [(sparsity, 0)])
                            self.finetune(model, method, sparsity, seed, 0, run, tasks, seeds)
            for seed in hparams.MASK_SEEDS:
                for interval in hparams.IMP_COST_INTERVALS if bert else (2792,):
                    steps = [(round(s / 10, 1), (s - 1) * interval) for s in range(1, 10)]
                    run = self.search(model, "imp", 0.9, seed, steps, interval)
                    for sparsity, step in steps:
                        if interval == 2792 and sparsity in hparams.SPARSITIES:
                            self.finetune(model, "imp", sparsity, seed, step, run, tasks, seeds)
                        elif sparsity in hparams.COST_SPARSITIES:
                            self.finetune(model, "imp", sparsity, seed, step, run, analysis, seeds)
                for method in ("tamt-mlm", "tamt-kd"):
                    for sparsity in hparams.SPARSITIES:
                        main = hparams.TAMT_STEPS[sparsity]
                        along = bert and sparsity in hparams.CORRELATION_SPARSITIES
                        steps = sorted({main, *hparams.TAMT_COST_STEPS}) if along else [main]
                        run = self.search(model, method, sparsity, seed, [(sparsity, s) for s in steps])
                        for step in steps:
                            self.finetune(model, method, sparsity, seed, step, run,
                                          tasks if step == main else analysis, seeds)
        for sparsity in hparams.SIMILARITY_SPARSITIES:
            self.similarity(sparsity)
        self.low_data(low_seeds)
        self.rows.append({"run_id": _id("dense", BERT), "stage": "dense-loss", "model": BERT, "method": "full",
                          "sparsity": 0.0, "mlm_dev_loss": 1.85, "kd_dev_loss": 0.0, "wall_s": 1.0})

    def similarity(self, sparsity: float) -> None:
        finetuned = {(r["mask_run_id"], r["mask_step"]): r for r in self.rows
                     if r["stage"] == "finetune" and r["model"] == BERT and r["sparsity"] == sparsity
                     and r["method"] != "full" and r["method"] != "rand"}
        masks = sorted({(r["method"], r["mask_seed"], run, step) for (run, step), r in finetuned.items()})
        omp = next(m for m in masks if m[0] == "omp")
        main = [m for m in masks if m[0] == "omp" or (m[3] == hparams.TAMT_STEPS[sparsity] and m[0] != "imp")
                or (m[0] == "imp" and m[3] == (10 * sparsity - 1) * 2792)]

        def pair(a, b):
            distance = 0.02 if b[0] == "imp" else (0.25 if b[0] == "tamt-kd" else 0.45) * min(1, b[3] / 17000)
            return {**{f"a_{k}": v for k, v in zip(("method", "seed", "run_id", "step"), a)},
                    **{f"b_{k}": v for k, v in zip(("method", "seed", "run_id", "step"), b)},
                    "similarity": 1 - distance - 0.02 * (a[0] != "omp")}

        reference = [pair(omp, m) for m in masks if m != omp]
        every = [pair(a, b) for i, a in enumerate(main) for b in main[i + 1:]]
        for name, pairs in (("reference", reference), ("all", every)):
            self.rows.append({"run_id": _id("similarity", name, sparsity), "stage": "similarity", "model": BERT,
                              "method": None, "sparsity": sparsity, "pairs": pairs, "steps": len(pairs)})

    def low_data(self, seeds) -> None:
        main = {(r["method"], r["mask_seed"]): (r["mask_run_id"], r["mask_step"]) for r in self.rows
                if r["stage"] == "finetune" and r["model"] == BERT and r["sparsity"] == hparams.LOW_DATA_SPARSITY
                and r["task"] == "rte"}
        for task, sizes in hparams.LOW_DATA_SIZES.items():
            for size in sizes:
                self.finetune(BERT, "full", 0.0, None, None, None, (task,), seeds, size)
                for (method, seed), (run, step) in main.items():
                    if method in ("omp", "imp", "tamt-mlm", "tamt-kd"):
                        self.finetune(BERT, method, hparams.LOW_DATA_SPARSITY, seed, step, run, (task,), seeds, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="where the figures go (default: a temporary directory)")
    parser.add_argument("--runs", default=None, help="where the synthetic table goes (default: temporary)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        runs = Path(args.runs or Path(scratch) / "runs")
        out = Path(args.out or Path(scratch) / "figures")
        synthetic = Synthetic()
        synthetic.paper()
        storage = Storage.at(str(runs))
        storage.prepare()
        started = time.perf_counter()
        for row in synthetic.rows:
            write_row(storage, row)
        written = time.perf_counter() - started
        started = time.perf_counter()
        rows = table.load(runs)
        read = time.perf_counter() - started
        started = time.perf_counter()
        code = figures.main(["--runs", str(runs), "--out", str(out)])
        drawn = time.perf_counter() - started
        record_as_sweep(storage, synthetic.rows)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sweeps", "status", "--storage", str(runs)], check=True,
                       cwd=Path(__file__).resolve().parent.parent)
        status = time.perf_counter() - started
        stages = rows["stage"].value_counts().to_dict()
        print("\n| rows | stages | write_row (all) | analysis.table.load | python -m analysis.figures (all) | "
              "python -m sweeps status |")
        print("|---|---|---|---|---|---|")
        print(f"| {len(rows):,} | {stages} | {written:.1f} s | {read:.1f} s | {drawn:.1f} s (exit {code}) | "
              f"{status:.2f} s |")


def record_as_sweep(storage: Storage, rows: list[dict]) -> None:
    """The rows as the plan of one sweep ``paper``, as a driver records it, with 1 % of the trials failed (their
    rows removed) and 32 running: what ``status`` reads at the paper's scale."""
    trials = [{"run_id": row["run_id"], "stage": row["stage"], "method": row.get("method") or row["stage"],
               "label": f"{row['stage']} {row.get('method')}", "needs": [row["mask_run_id"]] if row.get("mask_run_id")
               else [], "gpu_s": 3600.0 if row["stage"] == "search" else 900.0} for row in rows]
    for trial in trials[::100]:
        storage.local_root.joinpath("table", f"{trial['run_id']}.parquet").unlink()
        ledger.record_failure(storage, trial["run_id"], sweep="paper", stage=trial["stage"], label=trial["label"],
                              error="Traceback (most recent call last):\n…\ntorch.OutOfMemoryError: CUDA out of memory")
    ledger.write_plan(storage, "paper", trials, {"tamt": "bench"}, {})
    running = [trial["run_id"] for trial in trials[1:33]]
    for run_id in running:
        storage.local_root.joinpath("table", f"{run_id}.parquet").unlink()
    ledger.write_heartbeat(storage, "paper", time.time() - 3600, running)


if __name__ == "__main__":
    main()
