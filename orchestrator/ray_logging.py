"""What Ray's own processes may print to a sweep's console.

The sweep prints its own progress line; two Ray Train V2 messages would bury it, dozens of times per search:

* Train's worker context logs "Reporting training result N: TrainingReport(...)" at INFO for every checkpoint,
  through a logger named after its source file, outside the ``ray.train`` hierarchy that Train's
  ``LoggingConfig`` sets to WARNING.
* The detached ``PlacementGroupCleaner`` actor of each Train run asks the State API every second whether the run's
  controller is alive. A local Ray started without a dashboard (as the sweeps start it) has no State API, so every
  poll logs "Failed to query Ray Train Controller actor state", which means nothing there.

:func:`worker_process_setup` runs in every Ray worker process of a sweep (the job's ``worker_process_setup_hook``)
and silences exactly these two; everything else Ray logs still reaches the console. This module imports nothing
beyond Ray itself: the hook runs before each worker's first task.
"""

from __future__ import annotations

import logging
from pathlib import Path

import ray

SETUP_HOOK = f"{__name__}.worker_process_setup"
"""The import path Ray's ``runtime_env={"worker_process_setup_hook": ...}`` takes."""
CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
UNAVAILABLE_STATE_API = "Failed to query Ray Train Controller actor state"


def train_context_logger() -> logging.Logger:
    """Train V2's worker context logs through ``logging.getLogger(__file__)``."""
    return logging.getLogger(str(Path(ray.__file__).parent / "train" / "v2" / "_internal" / "execution" / "context.py"))


class DropUnavailableStateApi(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(UNAVAILABLE_STATE_API)


def worker_process_setup() -> None:
    train_context_logger().setLevel(logging.WARNING)
    cleaner = logging.getLogger(CLEANER_LOGGER)
    if not any(isinstance(f, DropUnavailableStateApi) for f in cleaner.filters):
        cleaner.addFilter(DropUnavailableStateApi())
