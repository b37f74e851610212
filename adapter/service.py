"""`radproto serve`: the MLLP listener, the HTTP API, the worker and the outbox relay in one
process, on embedded defaults (MLLP 127.0.0.1:2575, HTTP 127.0.0.1:8080, SQLite store under
./radproto-data, the model shipped with radproto until a site registers its own champion).

Start order: store -> MLLP + HTTP (they acknowledge and queue at once) -> model (seconds:
loaded by the model provider the CLI hands over, adapter/default_model.py's) -> worker ->
outbox relay. Shutdown (SIGTERM / SIGINT, at any moment): stop accepting, let in-flight
messages get their ACK, finish the worker's batch, stop the relay, close the store; the exit
status is 0.

While running, a models:/NAME@ALIAS model follows its alias: every `model_poll_s` seconds (and
at once on SIGHUP) the registry is asked which version the alias names; a new one is loaded
beside the one serving, then swapped in (a batch being scored finishes on the old one).
/readyz, /healthz, the log and the radproto_model_info metric name the version in use and the
protocols of the configured catalog the model has no trained row for (and the reverse).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from radproto.adapter.context import ServiceContext
from radproto.adapter.default_model import (
    DEFAULT_ALIAS,
    DEFAULT_MODEL_NAME,
    ModelProvider,
    alias_of,
    catalog_differences,
    load_default_classifier,
)
from radproto.adapter.fhir_writeback import fhir_writeback_builders
from radproto.adapter.hl7_listener import MessageHandler, MllpListener
from radproto.adapter.http_app import create_app
from radproto.adapter.mllp_client import MllpClient
from radproto.adapter.observability import (
    MODEL_DROPPED_PROTOCOLS,
    MODEL_INFO,
    MODEL_UNTRAINED_PROTOCOLS,
    QUEUE_DEPTH,
    gauge_from,
)
from radproto.adapter.outbox import OutboxRelay
from radproto.adapter.pipeline import (
    DEFAULT_PARSERS,
    Classifier,
    MllpWriteback,
    Pipeline,
    log_event,
)
from radproto.adapter.retention import run_periodic
from radproto.adapter.security import MllpGuard
from radproto.adapter.security.settings import validate_security
from radproto.adapter.settings import ServiceSettings, settings_from_cli
from radproto.adapter.store import Store, open_store
from radproto.adapter.worker import Worker
from radproto.model.errors import ConfigError

log = logging.getLogger("radproto.service")
#: Threads that may be inside torch when a stop comes (see serve_from_cli).
MODEL_THREADS = ("radproto-model-loader", "radproto-model-poll", "radproto-worker")


def configure_logging(level: str = "INFO", fmt: str = "json", hash_key: str = "") -> None:
    """The PHI-safe JSON-lines logging of adapter.observability (identifiers hashed)."""
    from radproto.adapter.observability import configure_logging as configure

    configure(level, fmt=fmt, hash_key=hash_key or None)


def serve_from_cli(args: argparse.Namespace, *, model_provider: ModelProvider) -> int:
    """`radproto serve`; the CLI names the model provider (adapter/default_model.py's)."""
    settings = settings_from_cli(args)
    configure_logging(getattr(args, "log_level", "INFO"), settings.security.log_format,
                      settings.security.log_hash_key)
    status = asyncio.run(run_service(settings, model_provider=model_provider))
    for sig in (signal.SIGTERM, signal.SIGINT):  # the stop is under way; a second one waits
        signal.signal(sig, signal.SIG_IGN)
    busy = [t.name for t in threading.enumerate() if t.name in MODEL_THREADS and t.is_alive()]
    if busy:
        # A model still loading (torch, no way to interrupt it) when the interpreter exits
        # aborts the process ("terminate called without an active exception"). Everything
        # that writes is stopped and closed by now, so leave without running finalizers.
        log_event(log, "exit_while_loading", hint="a model load was left unfinished")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _check_security(settings: ServiceSettings) -> None:
    try:
        validate_security(settings.security)
    except ConfigError as exc:
        s = settings.security
        if not s.jwt_issuers and s.api_keys_file is None and not s.allow_anonymous:
            # The embedded defaults must start: MLLP needs no HTTP credentials, and the HTTP
            # routes of the security part refuse every request until credentials are set.
            log_event(log, "no_http_authentication", logging.WARNING,
                      hint="set --api-keys or security.jwt_issuers for the HTTP API")
            return
        raise exc


class Service:
    """The running service; `await start()` then `await stop()` (or `run_service`).

    `classifier` serves as given; otherwise `model_provider` loads the model (in a thread,
    after the listeners start) and each new version of a followed registry alias."""

    def __init__(self, settings: ServiceSettings, *, classifier: Classifier | None = None,
                 store: Store | None = None,
                 model_provider: ModelProvider = load_default_classifier) -> None:
        self.settings = settings
        self._given_classifier = classifier
        self.model_provider = model_provider
        self._given_store = store
        self.context: ServiceContext | None = None
        self.executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="store")
        self._uvicorn: Any = None
        self.app: Any = None
        self._tasks: list[asyncio.Task] = []
        self._model_thread: threading.Thread | None = None
        self._model_stop = threading.Event()  # set on stop: the model threads end
        self._model_check = threading.Event()  # set by SIGHUP: ask the registry now
        self._poll_thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.http_port: int | None = None

    async def start(self) -> ServiceContext:
        from radproto.model.catalog import load_catalog

        s = self.settings
        self._loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            self._loop.add_signal_handler(signal.SIGHUP, self.check_model_now)
        _check_security(s)
        store = self._given_store or await asyncio.to_thread(open_store, s.store)
        catalog = (self._given_classifier.catalog if self._given_classifier is not None
                   else load_catalog(s.catalog, mode=s.catalog_mode))
        ctx = ServiceContext(settings=s, store=store, catalog=catalog)
        self.context = ctx
        guard = MllpGuard.from_settings(s.security)  # TLS (mutual if a client CA) + allow-list
        handler = MessageHandler(store, default_charset=s.mllp_default_charset,
                                 on_accepted=ctx.wake_worker, executor=self.executor)
        listener = MllpListener(
            handler, host=s.host, port=s.mllp_port, ssl_context=guard.ssl,
            max_message_bytes=s.mllp_max_message_bytes, idle_timeout_s=s.mllp_idle_timeout_s,
            shutdown_grace_s=s.shutdown_grace_s, peer_filter=guard.allowed)
        try:
            ctx.listener = await listener.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {s.host}:{s.mllp_port}: {exc.strerror or exc}",
                              field="mllp_port") from exc
        gauge_from(QUEUE_DEPTH, lambda: store.message_counts().get("pending", 0))
        if s.http_enabled:
            await self._start_http(ctx)
        if s.writeback_host:
            ctx.relay = OutboxRelay(store, backoff_initial_s=s.writeback_backoff_initial_s,
                                    backoff_max_s=s.writeback_backoff_max_s,
                                    client_factory=self._writeback_client).start()
        if s.security.retention_days > 0:
            self._tasks.append(asyncio.create_task(run_periodic(
                store, s.security.retention_days, s.security.retention_interval_seconds),
                name="retention"))
        if self._given_classifier is not None:
            self._model_ready(ctx, self._given_classifier, "given")
        else:
            loop = asyncio.get_running_loop()
            self._model_thread = threading.Thread(target=self._load_model, args=(ctx, loop),
                                                  daemon=True, name="radproto-model-loader")
            self._model_thread.start()
        log_event(log, "service_started", mllp=f"{s.host}:{ctx.listener.port}",
                  http=f"{s.host}:{self.http_port}" if s.http_enabled else None,
                  store=s.store.split("?")[0].split("@")[-1])
        return ctx

    def _writeback_client(self, destination: str):
        s = self.settings
        host, _, port = destination.rpartition(":")
        context = None
        if s.writeback_tls:
            context = ssl.create_default_context(
                cafile=str(s.writeback_tls_ca) if s.writeback_tls_ca else None)
        return MllpClient(host, int(port), ack_timeout_s=s.writeback_ack_timeout_s,
                          ssl_context=context)

    def _load_model(self, ctx: ServiceContext, loop: asyncio.AbstractEventLoop) -> None:
        started = time.perf_counter()
        try:
            classifier, uri = self.model_provider(self.settings, ctx.catalog)
        except Exception as exc:
            ctx.model_status, ctx.model_error = "failed", f"{type(exc).__name__}: {exc}"[:500]
            log_event(log, "model_failed", logging.ERROR, error=ctx.model_error)
            return
        if self._model_stop.is_set():
            return
        ctx.model_uri = uri
        log_event(log, "model_loaded", uri=uri, s=round(time.perf_counter() - started, 1),
                  model_version=getattr(classifier, "model_version", None))
        loop.call_soon_threadsafe(self._model_ready, ctx, classifier, uri)

    # ---------------------------------------------------------------- the model in use
    def _use_model(self, ctx: ServiceContext, classifier: Classifier, uri: str) -> None:
        """Make `classifier` the one in use: context, metrics, the log."""
        previous = getattr(ctx.classifier, "model_version", None)
        ctx.classifier = classifier
        ctx.model_uri = uri
        version = str(getattr(classifier, "model_version", ""))
        catalog_version = str(getattr(classifier.catalog, "version", ""))
        differences = catalog_differences(classifier)
        ctx.model_catalog_differences = differences
        MODEL_INFO.clear()
        MODEL_INFO.labels(model_version=version, catalog_version=catalog_version).set(1)
        MODEL_UNTRAINED_PROTOCOLS.set(len(differences["untrained_protocols"]))
        MODEL_DROPPED_PROTOCOLS.set(len(differences["dropped_protocols"]))
        if previous is not None:
            log_event(log, "model_switched", model_version=version, previous=previous, uri=uri)
        if any(differences.values()):
            log_event(log, "model_catalog_differs", logging.WARNING, model_version=version,
                      untrained_protocols=differences["untrained_protocols"],
                      dropped_protocols=differences["dropped_protocols"],
                      hint="configured protocols without trained rows are never suggested "
                           "with confidence; retrain on the site catalog")

    def model_summary(self) -> dict[str, Any]:
        """What /readyz says of the model in use."""
        ctx = self.context
        if ctx is None:
            return {}
        differences = ctx.model_catalog_differences
        return {"model": {
            "status": ctx.model_status,
            "version": getattr(ctx.classifier, "model_version", None),
            "uri": ctx.model_uri or None,
            "untrained_protocols": differences.get("untrained_protocols", []),
            "dropped_protocols": differences.get("dropped_protocols", []),
        }}

    def check_model_now(self) -> None:
        """SIGHUP: ask the registry for the alias's version now (thread-safe)."""
        self._model_check.set()

    def _poll_model(self, name: str, alias: str) -> None:
        """Follow a registry alias: load a new version beside the one in use, then swap."""
        s = self.settings
        interval = s.model_poll_s or None  # 0: only on SIGHUP
        while not self._model_stop.is_set():
            self._model_check.wait(interval)
            self._model_check.clear()
            if self._model_stop.is_set():
                return
            ctx = self.context
            if ctx is None or ctx.classifier is None:
                continue
            current = str(getattr(ctx.classifier, "model_version", ""))
            from radproto.model.registry import alias_version, registry_has

            try:
                if not registry_has(f"models:/{name}@{alias}", tracking_uri=s.tracking_uri):
                    continue  # e.g. no champion registered yet: the shipped model serves
                version = alias_version(name, alias, tracking_uri=s.tracking_uri)
            except Exception as exc:
                log_event(log, "model_poll_failed", logging.WARNING,
                          error=f"{type(exc).__name__}: {exc}"[:200])
                continue
            if current == f"{name}/{version}":
                continue
            started = time.perf_counter()
            try:
                new, _ = self.model_provider(s, ctx.catalog, uri=f"models:/{name}/{version}")
            except Exception as exc:
                log_event(log, "model_switch_failed", logging.ERROR, uri=f"{name}/{version}",
                          error=f"{type(exc).__name__}: {exc}"[:300])
                continue
            if self._model_stop.is_set() or self._loop is None:
                return
            log_event(log, "model_loaded", uri=f"models:/{name}/{version}",
                      model_version=getattr(new, "model_version", None),
                      s=round(time.perf_counter() - started, 1))
            self._loop.call_soon_threadsafe(self._swap_model, new,
                                            f"models:/{name}@{alias}")

    def _swap_model(self, classifier: Classifier, uri: str) -> None:
        """On the event loop: the worker's next batch scores with `classifier` (the batch in
        hand finishes on the old one, which is freed when that batch lets go of it)."""
        ctx = self.context
        if ctx is None or self._model_stop.is_set():
            return
        self._use_model(ctx, classifier, uri)
        pipeline = getattr(ctx.worker, "pipeline", None)
        if pipeline is not None:
            pipeline.classifier = classifier

    def _model_ready(self, ctx: ServiceContext, classifier: Classifier, uri: str) -> None:
        s = self.settings
        self._use_model(ctx, classifier, uri)
        ctx.catalog = classifier.catalog
        ctx.model_status = "ready"
        followed = alias_of(uri)
        if followed is None and not s.model and s.tracking_uri:
            # the shipped model until a site registers its champion: follow that alias
            followed = (DEFAULT_MODEL_NAME, DEFAULT_ALIAS)
        if followed is not None:
            self._poll_thread = threading.Thread(target=self._poll_model, args=followed,
                                                 daemon=True, name="radproto-model-poll")
            self._poll_thread.start()
        builders: list[Any] = list(fhir_writeback_builders(ctx))  # Tasks of FHIR orders
        if s.writeback_host:
            builders.append(MllpWriteback(
                s.writeback_destination, style=s.writeback_style,
                sending_application=s.writeback_sending_application,
                sending_facility=s.writeback_sending_facility,
                receiving_application=s.writeback_receiving_application,
                receiving_facility=s.writeback_receiving_facility))
        relay = ctx.relay
        loop = asyncio.get_running_loop()
        pipeline = Pipeline(ctx.store, classifier, parsers=DEFAULT_PARSERS,
                            outbox_builders=builders,
                            log_hash_key=s.security.log_hash_key,
                            on_outbox=(lambda: loop.call_soon_threadsafe(relay.wake))
                            if relay is not None else None,
                            app_ack_destination=s.writeback_destination)
        ctx.worker = Worker(ctx.store, pipeline, batch_size=s.worker_batch_size,
                            lease_s=s.worker_lease_s, poll_s=s.worker_poll_s).start()

    async def _start_http(self, ctx: ServiceContext) -> None:
        import uvicorn

        class _Server(uvicorn.Server):
            # The service owns SIGTERM/SIGINT and shuts uvicorn down itself.
            def capture_signals(self):  # type: ignore[override]
                return contextlib.nullcontext()

        ctx.ready_info = self.model_summary  # /readyz names the model
        app = self.app = create_app(ctx)
        host, port = self.settings.host, self.settings.http_port
        try:  # bound here so that a busy port is a clear error, not uvicorn's sys.exit
            sock = socket.create_server((host, port), reuse_port=False)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                              field="http_port") from exc
        config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                lifespan="off")
        self._uvicorn = _Server(config)
        task = asyncio.create_task(self._uvicorn.serve(sockets=[sock]), name="http")
        self._tasks.append(task)
        while not self._uvicorn.started:
            if task.done():
                task.result()  # raises the bind error
                raise ConfigError(f"HTTP server did not start on port {self.settings.http_port}",
                                  field="http_port")
            await asyncio.sleep(0.02)
        sockets = [sock for server in self._uvicorn.servers for sock in server.sockets]
        self.http_port = sockets[0].getsockname()[1] if sockets else self.settings.http_port

    async def stop(self) -> None:
        ctx = self.context
        if ctx is None:
            return
        if ctx.security is not None:
            ctx.security.shutting_down = True  # /readyz answers 503 while we drain
        if ctx.listener is not None:
            await ctx.listener.stop()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        self._model_stop.set()
        self._model_check.set()
        if self._loop is not None and threading.current_thread() is threading.main_thread():
            self._loop.remove_signal_handler(signal.SIGHUP)
        if self._model_thread is not None and self._model_thread.is_alive():
            # A load in this process cannot be interrupted: wait the grace period
            # (serve_from_cli then exits without waiting further).
            await asyncio.to_thread(self._model_thread.join, self.settings.shutdown_grace_s)
        if self._poll_thread is not None and self._poll_thread.is_alive():
            await asyncio.to_thread(self._poll_thread.join, self.settings.shutdown_grace_s)
        if ctx.worker is not None:
            await asyncio.to_thread(ctx.worker.stop)
        # Started after the worker, stopped before it in reverse: the relays, the FHIR API.
        if ctx.relay is not None:
            await ctx.relay.stop()
        if ctx.fhir_relay is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await ctx.fhir_relay.stop(timeout_s=5)
        if ctx.fhir is not None:
            await asyncio.to_thread(ctx.fhir.stop)  # answers what the CDS batcher holds
        for task in self._tasks:
            if task.get_name() != "http":
                task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait(self._tasks, timeout=5)
        if self._given_store is None:
            ctx.store.close()
        self.executor.shutdown(wait=False)
        log_event(log, "service_stopped")


async def run_service(settings: ServiceSettings, *, classifier: Classifier | None = None,
                      stop: asyncio.Event | None = None,
                      model_provider: ModelProvider = load_default_classifier) -> int:
    """Run until SIGTERM / SIGINT (or `stop` is set); returns the exit status."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    service = Service(settings, classifier=classifier, model_provider=model_provider)
    try:
        await service.start()
        ready = {"mllp_port": service.context.listener.port, "http_port": service.http_port}
        print(f"radproto serving: MLLP {settings.host}:{ready['mllp_port']}  HTTP "
              f"{settings.host}:{ready['http_port']}  store {_safe_url(settings.store)}",
              file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        await service.stop()
    return 0


def _safe_url(url: str) -> str:
    """A store URL without credentials, for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return url


def default_data_dir() -> Path:
    return ServiceSettings.model_fields["data_dir"].default
