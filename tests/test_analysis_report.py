"""``report.html`` and the findings that lead it: the order a reader meets things in, statements read off the
table with its numbers, only the settings that apply to each method, versions that wrap, and counted nouns.

Synthetic frames and a one-pixel PNG: the report is written without drawing a figure."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from analysis import findings, report, results_table
from analysis.figure import Figure
from analysis.figures import Outcome

CHANCE = {"sst2": 50.0, "rte": 52.0}
NAN = float("nan")
LEGACY = {"steps": None, "lr": None, "batch_size": None, "weight_decay": None, "block_size": 512,
          "schedule_steps": None, "threshold_period": 1, "save_steps": [], "pruning_interval": 2792, "rewind": True,
          "zero_rounding": "floor", "kd_include_padding": False, "max_grad_norm": 1.0, "alpha": 2.0, "phi": 0.01,
          "adam_epsilon": None, "kd_sequence_mean": False, "precision": None}
"""A search config of the first record: every method's settings in every row."""


def _run(method, sparsity, seed, task, score, *, model="m"):
    run = None if method == "full" else f"{method}-{sparsity}"
    return {"run_id": f"{model}-{method}-{sparsity}-{task}-{seed}", "stage": "finetune", "model": model,
            "method": method, "sparsity": 0.0 if method == "full" else sparsity, "mask_seed": 1 if run else None,
            "mask_run_id": run, "mask_step": 0 if run else None, "task": task, "finetune_seed": seed,
            "train_size": None, "train_examples": 320, "best_score": score, "select_metric": "accuracy",
            "info": json.dumps({"chance": {"accuracy": CHANCE[task]}, "hparams": {"lr": 1e-4, "epochs": 2}}),
            "device": "cpu", "wall_s": 10.0, "finished_at": pd.Timestamp("2026-01-01"),
            "versions": {"python": "3.11", "torch": "2.13.0", "transformers": "5.25.0", "tamt": "0.1.0"}}


def _search(method, config, *, versions=None):
    return {"run_id": f"search-{method}", "stage": "search", "model": "m", "method": method, "sparsity": 0.5,
            "mask_seed": 1, "mask_step": 0, "task": None, "finetune_seed": None, "train_size": None,
            "info": json.dumps({"search_config": {"method": method, "sparsity": 0.5, "seed": 1, **config}}),
            "device": "cpu", "wall_s": 5.0, "finished_at": pd.Timestamp("2026-01-01"),
            "versions": versions}


# SST-2 at 50 %: TAMT-KD 87 ± 1 is highest; IMP 85 ± 1 and OMP 85 ± 1 are 2 below (beyond ± 1); Rand 50 ± 1 at
# chance (50). RTE: TAMT-KD 60 ± 1, OMP 60.5 ± 1 (within the spread), IMP 55 ± 1, Rand 53 ± 1 (at chance, 52).
SCORES = {("full", 0.0): {"sst2": (90, 91, 92), "rte": (65, 66, 67)},
          ("omp", 0.5): {"sst2": (84, 85, 86), "rte": (59.5, 60.5, 61.5)},
          ("rand", 0.5): {"sst2": (49, 50, 51), "rte": (52, 53, 54)},
          ("imp", 0.5): {"sst2": (84, 85, 86), "rte": (54, 55, 56)},
          ("tamt-kd", 0.5): {"sst2": (86, 87, 88), "rte": (59, 60, 61)}}


def rows(*, extra_search: bool = False) -> pd.DataFrame:
    out = [_run(method, sparsity, seed, task, score) for (method, sparsity), tasks in SCORES.items()
           for task, values in tasks.items() for seed, score in enumerate(values, start=1)]
    out += [_search("omp", LEGACY), _search("rand", LEGACY),
            _search("imp", {**LEGACY, "pruning_interval": 4, "batch_size": 8}),
            _search("tamt-kd", {"lr": 3e-4, "steps": 90, "save_steps": [45, 90]}, versions={"python": "3.11"})]
    return pd.DataFrame(out)


