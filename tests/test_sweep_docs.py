"""Writing your own sweep: docs/sweeps.md's generated reference is current and the template runs from any
folder."""

from __future__ import annotations

import ast
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import plan_of
from sweeps import presets_of, reference
from sweeps.common import first_paragraph

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "docs" / "examples" / "my_sweep.py"


# --- the page ---------------------------------------------------------------------------------------------------

def test_the_pages_reference_is_generated_from_the_code():
    committed = reference.generated_section(reference.PAGE.read_text())
    assert committed == reference.render(), (
        f"docs/sweeps.md's generated section is out of date with the code: run `{reference.COMMAND}` and commit "
        "the page")


def test_a_parameter_without_documentation_fails_the_rendering():
    def documented(grid, interval):
        """Change a grid.

        Args:
            grid: the grid.
            interval: the interval.
        """

    def undocumented(grid, interval):
        """Change a grid.

        Args:
            grid: the grid.
            steps: a parameter it does not have.
        """

    assert [p.name for p in reference.parameters(documented)] == ["grid", "interval"]
    with pytest.raises(reference.DocError, match=r"without an entry.*: interval; Args entries for no parameter: steps"):
        reference.parameters(undocumented)


def test_args_entries_read_from_a_docstring():
    def f(mask_seeds, finetune_seeds, *args, **axes):
        """Summary.

        Args:
            mask_seeds, finetune_seeds: seeds, which go
                on here.
            *args: positional.
            **axes: the rest; ``x`` and :class:`~orchestrator.grid.Grid`.

        Returns:
            Nothing.
        """

    assert reference.documented_args(f) == {"mask_seeds": "seeds, which go on here.",
                                            "finetune_seeds": "seeds, which go on here.",
                                            "args": "positional.",
                                            "axes": "the rest; ``x`` and :class:`~orchestrator.grid.Grid`."}
    assert reference.markdown(reference.documented_args(f)["axes"]) == "the rest; `x` and `Grid`."
    assert [p.name for p in reference.parameters(f)] == ["mask_seeds", "finetune_seeds", "*args", "**axes"]


# --- the template -----------------------------------------------------------------------------------------------

def test_the_templates_paper_trials_are_all_among_the_main_jobs():
    template = runpy.run_path(str(TEMPLATE))["PRESETS"]
    mine = plan_of(template["paper"]())
    assert len(mine.searches) == 8 and len(mine.finetunes) == 54  # docs/sweeps.md counts them
    assert set(mine.run_ids()) <= set(plan_of(presets_of("main_results")["paper"]()).run_ids())


@pytest.mark.slow
def test_the_template_runs_from_a_folder_outside_the_repository(tmp_path):
    """Copied anywhere, it imports the installed package (no sys.path edit) and says its own name."""
    assert ROOT not in tmp_path.parents
    shutil.copy(TEMPLATE, tmp_path / "my_sweep.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1",
                                                                         "HF_DATASETS_OFFLINE": "1"}

    def run(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "my_sweep.py", *flags], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)

    done = run("--dry-run", "--preset", "smoke", "--storage", str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr
    assert "sweep my_sweep, preset smoke: 5 unique trials (2 mask searches, 3 fine-tunes, 0 measurements)" in \
        done.stdout
    assert not (tmp_path / "runs").exists()
    done = run("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python my_sweep.py [-h]")
    paragraph = first_paragraph(ast.get_docstring(ast.parse(TEMPLATE.read_text())))
    assert "".join(paragraph.split()) in "".join(done.stdout.split())
