"""Evaluation metrics and the TF-IDF yardstick: top-1/top-3, macro-F1, per-protocol precision
and recall, accuracy against coverage (coverage_at_95: the largest share of orders, most
confident first, that can be auto-assigned while keeping 95% accuracy), expected calibration
error, accuracy by group (style, difficulty), a semantic-similarity score like the Databricks
accelerator's (a TF-IDF character n-gram cosine between predicted and true protocol names: no
embedding model is available offline), and the baseline scored on the same rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

COVERAGE_TARGET = 0.95
ECE_BINS = 15
SIMILARITY_METHOD = "TF-IDF character 2-4-gram cosine between predicted and true protocol names"


# ============================================================================ metrics
def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray,
                               n_bins: int = ECE_BINS) -> tuple[float, list[dict[str, float]]]:
    """ECE over equal-width confidence bins (sum of |accuracy - confidence| * share),
    with the per-bin table for the reliability diagram."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 goes to the first bin.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    total, bins = 0.0, []
    n = max(len(confidence), 1)
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        if count == 0:
            bins.append({"lo": edges[b], "hi": edges[b + 1], "count": 0, "accuracy": 0.0,
                         "confidence": 0.0})
            continue
        acc = float(correct[members].mean())
        conf = float(confidence[members].mean())
        total += abs(acc - conf) * count / n
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count,
                     "accuracy": acc, "confidence": conf})
    return float(total), bins


def accuracy_coverage_curve(confidence: np.ndarray, correct: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coverage, accuracy, threshold) at every cut between distinct confidences: accept
    the orders at or above the threshold, most confident first."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    order = np.argsort(-confidence, kind="stable")
    conf_sorted = confidence[order]
    cum_correct = np.cumsum(correct[order])
    counts = np.arange(1, len(order) + 1)
    # A cut is only possible after the last of a run of equal confidences.
    ends = np.r_[conf_sorted[1:] != conf_sorted[:-1], True] if len(order) else np.array([])
    ends = ends.astype(bool)
    coverage = counts[ends] / max(len(order), 1)
    accuracy = cum_correct[ends] / counts[ends]
    return coverage, accuracy, conf_sorted[ends]


def coverage_at(confidence: np.ndarray, correct: np.ndarray,
                target: float = COVERAGE_TARGET) -> tuple[float, float]:
    """(largest coverage whose accepted orders are >= target accurate, its threshold);
    (0, 1) when no cut reaches the target."""
    coverage, accuracy, threshold = accuracy_coverage_curve(confidence, correct)
    ok = accuracy >= target - 1e-12
    if not ok.any():
        return 0.0, 1.0
    best = int(np.flatnonzero(ok)[-1])
    return float(coverage[best]), float(threshold[best])


def auto_assigned(accepted: np.ndarray, correct: np.ndarray) -> tuple[float, float]:
    """(share of the orders accepted for auto-assignment, accuracy of those); 0 for none."""
    accepted = np.asarray(accepted, dtype=bool)
    share = float(accepted.mean()) if len(accepted) else 0.0
    return share, float(np.asarray(correct)[accepted].mean()) if accepted.any() else 0.0


def classification_metrics(probs: np.ndarray, labels: np.ndarray,
                           names: Sequence[str]) -> dict[str, Any]:
    """Top-1/top-3, macro-F1, per-protocol precision/recall, ECE, coverage at 95%."""
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probs.argmax(axis=1)
    confidence = probs[np.arange(len(labels)), predicted]
    correct = predicted == labels
    k = min(3, probs.shape[1])
    top3 = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    present = np.unique(labels)  # macro over the protocols this file has examples of
    macro = f1_score(labels, predicted, labels=present, average="macro", zero_division=0)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=np.arange(len(names)), zero_division=0)
    ece, bins = expected_calibration_error(confidence, correct)
    coverage, threshold = coverage_at(confidence, correct)
    return {
        "n": len(labels),
        "top1": float(correct.mean()) if len(labels) else 0.0,
        "top3": float((top3 == labels[:, None]).any(axis=1).mean()) if len(labels) else 0.0,
        "macro_f1": float(macro),
        "ece": ece,
        "coverage_at_95": coverage,
        "threshold_at_95": threshold,
        "mean_confidence": float(confidence.mean()) if len(labels) else 0.0,
        "per_protocol": {
            names[i]: {"precision": float(precision[i]), "recall": float(recall[i]),
                       "f1": float(f1[i]), "support": int(support[i])}
            for i in range(len(names)) if support[i] or (predicted == i).any()
        },
        "reliability_bins": bins,
    }


