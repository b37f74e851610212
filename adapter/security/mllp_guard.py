"""The MLLP side of security: the source-address allow-list and the (mutual) TLS server
context, bundled in one `MllpGuard` the listener takes."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radproto.adapter.observability import MLLP_PEERS_REFUSED
from radproto.adapter.security.settings import (
    SecuritySettings,
)
from radproto.model.errors import ConfigError

# ---------------------------------------------------------------------------- MLLP


def mllp_peer_allowed(peername: Any, allow_list: Iterable[str] | None) -> bool:
    """Whether an MLLP client at `peername` ((host, port, ...) from get_extra_info) may
    connect. An empty or missing allow-list allows everyone; entries are addresses or
    networks ("10.1.2.3", "10.1.0.0/16", "::1"). IPv4-mapped IPv6 peers match IPv4 entries."""
    entries = list(allow_list or [])
    if not entries:
        return True
    host = peername[0] if isinstance(peername, tuple | list) and peername else peername
    try:
        address = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return False  # a UNIX socket or garbage: not on any list
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for entry in entries:
        try:
            network = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            continue
        if address.version == network.version and address in network:
            return True
    return False


def server_ssl_context(cert: str | Path, key: str | Path,
                       client_ca: str | Path | None = None) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2+). With `client_ca`, clients must present a certificate
    signed by that CA (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the certificate or key: {exc}", path=str(cert),
                          field="security.mllp_tls_cert") from exc
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the client CA: {exc}", path=str(client_ca),
                              field="security.mllp_tls_client_ca") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class MllpGuard:
    """The MLLP settings bundled for the listener: `guard.allowed(peername)`, `guard.ssl`."""

    allow_list: list[str] = field(default_factory=list)
    ssl: ssl.SSLContext | None = None

    @classmethod
    def from_settings(cls, settings: SecuritySettings) -> MllpGuard:
        context = None
        if settings.mllp_tls_cert is not None and settings.mllp_tls_key is not None:
            context = server_ssl_context(settings.mllp_tls_cert, settings.mllp_tls_key,
                                         settings.mllp_tls_client_ca)
        return cls(allow_list=list(settings.mllp_allow), ssl=context)

    def allowed(self, peername: Any) -> bool:
        ok = mllp_peer_allowed(peername, self.allow_list)
        if not ok:
            MLLP_PEERS_REFUSED.inc()
        return ok
