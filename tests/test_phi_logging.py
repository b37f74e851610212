"""Logs without PHI: the JSON formatter's whitelist and scrubbing, the keyed identifier hash,
and the whole service (real MLLP and HTTP sockets) fed recognizable fake PHI, with every log
line, record and byte written to stdout/stderr scanned for it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys

import httpx
import pytest

from radproto.adapter.observability import (
    QUIET_LOGGERS,
    JsonFormatter,
    PhiFilter,
    TextFormatter,
    configure_logging,
    hash_identifier,
    scrub_text,
    set_hash_key,
)
from radproto.adapter.security import hash_api_key

NAME, FAMILY, GIVEN = "Zyxwvut Qwertyson", "Qwertyson", "Zyxwvut"
MRN, BIRTH, BIRTH_HL7, NOTE = "MRN-PHI-98765", "1931-02-03", "19310203", "PHI-NOTE-MARKER"
MARKERS = (GIVEN, FAMILY, MRN, BIRTH, BIRTH_HL7, NOTE)


def _record(msg: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    record = logging.LogRecord("radproto.test", logging.INFO, __file__, 1, msg, args, exc_info)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_hash_identifier_is_keyed_stable_and_truncated():
    set_hash_key("site-secret-1")
    first = hash_identifier(MRN)
    assert first == hash_identifier(MRN) and first.startswith("h:") and len(first) == 18
    assert MRN not in first and hash_identifier("MRN-OTHER") != first
    assert hash_identifier(MRN, key="site-secret-2") != first
    assert hash_identifier("") == "" and hash_identifier(None) == ""


def test_the_json_formatter_keeps_only_whitelisted_fields_and_hashes_identifiers():
    set_hash_key("site-secret-1")
    line = JsonFormatter().format(_record(
        "message accepted", message_id="m-1", duration_ms=3.2, outcome="AA",
        patient_id=MRN, note_text=NOTE, patient_name=NAME, birth_date=BIRTH,
        fields={"control_id": "C1", "notes": NOTE, "placer_order_number": "P-77"}))
    data = json.loads(line)
    assert data["msg"] == "message accepted" and data["level"] == "INFO"
    assert (data["message_id"], data["duration_ms"], data["outcome"]) == ("m-1", 3.2, "AA")
    assert data["patient_id"] == hash_identifier(MRN)
    assert data["control_id"] == "C1" and data["placer_order_number"] == hash_identifier("P-77")
    assert not any(marker in line for marker in MARKERS)
    assert "note_text" not in data and "patient_name" not in data and "notes" not in data


@pytest.mark.parametrize("message", [
    f"could not parse PID|1||{MRN}^^^H^MR||{FAMILY}^{GIVEN}||{BIRTH_HL7}|F",
    f"bad value '{NAME}' in PID-5",
    f'patient "{NAME}" born {BIRTH}',
    f"GET /fhir/Patient?name={FAMILY}&birthdate={BIRTH} 200",
    f"validation error: input_value={{'name': '{NAME}', 'note': '{NOTE}'}}, input_type=dict",
    f"dob {BIRTH_HL7} and {BIRTH}T08:00:00Z",
])
def test_message_text_is_scrubbed(message):
    scrubbed = scrub_text(message)
    assert not any(marker in scrubbed for marker in (GIVEN, FAMILY, BIRTH, BIRTH_HL7)), scrubbed


def test_exceptions_are_summarized_without_their_data():
    try:
        raise ValueError(f"PID-7 '{BIRTH}' of {NAME!r} is invalid")
    except ValueError:
        record = _record("parse failed", exc_info=sys.exc_info())
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(record)
        assert "ValueError" in line and not any(m in line for m in MARKERS), line
    data = json.loads(JsonFormatter().format(record))
    assert data["exc_frames"] and "test_phi_logging.py" in data["exc_frames"][-1]


def test_the_phi_filter_protects_other_formatters():
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(message)s %(patient_id)s"))
    handler.addFilter(PhiFilter())
    record = _record("order from %s", NAME, patient_id=MRN, notes=NOTE)
    handler.handle(record)
    out = handler.stream.getvalue()
    assert not any(marker in out for marker in MARKERS) and "h:" in out
    assert not hasattr(record, "notes")


def test_configure_logging_routes_uvicorn_through_one_json_handler():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    try:
        configure_logging("INFO", stream=stream, hash_key="k")
        logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "10.0.0.1:5",
                                                 "GET", f"/fhir/Task?patient={MRN}", "1.1",
                                                 200)  # held at WARNING: not written
        logging.getLogger("uvicorn.error").warning("Invalid request %s (%d bytes)",
                                                   f"/fhir/Task?patient={MRN}", 12)
        logging.getLogger("radproto.x").info("done", extra={"patient_id": MRN})
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [x["logger"] for x in lines] == ["uvicorn.error", "radproto.x"]
    assert lines[0]["msg"] == "Invalid request <redacted> (12 bytes)"
    assert MRN not in stream.getvalue()


# ---------------------------------------------------------------------------- the full flow

KEYS = {"integration": "int-key-phi-test", "radiologist": "rad-key-phi-test"}


def _hl7(control_id: str, *, version: str = "2.5.1") -> bytes:
    segments = [
        f"MSH|^~\\&|RIS|HOSP|RADPROTO|RAD|20260101120000||ORM^O01|{control_id}|P|{version}",
        f"PID|1||{MRN}^^^HOSP^MR||{FAMILY}^{GIVEN}||{BIRTH_HL7}|F|||1 Main St^^Town",
        f"ORC|NW|PL-{control_id}^RIS",
        "|".join(["OBR", "1", f"PL-{control_id}^RIS", "", "X1^CT HEAD WITHOUT CONTRAST^L",
                  *[""] * 8, f"history {NOTE}", *[""] * 17, f"headache {NOTE}"]),
        f"NTE|1||{NOTE} patient {NAME} born {BIRTH}",
    ]
    return ("\r".join(segments) + "\r").encode()


async def _mllp(port: int, message: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\x0b" + message + b"\x1c\x0d")
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\x1c\x0d"), 10)
    finally:
        writer.close()


def _service_request(sr_id: str) -> dict:
    return {
        "resourceType": "ServiceRequest", "id": sr_id, "status": "active", "intent": "order",
        "contained": [{"resourceType": "Patient", "id": "pt",
                       "identifier": [{"system": "urn:oid:1.2.3", "value": MRN}],
                       "name": [{"family": FAMILY, "given": [GIVEN]}], "birthDate": BIRTH}],
        "subject": {"reference": "#pt", "display": NAME},
        "code": {"text": "CT head without contrast"},
        "reasonCode": [{"text": f"fall {NOTE}"}],
        "note": [{"text": f"{NOTE} {NAME} {BIRTH}"}],
    }


async def test_no_phi_in_any_log_line_of_the_full_flow(tmp_path, caplog, capfd):
    from radproto.adapter.service import Service
    from radproto.adapter.settings import load_settings
    from tests.conftest import KeywordClassifier

    keys = tmp_path / "api-keys.txt"
    keys.write_text("".join(f"{r} {hash_api_key(k)}\n" for r, k in KEYS.items()))
    settings = load_settings(None, {
        "data_dir": tmp_path, "store": f"sqlite:///{tmp_path / 'radproto.db'}",
        "mllp_port": 0, "http_port": 0, "worker_poll_s": 0.05,
        "security": {"api_keys_file": str(keys), "log_hash_key": "phi-test-key",
                     "retention_days": 0},
    })
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level,
             {n: logging.getLogger(n).level for n in QUIET_LOGGERS})
    # The production logging set-up (`radproto serve`), plus caplog's handler to see every
    # record as it was made, before any formatter.
    configure_logging("DEBUG", stream=stream, hash_key="phi-test-key")
    root.addHandler(caplog.handler)
    service = Service(settings, classifier=KeywordClassifier())
    try:
        await service.start()
        mllp_port, http_port = service.context.listener.port, service.http_port
        acks = [await _mllp(mllp_port, _hl7("PHI1")),
                await _mllp(mllp_port, _hl7("PHI2", version="9.9")),  # rejected
                await _mllp(mllp_port, b"PID|garbage " + NOTE.encode())]  # not even MSH
        assert b"MSA|AA|PHI1" in acks[0]
        base = f"http://127.0.0.1:{http_port}"
        integration = {"X-API-Key": KEYS["integration"],
                       "Content-Type": "application/fhir+json"}
        radiologist = {"X-API-Key": KEYS["radiologist"]}
        async with httpx.AsyncClient(base_url=base, timeout=15) as http:
            created = await http.post("/fhir/ServiceRequest", headers=integration,
                                      json=_service_request("sr-phi"))
            assert created.status_code in (200, 201, 202), created.text
            bad = dict(_service_request("sr-bad"), status=f"bogus {NOTE}", intent=NAME)
            assert (await http.post("/fhir/ServiceRequest", headers=integration,
                                    json=bad)).status_code in (400, 422)
            assert (await http.post("/fhir/ServiceRequest", json=bad)).status_code == 401
            assert (await http.get(f"/fhir/Task?subject:name={FAMILY}&birthdate={BIRTH}",
                                   headers=radiologist)).status_code < 500
            for _ in range(200):  # the worker classifies the HL7 order
                if len(service.context.store.messages(status="done")) >= 2:
                    break
                await asyncio.sleep(0.05)
            assert len(service.context.store.messages(status="done")) >= 2
            if created.status_code == 201:  # the radiologist accepts the FHIR order's Task
                task = dict(created.json(), status="completed")
                accepted = await http.put(f"/fhir/Task/{task['id']}", json=task,
                                          headers=radiologist)
                assert accepted.status_code == 200, accepted.text
            assert service.context.store.feedback_rows() or created.status_code != 201
    finally:
        await service.stop()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)

    out, err = capfd.readouterr()
    formatted = stream.getvalue()
    assert formatted.count("\n") >= 5, "the flow logged"
    for line in formatted.splitlines():
        json.loads(line)  # every line is JSON
    sources = {
        "JSON handler": formatted,
        "caplog": caplog.text,
        "record messages": "\n".join(r.getMessage() for r in caplog.records),
        "record extras": "\n".join(repr({k: v for k, v in vars(r).items()
                                         if k not in ("msg", "args")})
                                   for r in caplog.records),
        "stdout": out, "stderr": err,
    }
    leaks = {name: [m for m in MARKERS if m in text] for name, text in sources.items()}
    assert not any(leaks.values()), f"PHI in the logs: {leaks}"
