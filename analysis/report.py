"""One self-contained HTML file to send a colleague. It leads with the findings (``analysis.findings``) and the
results table; then every figure drawn (PNG inlined) with the cells it lacks, the sweep's settings as the table
records them (those that apply to each method), the package versions, and last the figures not drawn and why."""

from __future__ import annotations

import base64
import html
import json
import platform
from datetime import datetime, UTC
from importlib import metadata
from pathlib import Path

import pandas as pd

from analysis import findings, results_table, style, table

ENVIRONMENT = ("matplotlib", "pandas", "numpy", "pyarrow")
"""Packages that drew this report (the sweep's own are in the table's ``versions`` column)."""

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, td:nth-child(2) { text-align: left; }
.scroll { overflow-x: auto; max-width: 100%; }
table.pairs { table-layout: fixed; width: 100%; }
table.pairs th:first-child, table.pairs td:first-child { width: 16em; }
table.pairs th { text-align: left; }
table.pairs td { text-align: left; overflow-wrap: anywhere; vertical-align: top; }
code, pre { background: #f6f6f6; font-size: 0.85em; }
.findings li { margin: 0.3em 0; }
.notes { font-size: 0.9em; color: #444; }
.skipped { font-size: 0.85em; color: #555; }
"""

def _h(text) -> str:
    return html.escape(str(text))


def _figure(outcome) -> str:
    png = next(path for path in outcome.files if path.suffix == ".png")
    data = base64.b64encode(png.read_bytes()).decode()
    parts = [f"<h3>{_h(outcome.figure.title)}</h3>",
             f'<img alt="{_h(outcome.figure.name)}" src="data:image/png;base64,{data}">',
             f"<p>Files: {', '.join(f'<code>{_h(p.name)}</code>' for p in outcome.files)}</p>"]
    if outcome.missing:
        parts.append(f"<details><summary>{len(outcome.missing)} missing cells (drawn without them)</summary><ul>"
                     + "".join(f"<li>{_h(m)}</li>" for m in outcome.missing) + "</ul></details>")
    return "\n".join(parts)


def _values(column: pd.Series, fmt=str) -> str:
    values = column.dropna().unique()
    return ", ".join(fmt(v) for v in sorted(values)) if len(values) else "—"


LEGACY_RECORD: dict[str, object] = {
    "steps": None, "lr": None, "batch_size": None, "weight_decay": None, "block_size": 512, "schedule_steps": None,
    "threshold_period": 1, "save_steps": [], "pruning_interval": 2792, "rewind": True, "zero_rounding": "floor",
    "kd_include_padding": False, "max_grad_norm": 1.0, "alpha": 2.0, "phi": 1e-2, "adam_epsilon": None,
    "kd_sequence_mean": False, "precision": None,
}
"""The search-config record of the first table rows (``FIRST_RECORD`` in ``tamt_core/search/config.py``, copied
here because the analysis does not import the training code; a test checks the copy): one record held every
method's settings, each at this value where the method had no such setting."""

_TRAINING = ("lr", "batch_size", "weight_decay", "block_size", "schedule_steps", "max_grad_norm", "adam_epsilon",
             "precision")
_TAMT = (*_TRAINING, "steps", "save_steps", "threshold_period", "zero_rounding", "alpha", "phi")
LEGACY_SETTINGS: dict[str, tuple[str, ...]] = {
    "omp": (), "rand": (), "imp": (*_TRAINING, "pruning_interval", "rewind"), "tamt-mlm": _TAMT,
    "tamt-kd": (*_TAMT, "kd_include_padding", "kd_sequence_mean"),
}
"""The settings each method of the first record takes (their settings dataclasses in ``tamt_core.methods``; a test
checks the copy). A method's row records only these since; a legacy row's other keys are dropped from the report
when they hold their :data:`LEGACY_RECORD` value (a different value is shown: it would be a surprise)."""

PER_TRIAL = ("method", "sparsity", "seed", "save_steps")
"""Search-config keys that vary per trial of one sweep or are shown elsewhere (the grid's rows)."""


def applying(method: str, config: dict) -> dict:
    """The settings of ``config`` (a search row's ``search_config``) that apply to ``method``: all of a newer
    row's, and of a legacy row those the method takes or that differ from the first record's values."""
    takes = LEGACY_SETTINGS.get(method)
    out = {}
    for key, value in config.items():
        if key in PER_TRIAL:
            continue
        if takes is not None and key not in takes and key in LEGACY_RECORD and value == LEGACY_RECORD[key]:
            continue
        out[key] = value
    return dict(sorted(out.items()))


def setting_text(values: dict) -> str:
    """``{"lr": 0.0003, "steps": 90, "weight_decay": None}`` → "lr 0.0003, steps 90, weight_decay default"."""
    if not values:
        return "none (the method takes no settings)"

    def show(value) -> str:
        if value is None:
            return "default"
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value)) or "none"
        return f"{value:g}" if isinstance(value, float) else str(value)

    return ", ".join(f"{key} {show(value)}" for key, value in values.items())


def plural(count: int, noun: str) -> str:
    """1 → "1 row", 3 → "3 rows"."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def settings(rows: pd.DataFrame) -> pd.DataFrame:
    """The sweep's settings as the rows record them: grid axes, then each method's search settings (only those
    that apply to it, :func:`applying`) and each task's fine-tuning hyper-parameters (distinct values, with how
    many runs used each)."""
    tuned, searches = table.stage(rows, "finetune"), table.stage(rows, "search")
    out = [("trials", ", ".join(f"{stage} {count}" for stage, count in rows["stage"].value_counts().items())),
           ("models", _values(rows["model"], style.model_name)),
           ("methods", ", ".join(style.method_name(m) for m in style.method_order(rows["method"].dropna().unique()))
            or "—"),
           ("sparsities", _values(rows.loc[rows["method"] != "full", "sparsity"], style.percent)),
           ("mask seeds", _values(searches["mask_seed"], lambda v: str(int(v)))),
           ("fine-tuning seeds", _values(tuned["finetune_seed"], lambda v: str(int(v)))),
           ("tasks", ", ".join(style.task_name(t) for t in style.ordered(tuned["task"].dropna().unique(), style.TASKS))
            or "—"),
           ("training-set sizes", _values(tuned["train_size"], lambda v: f"{int(v):,}")
            + (" and the whole set" if tuned["train_size"].isna().any() else "")),
           ("devices", _values(rows["device"])),
           ("finished", f"{rows['finished_at'].min()} – {rows['finished_at'].max()}"
            if rows["finished_at"].notna().any() else "—"),
           ("compute (sum of trial wall time)", f"{rows['wall_s'].sum() / 3600:.2f} h")]
    configs = table.info(searches).map(lambda parsed: parsed.get("search_config") or {})
    for method in style.method_order(searches["method"].dropna().unique()):
        group = configs[searches["method"] == method]
        texts = group.map(lambda config, m=method: setting_text(applying(m, config)))
        for text, count in texts.value_counts().items():
            out.append((f"search {style.method_name(method)} ({plural(count, 'run')})", text))
    hparams = table.info(tuned).map(lambda parsed: setting_text(dict(sorted((parsed.get("hparams") or {}).items()))))
    for (task, text), count in hparams.groupby(tuned["task"]).value_counts().items():
        out.append((f"fine-tune {style.task_name(task)} ({plural(count, 'run')})", text))
    return pd.DataFrame(out, columns=["setting", "value"])


def versions(rows: pd.DataFrame) -> pd.DataFrame:
    """Package versions that ran the trials (each distinct set, with its row count), and that drew this report:
    one row each, the packages as one wrapping line."""
    recorded = rows["versions"].dropna().map(lambda v: json.dumps(dict(sorted(v.items()))))
    out = [(f"trials ({plural(count, 'row')})", json.loads(text)) for text, count in recorded.value_counts().items()]
    here = {"python": platform.python_version()}
    for package in ENVIRONMENT:
        try:
            here[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    out.append(("this report", here))
    return pd.DataFrame([(where, ", ".join(f"{name} {version}" for name, version in packages.items()))
                         for where, packages in out], columns=["where", "packages"])


def _pairs(frame: pd.DataFrame) -> str:
    """A two-column table that wraps its second column to the page's width."""
    return frame.to_html(index=False, border=0, classes="pairs")


