"""Bearer JWTs checked against a JWKS served over real HTTP: signature, issuer, audience,
expiry, not-before, algorithm confusion, key rotation and roles."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from radproto.adapter.security import install_security
from radproto.adapter.security.settings import JwtIssuer, SecuritySettings

AUDIENCE = "https://radproto.test/api"


class JwksServer:
    """A JWKS endpoint on a real socket; counts fetches; its keys can be rotated."""

    def __init__(self) -> None:
        self.keys: list[dict] = []
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.issuer = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _public_jwk(private_key, kid: str, alg: str) -> dict:
    jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(
        private_key.public_key()))
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def _jwks_server():
    server = JwksServer()
    yield server
    server.close()


@pytest.fixture
def jwks(_jwks_server, rsa_key):
    _jwks_server.keys = [_public_jwk(rsa_key, "k1", "RS256")]
    _jwks_server.fetches = 0
    return _jwks_server


def _settings(jwks: JwksServer, **overrides) -> SecuritySettings:
    issuer = JwtIssuer(issuer=jwks.issuer, jwks_url=jwks.url, audience=[AUDIENCE],
                       algorithms=["RS256", "ES256"])
    return SecuritySettings(jwt_issuers=[issuer], jwks_min_refresh_seconds=0, **overrides)


def _app(settings: SecuritySettings, store) -> FastAPI:
    app = FastAPI()

    @app.get("/fhir/Task/{task_id}")
    def read_task(task_id: str, request: Request) -> JSONResponse:
        principal = request.state.principal
        return JSONResponse({"id": task_id, "actor": principal.actor,
                             "roles": sorted(principal.roles)})

    @app.get("/admin/config")
    def config() -> JSONResponse:
        return JSONResponse({"ok": True})

    install_security(app, settings, store)
    return app


def _claims(jwks: JwksServer, **overrides) -> dict:
    now = int(time.time())
    claims = {"iss": jwks.issuer, "aud": AUDIENCE, "sub": "dr-house", "iat": now,
              "exp": now + 300, "roles": ["radiologist"]}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _token(key, claims: dict, *, kid: str = "k1", alg: str = "RS256") -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def _get(app: FastAPI, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get(path, headers=headers)


@pytest.fixture
def sqlite_store(sqlite_url):
    from radproto.adapter.store import open_store

    store = open_store(sqlite_url)
    yield store
    store.close()


async def test_a_valid_token_reaches_the_route_with_its_subject_and_roles(
        jwks, rsa_key, sqlite_store):
    app = _app(_settings(jwks), sqlite_store)
    response = await _get(app, "/fhir/Task/t1", _token(rsa_key, _claims(jwks)))
    assert response.status_code == 200, response.text
    assert response.json() == {"id": "t1", "actor": "dr-house", "roles": ["radiologist"]}


@pytest.mark.parametrize(("case", "overrides", "reason"), [
    ("expired", {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "expired"),
    ("not yet valid", {"nbf": int(time.time()) + 3600}, "not yet valid"),
    ("wrong audience", {"aud": "https://other.service/api"}, "not meant for this service"),
    ("no expiry", {"exp": None}, "exp"),
    ("no subject", {"sub": None}, "subject"),
])
async def test_invalid_claims_get_401_with_an_operation_outcome(
        jwks, rsa_key, sqlite_store, case, overrides, reason):
    app = _app(_settings(jwks), sqlite_store)
    response = await _get(app, "/fhir/Task/t1", _token(rsa_key, _claims(jwks, **overrides)))
    assert response.status_code == 401, case
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "login"
    assert reason in body["issue"][0]["diagnostics"]
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_a_token_from_an_untrusted_issuer_gets_401(jwks, rsa_key, sqlite_store):
    app = _app(_settings(jwks), sqlite_store)
    token = _token(rsa_key, _claims(jwks, iss="https://evil.example"))
    response = await _get(app, "/fhir/Task/t1", token)
    assert response.status_code == 401
    assert "issuer" in response.json()["issue"][0]["diagnostics"]


async def test_a_token_signed_with_another_key_under_a_trusted_kid_gets_401(
        jwks, other_rsa_key, sqlite_store):
    app = _app(_settings(jwks), sqlite_store)
    response = await _get(app, "/fhir/Task/t1", _token(other_rsa_key, _claims(jwks)))
    assert response.status_code == 401
    assert "signature" in response.json()["issue"][0]["diagnostics"]


async def test_alg_none_is_refused(jwks, sqlite_store):
    app = _app(_settings(jwks), sqlite_store)
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "k1"}).encode())
    payload = _b64(json.dumps(_claims(jwks, roles=["admin"])).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}"):
        response = await _get(app, "/admin/config", token)
        assert response.status_code == 401


async def test_hs256_signed_with_the_public_key_is_refused(jwks, rsa_key, sqlite_store):
    """Key confusion: an attacker HMACs with the (public) RSA key as the secret."""
    app = _app(_settings(jwks), sqlite_store)
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    payload = _b64(json.dumps(_claims(jwks, roles=["admin"])).encode())
    signature = _b64(hmac.new(public_pem, f"{header}.{payload}".encode(),
                              hashlib.sha256).digest())
    response = await _get(app, "/admin/config", f"{header}.{payload}.{signature}")
    assert response.status_code == 401
    assert "algorithm" in response.json()["issue"][0]["diagnostics"]


async def test_garbage_and_wrong_schemes_get_401(jwks, sqlite_store):
    app = _app(_settings(jwks), sqlite_store)
    assert (await _get(app, "/fhir/Task/t1", "not.a.jwt")).status_code == 401
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/fhir/Task/t1", headers={"Authorization": "Basic eDp5"})
    assert response.status_code == 401


async def test_the_jwks_is_cached_and_refetched_for_an_unknown_kid(
        jwks, rsa_key, sqlite_store):
    app = _app(_settings(jwks), sqlite_store)
    for _ in range(3):
        assert (await _get(app, "/fhir/Task/t1", _token(rsa_key, _claims(jwks)))
                ).status_code == 200
    assert jwks.fetches == 1  # cached

    # The authorization server rotates: a new EC key with a new kid.
    new_key = ec.generate_private_key(ec.SECP256R1())
    jwks.keys = [*jwks.keys, _public_jwk(new_key, "k2", "ES256")]
    token = _token(new_key, _claims(jwks), kid="k2", alg="ES256")
    assert (await _get(app, "/fhir/Task/t1", token)).status_code == 200
    assert jwks.fetches == 2  # one refresh for the unknown kid
    assert (await _get(app, "/fhir/Task/t1", token)).status_code == 200
    assert jwks.fetches == 2

    # A kid the server does not know either: refused after one more refresh.
    unknown = _token(new_key, _claims(jwks), kid="k-unknown", alg="ES256")
    assert (await _get(app, "/fhir/Task/t1", unknown)).status_code == 401
    assert jwks.fetches == 3


async def test_unknown_kid_refreshes_are_rate_limited(jwks, rsa_key, sqlite_store):
    app = _app(_settings(jwks).model_copy(update={"jwks_min_refresh_seconds": 60}),
               sqlite_store)
    assert (await _get(app, "/fhir/Task/t1", _token(rsa_key, _claims(jwks)))).status_code == 200
    for i in range(5):
        token = _token(rsa_key, _claims(jwks), kid=f"random-{i}")
        assert (await _get(app, "/fhir/Task/t1", token)).status_code == 401
    assert jwks.fetches == 1


async def test_an_unreachable_jwks_gives_503_not_a_pass(rsa_key, sqlite_store):
    server = JwksServer()
    server.close()  # nothing listens there any more
    app = _app(_settings(server), sqlite_store)
    response = await _get(app, "/fhir/Task/t1", _token(rsa_key, _claims(server)))
    assert response.status_code == 503
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(("claims", "status"), [
    ({"roles": ["radiologist"]}, 403),
    ({"roles": ["admin"]}, 200),
    ({"roles": None, "scope": "openid radproto/admin"}, 200),
    ({"roles": None, "scp": ["radproto/radiologist"]}, 403),
    ({"roles": None, "realm_access": {"roles": ["admin"]}}, 200),
    ({"roles": ["administrator", "root"]}, 403),
])
async def test_roles_come_from_roles_scopes_and_realm_roles(
        jwks, rsa_key, sqlite_store, claims, status):
    app = _app(_settings(jwks), sqlite_store)
    response = await _get(app, "/admin/config", _token(rsa_key, _claims(jwks, **claims)))
    assert response.status_code == status
    if status == 403:
        assert response.json()["issue"][0]["code"] == "forbidden"


async def test_an_issuers_default_roles_are_granted(jwks, rsa_key, sqlite_store):
    settings = _settings(jwks)
    issuer = settings.jwt_issuers[0].model_copy(update={"default_roles": ["admin"]})
    app = _app(settings.model_copy(update={"jwt_issuers": [issuer]}), sqlite_store)
    response = await _get(app, "/admin/config", _token(rsa_key, _claims(jwks, roles=None)))
    assert response.status_code == 200


async def test_clock_leeway_accepts_slightly_expired_tokens(jwks, rsa_key, sqlite_store):
    app = _app(_settings(jwks, clock_leeway_seconds=30), sqlite_store)
    token = _token(rsa_key, _claims(jwks, exp=int(time.time()) - 10))
    assert (await _get(app, "/fhir/Task/t1", token)).status_code == 200
