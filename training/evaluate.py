"""`radproto eval`: how good is a model on a labelled order file, next to a yardstick.

Metrics: top-1, top-3, macro-F1, per-protocol precision and recall, accuracy against
coverage (coverage_at_95: the largest share of orders, most confident first, that can be
auto-assigned while keeping 95% accuracy), expected calibration error with a reliability
diagram, a confusion matrix, a semantic-similarity score like the Databricks accelerator's
(here a TF-IDF character n-gram cosine between predicted and true protocol names: no
embedding model is available offline), and a TF-IDF + logistic-regression baseline trained
on the same training data. Writes metrics.json, report.md and PNG pictures.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radproto.model.catalog import Catalog
from radproto.model.errors import OrderFileError
from radproto.model.order import ORDER_FILE_FIELDS

log = logging.getLogger(__name__)

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


# ============================================================================ pictures
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(bins: list[dict[str, float]], ece: float, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    used = [b for b in bins if b["count"]]
    centers = [(b["lo"] + b["hi"]) / 2 for b in used]
    width = bins[0]["hi"] - bins[0]["lo"] if bins else 0.1
    ax.bar(centers, [b["accuracy"] for b in used], width=width * 0.9, edgecolor="black",
           label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], "o", color="C3",
            label="mean confidence")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (ECE {ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_coverage(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, (coverage, accuracy) in curves.items():
        ax.plot(coverage, accuracy, label=label)
    ax.axhline(COVERAGE_TARGET, color="grey", linestyle="--", label="95% accuracy")
    ax.set_xlabel("coverage (share of orders auto-assigned, most confident first)")
    ax.set_ylabel("accuracy of the assigned orders")
    ax.set_xlim(0, 1)
    ax.set_ylim(max(0.0, min((float(a.min()) for _, a in curves.values() if len(a)),
                             default=0.0) - 0.02), 1.005)
    ax.legend(loc="lower left")
    ax.set_title("Accuracy against coverage")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(labels: np.ndarray, predicted: np.ndarray, names: Sequence[str],
                   path: Path) -> None:
    """Row-normalised confusion matrix over the protocols that occur in truth or prediction."""
    from sklearn.metrics import confusion_matrix

    plt = _plt()
    used = np.union1d(np.unique(labels), np.unique(predicted))
    matrix = confusion_matrix(labels, predicted, labels=used).astype(np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = max(6.0, 0.22 * len(used) + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(used))
    short = [names[i][:38] for i in used]
    ax.set_xticks(ticks, short, rotation=90, fontsize=6)
    ax.set_yticks(ticks, short, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (row-normalised)")
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ============================================================================ report
def build_report(log_probs: np.ndarray, labels: np.ndarray, catalog: Catalog, *,
                 temperature: float, out_dir: str | Path, rows: Sequence[Mapping[str, Any]],
                 baseline_train: Sequence[Mapping[str, Any]] | None = None,
                 title: str = "Evaluation", seconds_per_order: float | None = None,
                 extra: Mapping[str, Any] | None = None,
                 head_alone: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics, pictures, metrics.json and report.md for scored orders; returns the metrics.

    `head_alone`: for a blended model, the protocol head's own log-probabilities, reported
    beside the blend and the baseline (the ablation; top-1 and top-3 do not depend on a
    temperature, so none is fitted for it)."""
    from radproto.model.calibration import catalog_probabilities

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = catalog.names
    labels = np.asarray(labels, dtype=np.int64)
    probs = catalog_probabilities(log_probs, temperature)
    metrics = classification_metrics(probs, labels, names)
    predicted = probs.argmax(axis=1)
    metrics["semantic_similarity"] = semantic_similarity(
        [names[i] for i in predicted], [names[i] for i in labels], names)
    metrics["semantic_similarity_method"] = SIMILARITY_METHOD
    metrics["temperature"] = float(temperature)
    uncalibrated = classification_metrics(catalog_probabilities(log_probs, 1.0), labels, names)
    metrics["ece_uncalibrated"] = uncalibrated["ece"]
    if seconds_per_order is not None:
        metrics["ms_per_order"] = 1000.0 * seconds_per_order
    confidence = probs[np.arange(len(labels)), predicted]
    coverage, accuracy, _ = accuracy_coverage_curve(confidence, predicted == labels)
    curves = {"model": (coverage, accuracy)}
    groups = {key: [str(r.get(key) or "") for r in rows] for key in GROUP_KEYS
              if any(r.get(key) for r in rows)}
    for key, values in groups.items():
        metrics[f"by_{key}"] = group_accuracy(probs, labels, values)

    if head_alone is not None:
        alone = classification_metrics(catalog_probabilities(head_alone, 1.0), labels, names)
        for key in ("top1", "top3", "macro_f1"):
            metrics[f"head_alone_{key}"] = alone[key]
        for key, values in groups.items():
            for group, row in group_accuracy(np.exp(head_alone), labels, values).items():
                metrics[f"by_{key}"][group]["head_alone_top1"] = row["top1"]
    if baseline_train:
        started = time.perf_counter()
        baseline = train_baseline(baseline_train, names)
        base_probs = baseline_probabilities(baseline, rows, len(names))
        base = classification_metrics(base_probs, labels, names)
        for key in ("top1", "top3", "macro_f1", "ece", "coverage_at_95"):
            metrics[f"baseline_{key}"] = base[key]
        base_pred = base_probs.argmax(axis=1)
        metrics["baseline_semantic_similarity"] = semantic_similarity(
            [names[i] for i in base_pred], [names[i] for i in labels], names)
        metrics["baseline_n_train"] = len(baseline_train)
        metrics["baseline_seconds"] = time.perf_counter() - started
        base_conf = base_probs[np.arange(len(labels)), base_pred]
        b_cov, b_acc, _ = accuracy_coverage_curve(base_conf, base_pred == labels)
        curves["TF-IDF + logistic regression"] = (b_cov, b_acc)
        for key, values in groups.items():
            for group, row in group_accuracy(base_probs, labels, values).items():
                metrics[f"by_{key}"][group].update(
                    {f"baseline_{k}": v for k, v in row.items() if k != "n"})
    if extra:
        metrics.update(extra)

    plot_reliability(metrics["reliability_bins"], metrics["ece"], out_dir / "reliability.png")
    plot_coverage(curves, out_dir / "coverage.png")
    plot_confusion(labels, predicted, names, out_dir / "confusion.png")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), "utf-8")
    (out_dir / "report.md").write_text(_markdown(metrics, title), "utf-8")
    return metrics


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, int | float) else "n/a"


