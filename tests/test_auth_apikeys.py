"""Static API keys (`ROLE SHA256-HEX` per line) and the security settings' validation."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from radproto.adapter.security import (
    ApiKeyStore,
    hash_api_key,
    install_security,
    load_api_keys,
    parse_api_keys,
)
from radproto.adapter.security.settings import (
    SecuritySettings,
    load_security_settings,
    validate_security,
)
from radproto.model.errors import ConfigError

H = hashlib.sha256(b"secret-one").hexdigest()


def test_a_valid_file_parses_with_comments_and_blank_lines():
    text = f"# site keys\n\nintegration {H}  # the RIS\nradiologist {'A' * 64}\n"
    keys = parse_api_keys(text)
    assert [(k.role, k.line) for k in keys] == [("integration", 3), ("radiologist", 4)]
    assert keys[1].sha256 == "a" * 64


@pytest.mark.parametrize(("text", "line", "field", "words"), [
    (f"integration {H}\nadmin\n", 2, "line", "found 1 field"),
    (f"integration {H}\nadmin {H} extra\n", 2, "line", "found 3 field"),
    (f"superuser {H}\n", 1, "role", "unknown role 'superuser'"),
    ("admin abc123\n", 1, "sha256", "64 hex digits"),
    (f"admin {'g' * 64}\n", 1, "sha256", "64 hex digits"),
    (f"admin {H}\n\nadmin {H.upper()}\n", 3, "sha256", "duplicate of line 1"),
])
def test_errors_name_the_file_the_line_and_the_field(tmp_path, text, line, field, words):
    path = tmp_path / "keys.txt"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_api_keys(path)
    assert info.value.line == line and info.value.field == field
    assert str(path) in str(info.value) and f"line {line}" in str(info.value)
    assert words in str(info.value)


def test_a_missing_file_names_the_setting(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_api_keys(tmp_path / "nope.txt")
    assert info.value.field == "security.api_keys_file"


def test_one_key_can_hold_several_roles():
    store = ApiKeyStore(parse_api_keys(f"integration {H}\nadmin {H}\n"))
    principal = store.authenticate("secret-one")
    assert principal is not None and principal.roles == {"integration", "admin"}
    assert principal.actor == f"api-key:{H[:12]}"  # the hash prefix, never the key
    assert store.authenticate("secret-two") is None
    assert hash_api_key("secret-one") == H


async def test_api_keys_authenticate_http_requests(tmp_path, sqlite_url):
    from radproto.adapter.store import open_store

    path = tmp_path / "keys.txt"
    path.write_text(f"integration {hash_api_key('ris-key')}\nadmin {hash_api_key('ops-key')}\n")
    app = FastAPI()

    @app.post("/fhir/ServiceRequest")
    def submit() -> JSONResponse:
        return JSONResponse({"ok": True}, status_code=201)

    store = open_store(sqlite_url)
    install_security(app, SecuritySettings(api_keys_file=path), store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ok = await client.post("/fhir/ServiceRequest", headers={"X-API-Key": "ris-key"})
        wrong_role = await client.post("/fhir/ServiceRequest", headers={"X-API-Key": "ops-key"})
        bad_key = await client.post("/fhir/ServiceRequest", headers={"X-API-Key": "guess"})
        none = await client.post("/fhir/ServiceRequest")
        bearer = await client.post("/fhir/ServiceRequest",
                                   headers={"Authorization": "Bearer x.y.z"})
    store.close()
    assert ok.status_code == 201
    assert wrong_role.status_code == 403
    assert bad_key.status_code == 401 and none.status_code == 401
    assert bearer.status_code == 401  # no issuer configured: bearer tokens are not accepted
    for response in (wrong_role, bad_key, none):
        assert response.headers["content-type"].startswith("application/fhir+json")
        assert response.json()["resourceType"] == "OperationOutcome"


def test_settings_errors_name_the_setting():
    with pytest.raises(ConfigError) as info:
        load_security_settings({"jwt_issuers": [{"issuer": "https://idp", "jwks_url": "ftp://x",
                                                 "audience": ["a"]}]})
    assert info.value.field == "security.jwt_issuers.0.jwks_url"
    with pytest.raises(ConfigError) as info:
        load_security_settings({"jwt_issuers": [{"issuer": "https://idp",
                                                 "jwks_url": "https://idp/jwks",
                                                 "audience": ["a"], "algorithms": ["HS256"]}]})
    assert info.value.field == "security.jwt_issuers.0.algorithms"
    with pytest.raises(ConfigError) as info:
        load_security_settings({"jwt_issuers": [{"issuer": "https://idp",
                                                 "jwks_url": "https://idp/jwks"}]})
    assert info.value.field == "security.jwt_issuers.0.audience"
    with pytest.raises(ConfigError) as info:
        load_security_settings({"mllp_allow": ["10.0.0.0/8", "not-an-address"]})
    assert info.value.field == "security.mllp_allow"
    with pytest.raises(ConfigError) as info:
        load_security_settings({"api_keys_fil": "x"})
    assert info.value.field == "security.api_keys_fil"


def test_cross_field_and_file_checks_name_the_setting(tmp_path):
    bad_keys = tmp_path / "keys.txt"
    bad_keys.write_text("admin zzz\n")
    with pytest.raises(ConfigError) as info:
        validate_security(SecuritySettings(api_keys_file=bad_keys))
    assert info.value.line == 1
    with pytest.raises(ConfigError) as info:
        validate_security(SecuritySettings(mllp_tls_cert=tmp_path / "cert.pem"))
    assert info.value.field == "security.mllp_tls_key"
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError) as info:
        validate_security(SecuritySettings(mllp_tls_cert=cert, mllp_tls_key=tmp_path / "k.pem"))
    assert info.value.field == "security.mllp_tls_key"
    validate_security(SecuritySettings())  # no credentials: allowed, HTTP then refuses all
