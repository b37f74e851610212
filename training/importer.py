"""`radproto import`: a site's historical orders with their final protocols, as an order file.

Formats: CSV / JSONL order files (a `label` or `protocol` column); a file of HL7 v2 ORM^O01 /
OMI^O23 messages whose protocol field is filled (OMI IPC-6, ORM OBR-4 components 4 to 6); a FHIR
Bundle of ServiceRequests with their protocol Tasks.

Labels are resolved through the catalog (name, alias or code) and written as the canonical name.
A protocol the catalog does not know is never dropped silently: it is counted in
`ImportReport.unknown_protocols` and its row is written to `<out>.unknown.jsonl`, so a site can
extend its catalog and import again. Orders with no protocol are counted and skipped.

HL7 files: messages may be MLLP-framed, separated by blank lines, or just consecutive MSH
segments, with CR, LF or CRLF. Old messages (v2.1/v2.2, which the listener rejects) are read.
Within one file a later message for the same order (placer/filler/accession number) replaces an
earlier one, and a cancel (ORC-1 CA/DC/OC/CR/OD) removes it: the file's final state is imported.
Output rows carry no patient identifiers or birth dates (age and sex are in `history`).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from radproto.model.catalog import Catalog
from radproto.model.errors import OrderFileError
from radproto.model.order import Order, OrderAction

log = logging.getLogger(__name__)

ImportFormat = Literal["csv", "jsonl", "hl7", "fhir"]
FORMATS: tuple[str, ...] = ("csv", "jsonl", "hl7", "fhir")
UNKNOWN_SUFFIX = ".unknown.jsonl"
_MAX_ERROR_DETAILS = 20
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


@dataclass
class ImportReport:
    input_path: str
    fmt: str
    out_path: str
    records: int = 0  # rows / messages / ServiceRequests read
    written: int = 0  # rows written with a catalog protocol
    unknown_protocols: Counter[str] = field(default_factory=Counter)
    unknown_path: str = ""  # the sidecar file, when any protocol was unknown
    without_protocol: int = 0
    superseded: int = 0  # HL7: replaced by a later message for the same order
    cancelled: int = 0  # HL7 cancel messages and what they cancel; revoked ServiceRequests
    errors: Counter[str] = field(default_factory=Counter)  # reason -> count
    error_details: list[str] = field(default_factory=list)  # "message 3: ..." (first 20)

    @property
    def unknown(self) -> int:
        return sum(self.unknown_protocols.values())

    def summary(self) -> str:
        lines = [
            f"Imported {self.written} of {self.records} {_noun(self.fmt)} from {self.input_path} "
            f"into {self.out_path}."
        ]
        if self.unknown_protocols:
            lines.append(
                f"{self.unknown} with a protocol not in the catalog "
                f"({len(self.unknown_protocols)} distinct), written to {self.unknown_path}:"
            )
            lines += [f"  {count:5d}  {name}" for name, count in
                      sorted(self.unknown_protocols.items(), key=lambda kv: (-kv[1], kv[0]))]
        if self.without_protocol:
            lines.append(f"{self.without_protocol} without a protocol (skipped).")
        if self.superseded:
            lines.append(f"{self.superseded} replaced by a later message for the same order.")
        if self.cancelled:
            lines.append(f"{self.cancelled} cancelled (skipped).")
        if self.errors:
            lines.append(f"{sum(self.errors.values())} could not be read:")
            lines += [f"  {count:5d}  {reason}" for reason, count in self.errors.most_common()]
            lines += [f"    {detail}" for detail in self.error_details]
        return "\n".join(lines)


def _noun(fmt: str) -> str:
    return {"hl7": "messages", "fhir": "ServiceRequests"}.get(fmt, "rows")


def unknown_path_for(out_path: str | Path) -> Path:
    return Path(str(out_path) + UNKNOWN_SUFFIX)


def import_history(
    input_path: str | Path, fmt: ImportFormat, out_path: str | Path, *, catalog: Catalog
) -> ImportReport:
    """Read `input_path` in format `fmt`, write the order file `out_path` (and the unknown
    protocols' sidecar), and report what happened."""
    from radproto.training.orderfile import write_orders

    input_path, out_path = Path(input_path), Path(out_path)
    if fmt not in FORMATS:
        raise OrderFileError(f"unknown import format '{fmt}' (one of {', '.join(FORMATS)})",
                             path=str(input_path))
    if not input_path.is_file():
        raise OrderFileError("no such input file", path=str(input_path))
    report = ImportReport(input_path=str(input_path), fmt=fmt, out_path=str(out_path))
    if fmt in ("csv", "jsonl"):
        candidates = _from_order_file(input_path, fmt, report)
    elif fmt == "hl7":
        candidates = _from_hl7(input_path, report)
    else:
        candidates = _from_fhir(input_path, report)

    known: list[dict[str, Any]] = []
    unknown: list[dict[str, Any]] = []
    for row, given in candidates:
        if not given:
            report.without_protocol += 1
            continue
        resolved = _resolve(catalog, given)
        if resolved is None:
            report.unknown_protocols[given[0]] += 1
            unknown.append({**row, "label": given[0]})
            continue
        if resolved != given[0]:
            row["label_as_given"] = given[0]
        known.append({**row, "label": resolved})

    report.written = write_orders(out_path, known)
    sidecar = unknown_path_for(out_path)
    if unknown:
        write_orders(sidecar, unknown)
        report.unknown_path = str(sidecar)
    elif sidecar.exists():
        sidecar.unlink()  # a stale sidecar from an earlier run would mislead
    log.info("import %s: %d records, %d written, %d unknown protocol, %d errors", fmt,
             report.records, report.written, report.unknown, sum(report.errors.values()))
    return report


def _resolve(catalog: Catalog, given: tuple[str, ...]) -> str | None:
    """The canonical name for the first of (text, code, ...) the catalog knows."""
    for value in given:
        if value and (name := catalog.resolve(value)):
            return name
    return None


# --- CSV / JSONL ------------------------------------------------------------------------------


def _from_order_file(
    path: Path, fmt: str, report: ImportReport
) -> Iterator[tuple[dict[str, Any], tuple[str, ...]]]:
    from radproto.training.orderfile import read_orders

    suffix = path.suffix.lower()
    expected = (".csv",) if fmt == "csv" else (".jsonl", ".ndjson", ".json")
    if suffix not in expected:
        raise OrderFileError(
            f"--format {fmt} expects a file ending in {' or '.join(expected)}", path=str(path))
    for row in read_orders(path):
        report.records += 1
        label = str(row.get("label") or row.get("protocol") or "").strip()
        yield dict(row), ((label,) if label else ())


# --- HL7 v2 -----------------------------------------------------------------------------------


def split_hl7_messages(data: bytes) -> list[bytes]:
    """The messages of a file: MLLP-framed, blank-line separated or consecutive MSH segments,
    with CR, LF or CRLF; each returned with CR between segments."""
    messages: list[list[bytes]] = []
    current: list[bytes] | None = None
    for chunk in re.split(rb"[\x0b\x1c]", data):
        current = None  # an MLLP frame boundary always ends a message
        for line in _LINE_BREAK.split(chunk):
            if not line.strip():
                continue
            if line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            starts = line.startswith(b"MSH") and len(line) > 3 and not chr(line[3]).isalnum()
            if starts or current is None:
                current = []
                messages.append(current)
            current.append(line)
    return [b"\r".join(segments) for segments in messages]


def _order_key(order: Order) -> str:
    for prefix, value in (("placer", order.placer_order_number),
                          ("filler", order.filler_order_number),
                          ("accession", order.accession_number)):
        if value:
            return f"{prefix}:{value}"
    return ""


def _from_hl7(path: Path, report: ImportReport) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
    from radproto.fhir_mappings.hl7v2 import (
        HL7Error,
        decode_message,
        message_to_order,
        protocol_coding_from_message,
    )

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OrderFileError(f"cannot read: {exc.strerror}", path=str(path)) from exc
    # Keyed by order number so a later message replaces an earlier one (file order kept).
    by_order: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {}
    for number, raw in enumerate(split_hl7_messages(data), start=1):
        report.records += 1
        text = decode_message(raw)
        try:
            order = message_to_order(text, raw_message_id=f"{path.name}#{number}",
                                     lenient=True)
            coding = protocol_coding_from_message(text)
        except HL7Error as exc:
            reason = f"HL7 error {exc.code} ({exc.code_text})"
            report.errors[reason] += 1
            if len(report.error_details) < _MAX_ERROR_DETAILS:
                report.error_details.append(f"message {number}: {exc}")
            continue
        key = _order_key(order) or f"message:{number}"
        if order.action == OrderAction.CANCEL:
            report.cancelled += 1
            if key in by_order:
                del by_order[key]
                report.cancelled += 1
            continue
        code, name, system = coding or ("", "", "")
        row = _order_row(order, source_ref=f"{path.name}#{number}")
        row.update({k: v for k, v in (("protocol_code", code), ("protocol_system", system)) if v})
        given = tuple(v for v in (name, code) if v)
        if key in by_order:
            report.superseded += 1
        by_order[key] = (row, given)
    return list(by_order.values())


def _order_row(order: Order, *, source_ref: str) -> dict[str, Any]:
    """An order file row: the four prompt fields plus numbers to trace it (no patient ids)."""
    row: dict[str, Any] = dict(order.prompt_fields())
    for key in ("placer_order_number", "filler_order_number", "accession_number",
                "ordered_exam_code", "ordered_exam_system", "priority"):
        value = getattr(order, key)
        if value:
            row[key] = value
    row["source"] = str(order.source)
    row["source_ref"] = source_ref
    return row


# --- FHIR -------------------------------------------------------------------------------------


def _from_fhir(path: Path, report: ImportReport) -> Iterable[tuple[dict[str, Any],
                                                                  tuple[str, ...]]]:
    from radproto.fhir_mappings.fhir import history_from_bundle

    try:
        bundle = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise OrderFileError(f"cannot read: {exc.strerror}", path=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise OrderFileError("not UTF-8 text", path=str(path)) from exc
    except json.JSONDecodeError as exc:
        raise OrderFileError(f"not valid JSON: {exc.msg}", path=str(path),
                             line=exc.lineno) from exc
    rows = []
    for order, protocol in history_from_bundle(bundle):
        report.records += 1
        if order.action == OrderAction.CANCEL:  # revoked / entered-in-error
            report.cancelled += 1
            continue
        ref = order.raw_message_id or f"entry{report.records}"
        protocol = (protocol or "").strip()
        rows.append((_order_row(order, source_ref=f"{path.name}#{ref}"),
                     (protocol,) if protocol else ()))
    return rows
