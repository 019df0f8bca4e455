"""Draw every figure of the paper the results table has data for, the results table, and an HTML report.

    python -m analysis.figures --runs ./tamt-runs --out figures/

Reads only the table (``analysis.table``). Each figure is drawn if its inputs are there, else reported as
skipped with the reason; cells a figure lacks are listed. The analyses of §4.2.2-4.2.5 are drawn for one model
(``--model``, default: the one with the most fine-tunes, BERT-base in the paper's sweeps); Fig. 3 and 9 use all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pandas as pd

from analysis import (findings, low_data, main_results, omp_vs_rand, pretrain_cost, pretrain_loss, report,
                      results_table, similarity, style, table)
from analysis.figure import Figure, Skip

FIGURES: tuple[Figure, ...] = (*omp_vs_rand.FIGURES, *main_results.FIGURES, *pretrain_loss.FIGURES,
                               *pretrain_cost.FIGURES, *similarity.FIGURES, *low_data.FIGURES)
"""In the paper's order of discussion: Fig. 1, 8, 3, 9, 4, 10, 11, 5, 12-14, 6 and 15, 7."""

CACHE = "rows.parquet"
"""Every row the figures were drawn from, in one file beside them: the next run reads only newer rows."""


@dataclass
class Outcome:
    figure: Figure
    files: list[Path] = field(default_factory=list)
    skipped: str | None = None
    missing: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)


def analysis_model(rows: pd.DataFrame, requested: str | None) -> str | None:
    """The model the per-model analyses are drawn for: ``requested``, else the one with the most fine-tunes."""
    models = rows.loc[rows["stage"] == "finetune", "model"].value_counts()
    if requested is not None:
        if requested not in set(rows["model"]):
            raise table.TableError(f"--model {requested} has no rows; the table has: "
                                   f"{', '.join(sorted(rows['model'].dropna().unique()))}")
        return requested
    return models.index[0] if len(models) else None


def draw(figure: Figure, rows: pd.DataFrame, out: Path, model: str | None) -> Outcome:
    """Draw one figure into ``out``, or record why it is skipped (and remove a stale file of it from an earlier
    run, which would no longer match the table)."""
    outcome = Outcome(figure)
    try:
        drawing = figure.draw(rows[rows["model"] == model] if figure.per_model else rows)
    except Skip as why:
        outcome.skipped = str(why)
        for stale in (out / f"{figure.name}.png", out / f"{figure.name}.pdf"):
            stale.unlink(missing_ok=True)
        return outcome
    outcome.files = style.save(drawing.figure, out, figure.name)
    outcome.missing, outcome.findings = drawing.missing, drawing.findings
    return outcome


def print_outcome(outcome: Outcome, out: TextIO) -> None:
    if outcome.skipped:
        print(f"[tamt] skipped {outcome.figure.name} ({outcome.figure.title}): {outcome.skipped}", file=out)
        return
    print(f"[tamt] drew {outcome.figure.name} ({outcome.figure.title})", file=out)
    for line in outcome.missing[:8]:
        print(f"         missing: {line}", file=out)
    if len(outcome.missing) > 8:
        print(f"         … and {len(outcome.missing) - 8} more cells missing (listed in the report)", file=out)
    for line in outcome.findings:
        print(f"         {line}", file=out)
    out.flush()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis.figures", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="./tamt-runs", help="a sweep's --storage (default ./tamt-runs)")
    parser.add_argument("--out", default="figures", help="where figures, table and report go (default figures/)")
    parser.add_argument("--model", help="model of the per-model analyses (default: the one with most fine-tunes)")
    parser.add_argument("--include-stale", action="store_true",
                        help="keep rows of older algorithm versions beside the newer rows of the same trials "
                             "(default: only the newest version of each, docs/results.md)")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        rows = table.load(args.runs, cache=Path(args.out) / CACHE, log=lambda line: print(f"[tamt] {line}", file=out))
        current, stale = table.newest(rows)
        if not args.include_stale:
            rows = current
        model = analysis_model(rows, args.model)
    except table.TableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    target = Path(args.out)
    style.register(rows["method"].dropna().unique())  # one colour per method, the same in every figure
    stages = ", ".join(f"{name} {count:,}" for name, count in rows["stage"].value_counts().items())
    print(f"[tamt] {len(rows):,} rows from {args.runs} ({stages}); per-model analyses for {model}", file=out)
    if len(stale):
        kept = "kept (--include-stale)" if args.include_stale else "left out (--include-stale keeps them)"
        print(f"[tamt] {len(stale):,} stale rows, of trials that newer code ran again, {kept}:", file=out)
        for line in table.describe_stale(stale):
            print(f"         {line}", file=out)
    outcomes = []
    for figure in FIGURES:
        outcomes.append(draw(figure, rows, target, model))
        print_outcome(outcomes[-1], out)
    results = results_table.build(rows) if (rows["stage"] == "finetune").any() else None
    written = results_table.write(results, target) if results is not None else []
    page = report.write(rows, outcomes, results, written, target, runs=args.runs, model=model,
                        stale=(stale, args.include_stale))
    if results is not None:
        for table_model, lines in findings.findings(results).items():
            print(f"[tamt] findings for {style.model_name(table_model)}:", file=out)
            for line in lines:
                print(f"         {line}", file=out)
    drawn = sum(1 for outcome in outcomes if not outcome.skipped)
    print(f"[tamt] {drawn} of {len(outcomes)} figures drawn (PNG and PDF) in {target.resolve()}/", file=out)
    for path in written:
        print(f"[tamt] table: {path.resolve()}", file=out)
    print(f"[tamt] report: {page.resolve()}", file=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
