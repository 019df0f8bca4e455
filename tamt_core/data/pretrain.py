"""Pre-training data for mask search and subnetwork scoring: WikiText-103 as MLM blocks and as KD sequences.

TAMT searches masks on the pre-training corpus (paper §3.4, §4.1.2: WikiText-103) with two objectives, and this
module prepares both inputs the way the released code does:

* MLM (IMP, TAMT-MLM, MLM dev loss): the reference ``TextDataset`` — the whole split tokenized once, cut into
  consecutive ``block_size − 2``-token blocks wrapped as ``[CLS] … [SEP]``, tail dropped (reference-impl §4.6,
  check vector 24); corruption by the standard collator, 15 % with 80/10/10 (reference-impl §4.5, check vector 25).
* KD (TAMT-KD, KD dev loss): the TinyBERT/Google-BERT pregeneration with ``--one_seq`` (reference-impl §6.2,
  check vector 23), seeded here (the reference was not, reference-impl §11.18).

Everything heavy goes through ``datasets`` so it is cached as Arrow and keyed by datasets' fingerprints.
"""

from __future__ import annotations

import os
import random
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets.fingerprint import Hasher
from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding, PreTrainedTokenizerBase

from tamt_core.data.caching import arrow_cache_file
from tamt_core.data.smoke_corpus import smoke_wikitext_dir
from tamt_core.data.sources import is_local
from tamt_core.hparams import MLM_PROBABILITY


HUB_ID = "Salesforce/wikitext"
"""Where real users' WikiText-103 comes from by default (hub id)."""
HUB_CONFIG = "wikitext-103-raw-v1"
"""The raw (untokenized, case-kept) WikiText-103 configuration, as the reference reads ``wiki.*.raw``."""
LOCAL_FILES: dict[str, str] = {"train": "wiki.train.raw", "validation": "wiki.valid.raw"}
"""File names inside a local WikiText directory, per split."""

_CACHE_VERSION = "pretrain-data-v1"  # part of every cache key: bump when the produced data changes
_TOKEN_FEATURES = datasets.Features({"input_ids": datasets.List(datasets.Value("int32"))})
_MLM_FEATURES = datasets.Features({"input_ids": datasets.List(datasets.Value("int32")),
                                   "attention_mask": datasets.List(datasets.Value("int8")),
                                   "special_tokens_mask": datasets.List(datasets.Value("int8"))})
_KD_FEATURES = datasets.Features({"input_ids": datasets.List(datasets.Value("int32")),
                                  "token_type_ids": datasets.List(datasets.Value("int8")),
                                  "attention_mask": datasets.List(datasets.Value("int8")),
                                  "masked_lm_position": datasets.Value("int32")})
_KD_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class PretrainData:
    """A tokenised pre-training split and the collate function that turns rows into model inputs."""

    dataset: object
    collate: Callable


class DatasetUnavailableError(RuntimeError):
    """The pre-training corpus can be neither read locally nor loaded from the hub; the message says what to do."""


def _unavailable(source: str, reason: str) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"WikiText-103 (raw) is not available from {source!r}: {reason}.\n"
        f"To fix: download the raw WikiText-103 archive (wikitext-103-raw-v1.zip), unpack it and pass the directory "
        f"that holds the files, laid out as <dir>/{LOCAL_FILES['train']} and <dir>/{LOCAL_FILES['validation']} "
        f"(e.g. <dir> = .../wikitext-103-raw), as the data source (load_wikitext('<dir>'), or the same path to the "
        f"command line's data option). With hub access, the hub id {HUB_ID!r} (config {HUB_CONFIG!r}) works "
        f"instead. Passing no source uses the built-in smoke corpus, which is a smoke test, not a benchmark.")


