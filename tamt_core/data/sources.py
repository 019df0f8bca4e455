"""Where a corpus or a task's data comes from: local files, or a dataset on the Hugging Face hub."""

from __future__ import annotations

import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
"""A hub dataset id: ``name`` or ``owner/name``."""


def is_local(source: str) -> bool:
    """Whether ``source`` names local files: a path that exists, or anything that cannot be a hub id (so a
    mistyped directory is reported as missing files, not looked up on the hub)."""
    return Path(source).expanduser().exists() or not HUB_ID.match(source)