def write(rows: pd.DataFrame, outcomes, results: results_table.ResultsTable | None, tables: list[Path], out: Path,
          *, runs: str, model: str | None, stale: tuple[pd.DataFrame, bool] | None = None) -> Path:
    """Write ``report.html`` under ``out``; returns its path. ``stale``: the stale rows of the table
    (``analysis.table.newest``) and whether they were kept in ``rows``.

    The page reads top down: the findings (from the results table, then the numbers figures recompute), the
    results table, stale rows, the figures, the sweep's settings, the package versions, and last the figures that
    were not drawn, one line each."""
    drawn = [o for o in outcomes if not o.skipped]
    skipped = [o for o in outcomes if o.skipped]
    parts = [f"<h1>tamt: results of {_h(runs)}</h1>",
             f"<p>{plural(len(rows), 'row')}; per-model analyses for <b>{_h(model)}</b>; {len(drawn)} of "
             f"{plural(len(outcomes), 'figure')} drawn"
             + (f' (<a href="#not-drawn">{len(skipped)} not drawn</a>, listed at the end)' if skipped else "")
             + f". Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by <code>python -m analysis.figures</code>. "
             "Scores are dev-set metrics (0-100), mean ± std over mask seeds × fine-tuning seeds.</p>"]
    stated = findings.findings(results) if results is not None else {}
    quoted = [f for o in drawn for f in o.findings]
    if any(stated.values()) or quoted:
        parts.append("<h2>Findings</h2>")
        for table_model, lines in stated.items():
            if len(stated) > 1:
                parts.append(f"<h3>{_h(style.model_name(table_model))}</h3>")
            parts.append('<ul class="findings">' + "".join(f"<li>{_h(line)}</li>" for line in lines) + "</ul>")
        if quoted:
            parts += ["<h3>Numbers the paper quotes, from this table</h3>",
                      '<ul class="findings">' + "".join(f"<li>{_h(f)}</li>" for f in quoted) + "</ul>"]
    if results is not None:
        parts.append("<h2>Results table</h2>")
        for table_model in results.tasks:
            cells, notes = results_table.wide(results, table_model)
            parts += [f"<h3>{_h(style.model_name(table_model))}</h3>",
                      f'<div class="scroll">{cells.to_html(index=False, border=0)}</div>',
                      *[f"<p>{_h(n)}</p>" for n in notes],
                      '<div class="notes">' + "".join(f"<p>{_h(n)}</p>" for n in
                                                      results_table.notes_below(results, table_model)) + "</div>"]
        parts.append(f"<p>Also as {', '.join(f'<code>{_h(p.name)}</code>' for p in tables)}.</p>")
    if stale is not None and len(stale[0]):
        rows_of_older_code, kept = stale
        parts += ["<h2>Stale rows</h2>",
                  f"<p>{plural(len(rows_of_older_code), 'row')} are results of trials that newer code (a raised "
                  f"algorithm version) ran again; they are {'kept in' if kept else 'left out of'} every figure and "
                  f"table here{'' if kept else ' (<code>--include-stale</code> keeps them)'}:</p>",
                  "<ul>" + "".join(f"<li>{_h(line)}</li>" for line in table.describe_stale(rows_of_older_code))
                  + "</ul>"]
    if drawn:
        parts += ["<h2>Figures</h2>",
                  '<p class="notes">Points are mean ± std (error bars) over seeds; methods at one sparsity stand '
                  "side by side around it, so that none hides another. Hollow markers are cells the table marks "
                  f"{results_table.AT_CHANCE} (chance level). The dashed line is the full model, its std a grey "
                  "band.</p>", *[_figure(o) for o in drawn]]
    parts += ["<h2>Sweep settings</h2>", _pairs(settings(rows)),
              "<h2>Package versions</h2>", _pairs(versions(rows))]
    if skipped:
        parts += [f'<h2 id="not-drawn">Not drawn ({len(skipped)})</h2>',
                  '<ul class="skipped">' + "".join(f"<li>{_h(o.figure.title)}: {_h(o.skipped)}</li>"
                                                   for o in skipped) + "</ul>"]
    page = out / "report.html"
    out.mkdir(parents=True, exist_ok=True)
    page.write_text(f'<!doctype html><html><head><meta charset="utf-8"><title>tamt results</title>'
                    f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                    f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    return page
