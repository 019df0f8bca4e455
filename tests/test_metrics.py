"""GLUE metrics and the official SQuAD v1.1 EM/F1 (paper Tab. 1; reference-impl §7.3), against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tamt_core.metrics import (
    GLUE_METRIC_KEYS,
    exact_match,
    f1,
    glue_metrics,
    normalize_answer,
    squad_metrics,
)

# Binary predictions with confusion matrix (rows = gold, columns = predicted):
#            pred 1   pred 0
#   gold 1   TP = 3   FN = 1
#   gold 0   FP = 2   TN = 4
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
PREDS = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0])


def test_cola_mcc_matches_the_confusion_matrix() -> None:
    # MCC = (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (12 − 2) / sqrt(5·4·6·5) = 10 / sqrt(600)
    result = glue_metrics("cola", PREDS, LABELS)
    assert result.keys() == {"mcc"}
    assert result["mcc"] == pytest.approx(100 * 10 / math.sqrt(600))  # 40.8248…
    assert isinstance(result["mcc"], float)


def test_cola_mcc_is_zero_for_constant_predictions() -> None:
    # sklearn defines MCC = 0 when a row/column of the confusion matrix is empty (reference-impl §7.3 keeps such runs).
    assert glue_metrics("cola", np.zeros(10, dtype=np.int64), LABELS) == {"mcc": 0.0}


def test_mrpc_accuracy_f1_and_their_mean() -> None:
    # accuracy = (TP + TN)/n = 7/10; F1(class 1) = 2TP / (2TP + FP + FN) = 6/9
    result = glue_metrics("mrpc", PREDS, LABELS)
    assert result["accuracy"] == pytest.approx(70.0)
    assert result["f1"] == pytest.approx(100 * 6 / 9)  # 66.667
    assert result["accuracy_and_f1"] == pytest.approx((70.0 + 100 * 6 / 9) / 2)  # 68.333
    assert tuple(result) == GLUE_METRIC_KEYS["mrpc"]


def test_mrpc_f1_is_of_the_positive_class() -> None:
    # Swapping the classes swaps the roles: F1(class 1) becomes 2·TN / (2·TN + FN + FP) = 8/11 of the original TN.
    result = glue_metrics("mrpc", 1 - PREDS, 1 - LABELS)
    assert result["f1"] == pytest.approx(100 * 8 / 11)
    assert result["accuracy"] == pytest.approx(70.0)


@pytest.mark.parametrize("task", ["sst2", "rte", "mnli"])
def test_accuracy_tasks(task: str) -> None:
    # 3 of 4 correct (MNLI has 3 classes; the matched/mismatched suffix is the caller's)
    result = glue_metrics(task.upper(), np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    assert result == {"accuracy": 75.0}


def test_stsb_pearson_and_spearman() -> None:
    preds = np.array([1.0, 2.0, 3.0, 10.0])
    labels = np.array([1.0, 3.0, 2.0, 4.0])
    # Pearson: deviations (−3, −2, −1, 6) and (−1.5, .5, −.5, 1.5): cov = 4.5 − 1 + .5 + 9 = 13,
    # Σdp² = 50, Σdl² = 5 ⇒ r = 13 / sqrt(250).
    # Spearman: ranks (1, 2, 3, 4) vs (1, 3, 2, 4): deviations (−1.5, −.5, .5, 1.5) vs (−1.5, .5, −.5, 1.5):
    # cov = 2.25 − .25 − .25 + 2.25 = 4, Σ = 5 each ⇒ ρ = 0.8.
    result = glue_metrics("stsb", preds, labels)
    assert result["pearson"] == pytest.approx(100 * 13 / math.sqrt(250))  # 82.219
    assert result["spearman"] == pytest.approx(80.0)
    assert result["pearson_and_spearman"] == pytest.approx((100 * 13 / math.sqrt(250) + 80.0) / 2)


def test_stsb_constant_predictions_give_nan() -> None:
    result = glue_metrics("stsb", np.full(4, 2.5), np.array([1.0, 3.0, 2.0, 4.0]))
    assert math.isnan(result["pearson"]) and math.isnan(result["spearman"])


@pytest.mark.parametrize(("task", "preds", "labels", "message"), [
    ("cola", np.array([1, 0]), np.array([1, 0, 1]), "2 predictions but 3 labels"),
    ("sst2", np.array([], dtype=np.int64), np.array([], dtype=np.int64), "no predictions"),
    ("qqp", np.array([1]), np.array([1]), "unknown GLUE task"),
    ("rte", np.array([0.2, 0.9]), np.array([0, 1]), "integer class ids"),
    ("mnli", np.zeros((2, 3), dtype=np.int64), np.array([0, 1]), "1-D"),
])
def test_glue_metrics_rejects_bad_input(task: str, preds: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        glue_metrics(task, preds, labels)


# --- SQuAD v1.1 (official evaluate-v1.1.py) -----------------------------------------------------------------------
def test_normalize_answer_lower_punctuation_articles_whitespace() -> None:
    assert normalize_answer("The Eiffel Tower!") == "eiffel tower"
    # Punctuation goes before articles, so "apple;the" becomes one word "applethe" and its "the" stays.
    assert normalize_answer("  A  cat's   toy, an apple;the end ") == "cats toy applethe end"
    # Articles only as whole words.
    assert normalize_answer("The theater and Anna") == "theater and anna"


def test_exact_match_after_normalisation() -> None:
    assert exact_match("The Eiffel Tower!", "eiffel tower") is True
    assert exact_match("Eiffel Towers", "eiffel tower") is False
    assert exact_match("the", "a") is True  # both normalise to ""


def test_token_f1() -> None:
    # "cat sat on mat" vs "cat on mat": 3 common, P = 3/4, R = 1 ⇒ F1 = 2·(3/4)/(7/4) = 6/7
    assert f1("the cat sat on the mat", "A cat on a mat.") == pytest.approx(6 / 7)
    # multiset overlap: {cat:2, dog:1} ∩ {cat:1, dog:2} = 2 tokens, P = R = 2/3
    assert f1("cat cat dog", "cat dog dog") == pytest.approx(2 / 3)
    assert f1("Paris", "London") == 0.0
    assert f1("the", "a") == 0.0  # no tokens at all: 0, although EM is 1 (as the official script)
    assert f1("The Eiffel Tower!", "eiffel tower") == 1.0


def test_squad_metrics_max_over_gold_answers_and_missing_predictions() -> None:
    references = {
        "q1": ["Eiffel Tower", "the Eiffel Tower in Paris"],
        "q2": ["1889"],
        "q3": ["Gustave Eiffel"],
        "q4": ["eiffel tower"],
    }
    predictions = {"q1": "Tower in Paris.", "q2": "in 1889", "q4": "The Eiffel Tower!"}  # q3 unanswered
    # q1: vs gold 1: 1 common, P = 1/3, R = 1/2 ⇒ 0.4; vs gold 2: 3 common, P = 1, R = 3/4 ⇒ 6/7 (max); EM 0
    # q2: P = 1/2, R = 1 ⇒ 2/3; EM 0.   q3: missing ⇒ 0.   q4: EM 1, F1 1.
    result = squad_metrics(predictions, references)
    assert result["exact_match"] == pytest.approx(100 * 1 / 4)
    assert result["f1"] == pytest.approx(100 * (6 / 7 + 2 / 3 + 0 + 1) / 4)  # 63.095…


def test_squad_metrics_rejects_unknown_ids_and_empty_references() -> None:
    with pytest.raises(ValueError, match="not in the references"):
        squad_metrics({"q1": "x", "zz": "y"}, {"q1": ["x"]})
    with pytest.raises(ValueError, match="no reference"):
        squad_metrics({}, {})
    with pytest.raises(ValueError, match="non-empty sequence"):
        squad_metrics({"q1": "x"}, {"q1": []})
