"""One self-contained HTML file to send a colleague: every figure drawn (PNG inlined), what was skipped and what
is missing, the results table, the sweep's settings as the table records them, and the package versions."""

from __future__ import annotations

import base64
import html
import json
import platform
from datetime import datetime, UTC
from importlib import metadata
from pathlib import Path

import pandas as pd

from analysis import results_table, style, table

ENVIRONMENT = ("matplotlib", "pandas", "numpy", "pyarrow")
"""Packages that drew this report (the sweep's own are in the table's ``versions`` column)."""

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, td:nth-child(2) { text-align: left; }
code, pre { background: #f6f6f6; font-size: 0.85em; }
.skipped { color: #8a5a00; }
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


def settings(rows: pd.DataFrame) -> pd.DataFrame:
    """The sweep's settings as the rows record them: grid axes, then each method's search configurations and
    each task's fine-tuning hyper-parameters (distinct values, with how many runs used each)."""
    tuned, searches = table.stage(rows, "finetune"), table.stage(rows, "search")
    out = [("trials", ", ".join(f"{stage} {count}" for stage, count in rows["stage"].value_counts().items())),
           ("models", _values(rows["model"])),
           ("methods", _values(rows["method"], style.method_name)),
           ("sparsities", _values(rows.loc[rows["method"] != "full", "sparsity"], style.percent)),
           ("mask seeds", _values(searches["mask_seed"], lambda v: str(int(v)))),
           ("fine-tuning seeds", _values(tuned["finetune_seed"], lambda v: str(int(v)))),
           ("tasks", _values(tuned["task"], style.task_name)),
           ("training-set sizes", _values(tuned["train_size"], lambda v: f"{int(v):,}")
            + (" and the whole set" if tuned["train_size"].isna().any() else "")),
           ("devices", _values(rows["device"])),
           ("finished", f"{rows['finished_at'].min()} – {rows['finished_at'].max()}"),
           ("compute (sum of trial wall time)", f"{rows['wall_s'].sum() / 3600:.2f} h")]
    configs = table.info(searches).map(lambda parsed: parsed.get("search_config") or {})
    per_trial = {"seed", "sparsity", "save_steps", "method"}
    for method, group in configs.groupby(searches["method"]):
        distinct = group.map(lambda c: json.dumps({k: v for k, v in sorted(c.items()) if k not in per_trial}))
        for config, count in distinct.value_counts().items():
            out.append((f"search {style.method_name(method)} ({count} runs)", config))
    hparams = table.info(tuned).map(lambda parsed: json.dumps(parsed.get("hparams", {}), sort_keys=True))
    for (task, config), count in hparams.groupby(tuned["task"]).value_counts().items():
        out.append((f"fine-tune {style.task_name(task)} ({count} runs)", config))
    return pd.DataFrame(out, columns=["setting", "value"])


def versions(rows: pd.DataFrame) -> pd.DataFrame:
    """Package versions that ran the trials (each distinct set, with its row count), and that drew this report."""
    recorded = rows["versions"].dropna().map(lambda v: json.dumps(dict(sorted(v.items()))))
    out = [{"where": f"trials ({count} rows)", **json.loads(text)} for text, count in recorded.value_counts().items()]
    here = {"python": platform.python_version()}
    for package in ENVIRONMENT:
        try:
            here[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    out.append({"where": "this report", **here})
    return pd.DataFrame(out).fillna("")


def write(rows: pd.DataFrame, outcomes, results: results_table.ResultsTable | None, tables: list[Path], out: Path,
          *, runs: str, model: str | None, stale: tuple[pd.DataFrame, bool] | None = None) -> Path:
    """Write ``report.html`` under ``out``; returns its path. ``stale``: the stale rows of the table
    (``analysis.table.newest``) and whether they were kept in ``rows``."""
    drawn = [o for o in outcomes if not o.skipped]
    skipped = [o for o in outcomes if o.skipped]
    findings = [f for o in drawn for f in o.findings]
    parts = [f"<h1>tamt: results of {_h(runs)}</h1>",
             f"<p>{len(rows)} rows; per-model analyses for <b>{_h(model)}</b>; {len(drawn)} of {len(outcomes)} "
             f"figures drawn. Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by "
             "<code>python -m analysis.figures</code>. Scores are dev-set metrics (0-100), mean ± std over mask "
             "seeds × fine-tuning seeds.</p>"]
    if findings:
        parts += ["<h2>Findings</h2>", "<ul>" + "".join(f"<li>{_h(f)}</li>" for f in findings) + "</ul>"]
    if stale is not None and len(stale[0]):
        rows_of_older_code, kept = stale
        parts += ["<h2>Stale rows</h2>",
                  f"<p>{len(rows_of_older_code)} rows are results of trials that newer code (a raised algorithm "
                  f"version) ran again; they are {'kept in' if kept else 'left out of'} every figure and table "
                  f"here{'' if kept else ' (<code>--include-stale</code> keeps them)'}:</p>",
                  "<ul>" + "".join(f"<li>{_h(line)}</li>" for line in table.describe_stale(rows_of_older_code))
                  + "</ul>"]
    if skipped:
        parts += ["<h2>Skipped figures</h2>", "<ul>" + "".join(
            f'<li class="skipped"><b>{_h(o.figure.title)}</b>: {_h(o.skipped)}</li>' for o in skipped) + "</ul>"]
    parts += ["<h2>Figures</h2>", *[_figure(o) for o in drawn]]
    if results is not None:
        parts.append("<h2>Results table</h2>")
        for table_model in results.tasks:
            cells, notes = results_table.wide(results, table_model)
            parts += [f"<h3>{_h(style.model_name(table_model))}</h3>",
                      *[f"<p>{_h(n)}</p>" for n in results_table.notes_below(results, table_model)],
                      cells.to_html(index=False, border=0), *[f"<p>{_h(n)}</p>" for n in notes]]
        parts.append(f"<p>Also as {', '.join(f'<code>{_h(p.name)}</code>' for p in tables)}.</p>")
    parts += ["<h2>Sweep settings</h2>", settings(rows).to_html(index=False, border=0),
              "<h2>Package versions</h2>", versions(rows).to_html(index=False, border=0)]
    page = out / "report.html"
    out.mkdir(parents=True, exist_ok=True)
    page.write_text(f'<!doctype html><html><head><meta charset="utf-8"><title>tamt results</title>'
                    f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    return page
