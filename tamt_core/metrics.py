"""Downstream evaluation metrics: GLUE (paper Tab. 1) and the official SQuAD v1.1 EM/F1.

Every metric is returned on the 0–100 scale the paper's tables print (CoLA "Matthew's Corr" 57.8, not 0.578), as a
plain Python ``float``. The GLUE formulas are those of the reference's ``glue_compute_metrics``
(reference-impl §7.3): accuracy, F1 of class 1 and their mean for MRPC, Matthews correlation for CoLA, Pearson and
Spearman correlation for STS-B; scikit-learn and SciPy compute them. How a metric selects the best evaluation (the
substring rule of reference-impl §7.3) is the fine-tuning loop's business, not this module's.

The SQuAD functions transcribe the official ``evaluate-v1.1.py`` that the reference's ``squad_evaluate`` implements
(reference-impl §7.3): answers are normalised (lower case, punctuation and the articles a/an/the removed,
whitespace collapsed), EM and token-level F1 are taken as the max over the gold answers, then averaged over all
questions, an unanswered question scoring 0.
"""

from __future__ import annotations

import logging
import re
import string
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import ConstantInputWarning, pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from tamt_core.tasks import GLUE_METRIC_KEYS

log = logging.getLogger(__name__)


# --- GLUE (paper Tab. 1: "Matched Acc", "Acc", "Matthew's Corr", "Pearson Corr", "F1") ---------------------------
def _accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(predictions == labels))


def _correlations(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation ×100; NaN when either side is constant (correlation undefined)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)  # the NaN result says it already
        pearson = 100.0 * float(pearsonr(predictions, labels)[0])
        spearman = 100.0 * float(spearmanr(predictions, labels)[0])
    return {"pearson": pearson, "spearman": spearman, "pearson_and_spearman": (pearson + spearman) / 2}


def _check_arrays(task: str, predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim != 1 or labels.ndim != 1:
        raise ValueError(f"{task}: predictions and labels must be 1-D (got shapes {predictions.shape} and "
                         f"{labels.shape}); pass class ids (argmax of the logits), or scores for stsb")
    if len(predictions) != len(labels):
        raise ValueError(f"{task}: {len(predictions)} predictions but {len(labels)} labels")
    if len(predictions) == 0:
        raise ValueError(f"{task}: no predictions to score")
    if task != "stsb" and not (np.issubdtype(predictions.dtype, np.integer) or predictions.dtype == np.bool_):
        raise ValueError(f"{task}: predictions must be integer class ids, got dtype {predictions.dtype}")
    return predictions, labels


def glue_metrics(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Dev-set metrics of one GLUE task, ×100 (reference-impl §7.3).

    Paper Tab. 1 reports MNLI "Matched Acc", SST-2/RTE/MRPC "Acc", CoLA "Matthew's Corr" and STS-B "Pearson Corr";
    the other keys are what the reference logged beside them. For MNLI the caller scores the matched and mismatched
    dev sets separately (the reference's best-checkpoint "acc" was in fact the mismatched one, reference-impl §7.3).

    Args:
        task: ``cola``, ``sst2``, ``rte``, ``mrpc``, ``stsb`` or ``mnli`` (case-insensitive).
        predictions: 1-D class ids (integers) for classification tasks; 1-D real scores for ``stsb``.
        labels: 1-D gold labels, same length.

    Returns:
        ``cola``: ``mcc`` (Matthews correlation, sklearn; 0 when the predictions are constant). ``sst2``, ``rte``,
        ``mnli``: ``accuracy``. ``mrpc``: ``accuracy``, ``f1`` (of the positive class 1) and
        ``accuracy_and_f1`` (their mean). ``stsb``: ``pearson``, ``spearman`` and ``pearson_and_spearman``
        (their mean); NaN when the predictions are constant.

    Raises:
        ValueError: unknown task, arrays not 1-D, lengths differ, no examples, or non-integer class predictions.
    """
    task = task.lower()
    if task not in GLUE_METRIC_KEYS:
        raise ValueError(f"unknown GLUE task {task!r}; choose one of {', '.join(GLUE_METRIC_KEYS)}")
    predictions, labels = _check_arrays(task, predictions, labels)
    if task == "cola":
        return {"mcc": 100.0 * float(matthews_corrcoef(labels, predictions))}
    if task == "stsb":
        return _correlations(predictions.astype(np.float64), labels.astype(np.float64))
    if task == "mrpc":
        accuracy = _accuracy(predictions, labels)
        f1_value = 100.0 * float(f1_score(labels, predictions, pos_label=1, zero_division=0.0))
        return {"accuracy": accuracy, "f1": f1_value, "accuracy_and_f1": (accuracy + f1_value) / 2}
    return {"accuracy": _accuracy(predictions, labels)}


# --- SQuAD v1.1, official evaluate-v1.1.py (paper Tab. 1 "F1"; reference-impl §7.3) ------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """The official normalisation: lower case, drop ASCII punctuation, drop the articles a/an/the (whole words),
    collapse whitespace — in that order, as ``evaluate-v1.1.py`` composes them."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, ground_truth: str) -> bool:
    """Whether the two answers are equal after :func:`normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1(prediction: str, ground_truth: str) -> float:
    """Token-level F1 in [0, 1] between the normalised answers' whitespace tokens (multiset overlap); 0 when they
    share no token (so also when either normalises to the empty string)."""
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    num_same = sum((Counter(prediction_tokens) & Counter(ground_truth_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """SQuAD v1.1 ``exact_match`` and ``f1``, ×100, as ``evaluate-v1.1.py`` computes them.

    For each question of ``references`` (id → gold answer texts) the score is the max over its gold answers; the
    result is the mean over all questions. A question missing from ``predictions`` scores 0 (logged, as the
    official script prints it).

    Raises:
        ValueError: no references, a question without gold answers, or predictions for ids not in ``references``.
    """
    if not references:
        raise ValueError("no reference questions to score")
    unknown = [qid for qid in predictions if qid not in references]
    if unknown:
        raise ValueError(f"{len(unknown)} predictions for question ids not in the references, e.g. {unknown[:3]}")
    em_total = f1_total = 0.0
    unanswered = 0
    for qid, gold in references.items():
        if isinstance(gold, str) or len(gold) == 0:
            raise ValueError(f"question {qid!r}: references must be a non-empty sequence of answer texts")
        if qid not in predictions:
            unanswered += 1
            continue
        prediction = predictions[qid]
        em_total += max(float(exact_match(prediction, answer)) for answer in gold)
        f1_total += max(f1(prediction, answer) for answer in gold)
    if unanswered:
        log.warning("%d of %d questions have no prediction and score 0", unanswered, len(references))
    return {"exact_match": 100.0 * em_total / len(references), "f1": 100.0 * f1_total / len(references)}
