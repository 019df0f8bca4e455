"""Searches survive being killed: exact resume after a SIGKILL, checkpoints that are corrupt or another search's,
data parallelism under torchrun, and what makes the search loop GPU-ready (τ's device, fp32 loading)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from tamt_core.checkpoints import CheckpointError, CorruptCheckpointError, TrainedTensors, load_state, save_state
from tamt_core.data.pretrain import mlm_collator
from tamt_core.masks.masked_model import ScoreMask, apply_score_masks, dense_weights, mask_parametrizations
from tamt_core.masks import load_mask
from tamt_core.methods import METHODS
from tamt_core.search.config import SearchConfig
from tamt_core.methods.base import SearchContext
from tamt_core.methods.tamt import initial_scores
from tamt_core.models import load_pretrained
from tamt_core.search.runner import CHECKPOINTS_DIR, LOG_FILE, pretraining_data
from tamt_core.search import SearchResult, read_log, run_search
from tamt_core.checkpoints import CheckpointDirectory
from tamt_core.search.resumable import SearchRun
from tamt_core.training import BatchStream, adamw_with_schedule

DRIVER = Path(__file__).with_name("search_driver.py")
ROOT = DRIVER.parent.parent
SMALL = dict(block_size=32, batch_size=4)
KILLED = {
    # config, the step the run is killed at: past a checkpoint (a saved mask), before the next one
    "imp": (dict(method="imp", sparsity=0.4, pruning_interval=5, lr=1e-3, **SMALL), 12),
    "tamt-mlm": (dict(method="tamt-mlm", sparsity=0.5, steps=30, save_steps=[10, 20], lr=1e-2, **SMALL), 25),
    "tamt-kd": (dict(method="tamt-kd", sparsity=0.5, steps=30, save_steps=[10, 20], lr=1e-2, **SMALL), 17),
}


def drive(tmp_path: Path, settings: dict, nproc: int = 1) -> subprocess.CompletedProcess:
    path = tmp_path / f"settings-{len(list(tmp_path.glob('settings-*')))}.json"
    path.write_text(json.dumps(settings))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                "--standalone"] if nproc > 1 else [sys.executable]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, str(DRIVER), str(path)], env=env, capture_output=True, text=True, timeout=300)


def curve(directory: Path, after: int = 0) -> list[tuple]:
    return [(e["step"], e["loss"], e["lr"]) for e in read_log(directory) if e["step"] > after]


@pytest.mark.slow  # a driver subprocess, killed and run again
@pytest.mark.parametrize("method", list(KILLED))
def test_search_killed_between_checkpoints_resumes_to_the_uninterrupted_masks(method, tiny_bert_dir, tmp_path):
    """A real SIGKILL at a step between two checkpoints; the rerun writes masks with the uninterrupted run's
    content hashes, and its loss curve after the resume point is the uninterrupted one."""
    config, kill_at = KILLED[method]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    settings = {"model": str(tiny_bert_dir), "config": config, "log_every": 1}
    first = drive(tmp_path, {**settings, "runs": [{"out": str(reference)}, {"out": str(killed), "kill_at": kill_at}]})
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    assert SearchResult.read(reference) is not None and SearchResult.read(killed) is None
    assert read_log(killed)[-1]["step"] == kill_at
    checkpoints = sorted(p.name for p in (killed / CHECKPOINTS_DIR).glob("step-*"))
    resumed_from = int(checkpoints[-1].removeprefix("step-"))
    assert 0 < resumed_from < kill_at

    second = drive(tmp_path, {**settings, "runs": [{"out": str(killed)}]})
    assert second.returncode == 0, second.stderr[-3000:]
    expected, resumed = SearchResult.read(reference), SearchResult.read(killed)
    assert [m.file for m in resumed.masks] == [m.file for m in expected.masks]
    assert [m.content_hash for m in resumed.masks] == [m.content_hash for m in expected.masks]
    assert [load_mask(p).content_hash for p in resumed.paths] == [m.content_hash for m in expected.masks]
    assert curve(killed, after=resumed_from) == curve(reference, after=resumed_from)
    assert curve(killed) == curve(reference)  # before the kill too: the log keeps the latest attempt's lines
    train_s = [m.train_s for m in resumed.masks]
    assert train_s == sorted(train_s), "training seconds carry over from the checkpoint, counted once"
    logged_steps = [json.loads(line)["step"] for line in (killed / LOG_FILE).read_text().splitlines()]
    assert logged_steps.count(resumed_from + 1) == 2 and logged_steps.count(kill_at + 1) == 1
    assert not list((killed / CHECKPOINTS_DIR).glob("step-*")), "a finished search keeps no checkpoint"

    log_size = (killed / LOG_FILE).stat().st_size
    again = run_search(SearchConfig.of(**config), killed,
                       model=str(tiny_bert_dir))
    assert again == resumed and (killed / LOG_FILE).stat().st_size == log_size  # complete: nothing ran


class Stop(Exception):
    """Stops a search from its ``log_step`` callback."""


STOPPED = {
    # config, the step whose log raises: past a saved mask, before the last
    "imp": (SearchConfig.of(method="imp", sparsity=0.2, pruning_interval=4, lr=1e-3, **SMALL), 3),
    "tamt-mlm": (SearchConfig.of(method="tamt-mlm", sparsity=0.5, steps=8, save_steps=(4,), lr=1e-2, **SMALL), 6),
}


@pytest.mark.parametrize("method", list(STOPPED))
def test_search_stopped_in_process_resumes_to_the_uninterrupted_masks(method, tiny_bert_dir, tmp_path):
    """The fast tier's resume check: a search checkpointed at every step, stopped by an exception at step N (so its
    newest checkpoint is step N - 1) and run again, writes the masks and the loss curve of an uninterrupted run."""
    config, stop_at = STOPPED[method]
    settings = dict(model=str(tiny_bert_dir), log_every=1, checkpoint_every_s=0)

    def stop(metrics: dict) -> None:
        if metrics["step"] == stop_at:
            raise Stop

    with pytest.raises(Stop):
        run_search(config, tmp_path / "stopped", log_step=stop, **settings)
    assert SearchResult.read(tmp_path / "stopped") is None
    assert max(p.name for p in (tmp_path / "stopped" / CHECKPOINTS_DIR).glob("step-*")) == f"step-{stop_at - 1:08d}"
    steps = []
    resumed = run_search(config, tmp_path / "stopped", log_step=lambda metrics: steps.append(metrics["step"]),
                         **settings)
    assert steps[0] == stop_at, "the rerun goes on from the newest checkpoint"
    reference = run_search(config, tmp_path / "reference", **settings)
    assert [m.file for m in resumed.masks] == [m.file for m in reference.masks] and len(reference.masks) >= 2
    for ours, theirs in zip(resumed.paths, reference.paths):
        ours, theirs = load_mask(ours).tensors, load_mask(theirs).tensors
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[name], theirs[name]) for name in theirs), "the resumed masks differ"
    assert curve(tmp_path / "stopped") == curve(tmp_path / "reference")


def _interrupted_tamt(tiny_bert_dir: Path, out: Path, stop_at: int) -> SearchConfig:
    """A TAMT-MLM search in this process, stopped by an exception after ``stop_at`` (checkpoints at 2, 4, 6)."""
    config = SearchConfig.of(method="tamt-mlm", sparsity=0.5, steps=8, save_steps=(2, 4, 6), lr=1e-2, **SMALL)

    def stop(metrics: dict) -> None:
        if metrics["step"] >= stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(config, out, model=str(tiny_bert_dir), log_step=stop, checkpoint_every_s=1e9)
    return config


def test_a_corrupt_checkpoint_is_set_aside_and_the_one_before_used(tiny_bert_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tamt_core")
    config = _interrupted_tamt(tiny_bert_dir, tmp_path / "run", stop_at=7)
    checkpoints = tmp_path / "run" / CHECKPOINTS_DIR
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-00000004", "step-00000006"]  # newest two
    state = checkpoints / "step-00000006" / "state.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a write cut short
    with pytest.raises(CorruptCheckpointError):
        load_state(state, {})
    resumed = run_search(config, tmp_path / "run", model=str(tiny_bert_dir))
    assert "set aside" in caplog.text and "resuming from the checkpoint of step 4" in caplog.text
    assert [p.name.split("-2")[0] for p in (checkpoints / "set-aside").iterdir()] == ["step-00000006"]
    reference = run_search(config, tmp_path / "reference", model=str(tiny_bert_dir))
    assert [m.content_hash for m in resumed.masks] == [m.content_hash for m in reference.masks]


def test_a_checkpoint_of_another_search_is_refused_before_training(tiny_bert_dir, tmp_path):
    _interrupted_tamt(tiny_bert_dir, tmp_path / "first", stop_at=3)
    other = SearchConfig.of(method="tamt-mlm", sparsity=0.6, steps=20, lr=1e-2, **SMALL)
    second = tmp_path / "second"
    with pytest.raises(CheckpointError, match="belongs to another search.*move that checkpoint away"):
        run_search(other, second, model=str(tiny_bert_dir),
                   checkpoints=CheckpointDirectory(tmp_path / "first" / CHECKPOINTS_DIR))
    assert not (second / LOG_FILE).exists()


def test_batch_stream_equals_a_shuffling_dataloader_and_resumes_mid_epoch(minilm_tokenizer):
    rows = [{"input_ids": [101, 1000 + i, 2000 + i, 102], "special_tokens_mask": [1, 0, 0, 1]} for i in range(10)]
    collate = mlm_collator(minilm_tokenizer, seed=3)
    loader = [b for epoch in range(3) for b in DataLoader(rows, batch_size=3, shuffle=True, drop_last=True,
                                                            collate_fn=collate,
                                                            generator=torch.Generator().manual_seed(7 + epoch))]
    stream = BatchStream(rows, mlm_collator(minilm_tokenizer, seed=3), 3, seed=7)
    first = [next(stream) for _ in range(4)]  # into the second epoch
    state = stream.state_dict()
    rest = [next(stream) for _ in range(5)]
    for ours, theirs in zip(first + rest, loader, strict=True):
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    resumed = BatchStream(rows, mlm_collator(minilm_tokenizer, seed=3), 3, seed=7)
    resumed.load_state_dict(state)
    for ours, again in zip(rest, [next(resumed) for _ in range(5)]):
        assert all(torch.equal(ours[k], again[k]) for k in ours)  # same rows, same masked positions


def test_state_round_trips_optimizer_schedule_and_tied_tensors(tmp_path):
    """The codec keeps AdamW's integer-keyed state, the schedule and a tied tensor (stored once)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    model[1].weight = model[0].weight  # tied

    def components(m):
        optimizer, schedule = adamw_with_schedule(m.parameters(), lr=1e-2, weight_decay=0.0, eps=1e-8, total_steps=9)
        return m, optimizer, schedule

    def step(m, optimizer, schedule):
        m(torch.ones(2, 4)).sum().backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()

    model, optimizer, schedule = components(model)
    step(model, optimizer, schedule)
    save_state(tmp_path / "s.safetensors", {"model": TrainedTensors(model).state_dict(),
                                            "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()},
               {"step": 1})
    twin = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    twin[1].weight = twin[0].weight
    twin, twin_optimizer, twin_schedule = components(twin)
    progress = load_state(tmp_path / "s.safetensors", {"model": TrainedTensors(twin), "optimizer": twin_optimizer,
                                                       "schedule": twin_schedule})
    assert progress == {"step": 1}
    for _ in range(3):
        step(model, optimizer, schedule)
        step(twin, twin_optimizer, twin_schedule)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
    assert twin_schedule.get_last_lr() == schedule.get_last_lr()


def test_threshold_lives_on_the_scores_device():
    mask = ScoreMask(torch.zeros(3, 5, device="meta"))
    assert mask.threshold.device.type == "meta" and mask.threshold.dtype == mask.scores.dtype
    from transformers import BertConfig, BertModel

    with torch.device("meta"):
        model = BertModel(BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16))
    apply_score_masks(model, {name: torch.zeros_like(w) for name, w in dense_weights(model).items()})
    assert {m.threshold.device.type for m in mask_parametrizations(model).values()} == {"meta"}


