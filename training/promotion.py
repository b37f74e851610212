"""Honest promotion: a new model takes the registry alias only if it is at least as good as
the model holding it, measured on the independent development set.

`radproto train --register NAME --alias ALIAS` registers every trained model as a new
version; the alias (e.g. `champion`, which the service follows) moves to it only when its
top-1 accuracy on `promotion_data` (default `eval/dev.jsonl`) is at least the current alias
holder's on the same orders. `--force` moves it anyway, and says so in the log and on the
version's tags. Without a current holder, or without the development set, the alias moves
(the log says which).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radproto.model.catalog import Catalog

log = logging.getLogger(__name__)


@dataclass
class PromotionDecision:
    promote: bool
    reason: str
    new_top1: float | None = None
    holder_top1: float | None = None
    holder: str = ""

    def tags(self) -> dict[str, str]:
        tags = {"radproto.promotion": "promoted" if self.promote else "not promoted",
                "radproto.promotion_reason": self.reason}
        if self.new_top1 is not None:
            tags["radproto.promotion_top1"] = f"{self.new_top1:.4f}"
        if self.holder_top1 is not None:
            tags["radproto.holder_top1"] = f"{self.holder_top1:.4f}"
        return tags


def top1_on(classifier: Any, rows: list[dict[str, Any]], catalog: Catalog) -> float:
    """Top-1 accuracy of `classifier` on labelled order-file rows (labels in `catalog`)."""
    from radproto.training.data import prompt_fields

    classifier.catalog = catalog
    log_probs = classifier.catalog_log_probs(prompt_fields(rows))
    labels = np.array([catalog.names.index(r["label"]) for r in rows])
    return float((log_probs.argmax(axis=1) == labels).mean())


def decide(new: Any, *, name: str, alias: str, tracking_uri: str, catalog: Catalog,
           data: str | Path, force: bool = False) -> PromotionDecision:
    """Whether the freshly trained classifier `new` should take `name@alias`."""
    from radproto.training.orderfile import read_orders
    from radproto.training.tracking import load_model, registry_has

    holder = f"models:/{name}@{alias}"
    if force:
        return PromotionDecision(True, "forced (--force)", holder=holder)
    if not registry_has(holder, tracking_uri=tracking_uri):
        return PromotionDecision(True, f"no model holds {name}@{alias} yet", holder=holder)
    path = Path(data)
    if not path.is_file():
        return PromotionDecision(True, f"no development set at {path}: not compared",
                                 holder=holder)
    rows = [{**r, "label": catalog.resolve(r["label"])}
            for r in read_orders(path, require_label=True)]
    rows = [r for r in rows if r["label"]]
    new_top1 = top1_on(new, rows, catalog)
    current = load_model(holder, catalog=catalog, tracking_uri=tracking_uri)
    holder_top1 = top1_on(current, rows, catalog)
    if new_top1 >= holder_top1:
        reason = f"top-1 {new_top1:.4f} >= {holder_top1:.4f} on {path}"
        return PromotionDecision(True, reason, new_top1, holder_top1, holder)
    reason = f"top-1 {new_top1:.4f} < {holder_top1:.4f} of {holder} on {path}"
    return PromotionDecision(False, reason, new_top1, holder_top1, holder)
