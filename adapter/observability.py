"""Logs without PHI and the Prometheus metrics every part increments.

Logging: `configure_logging()` puts one JSON handler on the root logger. Its formatter keeps a
fixed set of extra fields (ids, timings, outcomes), hashes identifier fields with a keyed hash
(`hash_identifier`), drops every other extra, and scrubs message text of what looks like PHI
(HL7 segments, dates, quoted values, query strings). Scrubbing is a second line of defence:
code must still log ids, outcomes and timings only.

Metrics: module-level objects in one registry (`REGISTRY`), served by /metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, TextIO

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# ---------------------------------------------------------------------------- identifiers

_hash_key: bytes = secrets.token_bytes(32)  # replaced by the per-site secret at start
_hash_key_configured = False


def set_hash_key(key: str | bytes | None) -> None:
    """Use the per-site secret for `hash_identifier` (None/empty: keep a random process key)."""
    global _hash_key, _hash_key_configured
    if key:
        _hash_key = key.encode() if isinstance(key, str) else key
        _hash_key_configured = True


class HashedId(str):
    """An identifier already hashed: hashing it again returns it as it is, so a field the
    caller hashed (to keep the raw value out of the log record) is not hashed twice."""

    __slots__ = ()


def hash_identifier(value: object, *, key: str | bytes | None = None) -> str:
    """A keyed, truncated hash of an identifier (MRN, order number, user): the same value
    hashes the same at one site, and without the site's key it cannot be reversed by trying
    all MRNs. Empty values stay empty; a `HashedId` is returned unchanged."""
    if value is None or value == "":
        return ""
    if isinstance(value, HashedId):
        return value
    secret = (key.encode() if isinstance(key, str) else key) if key else _hash_key
    digest = hmac.new(secret, str(value).encode("utf-8"), hashlib.sha256).hexdigest()
    return HashedId("h:" + digest[:16])


# ---------------------------------------------------------------------------- scrubbing

_HL7_SEGMENT = re.compile(r"(?:^|(?<=[\s\r\n'\"]))(?:MSH|EVN|PID|PD1|NK1|PV1|PV2|ORC|OBR|NTE|DG1"
                          r"|OBX|IPC|AL1|IN1|GT1|TQ1|ZDS)\|[^\r\n]*")
_DATE = re.compile(r"\b(?:1[89]|20)\d{2}-?(?:0[1-9]|1[0-2])-?(?:0[1-9]|[12]\d|3[01])"
                   r"(?:[T ]?\d{2}:?\d{2}(?::?\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b")
_QUOTED = re.compile(r"'[^'\n]{1,500}'|\"[^\"\n]{1,500}\"")
_QUERY = re.compile(r"\?[^\s\"']+")
_INPUT_VALUE = re.compile(r"input_value=.*?(?=, input_type=|\]$|$)", re.M)
REDACTED = "<redacted>"


def scrub_text(text: str, *, limit: int = 500) -> str:
    """Remove what looks like PHI from free text meant for a log line."""
    text = _HL7_SEGMENT.sub("<hl7>", text)
    text = _INPUT_VALUE.sub("input_value=" + REDACTED, text)
    text = _QUOTED.sub(REDACTED, text)
    text = _QUERY.sub("?" + REDACTED, text)
    text = _DATE.sub("<date>", text)
    return text if len(text) <= limit else text[:limit] + "..."


#: Extra fields a log line may carry as they are: ids, timings, outcomes (never PHI).
SAFE_FIELDS: frozenset[str] = frozenset({
    "message_id", "request_id", "control_id", "source", "outcome", "status", "status_code",
    "ack_code", "code", "method", "route", "duration_ms", "elapsed_ms", "latency_ms", "attempt",
    "attempts", "destination", "destination_kind", "outbox_id", "suggestion_id", "order_id",
    "audit_id", "error_type", "event", "count", "purged", "cutoff", "queue_depth", "backlog",
    "model_version", "catalog_version", "prompt_version", "protocol", "confidence", "abstained",
    "worker", "worker_id", "host", "port", "peer", "role", "roles", "auth", "reason",
    "message_type", "trigger_event", "hook", "duplicate", "retry_in_s", "batch_size",
    "processed", "hint", "mllp", "uri", "s", "ack", "retry", "size", "stopping", "frames",
    "partial", "error", "tls", "http", "ms", "seconds", "limit", "kind", "action", "withdrawn",
    "outbox_cancelled", "reject", "severity", "previous", "untrained_protocols",
    "dropped_protocols",
})
#: Extra fields that identify a patient, an order or a person: logged as keyed hashes.
IDENTIFIER_FIELDS: frozenset[str] = frozenset({
    "patient_id", "mrn", "placer_order_number", "filler_order_number", "accession_number",
    "order_ref", "actor", "subject", "user", "order", "patient",
})
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None)))
_RECORD_ATTRS |= {"message", "asctime", "taskName"}


def _safe_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_safe_value(v) for v in list(value)[:20]]
    return scrub_text(str(value), limit=200)


def safe_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The whitelisted extras of a record (identifiers hashed; everything else dropped).
    A `fields` dict extra (the pipeline's `log_event`) is flattened through the same rule."""
    out: dict[str, Any] = {}
    items = list(vars(record).items())
    nested = getattr(record, "fields", None)
    if isinstance(nested, dict):
        items += [(str(k), v) for k, v in nested.items()]
    for name, value in items:
        if name in _RECORD_ATTRS or name.startswith("_"):
            continue
        if name in SAFE_FIELDS:
            out[name] = _safe_value(value)
        elif name in IDENTIFIER_FIELDS:
            out[name] = hash_identifier(value)
    return out


