"""SMART Backend Services against a real OAuth server (npm oidc-provider, tests/peers)."""

from __future__ import annotations

import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from peers.harness import oauth_server

from radproto.adapter.fhir_client import FhirClient
from radproto.adapter.smart_auth import SmartAuthError, SmartBackendAuth

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP384R1())


def public_jwk(key, alg: str, kid: str) -> dict:
    algorithm = RSAAlgorithm if alg == "RS384" else ECAlgorithm
    jwk = json.loads(algorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture(scope="module")
def oauth(tmp_path_factory):
    config = {"port": 0, "ttl": 3, "clients": [
        {"client_id": "radproto-rs", "alg": "RS384", "jwk": public_jwk(RSA_KEY, "RS384", "r1")},
        {"client_id": "radproto-es", "alg": "ES384", "jwk": public_jwk(EC_KEY, "ES384", "e1")},
    ]}
    peer = oauth_server(config, tmp_path_factory.mktemp("oauth"))
    yield peer
    peer.stop()


def auth_for(oauth, client_id="radproto-rs", key=RSA_KEY, kid="r1", alg="RS384", **kw):
    return SmartBackendAuth(fhir_base_url=f"{oauth.base}/fhir", client_id=client_id,
                            private_key=key, key_id=kid, algorithm=alg,
                            scope="system/Task.write", **kw)


def token_requests(oauth) -> int:
    return httpx.get(f"{oauth.base}/__stats").json()["tokenRequests"]


@pytest.mark.parametrize(("client_id", "key", "kid", "alg"), [
    ("radproto-rs", RSA_KEY, "r1", "RS384"), ("radproto-es", EC_KEY, "e1", "ES384")])
async def test_a_good_assertion_gets_a_token(oauth, client_id, key, kid, alg):
    auth = auth_for(oauth, client_id, key, kid, alg)
    try:
        token = await auth.token()
        assert token and auth.token_endpoint == f"{oauth.base}/token"  # discovered
        assertion = jwt.decode(auth.client_assertion(auth.token_endpoint),
                               key.public_key(), algorithms=[alg],
                               audience=auth.token_endpoint)
        assert assertion["iss"] == assertion["sub"] == client_id
        assert assertion["exp"] - assertion["iat"] <= 300
    finally:
        await auth.aclose()


async def test_a_wrong_audience_is_refused(oauth):
    auth = auth_for(oauth)
    endpoint = await auth.discover()
    auth.client_assertion = lambda _aud: SmartBackendAuth.client_assertion(  # type: ignore
        auth, "https://some-other-server.example/token")
    try:
        with pytest.raises(SmartAuthError) as info:
            await auth.token()
        assert info.value.status == 401 and info.value.error == "invalid_client"
        assert endpoint.endswith("/token")
    finally:
        await auth.aclose()


async def test_a_key_the_server_does_not_know_is_refused(oauth):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    auth = auth_for(oauth, key=stranger)
    try:
        with pytest.raises(SmartAuthError, match="invalid_client"):
            await auth.token()
    finally:
        await auth.aclose()


async def test_tokens_are_cached_until_expiry(oauth):
    auth = auth_for(oauth)  # the server issues tokens for 3 s; renewal comes at half-life
    try:
        before = token_requests(oauth)
        first = await auth.token()
        assert await auth.token() == first and await auth.token() == first
        assert token_requests(oauth) == before + 1
        time.sleep(1.7)
        assert await auth.token() != first
        assert token_requests(oauth) == before + 2
    finally:
        await auth.aclose()


async def test_requests_carry_the_bearer_token(oauth):
    seen: list[str] = []

    def fhir_server(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        return httpx.Response(200, json={"resourceType": "Patient", "id": "1"})

    auth = auth_for(oauth)
    try:
        async with FhirClient("http://ehr.test/fhir", auth=auth,
                              transport=httpx.MockTransport(fhir_server)) as client:
            await client.read("Patient/1")
            await client.read("Patient/1")
        token = await auth.token()
        assert seen == [f"Bearer {token}"] * 2
    finally:
        await auth.aclose()


def test_only_rs384_and_es384():
    from radproto.model.errors import ConfigError

    with pytest.raises(ConfigError):
        SmartBackendAuth(fhir_base_url="http://x", client_id="c", private_key=RSA_KEY,
                         key_id="k", algorithm="HS256")  # type: ignore[arg-type]


def test_the_service_builds_a_smart_client_from_its_settings(tmp_path):
    from cryptography.hazmat.primitives import serialization

    from radproto.adapter.fhir_client import FhirSettings
    from radproto.adapter.fhir_writeback import make_ehr_client

    key_file = tmp_path / "key.pem"
    key_file.write_bytes(EC_KEY.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    client = make_ehr_client(FhirSettings(
        server_url="http://ehr.test/fhir", smart_client_id="radproto-es",
        smart_private_key_file=key_file, smart_key_id="e1", smart_algorithm="ES384"))
    auth = client._http.auth
    assert isinstance(auth, SmartBackendAuth) and auth.algorithm == "ES384"
    claims = jwt.decode(auth.client_assertion("http://ehr.test/token"), EC_KEY.public_key(),
                        algorithms=["ES384"], audience="http://ehr.test/token")
    assert claims["iss"] == "radproto-es"
    assert make_ehr_client(FhirSettings()) is None
