"""SQuAD v1.1 features and answer post-processing for span fine-tuning (paper §4.1.1, Tab. 1; reference-impl §7.1).

The paper fine-tunes on SQuAD v1.1 with max length 384, doc stride 128, max query length 64, and evaluates with
n-best 20 and max answer length 30 (Tab. 1; the released ``squad_trans.py`` defaults, reference-impl §7.1). Its code
used the *legacy* transformers pipeline (``squad_convert_examples_to_features`` + ``compute_predictions_logits``);
today's examples (``run_qa.py`` + ``utils_qa.py``) differ from it in ways that change the numbers. Which one is
followed here, point by point:

* **Windows: legacy.** A context longer than one window is cut into windows of ``span_len = max_length −
  len(truncated query) − (special tokens of a pair)`` context tokens (3 for BERT, 4 for RoBERTa) that start at
  context tokens ``0, doc_stride, 2·doc_stride, …`` and stop at the first window reaching the end of the context:
  ``doc_stride`` is the *step* between window starts. A fast tokenizer's ``stride=`` (used by ``run_qa.py`` with
  the same 128) is the *overlap*, which gives a step of ``span_len − 128`` ≈ 240 instead of 128. We keep the fast
  tokenizer's own overflow machinery and pass it the overlap ``span_len − doc_stride``, per group of questions of
  the same truncated length, so its windows are the legacy ones (checked on every example, and in the tests).
* **Tokenisation: modern.** The fast tokenizer runs on the raw context and reports character offsets; the legacy
  code split on whitespace and sub-tokenised each word with the slow tokenizer. For BERT's WordPiece (which splits
  on whitespace first) the tokens are the same. Questions are truncated to their first ``max_query_length`` tokens
  as in the legacy code (done here by cutting the string at that token's end; WordPiece re-tokenises such a prefix
  to the same tokens) and stripped of leading whitespace as ``run_qa.py`` does.
* **Training labels: offsets.** The first answer's character span is mapped to the first and last context token
  covering it; a window that does not contain the whole answer points at the CLS token (index 0) for both start
  and end, as the legacy converter does for v1.1. The legacy converter also skipped the rare training examples
  whose answer text it could not find in its whitespace tokens, and tightened spans with ``_improve_answer_span``;
  neither is needed with offsets and neither is reproduced.
* **Post-processing: legacy rules, modern text.** Candidates are the legacy ones (top ``n_best_size`` start and end
  logits per window, both in the context, ``end ≥ start``, at most ``max_answer_length`` tokens, start token in
  its max-context window, Google BERT's ``_check_is_max_context``); the answer is the best ``start + end`` logit
  sum over all windows of the question. Its text is the context slice between the tokens' character offsets (as
  ``utils_qa.py``), *not* the legacy ``get_final_text`` heuristic that de-tokenised the span and re-aligned it to
  the original whitespace words; the two agree except when a span starts or ends inside a word. A question with
  no valid span gets ``""`` (the legacy code wrote ``"empty"``; both score 0 against real answers).

Examples are a ``datasets.Dataset`` in the hub schema of ``rajpurkar/squad`` (``id``, ``title``, ``context``,
``question``, ``answers = {"text": [...], "answer_start": [...]}``). Features are built with ``datasets.map`` and,
given a ``cache_dir``, cached as Arrow under a name keyed by the tokenizer, the parameters and the examples'
fingerprint (as :mod:`tamt_core.data.pretrain` does).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase

from tamt_core.data.caching import arrow_cache_file
from tamt_core.hparams import (FINETUNE, SQUAD_DOC_STRIDE, SQUAD_MAX_ANSWER_LENGTH, SQUAD_MAX_QUERY_LENGTH,
                               SQUAD_N_BEST)

MAX_LENGTH: int = FINETUNE["squad"].max_length
"""Tab. 1 "Max Length" for SQuAD: tokens per window, question and special tokens included."""
DOC_STRIDE: int = SQUAD_DOC_STRIDE
"""Legacy ``--doc_stride`` (reference-impl §7.1): context tokens between the starts of consecutive windows."""
MAX_QUERY_LENGTH: int = SQUAD_MAX_QUERY_LENGTH
N_BEST_SIZE: int = SQUAD_N_BEST
MAX_ANSWER_LENGTH: int = SQUAD_MAX_ANSWER_LENGTH

NO_OFFSET: tuple[int, int] = (-1, -1)
"""``offset_mapping`` entry of a question or special token (not part of the context)."""

_CACHE_VERSION = "squad-features-v1"  # part of every cache key: bump when the produced features change


@dataclass(frozen=True)
class _Window:
    """One feature: a window of an example's context after its question, as the tokenizer encoded it."""

    inputs: dict[str, list[int]]  # input_ids, attention_mask (, token_type_ids)
    offsets: list[tuple[int, int]]  # per token, character offsets into the question or the context
    first: int  # index of the window's first context token
    last: int  # index of the window's last context token
    doc_start: int  # index of the first context token among all the context's tokens

    @property
    def length(self) -> int:
        return self.last - self.first + 1


