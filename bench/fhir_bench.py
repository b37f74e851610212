"""FHIR side benchmark: ServiceRequest -> Task over real HTTP, and CDS Hooks response time.

1. POST /fhir/ServiceRequest answered with the Task (store, worker, pipeline, SQLite) with the
   model excluded: a trivial classifier that answers at once. Latency percentiles and requests
   per second at a few concurrencies; the baseline is GET /fhir/metadata on the same server
   (HTTP + the app, no store, no worker).
2. CDS Hooks order-select on the third-party requests with a real model: `--model` (or
   RADPROTO_MODEL), else the embedded base model (same size and cost as a fine-tuned one).

    python -m bench.fhir_bench [--orders 400] [--model URI] [--cds-calls 6] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from bench.report import machine_description, markdown_table, write_section
from radproto.adapter.fhir_client import FhirSettings
from radproto.adapter.http_app import ServiceContext, create_app
from radproto.adapter.pipeline import Pipeline
from radproto.adapter.settings import ServiceSettings
from radproto.adapter.store import open_store
from radproto.adapter.worker import Worker
from radproto.model.catalog import Catalog, default_catalog
from radproto.model.prompt import PROMPT_VERSION
from radproto.model.suggestion import ProtocolScore, Suggestion

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / ".." / "shared" / "fixtures" / "third_party" / "fhir"


class TrivialClassifier:
    """The model left out: the same ranking for every order, at once."""

    model_version = "trivial-bench"

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        n = len(catalog)
        self._scores = tuple(ProtocolScore(protocol=p, probability=(n - i) / (n * (n + 1) / 2))
                             for i, p in enumerate(catalog.names))

    def score_orders(self, orders: Sequence, *, batch_size: int = 16) -> list[Suggestion]:
        return [Suggestion(scores=self._scores, protocol=self._scores[0].protocol,
                           confidence=self._scores[0].probability,
                           model_version=self.model_version,
                           catalog_version=self.catalog.version, prompt_version=PROMPT_VERSION)
                for _ in orders]


def service_request(i: int) -> dict:
    return {"resourceType": "ServiceRequest", "id": f"bench-{i}", "status": "active",
            "intent": "order", "priority": "routine", "subject": {"reference": f"Patient/p{i}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "30799-1"}],
                     "text": "CT head without contrast"},
            "reasonCode": [{"text": f"fall, head trauma, case {i}"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The app under uvicorn on a real socket, in a thread; worker thread alongside."""

    def __init__(self, classifier, data_dir: Path, fhir: FhirSettings) -> None:
        import uvicorn

        url = f"sqlite:///{data_dir / 'bench.db'}"
        self.store = open_store(url)
        self.context = ServiceContext(settings=ServiceSettings(store=url), store=self.store,
                                      catalog=classifier.catalog, classifier=classifier,
                                      model_status="ready")
        self.context.fhir_settings = fhir
        pipeline = Pipeline(self.store, classifier)
        self.context.worker = Worker(self.store, pipeline, poll_s=0.05, batch_size=16).start()
        app = create_app(self.context, parts=("fhir",))
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.context.worker.stop()
        self.store.close()


async def load(base: str, make_request, count: int, concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:
        async def user() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                started = time.perf_counter()
                response = await make_request(http, i)
                latencies.append(time.perf_counter() - started)
                assert response.status_code in (200, 201), response.text[:300]

        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return latencies, wall


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def intake_section(orders: int) -> str:
    catalog = default_catalog()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(TrivialClassifier(catalog), Path(tmp), FhirSettings(sync_wait_s=30))
        try:
            offset = 0
            for concurrency in (1, 8):
                async def metadata(http, i):
                    return await http.get("/fhir/metadata")

                async def create(http, i, _offset=offset):
                    return await http.post("/fhir/ServiceRequest",
                                           json=service_request(_offset + i),
                                           headers={"Content-Type": "application/fhir+json"})

                for name, fn in (("GET /fhir/metadata (baseline)", metadata),
                                 ("POST /fhir/ServiceRequest -> 201 Task", create)):
                    lat, wall = asyncio.run(load(server.base, fn, orders, concurrency))
                    rows.append([name, concurrency, orders, f"{pct(lat, 0.5):.1f}",
                                 f"{pct(lat, 0.95):.1f}", f"{orders / wall:.0f}"])
                offset += orders
        finally:
            server.stop()
    return markdown_table(["request", "concurrency", "requests", "p50 ms", "p95 ms",
                           "requests/s"], rows)


def cds_section(model_uri: str | None, calls: int) -> str:
    from radproto.adapter.cds_hooks import SERVICES

    try:
        classifier, used = load_model(model_uri)
    except Exception as exc:  # the model is optional for this benchmark
        return f"CDS Hooks with a real model: not measured ({type(exc).__name__}: {exc})."
    requests = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*_request_*.json"))]
    service = "/cds-services/" + next(iter(SERVICES))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        budget = FhirSettings().cds_timeout_s
        # The budget is lifted to measure the model; the row says whether it fits.
        server = Server(classifier, Path(tmp), FhirSettings(cds_timeout_s=600))
        try:
            def draft(i: int) -> dict:
                # A new draft each call (the cache would answer a repeated one at once).
                request = copy.deepcopy(requests[i % len(requests)])
                entry = request["context"]["draftOrders"]["entry"][0]["resource"]
                entry["id"] = f"bench-draft-{i}"
                request["context"]["selections"] = [f"ServiceRequest/bench-draft-{i}"]
                return request

            async def new_draft(http, i):
                return await http.post(service, json=draft(i))

            async def same_draft(http, i):
                return await http.post(service, json=draft(0))

            asyncio.run(load(server.base, new_draft, 1, 1))  # warm-up, and draft 0 cached
            for label, fn in (("new draft (the model runs)", new_draft),
                              ("unchanged draft again (cached)", same_draft)):
                lat, _ = asyncio.run(load(server.base, fn, calls, 1))
                rows.append([used, label, calls, f"{pct(lat, 0.5):.0f}",
                             f"{pct(lat, 0.95):.0f}", f"{budget * 1000:.0f}",
                             "yes" if pct(lat, 0.95) <= budget * 1000 else "no"])
        finally:
            server.stop()
    return markdown_table(["model", "call", "calls", "p50 ms", "p95 ms", "budget ms",
                           "p95 within budget"], rows)


def load_model(uri: str | None):
    """`--model` / RADPROTO_MODEL when given, else the embedded base model."""
    from radproto.model.sources import load_classifier

    if uri:
        return load_classifier(uri), uri
    return load_classifier("embedded"), "embedded base model (no site adapter)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=400)
    parser.add_argument("--model", default=os.environ.get("RADPROTO_MODEL"))
    parser.add_argument("--cds-calls", type=int, default=6)
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/")
    args = parser.parse_args(argv)
    intake = intake_section(args.orders)
    cds = cds_section(args.model, args.cds_calls)
    body = (f"Machine: {machine_description()}. Store: SQLite (WAL, synchronous=FULL).\n\n"
            "### ServiceRequest -> Task, model excluded (trivial classifier)\n\n"
            "Each POST is stored durably, claimed by the worker, classified, completed in one "
            "transaction and answered with the Task (201).\n\n"
            f"{intake}\n\n### CDS Hooks order-select, real model\n\n{cds}\n")
    if args.no_write:
        print(body)
    else:
        write_section("fhir", "FHIR intake and CDS Hooks", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
