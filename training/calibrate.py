"""Calibration of a trained classifier on labelled orders: the lexical model's weight in the
blend, the temperature, the abstain threshold.

Fitted where the orders read like the ones the service will see: the temperature fitted on
the synthetic validation split left the shipped model over-confident on text written by
others (ECE 0.069 on eval/dev.jsonl), so the default preset and `radproto calibrate` fit on
eval/calib.jsonl, hand-written orders kept apart from the development set, or on a site's own
held-out history. `radproto train` calls `calibrate` at its end; `radproto calibrate` runs it
on a saved model.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radproto.model.calibration import (
    blend_log_probs,
    catalog_probabilities,
    fit_blend,
    fit_temperature,
)
from radproto.model.catalog import Catalog
from radproto.model.errors import OrderFileError
from radproto.model.lexical import LexicalModel
from radproto.model.order import ORDER_FILE_FIELDS

log = logging.getLogger(__name__)


@dataclass
class Calibration:
    """What `calibrate` fitted, and the accuracy of each part on the orders it fitted on."""

    fitted_on: str
    n: int
    lexical_weight: float
    temperature: float
    abstain_threshold: float
    abstain_accuracy: float
    head_top1: float
    lexical_top1: float | None
    top1: float
    lexical_fitted_on: dict[str, Any] | None = None  # rows and sha256 of its training rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def labelled_fields(rows: Sequence[Mapping[str, Any]], catalog: Catalog, *, source: str
                    ) -> tuple[list[dict[str, Any]], np.ndarray]:
    """(order fields, label indices) of the rows whose label the catalog knows."""
    kept = [(r, catalog.resolve(r.get("label") or "")) for r in rows]
    kept = [(r, name) for r, name in kept if name]
    if not kept:
        raise OrderFileError("no row has a label in the catalog", path=source)
    fields = [{k: r.get(k, "") for k in ORDER_FILE_FIELDS} for r, _ in kept]
    return fields, np.array([catalog.names.index(name) for _, name in kept])


def calibrate(classifier: Any, fields: Sequence[Mapping[str, Any]], labels: np.ndarray, *,
              lexical: LexicalModel | None, abstain_accuracy: float = 0.95,
              fitted_on: str = "", head_log_probs: np.ndarray | None = None) -> Calibration:
    """Set the classifier's lexical model and weight (none when `lexical` is None), its
    temperature and abstain threshold from labelled orders; returns what was fitted.

    The threshold is the lowest confidence at which the accepted orders reach
    `abstain_accuracy`. `head_log_probs` saves the forward pass when the caller has them."""
    names = classifier.catalog.names
    head = (head_log_probs if head_log_probs is not None
            else classifier.head_log_probs(list(fields)))
    from_lexical = lexical_top1 = None
    if lexical is not None:
        lexical = lexical.for_catalog(names)
        from_lexical = lexical.log_probs(fields)
        lexical_top1 = float((from_lexical.argmax(axis=1) == labels).mean())
    weight, temperature, threshold = fit_calibration(head, from_lexical, labels,
                                                     abstain_accuracy)
    classifier.lexical, classifier.lexical_weight = lexical, weight
    classifier.temperature = temperature
    classifier.abstain_threshold = threshold
    probs = catalog_probabilities(_blended(head, from_lexical, weight), temperature)
    return Calibration(
        fitted_on=fitted_on or f"{len(labels)} labelled orders", n=len(labels),
        lexical_weight=weight, temperature=temperature, abstain_threshold=threshold,
        abstain_accuracy=abstain_accuracy,
        head_top1=float((head.argmax(axis=1) == labels).mean()), lexical_top1=lexical_top1,
        top1=float((probs.argmax(axis=1) == labels).mean()),
        lexical_fitted_on=lexical.fitted_on if lexical is not None else None)


def _blended(head: np.ndarray, lexical: np.ndarray | None, weight: float) -> np.ndarray:
    """The head's log-probabilities blended with the lexical model's (the head alone when
    there are none), before the temperature."""
    return head if lexical is None else blend_log_probs(head, lexical, weight)


def fit_calibration(head: np.ndarray, lexical: np.ndarray | None, labels: np.ndarray,
                    target: float = 0.95) -> tuple[float, float, float]:
    """(lexical weight, temperature, abstain threshold) fitted on labelled orders: the blend
    (`fit_blend`; the temperature alone without lexical log-probabilities), then the lowest
    confidence at which the accepted orders are `target` accurate."""
    from radproto.training.metrics import coverage_at

    if lexical is None:
        weight, temperature = 0.0, fit_temperature(head, labels)
    else:
        weight, temperature = fit_blend(head, lexical, labels)
    probs = catalog_probabilities(_blended(head, lexical, weight), temperature)
    _, threshold = coverage_at(probs.max(axis=1), probs.argmax(axis=1) == labels, target)
    return weight, temperature, threshold


def lexical_training_rows(data: str | Path | None, catalog: Catalog) -> list[dict[str, Any]]:
    """The rows the lexical model learns from: a corpus directory's train split, an order
    file, or (None) the default synthetic corpus regenerated."""
    from radproto.training.evaluate import default_corpus_train_rows
    from radproto.training.orderfile import read_orders

    if data is None:
        return default_corpus_train_rows(catalog)
    path = Path(data)
    rows = read_orders(path / "train.jsonl" if path.is_dir() else path, require_label=True)
    resolved = [{**r, "label": catalog.resolve(r["label"])} for r in rows]
    return [r for r in resolved if r["label"]]


def calibrate_from_cli(args: argparse.Namespace, *, catalog: Catalog) -> int:
    """`radproto calibrate`: fit the blend, temperature and threshold of a saved model on a
    labelled order file and save the model again (to --out)."""
    from radproto.training.lexical import fit_lexical
    from radproto.training.orderfile import read_orders
    from radproto.training.tracking import DEFAULT_TRACKING_URI, load_model

    tracking_uri = args.tracking_uri if args.tracking_uri is not None else DEFAULT_TRACKING_URI
    classifier = load_model(args.model, catalog=catalog, tracking_uri=tracking_uri)
    rows = read_orders(args.data, require_label=True)
    fields, labels = labelled_fields(rows, classifier.catalog, source=str(args.data))
    lexical = None
    if not args.no_lexical:
        lexical = fit_lexical(lexical_training_rows(args.lexical_data, classifier.catalog),
                              classifier.catalog.names)
    result = calibrate(classifier, fields, labels, lexical=lexical,
                       abstain_accuracy=args.abstain_accuracy,
                       fitted_on=f"{len(labels)} orders of {Path(args.data).name}")
    classifier.save(args.out, metadata={"calibration": result.to_dict()})
    print(json.dumps(result.to_dict(), indent=2))
    print(f"model: {args.out}")
    return 0


def cross_fitted(head: np.ndarray, lexical: np.ndarray | None, label_indices: np.ndarray, *,
                 folds: int = 5, seed: int = 0, target: float = 0.95
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Calibration judged on the orders it was not fitted on: (log-probabilities, accepted).

    The orders are cut into `folds` random folds; for each fold the blend weight and the
    temperature (`fit_blend`, or the temperature alone without a lexical model) and the
    abstain threshold (the lowest confidence at which the fitted folds' accepted orders are
    `target` accurate) are fitted on the other folds and applied to it. Returns each order's
    calibrated log-probabilities and whether its confidence clears its fold's threshold."""
    from scipy.special import log_softmax

    n = len(label_indices)
    if folds < 2 or n < folds:
        raise ValueError(f"cross-fitting needs at least 2 folds and as many orders ({n} "
                         f"orders, {folds} folds)")
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    out = np.empty_like(np.asarray(head, dtype=np.float64))
    accepted = np.zeros(n, dtype=bool)
    for fold in range(folds):
        fit, held = fold_of != fold, fold_of == fold
        weight, temperature, threshold = fit_calibration(
            head[fit], None if lexical is None else lexical[fit], label_indices[fit], target)
        blended = _blended(head[held], None if lexical is None else lexical[held], weight)
        out[held] = log_softmax(np.asarray(blended, dtype=np.float64) / temperature, axis=-1)
        accepted[held] = np.exp(out[held]).max(axis=1) >= threshold
    return out, accepted
