"""The evaluation report: metrics.json, report.md and the pictures (reliability diagram,
accuracy against coverage, confusion matrix) for scored orders."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from radproto.model.catalog import Catalog
from radproto.training.metrics import (
    COVERAGE_TARGET,
    ECE_BINS,
    GROUP_KEYS,
    SIMILARITY_METHOD,
    accuracy_coverage_curve,
    baseline_probabilities,
    classification_metrics,
    group_accuracy,
    semantic_similarity,
    train_baseline,
)


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
                 baseline_log_probs: np.ndarray | None = None,
                 title: str = "Evaluation", seconds_per_order: float | None = None,
                 extra: Mapping[str, Any] | None = None,
                 head_alone: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics, pictures, metrics.json and report.md for scored orders; returns the metrics.

    `head_alone`: for a blended model, the protocol head's own log-probabilities, reported
    beside the blend and the baseline (the ablation; top-1 and top-3 do not depend on a
    temperature, so none is fitted for it). The TF-IDF baseline is fitted on
    `baseline_train`, or given as its log-probabilities for `rows` (`baseline_log_probs`: a
    blended model's own lexical half, scored already)."""
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
    if baseline_train or baseline_log_probs is not None:
        started = time.perf_counter()
        if baseline_log_probs is None:
            baseline = train_baseline(baseline_train, names)
            metrics["baseline_n_train"] = len(baseline_train)
            base_probs = baseline_probabilities(baseline, rows, len(names))
        elif baseline_log_probs.shape != (len(labels), len(names)):
            raise ValueError(f"baseline log-probabilities of shape {baseline_log_probs.shape} "
                             f"for {len(labels)} orders and {len(names)} protocols")
        else:
            base_probs = np.exp(baseline_log_probs)
        base = classification_metrics(base_probs, labels, names)
        for key in ("top1", "top3", "macro_f1", "ece", "coverage_at_95"):
            metrics[f"baseline_{key}"] = base[key]
        base_pred = base_probs.argmax(axis=1)
        metrics["baseline_semantic_similarity"] = semantic_similarity(
            [names[i] for i in base_pred], [names[i] for i in labels], names)
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
    if "threshold_accepted" in m:
        lines.append(f"The model's own abstain threshold ({m['abstain_threshold']:.3f}) "
                     f"auto-assigns {_pct(m['threshold_accepted'])} of these orders, "
                     f"{_pct(m['threshold_accepted_accuracy'])} of them right.")
    if "cross_fit_top1" in m:
        lines.append(f"Calibration fitted on this file itself ({m['cross_fit_folds']}-fold: "
                     "blend weight, temperature and threshold fitted on the other folds, "
                     f"judged on each held-out fold): top-1 {_pct(m['cross_fit_top1'])}, "
                     f"ECE {m['cross_fit_ece']:.3f} (mean confidence "
                     f"{m['cross_fit_mean_confidence']:.3f}), auto-assigned "
                     f"{_pct(m['cross_fit_accepted'])} at "
                     f"{_pct(m['cross_fit_accepted_accuracy'])} right.")
    if "head_alone_top1" in m:
        lines.append(f"The model blends the protocol head with the lexical model (weight "
                     f"{m.get('lexical_weight', 0):.2f}); the head alone: top-1 "
                     f"{_pct(m['head_alone_top1'])}, top-3 {_pct(m['head_alone_top3'])}, "
                     f"macro-F1 {_pct(m['head_alone_macro_f1'])}.")
    if "ms_per_order" in m:
        lines.append(f"Scoring time: {m['ms_per_order']:.0f} ms per order"
                     + (f" (median per batch {m['median_ms_per_order']:.0f} ms)"
                        if "median_ms_per_order" in m else "") + ".")
    if has_base and "baseline_n_train" in m:
        lines.append(f"Baseline trained on {m['baseline_n_train']} training orders "
                     + (f"of {m['baseline_train']} " if m.get("baseline_train") else "")
                     + f"({m['baseline_seconds']:.0f} s).")
    elif has_base:
        lines.append(f"Baseline: {m.get('baseline_train', 'given')}.")
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