def _model_inputs(tokenizer: PreTrainedTokenizerBase) -> tuple[str, ...]:
    types = ("token_type_ids",) if "token_type_ids" in tokenizer.model_input_names else ()
    return ("input_ids", "attention_mask", *types)


def _check_params(tokenizer: PreTrainedTokenizerBase, doc_stride: int, max_query_length: int) -> None:
    if tokenizer.padding_side != "right":
        raise ValueError("only question-first tokenizers (padding side 'right', e.g. BERT, RoBERTa) are supported")
    if doc_stride < 1 or max_query_length < 1:
        raise ValueError(f"doc_stride ({doc_stride}) and max_query_length ({max_query_length}) must be ≥ 1")


def _truncated_questions(questions: Sequence[str], tokenizer: PreTrainedTokenizerBase,
                         max_query_length: int) -> tuple[list[str], list[int]]:
    """Questions cut to their first ``max_query_length`` tokens (legacy ``encode(max_length=…)``), and their
    token counts as the tokenizer will see them in the pair."""
    stripped = [q.lstrip() for q in questions]
    encoded = tokenizer(stripped, add_special_tokens=False, return_offsets_mapping=True)
    cut: list[str] = []
    for question, offsets in zip(stripped, encoded["offset_mapping"]):
        cut.append(question[: offsets[max_query_length - 1][1]] if len(offsets) > max_query_length else question)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    long_rows = [i for i, n in enumerate(lengths) if n > max_query_length]
    if long_rows:  # measure the cut strings rather than assume they re-tokenise to exactly max_query_length tokens
        recut = tokenizer([cut[i] for i in long_rows], add_special_tokens=False)["input_ids"]
        for i, ids in zip(long_rows, recut):
            lengths[i] = len(ids)
    return cut, lengths


def _windows(questions: Sequence[str], contexts: Sequence[str], tokenizer: PreTrainedTokenizerBase, *,
             max_length: int, doc_stride: int, max_query_length: int) -> list[list[_Window]]:
    """Every example's windows, in order, by the legacy rule (module docstring): starts ``0, step, 2·step, …`` with
    ``step = min(doc_stride, span_len)`` (Google BERT's ``min(length, doc_stride)``), last window ends the context."""
    _check_params(tokenizer, doc_stride, max_query_length)
    questions, q_lengths = _truncated_questions(questions, tokenizer, max_query_length)
    names = _model_inputs(tokenizer)
    groups: dict[int, list[int]] = defaultdict(list)
    for row, q_len in enumerate(q_lengths):
        groups[q_len].append(row)
    windows: list[list[_Window]] = [[] for _ in questions]
    for q_len, rows in groups.items():
        span_len = max_length - q_len - tokenizer.num_special_tokens_to_add(pair=True)
        if span_len < 1:
            raise ValueError(f"max_length {max_length} leaves no room for the context after a {q_len}-token question")
        step = min(doc_stride, span_len)
        encoded = tokenizer([questions[r] for r in rows], [contexts[r] for r in rows], truncation="only_second",
                            max_length=max_length, stride=span_len - step, return_overflowing_tokens=True,
                            return_offsets_mapping=True, return_token_type_ids="token_type_ids" in names)
        for j, sample in enumerate(encoded["overflow_to_sample_mapping"]):
            row = rows[sample]
            context = [i for i, s in enumerate(encoded.sequence_ids(j)) if s == 1]
            if not context:
                raise ValueError(f"example row {row}: the context has no tokens")
            windows[row].append(_Window(inputs={name: encoded[name][j] for name in names},
                                        offsets=[tuple(o) for o in encoded["offset_mapping"][j]],
                                        first=context[0], last=context[-1],
                                        doc_start=len(windows[row]) * step))
        for row in rows:
            _check_legacy_windows(windows[row], span_len, step, row)
    return windows


