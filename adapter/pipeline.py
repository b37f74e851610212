"""The application step after the ACK: stored message -> order -> suggestion -> outbox, in the
store's one transaction. Knows nothing of sockets or threads (the worker drives it).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

from radproto.adapter import audit
from radproto.adapter.observability import hash_identifier, observe_suggestion
from radproto.adapter.store import (
    OutboxItem,
    OutboxRow,
    Store,
    StoredMessage,
    StoreUnavailable,
)
from radproto.fhir_mappings import hl7v2
from radproto.fhir_mappings.fhir_bundle import FHIR_JSON, stored_bundle_to_order
from radproto.fhir_mappings.hl7v2 import (
    MessageHeader,
    header_of,
    message_to_order,
    parse_header,
    parse_message,
    suggestion_to_message,
)
from radproto.fhir_mappings.hl7v2_outbound import verdict_to_message
from radproto.model.catalog import Catalog
from radproto.model.errors import MappingError
from radproto.model.order import Order, OrderAction
from radproto.model.suggestion import Suggestion

log = logging.getLogger("radproto.pipeline")

HL7V2_CONTENT_TYPE = "application/hl7-v2"


@runtime_checkable
class Classifier(Protocol):
    """What the adapter needs of a model (model.classifier.ProtocolClassifier is one)."""

    catalog: Catalog
    model_version: str

    def score_orders(self, orders: Sequence[Order]) -> list[Suggestion]: ...


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO,
              **fields: Any) -> None:
    """A structured log line: the JSON formatter writes `event` and every field."""
    logger.log(level, event, extra={"event": event, "fields": fields})


# ---------------------------------------------------------------------------- parsing


class Parsed(NamedTuple):
    """A stored message parsed once for the worker's whole stage: its order and, for HL7 v2,
    its MSH (the write-back and the application ACK read it instead of parsing again)."""

    order: Order
    header: MessageHeader | None = None


OrderParser = Callable[[StoredMessage], Parsed]


def parse_hl7v2(message: StoredMessage) -> Parsed:
    """The parser of application/hl7-v2 messages (ORM^O01, OMI^O23)."""
    try:
        parsed = parse_message(message.raw)
        return Parsed(message_to_order(parsed, raw_message_id=message.id), header_of(parsed))
    except ValueError as exc:  # an Order that fails its own validation
        raise MappingError(str(exc)) from exc


def parse_fhir(message: StoredMessage) -> Parsed:
    """The parser of application/fhir+json messages (fhir_mappings/fhir_bundle.py)."""
    try:
        return Parsed(stored_bundle_to_order(message.raw, raw_message_id=message.id))
    except ValueError as exc:  # not JSON, or an Order that fails its own validation
        raise MappingError(str(exc)) from exc


#: content type -> parser: every kind of message the service stores.
DEFAULT_PARSERS: Mapping[str, OrderParser] = MappingProxyType({
    HL7V2_CONTENT_TYPE: parse_hl7v2,
    FHIR_JSON: parse_fhir,
})


# ---------------------------------------------------------------------------- write-back


class OutboxBuilder(Protocol):
    """Builds the write-backs of one suggestion (`header`: the HL7 v2 message's MSH, if any)."""

    def __call__(self, message: StoredMessage, order: Order, suggestion: Suggestion,
                 catalog: Catalog, *, header: MessageHeader | None = None
                 ) -> list[OutboxItem]: ...


@dataclass(frozen=True)
class MllpWriteback:
    """Builds the OMI^O23 / ORM^O01 write-back of an HL7 v2 order's suggestion."""

    destination: str  # "host:port"
    style: Literal["auto", "omi", "orm"] = "auto"
    sending_application: str = "RADPROTO"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""

    def __call__(self, message: StoredMessage, order: Order, suggestion: Suggestion,
                 catalog: Catalog, *, header: MessageHeader | None = None
                 ) -> list[OutboxItem]:
        if message.content_type != HL7V2_CONTENT_TYPE:
            return []
        if header is None:
            header = parse_header(message.raw)
        legacy = header.version.startswith(("2.1", "2.2", "2.3"))
        style = self.style if self.style != "auto" else ("orm" if legacy else "omi")
        version = header.version if style == "orm" and legacy else None
        payload = suggestion_to_message(
            order, suggestion, catalog, style=style,
            sending_application=self.sending_application,
            sending_facility=self.sending_facility,
            receiving_application=self.receiving_application or header.sending_application,
            receiving_facility=self.receiving_facility or header.sending_facility,
            # 20 characters: the ST length of MSH-10 in v2.3.1
            control_id="RP" + uuid.uuid4().hex[:18], version=version)
        return [OutboxItem("mllp", self.destination, payload, HL7V2_CONTENT_TYPE)]

    @classmethod
    def from_settings(cls, settings: Any) -> MllpWriteback | None:
        """The write-back the service settings describe (None without writeback_host)."""
        if not settings.writeback_host:
            return None
        return cls(settings.writeback_destination, style=settings.writeback_style,
                   sending_application=settings.writeback_sending_application,
                   sending_facility=settings.writeback_sending_facility,
                   receiving_application=settings.writeback_receiving_application,
                   receiving_facility=settings.writeback_receiving_facility)

    def verdict(self, message: StoredMessage, order: Order, suggestion: Suggestion,
                catalog: Catalog, *, outcome: str, protocol: str | None, reason: str = ""
                ) -> list[OutboxItem]:
        """The radiologist's final protocol for an HL7 v2 order, to the same destination and
        in the same style as its suggestion (fhir_mappings verdict_to_message)."""
        if message.content_type != HL7V2_CONTENT_TYPE:
            return []
        sender = facility = ""
        legacy, version = False, None
        if message.raw:  # purged by retention: the configured defaults
            header = parse_header(message.raw)
            sender, facility = header.sending_application, header.sending_facility
            legacy = header.version.startswith(("2.1", "2.2", "2.3"))
            version = header.version
        style = self.style if self.style != "auto" else ("orm" if legacy else "omi")
        payload = verdict_to_message(
            order, suggestion, catalog, outcome=outcome, protocol=protocol,  # type: ignore[arg-type]
            reason=reason, style=style, control_id="RV" + uuid.uuid4().hex[:18],
            sending_application=self.sending_application,
            sending_facility=self.sending_facility,
            receiving_application=self.receiving_application or sender,
            receiving_facility=self.receiving_facility or facility,
            version=version if style == "orm" and legacy else None)
        return [OutboxItem("mllp", self.destination, payload, HL7V2_CONTENT_TYPE)]


# ---------------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class Outcome:
    message_id: str
    status: str  # done | failed | retry | skipped (already completed) | unavailable
    suggestion_id: str | None = None
    protocol: str | None = None


class Pipeline:
    """Processes claimed messages: parse, classify in one batch, complete each in one
    transaction. Cancels skip the model."""

    def __init__(self, store: Store, classifier: Classifier, *,
                 parsers: Mapping[str, OrderParser] = DEFAULT_PARSERS,
                 outbox_builders: Sequence[OutboxBuilder] = (),
                 log_hash_key: str = "", on_outbox: Callable[[], None] | None = None,
                 app_ack_destination: str = "") -> None:
        self.store = store
        #: Where enhanced-mode application ACKs (MSH-16) go; empty: none are sent.
        self.app_ack_destination = app_ack_destination
        self.on_outbox = on_outbox  # called (from the worker thread) when rows were queued
        self.classifier = classifier
        self.parsers = parsers
        self.outbox_builders = list(outbox_builders)
        self.log_hash_key = log_hash_key

    def process(self, messages: Sequence[StoredMessage]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        parsed: list[tuple[StoredMessage, Order]] = []
        headers: dict[str, MessageHeader | None] = {}
        for message in messages:
            try:
                parser = self.parsers.get(message.content_type)
                if parser is None:
                    raise MappingError(f"no parser for content type {message.content_type}")
                order, headers[message.id] = parser(message)
                parsed.append((message, order))
            except MappingError as exc:
                outcomes.append(self._fail(message, f"cannot map: {exc}", retry=False))
        to_score = [(m, o) for m, o in parsed if o.action != OrderAction.CANCEL]
        suggestions: dict[str, Suggestion] = {}
        if to_score:
            started = time.perf_counter()
            try:
                scored = self.classifier.score_orders([o for _, o in to_score])
                if len(scored) != len(to_score):
                    raise RuntimeError(f"{len(scored)} suggestions for {len(to_score)} orders")
            except Exception as exc:  # a model failure must not lose the messages
                log_event(log, "classify_failed", logging.ERROR, error=type(exc).__name__,
                          messages=[m.id for m, _ in to_score])
                for message, _ in to_score:
                    outcomes.append(self._fail(message, f"model error: {exc}", retry=True,
                                               retry_after_s=5.0 * message.attempts))
                parsed = [(m, o) for m, o in parsed if o.action == OrderAction.CANCEL]
                to_score, scored = [], []
            else:
                elapsed = time.perf_counter() - started
                log_event(log, "classified", count=len(to_score),
                          elapsed_ms=round(elapsed * 1000, 1))
                for suggestion in scored:
                    observe_suggestion(suggestion, elapsed / max(1, len(scored)))
            for (message, _), suggestion in zip(to_score, scored, strict=True):
                suggestions[message.id] = suggestion
        for message, order in parsed:
            outcomes.append(self._complete(message, order, suggestions.get(message.id),
                                           headers.get(message.id)))
        return outcomes

    def _retraction(self, row: OutboxRow, new_status: str) -> OutboxItem | None:
        """The builder that wrote `row` takes it back (a builder without `retraction`, like
        the HL7 one, leaves it: the RIS has the order's own cancel or update)."""
        for build in self.outbox_builders:
            retraction = getattr(build, "retraction", None)
            item = retraction(row, new_status) if retraction is not None else None
            if item is not None:
                return item
        return None

    def _complete(self, message: StoredMessage, order: Order, suggestion: Suggestion | None,
                  header: MessageHeader | None) -> Outcome:
        outbox: list[OutboxItem] = []
        try:
            if suggestion is not None:
                for build in self.outbox_builders:
                    outbox += build(message, order, suggestion, self.classifier.catalog,
                                    header=header)
            acks = self._application_ack(message, header)
            result = self.store.complete_message(message.id, order=order,
                                                 suggestion=suggestion, outbox=outbox, acks=acks,
                                                 retract=self._retraction)
        except StoreUnavailable as exc:
            # The lease runs out and another claim retries it: nothing is lost.
            log_event(log, "complete_unavailable", logging.WARNING, message_id=message.id,
                      error=str(exc)[:200])
            return Outcome(message.id, "unavailable")
        except (MappingError, ValueError) as exc:  # a builder refused its input: for good
            return self._fail(message, f"cannot write back: {exc}", retry=False)
        latency = time.time() - message.received_at.timestamp()
        log_event(log, "message_processed" if result.applied else "message_already_processed",
                  message_id=message.id, action=str(order.action),
                  # Hashed here so the raw values never sit in the record; the formatter keeps
                  # them as they are (HashedId).
                  order=hash_identifier(order.placer_order_number, key=self.log_hash_key),
                  patient=hash_identifier(order.patient_id, key=self.log_hash_key),
                  suggestion_id=result.suggestion_id,
                  protocol=suggestion.protocol if suggestion else None,
                  abstained=suggestion.abstained if suggestion else None,
                  withdrawn=len(result.withdrawn), outbox_cancelled=result.cancelled_outbox,
                  outbox=len(outbox) if result.applied else 0,
                  latency_ms=round(latency * 1000, 1))
        if not result.applied:
            return Outcome(message.id, "skipped")
        if suggestion is not None and result.suggestion_id:
            # The audit trail names the model and catalog versions that decided.
            audit.record_decision(self.store, suggestion_id=result.suggestion_id,
                                  suggestion=suggestion, order_ref=order.placer_order_number,
                                  message_id=message.id)
        if (outbox or acks) and self.on_outbox is not None:
            self.on_outbox()
        return Outcome(message.id, "done", result.suggestion_id,
                       suggestion.protocol if suggestion else None)

    def _application_ack(self, message: StoredMessage, header: MessageHeader | None
                         ) -> list[OutboxItem]:
        """The enhanced-mode application ACK (AA) the sender asked for in MSH-16 (AL / SU),
        sent to the write-back destination once the order is processed."""
        if not self.app_ack_destination or message.content_type != HL7V2_CONTENT_TYPE:
            return []
        if header is None:
            header = hl7v2.parse_header(message.raw)
        if hl7v2.ack_mode(header) != "enhanced" or not hl7v2.ack_wanted(
                header, "application", success=True):
            return []
        ack = hl7v2.build_ack(header, "AA", control_id="RA" + uuid.uuid4().hex[:18])
        return [OutboxItem("mllp", self.app_ack_destination, ack, HL7V2_CONTENT_TYPE)]

    def _fail(self, message: StoredMessage, error: str, *, retry: bool,
              retry_after_s: float = 0.0) -> Outcome:
        try:
            self.store.fail_message(message.id, error, retry=retry, retry_after_s=retry_after_s)
        except StoreUnavailable:
            return Outcome(message.id, "unavailable")
        log_event(log, "message_failed", logging.WARNING, message_id=message.id, retry=retry,
                  error=error.split(":", 1)[0])
        return Outcome(message.id, "retry" if retry else "failed")
