"""Run one subnetwork search and write its masks as files, resumably.

This is the single entry point the CLI and the orchestrator call: it validates the configuration and the inputs
(model, data, output directory) before any compute, runs the method, and writes each mask it yields with its
metadata. The output directory is the search's: ``search.json`` (its identity), the mask files, ``log.jsonl``
(the loss every few steps, appended, a restarted attempt's lines after the earlier ones), ``checkpoints/`` while
it runs and ``result.json`` once done. Calling :func:`run_search` again on the same directory continues an
interrupted search from its last checkpoint (the same masks as an uninterrupted run: bit for bit on a CPU and, with
deterministic kernels, on a GPU; docs/fidelity.md), or returns
the finished result at once; a directory of another search is refused.

Under ``torch.distributed`` (``torchrun``, or Ray Train in a sweep) every process runs this function: the search
is data-parallel (:mod:`tamt_core.parallel`) and only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tamt_core.checkpoints import CHECKPOINT_EVERY_S, LOG_EVERY, CheckpointDirectory, CheckpointStore
from tamt_core.data import pretrain
from tamt_core.data.pretrain import PretrainData
from tamt_core.device import pick_device, resolve_precision
from tamt_core.masks import save_mask
from tamt_core.methods import FoundMask, SearchContext
from tamt_core.models import Pretrained, load_config, load_pretrained
from tamt_core.outputs import claim_directory, write_json
from tamt_core.parallel import Ranks, dropout_seed
from tamt_core.search.config import SearchConfig
from tamt_core.search.resumable import SearchRun

log = logging.getLogger(__name__)

IDENTITY_FILE, RESULT_FILE, LOG_FILE, CHECKPOINTS_DIR = "search.json", "result.json", "log.jsonl", "checkpoints"


@dataclass(frozen=True)
class WrittenMask:
    """A mask file of a search: where it is, the step and sparsity it comes from, the training seconds up to it
    (Fig. 5's time axis) and its content hash."""

    file: str
    step: int
    sparsity: float
    train_s: float
    content_hash: str


@dataclass(frozen=True)
class SearchResult:
    """What a finished search wrote, in the order found, and how it computed: its precision and whether
    deterministic kernels were on (``None`` in a result written before either was recorded)."""

    directory: Path
    masks: tuple[WrittenMask, ...]
    precision: str | None = None
    deterministic: bool | None = None

    @property
    def paths(self) -> list[Path]:
        return [self.directory / mask.file for mask in self.masks]

    def to_dict(self) -> dict[str, Any]:
        return {"masks": [asdict(mask) for mask in self.masks], "precision": self.precision,
                "deterministic": self.deterministic}

    @classmethod
    def read(cls, directory: Path) -> SearchResult | None:
        """The finished result in ``directory``, or ``None`` while the search is not done."""
        path = Path(directory) / RESULT_FILE
        if not path.exists():
            return None
        written = json.loads(path.read_text())
        return cls(Path(directory), tuple(WrittenMask(**m) for m in written["masks"]), written.get("precision"),
                   written.get("deterministic"))


def mask_filename(config: SearchConfig, found: FoundMask) -> str:
    return f"{config.method}_s{found.sparsity:.2f}_seed{config.seed}_step{found.step}.safetensors"


def search_identity(config: SearchConfig, model: str | None, data: str | None) -> dict[str, Any]:
    """What makes a search directory this search's: the config, the model (as resolved) and the data source."""
    name, _, _ = load_config(model)
    return {"run_id": config.run_id(name, data), "config": config.to_dict(), "model": name, "data": data}


def read_log(directory: Path) -> list[dict[str, Any]]:
    """The loss curve in ``log.jsonl``: one entry per logged step, the latest attempt's where steps repeat."""
    entries: dict[int, dict[str, Any]] = {}
    path = Path(directory) / LOG_FILE
    for line in path.read_text().splitlines() if path.exists() else []:
        entry = json.loads(line)
        entries[entry["step"]] = entry
    return [entries[step] for step in sorted(entries)]


def pretraining_data(pretrained: Pretrained, source: str | None, seed: int) -> Callable[..., PretrainData]:
    """Lazily tokenised WikiText (or the smoke corpus) for the method to ask for: MLM blocks or KD sequences of its
    block size (reference-impl §4.6, §6.2), corrupted and ordered by the search's ``seed``."""

    def load(objective: str, *, block_size: int, pad_to: int | None = None) -> PretrainData:
        log.info("preparing the pre-training data: %s of %d tokens (tokenised once, then cached)",
                 "MLM blocks" if objective == "mlm" else "KD sequences", block_size)
        lines = pretrain.load_wikitext(source)["train"]
        tokenizer = pretrained.tokenizer
        if objective == "mlm":
            blocks = pretrain.mlm_blocks(lines, tokenizer, block_size=block_size)
            return PretrainData(blocks, pretrain.mlm_collator(tokenizer, seed=seed))
        sequences = pretrain.kd_sequences(lines, tokenizer, max_seq_len=block_size, seed=seed)
        return PretrainData(sequences, pretrain.kd_collator(tokenizer, pad_to=pad_to))

    return load


def run_search(config: SearchConfig, out_dir: Path, *, model: str | None = None, data: str | None = None,
               device: str | None = None, log_step: Callable[[dict], None] | None = None,
               checkpoints: CheckpointStore | None = None, checkpoint_every_s: float = CHECKPOINT_EVERY_S,
               log_every: int = LOG_EVERY, stop_requested: Callable[[], bool] = lambda: False) -> SearchResult:
    """Search masks with ``config`` on ``model`` (hub id, directory or None = built-in) into ``out_dir``.

    Resumes from the newest checkpoint in ``checkpoints`` (default: ``out_dir/checkpoints``), written at every
    saved mask and every ``checkpoint_every_s`` seconds. The loss is logged every ``log_every`` steps (each log is
    one host synchronisation); ``log_step`` receives each logged step's metrics besides ``log.jsonl`` and the
    console. When ``stop_requested()`` turns true, the search checkpoints at its next logged step and raises
    :class:`~tamt_core.checkpoints.RunStopped`; calling it again resumes there.

    Raises:
        ValueError, ModelUnavailableError, DatasetUnavailableError, OutputDirectoryError, CheckpointError: bad
            input, a directory or checkpoint of another search; all before any training.
    """
    out_dir = Path(out_dir)
    identity = search_identity(config, model, data)  # cheap: rejects unknown or non-BERT models before any weight
    ranks = Ranks.current()
    torch_device = pick_device(device)
    method = config.search_method
    caution = method.caution(config)
    if caution is not None and ranks.writes:
        log.warning("%s", caution)
    batch_size = method.batch_size(config)
    if batch_size is not None:
        ranks.check_batch_size(batch_size)
    if method.reads_corpus:
        pretrain.load_wikitext(data)  # fails with the files to provide when the corpus is missing
    if ranks.writes:
        claim_directory(out_dir, IDENTITY_FILE, identity, kind="search", describe=_describe)
    finished = SearchResult.read(out_dir)
    if ranks.agree(finished is not None):  # rank 0's directory decides: other ranks may see only their own disk
        log.info("%s: the search is complete", out_dir)
        return finished or SearchResult(out_dir, ())

    log.info("%s: %s at sparsity %g, seed %d; loading %s", out_dir, config.method, config.sparsity, config.seed,
             identity["model"])
    pretrained = load_pretrained(model)
    progress = _ProgressLog(out_dir / LOG_FILE, log_step)
    run = SearchRun({"run_id": identity["run_id"], "model_fingerprint": pretrained.fingerprint},
                    store=checkpoints or CheckpointDirectory(out_dir / CHECKPOINTS_DIR), mask_dir=out_dir,
                    log=progress, ranks=ranks, device=torch_device, seed=config.seed,
                    checkpoint_every_s=checkpoint_every_s, log_every=log_every, stop_requested=stop_requested)
    context = SearchContext(pretrained, torch_device, pretraining_data(pretrained, data, config.seed), run)
    devices = [torch_device.index or 0] if torch_device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # dropout draws from torch's RNG: seed it, leave the caller's alone
        torch.manual_seed(dropout_seed(config.seed, ranks.rank))
        for found in method.search(context, config):
            if ranks.writes:
                _write_mask(config, found, pretrained, out_dir, run)
    asked = getattr(config.settings, "precision", "fp32")  # a method that trains nothing computes on fp32 weights
    result = SearchResult(out_dir, tuple(WrittenMask(**m) for m in run.masks), resolve_precision(asked, torch_device),
                          torch.are_deterministic_algorithms_enabled())
    if ranks.writes:
        write_json(out_dir / RESULT_FILE, result.to_dict())
        if checkpoints is None:
            CheckpointDirectory(out_dir / CHECKPOINTS_DIR).clear()
    return result


def _describe(identity: dict[str, Any]) -> str:
    config = identity.get("config", {})
    return (f"{config.get('method')} at sparsity {config.get('sparsity')}, seed {config.get('seed')}, "
            f"model {identity.get('model')}")


def _write_mask(config: SearchConfig, found: FoundMask, pretrained: Pretrained, out_dir: Path,
                run: SearchRun) -> None:
    meta = {"model": pretrained.name, "model_fingerprint": pretrained.fingerprint, "method": config.method,
            "objective": config.objective, "sparsity": found.sparsity, "seed": config.seed, "step": found.step,
            "config": config.to_dict(), "search_id": run.identity["run_id"]}
    path = out_dir / mask_filename(config, found)
    digest = save_mask(path, found.tensors, meta)
    run.mask_written(path, step=found.step, sparsity=found.sparsity, content_hash=digest)
    log.info("wrote %s", path)


class _ProgressLog:
    """Each logged step: a line of ``log.jsonl``, the caller's callback, and a console line now and then."""

    def __init__(self, path: Path, callback: Callable[[dict], None] | None) -> None:
        self.path, self.callback = path, callback

    def __call__(self, metrics: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        if self.callback is not None:
            self.callback(metrics)
        step = metrics["step"]
        if step < 100 or step % 100 == 0:
            log.info("step %d  loss %.4f  lr %.2e  %.0f s training (%.2f s a step)", step, metrics["loss"],
                     metrics["lr"], metrics["train_s"], metrics["train_s"] / step)
