"""Which code produced a result: package versions, the algorithm's version, and the git commit of a checkout.

Every results row carries :func:`provenance` in its ``versions`` column, and every MLflow child run the same as
``tamt.*`` tags, so a number in the table can be traced to the exact code that computed it: the ``tamt`` release,
the version of the method or stage in :func:`tamt_core.ids.algorithm_versions`, and, when tamt runs from a git
checkout, its commit and whether the working tree had uncommitted changes (``git_dirty``).
"""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import tamt_core
from tamt_core.ids import algorithm_versions

PACKAGES = ("tamt", "torch", "transformers", "datasets", "ray", "mlflow", "pyarrow")


def package_versions() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def source_revision(root: Path | None = None) -> dict[str, str]:
    """``{"git_commit": sha, "git_dirty": "true"/"false"}`` of the checkout tamt runs from; ``{}`` when it is an
    installed package (no ``.git``) or git is not available."""
    root = root or Path(tamt_core.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return {}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        changes = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": "true" if changes else "false"}


def provenance(algorithm: str, *, source: dict[str, str] | None = None) -> dict[str, str]:
    """Package versions, ``algorithm`` and its version, and ``source`` (default: :func:`source_revision` now)."""
    return {**package_versions(), "algorithm": algorithm, "algorithm_version": str(algorithm_versions()[algorithm]),
            **(source_revision() if source is None else source)}
