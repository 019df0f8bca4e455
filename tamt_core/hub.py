"""What tamt reads from the Hugging Face hubs for the sources a run names: which model repository, and which data set
with which config it hands to ``datasets.load_dataset``. ``None`` where it reads nothing from a hub (a local
directory, the built-in model, the smoke corpus and smoke tasks).

Each function follows its loader's own rule (:func:`tamt_core.models.resolve_source`,
:func:`tamt_core.data.pretrain.load_wikitext`, :func:`tamt_core.data.downstream.load_task_dataset`), so that a
cache filled with what they list is exactly what those loaders look up offline (``python -m sweeps prefetch``).
"""

from __future__ import annotations

from pathlib import Path

from tamt_core.data.downstream import HUB_SOURCE
from tamt_core.data.pretrain import HUB_CONFIG
from tamt_core.data.sources import is_local
from tamt_core.models import BUILTIN_MODEL_NAME, ModelUnavailableError, resolve_source
from tamt_core.tasks import get_task


def model_repo(model: str | None) -> str | None:
    """The hub repository :func:`tamt_core.models.load_pretrained` loads ``model`` from; ``None`` for the built-in
    model and a directory (a missing one too, which is not a hub id: ``check_model`` reports it)."""
    if model is None or model == BUILTIN_MODEL_NAME:
        return None
    try:
        _, source = resolve_source(model)
    except ModelUnavailableError:
        return None
    return None if Path(source).is_dir() else source


def corpus_dataset(data: str | None) -> tuple[str, str] | None:
    """``(hub id, config)`` that ``load_wikitext(data)`` passes to ``datasets.load_dataset``, or ``None``."""
    if data is None or is_local(data):
        return None
    return data, HUB_CONFIG


def task_dataset(task: str, data: str | None) -> tuple[str, str | None] | None:
    """``(hub id, config)`` that ``load_task_dataset(task, data)`` passes to ``datasets.load_dataset``: ``"hub"`` is
    the task's own hub dataset, another hub id that data set with the task's config; ``None`` for local files and
    the smoke data."""
    if data is None or data != HUB_SOURCE and is_local(data):
        return None
    spec = get_task(task)
    return (spec.hub_path if data == HUB_SOURCE else data), spec.hub_config
