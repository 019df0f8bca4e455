"""SQuAD v1.1 features and post-processing (paper Tab. 1; reference-impl §7.1) on hand-built examples.

The windows must be the legacy ``squad_convert_examples_to_features`` ones (``doc_stride`` = step between window
starts), the labels must point at the answer tokens, ``token_is_max_context`` must follow Google BERT's rule, and
post-processing must apply the legacy candidate rules and cut the answer text from the context by offsets.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest

from tamt_core.data.squad import (
    NO_OFFSET,
    squad_eval_features,
    squad_predictions,
    squad_train_features,
)

# 20 single-word-piece tokens: long0 ago1 ,2 the3 old4 king5 of6 france7 built8 a9 huge10 stone11 bridge12 over13
# the14 river15 near16 his17 castle18 .19
BRIDGE = "Long ago, the old king of France built a huge Stone Bridge over the river near his castle."
QUESTION = "Who built it"  # who built it: 3 tokens
# max_length 16 ⇒ span_len = 16 − 3 − 3 special = 10 context tokens per window; doc_stride 4 = step of starts.
# Legacy windows (start, length): (0, 10), (4, 10), (8, 10), (12, 8) — the last one reaches token 19 and stops.
MAX_LENGTH, DOC_STRIDE = 16, 4
LEGACY_WINDOWS = [(0, 10), (4, 10), (8, 10), (12, 8)]


def squad_examples(rows: list[tuple[str, str, str, str]]) -> datasets.Dataset:
    """(id, question, context, answer) rows in the hub schema of rajpurkar/squad."""
    return datasets.Dataset.from_dict({
        "id": [r[0] for r in rows], "title": ["t"] * len(rows), "context": [r[2] for r in rows],
        "question": [r[1] for r in rows],
        "answers": [{"text": [r[3]], "answer_start": [r[2].index(r[3])]} for r in rows]})


def legacy_windows(n_doc_tokens: int, span_len: int, doc_stride: int) -> list[tuple[int, int]]:
    """Google BERT's / the legacy converter's ``doc_spans`` loop, transcribed."""
    spans, start = [], 0
    while start < n_doc_tokens:
        length = min(n_doc_tokens - start, span_len)
        spans.append((start, length))
        if start + length == n_doc_tokens:
            break
        start += min(length, doc_stride)
    return spans


def context_windows(tokenizer, features: datasets.Dataset, contexts: list[str]) -> list[tuple[int, int]]:
    """(start, length) of every feature's context tokens among its whole context's tokens, checking the ids."""
    found = []
    for row in features:
        context = contexts[row["example_index"]]
        doc_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        ids = row["input_ids"]
        sep = [i for i, t in enumerate(ids) if t == tokenizer.sep_token_id]
        first, last = sep[-2] + 1, sep[-1] - 1  # BERT: [CLS] q [SEP] context [SEP]; RoBERTa: <s> q </s></s> c </s>
        window = ids[first:last + 1]
        starts = [s for s in range(len(doc_ids)) if doc_ids[s:s + len(window)] == window]
        assert len(starts) == 1
        found.append((starts[0], len(window)))
    return found


def test_windows_follow_the_legacy_doc_stride_rule(minilm_tokenizer) -> None:
    examples = squad_examples([("q1", QUESTION, BRIDGE, "Stone Bridge")])
    features = squad_train_features(examples, minilm_tokenizer, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE)
    assert legacy_windows(20, 10, DOC_STRIDE) == LEGACY_WINDOWS
    assert context_windows(minilm_tokenizer, features, [BRIDGE]) == LEGACY_WINDOWS
    assert [len(ids) for ids in features["input_ids"]] == [16, 16, 16, 14]
    assert features.column_names == ["input_ids", "attention_mask", "token_type_ids", "start_positions",
                                     "end_positions", "example_index"]
    # [CLS] who built it [SEP] (type 0) then the window and [SEP] (type 1)
    assert features[0]["token_type_ids"] == [0] * 5 + [1] * 11
    assert minilm_tokenizer.convert_ids_to_tokens(features[3]["input_ids"][:5]) == ["[CLS]", "who", "built", "it",
                                                                                    "[SEP]"]


def test_windows_per_question_length_in_one_batch(minilm_tokenizer) -> None:
    long_question = "Who built it near the river in France long ago"  # 10 tokens
    contexts = [BRIDGE, BRIDGE, "A red fox met Mr. Brown near the old mill."]
    examples = squad_examples([("a", QUESTION, contexts[0], "Stone Bridge"),
                               ("b", long_question, contexts[1], "king"),
                               ("c", QUESTION, contexts[2], "Mr. Brown")])
    features = squad_eval_features(examples, minilm_tokenizer, max_length=20, doc_stride=3)
    # span_len: 20 − 3 − 3 = 14 for "a" and "c", 20 − 10 − 3 = 7 for "b"
    expected = (legacy_windows(20, 14, 3) + legacy_windows(20, 7, 3) + legacy_windows(12, 14, 3))
    assert expected == [(0, 14), (3, 14), (6, 14), (0, 7), (3, 7), (6, 7), (9, 7), (12, 7), (15, 5),
                        (0, 12)]
    assert context_windows(minilm_tokenizer, features, contexts) == expected
    assert features["example_index"] == [0, 0, 0, 1, 1, 1, 1, 1, 1, 2]


def test_question_truncated_to_max_query_length(minilm_tokenizer) -> None:
    examples = squad_examples([("q1", "Who built it near the river", BRIDGE, "king")])
    features = squad_train_features(examples, minilm_tokenizer, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE,
                                    max_query_length=2)
    # "who built" kept ⇒ span_len = 16 − 2 − 3 = 11: windows (0, 11), (4, 11), (8, 11), (12, 8)
    assert context_windows(minilm_tokenizer, features, [BRIDGE]) == legacy_windows(20, 11, 4)
    assert minilm_tokenizer.convert_ids_to_tokens(features[0]["input_ids"][:4]) == ["[CLS]", "who", "built", "[SEP]"]


def test_answer_labels_point_at_the_answer_or_at_cls(minilm_tokenizer) -> None:
    examples = squad_examples([("q1", QUESTION, BRIDGE, "Stone Bridge")])
    features = squad_train_features(examples, minilm_tokenizer, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE)
    # "stone bridge" = context tokens 11–12; the context starts at position 5 of each window.
    # Window (0, 10) misses both, (4, 10) holds them at 5 + 7, 5 + 8, (8, 10) at 5 + 3, 5 + 4, (12, 8) misses 11.
    assert features["start_positions"] == [0, 12, 8, 0]
    assert features["end_positions"] == [0, 13, 9, 0]
    for row in features.select([1, 2]):
        span = row["input_ids"][row["start_positions"]:row["end_positions"] + 1]
        assert minilm_tokenizer.convert_ids_to_tokens(span) == ["stone", "bridge"]


def test_answer_partly_in_a_window_gets_cls(minilm_tokenizer) -> None:
    examples = squad_examples([("q1", QUESTION, BRIDGE, "built a huge Stone Bridge over")])  # tokens 8–13
    features = squad_train_features(examples, minilm_tokenizer, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE)
    # only (4, 10) covers 8–13 (positions 5 + 4 … 5 + 9); (0, 10) ends at 9, (8, 10) holds it from position 5
    assert features["start_positions"] == [0, 9, 5, 0]
    assert features["end_positions"] == [0, 14, 10, 0]


def test_token_is_max_context_follows_the_google_rule(minilm_tokenizer) -> None:
    examples = squad_examples([("q1", QUESTION, BRIDGE, "Stone Bridge")])
    features = squad_eval_features(examples, minilm_tokenizer, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE)
    # score(window, p) = min(p − start, end − p) + 0.01·length. E.g. context token 9:
    #   (0, 10): min(9, 0) + .1 = .1;  (4, 10): min(5, 4) + .1 = 4.1;  (8, 10): min(1, 8) + .1 = 1.1  ⇒ window 1.
    # token 15: (8, 10): min(7, 2) + .1 = 2.1;  (12, 8): min(3, 4) + .08 = 3.08  ⇒ window 3 (the short last one).
    # Owners worked out the same way for all 20 tokens:
    owner = [0] * 7 + [1] * 4 + [2] * 4 + [3] * 5
    for w, ((start, length), row) in enumerate(zip(LEGACY_WINDOWS, features, strict=True)):
        flags = row["token_is_max_context"]
        assert flags[:5] == [False] * 5 and flags[-1] is False  # question and special tokens
        assert flags[5:5 + length] == [owner[start + i] == w for i in range(length)]
    assert features[1]["token_is_max_context"][5 + 9 - 4] is True  # token 9 in window 1
    assert features[3]["token_is_max_context"][5 + 15 - 12] is True  # token 15 in window 3


def test_eval_offsets_point_into_the_context(minilm_tokenizer) -> None:
    examples = squad_examples([("q1", QUESTION, BRIDGE, "Stone Bridge")])
    features = squad_eval_features(examples, minilm_tokenizer, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE)
    offsets = features[1]["offset_mapping"]
    assert offsets[:5] == [list(NO_OFFSET)] * 5 and offsets[-1] == list(NO_OFFSET)
    assert [BRIDGE[s:e] for s, e in offsets[5:15]] == ["old", "king", "of", "France", "built", "a", "huge", "Stone",
                                                       "Bridge", "over"]


# --- post-processing -------------------------------------------------------------------------------------------
MILL = "A red fox met Mr. Brown near the old mill."  # a0 red1 fox2 met3 mr4 .5 brown6 near7 the8 old9 mill10 .11
# question "Who?" (2 tokens), max_length 13 ⇒ span_len 8; doc_stride 4 ⇒ windows (0, 8) and (4, 8), context at
# positions 4–11 of each. Max context: token p belongs to window 0 for p ≤ 5 (e.g. p = 5: min(5, 2) + .08 = 2.08
# vs min(1, 6) + .08 = 1.08), to window 1 for p ≥ 6.


@pytest.fixture(scope="module")
def mill(minilm_tokenizer) -> tuple[datasets.Dataset, datasets.Dataset]:
    examples = squad_examples([("q1", "Who?", MILL, "Mr. Brown"), ("q2", "Where?", "Paris is big.", "Paris")])
    features = squad_eval_features(examples, minilm_tokenizer, max_length=13, doc_stride=4)
    assert features["example_index"] == [0, 0, 1]
    return examples, features


def mill_logits() -> tuple[list[np.ndarray], list[np.ndarray]]:
    start = [np.full(13, -10.0), np.full(13, -10.0), np.full(9, -10.0)]
    end = [np.full(13, -10.0), np.full(13, -10.0), np.full(9, -10.0)]
    # window 0: "Mr. Brown" = context 4–6 at positions 8–10, score 3 + 3 = 6 (valid)
    start[0][8], end[0][10] = 3.0, 3.0
    # window 1 (context p at position p): the answer "Brown near the old mill." = positions 6–11, score 5 + 4 = 9
    start[1][6], end[1][11] = 5.0, 4.0
    # … beaten on score only by invalid spans: [CLS] (20), a start at context 4 (not max context here) ending at 5
    # (9 + 8 = 17), end 5 before start 6 (5 + 8 = 13), an end on the question token "?" (5 + 9 = 14).
    start[1][0], end[1][0] = 10.0, 10.0
    start[1][4], end[1][5], end[1][2] = 9.0, 8.0, 9.0
    # second example, one window [CLS] where ? [SEP] paris is big . [SEP]: "Paris" = position 4
    start[2][4], end[2][4] = 1.0, 1.0
    return start, end


def test_predictions_take_the_best_valid_span_over_windows(mill) -> None:
    examples, features = mill
    start, end = mill_logits()
    assert squad_predictions(examples, features, start, end) == {"q1": "Brown near the old mill.", "q2": "Paris"}


def test_predictions_accept_padded_logits(mill) -> None:
    examples, features = mill
    start, end = mill_logits()
    padded_start, padded_end = np.full((3, 16), 100.0), np.full((3, 16), 100.0)  # padding would win if it were used
    for i, (s, e) in enumerate(zip(start, end)):
        padded_start[i, :len(s)], padded_end[i, :len(e)] = s, e
    assert squad_predictions(examples, features, padded_start, padded_end) == {"q1": "Brown near the old mill.",
                                                                              "q2": "Paris"}


def test_predictions_respect_n_best_size(mill) -> None:
    examples, features = mill
    start, end = mill_logits()
    # top-1 start of window 1 is [CLS] ⇒ no valid span there; window 0's top-1 pair is "Mr. Brown"
    assert squad_predictions(examples, features, start, end, n_best_size=1)["q1"] == "Mr. Brown"


def test_predictions_respect_max_answer_length(mill) -> None:
    examples, features = mill
    start, end = mill_logits()
    # the 6-token answer is too long; window 1's best is then "Brown" alone (5 − 10 = −5) < window 0's 6
    assert squad_predictions(examples, features, start, end, max_answer_length=5)["q1"] == "Mr. Brown"
    start[0][8] = -20.0  # without window 0's candidate, window 1's "Brown" wins
    assert squad_predictions(examples, features, start, end, max_answer_length=5)["q1"] == "Brown"


def test_predictions_empty_when_no_valid_span(mill) -> None:
    examples, features = mill
    start = [np.where(np.arange(len(ids)) == 0, 1.0, 0.0) for ids in features["input_ids"]]  # [CLS] on top
    assert squad_predictions(examples, features, start, start, n_best_size=1) == {"q1": "", "q2": ""}


def test_predictions_reject_misaligned_logits(mill) -> None:
    examples, features = mill
    start, end = mill_logits()
    with pytest.raises(ValueError, match="3 features but 2 start"):
        squad_predictions(examples, features, start[:2], end[:2])
    start[1] = start[1][:5]
    with pytest.raises(ValueError, match="feature 1"):
        squad_predictions(examples, features, start, end)


# --- RoBERTa-style tokenizer, cache -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A tiny byte-level BPE RoBERTa tokenizer (no token_type_ids, <s> q </s></s> c </s>), trained offline."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([BRIDGE, QUESTION] * 3, vocab_size=300, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    model = json.loads(bpe._tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    return RobertaTokenizer(vocab=model["vocab"], merges=merges)


def test_roberta_style_windows_and_labels(bpe_tokenizer) -> None:
    assert bpe_tokenizer.num_special_tokens_to_add(pair=True) == 4
    examples = squad_examples([("q1", QUESTION, BRIDGE, "Stone Bridge")])
    features = squad_train_features(examples, bpe_tokenizer, max_length=20, doc_stride=5)
    n_doc = len(bpe_tokenizer(BRIDGE, add_special_tokens=False)["input_ids"])
    n_question = len(bpe_tokenizer(QUESTION, add_special_tokens=False)["input_ids"])
    span_len = 20 - n_question - 4
    assert "token_type_ids" not in features.column_names
    assert context_windows(bpe_tokenizer, features, [BRIDGE]) == legacy_windows(n_doc, span_len, 5)
    assert len(features) >= 2
    for row in features:
        if row["start_positions"]:
            text = bpe_tokenizer.decode(row["input_ids"][row["start_positions"]:row["end_positions"] + 1])
            assert text.strip() == "Stone Bridge"
    assert any(row["start_positions"] for row in features) and any(not row["start_positions"] for row in features)


def test_features_are_cached_by_parameters(minilm_tokenizer, tmp_path: Path) -> None:
    examples = squad_examples([("q1", QUESTION, BRIDGE, "Stone Bridge")])
    first = squad_train_features(examples, minilm_tokenizer, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE,
                                 cache_dir=tmp_path)
    again = squad_train_features(examples, minilm_tokenizer, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE,
                                 cache_dir=tmp_path)
    assert len(list(tmp_path.glob("squad-train-*.arrow"))) == 1
    assert again.to_dict() == first.to_dict()
    squad_train_features(examples, minilm_tokenizer, max_length=MAX_LENGTH, doc_stride=3, cache_dir=tmp_path)
    squad_eval_features(examples, minilm_tokenizer, max_length=MAX_LENGTH, doc_stride=3, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("squad-train-*.arrow"))) == 2
    assert len(list(tmp_path.glob("squad-eval-*.arrow"))) == 1


def test_rejects_bad_parameters(minilm_tokenizer) -> None:
    examples = squad_examples([("q1", QUESTION, BRIDGE, "Stone Bridge")])
    with pytest.raises(ValueError, match="doc_stride"):
        squad_train_features(examples, minilm_tokenizer, doc_stride=0)
    with pytest.raises(ValueError, match="no room for the context"):
        squad_eval_features(examples, minilm_tokenizer, max_length=6)
