"""What each role may call: the policy table (method + path pattern -> roles, audited or
not) and its lookup."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from radproto.adapter.security.principal import Principal
from radproto.adapter.security.settings import SecuritySettings

#: Policy pseudo-roles: no credentials needed / any authenticated caller.
PUBLIC = "public"
ANY = "any"


# ---------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class PolicyRule:
    methods: frozenset[str]  # upper case; "*" any
    pattern: str  # fnmatch glob on the request path ("*" also crosses "/")
    roles: frozenset[str]  # roles, or {PUBLIC} or {ANY}
    audit: bool = True  # record an audit event for requests under this rule

    def matches(self, method: str, path: str) -> bool:
        method = "GET" if method == "HEAD" else method
        return ("*" in self.methods or method in self.methods) and \
            fnmatch.fnmatchcase(path, self.pattern)

    def allows(self, principal: Principal | None) -> bool:
        if PUBLIC in self.roles:
            return True
        if principal is None:
            return False
        return ANY in self.roles or bool(self.roles & principal.roles)


def _rule(methods: str, pattern: str, *roles: str, audit: bool = True) -> PolicyRule:
    return PolicyRule(frozenset(methods.split()), pattern, frozenset(roles), audit)


_I, _R, _A = "integration", "radiologist", "admin"

#: The built-in table; first match wins. Reading order text (notes) and suggestions is the
#: radiologist's; submitting orders the integration's; configuration and audit the admin's.
#: Anything not listed falls to the last rule: admin only (deny by default).
DEFAULT_POLICY: tuple[PolicyRule, ...] = (
    _rule("GET", "/healthz", PUBLIC, audit=False),
    _rule("GET", "/readyz", PUBLIC, audit=False),
    # A CORS preflight carries no credentials and returns no data; the real request is checked.
    _rule("OPTIONS", "*", PUBLIC, audit=False),
    _rule("GET", "/metrics", _A, audit=False),
    # The API's description holds no patient data: open, so Swagger UI loads; each
    # operation it calls is still checked by its own rule below.
    _rule("GET", "/openapi.json", PUBLIC, audit=False),
    _rule("GET", "/docs*", PUBLIC, audit=False),
    _rule("GET", "/redoc*", PUBLIC, audit=False),
    # The radiologists' worklist (adapter/worklist.py): sign-in and its assets are open; the
    # page and its data routes audit each order shown themselves (one event per order).
    _rule("GET POST", "/worklist/login", PUBLIC, audit=False),
    _rule("POST", "/worklist/logout", PUBLIC, audit=False),
    _rule("GET", "/worklist/static/*", PUBLIC, audit=False),
    _rule("GET", "/worklist*", _R, _A, audit=False),
    _rule("*", "/worklist*", _R, _A),
    _rule("*", "/admin*", _A),
    _rule("*", "/audit*", _A),
    _rule("*", "/config*", _A),
    # CDS Hooks: the EHR (integration) calls the service; a radiologist's EHR session may too.
    _rule("GET", "/cds-services", _I, _R),
    _rule("POST", "/cds-services/*", _I, _R),
    # FHIR API.
    _rule("GET", "/fhir/metadata", ANY, audit=False),
    _rule("GET", "/fhir/.well-known/*", ANY, audit=False),
    _rule("POST PUT DELETE", "/fhir/ServiceRequest*", _I),
    _rule("POST", "/fhir", _I),
    _rule("POST", "/fhir/", _I),
    _rule("POST", "/fhir/Bundle*", _I),
    _rule("POST", "/fhir/$*", _I),
    _rule("GET", "/fhir/ServiceRequest*", _R),
    _rule("GET", "/fhir/Patient*", _R),
    _rule("GET", "/fhir/Condition*", _R),
    _rule("GET", "/fhir/Task*", _R, _I),
    _rule("GET", "/fhir/Provenance*", _R, _I),
    # The EHR moves our Task to completed/rejected on the radiologist's behalf, or a
    # radiologist's client does it directly.
    _rule("PUT PATCH POST", "/fhir/Task*", _R, _I),
    # HL7 v2 over HTTP, order submission.
    _rule("POST", "/hl7*", _I),
    _rule("POST PUT", "/orders*", _I),
    _rule("GET", "/orders*", _R),
    # Suggestions and feedback (accept, reject, change).
    _rule("*", "/suggestions*", _R),
    _rule("*", "/feedback*", _R),
    _rule("*", "*", _A),
)


class Policy:
    def __init__(self, rules: Iterable[PolicyRule] = DEFAULT_POLICY):
        self.rules = tuple(rules)

    @classmethod
    def from_settings(cls, settings: SecuritySettings) -> Policy:
        extra = [PolicyRule(frozenset(m.upper() for m in r.methods), r.path,
                            frozenset(r.roles)) for r in settings.policy]
        base = list(DEFAULT_POLICY)
        if settings.metrics_public:
            extra.insert(0, _rule("GET", "/metrics", PUBLIC, audit=False))
        return cls([*extra, *base])

    def rule_for(self, method: str, path: str) -> PolicyRule:
        for rule in self.rules:
            if rule.matches(method.upper(), path):
                return rule
        return _rule("*", "*", _A)  # unreachable with the default table's catch-all
