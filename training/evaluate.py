"""`radproto eval`: how good is a model on a labelled order file, next to a yardstick.

Scores the file with the model (for a blended model also the head alone), trains the TF-IDF
baseline on the same training data (training/metrics.py) and writes the report
(training/report.py): metrics.json, report.md and pictures.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from radproto.model.catalog import Catalog
from radproto.model.errors import OrderFileError
from radproto.model.order import ORDER_FILE_FIELDS
from radproto.training.metrics import GROUP_KEYS, auto_assigned
from radproto.training.report import build_report

log = logging.getLogger(__name__)


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
                      ) -> tuple[np.ndarray, list[float], np.ndarray | None, np.ndarray | None]:
    """The classifier's log-probabilities, the head in chunks of `batch_size` orders with a
    progress bar; per-order seconds of each chunk; and for a blended model the head's own
    log-probabilities and the lexical half's (None otherwise). The lexical half is scored
    once for the whole file and its time spread over the orders."""
    from tqdm.auto import tqdm

    lexical, lexical_s = None, 0.0
    if classifier.blended and fields:
        began = time.perf_counter()
        lexical = classifier.lexical.log_probs(fields)
        lexical_s = (time.perf_counter() - began) / len(fields)
    heads, per_order = [], []
    with tqdm(total=len(fields), unit="order", desc="score", disable=not progress) as bar:
        for start in range(0, len(fields), batch_size):
            part = fields[start:start + batch_size]
            began = time.perf_counter()
            heads.append(classifier.head_log_probs(part))
            per_order.append((time.perf_counter() - began) / len(part) + lexical_s)
            bar.update(len(part))
    head = np.concatenate(heads) if heads else np.zeros((0, len(classifier.catalog)))
    if lexical is None:
        return head, per_order, None, None
    return classifier.blend(head, fields, lexical), per_order, head, lexical


def evaluate_file(model: str, data: str | Path, out_dir: str | Path, *, catalog: Catalog,
                  tracking_uri: str | None = None, limit: int | None = None,
                  baseline_train: str | Path | None = None, batch_size: int = 16,
                  progress: bool = True, classifier: Any = None, cross_fit: int = 0
                  ) -> dict[str, Any]:
    """Score a labelled order file and write the report; returns the metrics.

    `cross_fit` K >= 2 also judges calibration fitted on this file itself, K-fold: the blend
    weight, temperature and abstain threshold of each fold fitted on the other folds
    (`calibrate.cross_fitted`), the model's own calibration left as it is."""
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
    log_probs, per_order, head_alone, lexical = score_with_timing(
        classifier, fields, batch_size=batch_size, progress=progress)
    train_file = Path(baseline_train) if baseline_train else sibling_train_file(data)
    baseline_log_probs = None
    if train_file is not None:
        train_rows = read_orders(train_file, require_label=True)
        baseline_source = str(train_file)
    elif classifier.lexical is not None:
        # a blended model carries the baseline's own fit on the model's training data:
        # the like-for-like comparison, in a second
        train_rows = []
        baseline_log_probs = (lexical if lexical is not None
                              else classifier.lexical.log_probs(fields))
        baseline_source = ("the model's own TF-IDF half (the baseline's fit on the "
                           "model's training data, stored with the model)")
    else:
        # a model without a lexical half on a file with no training split beside it (e.g.
        # the dev set): the baseline learns from the default synthetic corpus (deterministic;
        # regenerated, ~2.5 min on 2 cores)
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
    extra.update(_abstention(log_probs, labels, classifier))
    if cross_fit:
        extra.update(_cross_fit_metrics(classifier, labels, log_probs, head_alone, lexical,
                                        cross_fit))
    return build_report(log_probs, labels, catalog, temperature=classifier.temperature,
                        out_dir=out_dir, rows=kept, baseline_train=train_rows,
                        baseline_log_probs=baseline_log_probs,
                        title="Evaluation", seconds_per_order=float(np.mean(per_order)),
                        extra=extra, head_alone=head_alone)


def _abstention(log_probs: np.ndarray, labels: np.ndarray, classifier: Any) -> dict[str, Any]:
    """What the model's own abstain threshold does on this file: the share it auto-assigns
    and how many of those are right."""
    from radproto.model.calibration import catalog_probabilities

    probs = catalog_probabilities(log_probs, classifier.temperature)
    share, accuracy = auto_assigned(probs.max(axis=1) >= classifier.abstain_threshold,
                                    probs.argmax(axis=1) == labels)
    return {"abstain_threshold": float(classifier.abstain_threshold),
            "threshold_accepted": share, "threshold_accepted_accuracy": accuracy}


def _cross_fit_metrics(classifier: Any, labels: np.ndarray, log_probs: np.ndarray,
                       head_alone: np.ndarray | None, lexical: np.ndarray | None, folds: int
                       ) -> dict[str, Any]:
    from radproto.training.calibrate import cross_fitted
    from radproto.training.metrics import classification_metrics

    head = head_alone if head_alone is not None else log_probs
    calibrated, accepted = cross_fitted(head, lexical, labels, folds=folds)
    m = classification_metrics(np.exp(calibrated), labels, classifier.catalog.names)
    share, accuracy = auto_assigned(accepted, calibrated.argmax(axis=1) == labels)
    out = {f"cross_fit_{k}": m[k] for k in ("top1", "top3", "ece", "coverage_at_95",
                                             "mean_confidence")}
    out.update({"cross_fit_folds": folds, "cross_fit_accepted": share,
                "cross_fit_accepted_accuracy": accuracy})
    return out


def evaluate_from_cli(args: argparse.Namespace, *, catalog: Catalog) -> int:
    from radproto.training.tracking import DEFAULT_TRACKING_URI, log_evaluation

    tracking_uri = args.tracking_uri if args.tracking_uri is not None else DEFAULT_TRACKING_URI
    metrics = evaluate_file(args.model, args.data, args.out, catalog=catalog,
                            tracking_uri=tracking_uri, limit=args.limit,
                            baseline_train=getattr(args, "baseline_train", None),
                            cross_fit=getattr(args, "cross_fit", 0) or 0)
    if tracking_uri:
        run_id = log_evaluation(tracking_uri, args.out, metrics, model_uri=args.model,
                                data=str(args.data))
        print(f"mlflow run: {run_id}")
    wanted = ("n", "top1", "top3", "macro_f1", "ece", "coverage_at_95", "head_alone_top1",
              "head_alone_top3", "baseline_top1", "baseline_top3", "baseline_ece",
              "baseline_coverage_at_95", "semantic_similarity", "median_ms_per_order",
              "threshold_accepted", "threshold_accepted_accuracy", "cross_fit_top1",
              "cross_fit_ece", "cross_fit_coverage_at_95", "cross_fit_accepted",
              "cross_fit_accepted_accuracy")
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
