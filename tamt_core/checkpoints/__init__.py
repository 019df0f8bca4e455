"""Checkpoints of training runs: the state file (:mod:`.state`), the components it gathers (:mod:`.components`),
where checkpoints live (:mod:`.stores`) and the resumable run that searches and fine-tunes share (:mod:`.run`)."""

from tamt_core.checkpoints.components import RngStreams, TrainedTensors
from tamt_core.checkpoints.run import CHECKPOINT_EVERY_S, LOG_EVERY, ResumableRun, RunStopped, Stopwatch
from tamt_core.checkpoints.state import (STATE_FILE, CheckpointError, CorruptCheckpointError, Stateful, load_state,
                                         read_progress, save_state)
from tamt_core.checkpoints.stores import CheckpointDirectory, CheckpointFile, CheckpointStore, link_or_copy

__all__ = ["CHECKPOINT_EVERY_S", "LOG_EVERY", "STATE_FILE", "CheckpointDirectory", "CheckpointError", "CheckpointFile",
           "CheckpointStore", "CorruptCheckpointError", "ResumableRun", "RngStreams", "RunStopped", "Stateful",
           "Stopwatch", "TrainedTensors", "link_or_copy", "load_state", "read_progress", "save_state"]