def load_wikitext(source: str | None = None, config: str = HUB_CONFIG, *,
                  cache_dir: Path | None = None) -> datasets.DatasetDict:
    """Load WikiText's train and validation splits, one row per raw line (column ``"text"``, line breaks kept).

    ``source`` is a local directory holding ``wiki.train.raw`` and ``wiki.valid.raw`` (the reference reads exactly
    these files, reference-impl §4.6, §6.2), a hub id loaded with ``config`` (default ``Salesforce/wikitext`` /
    ``wikitext-103-raw-v1``), or ``None`` for the built-in smoke corpus. Raises :class:`DatasetUnavailableError`
    before any heavy work when neither works.
    """
    if source is None:
        source = str(smoke_wikitext_dir())
    path = Path(source).expanduser()
    if is_local(source):
        files = {split: path / name for split, name in LOCAL_FILES.items()}
        missing = [str(f) for f in files.values() if not (f.is_file() and os.access(f, os.R_OK))]
        if missing:
            raise _unavailable(source, f"missing or unreadable: {', '.join(missing)}")
        return datasets.load_dataset("text", data_files={k: str(v) for k, v in files.items()},
                                     keep_linebreaks=True, cache_dir=_str(cache_dir))
    try:
        loaded = datasets.load_dataset(source, config, cache_dir=_str(cache_dir))
        return datasets.DatasetDict(train=loaded["train"], validation=loaded["validation"])
    except (OSError, ValueError, KeyError) as err:  # offline (ConnectionError), not found, bad config, no split
        raise _unavailable(source, f"loading it from the hub failed ({type(err).__name__}: {err})") from err


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


# --- where a tokenizer puts its special tokens ------------------------------------------------------------------
@dataclass(frozen=True)
class _Template:
    """Special tokens around one or two sequences, read off the tokenizer's own post-processor.

    transformers 5 tokenizers no longer expose ``build_inputs_with_special_tokens`` /
    ``create_token_type_ids_from_sequences``; encoding two one-token sentinels with special tokens gives the same
    information for every tokenizer (BERT ``[CLS] A [SEP] B [SEP]``, RoBERTa ``<s> A </s></s> B </s>``).
    """

    special_ids: tuple[tuple[int, ...], ...]  # before A, (between A and B,) after the last sequence
    special_types: tuple[tuple[int, ...], ...]
    seq_types: tuple[int, ...]  # token type of A (and of B)

    def wrap(self, *seqs: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
        """``(input_ids, token_type_ids, special_tokens_mask)`` of ``seqs`` wrapped in this template."""
        ids, types, special = list(self.special_ids[0]), list(self.special_types[0]), [1] * len(self.special_ids[0])
        for seq, seq_type, sp_ids, sp_types in zip(seqs, self.seq_types, self.special_ids[1:], self.special_types[1:]):
            ids += [*seq, *sp_ids]
            types += [seq_type] * len(seq) + list(sp_types)
            special += [0] * len(seq) + [1] * len(sp_ids)
        return ids, types, special


def _template(tokenizer: PreTrainedTokenizerBase, pair: bool) -> _Template:
    sentinels = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in ("a", "b")]
    if any(len(s) != 1 for s in sentinels) or sentinels[0] == sentinels[1]:
        raise ValueError(f"cannot read the special-token template of {type(tokenizer).__name__}")
    enc = tokenizer("a", "b" if pair else None, add_special_tokens=True, return_token_type_ids=True)
    ids, types = enc["input_ids"], enc["token_type_ids"]
    cuts = [ids.index(s[0]) for s in sentinels[: 2 if pair else 1]]
    bounds = [0, *[c for cut in cuts for c in (cut, cut + 1)], len(ids)]
    spans = list(zip(bounds[::2], bounds[1::2]))
    return _Template(special_ids=tuple(tuple(ids[a:b]) for a, b in spans),
                     special_types=tuple(tuple(types[a:b]) for a, b in spans),
                     seq_types=tuple(types[c] for c in cuts))


# --- tokenization (shared by both objectives) --------------------------------------------------------------------
def _tokenize_batch(batch: dict[str, list[str]], tokenizer: PreTrainedTokenizerBase) -> dict[str, list[list[int]]]:
    enc = tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False,
                    return_token_type_ids=False, verbose=False)
    return {"input_ids": enc["input_ids"]}


