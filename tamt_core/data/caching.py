"""Caches: where generated things live, how they are built once, and how tokenised Arrow tables are named."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets.fingerprint import Hasher


def arrow_cache_file(cache_dir: Path | None, version: str, kind: str, *key: Any) -> str | None:
    """An explicit Arrow cache path under ``cache_dir``, named by a hash of ``version`` and ``key``; ``None``
    leaves the choice to ``datasets`` (its own cache, keyed by fingerprints).

    An explicit name also caches inputs that live only in memory, which ``datasets`` would recompute. ``version``
    belongs to the producing module: bump it when what it produces changes, so stale caches are not reused.
    """
    if cache_dir is None:
        return None
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    return str(Path(cache_dir) / f"{kind}-{Hasher.hash([version, *key])}.arrow")


def cache_root() -> Path:
    """Where tamt keeps what it generates once (built-in model, smoke data): ``$TAMT_CACHE``, else ``~/.cache/tamt``."""
    return Path(os.environ.get("TAMT_CACHE") or Path.home() / ".cache" / "tamt").expanduser()


def build_once(target: Path, build: Callable[[Path], None], complete: Callable[[Path], bool]) -> Path:
    """``target``, built by ``build(directory)`` the first time (when ``complete(target)`` is false).

    The build writes into a temporary sibling that is renamed into place whole, so concurrent processes (Ray
    workers starting together) never see a half-written directory; if another process wins the race, its copy is
    kept and ours discarded.
    """
    if complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not complete(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
