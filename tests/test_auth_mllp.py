"""MLLP access: the source address allow-list and mutual TLS over real sockets."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from radproto.adapter.security import MllpGuard, mllp_peer_allowed, server_ssl_context
from radproto.adapter.security.settings import SecuritySettings
from radproto.model.errors import ConfigError


@pytest.mark.parametrize(("peer", "allow", "expected"), [
    (("10.1.2.3", 5000), None, True),
    (("10.1.2.3", 5000), [], True),
    (("10.1.2.3", 5000), ["10.1.2.3"], True),
    (("10.1.2.4", 5000), ["10.1.2.3"], False),
    (("10.1.2.4", 5000), ["10.1.0.0/16"], True),
    (("10.2.0.1", 5000), ["10.1.0.0/16", "192.168.0.0/24"], False),
    (("::ffff:10.1.2.3", 5000, 0, 0), ["10.1.2.3"], True),  # IPv4-mapped on a dual stack
    (("::1", 5000, 0, 0), ["127.0.0.1"], False),
    (("::1", 5000, 0, 0), ["::1"], True),
    (("fe80::1%eth0", 5000, 0, 2), ["fe80::/10"], True),
    ("/run/radproto.sock", ["10.0.0.0/8"], False),
    (None, ["10.0.0.0/8"], False),
])
def test_the_allow_list(peer, allow, expected):
    assert mllp_peer_allowed(peer, allow) is expected


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, key, issuer_name, issuer_key, *, ca=False, san_ip=None):
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject))
               .issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san_ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san_ip))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path, cert=None, key=None):
    data = b""
    if cert is not None:
        data += cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key, rogue_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca = _cert("Site CA", ca_key, _name("Site CA"), ca_key, ca=True)
    rogue = _cert("Rogue CA", rogue_key, _name("Rogue CA"), rogue_key, ca=True)
    server_key, client_key, bad_key = (ec.generate_private_key(ec.SECP256R1())
                                       for _ in range(3))
    return {
        "ca": _write(d / "ca.pem", ca),
        "server_cert": _write(d / "server.pem", _cert("radproto", server_key, ca.subject,
                                                      ca_key, san_ip="127.0.0.1")),
        "server_key": _write(d / "server.key", key=server_key),
        "client": _write(d / "client.pem", _cert("ris", client_key, ca.subject, ca_key),
                         client_key),
        "rogue_client": _write(d / "rogue.pem", _cert("ris", bad_key, rogue.subject,
                                                      rogue_key), bad_key),
    }


async def _serve(context: ssl.SSLContext):
    received: list[bytes] = []

    async def handle(reader, writer):
        try:
            data = await reader.readexactly(5)
            received.append(data)
            writer.write(b"ack:" + data)
            await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1], received


async def _exchange(port: int, pki, client_cert=None) -> bytes:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if client_cert is not None:
        context.load_cert_chain(str(client_cert))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        writer.write(b"hello")
        await writer.drain()
        return await asyncio.wait_for(reader.read(100), 5)
    finally:
        writer.close()


async def test_mutual_tls_requires_a_client_certificate_from_the_site_ca(pki):
    context = server_ssl_context(pki["server_cert"], pki["server_key"], pki["ca"])
    assert context.verify_mode == ssl.CERT_REQUIRED
    server, port, received = await _serve(context)
    async with server:
        assert await _exchange(port, pki, pki["client"]) == b"ack:hello"
        for bad in (None, pki["rogue_client"]):
            try:
                answer = await _exchange(port, pki, bad)
            except (ssl.SSLError, ConnectionError, OSError):
                answer = b""
            assert answer == b""
        assert received == [b"hello"]  # only the trusted client got through


async def test_tls_without_client_ca_accepts_any_client(pki):
    context = server_ssl_context(pki["server_cert"], pki["server_key"])
    assert context.verify_mode == ssl.CERT_NONE
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    server, port, _ = await _serve(context)
    async with server:
        assert await _exchange(port, pki) == b"ack:hello"


def test_bad_tls_files_name_the_setting(pki, tmp_path):
    with pytest.raises(ConfigError) as info:
        server_ssl_context(pki["server_key"], pki["server_key"])
    assert info.value.field == "security.mllp_tls_cert"
    with pytest.raises(ConfigError) as info:
        server_ssl_context(pki["server_cert"], pki["server_key"], tmp_path / "missing.pem")
    assert info.value.field == "security.mllp_tls_client_ca"


def test_the_guard_from_settings(pki):
    guard = MllpGuard.from_settings(SecuritySettings(
        mllp_allow=["10.0.0.0/8"], mllp_tls_cert=pki["server_cert"],
        mllp_tls_key=pki["server_key"], mllp_tls_client_ca=pki["ca"]))
    assert guard.ssl is not None and guard.ssl.verify_mode == ssl.CERT_REQUIRED
    assert guard.allowed(("10.9.9.9", 1)) and not guard.allowed(("11.0.0.1", 1))