def test_findings_name_the_highest_method_its_ties_and_the_differences_to_omp_with_numbers():
    lines = findings.findings(results_table.build(rows()))["m"]
    # The average of SST-2 and RTE: TAMT-KD (87 + 60) / 2 = 73.5; OMP (85 + 60.5) / 2 = 72.75, IMP 70, Rand 51.5.
    # Replicate averages: TAMT-KD 72.5/73.5/74.5 (std 1), OMP 71.75/72.75/73.75 (std 1): within the spread.
    assert lines[0] == "Scores below are the average of SST-2, RTE; the full model scores 78.5 ± 1.0."
    headline = lines[1]
    assert headline.startswith("50%: TAMT-KD scores highest, 73.5 ± 1.0 (5.0 below the full model); "
                               "OMP 72.8 ± 1.0 is within its seed spread.")
    assert headline.endswith("Against OMP (72.8 ± 1.0): within the seed spread TAMT-KD +0.8; "
                             "beyond it Rand −21.2, IMP −2.8.")
    assert "Highest on SST-2: TAMT-KD at 50%." in lines
    assert "Highest on RTE: OMP at 50%." in lines
    chance = next(line for line in lines if line.startswith("At chance level"))
    assert "Rand 50% SST-2 50.0 ± 1.0 (chance 50.0)" in chance and "Rand 50% RTE 53.0 ± 1.0 (chance 52.0)" in chance
    assert "OMP" not in chance
    assert any("Each cell averages 3 runs" in line and "one sparsity (50%)" in line for line in lines)


def test_findings_say_when_the_highest_is_beyond_the_spread_of_the_next():
    one_task = rows()
    one_task = one_task[one_task["task"].isin(["sst2"]) | one_task["task"].isna()]
    lines = findings.findings(results_table.build(one_task))["m"]
    assert lines[0] == "Scores below are the SST-2 scores; the full model scores 91.0 ± 1.0."
    assert lines[1].startswith("50%: TAMT-KD scores highest, 87.0 ± 1.0 (4.0 below the full model), beyond the "
                               "seed spread of the next, OMP 85.0 ± 1.0.")  # OMP ties IMP: the paper's order
    assert not any(line.startswith("Highest on") for line in lines)  # one task: the headline says it


def test_findings_are_per_model():
    two = pd.concat([rows(), pd.DataFrame([_run("omp", 0.5, 1, "sst2", 70, model="other"),
                                           _run("rand", 0.5, 1, "sst2", 60, model="other")])])
    stated = findings.findings(results_table.build(two))
    assert set(stated) == {"m", "other"}
    assert stated["other"][1].startswith("50%: OMP scores highest, 70.0, ahead of the next (one run each: no seed "
                                         "spread to compare), Rand 60.0.")


def test_settings_show_only_what_applies_to_each_method():
    table = report.settings(rows()).set_index("setting")["value"]
    assert table["search OMP (1 run)"] == "none (the method takes no settings)"  # a legacy row: all dropped
    imp = table["search IMP (1 run)"]
    assert "pruning_interval 4" in imp and "batch_size 8" in imp and "lr default" in imp
    assert "alpha" not in imp and "threshold_period" not in imp and "kd_include_padding" not in imp
    assert table["search TAMT-KD (1 run)"] == "lr 0.0003, steps 90"  # save_steps vary per trial: left out
    assert table["fine-tune SST-2 (15 runs)"] == "epochs 2, lr 0.0001"
    assert not any(value.startswith("{") for value in table)  # no raw JSON


def test_a_legacy_value_that_differs_from_the_first_record_is_still_shown():
    assert report.applying("omp", {**LEGACY, "pruning_interval": 7}) == {"pruning_interval": 7}
    assert report.applying("wanda", {"lr": None, "sparsity": 0.5}) == {"lr": None}  # newer rows: all kept


def test_legacy_record_and_settings_match_the_training_code():
    """The analysis keeps its own copy of the first record (it does not import tamt_core); it must not drift."""
    from tamt_core.methods import METHODS
    from tamt_core.methods.base import setting_names
    from tamt_core.search.config import FIRST_RECORD

    assert report.LEGACY_RECORD == FIRST_RECORD
    first = {name for name, method in METHODS.items() if method.first_record}
    assert set(report.LEGACY_SETTINGS) == first
    for name in first:
        assert set(report.LEGACY_SETTINGS[name]) == set(setting_names(METHODS[name].settings)), name


def test_versions_are_two_columns_and_rows_are_counted_in_the_singular_and_plural():
    table = report.versions(rows())
    assert list(table.columns) == ["where", "packages"]
    assert "trials (1 row)" in set(table["where"]) and "trials (30 rows)" in set(table["where"])
    assert "python 3.11, tamt 0.1.0, torch 2.13.0, transformers 5.25.0" in set(table["packages"])
    assert report.plural(1, "row") == "1 row" and report.plural(2, "run") == "2 runs"