def _tokenized_lines(lines: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, num_proc: int | None,
                     cache_dir: Path | None) -> datasets.Dataset:
    """Token ids of every line, no special tokens; blank lines give ``[]``. Same fingerprint for MLM and KD."""
    return lines.map(_tokenize_batch, batched=True, fn_kwargs={"tokenizer": tokenizer}, num_proc=num_proc,
                     remove_columns=lines.column_names, features=_TOKEN_FEATURES, desc="Tokenizing lines",
                     cache_file_name=arrow_cache_file(cache_dir, _CACHE_VERSION, "tokens", lines._fingerprint,
                                                      tokenizer))


# --- MLM blocks (reference-impl §4.6) -----------------------------------------------------------------------------
def _group_blocks(table: pa.Table, *, body_len: int, prefix: tuple[int, ...],
                  suffix: tuple[int, ...]) -> dict[str, np.ndarray]:
    """All tokens of the split in order, cut into ``body_len`` chunks (tail dropped), wrapped in the specials."""
    flat = pc.list_flatten(table.column("input_ids")).to_numpy()
    n = len(flat) // body_len
    body = flat[: n * body_len].reshape(n, body_len)
    ids = np.hstack([np.tile(np.asarray(prefix, np.int32), (n, 1)), body,
                     np.tile(np.asarray(suffix, np.int32), (n, 1))]).astype(np.int32)
    special = np.zeros(ids.shape, np.int8)
    special[:, : len(prefix)] = 1
    special[:, ids.shape[1] - len(suffix):] = 1
    return {"input_ids": ids, "attention_mask": np.ones(ids.shape, np.int8), "special_tokens_mask": special}


def mlm_blocks(lines: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, block_size: int = 512,
               num_proc: int | None = None, cache_dir: Path | None = None) -> datasets.Dataset:
    """The reference ``TextDataset`` (reference-impl §4.6, check vector 24), as an Arrow-cached dataset.

    The split's tokens are concatenated in order (blank lines contribute nothing) and cut into consecutive,
    non-overlapping chunks of ``block_size − 2`` tokens; the trailing partial chunk is dropped and each chunk is
    wrapped as ``[CLS] chunk [SEP]`` (``<s> … </s>`` for RoBERTa), so every row has exactly ``block_size`` ids.
    Tokenizing line by line equals the reference's whole-file tokenization for WordPiece (lines never split a word).
    Columns: ``input_ids``, ``attention_mask``, ``special_tokens_mask``.
    """
    tpl = _template(tokenizer, pair=False)
    body_len = block_size - tokenizer.num_special_tokens_to_add(pair=False)
    if body_len < 1:
        raise ValueError(f"block_size {block_size} leaves no room for text")
    tokens = _tokenized_lines(lines, tokenizer, num_proc, cache_dir)
    # One batch holding the whole split (Arrow, zero-copy), so blocks run across datasets' batch boundaries.
    blocks = tokens.with_format("arrow").map(
        _group_blocks, batched=True, batch_size=None, remove_columns=tokens.column_names, features=_MLM_FEATURES,
        fn_kwargs={"body_len": body_len, "prefix": tpl.special_ids[0], "suffix": tpl.special_ids[1]},
        desc=f"Grouping into {block_size}-token blocks",
        cache_file_name=arrow_cache_file(cache_dir, _CACHE_VERSION, "mlm-blocks", tokens._fingerprint, block_size, tpl))
    return blocks.with_format(None)


def mlm_collator(tokenizer: PreTrainedTokenizerBase, seed: int | None = None) -> DataCollatorForLanguageModeling:
    """BERT's MLM corruption (reference-impl §4.5, check vector 25): ``MLM_PROBABILITY`` of the non-special tokens
    get labels, 80 % of them become the mask token, 10 % a random id, 10 % stay; labels −100 elsewhere. Resampled
    on every call; ``seed`` makes the sequence of batches reproducible."""
    return DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=MLM_PROBABILITY, seed=seed)


