"""The store's value types: what goes in (OutboxItem), what comes out (StoredMessage, StoredOrder,
StoredSuggestion, OutboxRow, FeedbackRow, WorklistRow, AuditRow), its errors and id helpers."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from radproto.model.errors import RadprotoError
from radproto.model.order import Order
from radproto.model.suggestion import Suggestion

MessageStatus = Literal["pending", "processing", "done", "failed"]
FeedbackOutcome = Literal["accepted", "rejected", "changed"]
FEEDBACK_OUTCOMES = ("accepted", "rejected", "changed")
#: A message claimed this many times without completing is failed (poison message guard).
MAX_CLAIMS = 5
_GROUP_COMMIT_MAX = 256


class StoreUnavailable(RadprotoError):
    """The database cannot be reached or written: callers must not acknowledge positively."""


class NotFound(RadprotoError, LookupError):
    """The row asked for does not exist."""


_id_counter = itertools.count()


def new_id() -> str:
    """A time-ordered unique id (milliseconds + per-process counter + random), sortable."""
    return f"{int(time.time() * 1000):012x}{next(_id_counter) % 0xFFFFF:05x}{uuid.uuid4().hex[:15]}"


def _now() -> float:
    return time.time()


def _dt(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _epoch(value: datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


# ---------------------------------------------------------------------------- value types


@dataclass(frozen=True)
class AcceptResult:
    message_id: str
    duplicate: bool


@dataclass(frozen=True)
class StoredMessage:
    id: str
    source: str
    dedup_key: str
    content_type: str
    raw: str
    status: str
    attempts: int
    received_at: datetime
    error: str = ""
    processed_at: datetime | None = None


@dataclass(frozen=True)
class StoredOrder:
    id: str
    order_ref: str
    source: str
    status: str  # active | cancelled
    order: Order
    last_message_id: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StoredSuggestion:
    id: str
    order_id: str
    message_id: str
    status: str  # pending | superseded | withdrawn | accepted | rejected | changed
    suggestion: Suggestion
    created_at: datetime

    @property
    def protocol(self) -> str:
        return self.suggestion.protocol


@dataclass(frozen=True)
class OutboxItem:
    """A write-back to send: `destination_kind` picks the relay (e.g. "mllp", "fhir")."""

    destination_kind: str
    destination: str
    payload: str
    content_type: str = "application/hl7-v2"


#: (a sent write-back of a suggestion now withdrawn or superseded, that new status) ->
#: the write-back that takes it back at its destination, or None
Retraction = Callable[["OutboxRow", str], "OutboxItem | None"]


@dataclass(frozen=True)
class OutboxRow:
    id: str
    destination_kind: str
    destination: str
    payload: str
    content_type: str
    status: str  # pending | sending | sent | failed | cancelled
    attempts: int
    suggestion_id: str | None
    message_id: str | None
    last_error: str
    created_at: datetime
    next_attempt_at: datetime | None
    sent_at: datetime | None


@dataclass(frozen=True)
class CompletionResult:
    applied: bool  # False: the message was already completed (never a second suggestion)
    order_id: str | None = None
    suggestion_id: str | None = None
    withdrawn: tuple[str, ...] = ()  # suggestion ids withdrawn or superseded
    cancelled_outbox: int = 0


@dataclass(frozen=True)
class FeedbackRow:
    id: str
    suggestion_id: str
    outcome: str
    protocol: str | None
    actor: str
    created_at: datetime
    suggested_protocol: str
    model_version: str
    order: Order | None
    reason: str = ""  # a rejection's reason, as the radiologist gave it


@dataclass(frozen=True)
class WorklistRow:
    """A suggestion with its order, for the radiologists' worklist."""

    suggestion: StoredSuggestion
    order: StoredOrder


@dataclass(frozen=True)
class AuditRow:
    id: str
    at: datetime
    actor: str
    action: str
    entity_type: str
    entity_id: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class _AcceptRequest:
    source: str
    dedup_key: str
    raw: str
    content_type: str
    claim_by: str | None
    lease_seconds: float
    done: threading.Event = field(default_factory=threading.Event)
    result: AcceptResult | None = None
    error: BaseException | None = None


# ---------------------------------------------------------------------------- schema
