"""TLS between the agent and the gateway (`databases.tls`): a certificate for the gateway issued by goex-proxy's own CA,
which agents already trust, and a client's connection upgraded when it asks."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import secrets
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .wire import ProtocolError

#: The CA's key and certificate in the state directory (mitmproxy's name for them); only goex-proxy reads the key.
CA_FILE = "mitmproxy-ca.pem"
#: How long a certificate the gateway makes is valid; a gateway running longer makes the next one a day before.
LEAF_DAYS = 90
#: What a listen address that is every address is reached at from this machine.
_WILDCARDS = {"", "0.0.0.0", "::"}
REQUIRED = ("goex-proxy's database gateway accepts only encrypted connections ('databases.tls: require' in its "
            "config): connect with sslmode=verify-full (or require), as the DATABASE_URL goex-proxy gives does")


def names(listen_host: str) -> tuple[str, ...]:
    """The names and addresses the gateway's certificate is for: where it listens, and this machine's loopback (a
    jailed agent reaches it at 127.0.0.1)."""
    out = [] if listen_host in _WILDCARDS else [listen_host.lower()]
    return tuple(dict.fromkeys([*out, "127.0.0.1", "::1", "localhost"]))


@dataclass
class _Made:
    context: ssl.SSLContext
    listen_host: str
    renew_after: datetime.datetime


class Certificates:
    """The gateway's TLS server context, made once from the state directory's CA (again when it nears its end)."""

    def __init__(self) -> None:
        self._made: _Made | None = None

    def context(self, state_dir: Path, listen_host: str) -> ssl.SSLContext:
        now = datetime.datetime.now(datetime.UTC)
        made = self._made
        if made is None or made.listen_host != listen_host or now >= made.renew_after:
            context, ends = server_context(state_dir, listen_host, now)
            made = self._made = _Made(context, listen_host, ends - datetime.timedelta(days=1))
        return made.context


def server_context(state_dir: Path, listen_host: str,
                   now: datetime.datetime) -> tuple[ssl.SSLContext, datetime.datetime]:
    """A TLS 1.2+ server context with a new key and a certificate for `names(listen_host)` signed by the CA, and when
    that certificate ends; OSError or ValueError when the CA cannot be read."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pem = (state_dir / CA_FILE).read_bytes()
    ca_cert = x509.load_pem_x509_certificate(pem)
    ca_key = serialization.load_pem_private_key(pem, None)
    if not isinstance(ca_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("its key is neither RSA nor EC")
    key = ec.generate_private_key(ec.SECP256R1())
    ends = min(now + datetime.timedelta(days=LEAF_DAYS), ca_cert.not_valid_after_utc)
    alt: list[x509.GeneralName] = []
    for name in names(listen_host):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "goex-proxy database gateway")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))  # a client whose clock is a little behind
        .not_valid_after(ends)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # ssl loads a key only from a file: the file, in the state directory (which jails hide), holds it encrypted under
    # a password that stays in memory, and is removed at once.
    password = secrets.token_bytes(32)
    blob = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password))
    fd, path = tempfile.mkstemp(prefix=".gateway-tls-", suffix=".pem", dir=state_dir)  # 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(blob)
        context.load_cert_chain(path, password=password)
    finally:
        os.unlink(path)
    return context, ends


async def upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext) -> None:
    """Answer a client's SSLRequest with S and go on in TLS. Bytes the client sent after its request, before the
    handshake, are refused, as PostgreSQL refuses them (CVE-2021-23214): read as if they came encrypted, they would
    let someone on the path put a startup packet or a statement in front of the client's own."""
    if _buffered(reader):
        raise ProtocolError("the client sent unencrypted data after its SSLRequest")
    writer.write(b"S")
    await writer.drain()
    if _buffered(reader):  # arrived while S went out; from here to the upgrade nothing else runs
        raise ProtocolError("the client sent unencrypted data after its SSLRequest")
    try:
        await writer.start_tls(context)
    except (ssl.SSLError, OSError) as exc:
        raise ProtocolError(f"TLS handshake failed: {exc}") from None


def _buffered(reader: asyncio.StreamReader) -> bool:
    """Whether the reader holds bytes not yet read (asyncio says so only in its private buffer; a Python without it
    counts as holding some: no TLS rather than TLS that could be spoofed)."""
    buffer = getattr(reader, "_buffer", None)
    return buffer is None or len(buffer) > 0