def _rows(ds: datasets.Dataset, start: int, stop: int, columns: Sequence[str]) -> list[dict[str, Any]]:
    batch = ds.select_columns(list(columns))[start:stop]
    return [dict(zip(batch, values)) for values in zip(*batch.values())]


def fixed_mlm_eval_batches(blocks: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, *, batch_size: int,
                           seed: int, max_blocks: int | None = None) -> list[dict[str, torch.Tensor]]:
    """The held-out MLM set, corrupted once with a seeded collator (reference-impl §9: seed 42 in the reference).

    Every subnetwork is then scored on exactly the same masked positions and replacement tokens, so differences
    in MLM dev loss come from the masks, not from resampled corruption. Deterministic for a given ``seed``.
    """
    n = len(blocks) if max_blocks is None else min(max_blocks, len(blocks))
    collate = mlm_collator(tokenizer, seed=seed)
    columns = ("input_ids", "attention_mask", "special_tokens_mask")
    return [dict(collate(_rows(blocks, i, min(i + batch_size, n), columns))) for i in range(0, n, batch_size)]


# --- KD sequences (reference-impl §6.2) ---------------------------------------------------------------------------
def _documents(tokens: datasets.Dataset, eq_id: int, min_first_len: int = 20) -> Iterator[list[list[int]]]:
    """Runs of non-blank lines; kept only if the first line has no ``=`` token and ≥ 20 tokens (drops headings).

    A line with no tokens counts as blank (the reference only treats whitespace lines so; other token-less lines
    are vanishingly rare). The reference adds a last unterminated document unfiltered; we filter it like the rest.
    """
    doc: list[list[int]] = []
    for batch in tokens.iter(batch_size=10_000):
        for ids in batch["input_ids"]:
            if ids:
                doc.append(ids)
                continue
            if doc and eq_id not in doc[0] and len(doc[0]) >= min_first_len:
                yield doc
            doc = []
    if doc and eq_id not in doc[0] and len(doc[0]) >= min_first_len:
        yield doc


def _truncate_pair(a: deque[int], b: deque[int], max_num_tokens: int, rng: random.Random) -> None:
    """Google BERT's ``truncate_seq_pair``: drop from the front or back (at random) of the longer side."""
    while len(a) + len(b) > max_num_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            longer.popleft()
        else:
            longer.pop()


def _pairs_from_document(doc: list[list[int]], rng: random.Random, max_num_tokens: int,
                         short_seq_prob: float) -> Iterator[tuple[list[int], list[int]]]:
    """``create_instances_from_document`` with ``--one_seq``: B is always A's true continuation (maybe empty)."""
    target = rng.randint(2, max_num_tokens) if rng.random() < short_seq_prob else max_num_tokens
    chunk: list[list[int]] = []
    length = 0
    for i, segment in enumerate(doc):
        chunk.append(segment)
        length += len(segment)
        if i == len(doc) - 1 or length >= target:
            a_end = rng.randrange(1, len(chunk)) if len(chunk) >= 2 else 1
            a = deque(t for seg in chunk[:a_end] for t in seg)
            b = deque(t for seg in chunk[a_end:] for t in seg)
            _truncate_pair(a, b, max_num_tokens, rng)
            yield list(a), list(b)
            chunk, length = [], 0


def _mask_one(ids: list[int], special: list[int], rng: random.Random, mask_id: int, vocab_size: int) -> int:
    """``create_masked_lm_predictions`` with ``masked_lm_prob`` 0: exactly one non-special position, 80 % mask,
    10 % kept, 10 % random vocabulary id (same draw order as the reference). Returns the position."""
    pos = rng.choice([i for i, s in enumerate(special) if not s])
    if rng.random() < 0.8:
        ids[pos] = mask_id
    elif rng.random() >= 0.5:
        ids[pos] = rng.randrange(vocab_size)
    return pos