def _markdown(m: Mapping[str, Any], title: str) -> str:
    has_base = "baseline_top1" in m
    base = (lambda k: _pct(m.get(f"baseline_{k}"))) if has_base else (lambda k: "not run")
    lines = [
        f"# {title}", "",
        f"{m['n']} labelled orders"
        + (f"; model: `{m['model']}`" if m.get("model") else "")
        + (f"; data: `{m['data']}`" if m.get("data") else "") + ".", "",
        "| metric | model | TF-IDF + logistic regression |", "|---|---:|---:|",
        f"| top-1 accuracy | {_pct(m['top1'])} | {base('top1')} |",
        f"| top-3 accuracy | {_pct(m['top3'])} | {base('top3')} |",
        f"| macro-F1 | {_pct(m['macro_f1'])} | {base('macro_f1')} |",
        f"| expected calibration error ({ECE_BINS} bins) | {m['ece']:.3f} | "
        + (f"{m['baseline_ece']:.3f} |" if has_base else "not run |"),
        f"| coverage at 95% accuracy | {_pct(m['coverage_at_95'])} | "
        f"{base('coverage_at_95')} |",
        f"| semantic similarity* | {m['semantic_similarity']:.3f} | "
        + (f"{m['baseline_semantic_similarity']:.3f} |" if has_base else "not run |"),
        "",
        f"Calibration: temperature {m['temperature']:.3f}; ECE before scaling "
        f"{m['ece_uncalibrated']:.3f}. Auto-assign threshold for 95% accuracy: confidence >= "
        f"{m['threshold_at_95']:.3f}.",
    ]
    if "head_alone_top1" in m:
        lines.append(f"The model blends the protocol head with the lexical model (weight "
                     f"{m.get('lexical_weight', 0):.2f}); the head alone: top-1 "
                     f"{_pct(m['head_alone_top1'])}, top-3 {_pct(m['head_alone_top3'])}, "
                     f"macro-F1 {_pct(m['head_alone_macro_f1'])}.")
    if "ms_per_order" in m:
        lines.append(f"Scoring time: {m['ms_per_order']:.0f} ms per order"
                     + (f" (median per batch {m['median_ms_per_order']:.0f} ms)"
                        if "median_ms_per_order" in m else "") + ".")
    if has_base:
        lines.append(f"Baseline trained on {m['baseline_n_train']} training orders "
                     + (f"of {m['baseline_train']} " if m.get("baseline_train") else "")
                     + f"({m['baseline_seconds']:.0f} s).")
    for key in GROUP_KEYS:
        table = m.get(f"by_{key}")
        if not table:
            continue
        alone = "head_alone_top1" in m
        lines += ["", f"## By {key}", "",
                  f"| {key} | orders | model top-1 | "
                  + ("head alone top-1 | " if alone else "")
                  + "baseline top-1 | model top-3 | baseline top-3 |",
                  "|---|---:|---:|" + ("---:|" if alone else "") + "---:|---:|---:|"]
        for group, row in table.items():
            lines.append(f"| {group} | {row['n']} | {_pct(row['top1'])} | "
                         + (f"{_pct(row.get('head_alone_top1'))} | " if alone else "")
                         + f"{_pct(row.get('baseline_top1'))} | {_pct(row['top3'])} | "
                         f"{_pct(row.get('baseline_top3'))} |")
    lines += [
        "",
        f"\\* {SIMILARITY_METHOD}. The Databricks accelerator reported a mean semantic "
        "similarity of 0.86 between predicted and true label text with a sentence-embedding "
        "model; no embedding model is available offline here, so this figure uses character "
        "n-grams instead and is comparable in spirit only.", "",
        "## Pictures", "",
        "![Reliability diagram](reliability.png)", "",
        "![Accuracy against coverage](coverage.png)", "",
        "![Confusion matrix](confusion.png)", "",
        "## Per protocol", "",
        "| protocol | support | precision | recall | F1 |", "|---|---:|---:|---:|---:|",
    ]
    for name, row in sorted(m["per_protocol"].items(), key=lambda kv: kv[1]["f1"]):
        lines.append(f"| {name} | {row['support']} | {_pct(row['precision'])} | "
                     f"{_pct(row['recall'])} | {_pct(row['f1'])} |")
    return "\n".join(lines) + "\n"


