"""Every sweep's plans, counted by hand from the paper and the released scripts; sharing across sweeps;
``python -m sweeps``. The smoke presets run end to end in ``test_sweeps_end_to_end.py`` and the closing notes."""

from __future__ import annotations

import ast
import io
import json
import re
import runpy
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator import cli
from orchestrator.cli import plan_of, sweep_main, union
from orchestrator.plan import PlanError
from orchestrator.specs import SimilaritySpec
from orchestrator.study import TamtStudy
from sweeps import SWEEPS, presets_of
from sweeps.__main__ import main as sweeps_main
from sweeps.common import first_paragraph
from tamt_core import hparams

ROOT = Path(__file__).resolve().parent.parent


def plan(name: str, preset: str):
    return plan_of([d for d in presets_of(name)[preset]() if not isinstance(d, TamtStudy)])


def by_method(plan, stage):
    return dict(plan.counts()[stage])


# --- paper presets, counted by hand ----------------------------------------------------------------------------

def test_main_results_paper_plan():
    p = plan("main_results", "paper")
    # 2 models × (OMP 8 sparsities; rand, TAMT-MLM, TAMT-KD 8 × 3 seeds; IMP 1 run per seed to 90 %).
    assert by_method(p, "search") == {"omp": 16, "rand": 48, "tamt-mlm": 48, "tamt-kd": 48, "imp": 6}
    # Masks × 7 tasks × 3 fine-tune seeds: OMP 16 masks, the others 48 each (IMP: 8 sparsities of 6 runs).
    assert by_method(p, "finetune") == {"omp": 336, "rand": 1008, "tamt-mlm": 1008, "tamt-kd": 1008, "imp": 1008,
                                        "full": 42}
    # TAMT at 50-80 % runs on to 25K steps and saves Tab. 2's step and Fig. 5's; Fig. 3 fine-tunes Tab. 2's step.
    for search in p.searches.values():
        if search.config.method == "tamt-kd" and search.config.sparsity == 0.7:
            assert search.config.settings.steps == 25_000
            assert set(search.config.settings.save_steps) == {17_000, *hparams.TAMT_COST_STEPS}
        if search.config.method == "tamt-mlm" and search.config.sparsity == 0.3:
            assert search.config.search_method.training_steps(search.config) == 6_000
            assert search.config.settings.save_steps == ()
    steps = {spec.mask.step for spec in p.finetunes.values()
             if spec.mask is not None and p.method_of(spec) == "tamt-mlm" and spec.mask.sparsity == 0.7}
    assert steps == {17_000}


def test_pretrain_correlation_paper_plan():
    p = plan("pretrain_correlation", "paper")
    # OMP 9 sparsities (0.1-0.9); rand 9 × 3 seeds; IMP 3 runs; TAMT 2 objectives × 4 sparsities × 3 seeds.
    assert by_method(p, "search") == {"omp": 9, "rand": 27, "imp": 3, "tamt-mlm": 12, "tamt-kd": 12}
    # OMP 9 × 7 tasks × 3 = 189; rand 27 × 21 = 567; full 21; IMP 12 masks × 5 tasks × 3 = 180;
    # TAMT 12 runs × 7 steps × 5 tasks × 3 = 1260 per objective.
    assert by_method(p, "finetune") == {"omp": 189, "rand": 567, "full": 21, "imp": 180, "tamt-mlm": 1260,
                                        "tamt-kd": 1260}
    assert by_method(p, "measure") == {"dense-loss": 1}


def test_pretrain_cost_paper_plan():
    p = plan("pretrain_cost", "paper")
    # TAMT 2 × 3 sparsities × 3 seeds; IMP 6 intervals × 3 seeds, each run to 90 %.
    assert by_method(p, "search") == {"tamt-mlm": 9, "tamt-kd": 9, "imp": 18}
    # TAMT 9 runs × 7 steps × 5 tasks × 3 = 945 per objective; IMP 18 runs × 3 sparsities × 15 = 810.
    assert by_method(p, "finetune") == {"tamt-mlm": 945, "tamt-kd": 945, "imp": 810}
    intervals = Counter(s.config.settings.pruning_interval for s in p.searches.values() if s.config.method == "imp")
    assert intervals == {interval: 3 for interval in hparams.IMP_COST_INTERVALS}
    imp_steps = {(spec.mask.sparsity, spec.mask.step) for spec in p.finetunes.values() if p.method_of(spec) == "imp"
                 and p.searches[spec.mask.search_id].config.settings.pruning_interval == 200}
    assert imp_steps == {(0.6, 1_000), (0.7, 1_200), (0.8, 1_400)}  # (10·s − 1)·P, reference-impl §10.3