def test_a_model_saved_in_bf16_loads_in_fp32_and_its_scores_move(tiny_bert_dir, tmp_path):
    """transformers 5 keeps a checkpoint's dtype; in bf16, TAMT's Adam steps (~lr) round away against scores of
    α·φ = 0.02, so nothing would move. Loaded in fp32, the paper's lr of 5e-5 moves the scores."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    AutoModelForMaskedLM.from_pretrained(tiny_bert_dir).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path / "bf16")
    assert torch.tensor(0.02, dtype=torch.bfloat16) + 5e-5 == torch.tensor(0.02, dtype=torch.bfloat16)
    pretrained = load_pretrained(str(tmp_path / "bf16"))
    assert {p.dtype for p in pretrained.model.parameters()} == {torch.float32}
    from tamt_core.finetune import task_model
    from tamt_core.tasks import get_task

    assert {p.dtype for p in task_model(get_task("sst2"), str(tmp_path / "bf16"), 1).parameters()} == {torch.float32}

    config = SearchConfig.of(method="tamt-mlm", sparsity=0.5, steps=3, lr=5e-5, **SMALL)
    init = initial_scores(dense_weights(pretrained.model), 0.5)
    run = SearchRun({}, store=None, mask_dir=tmp_path, log=lambda metrics: None, device=torch.device("cpu"))
    context = SearchContext(pretrained, torch.device("cpu"), pretraining_data(pretrained, None, config.seed), run)
    list(METHODS["tamt-mlm"].search(context, config))
    masks = mask_parametrizations(pretrained.model)
    assert all(masks[name].scores.dtype == torch.float32 for name in init)
    assert sum(int((masks[name].scores.detach() != scores).sum()) for name, scores in init.items()) > 1000


DATA_PARALLEL = {
    "imp": dict(method="imp", sparsity=0.3, pruning_interval=8, lr=1e-2, block_size=32, batch_size=8),
    "tamt-mlm": dict(method="tamt-mlm", sparsity=0.5, steps=20, save_steps=[10], lr=1e-2, block_size=32, batch_size=8),
    "tamt-kd": dict(method="tamt-kd", sparsity=0.5, steps=20, save_steps=[10], lr=1e-2, block_size=32, batch_size=8),
}


@pytest.mark.slow  # torchrun
def test_two_processes_hold_identical_state_and_compute_one_process_steps(tiny_bert_without_dropout_dir, tmp_path):
    """torchrun, 2 processes on gloo, the global batch of 8 split 4 + 4: after every step both ranks hold
    bit-identical trained tensors (scores, thresholds and MLM head; IMP's weights and masks), and with dropout off
    (the one thing a rank draws on its own) they compute one process's steps up to the order of floating-point sums
    (two ranks sum their shares of each loss and gradient in another order than one process sums the whole batch):
    the losses agree within 1e-6 relative; TAMT's masks are equal to the bit (content hashes); IMP's, pruned by the
    magnitude of trained weights, differ at most by a few swapped near-ties at the pruning boundary (measured: 2
    of 994,112 entries, exact sparsity kept)."""
    runs = [{"out": str(tmp_path / f"{method}-{{n}}"), "config": config} for method, config in DATA_PARALLEL.items()]
    settings = {"model": str(tiny_bert_without_dropout_dir), "config": {}, "log_every": 4}
    for n in (1, 2):
        done = drive(tmp_path, {**settings, "runs": [{**run, "out": run["out"].format(n=n)} for run in runs],
                                "report": str(tmp_path / f"ranks-{n}")}, nproc=n)
        assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        checksums = json.loads((tmp_path / f"ranks-2.rank{rank}").read_text())
        assert len(checksums) == 20 and all(a == b for a, b in checksums.values()), "the ranks diverged"
    for method in DATA_PARALLEL:
        single, parallel = SearchResult.read(tmp_path / f"{method}-1"), SearchResult.read(tmp_path / f"{method}-2")
        assert len(single.masks) == (3 if method == "imp" else 2)
        if method == "imp":
            for one, two in zip(single.paths, parallel.paths, strict=True):
                one, two = load_mask(one).tensors, load_mask(two).tensors
                for name in one:
                    assert int(one[name].sum()) == int(two[name].sum()), f"{name}: the sparsity is exact on both"
                assert sum(int((one[n] != two[n]).sum()) for n in one) <= 8, "more than a few swapped near-ties"
        else:
            assert [m.content_hash for m in parallel.masks] == [m.content_hash for m in single.masks], method
        for a, b in zip(read_log(tmp_path / f"{method}-1"), read_log(tmp_path / f"{method}-2"), strict=True):
            assert a["step"] == b["step"] and abs(a["loss"] - b["loss"]) <= 1e-6 * a["loss"], method


@pytest.mark.slow  # torchrun
def test_data_parallel_ranks_resume_from_one_step_or_refuse(tiny_bert_dir, tmp_path):
    """Two ranks that each see only their own checkpoint directory (rank 0 writes; rank 1's holds copies): holding
    steps {10, 20} and {10}, both resume from 10 and finish with the uninterrupted masks; when rank 1 holds none,
    both stop naming the ranks and steps before any training, instead of summing gradients of different states."""
    config = dict(method="tamt-mlm", sparsity=0.5, steps=30, save_steps=[10, 20], lr=1e-2, block_size=32,
                  batch_size=8)
    settings = {"model": str(tiny_bert_dir), "config": config, "log_every": 5, "rank_checkpoints": True}
    reference, run = tmp_path / "reference", tmp_path / "run"
    done = drive(tmp_path, {**settings, "runs": [{"out": str(reference)}]}, nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = drive(tmp_path, {**settings, "runs": [{"out": str(run), "kill_at": 25}]}, nproc=2)
    assert killed.returncode != 0
    own = {rank: run / f"checkpoints-rank{rank}" for rank in (0, 1)}
    assert sorted(p.name for p in own[0].glob("step-*")) == ["step-00000010", "step-00000020"]
    shutil.copytree(own[0] / "step-00000010", own[1] / "step-00000010")  # rank 1's disk has only the older one

    resumed = drive(tmp_path, {**settings, "runs": [{"out": str(run)}]}, nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    logged = [json.loads(line)["step"] for line in (run / LOG_FILE).read_text().splitlines()]
    assert logged.count(15) == 2 and logged.count(10) == 1, "resumed after step 10, not 20 (rank 0's newest)"
    expected, got = SearchResult.read(reference), SearchResult.read(run)
    assert [m.content_hash for m in got.masks] == [m.content_hash for m in expected.masks]

    again = tmp_path / "again"
    drive(tmp_path, {**settings, "runs": [{"out": str(again), "kill_at": 15}]}, nproc=2)
    assert not list((again / "checkpoints-rank1").glob("step-*"))  # rank 1 wrote none, and sees none
    refused = drive(tmp_path, {**settings, "runs": [{"out": str(again)}]}, nproc=2)
    assert refused.returncode != 0
    assert "hold no common checkpoint" in refused.stderr and "rank 0: step 10, rank 1: none" in refused.stderr


def test_a_checkpoint_resumes_on_another_device_type_with_a_warning(monkeypatch, caplog):
    """CPU → CUDA: the checkpoint has no CUDA stream, which stays as seeded; CUDA → CPU: the CUDA stream goes
    unused. Neither fails; both say that dropout now draws other numbers."""
    from tamt_core.checkpoints import RngStreams

    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: torch.zeros(16, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=None: restored.append(state))
    on_cpu = RngStreams(torch.device("cpu")).state_dict()
    on_cuda = RngStreams(torch.device("cuda", 0)).state_dict()
    assert "cuda" not in on_cpu and "cuda" in on_cuda
    with caplog.at_level("WARNING"):
        RngStreams(torch.device("cuda", 0)).load_state_dict(on_cpu)
        RngStreams(torch.device("cpu")).load_state_dict(on_cuda)
    assert not restored
    assert "written on the CPU and resumes on CUDA" in caplog.text
    assert "written on CUDA and resumes on the CPU" in caplog.text
    RngStreams(torch.device("cuda", 0)).load_state_dict(on_cuda)
    assert len(restored) == 1  # same device type: the stream is put back
