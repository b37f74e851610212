"""Who may call what, over HTTP and MLLP.

    keys.py         API key file: parse, hash, look up
    principal.py    Principal (an authenticated caller), AuthError, PrincipalDep
    credentials.py  JWT (JWKS) and API keys -> Principal; AuthError
    policy.py       the policy table: method + path -> roles
    sessions.py     the worklist's signed cookie sessions
    middleware.py   the ASGI middleware: authenticate, authorize, refuse
    request_audit.py  what a request leaves: audit event, denial event, metrics, log line
    install.py      install_security (middleware + adapter/ops.py routes), SecurityState
    mllp_guard.py   the MLLP allow-list and TLS context (MllpGuard)
"""

from radproto.adapter.security.credentials import (
    Authenticator,
    JwksCache,
    JwtValidator,
    roles_from_claims,
)
from radproto.adapter.security.install import (
    SecurityState,
    add_readiness_check,
    begin_shutdown,
    install_security,
)
from radproto.adapter.security.keys import (
    KEY_NAME,
    ApiKey,
    ApiKeyStore,
    api_key_line,
    hash_api_key,
    load_api_keys,
    parse_api_keys,
)
from radproto.adapter.security.middleware import SecurityMiddleware, flat_routes
from radproto.adapter.security.mllp_guard import MllpGuard, mllp_peer_allowed, server_ssl_context
from radproto.adapter.security.policy import ANY, DEFAULT_POLICY, PUBLIC, Policy, PolicyRule
from radproto.adapter.security.principal import (
    ROLES,
    AuthError,
    Principal,
    PrincipalDep,
    current_principal,
    require_principal,
)

__all__ = [
    "ANY",
    "DEFAULT_POLICY",
    "KEY_NAME",
    "PUBLIC",
    "ROLES",
    "ApiKey",
    "ApiKeyStore",
    "AuthError",
    "Authenticator",
    "JwksCache",
    "JwtValidator",
    "MllpGuard",
    "Policy",
    "PolicyRule",
    "Principal",
    "PrincipalDep",
    "SecurityMiddleware",
    "SecurityState",
    "add_readiness_check",
    "api_key_line",
    "begin_shutdown",
    "current_principal",
    "flat_routes",
    "hash_api_key",
    "install_security",
    "load_api_keys",
    "mllp_peer_allowed",
    "parse_api_keys",
    "require_principal",
    "roles_from_claims",
    "server_ssl_context",
]