def test_mask_similarity_paper_plan():
    p = plan("mask_similarity", "paper")
    # OMP 3 sparsities; IMP 6 intervals × 3 seeds; TAMT 2 × 3 sparsities × 3 seeds; no fine-tunes.
    assert by_method(p, "search") == {"omp": 3, "imp": 18, "tamt-mlm": 9, "tamt-kd": 9} and not p.finetunes
    similarities = list(p.measurements.values())
    assert all(isinstance(s, SimilaritySpec) for s in similarities) and len(similarities) == 6
    pairwise = [s for s in similarities if s.reference is None]
    along = [s for s in similarities if s.reference is not None]
    # Fig. 6 right: OMP + 3 seeds of IMP, TAMT-MLM, TAMT-KD = 10 masks → 45 pairs per sparsity.
    assert sorted(s.sparsity for s in pairwise) == [0.6, 0.7, 0.8] and {len(s.pairs()) for s in pairwise} == {45}
    # Fig. 6 left: OMP against 2 × 3 seeds × 7 steps of TAMT and 6 intervals × 3 seeds of IMP = 60 masks.
    assert {len(s.masks) for s in along} == {60}
    assert all(p.searches[s.reference.search_id].config.method == "omp" for s in along)


def test_low_data_paper_plan():
    p = plan("low_data", "paper")
    assert by_method(p, "search") == {"omp": 1, "imp": 3, "tamt-mlm": 3, "tamt-kd": 3}
    # 18 (task, size) points × 5 fine-tune seeds × (OMP 1 + 3 × 3 masks + full) = 990; the whole set: 4 tasks ×
    # 3 seeds × (1 + 9 + 1) = 132.
    assert len(p.finetunes) == 18 * 5 * 11 + 4 * 3 * 11 == 1122
    sizes = Counter((s.config.task, s.config.train_size) for s in p.finetunes.values())
    assert sizes[("mnli", 1000)] == 55 and sizes[("cola", 4000)] == 55 and sizes[("squad", None)] == 33
    epochs = {(s.config.task, s.config.train_size): s.config.epochs for s in p.finetunes.values()}
    assert epochs[("sst2", 1000)] == 8 and epochs[("cola", 2000)] == 8 and epochs[("mnli", 5000)] is None
    assert {s.config.eval_every for s in p.finetunes.values() if s.config.task == "squad" and s.config.train_size} \
        == {500}


def test_paper_union_shares_every_search_and_counts_each_trial_once():
    parts = {name: plan(name, "paper") for name in SWEEPS if name != "tune_tamt"}
    united = plan_of([d for name in parts for d in presets_of(name)["paper"]()])
    main = parts["main_results"]
    # No new TAMT search outside main_results: every analysis takes its masks from the same runs.
    assert {r for r, s in united.searches.items() if s.config.method.startswith("tamt")} == \
        {r for r, s in main.searches.items() if s.config.method.startswith("tamt")}
    # Searches: main 166 + OMP/rand at 0.1 (1 + 3) + IMP at 5 more intervals × 3 seeds (15) + Wanda's 8 sparsities
    # × 3 seeds (24) = 209.
    assert len(united.searches) == 185 + 24 == 209
    # Fine-tunes beyond main's 4410: correlation's OMP/rand at 0.1 (21 + 63) and TAMT's along-training masks
    # (2 × 12 runs × 7 steps × 15 = 2520, less the 20K step at 0.8 that main also fine-tunes: 2 × 3 × 15 = 90);
    # cost's IMP at 5 new intervals (675); low-data subsets (990); Wanda's masks (24 × 3 seeds × 7 tasks = 504).
    assert len(united.finetunes) == 4410 + 84 + 2520 - 90 + 675 + 990 + 504 == 9093
    assert len(united.measurements) == 1 + 6
    assert len(united) == 9309


