"""The running service follows its registry alias: when `champion` moves to a new version the
service loads it beside the old one and switches without a restart (by polling, or at once on
SIGHUP); /readyz and the radproto_model_info metric name the version in use, and an order
scored after the switch carries the new version."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import pytest
from conftest import orm_message
from hl7.mllp import open_hl7_connection
from test_train_support import small_catalog, tiny_config, write_small_corpus, write_tiny_base

from radproto.adapter.service import Service, catalog_differences
from radproto.adapter.settings import load_settings
from radproto.training.tracking import register_model


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny trained model registered as radproto v1 with the alias champion."""
    from radproto.training.finetune import train

    root = tmp_path_factory.mktemp("switch")
    catalog = small_catalog()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = tiny_config(write_tiny_base(root / "base"),
                         write_small_corpus(root / "corpus", catalog), root / "model",
                         max_steps=2, tracking_uri=uri, register_name="radproto",
                         alias="champion")
    result = train(config, catalog, progress=False)
    assert result.registered_uri == "models:/radproto@champion"
    return {"root": root, "uri": uri, "result": result}


def _register_new_champion(registry: dict) -> None:
    register_model(registry["result"].model_uri, "radproto", tracking_uri=registry["uri"],
                   alias="champion", run_id=registry["result"].run_id)


def _settings(tmp_path: Path, registry: dict, poll_s: float):
    return load_settings(None, {
        "mllp_port": 0, "http_port": 0, "store": f"sqlite:///{tmp_path / 'svc.db'}",
        "model": "models:/radproto@champion", "tracking_uri": registry["uri"],
        "model_poll_s": poll_s, "worker_poll_s": 0.05,
        "security": {"allow_anonymous": True, "metrics_public": True}})


async def _wait_for_version(http: httpx.AsyncClient, version: str, timeout: float) -> dict:
    body: dict = {}
    for _ in range(int(timeout / 0.2)):
        response = await http.get("/readyz")
        body = response.json()
        if response.status_code == 200 and body.get("model", {}).get("version") == version:
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"/readyz never named {version}: {body}")


async def _score_one(service: Service, control_id: str, placer: str) -> str:
    ctx = service.context
    reader, writer = await open_hl7_connection("127.0.0.1", ctx.listener.port)
    writer.writeblock(orm_message(control_id, placer=placer, exam="CT HEAD"))
    assert b"MSA|AA|" + control_id.encode() in await asyncio.wait_for(reader.readblock(), 10)
    writer.close()
    for _ in range(300):
        stored = await asyncio.to_thread(ctx.store.latest_suggestion_for_order, placer)
        if stored is not None:
            return stored.suggestion.model_version
        await asyncio.sleep(0.1)
    raise AssertionError(f"order {placer} was never scored")


async def test_the_service_switches_to_the_new_champion_without_a_restart(tmp_path, registry):
    service = Service(_settings(tmp_path, registry, poll_s=0.5))
    await service.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as http:
            first = await _wait_for_version(http, "radproto/1", 120)
            assert first["model"]["uri"] == "models:/radproto@champion"
            assert first["model"]["untrained_protocols"] == \
                catalog_differences(service.context.classifier)["untrained_protocols"]
            assert await _score_one(service, "sw-1", "SW1") == "radproto/1"
            old = service.context.classifier

            _register_new_champion(registry)  # the alias moves to version 2
            await _wait_for_version(http, "radproto/2", 120)
            assert service.context.classifier is not old
            assert await _score_one(service, "sw-2", "SW2") == "radproto/2"
            metrics = (await http.get("/metrics")).text
            assert 'radproto_model_info{catalog_version=' in metrics
            assert 'model_version="radproto/2"} 1.0' in metrics
            assert 'model_version="radproto/1"' not in metrics
    finally:
        await service.stop()


async def test_sighup_checks_the_alias_at_once(tmp_path, registry):
    service = Service(_settings(tmp_path, registry, poll_s=0))  # no polling: only SIGHUP
    await service.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as http:
            body = (await _wait_for_any_version(http))["model"]
            number = int(body["version"].split("/")[1])
            _register_new_champion(registry)
            await asyncio.sleep(1.0)  # no polling: nothing changes by itself
            assert (await http.get("/readyz")).json()["model"]["version"] == body["version"]
            os.kill(os.getpid(), signal.SIGHUP)
            await _wait_for_version(http, f"radproto/{number + 1}", 120)
    finally:
        await service.stop()


async def _wait_for_any_version(http: httpx.AsyncClient) -> dict:
    for _ in range(600):
        response = await http.get("/readyz")
        if response.status_code == 200:
            return response.json()
        await asyncio.sleep(0.2)
    raise AssertionError("never ready")


def test_catalog_differences_read_what_the_classifier_tells():
    class Old:  # a classifier from before untrained/dropped rows were reported
        pass

    class New:
        untrained_protocols = ("MR Knee WO Contrast", "CT Chest W Contrast")
        dropped_protocols = ("XR Old Protocol",)

    assert catalog_differences(Old()) == {"untrained_protocols": [], "dropped_protocols": []}
    assert catalog_differences(New()) == {
        "untrained_protocols": ["CT Chest W Contrast", "MR Knee WO Contrast"],
        "dropped_protocols": ["XR Old Protocol"]}

