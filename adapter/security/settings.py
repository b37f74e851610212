"""The security section of the service settings: authentication, policy, audit, logging, retention.

A plain pydantic model so the main settings can nest it (`security: SecuritySettings`); with
pydantic-settings and `env_nested_delimiter="__"` every field reads `RADPROTO_SECURITY__<FIELD>`.
`validate_security` turns every problem into a ConfigError that names the setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from radproto.adapter.security.keys import load_api_keys
from radproto.model.errors import ConfigError

Role = Literal["integration", "radiologist", "admin"]

#: Only asymmetric algorithms: a JWKS publishes public keys, and accepting HS* would let anyone
#: holding the public key forge tokens (the classic key-confusion attack).
ASYMMETRIC_ALGORITHMS: tuple[str, ...] = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)


class JwtIssuer(BaseModel):
    """One trusted token issuer (an OAuth2 authorization server or an EHR's CDS Hooks client)."""

    model_config = ConfigDict(extra="forbid")

    issuer: str
    jwks_url: str
    #: The `aud` values accepted (required: tokens meant for other services must not pass).
    audience: list[str] = Field(min_length=1)
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "RS384", "ES256", "ES384"])
    #: Roles granted to every valid token of this issuer in addition to its claims (e.g. an
    #: EHR's CDS Hooks client, whose tokens carry no roles: ["integration"]).
    default_roles: list[Role] = Field(default_factory=list)

    @field_validator("jwks_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in ASYMMETRIC_ALGORITHMS]
        if bad or not value:
            raise ValueError(f"allowed: {', '.join(ASYMMETRIC_ALGORITHMS)}; got {bad or value}")
        return value


class PolicyRuleSetting(BaseModel):
    """An extra policy rule from the configuration; checked before the built-in table."""

    model_config = ConfigDict(extra="forbid")

    methods: list[str] = Field(default_factory=lambda: ["*"])
    path: str  # a glob on the request path, e.g. "/fhir/Task/*"
    roles: list[Role | Literal["public", "any"]]


class SecuritySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Trusted JWT issuers; a token from any other issuer gets 401.
    jwt_issuers: list[JwtIssuer] = Field(default_factory=list)
    #: The API key file (`ROLE SHA256-HEX` per line); `radproto serve --api-keys FILE`.
    api_keys_file: Path | None = None
    #: Token claims read for roles: plain role names, or scopes with `scope_prefix`.
    role_claims: list[str] = Field(default_factory=lambda: ["roles", "scope", "scp",
                                                            "realm_access.roles"])
    scope_prefix: str = "radproto/"
    clock_leeway_seconds: int = Field(default=30, ge=0, le=300)
    jwks_cache_seconds: int = Field(default=600, ge=0)
    #: An unknown `kid` refetches the JWKS at most this often (keys rotate; random kids must not
    #: turn us into a request amplifier against the authorization server).
    jwks_min_refresh_seconds: float = Field(default=5.0, ge=0)
    jwks_timeout_seconds: float = Field(default=5.0, gt=0)
    #: Extra rules before the built-in table (first match wins).
    policy: list[PolicyRuleSetting] = Field(default_factory=list)
    #: /metrics without credentials (for a scraper on a private network); default admin only.
    metrics_public: bool = False
    #: Development only: no authentication at all. Refused unless set explicitly.
    allow_anonymous: bool = False

    #: The worklist's sign-in sessions (adapter/security/sessions.py): the key that signs the
    #: session cookie (HMAC-SHA256). Empty: a random key per process (a restart signs everyone out;
    #: replicas behind one address need a shared key).
    session_secret: str = Field(default="", repr=False)
    session_ttl_seconds: int = Field(default=8 * 3600, ge=60, le=7 * 86400)
    #: The session cookie only over HTTPS (set it when TLS ends in front of the service).
    session_cookie_secure: bool = False

    #: Key of the keyed hash of identifiers in logs (HMAC-SHA256); a per-site secret.
    #: Empty: a random key per process (hashes then do not correlate across restarts).
    log_hash_key: str = Field(default="", repr=False)
    log_format: Literal["json", "text"] = "json"

    #: MLLP: source addresses or networks allowed to connect (empty: any) and mutual TLS.
    mllp_allow: list[str] = Field(default_factory=list)
    mllp_tls_cert: Path | None = None
    mllp_tls_key: Path | None = None
    mllp_tls_client_ca: Path | None = None

    #: Retention: raw messages and notes older than this are purged (0: never).
    retention_days: int = Field(default=0, ge=0)
    retention_interval_seconds: float = Field(default=3600.0, gt=0)

    @field_validator("mllp_allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or network") from exc
        return value


def load_security_settings(data: dict | None = None) -> SecuritySettings:
    """Parse the `security` section, turning validation errors into a ConfigError naming the
    setting (e.g. `security.jwt_issuers.0.jwks_url`)."""
    try:
        settings = SecuritySettings.model_validate(data or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "security." + ".".join(str(p) for p in first["loc"])
        raise ConfigError(first["msg"], field=name) from exc
    validate_security(settings)
    return settings


def validate_security(settings: SecuritySettings) -> None:
    """Checks across fields and on files, at start: a ConfigError names the setting."""
    # No credentials configured is allowed (the embedded defaults must start): every HTTP request
    # except /healthz and /readyz is then refused with 401; install_security logs a warning.
    issuers = [i.issuer for i in settings.jwt_issuers]
    if len(set(issuers)) != len(issuers):
        raise ConfigError("an issuer is listed twice", field="security.jwt_issuers")
    if settings.api_keys_file is not None:
        load_api_keys(settings.api_keys_file)  # raises ConfigError naming file and line
    tls = (settings.mllp_tls_cert, settings.mllp_tls_key)
    if (tls[0] is None) != (tls[1] is None):
        raise ConfigError("set both security.mllp_tls_cert and security.mllp_tls_key",
                          field="security.mllp_tls_key" if tls[1] is None
                          else "security.mllp_tls_cert")
    if settings.mllp_tls_client_ca is not None and tls[0] is None:
        raise ConfigError("mutual TLS needs a server certificate too",
                          field="security.mllp_tls_cert")
    for name in ("mllp_tls_cert", "mllp_tls_key", "mllp_tls_client_ca"):
        path = getattr(settings, name)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"file not found: {path}", field=f"security.{name}")
