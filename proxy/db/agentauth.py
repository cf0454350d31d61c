"""The agent proves its goex-proxy token to the gateway by SCRAM-SHA-256 (RFC 5802, 7677), as a PostgreSQL server
asks for a password: the token itself never crosses the socket, so whatever might listen on the gateway's port in its
place learns nothing it could replay."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import struct

from .wire import MAX_STARTUP, ProtocolError, auth, read_message

MECHANISM = "SCRAM-SHA-256"
ITERATIONS = 4096
_SASL, _SASL_CONTINUE, _SASL_FINAL = 10, 11, 12


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _normalized(token: str) -> bytes:
    """The token as clients hash it (SASLprep, as libpq does; as it is when SASLprep refuses it, as PostgreSQL does)."""
    from scramp.core import saslprep

    try:
        return str(saslprep(token)).encode()
    except Exception:  # noqa: BLE001 - scramp raises its own error for text SASLprep does not allow
        return token.encode()


def _attributes(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if sep and len(key) == 1:
            out.setdefault(key, value)
    return out


class Exchange:
    """The server's side of one SCRAM-SHA-256 exchange over a known token (pure: messages in, messages out)."""

    def __init__(self, token: str, salt: bytes | None = None, nonce: str | None = None) -> None:
        self.salt = salt or secrets.token_bytes(16)
        salted = hashlib.pbkdf2_hmac("sha256", _normalized(token), self.salt, ITERATIONS)
        self.stored_key = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
        self.server_key = _hmac(salted, b"Server Key")
        self.server_nonce = nonce or secrets.token_urlsafe(18)
        self.first_bare = self.server_first = self.gs2 = self.nonce = ""

    def first(self, client_first: str) -> str:
        """The server-first message for the client-first one; ValueError if it is not one goex-proxy accepts."""
        if not client_first.startswith(("n,", "y,")):
            raise ValueError("channel binding is not offered (the gateway listens without TLS)")
        header_end = client_first.index(",", 2) + 1
        self.gs2, self.first_bare = client_first[:header_end], client_first[header_end:]
        client_nonce = _attributes(self.first_bare).get("r", "")
        if not client_nonce:
            raise ValueError("no client nonce")
        self.nonce = client_nonce + self.server_nonce
        self.server_first = f"r={self.nonce},s={base64.b64encode(self.salt).decode()},i={ITERATIONS}"
        return self.server_first

    def final(self, client_final: str) -> str | None:
        """The server-final message if the client's proof shows it knows the token, else None."""
        without_proof, sep, proof_text = client_final.rpartition(",p=")
        found = _attributes(without_proof)
        if not sep or found.get("r") != self.nonce or found.get("c") != base64.b64encode(self.gs2.encode()).decode():
            return None
        try:
            proof = base64.b64decode(proof_text, validate=True)
        except ValueError:
            return None
        message = f"{self.first_bare},{self.server_first},{without_proof}".encode()
        signature = _hmac(self.stored_key, message)
        if len(proof) != len(signature):
            return None
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.stored_key):
            return None
        return "v=" + base64.b64encode(_hmac(self.server_key, message)).decode()


async def prove(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: str | None) -> bool:
    """Whether the client knows `token` (None: an unknown agent, run through a token no one knows, so that the
    answer does not tell which agents exist)."""
    exchange = Exchange(token if token is not None else secrets.token_urlsafe(32))
    writer.write(auth(_SASL, MECHANISM.encode() + b"\0\0"))
    await writer.drain()
    initial = await _password_message(reader)
    name_end = initial.find(b"\0")
    if name_end < 0 or initial[:name_end] != MECHANISM.encode() or len(initial) < name_end + 5:
        raise ProtocolError(f"the client did not choose {MECHANISM}")
    (length,) = struct.unpack_from("!i", initial, name_end + 1)
    try:
        server_first = exchange.first(initial[name_end + 5:name_end + 5 + max(length, 0)].decode())
    except (ValueError, UnicodeDecodeError):
        return False
    writer.write(auth(_SASL_CONTINUE, server_first.encode()))
    await writer.drain()
    try:
        server_final = exchange.final((await _password_message(reader)).decode())
    except UnicodeDecodeError:
        return False
    if server_final is None or token is None:
        return False
    writer.write(auth(_SASL_FINAL, server_final.encode()))
    return True


async def _password_message(reader: asyncio.StreamReader) -> bytes:
    reply = await read_message(reader, MAX_STARTUP)
    if reply is None or reply.kind != b"p":
        raise ProtocolError("no authentication message from the client")
    return reply.payload
