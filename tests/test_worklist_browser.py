"""The worklist in a real Chromium (Debian's /usr/bin/chromium, driven by Playwright),
the service serving the shipped default model: a radiologist signs in, sees an order that
arrived over MLLP a moment earlier appear without a reload with the model's suggestion and
calibrated probability, accepts one suggestion and changes another with the keyboard alone
(the type-ahead, and the quick picks 1-3 over the top 3); the RIS (a listening MLLP peer)
gets the final protocol and the EHR (the Medplum FHIR server) the updated Task. An order
the model abstained on cannot be accepted and takes a quick pick as the radiologist's
choice. Also: the integration role gets 403, a verdict without the CSRF token is refused,
every view of clinical text is audited.

`make test` installs chromium (apt) and playwright (requirements-dev.txt).
RADPROTO_UPDATE_SCREENSHOT=1 also writes the 1366x768 screenshot to docs/worklist.png.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from test_worklist_api import (  # noqa: F401 (fixtures)
    KEYS,
    Running,
    fhir_server,
    key,
    wait_for,
)

from radproto.adapter.security import hash_api_key
from radproto.adapter.worklist import percent

CHROMIUM = "/usr/bin/chromium"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "worklist.png"


@pytest.fixture(scope="module")
def shipped_model():
    """The model radproto ships (model/default_model), loaded once: what a site serves
    before it fine-tunes, and what the screenshot in the README shows."""
    from radproto.model.sources import SHIPPED_MODEL, load_classifier

    return load_classifier(SHIPPED_MODEL)


@pytest.fixture
async def running(tmp_path, fhir_server, shipped_model):  # noqa: F811
    service = await Running(tmp_path, fhir_server.base + "/fhir",
                            classifier=shipped_model).start()
    yield service
    await service.stop()


@pytest.fixture
async def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install "
                    "chromium chromium-driver)", pytrace=False)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        await chromium.close()


async def signed_in(browser, running):
    """(context, page) of a radiologist who opened the worklist, was sent to sign in and
    signed in with the keyboard, at 1366x768."""
    context = await browser.new_context(viewport={"width": 1366, "height": 768})
    page = await context.new_page()
    await page.goto(running.base + "/worklist")
    assert page.url.endswith("/worklist/login")
    await page.fill("#api_key", KEYS["radiologist"])
    await page.keyboard.press("Enter")
    await page.wait_for_url(running.base + "/worklist")
    return context, page


def task_at_ehr(fhir_base: str, message_id: str) -> dict:
    entries = httpx.get(f"{fhir_base}/Task", params={
        "identifier": f"urn:radproto:suggestion|{message_id}"}).json().get("entry") or []
    return entries[0]["resource"] if entries else {}


async def test_radiologist_works_the_list_with_the_keyboard(running, browser, tmp_path):
    # An order that came by FHIR (urgent), written to the EHR as a Task.
    async with httpx.AsyncClient(base_url=running.base) as http:
        sr = {"resourceType": "ServiceRequest", "id": "sr-b1", "status": "active",
              "intent": "order", "priority": "urgent", "code": {"text": "MRI knee"},
              "subject": {"reference": "#p"}, "reasonCode": [{"text": "twisted knee, locking"}],
              "note": [{"text": "prior ACL repair 2019"}]}
        created = await http.post("/fhir/ServiceRequest", json=sr, headers=key("integration"))
        assert created.status_code == 201, created.text
    fhir = await running.wait_suggested("sr-b1")
    await wait_for(lambda: task_at_ehr(running.fhir_base, fhir.message_id).get("id"),
                   what="the Task at the EHR")

    # The integration role is refused the page.
    integration = await browser.new_context(extra_http_headers=key("integration"))
    response = await (await integration.new_page()).goto(running.base + "/worklist")
    assert response.status == 403
    await integration.close()

    context, page = await signed_in(browser, running)
    cookie = next(c for c in await context.cookies() if c["name"] == "radproto_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    await page.wait_for_selector(f'tr[data-id="{fhir.id}"]')
    await page.evaluate("window.__notReloaded = true")

    # An order arrives over MLLP while the page is open: it appears without a reload.
    await running.send_hl7("b2", "ACC-B2", "CT ABDOMEN PELVIS WITH CONTRAST",
                           reason="suspected appendicitis, RLQ pain")
    hl7 = await running.wait_suggested("ACC-B2")
    row = page.locator(f'tr[data-id="{hl7.id}"]')
    await row.wait_for(timeout=15000)
    assert await page.evaluate("window.__notReloaded === true")
    text = await row.inner_text()
    assert "suspected appendicitis" in text
    # The shipped model's suggestion and its calibrated probability, as stored.
    confidence = hl7.suggestion.confidence
    assert hl7.protocol == "CT Abdomen Pelvis W Contrast" and confidence > 0.5
    assert hl7.protocol in text and f"confidence {percent(confidence)}" in text
    assert await page.locator("tr.row").count() == 2
    # Urgent (FHIR) first; the page fits 1366 pixels without horizontal scrolling.
    ids = await page.locator("tr.row").evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert ids == [fhir.id, hl7.id]
    # The FHIR row was rendered by the server, the HL7 one by the page's script: the same
    # cells, probabilities in whole percent.
    fhir_text = await page.locator(f'tr[data-id="{fhir.id}"]').inner_text()
    assert f"confidence {percent(fhir.suggestion.confidence)}" in fhir_text
    for cells in (fhir_text, text):
        assert "p = " not in cells and "1.00" not in cells
    second = hl7.suggestion.scores[1]
    assert f"{second.protocol} {percent(second.probability)}" in text
    assert await page.evaluate("document.documentElement.scrollWidth") <= 1366
    shot = tmp_path / "worklist.png"
    await page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("RADPROTO_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)

    # A verdict without the CSRF token is refused, even with the session cookie.
    status = await page.evaluate(f"""async () => (await fetch("/worklist/verdict", {{
        method: "POST", headers: {{"Content-Type": "application/json"}},
        body: JSON.stringify({{suggestion_id: "{hl7.id}", outcome: "accepted"}})}})).status""")
    assert status == 403
    assert running.store.feedback_rows() == []

    # Keyboard only: j moves to the HL7 order, a accepts it.
    await page.keyboard.press("j")
    assert await row.get_attribute("class") == "row selected"
    await page.keyboard.press("a")
    await page.locator(f'tr[data-id="{hl7.id}"]').wait_for(state="detached", timeout=15000)
    # k back to the FHIR order, c opens the type-ahead, Enter takes the first match.
    await page.keyboard.press("k")
    await page.keyboard.press("c")
    await page.keyboard.type("MRI Lumbar Spine WO")
    first = page.locator("#choices li").first
    assert (await first.inner_text()).startswith("MRI Lumbar Spine WO Contrast")
    await page.keyboard.press("Enter")
    await page.locator(f'tr[data-id="{fhir.id}"]').wait_for(state="detached", timeout=15000)
    assert await page.locator("#empty").is_visible()

    # Quick picks: 2 takes the second of the top 3 (a change), 1 the suggestion (an accept).
    await running.send_hl7("b3", "ACC-B3", "CT HEAD", reason="fall on warfarin, head strike")
    await running.send_hl7("b4", "ACC-B4", "US ABDOMEN",
                           reason="RUQ pain after fatty meals, Murphy sign positive")
    head = await running.wait_suggested("ACC-B3")
    ruq = await running.wait_suggested("ACC-B4")
    for stored in (head, ruq):
        await page.locator(f'tr[data-id="{stored.id}"]').wait_for(timeout=15000)
    newest = page.locator(f'tr[data-id="{ruq.id}"]')  # newest first within a priority
    assert await newest.get_attribute("class") == "row selected"
    await page.keyboard.press("2")
    await newest.wait_for(state="detached", timeout=15000)
    other = page.locator(f'tr[data-id="{head.id}"]')
    assert await other.get_attribute("class") == "row selected"
    await page.keyboard.press("1")
    await other.wait_for(state="detached", timeout=15000)
    await context.close()

    verdicts = {r.suggestion_id: r for r in running.store.feedback_rows()}
    assert verdicts[hl7.id].outcome == "accepted" and verdicts[hl7.id].protocol == hl7.protocol
    assert verdicts[fhir.id].outcome == "changed"
    assert verdicts[fhir.id].protocol == "MRI Lumbar Spine WO Contrast"
    assert verdicts[ruq.id].outcome == "changed"
    assert verdicts[ruq.id].protocol == ruq.suggestion.scores[1].protocol != ruq.protocol
    assert verdicts[head.id].outcome == "accepted" and verdicts[head.id].protocol == head.protocol

    # The RIS gets the final protocol: an ORM^O01 (the order was v2.3.1), OBR-4.4-6.
    [message] = await wait_for(
        lambda: [m for m in running.ris.received if "RP-VERDICT" in m and "ACC-B2" in m],
        what="the RIS verdict")
    segments = {s.split("|")[0]: s.split("|") for s in message.split("\r")}
    assert segments["MSH"][8].startswith("ORM^O01") and segments["ORC"][1] == "SC"
    assert segments["OBR"][4].split("^")[4] == hl7.protocol
    verdict_obx = next(s for s in message.split("\r") if "RP-VERDICT" in s)
    assert verdict_obx.split("|")[5] == "accepted"
    # The quick pick's change reaches the RIS too.
    [picked] = await wait_for(
        lambda: [m for m in running.ris.received if "RP-VERDICT" in m and "ACC-B4" in m],
        what="the quick pick's RIS verdict")
    assert ruq.suggestion.scores[1].protocol in picked

    # The EHR's Task shows the change.
    def changed_task() -> dict | None:
        task = task_at_ehr(running.fhir_base, fhir.message_id)
        return task if task.get("status") == "rejected" else None

    task = await wait_for(changed_task, what="the changed Task at the EHR")
    assert task["businessStatus"]["coding"][0]["code"] == "changed"
    [chosen] = [o for o in task["output"] if o["type"]["coding"][0]["code"] == "chosen-protocol"]
    assert chosen["valueCodeableConcept"]["text"] == "MRI Lumbar Spine WO Contrast"

    # Each view of clinical text is audited: who, which order.
    actor = f"api-key:{hash_api_key(KEYS['radiologist'])[:12]}"
    reads = running.store.audit_rows(actor=actor, action="read", entity_type="Order")
    assert {fhir.order_id, hl7.order_id} <= {r.entity_id for r in reads}
    assert {r.detail["view"] for r in reads} == {"worklist"}


class Abstaining:
    """The shipped model below its confidence threshold on every order."""

    def __init__(self, model) -> None:
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def score_orders(self, orders):
        return [s.model_copy(update={"abstained": True, "abstain_reason": "below threshold"})
                for s in self.model.score_orders(orders)]


async def test_an_abstained_order_is_decided_with_a_quick_pick(running, browser):
    running.service.context.worker.pipeline.classifier = Abstaining(
        running.service.context.worker.pipeline.classifier)
    await running.send_hl7("c1", "ACC-C1", "CT CHEST", reason="pleuritic chest pain, D-dimer 2.1")
    stored = await running.wait_suggested("ACC-C1")
    assert stored.suggestion.abstained

    context, page = await signed_in(browser, running)
    row = page.locator(f'tr[data-id="{stored.id}"]')
    await row.wait_for(timeout=15000)
    assert "ABSTAINED" in await row.inner_text()
    # a cannot accept what the model did not suggest; the page says what to do instead
    await page.keyboard.press("a")
    assert "1-3 takes one of its top 3" in await page.locator("#status").inner_text()
    assert running.store.feedback_rows() == []
    # 1 takes the model's first choice: recorded as the radiologist's choice (changed)
    await page.keyboard.press("1")
    await row.wait_for(state="detached", timeout=15000)
    await context.close()
    [verdict] = running.store.feedback_rows()
    assert verdict.outcome == "changed" and verdict.protocol == stored.protocol