def test_one_shot_adds_wanda_beside_the_main_results_own_searches_and_fine_tunes():
    """OMP's and TAMT's trials of the one-shot comparison are main_results' own run ids: only Wanda's are new."""
    one_shot, main = plan("one_shot", "paper"), plan("main_results", "paper")
    assert by_method(one_shot, "search") == {"omp": 8, "wanda": 24, "tamt-mlm": 24, "tamt-kd": 24}
    new = one_shot.run_ids() - main.run_ids()
    assert {one_shot.searches[r].config.method for r in new if r in one_shot.searches} == {"wanda"}
    assert {one_shot.method_of(one_shot.finetunes[r]) for r in new if r in one_shot.finetunes} == {"wanda"}
    assert len(new) == 24 + 24 * 3 * 7
    smoke = plan("one_shot", "smoke")
    assert by_method(smoke, "search") == {"omp": 2, "wanda": 6, "tamt-mlm": 2, "tamt-kd": 2}


# --- smoke presets ---------------------------------------------------------------------------------------------

def test_smoke_plans():
    counts = {name: (len(p.searches), len(p.finetunes), len(p.measurements))
              for name in SWEEPS if name != "tune_tamt" for p in [plan(name, "smoke")]}
    assert counts == {
        "main_results": (7, 18, 0),          # 50 %: OMP, IMP, TAMT × 2, rand × 3 seeds; 6 cells × 3 seeds
        "pretrain_correlation": (9, 15, 1),  # sst2: OMP 2, rand 2, full, IMP 2, TAMT 2 × 2 × 2 steps; dense loss
        "pretrain_cost": (4, 6, 0),          # TAMT 2 runs × 2 steps; IMP at P = 2 and 4
        "mask_similarity": (5, 0, 2),        # all pairs of 4 masks; 8 masks against OMP
        "low_data": (4, 15, 0),              # (80, 160, 320 examples) × (4 masks + full)
        "one_shot": (12, 24, 0),             # 50/70 %: OMP 2, Wanda 2 × 3 draws, TAMT 2 × 2; 24 fine-tunes
    }
    united = plan_of([d for name in SWEEPS for d in presets_of(name)["smoke"]() if not isinstance(d, TamtStudy)])
    # main's 7 + OMP and rand at 70 %, TAMT × 2 at 70 %, IMP to 70 % at P = 2 and 4, Wanda's 6; fine-tunes: main 18
    # + 21 other masks, steps and subsets + Wanda's 6 and TAMT's at 70 % with seeds 2 and 3 (2 × 2) + OMP's (2).
    assert (len(united.searches), len(united.finetunes), len(united.measurements)) == (13 + 6, 39 + 12, 3)


def test_every_sweep_has_both_presets_and_its_studies_are_valid():
    for name in SWEEPS:
        presets = presets_of(name)
        assert set(presets) == {"paper", "smoke"}
        for preset in presets.values():
            assert preset(), name
    studies = presets_of("tune_tamt")["paper"]()
    assert {(s.method, s.objective) for s in studies} == {("tamt-mlm", "mlm_dev_loss"), ("tamt-kd", "kd_dev_loss")}
    assert all(s.spec(s.midpoint()).data is not None for s in studies)  # the paper's WikiText, not the smoke corpus


# --- python -m sweeps ------------------------------------------------------------------------------------------