def _check_legacy_windows(windows: Sequence[_Window], span_len: int, step: int, row: int) -> None:
    """Every window but the last is full and the next one starts ``step`` context tokens later (same character
    offsets), i.e. the tokenizer's overflow produced the legacy windows; fails loudly if a tokenizer does not."""
    for prev, nxt in zip(windows, windows[1:]):
        if step < span_len:  # overlapping windows: the next one starts at the token ``step`` after this start
            follows = nxt.offsets[nxt.first] == prev.offsets[prev.first + step]
        else:  # adjacent windows: the next one starts after this one ends
            follows = nxt.offsets[nxt.first][0] >= prev.offsets[prev.last][1]
        if prev.length != span_len or not follows:
            raise RuntimeError(f"example row {row}: the tokenizer's overflowing windows do not follow the legacy "
                               f"doc_stride rule (span {span_len}, step {step})")


def _is_max_context(spans: Sequence[tuple[int, int]], span_index: int, position: int) -> bool:
    """Google BERT's ``_check_is_max_context``: among the windows ``(start, length)`` holding context token
    ``position``, the one with the largest ``min(left, right context) + 0.01·length`` owns it (first on ties)."""
    best_score: float | None = None
    best_index = -1
    for index, (start, length) in enumerate(spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_index = score, index
    return best_index == span_index


def _answer_positions(window: _Window, start_char: int, end_char: int, cls_index: int) -> tuple[int, int]:
    """First and last token of the answer's character span ``[start_char, end_char)`` in the window, or
    ``(cls_index, cls_index)`` when the window does not hold the whole answer."""
    offsets = window.offsets
    if offsets[window.first][0] > start_char or offsets[window.last][1] < end_char:
        return cls_index, cls_index
    start = window.first
    while start < window.last and offsets[start + 1][0] <= start_char:
        start += 1
    end = window.last
    while end > window.first and offsets[end - 1][1] >= end_char:
        end -= 1
    return start, end


def _train_batch(batch: dict[str, list[Any]], indices: list[int], *, tokenizer: PreTrainedTokenizerBase,
                 max_length: int, doc_stride: int, max_query_length: int) -> dict[str, list[Any]]:
    windows = _windows(batch["question"], batch["context"], tokenizer, max_length=max_length,
                       doc_stride=doc_stride, max_query_length=max_query_length)
    out: dict[str, list[Any]] = defaultdict(list)
    for example_index, answers, row_windows in zip(indices, batch["answers"], windows, strict=True):
        has_answer = len(answers["text"]) > 0
        start_char = answers["answer_start"][0] if has_answer else 0
        end_char = start_char + len(answers["text"][0]) if has_answer else 0
        for window in row_windows:
            ids = window.inputs["input_ids"]
            cls_index = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
            start, end = (_answer_positions(window, start_char, end_char, cls_index) if has_answer
                          else (cls_index, cls_index))
            for name, values in window.inputs.items():
                out[name].append(values)
            out["start_positions"].append(start)
            out["end_positions"].append(end)
            out["example_index"].append(example_index)
    return dict(out)


def _eval_batch(batch: dict[str, list[Any]], indices: list[int], *, tokenizer: PreTrainedTokenizerBase,
                max_length: int, doc_stride: int, max_query_length: int) -> dict[str, list[Any]]:
    windows = _windows(batch["question"], batch["context"], tokenizer, max_length=max_length,
                       doc_stride=doc_stride, max_query_length=max_query_length)
    out: dict[str, list[Any]] = defaultdict(list)
    for example_index, row_windows in zip(indices, windows, strict=True):
        spans = [(w.doc_start, w.length) for w in row_windows]
        for span_index, window in enumerate(row_windows):
            in_context = range(window.first, window.last + 1)
            offsets = [list(o) if i in in_context else list(NO_OFFSET) for i, o in enumerate(window.offsets)]
            max_context = [i in in_context and _is_max_context(spans, span_index, window.doc_start + i - window.first)
                           for i in range(len(window.offsets))]
            for name, values in window.inputs.items():
                out[name].append(values)
            out["example_index"].append(example_index)
            out["offset_mapping"].append(offsets)
            out["token_is_max_context"].append(max_context)
    return dict(out)


def _schema(tokenizer: PreTrainedTokenizerBase, extra: dict[str, Any]) -> datasets.Features:
    ids = {"input_ids": datasets.List(datasets.Value("int32")),
           "attention_mask": datasets.List(datasets.Value("int8"))}
    if "token_type_ids" in _model_inputs(tokenizer):
        ids["token_type_ids"] = datasets.List(datasets.Value("int8"))
    return datasets.Features({**ids, **extra, "example_index": datasets.Value("int64")})


def squad_train_features(examples: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, *,
                         max_length: int = MAX_LENGTH, doc_stride: int = DOC_STRIDE,
                         max_query_length: int = MAX_QUERY_LENGTH,
                         cache_dir: Path | None = None) -> datasets.Dataset:
    """Training features: one row per legacy window (module docstring), unpadded.

    Columns: ``input_ids``, ``attention_mask`` (, ``token_type_ids`` if the tokenizer makes them),
    ``start_positions``/``end_positions`` (the first answer's first and last token; the CLS index 0 for both when
    the window does not hold the whole answer, as the legacy v1.1 converter) and ``example_index`` (the example's
    row). Cached as Arrow under ``cache_dir`` when given.

    Raises:
        ValueError: a padding-left tokenizer, ``doc_stride``/``max_query_length`` < 1, or ``max_length`` leaving no
            room for the context after a question.
    """
    _check_params(tokenizer, doc_stride, max_query_length)
    params = {"max_length": max_length, "doc_stride": doc_stride, "max_query_length": max_query_length}
    labels = {"start_positions": datasets.Value("int32"), "end_positions": datasets.Value("int32")}
    return examples.map(_train_batch, batched=True, with_indices=True, fn_kwargs={"tokenizer": tokenizer, **params},
                        remove_columns=examples.column_names, features=_schema(tokenizer, labels),
                        desc="SQuAD training features",
                        cache_file_name=arrow_cache_file(cache_dir, _CACHE_VERSION, "squad-train",
                                                         examples._fingerprint, tokenizer, sorted(params.items())))


def squad_eval_features(examples: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, *,
                        max_length: int = MAX_LENGTH, doc_stride: int = DOC_STRIDE,
                        max_query_length: int = MAX_QUERY_LENGTH,
                        cache_dir: Path | None = None) -> datasets.Dataset:
    """Evaluation features: the same windows as :func:`squad_train_features`, with what post-processing needs.

    Columns: ``input_ids``, ``attention_mask`` (, ``token_type_ids``), ``example_index``, ``offset_mapping`` (per
    token ``[start, end)`` character offsets into the context, :data:`NO_OFFSET` for question and special tokens)
    and ``token_is_max_context`` (per token: the context token is scored in this window, Google BERT's
    ``_check_is_max_context``; False outside the context). Cached as Arrow under ``cache_dir`` when given.

    Raises:
        ValueError: as :func:`squad_train_features`.
    """
    _check_params(tokenizer, doc_stride, max_query_length)
    params = {"max_length": max_length, "doc_stride": doc_stride, "max_query_length": max_query_length}
    extra = {"offset_mapping": datasets.List(datasets.List(datasets.Value("int32"))),
             "token_is_max_context": datasets.List(datasets.Value("bool"))}
    return examples.map(_eval_batch, batched=True, with_indices=True, fn_kwargs={"tokenizer": tokenizer, **params},
                        remove_columns=examples.column_names, features=_schema(tokenizer, extra),
                        desc="SQuAD evaluation features",
                        cache_file_name=arrow_cache_file(cache_dir, _CACHE_VERSION, "squad-eval", examples._fingerprint,
                                                         tokenizer, sorted(params.items())))


def _feature_logits(logits: np.ndarray, length: int, which: str, index: int) -> np.ndarray:
    values = np.asarray(logits, dtype=np.float64)
    if values.ndim != 1 or len(values) < length:
        raise ValueError(f"feature {index}: {which} logits of shape {values.shape} do not cover its {length} tokens")
    return values[:length]


def _best_span(start: np.ndarray, end: np.ndarray, in_context: np.ndarray, max_context: np.ndarray, *,
               n_best_size: int, max_answer_length: int) -> tuple[float, int, int] | None:
    """``(score, start, end)`` of the best valid candidate of one window, or None (legacy candidate rules).

    Candidates are visited as the legacy code appends them (starts by decreasing logit, then ends likewise, ties in
    token order) and the first of equal scores wins, as the legacy stable sort keeps it."""
    starts = np.argsort(-start, kind="stable")[:n_best_size]  # (n,)
    ends = np.argsort(-end, kind="stable")[:n_best_size]  # (m,)
    span = ends[None, :] - starts[:, None] + 1  # (n, m)
    valid = ((in_context[starts] & max_context[starts])[:, None] & in_context[ends][None, :]
             & (span >= 1) & (span <= max_answer_length))
    candidates = np.flatnonzero(valid)
    if len(candidates) == 0:
        return None
    scores = (start[starts][:, None] + end[ends][None, :]).ravel()[candidates]
    best = candidates[int(np.argmax(scores))]
    i, j = divmod(int(best), len(ends))
    return float(scores.max()), int(starts[i]), int(ends[j])


def squad_predictions(examples: datasets.Dataset, features: datasets.Dataset,
                      start_logits: Sequence[np.ndarray] | np.ndarray, end_logits: Sequence[np.ndarray] | np.ndarray,
                      *, n_best_size: int = N_BEST_SIZE, max_answer_length: int = MAX_ANSWER_LENGTH) -> dict[str, str]:
    """Answer text per question id: the legacy evaluation's best span over all windows (module docstring).

    Args:
        examples: the examples the features were built from (``id`` and ``context`` are read).
        features: :func:`squad_eval_features` of ``examples``, in its order.
        start_logits, end_logits: one 1-D array per feature (its own length, or longer: a padded 2-D array works,
            each row is cut to the feature's ``input_ids`` length).
        n_best_size: start and end candidates kept per window (Tab. 1: 20).
        max_answer_length: longest span in tokens (Tab. 1: 30).

    Returns:
        ``{id: text}`` for every example: the context between the best span's character offsets (original casing
        and punctuation), ``""`` when no window has a valid span.

    Raises:
        ValueError: logits and features differ in number or a feature's logits are too short, or a feature points
            at an example row that does not exist.
    """
    if len(start_logits) != len(features) or len(end_logits) != len(features):
        raise ValueError(f"{len(features)} features but {len(start_logits)} start and {len(end_logits)} end logits")
    rows = examples.select_columns(["id", "context"]).to_dict()
    ids, contexts = rows["id"], rows["context"]
    best: dict[int, tuple[float, int, int]] = {}  # example row -> (score, answer's first char, char after its end)
    columns = features.select_columns(["example_index", "input_ids", "offset_mapping", "token_is_max_context"])
    index = 0
    for batch in columns.iter(batch_size=1000):
        for example, input_ids, offsets, max_context in zip(batch["example_index"], batch["input_ids"],
                                                            batch["offset_mapping"], batch["token_is_max_context"]):
            if not 0 <= example < len(ids):
                raise ValueError(f"feature {index} points at example row {example}, but there are {len(ids)}")
            n = len(input_ids)
            offsets_np = np.asarray(offsets, dtype=np.int64).reshape(n, 2)  # (n, 2)
            found = _best_span(_feature_logits(start_logits[index], n, "start", index),
                               _feature_logits(end_logits[index], n, "end", index),
                               offsets_np[:, 0] >= 0, np.asarray(max_context, dtype=bool),
                               n_best_size=n_best_size, max_answer_length=max_answer_length)
            if found is not None and (example not in best or found[0] > best[example][0]):
                score, start, end = found
                best[example] = (score, int(offsets_np[start, 0]), int(offsets_np[end, 1]))
            index += 1
    return {qid: contexts[row][best[row][1]:best[row][2]] if row in best else "" for row, qid in enumerate(ids)}
