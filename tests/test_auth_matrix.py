"""The endpoint-by-role matrix on the real app: for every route and method, no credentials
get 401, each role the policy does not name gets 403, and a role it names gets through."""

from __future__ import annotations

import re

import httpx
import pytest

from radproto.adapter.security import ANY, PUBLIC, ROLES, flat_routes, hash_api_key

KEYS = {role: f"key-for-{role}" for role in ROLES}


def build_real_app(store, tmp_path, *, security_overrides: dict | None = None):
    """The service's app as `radproto serve` builds it (create_app with every part),
    with one API key per role."""
    from radproto.adapter.http_app import ServiceContext, create_app
    from radproto.adapter.settings import load_settings
    from radproto.model.catalog import default_catalog

    keys = tmp_path / "api-keys.txt"
    keys.write_text("".join(f"{role} {hash_api_key(key)}\n" for role, key in KEYS.items()))
    settings = load_settings(None, {"data_dir": tmp_path, "store": store.url})
    security = settings.security.model_copy(
        update={"api_keys_file": keys, **(security_overrides or {})})
    settings = settings.model_copy(update={"security": security})
    from tests.conftest import KeywordClassifier

    context = ServiceContext(settings=settings, store=store, catalog=default_catalog(),
                             classifier=KeywordClassifier(), model_status="ready")
    return create_app(context)


def route_cases(app) -> list[tuple[str, str, frozenset[str]]]:
    """(method, concrete path, roles the policy allows) for every route of the app."""
    policy = app.state.security.policy
    cases = []
    for route in flat_routes(app):
        path = re.sub(r"\{[^}]+\}", "x1", route.path)
        for method in sorted(set(route.methods or ()) - {"HEAD"}):
            cases.append((method, path, policy.rule_for(method, path).roles))
    return sorted(set(cases))


@pytest.fixture
def real_app(sqlite_url, tmp_path):
    from radproto.adapter.store import open_store

    store = open_store(sqlite_url)
    yield build_real_app(store, tmp_path)
    store.close()


async def _call(app, method: str, path: str, key: str | None) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        body = None if method in ("GET", "DELETE") else {}
        return await client.request(method, path, headers=headers, json=body)


async def test_every_route_by_every_role(real_app):
    cases = route_cases(real_app)
    assert len(cases) >= 5, "the real app has its routes"
    problems = []
    for method, path, roles in cases:
        if PUBLIC in roles:
            response = await _call(real_app, method, path, None)
            if response.status_code in (401, 403):
                problems.append(f"{method} {path} is public but got {response.status_code}")
            continue
        response = await _call(real_app, method, path, None)
        if response.status_code != 401:
            problems.append(f"{method} {path} without credentials: {response.status_code}")
        elif response.json().get("resourceType") != "OperationOutcome":
            problems.append(f"{method} {path}: 401 without an OperationOutcome")
        for role in ROLES:
            allowed = ANY in roles or role in roles
            response = await _call(real_app, method, path, KEYS[role])
            if allowed and response.status_code in (401, 403):
                problems.append(f"{method} {path} as {role}: {response.status_code}")
            if not allowed and response.status_code != 403:
                problems.append(f"{method} {path} as {role} (not allowed): "
                                f"{response.status_code}")
        assert any(ANY in roles or r in roles for r in ROLES), f"{method} {path}: no role"
    assert not problems, "\n".join(problems)


def test_every_route_is_named_in_the_policy(real_app):
    """A new route must get an explicit rule; the catch-all (admin only) is a safety net."""
    policy = real_app.state.security.policy
    catch_all = policy.rules[-1]
    unlisted = [f"{m} {p}" for m, p, _ in route_cases(real_app)
                if policy.rule_for(m, p) is catch_all]
    assert not unlisted, f"routes without a policy rule: {unlisted}"


async def test_the_roles_of_the_issue(real_app):
    """integration submits orders, radiologists read suggestions, admins read the metrics."""
    policy = real_app.state.security.policy
    assert policy.rule_for("POST", "/fhir/ServiceRequest").roles == {"integration"}
    assert "radiologist" in policy.rule_for("GET", "/fhir/Task/1").roles
    assert "radiologist" in policy.rule_for("POST", "/feedback").roles
    assert "integration" not in policy.rule_for("POST", "/feedback").roles
    assert policy.rule_for("GET", "/metrics").roles == {"admin"}
    assert policy.rule_for("GET", "/admin/anything").roles == {"admin"}
    assert policy.rule_for("DELETE", "/no/such/route").roles == {"admin"}


async def test_unknown_paths_are_denied_before_they_are_not_found(real_app):
    assert (await _call(real_app, "GET", "/no/such/thing", None)).status_code == 401
    assert (await _call(real_app, "GET", "/no/such/thing", KEYS["radiologist"])
            ).status_code == 403
    assert (await _call(real_app, "GET", "/no/such/thing", KEYS["admin"])).status_code == 404


async def test_without_configured_credentials_everything_but_probes_is_refused(
        sqlite_url, tmp_path):
    from radproto.adapter.store import open_store

    store = open_store(sqlite_url)
    try:
        app = build_real_app(store, tmp_path, security_overrides={"api_keys_file": None})
        assert (await _call(app, "GET", "/healthz", None)).status_code in (200, 503)
        for method, path, roles in route_cases(app):
            if PUBLIC not in roles:
                assert (await _call(app, method, path, KEYS["admin"])).status_code == 401
    finally:
        store.close()
