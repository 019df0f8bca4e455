"""How the figures draw the table's cells: one x value as points with error bars (no line), methods side by side so
none hides another, chance-level cells hollow, OMP − Rand on a readable axis, and any method its own colour.

Synthetic frames in, matplotlib artists out: no store, no files, a second or two."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer

from analysis import main_results, omp_vs_rand, results_table, style

CHANCE = {"sst2": 50.0, "rte": 52.0}


def _run(method, sparsity, seed, task, score):
    run = None if method == "full" else f"{method}-{sparsity}"
    return {"run_id": f"{method}-{sparsity}-{task}-{seed}", "stage": "finetune", "model": "m", "method": method,
            "sparsity": 0.0 if method == "full" else sparsity, "mask_seed": 1 if run else None,
            "mask_run_id": run, "mask_step": 0 if run else None, "task": task, "finetune_seed": seed,
            "train_size": None, "train_examples": 320, "best_score": score, "select_metric": "accuracy",
            "info": json.dumps({"chance": {"accuracy": CHANCE[task]}})}


def frame(scores: dict[tuple[str, float, str], tuple[float, ...]]) -> pd.DataFrame:
    """(method, sparsity, task) → one score per fine-tuning seed."""
    return pd.DataFrame([_run(method, sparsity, seed, task, score)
                         for (method, sparsity, task), values in scores.items()
                         for seed, score in enumerate(values, start=1)])


# OMP and IMP have equal means (a marker of one would hide the other's); Rand is at chance (50 ± 1 on SST-2).
ONE_SPARSITY = {("full", 0.0, "sst2"): (90, 91, 92), ("omp", 0.5, "sst2"): (84, 85, 86),
                ("imp", 0.5, "sst2"): (84, 85, 86), ("rand", 0.5, "sst2"): (49, 50, 51),
                ("tamt-kd", 0.5, "sst2"): (86, 87, 88)}
TWO_SPARSITIES = {**ONE_SPARSITY, ("omp", 0.7, "sst2"): (78, 80, 82), ("imp", 0.7, "sst2"): (79, 80, 81),
                  ("rand", 0.7, "sst2"): (49, 50, 51), ("tamt-kd", 0.7, "sst2"): (81, 82, 83)}


def _bars(ax) -> dict[str, ErrorbarContainer]:
    return {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}


def _bar_lengths(container) -> list[float]:
    (bars,) = container.lines[2]
    return [abs(segment[1][1] - segment[0][1]) for segment in bars.get_segments()]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_a_panel_with_one_sparsity_draws_points_with_error_bars_and_no_line():
    drawing = main_results.draw_main(frame(ONE_SPARSITY))
    ax = drawing.figure.axes[0]
    bars = _bars(ax)
    assert set(bars) == {"OMP", "Rand", "IMP", "TAMT-KD"}
    for label, container in bars.items():
        assert container.lines[0].get_linestyle() == "None", label  # no line joins the points
        assert container.has_yerr
    # OMP 84/85/86: std 1, a bar from 84 to 86.
    assert _bar_lengths(bars["OMP"]) == [pytest.approx(2.0)]
    assert not [c for c in ax.collections if c.__class__.__name__ == "FillBetweenPolyCollection"]  # no band
    # An axis around the one sparsity, not 48-52 from matplotlib's padding of a zero-width range: one tick at 50.
    assert list(ax.get_xticks()) == [50.0]
    low, high = ax.get_xlim()
    positions = [c.lines[0].get_xdata()[0] for c in bars.values()]
    assert low < min(positions) and max(positions) < high and high - low <= 4 + 2


def test_methods_with_equal_means_are_drawn_side_by_side():
    ax = main_results.draw_main(frame(ONE_SPARSITY)).figure.axes[0]
    bars = _bars(ax)
    omp, imp = (bars[name].lines[0] for name in ("OMP", "IMP"))
    assert omp.get_ydata()[0] == imp.get_ydata()[0] == pytest.approx(85.0)
    assert omp.get_xdata()[0] != imp.get_xdata()[0]
    positions = [c.lines[0].get_xdata()[0] for c in bars.values()]
    assert len(set(positions)) == len(positions)
    assert min(positions) < 50 < max(positions)  # around the true sparsity, in the paper's method order
    assert [c.get_label() for c in sorted(bars.values(), key=lambda c: c.lines[0].get_xdata()[0])] == \
        ["OMP", "Rand", "IMP", "TAMT-KD"]


def test_several_sparsities_draw_lines_with_visible_error_bars_dodged_a_little():
    ax = main_results.draw_main(frame(TWO_SPARSITIES)).figure.axes[0]
    bars = _bars(ax)
    for label, container in bars.items():
        assert container.lines[0].get_linestyle() == "-", label
        assert len(container.lines[0].get_xdata()) == 2
    assert _bar_lengths(bars["OMP"]) == [pytest.approx(2.0), pytest.approx(4.0)]  # std 1 at 50 %, 2 at 70 %
    assert list(ax.get_xticks()) == [50.0, 70.0]
    omp, imp = (bars[name].lines[0].get_xdata() for name in ("OMP", "IMP"))
    assert all(a != b for a, b in zip(omp, imp))
    assert all(abs(x - true) < 2 for x, true in zip(omp, (50, 70)))  # a shift, not a move to another sparsity


def test_cells_at_chance_are_hollow_with_a_legend_note():
    drawing = main_results.draw_main(frame(ONE_SPARSITY))
    ax = drawing.figure.axes[0]
    rand_x = _bars(ax)["Rand"].lines[0].get_xdata()[0]
    hollow = [line for line in ax.lines if line.get_markerfacecolor() in ("white", (1.0, 1.0, 1.0, 1.0))
              and len(line.get_xdata())]
    assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in hollow] == [(rand_x, pytest.approx(50.0))]
    assert hollow[0].get_markeredgecolor() == style.COLORS["rand"]
    legend = [text.get_text() for legend in drawing.figure.legends for text in legend.get_texts()]
    assert style.CHANCE_LABEL in legend
    # The table marks the same cell, and only it.
    marked = results_table.marked_cells(frame(ONE_SPARSITY))
    assert set(marked.loc[marked["at_chance"] & (marked["task"] == "sst2"), "method"]) == {"rand"}


def test_no_chance_note_when_no_cell_is_at_chance():
    scores = {key: value for key, value in ONE_SPARSITY.items() if key[0] != "rand"}
    drawing = main_results.draw_main(frame(scores))
    legend = [text.get_text() for legend in drawing.figure.legends for text in legend.get_texts()]
    assert style.CHANCE_LABEL not in legend


def _gap_axis(figure):
    return next(ax for ax in figure.axes if ax.get_ylabel().startswith("OMP − Rand"))


def test_fig8_gap_axis_is_symmetric_with_a_minimum_span_and_a_zero_line():
    # OMP − Rand at 50 %: 80 − 79.7 = +0.3 (the plot would otherwise be filled by a 0.3-point gap).
    scores = {("omp", 0.5, "sst2"): (79, 80, 81), ("rand", 0.5, "sst2"): (78.7, 79.7, 80.7),
              ("omp", 0.7, "sst2"): (75, 76, 77), ("rand", 0.7, "sst2"): (75.5, 76.5, 77.5)}
    figure = omp_vs_rand.draw_per_task(frame(scores)).figure
    gap = _gap_axis(figure)
    low, high = gap.get_ylim()
    assert low == pytest.approx(-high) and high >= omp_vs_rand.GAP_MIN_SPAN
    assert any(list(line.get_ydata()) == [0, 0] for line in gap.lines)  # the zero line
    (container,) = _bars(gap).values()
    assert list(container.lines[0].get_ydata()) == [pytest.approx(0.3), pytest.approx(-0.5)]
    # The gap's spread: √(1² + 1²) each side.
    assert _bar_lengths(container) == [pytest.approx(2 * 2 ** 0.5)] * 2


def test_fig8_gap_axis_grows_with_a_large_gap_and_says_the_gap_at_one_sparsity():
    scores = {("omp", 0.5, "sst2"): (84, 85, 86), ("rand", 0.5, "sst2"): (59, 60, 61)}
    figure = omp_vs_rand.draw_per_task(frame(scores)).figure
    gap = _gap_axis(figure)
    assert gap.get_ylim()[1] >= 25 + 2 ** 0.5
    ax = figure.axes[0]
    assert "OMP − Rand at 50%: +25.0 ± 1.4 points" in ax.get_title()
    assert list(ax.get_xticks()) == [50.0]


def test_a_method_outside_the_paper_gets_its_own_colour_marker_and_label():
    scores = {**ONE_SPARSITY, ("wanda", 0.5, "sst2"): (83, 84, 85), ("toy", 0.5, "sst2"): (70, 71, 72)}
    drawing = main_results.draw_main(frame(scores))
    bars = _bars(drawing.figure.axes[0])
    assert {"wanda", "toy"} <= set(bars)
    colours = {label: c.lines[0].get_color() for label, c in bars.items()}
    markers = {label: c.lines[0].get_marker() for label, c in bars.items()}
    assert len(set(colours.values())) == len(colours)  # every method a colour of its own
    assert colours["wanda"] not in style.COLORS.values() and colours["toy"] not in style.COLORS.values()
    assert markers["wanda"] != markers["toy"] and markers["wanda"] not in style.MARKERS.values()
    legend = [text.get_text() for legend in drawing.figure.legends for text in legend.get_texts()]
    assert legend.index("TAMT-KD") < legend.index("toy") and legend.index("TAMT-KD") < legend.index("wanda")
    assert style.method_color("wanda") == colours["wanda"]  # the same in the next figure
    # The results table orders them after the paper's methods.
    cells, _ = results_table.wide(results_table.build(frame(scores)), "m")
    assert list(cells["Method"]) == ["Full model", "OMP", "Rand", "IMP", "TAMT-KD", "toy", "wanda"]


def test_fallback_palette_gives_many_extra_methods_distinct_pairs():
    extra = [f"method-{i:02d}" for i in range(40)]
    style.register(extra)
    pairs = {(style.method_color(m), style.method_marker(m)) for m in extra}
    assert len(pairs) == len(extra)
    assert not set(style.FALLBACK_COLORS) & set(style.COLORS.values())


def test_dodge_step_is_one_unit_for_one_x_and_a_fraction_of_the_spacing_for_several():
    assert style.dodge_step([50.0], 5) == (1.0, True)
    step, single = style.dodge_step([20.0, 50.0, 70.0], 6)
    assert not single and 0 < step * 5 <= 0.3 * 20
    assert np.isclose(style.dodge_step([50.0, 70.0], 2)[0], 0.04 * 20)


def test_fig9_draws_each_models_omp_side_by_side_at_one_sparsity():
    scores = {("omp", 0.5, "sst2"): (84, 85, 86), ("full", 0.0, "sst2"): (90, 91, 92)}
    two = pd.concat([frame(scores), frame(scores).assign(model="other", run_id=lambda f: "other-" + f["run_id"])])
    ax = main_results.draw_models(two).figure.axes[0]
    bars = _bars(ax)
    assert set(bars) == {"m OMP", "other OMP"}
    assert all(c.lines[0].get_linestyle() == "None" for c in bars.values())
    assert len({c.lines[0].get_xdata()[0] for c in bars.values()}) == 2
