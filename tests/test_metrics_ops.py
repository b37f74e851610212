"""/metrics (admin only, Prometheus text), /healthz and /readyz, and the metric objects."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from radproto.adapter import observability as obs
from radproto.adapter.security import (
    add_readiness_check,
    begin_shutdown,
    hash_api_key,
    install_security,
)
from radproto.adapter.security.settings import SecuritySettings

KEYS = {"integration": "k-int", "radiologist": "k-rad", "admin": "k-adm"}


def _app(tmp_path, store, **security) -> FastAPI:
    path = tmp_path / "keys.txt"
    path.write_text("".join(f"{r} {hash_api_key(k)}\n" for r, k in KEYS.items()))
    app = FastAPI()
    install_security(app, SecuritySettings(api_keys_file=path, **security), store,
                     readiness={"model": lambda: True})
    return app


async def _get(app, path, role=None) -> httpx.Response:
    headers = {"X-API-Key": KEYS[role]} if role else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get(path, headers=headers)


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_are_for_admins_and_carry_the_service_metrics(tmp_path, sqlite_url):
    from radproto.adapter.store import open_store

    store = open_store(sqlite_url)
    app = _app(tmp_path, store)
    try:
        assert (await _get(app, "/metrics")).status_code == 401
        assert (await _get(app, "/metrics", "radiologist")).status_code == 403

        obs.MESSAGES_RECEIVED.labels(source="hl7v2").inc()
        obs.MESSAGES_ACKNOWLEDGED.labels(source="hl7v2", code="AA").inc()
        obs.MESSAGES_REJECTED.labels(source="fhir", reason="invalid").inc()
        obs.gauge_from(obs.QUEUE_DEPTH, lambda: 4)  # read at scrape time
        obs.OUTBOX_BACKLOG.labels(destination_kind="mllp").set(2)
        obs.WRITEBACK_FAILURES.labels(destination_kind="mllp").inc()
        before = _samples((await _get(app, "/metrics", "admin")).text)

        class S:
            abstained, confidence = True, 0.35

        obs.observe_suggestion(S(), seconds=0.2)
        response = await _get(app, "/metrics", "admin")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        after = _samples(response.text)
    finally:
        store.close()

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("radproto_suggestions_total", abstained="true") == 1
    assert delta("radproto_suggestion_confidence_bucket", le="0.4") == 1
    assert delta("radproto_suggestion_confidence_bucket", le="0.3") == 0
    assert delta("radproto_classification_seconds_count") == 1
    assert after[("radproto_queue_depth", ())] == 4
    for name in ("radproto_messages_received_total", "radproto_messages_acknowledged_total",
                 "radproto_messages_rejected_total", "radproto_outbox_backlog",
                 "radproto_writeback_failures_total", "radproto_http_requests_total",
                 "radproto_auth_denied_total"):
        assert any(key[0] == name for key in after), name
    # The 401 and 403 above were counted by reason.
    assert after[("radproto_auth_denied_total",
                  (("reason", "no_credentials"), ("status", "401")))] >= 1


async def test_metrics_can_be_public_for_a_private_scraper(tmp_path, sqlite_url):
    from radproto.adapter.store import open_store

    store = open_store(sqlite_url)
    try:
        app = _app(tmp_path, store, metrics_public=True)
        assert (await _get(app, "/metrics")).status_code == 200
    finally:
        store.close()


async def test_health_and_readiness(tmp_path, sqlite_url):
    from radproto.adapter.store import open_store

    store = open_store(sqlite_url)
    app = _app(tmp_path, store)
    healthz = await _get(app, "/healthz")
    assert healthz.status_code == 200 and healthz.json() == {"status": "ok"}
    ready = await _get(app, "/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"model": "ok", "store": "ok"}

    destination_up = asyncio.Event()

    async def destination() -> bool:
        return destination_up.is_set()

    add_readiness_check(app, "writeback", destination)
    add_readiness_check(app, "broken", lambda: 1 / 0)
    not_ready = await _get(app, "/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["writeback"] == "failing"
    assert not_ready.json()["checks"]["broken"] == "failing"
    del app.state.security.readiness["broken"]
    destination_up.set()
    assert (await _get(app, "/readyz")).status_code == 200

    store.close()  # the store goes away: not ready, but still alive
    gone = await _get(app, "/readyz")
    assert gone.status_code == 503 and gone.json()["checks"]["store"] == "failing"
    assert (await _get(app, "/healthz")).status_code == 200


async def test_readiness_fails_once_shutdown_begins(tmp_path, sqlite_url):
    from radproto.adapter.store import open_store

    store = open_store(sqlite_url)
    try:
        app = _app(tmp_path, store)
        assert (await _get(app, "/readyz")).status_code == 200
        begin_shutdown(app)
        response = await _get(app, "/readyz")
        assert response.status_code == 503 and response.json()["checks"]["shutdown"]
    finally:
        store.close()


async def test_an_existing_healthz_is_kept(tmp_path, sqlite_url):
    from fastapi.responses import JSONResponse

    from radproto.adapter.store import open_store

    app = FastAPI()

    @app.get("/healthz")
    def own() -> JSONResponse:
        return JSONResponse({"status": "ok", "own": True})

    store = open_store(sqlite_url)
    try:
        install_security(app, SecuritySettings(), store)
        assert (await _get(app, "/healthz")).json()["own"] is True
        assert sum(1 for r in app.routes if getattr(r, "path", "") == "/healthz") == 1
    finally:
        store.close()


def test_a_failing_gauge_source_does_not_break_the_scrape():
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    gauge = Gauge("t_depth", "test", registry=registry)
    obs.gauge_from(gauge, lambda: 1 / 0)
    assert b"t_depth NaN" in generate_latest(registry)
    obs.gauge_from(gauge, lambda: 7)
    assert b"t_depth 7.0" in generate_latest(registry)