def _redact_arg(value: Any) -> Any:
    return value if value is None or isinstance(value, bool | int | float) else REDACTED


def message_of(record: logging.LogRecord) -> str:
    """The record's message with every non-numeric %-argument redacted, then scrubbed: a name
    in an argument cannot be recognized, so arguments never reach a log line. Log data as
    whitelisted extras instead."""
    args = record.args
    try:
        if isinstance(args, dict):
            message = str(record.msg) % {k: _redact_arg(v) for k, v in args.items()}
        elif args:
            message = str(record.msg) % tuple(_redact_arg(a) for a in args)
        else:
            message = str(record.msg)
    except (TypeError, ValueError, KeyError):
        message = str(record.msg)
    return scrub_text(message)


def _exception_fields(exc_info: Any) -> dict[str, Any]:
    exc_type, exc, tb = exc_info
    if exc_type is None:
        return {}
    # Frames (file, line, function) locate the bug; the message is scrubbed, locals never shown.
    frames = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}"
              for f in traceback.extract_tb(tb)[-6:]]
    return {"exc_type": exc_type.__name__, "exc_message": scrub_text(str(exc), limit=300),
            "exc_frames": frames}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, safe extras, exception summary."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": message_of(record),
        }
        entry.update(safe_fields(record))
        if record.exc_info:
            entry.update(_exception_fields(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The same content as JsonFormatter for humans at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in safe_fields(record).items())
        line = f"{record.levelname} {record.name}: {message_of(record)} {fields}".rstrip()
        if record.exc_info:
            info = _exception_fields(record.exc_info)
            line += f" exc={info.get('exc_type')}: {info.get('exc_message')}"
        return line


class PhiFilter(logging.Filter):
    """A handler filter that rewrites the record in place (message scrubbed, args cleared,
    non-whitelisted extras removed, identifiers hashed) for handlers that do not use our
    formatters. Attach it to a handler, not a logger: logger filters skip propagated records."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = message_of(record), None
        for name in list(vars(record)):
            if name in _RECORD_ATTRS or name.startswith("_") or name in SAFE_FIELDS:
                continue
            if name == "fields" and isinstance(record.fields, dict):
                record.fields = {k: (hash_identifier(v) if k in IDENTIFIER_FIELDS
                                     else _safe_value(v))
                                 for k, v in record.fields.items()
                                 if k in SAFE_FIELDS or k in IDENTIFIER_FIELDS}
                continue
            if name in IDENTIFIER_FIELDS:
                setattr(record, name, hash_identifier(getattr(record, name)))
            else:
                delattr(record, name)
        if record.exc_info:
            info = _exception_fields(record.exc_info)
            record.msg += f" [{info.get('exc_type')}: {info.get('exc_message')}]"
            record.exc_info, record.exc_text = None, None
        return True


_OUR_HANDLER = "_radproto_handler"


def configure_logging(level: str | int = "INFO", *, fmt: str = "json",
                      stream: TextIO | None = None, hash_key: str | None = None
                      ) -> logging.Handler:
    """Replace the root logger's handlers with one PHI-safe handler (JSON by default).
    Run uvicorn with `log_config=None` so its loggers propagate here."""
    set_hash_key(hash_key)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    setattr(handler, _OUR_HANDLER, True)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else str(level).upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # HTTP client libraries log full request URLs (FHIR searches carry identifiers) at INFO.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler


#: Loggers held at WARNING by configure_logging: they write URLs with query strings.
QUIET_LOGGERS: tuple[str, ...] = ("httpx", "httpcore", "urllib3", "uvicorn.access")


# ---------------------------------------------------------------------------- metrics

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES_RECEIVED = Counter(
    "radproto_messages_received", "Orders received, by interface (hl7v2, fhir, cds-hooks).",
    ["source"], registry=REGISTRY)
MESSAGES_ACKNOWLEDGED = Counter(
    "radproto_messages_acknowledged", "Messages acknowledged, by interface and ACK code.",
    ["source", "code"], registry=REGISTRY)
MESSAGES_REJECTED = Counter(
    "radproto_messages_rejected", "Messages rejected (AE/AR, 4xx), by interface and reason.",
    ["source", "reason"], registry=REGISTRY)
QUEUE_DEPTH = Gauge(
    "radproto_queue_depth", "Received messages waiting to be classified.", registry=REGISTRY)
CLASSIFICATION_LATENCY = Histogram(
    "radproto_classification_seconds", "Time to classify one order (batch time / batch size).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=REGISTRY)
CONFIDENCE = Histogram(
    "radproto_suggestion_confidence", "Calibrated confidence of the top protocol.",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0), registry=REGISTRY)
SUGGESTIONS = Counter(
    "radproto_suggestions", "Suggestions made; abstain rate = abstained / all.",
    ["abstained"], registry=REGISTRY)
OUTBOX_BACKLOG = Gauge(
    "radproto_outbox_backlog", "Write-back items not yet delivered, by destination kind.",
    ["destination_kind"], registry=REGISTRY)
WRITEBACK_FAILURES = Counter(
    "radproto_writeback_failures", "Failed write-back attempts, by destination kind.",
    ["destination_kind"], registry=REGISTRY)
HTTP_REQUESTS = Counter(
    "radproto_http_requests", "HTTP requests by method, route template and status.",
    ["method", "route", "status"], registry=REGISTRY)
HTTP_LATENCY = Histogram(
    "radproto_http_request_seconds", "HTTP request duration by route template.",
    ["route"], registry=REGISTRY)
AUTH_DENIED = Counter(
    "radproto_auth_denied", "Requests refused by authentication (401) or policy (403).",
    ["status", "reason"], registry=REGISTRY)
AUDIT_WRITE_FAILURES = Counter(
    "radproto_audit_write_failures", "Audit events that could not be stored.", registry=REGISTRY)
RETENTION_PURGED = Counter(
    "radproto_retention_purged", "Raw messages purged by the retention task.", registry=REGISTRY)
MLLP_PEERS_REFUSED = Counter(
    "radproto_mllp_peers_refused", "MLLP connections refused by the address allow-list.",
    registry=REGISTRY)
MODEL_INFO = Gauge(
    "radproto_model_info", "The model in use (value 1): its registry version and catalog "
    "version; the labels change when the service switches to a new champion.",
    ["model_version", "catalog_version"], registry=REGISTRY)
MODEL_UNTRAINED_PROTOCOLS = Gauge(
    "radproto_model_untrained_protocols", "Protocols of the configured catalog the model in "
    "use has no trained row for (/readyz names them).", registry=REGISTRY)
MODEL_DROPPED_PROTOCOLS = Gauge(
    "radproto_model_dropped_protocols", "Protocols the model in use was trained on that the "
    "configured catalog lacks (/readyz names them).", registry=REGISTRY)


def observe_suggestion(suggestion: Any, seconds: float | None = None) -> None:
    """Count one suggestion: confidence, abstention and (optionally) its latency."""
    SUGGESTIONS.labels(abstained=str(bool(suggestion.abstained)).lower()).inc()
    CONFIDENCE.observe(float(suggestion.confidence))
    if seconds is not None:
        CLASSIFICATION_LATENCY.observe(seconds)


def metrics_payload() -> tuple[bytes, str]:
    """The /metrics body and content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def gauge_from(gauge: Gauge, source: Callable[[], float]) -> None:
    """Let a gauge read its value at scrape time (e.g. the queue depth from the store); a
    failing source reads as NaN instead of breaking the scrape."""

    def read() -> float:
        try:
            return float(source())
        except Exception:
            return float("nan")

    gauge.set_function(read)