def test_all_sweeps_dry_run_prints_each_sweep_and_the_union(tmp_path, capsys):
    assert sweeps_main(["--all", "--preset", "paper", "--dry-run", "--storage", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    for name in SWEEPS:
        assert f"  {name} " in out
    assert "sweep all, preset paper: 9309 unique trials (209 mask searches, 9093 fine-tunes, 7 measurements)" in out
    assert "study tamt-mlm-bert-0.7: 24 Optuna trials" in out
    assert not (tmp_path / "s").exists()


def test_sweeps_module_refuses_unknown_names(capsys):
    assert sweeps_main(["main_resultz", "--dry-run"]) == 2
    assert "unknown: main_resultz" in capsys.readouterr().err
    assert sweeps_main(["--dry-run"]) == 2


def test_two_named_sweeps_unite(tmp_path):
    buffer = io.StringIO()
    parts = {name: presets_of(name) for name in ("mask_similarity", "pretrain_cost")}
    code = sweep_main("x", union(parts), ["--preset", "smoke", "--dry-run", "--storage", str(tmp_path / "s")],
                      parts=parts, out=buffer)
    assert code == 0
    # mask_similarity's 5 searches are all among pretrain_cost's 4 plus OMP at 0.7: 5 unique searches.
    assert ("sweep x, preset smoke: 13 unique trials (5 mask searches, 6 fine-tunes, 2 measurements)"
            in buffer.getvalue())


@pytest.mark.slow  # a subprocess
def test_sweep_script_runs_as_a_script():
    import subprocess

    done = subprocess.run([sys.executable, str(ROOT / "sweeps" / "low_data.py"), "--preset", "paper", "--dry-run",
                           "--storage", "/nonexistent/never-written"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "sweep low_data, preset paper: 1132 unique trials" in done.stdout


# --- --search-settings: a tuned setting feeds any sweep ---------------------------------------------------------

def test_search_settings_file_overrides_tamt_settings(tmp_path):
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"tamt-mlm": {"lr": 3e-4, "alpha": 4.0, "phi": 0.02}}))
    buffer = io.StringIO()
    presets = presets_of("main_results")
    assert sweep_main("main_results", presets, ["--preset", "smoke", "--dry-run", "--storage", str(tmp_path / "s"),
                                                "--search-settings", str(best)], out=buffer) == 0
    from orchestrator.cli import read_search_settings, with_search_settings

    grids = [with_search_settings(g, read_search_settings(str(best))) for g in presets["smoke"]()]
    tuned = plan_of(grids)
    configs = [s.config for s in tuned.searches.values() if s.config.method == "tamt-mlm"]
    assert configs and all((c.settings.lr, c.settings.alpha, c.settings.phi) == (3e-4, 4.0, 0.02) for c in configs)
    assert all(s.config.settings.alpha == hparams.ALPHA
               for s in tuned.searches.values() if s.config.method == "tamt-kd")
    assert set(tuned.searches) != set(plan("main_results", "smoke").searches)  # tuned runs are other runs


@pytest.mark.parametrize("content, words", [
    ("{not json", ["cannot read it as JSON"]),
    ('{"tamt-mlm": 5}', ["must map method names to settings"]),
    ('{"tamt-xl": {"lr": 1}}', ["unknown method", "tamt-xl"]),
    ('{"omp": {"lr": 1e-4}}', ["do not apply to omp"]),
])
def test_bad_search_settings_file_is_refused_before_anything_runs(tmp_path, capsys, content, words):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    code = sweep_main("main_results", presets_of("main_results"),
                      ["--preset", "smoke", "--storage", str(tmp_path / "s"), "--search-settings", str(bad)])
    assert code == 2
    err = capsys.readouterr().err
    assert all(word in err for word in words), err
    assert not (tmp_path / "s").exists()


def test_grid_refuses_a_finetune_step_its_runs_do_not_save():
    from sweeps.common import smoke_grid

    with pytest.raises(PlanError, match=r"steps \[12\].*add them to search\['save_steps'\]"):
        smoke_grid(methods=("tamt-kd",), sparsities=(0.7,), tasks=("rte",), finetune_steps=(12,)).plan()
    with pytest.raises(PlanError, match="imp_until 0.5 is below"):
        smoke_grid(methods=("imp",), sparsities=(0.7,), tasks=("rte",), imp_until=0.5)


def test_zero_workers_per_search_is_refused_before_anything_runs(tmp_path, capsys):
    code = sweep_main("main_results", presets_of("main_results"),
                      ["--preset", "smoke", "--storage", str(tmp_path / "s"), "--workers-per-search", "0"])
    assert code == 2
    assert "--workers-per-search must be a whole number ≥ 1" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_smoke_grid_on_an_unmeasured_task_says_so_in_its_dry_run():
    """The smoke fine-tuning settings were measured on SST-2 (docs/smoke.md): a smoke grid on MRPC carries a note,
    which the dry run prints; one on SST-2 carries none."""
    import io

    from orchestrator.cli import sweep_main
    from sweeps.common import smoke_grid

    assert smoke_grid(methods=("omp",), sparsities=(0.5,), tasks=("sst2",)).notes == ()
    presets = {"smoke": lambda: [smoke_grid(methods=("omp",), sparsities=(0.5,), tasks=("mrpc", "sst2"))]}
    printed = io.StringIO()
    assert sweep_main("mine", presets, ["--preset", "smoke", "--dry-run"], out=printed) == 0
    note = [line for line in printed.getvalue().splitlines() if line.startswith("[tamt] note:")]
    assert len(note) == 1 and "measured on sst2 only" in note[0] and "on mrpc they may" in note[0]


@pytest.mark.parametrize("period", ["-1", "nan", "often"])
def test_a_malformed_checkpoint_period_is_refused_at_parse_time(period, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep_main("main_results", presets_of("main_results"),
                   ["--preset", "smoke", "--storage", str(tmp_path / "s"), "--checkpoint-every", period])
    assert exit_info.value.code == 2
    assert "--checkpoint-every: expected a number of seconds" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


# --- a sweep's --help ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweeps_help_shows_its_whole_first_paragraph(name, monkeypatch, capsys):
    script = ROOT / "sweeps" / f"{name}.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert " ".join(out.split()).startswith(f"usage: python {script} [-h]")
    paragraph = first_paragraph(ast.get_docstring(ast.parse(script.read_text())))
    assert paragraph.endswith("."), f"{name}'s first paragraph is no complete sentence: {paragraph!r}"
    assert "".join(paragraph.split()) in "".join(out.split())  # argparse wraps it, at hyphens too


def test_the_usage_line_names_the_program_as_it_was_started(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/home/me/exp/my_sweep.py"])
    assert cli.build_parser("", {"smoke": list}).format_usage().startswith("usage: python /home/me/exp/my_sweep.py ")
    monkeypatch.setattr(sys, "argv", [str(ROOT / "sweeps" / "__main__.py")])
    assert cli.build_parser("", {"smoke": list}).format_usage().startswith("usage: python -m sweeps ")


def test_every_sweep_flag_has_help():
    parser = cli.build_parser("", {"smoke": list})
    assert [action.dest for action in parser._actions if not action.help] == []


def test_a_sweep_without_the_default_preset_asks_for_one(tmp_path, capsys):
    code = sweep_main("mine", {"tiny": presets_of("main_results")["smoke"]}, ["--storage", str(tmp_path / "s")])
    assert code == 2
    err = capsys.readouterr().err
    assert "this sweep has no smoke preset" in err and "choose with --preset tiny" in err
    assert not (tmp_path / "s").exists()


# --- what the docs say of the main job --------------------------------------------------------------------------

def test_smoke_doc_counts_the_main_jobs_trials():
    smoke = plan_of(presets_of("main_results")["smoke"]())
    text = " ".join((ROOT / "docs" / "smoke.md").read_text().split())
    found = re.search(r"(\d+) searches and (\d+) \+ (\d+) fine-tunes, (\d+) trials", text)
    assert found, "docs/smoke.md no longer counts the main job's smoke trials"
    searches, masked, full, trials = map(int, found.groups())
    full_model = sum(1 for spec in smoke.finetunes.values() if spec.mask is None)
    assert (searches, masked, full, trials) == (len(smoke.searches), len(smoke.finetunes) - full_model, full_model,
                                                len(smoke))


def test_the_sweeps_last_lines_and_the_readme_name_the_same_reader(tmp_path):
    from orchestrator import results
    from orchestrator.storage import Storage

    storage = Storage.at(str(tmp_path / "runs"))
    report = SimpleNamespace(storage=storage, complete=True, interrupted=False, signalled=False, succeeded=[],
                             skipped=0, failed={}, blocked=[], cut_off=0, mlflow_uri="sqlite:///x.db",
                             experiment_id="1")
    out = io.StringIO()
    cli.print_where(report, out)
    assert f"orchestrator.results.read_frame({storage.uri!r})" in out.getvalue()
    assert "orchestrator.results.read_frame(" in (ROOT / "README.md").read_text()
    assert callable(results.read_frame)