def _kd_instances(tokens: datasets.Dataset, *, eq_id: int, mask_id: int, vocab_size: int, single: _Template,
                  pair: _Template, max_num_tokens: int, seed: int,
                  short_seq_prob: float) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    for doc in _documents(tokens, eq_id):
        for a, b in _pairs_from_document(doc, rng, max_num_tokens, short_seq_prob):
            ids, types, special = pair.wrap(a, b) if b else single.wrap(a)
            pos = _mask_one(ids, special, rng, mask_id, vocab_size)
            yield {"input_ids": ids, "token_type_ids": types, "attention_mask": [1] * len(ids),
                   "masked_lm_position": pos}


def kd_sequences(lines: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, *, max_seq_len: int = 512,
                 seed: int, short_seq_prob: float = 0.1, num_proc: int | None = None,
                 cache_dir: Path | None = None) -> datasets.Dataset:
    """The reference KD pregeneration (``pregenerate_training_data.py --one_seq``; reference-impl §6.2), seeded.

    Documents are runs of non-blank lines whose first line has no ``=`` token and ≥ 20 tokens (headings go);
    paragraphs are accumulated up to ``max_seq_len − 3`` tokens (with probability ``short_seq_prob`` a random
    target in [2, max]), split at a random paragraph boundary into A and its true continuation B, truncated from
    the longer side, encoded with the tokenizer's pair template (single template when B is empty), and exactly one
    non-special token is corrupted. One ``random.Random(seed)`` drives everything, so the output is reproducible
    (the reference was unseeded, reference-impl §11.18). Columns: ``input_ids`` (≤ ``max_seq_len``),
    ``token_type_ids``, ``attention_mask``, ``masked_lm_position``. Cached as Arrow, keyed by the inputs.
    """
    tokens = _tokenized_lines(lines, tokenizer, num_proc, cache_dir)
    single, pair = _template(tokenizer, pair=False), _template(tokenizer, pair=True)
    kwargs = {"eq_id": tokenizer.convert_tokens_to_ids("="), "mask_id": tokenizer.mask_token_id,
              "vocab_size": tokenizer.vocab_size, "single": single, "pair": pair,
              "max_num_tokens": max_seq_len - tokenizer.num_special_tokens_to_add(pair=True), "seed": seed,
              "short_seq_prob": short_seq_prob}
    fingerprint = Hasher.hash([_CACHE_VERSION, "kd", tokens._fingerprint, sorted(kwargs.items(), key=str)])
    return datasets.Dataset.from_generator(_kd_instances, features=_KD_FEATURES, fingerprint=fingerprint,
                                           gen_kwargs={"tokens": tokens, **kwargs}, cache_dir=_str(cache_dir))


def _collate_kd(pad: DataCollatorWithPadding, features: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    return dict(pad([{k: f[k] for k in _KD_MODEL_INPUTS} for f in features]))


def kd_collator(tokenizer: PreTrainedTokenizerBase, *,
                pad_to: int | None = None) -> Callable[[list[Mapping[str, Any]]], dict[str, torch.Tensor]]:
    """Pad KD rows to the batch's longest row (or to ``pad_to``, as the reference pads to 512, reference-impl §6.2)
    with the pad id, attention mask 0 and token type 0; returns LongTensors ``input_ids``, ``attention_mask``,
    ``token_type_ids``. Picklable (for DataLoader workers)."""
    pad = DataCollatorWithPadding(tokenizer, padding="max_length" if pad_to else "longest", max_length=pad_to,
                                  return_tensors="pt")
    return partial(_collate_kd, pad)


def fixed_kd_eval_batches(seqs: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, *, batch_size: int,
                          max_sequences: int | None = None,
                          pad_to: int | None = None) -> list[dict[str, torch.Tensor]]:
    """The held-out KD set as fixed batches, in order (the corruption is already fixed by ``kd_sequences``)."""
    n = len(seqs) if max_sequences is None else min(max_sequences, len(seqs))
    collate = kd_collator(tokenizer, pad_to=pad_to)
    return [collate(_rows(seqs, i, min(i + batch_size, n), _KD_MODEL_INPUTS)) for i in range(0, n, batch_size)]