def _outcomes(tmp_path):
    png = tmp_path / "fig3_main_results.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    drawn = Outcome(Figure("fig3_main_results", "Fig. 3: drawn", lambda rows: None), files=[png],
                    findings=["a number the paper quotes"])
    skipped = [Outcome(Figure(f"fig{n}", f"Fig. {n}: skipped", lambda rows: None), skipped=f"needs sweep {n}")
               for n in (4, 5)]
    return [drawn, *skipped]


def test_report_leads_with_findings_and_the_table_and_ends_with_what_was_not_drawn(tmp_path):
    frame = rows()
    page = report.write(frame, _outcomes(tmp_path), results_table.build(frame), [], tmp_path, runs="runs",
                        model="m").read_text()
    headings = re.findall(r"<h2[^>]*>([^<]+)</h2>", page)
    assert headings == ["Findings", "Results table", "Figures", "Sweep settings", "Package versions",
                        "Not drawn (2)"]
    assert page.index("TAMT-KD scores highest") < page.index("Results table")
    assert page.index("a number the paper quotes") < page.index("Results table")
    not_drawn = page[page.index("Not drawn (2)"):]
    assert not_drawn.count("<li>") == 2 and "Fig. 4: skipped: needs sweep 4" in not_drawn
    assert "1 of 3 figures drawn" in page and "2 not drawn" in page
    assert "1 rows" not in page and "trials (1 row)" in page
    assert '"pruning_interval": 2792' not in page and "pruning_interval 2792" not in page
    assert 'class="dataframe pairs"' in page  # settings and versions in the wrapping two-column layout
    assert "overflow-wrap: anywhere" in page


@pytest.mark.parametrize("skipped", [0, 1])
def test_report_without_skipped_figures_has_no_not_drawn_section(tmp_path, skipped):
    frame = rows()
    outcomes = _outcomes(tmp_path)[:1 + skipped]
    page = report.write(frame, outcomes, results_table.build(frame), [], tmp_path, runs="runs",
                        model="m").read_text()
    assert ("Not drawn" in page) == bool(skipped)


def test_findings_write_neighbouring_sparsities_as_a_range_and_skip_a_highest_at_chance():
    assert findings.percents([0.5, 0.6, 0.7, 0.9], [0.2, 0.5, 0.6, 0.7, 0.8, 0.9]) == "50–70%, 90%"
    assert findings.percents([0.2, 0.5], [0.2, 0.5, 0.6]) == "20%, 50%"
    assert findings.signed(-0.04) == "0.0" and findings.signed(1.26) == "+1.3" and findings.signed(-2) == "−2.0"
    # At 70 % every method is at chance on SST-2 (50): no method is "highest" there.
    at_chance = {("omp", 0.7): {"sst2": (49, 50, 51)}, ("rand", 0.7): {"sst2": (49.5, 50.5, 51.5)}}
    frame = pd.concat([rows(), pd.DataFrame([_run(m, s, seed, task, score) for (m, s), tasks in at_chance.items()
                                             for task, values in tasks.items()
                                             for seed, score in enumerate(values, start=1)])])
    lines = findings.findings(results_table.build(frame))["m"]
    assert "Highest on SST-2: TAMT-KD at 50%; every method at chance level at 70%." in lines


def test_cells_of_one_run_are_not_said_to_differ_beyond_a_spread_they_do_not_have():
    one_run = pd.DataFrame([_run("omp", 0.5, 1, "sst2", 80), _run("imp", 0.5, 1, "sst2", 82),
                            _run("rand", 0.5, 1, "sst2", 70), _run("rand", 0.5, 2, "sst2", 72)])
    built = results_table.build(one_run)
    lines = findings.findings(built)["m"]
    assert lines[1].startswith("50%: IMP scores highest, 82.0, ahead of the next (one run each: no seed spread to "
                               "compare), OMP 80.0.")
    # Rand has a spread (70/72: std 1.4) and OMP none: the measured one decides, as in the table.
    assert "beyond it Rand −9.0; one run each, no spread to compare IMP +2.0." in lines[1]
    # The table's ≈ takes the measured std whichever cell has it.
    assert results_table.within_spread(80, float("nan"), 81, 1.5) and results_table.within_spread(81, 1.5, 80, NAN)
    assert not results_table.within_spread(80, NAN, 80.5, NAN)
