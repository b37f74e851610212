"""An authenticated caller, and the error of a failed authentication (leaf of the security
package: everything else in it imports these)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from radproto.model.errors import RadprotoError

#: The roles of the issue: integration systems submit orders, radiologists read and decide,
#: admins configure and read the audit trail.
ROLES: tuple[str, ...] = ("integration", "radiologist", "admin")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    actor: str  # the JWT `sub` (or client id), or "api-key:<hash prefix>"
    roles: frozenset[str]
    auth: str  # "jwt" | "api-key" | "anonymous"
    issuer: str = ""


class AuthError(RadprotoError):
    """Authentication failed (401) or the JWKS could not be fetched (503). `reason` is a short
    machine-readable word for logs and metrics; the message is safe to show the caller."""

    def __init__(self, reason: str, message: str, *, status: int = 401):
        super().__init__(message)
        self.reason = reason
        self.status = status


def current_principal(request: Any) -> Principal | None:
    """The authenticated caller of a request (None on public routes)."""
    return getattr(request.state, "principal", None)


def require_principal(request: Request) -> Principal:
    """The authenticated caller; AuthError (401) when there is none (the security middleware
    is not installed, or the route is public): refuse, never open."""
    principal = current_principal(request)
    if principal is None:
        raise AuthError("no_credentials", "authentication required")
    return principal


#: Declare `principal: PrincipalDep` in a route that needs the authenticated caller.
PrincipalDep = Annotated[Principal, Depends(require_principal)]
