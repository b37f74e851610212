"""The radiologists' feedback as training data, in the order file format.

Each suggestion contributes its latest verdict: accepted -> labelled with the suggested
protocol; changed -> labelled with the protocol chosen instead; rejected without a protocol
named -> left out (it says what is wrong, not what is right). Rows carry the four prompt
fields built by `Order.prompt_fields()` (the same text the model saw) plus `label`, and
`source`, `outcome`, `suggested`, `model_version`, `feedback_at` for the curious.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from radproto.model.catalog import Catalog
from radproto.training.orderfile import write_orders


@dataclass
class FeedbackExportReport:
    written: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    outcomes: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        parts = [f"wrote {self.written} training rows from feedback"]
        if self.outcomes:
            parts.append(", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())))
        if self.skipped:
            parts.append("skipped: " + ", ".join(f"{k} {v}"
                                                 for k, v in sorted(self.skipped.items())))
        return "; ".join(parts)


def feedback_rows_to_orders(rows: Iterable[Any], *, catalog: Catalog | None = None,
                            report: FeedbackExportReport | None = None) -> list[dict[str, Any]]:
    """Order file rows from Store.feedback_rows() (the latest verdict per suggestion)."""
    report = report if report is not None else FeedbackExportReport()
    latest: dict[str, Any] = {}
    for row in rows:  # oldest first: a later verdict replaces an earlier one
        latest[row.suggestion_id] = row
    out = []
    for row in latest.values():
        label = row.protocol or (row.suggested_protocol if row.outcome == "accepted" else None)
        if row.order is None:
            report.skipped["order missing"] += 1
            continue
        if not label:
            report.skipped["rejected without a protocol"] += 1
            continue
        if catalog is not None:
            resolved = catalog.resolve(label)
            if resolved is None:
                report.skipped["protocol not in the catalog"] += 1
                continue
            label = resolved
        report.outcomes[row.outcome] += 1
        out.append({**row.order.prompt_fields(), "label": label, "source": "feedback",
                    "outcome": row.outcome, "suggested": row.suggested_protocol,
                    "model_version": row.model_version,
                    "feedback_at": row.created_at.isoformat() if row.created_at else ""})
    return out


def export_feedback(store: Any, out_path: str | Path, *, catalog: Catalog | None = None,
                    since: datetime | None = None) -> FeedbackExportReport:
    """Write the store's feedback to `out_path` (JSONL, CSV or Parquet by suffix)."""
    report = FeedbackExportReport()
    rows = feedback_rows_to_orders(store.feedback_rows(since=since), catalog=catalog,
                                   report=report)
    report.written = write_orders(out_path, rows)
    return report