#: Columns of an evaluation file whose values split the figures (the dev set has both).
GROUP_KEYS = ("style", "difficulty")


def group_accuracy(probs: np.ndarray, labels: np.ndarray, groups: Sequence[str]
                   ) -> dict[str, dict[str, float]]:
    """Top-1 and top-3 accuracy within each group of rows (e.g. each style)."""
    predicted = probs.argmax(axis=1)
    top3 = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    values = np.asarray(groups)
    out: dict[str, dict[str, float]] = {}
    for group in sorted(set(groups)):
        members = values == group
        out[group] = {"n": int(members.sum()),
                      "top1": float((predicted[members] == labels[members]).mean()),
                      "top3": float((top3[members] == labels[members, None]).any(1).mean())}
    return out


def semantic_similarity(predicted: Sequence[str], truth: Sequence[str],
                        names: Sequence[str]) -> float:
    """Mean TF-IDF char n-gram cosine between predicted and true protocol names (1.0 when
    equal): a stand-in for the accelerator's embedding similarity."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not predicted:
        return 0.0
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), lowercase=True)
    vectorizer.fit(list(names))
    a = vectorizer.transform(list(predicted))
    b = vectorizer.transform(list(truth))
    cosine = np.asarray(a.multiply(b).sum(axis=1)).ravel()  # rows are L2-normalised
    return float(cosine.mean())


# ============================================================================ baseline
def train_baseline(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> Any:
    """TF-IDF (words 1-2 + characters 3-5) and multinomial logistic regression: the lexical
    model (training/lexical.py), the same fit a blended model carries."""
    from radproto.training.lexical import fit_lexical

    return fit_lexical(rows, names)


def baseline_probabilities(model: Any, rows: Sequence[Mapping[str, Any]],
                           n_classes: int) -> np.ndarray:
    """[n, n_classes] probabilities of the baseline for order rows."""
    probs = np.exp(model.log_probs(rows))
    if probs.shape[1] != n_classes:
        raise ValueError(f"the baseline has {probs.shape[1]} classes, not {n_classes}")
    return probs


def score_baseline(train_rows: Sequence[Mapping[str, Any]],
                   eval_rows: Sequence[Mapping[str, Any]], names: Sequence[str], *,
                   groups: Sequence[str] = ("style", "difficulty"),
                   model: Any = None) -> dict[str, Any]:
    """The TF-IDF baseline trained on `train_rows` (or the given `model`), scored on
    `eval_rows`: aggregate figures only, never per-order or per-protocol ones, so it can
    be run on a sealed development set. Returns {n, skipped, top1, top3, by_<group>:
    {value: {n, top1, top3}}} for each group column the rows carry."""
    index = {n: i for i, n in enumerate(names)}
    kept = [r for r in eval_rows if r.get("label") in index]
    if model is None:
        model = train_baseline(train_rows, names)
    result: dict[str, Any] = {"n": len(kept), "skipped": len(eval_rows) - len(kept),
                              "top1": 0.0, "top3": 0.0}
    if not kept:
        return result
    probs = baseline_probabilities(model, kept, len(names))
    labels = np.array([index[r["label"]] for r in kept])
    top3 = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    hit1 = top3[:, 0] == labels
    hit3 = (top3 == labels[:, None]).any(axis=1)
    result.update(top1=float(hit1.mean()), top3=float(hit3.mean()))
    for group in groups:
        values = [str(r.get(group) or "") for r in kept]
        if not any(values):
            continue
        table = {}
        for value in sorted(set(values)):
            members = np.array([v == value for v in values])
            table[value] = {"n": int(members.sum()), "top1": float(hit1[members].mean()),
                            "top3": float(hit3[members].mean())}
        result[f"by_{group}"] = table
    return result