# ============================================================================ CLI
def sibling_train_file(data: Path) -> Path | None:
    """The training split next to an evaluation file (corpus layout), if any."""
    for name in ("train" + data.suffix, "train.jsonl", "train.parquet", "train.csv"):
        candidate = data.parent / name
        if candidate.is_file() and candidate.resolve() != data.resolve():
            return candidate
    return None


def default_corpus_train_rows(catalog: Catalog) -> list[dict[str, Any]]:
    """The train split of the default synthetic corpus (`radproto corpus` with its
    defaults), generated into a scratch directory."""
    import tempfile

    from radproto.training.corpus import write_corpus
    from radproto.training.orderfile import read_orders

    with tempfile.TemporaryDirectory(prefix="radproto-corpus-") as scratch:
        write_corpus(scratch, catalog=catalog, baseline=False)
        return read_orders(Path(scratch) / "train.jsonl", require_label=True)


def score_with_timing(classifier: Any, fields: list[dict[str, Any]], *, batch_size: int = 16,
                      progress: bool = True
                      ) -> tuple[np.ndarray, list[float], np.ndarray | None]:
    """The classifier's log-probabilities in chunks of `batch_size` orders with a progress
    bar, per-order seconds of each chunk, and for a blended model the head's own
    log-probabilities (None otherwise)."""
    from tqdm.auto import tqdm

    blended, alone, per_order = [], [], []
    with tqdm(total=len(fields), unit="order", desc="score", disable=not progress) as bar:
        for start in range(0, len(fields), batch_size):
            part = fields[start:start + batch_size]
            began = time.perf_counter()
            from_head = classifier.head_log_probs(part)
            blended.append(classifier.blend(from_head, part))
            per_order.append((time.perf_counter() - began) / len(part))
            alone.append(from_head)
            bar.update(len(part))
    empty = np.zeros((0, len(classifier.catalog)))
    log_probs = np.concatenate(blended) if blended else empty
    has_blend = classifier.lexical is not None and classifier.lexical_weight != 0
    return log_probs, per_order, ((np.concatenate(alone) if alone else empty)
                                  if has_blend else None)


