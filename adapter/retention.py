"""Retention: raw messages and order free text (notes, history, birth date) are purged after
N days; suggestions, feedback and the audit trail are kept.

`purge(store, older_than_days)` runs once (`radproto purge --older-than-days N`);
`run_periodic(store, days, interval_s, stop)` is the service's background task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from radproto.adapter.audit import append_event
from radproto.adapter.observability import RETENTION_PURGED

log = logging.getLogger("radproto.retention")
RETENTION_ACTOR = "system:retention"


@dataclass(frozen=True)
class PurgeResult:
    cutoff: datetime
    raw_messages: int
    orders: int
    outbox_payloads: int

    def summary(self) -> str:
        return (f"purged before {self.cutoff.isoformat(timespec='seconds')}: "
                f"{self.raw_messages} raw message(s), {self.orders} order text(s), "
                f"{self.outbox_payloads} sent write-back payload(s)")


def purge(store: Any, older_than_days: float, *, now: datetime | None = None) -> PurgeResult:
    """Purge what is older than `older_than_days` and record the purge in the audit trail."""
    if older_than_days < 0:
        raise ValueError("older_than_days must be >= 0")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=older_than_days)
    raw = int(store.purge_raw_before(cutoff) or 0)
    if hasattr(store, "purge_order_text_before"):  # the store's own, once it has one
        orders, outbox = int(store.purge_order_text_before(cutoff) or 0), 0
    else:
        orders, outbox = _purge_order_text(store, cutoff)
    result = PurgeResult(cutoff=cutoff, raw_messages=raw, orders=orders, outbox_payloads=outbox)
    RETENTION_PURGED.inc(raw)
    append_event(store, RETENTION_ACTOR, "purge", "Message", "", {
        "cutoff": cutoff.isoformat(), "purged": raw, "orders": orders, "outbox": outbox})
    log.info("retention purge", extra={"purged": raw, "count": orders,
                                       "cutoff": cutoff.isoformat()})
    return result


#: Order fields emptied by the purge: free text and the birth date. What stays (exam code and
#: text, age, sex, diagnosis codes, order numbers) keeps feedback usable and carries no note.
_TEXT_FIELDS = {"notes": [], "clinical_history": "", "reason_for_study": "",
                "patient_birth_date": None}


def _purge_order_text(store: Any, cutoff: datetime) -> tuple[int, int]:
    """Strip free text from orders last received before `cutoff`, and blank the payloads of
    write-back messages already sent (they repeat the order). Uses the store's transaction
    helper and its tables; belongs in Store.purge_raw_before in the long run."""
    import json

    from radproto.model.order import Order

    epoch = cutoff.timestamp()
    placeholder = "%s" if getattr(store, "dialect", "") == "postgresql" else "?"
    changed = 0
    with store._tx() as cur:
        cur.execute(f"SELECT id, order_json FROM orders WHERE last_received_at < {placeholder}",
                    (epoch,))
        rows = cur.fetchall()
        for order_id, order_json in rows:
            data = json.loads(order_json)
            purged = dict(data)
            purged.update(_TEXT_FIELDS)
            purged["diagnoses"] = [{**d, "text": ""} for d in data.get("diagnoses") or []]
            extra = dict(data.get("extra") or {})
            extra.pop("patient_notes", None)
            extra["text_purged"] = True
            purged["extra"] = extra
            if purged == data:
                continue
            text = Order.model_validate(purged).model_dump_json()
            cur.execute(f"UPDATE orders SET order_json = {placeholder} WHERE id = {placeholder}",
                        (text, order_id))
            changed += 1
        cur.execute(f"UPDATE outbox SET payload = '' WHERE status = 'sent' "
                    f"AND created_at < {placeholder} AND payload <> ''", (epoch,))
        outbox = cur.rowcount or 0
    return changed, outbox


async def run_periodic(store: Any, older_than_days: float, interval_seconds: float,
                       stop: asyncio.Event | None = None) -> None:
    """Purge every `interval_seconds` until `stop` is set (or the task is cancelled). A failed
    run is logged and retried at the next interval."""
    stop = stop or asyncio.Event()
    while not stop.is_set():
        try:
            await asyncio.to_thread(purge, store, older_than_days)
        except Exception as exc:
            log.warning("retention purge failed", extra={"error_type": type(exc).__name__})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_seconds)
