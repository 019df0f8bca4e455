"""The one command that draws the paper's figures: hand-built result tables with known values in, the numbers it
reports and the files it writes out; missing inputs are reported as skipped, never drawn empty."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest

from analysis import figures, similarity, table
from analysis.pretrain_cost import describe, reach
from orchestrator.results import write_row
from orchestrator.storage import Storage

MODEL = "tiny-bert"
ALL_FIGURES = {f.name for f in figures.FIGURES}


def _finetune(method, sparsity, mask_seed, run, step, task, seed, score, *, size=None, examples=320, mlm=None,
              kd=None, model=MODEL):
    return {"run_id": f"ft-{model}-{run}-{step}-{task}-{seed}-{size}", "stage": "finetune", "model": model,
            "method": method, "sparsity": sparsity, "mask_seed": mask_seed, "mask_step": step, "mask_run_id": run,
            "task": task, "finetune_seed": seed, "train_size": size, "select_metric": "accuracy",
            "best_score": score, "accuracy": score, "mlm_dev_loss": mlm, "kd_dev_loss": kd,
            "train_examples": size or examples, "wall_s": 1.0, "device": "cpu"}


def _search(run, method, sparsity, seed, masks, interval=None):
    """``masks``: (sparsity, step, train_s, mlm, kd) per written mask."""
    return {"run_id": run, "stage": "search", "model": MODEL, "method": method, "sparsity": sparsity,
            "mask_seed": seed, "mask_step": masks[-1][1], "wall_s": 1.0, "device": "cpu",
            "info": {"search_config": {"method": method, "pruning_interval": interval or 4}},
            "masks": [{"sparsity": s, "step": step, "train_s": t, "mlm_dev_loss": m, "kd_dev_loss": k}
                      for s, step, t, m, k in masks]}


def _pair(a, b, similarity_value):
    """``a``, ``b``: (run, method, seed, step)."""
    keys = ("run_id", "method", "seed", "step")
    return {**{f"a_{k}": v for k, v in zip(keys, a)}, **{f"b_{k}": v for k, v in zip(keys, b)},
            "similarity": similarity_value}


OMP, IMP = ("omp50", "omp", 0, 0), ("imp1", "imp", 1, 40)
MLM, KD = ("mlm1", "tamt-mlm", 1, 20), ("kd1", "tamt-kd", 1, 20)


def sweep_rows() -> list[dict]:
    """Every stage at 50 %, two tasks. Hand values: OMP SST-2 80/82, RTE 60/62 (fine-tune seeds 1/2); the full
    model SST-2 90/92, RTE 70/72; Rand seeds 1/2 (fine-tune seed 1) SST-2 60/64 and RTE 50 (seed 1 only)."""
    rows = [_search("omp50", "omp", 0.5, 0, [(0.5, 0, 0.0, 7.0, 0.30)]),
            _search("rand1", "rand", 0.5, 1, [(0.5, 0, 0.0, 8.0, 0.50)]),
            _search("rand2", "rand", 0.5, 2, [(0.5, 0, 0.0, 8.2, 0.52)]),
            # IMP at P=10 reaches 50 % at step 40 and P=5 at step 20; TAMT-MLM masks at steps 10 and 20.
            _search("imp1", "imp", 0.5, 1, [(0.1, 0, 0.0, 6.0, 0.1), (0.5, 40, 80.0, 6.5, 0.25)], interval=10),
            _search("imp1b", "imp", 0.5, 1, [(0.1, 0, 0.0, 6.0, 0.1), (0.5, 20, 40.0, 6.8, 0.28)], interval=5),
            _search("mlm1", "tamt-mlm", 0.5, 1, [(0.5, 10, 4.0, 6.4, 0.4), (0.5, 20, 8.0, 6.0, 0.35)]),
            _search("kd1", "tamt-kd", 0.5, 1, [(0.5, 10, 5.0, 6.9, 0.2), (0.5, 20, 10.0, 6.7, 0.15)]),
            {"run_id": "dense", "stage": "dense-loss", "model": MODEL, "method": "full", "sparsity": 0.0,
             "mlm_dev_loss": 5.0, "kd_dev_loss": 0.0}]
    for seed, (sst2, rte) in {1: (90, 70), 2: (92, 72)}.items():
        rows += [_finetune("full", 0.0, None, None, None, "sst2", seed, sst2),
                 _finetune("full", 0.0, None, None, None, "rte", seed, rte)]
        rows += [_finetune("omp", 0.5, 0, "omp50", 0, "sst2", seed, sst2 - 10, mlm=7.0, kd=0.30),
                 _finetune("omp", 0.5, 0, "omp50", 0, "rte", seed, rte - 10, mlm=7.0, kd=0.30)]
    rows += [_finetune("rand", 0.5, 1, "rand1", 0, "sst2", 1, 60, mlm=8.0, kd=0.5),
             _finetune("rand", 0.5, 2, "rand2", 0, "sst2", 1, 64, mlm=8.2, kd=0.52),
             _finetune("rand", 0.5, 1, "rand1", 0, "rte", 1, 50, mlm=8.0, kd=0.5)]
    # IMP: the P=10 mask is the main one (both tasks), P=5 only SST-2; IMP's best SST-2 score is 85 at step 40.
    rows += [_finetune("imp", 0.5, 1, "imp1", 40, "sst2", 1, 85, mlm=6.5, kd=0.25),
             _finetune("imp", 0.5, 1, "imp1", 40, "rte", 1, 63, mlm=6.5, kd=0.25),
             _finetune("imp", 0.5, 1, "imp1b", 20, "sst2", 1, 83, mlm=6.8, kd=0.28)]
    # TAMT: step 20 is the main mask (both tasks), step 10 SST-2 only; MLM reaches 85 at step 10 (4× fewer).
    rows += [_finetune("tamt-mlm", 0.5, 1, "mlm1", 10, "sst2", 1, 85, mlm=6.4, kd=0.4),
             _finetune("tamt-mlm", 0.5, 1, "mlm1", 20, "sst2", 1, 88, mlm=6.0, kd=0.35),
             _finetune("tamt-mlm", 0.5, 1, "mlm1", 20, "rte", 1, 66, mlm=6.0, kd=0.35),
             _finetune("tamt-kd", 0.5, 1, "kd1", 10, "sst2", 1, 81, mlm=6.9, kd=0.2),
             _finetune("tamt-kd", 0.5, 1, "kd1", 20, "sst2", 1, 84, mlm=6.7, kd=0.15),
             _finetune("tamt-kd", 0.5, 1, "kd1", 20, "rte", 1, 64, mlm=6.7, kd=0.15)]
    # Low data: SST-2 on 80 examples for OMP and TAMT-MLM's main masks.
    rows += [_finetune("omp", 0.5, 0, "omp50", 0, "sst2", 1, 55, size=80, mlm=7.0, kd=0.30),
             _finetune("tamt-mlm", 0.5, 1, "mlm1", 20, "sst2", 1, 65, size=80, mlm=6.0, kd=0.35)]
    masks = [OMP, IMP, MLM, KD]
    rows += [{"run_id": "sim-ref", "stage": "similarity", "model": MODEL, "sparsity": 0.5,
              "pairs": [_pair(OMP, ("mlm1", "tamt-mlm", 1, 10), 0.8), _pair(OMP, MLM, 0.6),
                        _pair(OMP, ("kd1", "tamt-kd", 1, 10), 0.9), _pair(OMP, KD, 0.85), _pair(OMP, IMP, 0.95)]},
             {"run_id": "sim-all", "stage": "similarity", "model": MODEL, "sparsity": 0.5,
              "pairs": [_pair(a, b, 0.5 + 0.1 * i) for i, (a, b) in
                        enumerate((a, b) for n, a in enumerate(masks) for b in masks[n + 1:])]}]
    return rows


def _store(tmp_path, rows) -> str:
    storage = Storage.at(str(tmp_path / "runs"))
    for row in rows:
        write_row(storage, row)
    return str(tmp_path / "runs")


def _run(runs: str, out) -> tuple[int, str]:
    printed = io.StringIO()
    code = figures.main(["--runs", runs, "--out", str(out)], out=printed)
    return code, printed.getvalue()


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> str:
    """The hand-built sweep written as trials write their rows."""
    return _store(tmp_path_factory.mktemp("analysis"), sweep_rows())


@pytest.fixture(scope="module")
def drawn(stored, tmp_path_factory):
    """The command run once on the hand-built sweep: (exit code, printed output, out directory)."""
    out = tmp_path_factory.mktemp("figures")
    code, printed = _run(stored, out)
    return code, printed, out


def test_every_figure_with_inputs_is_written_as_png_and_pdf(drawn):
    code, printed, out = drawn
    assert code == 0
    expected = ALL_FIGURES - {"fig9_bert_vs_roberta"}
    for name in expected:
        for suffix in (".png", ".pdf"):
            assert (out / f"{name}{suffix}").stat().st_size > 5_000, name
    assert "skipped fig9_bert_vs_roberta" in printed and "needs OMP fine-tunes of two models" in printed
    assert not (out / "fig9_bert_vs_roberta.png").exists()
    assert f"{len(expected)} of {len(ALL_FIGURES)} figures drawn" in printed
    assert str((out / "report.html").resolve()) in printed


def test_results_table_holds_hand_computed_means_stds_and_averages(drawn):
    long = pd.read_csv(drawn[2] / "results.csv")
    cell = long.set_index(["method", "sparsity", "task"])
    # OMP SST-2: 80, 82 → mean 81, sample std √((1 + 1) / 1) = √2.
    assert cell.loc[("omp", 0.5, "sst2"), "mean"] == pytest.approx(81.0)
    assert cell.loc[("omp", 0.5, "sst2"), "std"] == pytest.approx(math.sqrt(2))
    # OMP average: mean of task means (81 + 61) / 2 = 71; replicate averages 70 and 72 → std √2.
    assert cell.loc[("omp", 0.5, "average"), "mean"] == pytest.approx(71.0)
    assert cell.loc[("omp", 0.5, "average"), "std"] == pytest.approx(math.sqrt(2))
    # Rand: SST-2 (60 + 64) / 2 = 62, RTE 50 → average (62 + 50) / 2 = 56, over the one complete replicate.
    assert cell.loc[("rand", 0.5, "average"), "mean"] == pytest.approx(56.0)
    assert cell.loc[("rand", 0.5, "average"), "n"] == 1
    # TAMT-MLM's main mask is step 20 (both tasks), not step 10: (88 + 66) / 2 = 77.
    assert cell.loc[("tamt-mlm", 0.5, "average"), "mean"] == pytest.approx(77.0)
    # IMP's main mask is P=10's (both tasks): SST-2 85, not P=5's 83.
    assert cell.loc[("imp", 0.5, "sst2"), "mean"] == pytest.approx(85.0)
    # The low-data runs on 80 examples are not main results.
    assert cell.loc[("omp", 0.5, "sst2"), "n"] == 2
    markdown = (drawn[2] / "results.md").read_text()
    assert "Average over: SST-2, RTE" in markdown
    assert "| Sparsity | Method | SST-2 (Acc) | RTE (Acc) | Average | n |" in markdown
    assert "| 50% | OMP | 81.0 ± 1.4 | 61.0 ± 1.4 | 71.0 ± 1.4 | 2 |" in markdown
    assert "TAMT-MLM 50% 20" in markdown  # which step stands for TAMT


def test_average_over_fewer_tasks_is_marked(tmp_path, monkeypatch):
    rows = [r for r in sweep_rows() if not (r["stage"] == "finetune" and r["method"] == "rand"
                                            and r["task"] == "rte")]
    monkeypatch.setattr(figures, "FIGURES", [f for f in figures.FIGURES if f.name == "fig1_omp_vs_rand"])
    code, printed = _run(_store(tmp_path, rows), tmp_path / "figures")
    assert code == 0
    assert "missing: Rand 50%: RTE" in printed
    markdown = (tmp_path / "figures" / "results.md").read_text()
    # Rand ran SST-2 only: its average is SST-2's, std over both replicates √((2² + 2²) / 1) = 2.8.
    assert "| 50% | Rand | 62.0 ± 2.8 | — | 62.0 ± 2.8 † | 2 |" in markdown
    assert "† Rand 50%: average of SST-2" in markdown


def test_fig5_reports_how_many_times_fewer_iterations_tamt_needs(drawn):
    # IMP's best SST-2 score 85 took 40 iterations (80 s); TAMT-MLM reaches 85 at step 10 (4 s): 4× and 20×.
    assert ("50%, SST-2: IMP's best 85.0 took 40 iterations; TAMT-MLM reaches it at 10: 4.0× fewer iterations, "
            "20.0× less time") in drawn[1]
    assert "TAMT-KD stays below it up to 20 iterations" in drawn[1]
    assert "4.0× fewer iterations" in (drawn[2] / "report.html").read_text()


def test_reach_takes_the_cheapest_imp_point_at_its_best_and_the_first_tamt_step_above_it():
    imp = pd.DataFrame({"mask_step": [100, 200, 300], "train_s": [10.0, 20.0, 30.0], "mean": [70.0, 75.0, 75.0]})
    tamt = pd.DataFrame({"mask_step": [10, 20, 40], "train_s": [2.0, 5.0, 9.0], "mean": [60.0, 75.5, 80.0]})
    result = reach(tamt, imp)
    assert (result.imp_best, result.imp_step, result.tamt_step) == (75.0, 200, 20)
    assert result.fewer_iterations == pytest.approx(200 / 20)
    assert result.less_time == pytest.approx(20.0 / 5.0)
    never = reach(tamt.assign(mean=[60.0, 70.0, 74.9]), imp)
    assert never.tamt_step is None and never.fewer_iterations is None
    assert "TAMT-KD stays below it up to 40" in describe("tamt-kd", 0.7, never, 40, ["sst2"])


def test_similarity_matrix_comes_from_the_all_pairs_trial(stored):
    pairs = table.similarity_pairs(table.load(stored))
    found = similarity.matrix(pairs, 0.5)
    assert list(found.index) == ["OMP", "IMP-1", "TAMT-MLM-1", "TAMT-KD-1"]
    # Pairs in order (OMP,IMP) .5, (OMP,MLM) .6, (OMP,KD) .7, (IMP,MLM) .8, (IMP,KD) .9, (MLM,KD) 1.0.
    assert found.loc["OMP", "TAMT-KD-1"] == pytest.approx(0.7) == found.loc["TAMT-KD-1", "OMP"]
    assert found.loc["IMP-1", "TAMT-MLM-1"] == pytest.approx(0.8)
    assert found.loc["TAMT-KD-1", "TAMT-KD-1"] == 1.0
    reference_only = pairs[pairs["trial"] == "sim-ref"]
    assert similarity.matrix(reference_only, 0.5) is None  # a star of pairs with OMP is no heatmap


def test_distance_from_omp_joins_each_mask_with_its_scores(stored):
    frame = table.load(stored)
    curves, tasks = similarity.distance_points(frame, table.similarity_pairs(frame), 0.5)
    assert tasks == ["sst2"]  # the tasks every compared mask was fine-tuned on
    point = curves.set_index(["method", "mask_step"])
    assert point.loc[("tamt-mlm", 10), "distance"] == pytest.approx(0.2)
    assert point.loc[("tamt-mlm", 10), "mean"] == pytest.approx(85.0)
    assert point.loc[("omp", 0), "distance"] == 0.0
    assert point.loc[("omp", 0), "mean"] == pytest.approx(81.0)


def test_figures_whose_inputs_are_missing_are_skipped_not_drawn_empty(tmp_path):
    full_only = [r for r in sweep_rows() if r["stage"] == "finetune" and r["method"] == "full"]
    stale = tmp_path / "figures" / "fig7_low_data.png"  # from an earlier run on another table
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    code, printed = _run(_store(tmp_path, full_only), tmp_path / "figures")
    assert code == 0
    assert f"0 of {len(ALL_FIGURES)} figures drawn" in printed
    for name in ALL_FIGURES:
        assert f"skipped {name}" in printed
        assert not (tmp_path / "figures" / f"{name}.png").exists()
    assert "run sweeps/pretrain_cost.py" in printed and "run sweeps/mask_similarity.py" in printed
    report = (tmp_path / "figures" / "report.html").read_text()
    assert "Not drawn" in report and "Fig. 7" in report


def test_a_missing_table_is_a_clear_error(tmp_path, capsys):
    assert figures.main(["--runs", str(tmp_path / "nowhere"), "--out", str(tmp_path / "f")]) == 2
    assert "no results table under" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


def test_rerun_reads_only_new_rows_and_drops_deleted_ones(tmp_path):
    rows = sweep_rows()
    runs = _store(tmp_path, rows[:-3])
    out = tmp_path / "figures"
    assert len(table.load(runs, cache=out / figures.CACHE)) == len(rows) - 3
    write_row(Storage.at(runs), rows[-1])
    (tmp_path / "runs" / "table" / f"{rows[0]['run_id']}.parquet").unlink()
    lines = []
    again = table.load(runs, cache=out / figures.CACHE, log=lines.append)
    assert lines == [f"reading 1 rows from {tmp_path / 'runs' / 'table'}/ ({len(rows) - 4:,} cached)"]
    assert set(again["run_id"]) == {r["run_id"] for r in rows[1:-3]} | {rows[-1]["run_id"]}