def evaluate_file(model: str, data: str | Path, out_dir: str | Path, *, catalog: Catalog,
                  tracking_uri: str | None = None, limit: int | None = None,
                  baseline_train: str | Path | None = None, batch_size: int = 16,
                  progress: bool = True, classifier: Any = None) -> dict[str, Any]:
    """Score a labelled order file and write the report; returns the metrics."""
    from radproto.training.orderfile import read_orders
    from radproto.training.tracking import load_model

    data = Path(data)
    rows = read_orders(data, require_label=True)
    if limit:
        rows = rows[:limit]
    kept, unknown = [], 0
    for row in rows:
        name = catalog.resolve(row["label"])
        if name is None:
            unknown += 1
        else:
            kept.append({**row, "label": name})
    if not kept:
        raise OrderFileError("no row has a label in the catalog", path=str(data))
    if classifier is None:
        classifier = load_model(model, catalog=catalog, tracking_uri=tracking_uri)
    else:
        classifier.catalog = catalog
    fields = [{k: r.get(k, "") for k in ORDER_FILE_FIELDS} for r in kept]
    labels = np.array([catalog.names.index(r["label"]) for r in kept])
    log_probs, per_order, head_alone = score_with_timing(
        classifier, fields, batch_size=batch_size, progress=progress)
    train_file = Path(baseline_train) if baseline_train else sibling_train_file(data)
    if train_file is not None:
        train_rows = read_orders(train_file, require_label=True)
        baseline_source = str(train_file)
    else:
        # e.g. the independent dev set: the baseline learns from the synthetic corpus the
        # default model was trained on (deterministic: regenerated in seconds)
        train_rows = default_corpus_train_rows(catalog)
        baseline_source = "the default synthetic corpus (train split, regenerated)"
    train_rows = [{**r, "label": catalog.resolve(r["label"])} for r in train_rows]
    train_rows = [r for r in train_rows if r["label"]]
    extra = {"model": model, "data": str(data), "skipped_unknown_labels": unknown,
             "baseline_train": baseline_source,
             "model_version": classifier.model_version,
             "median_ms_per_order": 1000.0 * statistics.median(per_order)}
    if head_alone is not None:
        extra["lexical_weight"] = classifier.lexical_weight
    return build_report(log_probs, labels, catalog, temperature=classifier.temperature,
                        out_dir=out_dir, rows=kept, baseline_train=train_rows,
                        title="Evaluation", seconds_per_order=float(np.mean(per_order)),
                        extra=extra, head_alone=head_alone)


def evaluate_from_cli(args: argparse.Namespace, *, catalog: Catalog) -> int:
    from radproto.training.tracking import DEFAULT_TRACKING_URI, log_evaluation

    tracking_uri = args.tracking_uri if args.tracking_uri is not None else DEFAULT_TRACKING_URI
    metrics = evaluate_file(args.model, args.data, args.out, catalog=catalog,
                            tracking_uri=tracking_uri, limit=args.limit,
                            baseline_train=getattr(args, "baseline_train", None))
    if tracking_uri:
        run_id = log_evaluation(tracking_uri, args.out, metrics, model_uri=args.model,
                                data=str(args.data))
        print(f"mlflow run: {run_id}")
    wanted = ("n", "top1", "top3", "macro_f1", "ece", "coverage_at_95", "head_alone_top1",
              "head_alone_top3", "baseline_top1", "baseline_top3", "baseline_ece",
              "baseline_coverage_at_95", "semantic_similarity", "median_ms_per_order")
    for key in wanted:
        if key in metrics:
            value = metrics[key]
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    for key in GROUP_KEYS:
        for group, row in (metrics.get(f"by_{key}") or {}).items():
            base = (f"; head alone top1 {row['head_alone_top1']:.4f}"
                    if "head_alone_top1" in row else "")
            base += (f"; baseline top1 {row['baseline_top1']:.4f} top3 "
                     f"{row['baseline_top3']:.4f}" if "baseline_top1" in row else "")
            print(f"{key} {group} (n={row['n']}): top1 {row['top1']:.4f} top3 "
                  f"{row['top3']:.4f}{base}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
