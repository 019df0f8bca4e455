"""Content ids: equal configurations get equal ids, so a run is recognised (and resumed) wherever it is asked for."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def content_id(payload: dict[str, Any]) -> str:
    """16 hex digits of sha256 over the canonical JSON of ``payload`` (sorted keys, no spaces)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
