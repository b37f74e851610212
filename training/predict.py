"""`radproto predict`: batch suggestions for an order file, resumable after interruption.

The output is JSONL, one line per input row, keyed by the row's `id` (or its 0-based row
index when the file has no id column). Lines are appended and flushed batch by batch; a
rerun reads the keys already written and scores only the rest, so an interrupted run loses
at most the batch in flight. A torn last line (killed mid-write) is dropped and redone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from radproto.model.catalog import Catalog
from radproto.model.errors import OrderFileError
from radproto.model.order import ORDER_FILE_FIELDS

log = logging.getLogger(__name__)


def row_key(row: Mapping[str, Any], index: int) -> str:
    """The key a prediction is stored under: the row's id, else its index."""
    value = row.get("id")
    return str(value) if value not in (None, "") else f"row-{index}"


def done_keys(output: Path) -> set[str]:
    """Keys already in the output file; a torn last line is cut off so appends stay valid."""
    if not output.is_file():
        return set()
    keys: set[str] = set()
    good_bytes = 0
    with output.open("rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break  # torn write: drop it
            try:
                keys.add(str(json.loads(raw)["key"]))
            except (ValueError, KeyError, TypeError):
                raise OrderFileError("not a prediction line; refusing to append to it",
                                     path=str(output), line=len(keys) + 1) from None
            good_bytes += len(raw)
    if good_bytes != output.stat().st_size:
        with output.open("r+b") as handle:
            handle.truncate(good_bytes)
    return keys


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def predict_file(model: str, input_path: str | Path, output_path: str | Path, *,
                 catalog: Catalog, batch_size: int = 16, tracking_uri: str | None = None,
                 progress: bool = True, classifier: Any = None,
                 max_batches: int | None = None) -> dict[str, int]:
    """Score every row not yet in the output; returns counts (total, skipped, written).

    `max_batches` stops after that many batches (to test resumption).
    """
    from tqdm.auto import tqdm

    from radproto.training.orderfile import read_orders
    from radproto.training.tracking import load_model

    rows = read_orders(input_path)
    output = Path(output_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(output)
    keyed = [(row_key(r, i), r) for i, r in enumerate(rows)]
    seen: set[str] = set()
    for key, _ in keyed:
        if key in seen:
            raise OrderFileError(f"duplicate id '{key}': predictions are keyed by id",
                                 path=str(input_path), field="id")
        seen.add(key)
    todo = [(k, r) for k, r in keyed if k not in done]
    counts = {"total": len(rows), "skipped": len(rows) - len(todo), "written": 0}
    if not todo:
        return counts
    if classifier is None:
        classifier = load_model(model, catalog=catalog, tracking_uri=tracking_uri)
    with output.open("a", encoding="utf-8") as handle, \
            tqdm(total=len(rows), initial=counts["skipped"], unit="order", desc="predict",
                 disable=not progress) as bar:
        for n, batch in enumerate(_batches(todo, batch_size)):
            if max_batches is not None and n >= max_batches:
                break
            suggestions = classifier.score_orders(
                [{k: r.get(k, "") for k in ORDER_FILE_FIELDS} for _, r in batch])
            lines = []
            for (key, row), s in zip(batch, suggestions, strict=True):
                lines.append(json.dumps({
                    "key": key,
                    "id": row.get("id"),
                    "protocol": s.protocol,
                    "confidence": round(s.confidence, 6),
                    "abstained": s.abstained,
                    "abstain_reason": s.abstain_reason,
                    "top3": [{"protocol": t.protocol, "probability": round(t.probability, 6)}
                             for t in s.top(3)],
                    "model_version": s.model_version,
                    "catalog_version": s.catalog_version,
                    "prompt_version": s.prompt_version,
                    **({"label": row["label"]} if row.get("label") else {}),
                }, ensure_ascii=False))
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            os.fsync(handle.fileno())  # a batch written is a batch never redone
            counts["written"] += len(batch)
            bar.update(len(batch))
    return counts


def predict_from_cli(args: argparse.Namespace, *, catalog: Catalog) -> int:
    from radproto.training.tracking import DEFAULT_TRACKING_URI

    tracking_uri = args.tracking_uri if args.tracking_uri is not None else DEFAULT_TRACKING_URI
    counts = predict_file(args.model, args.input, args.output, catalog=catalog,
                          batch_size=args.batch_size, tracking_uri=tracking_uri or None)
    print(f"{counts['written']} predictions written, {counts['skipped']} already present, "
          f"{counts['total']} orders in all: {args.output}")
    return 0
