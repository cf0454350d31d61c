"""PostgreSQL v3 protocol messages: reading them off a stream, and the few the gateway builds or reads inside."""

from __future__ import annotations

import asyncio
import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

_T = TypeVar("_T")

#: Startup codes (a startup packet has no type byte: a length, then one of these).
PROTOCOL_3 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
#: The most a message may be: PostgreSQL's own cap for a startup packet is 10000 bytes; a query may be large.
MAX_STARTUP = 10000
MAX_MESSAGE = 64 * 1024 * 1024


class ProtocolError(Exception):
    """The peer did not speak the protocol (a length out of range, a message cut short)."""


@dataclass(frozen=True)
class Message:
    kind: bytes      # one byte: b"Q", b"P", b"Z", ...
    payload: bytes

    def encode(self) -> bytes:
        return self.kind + struct.pack("!I", len(self.payload) + 4) + self.payload


def message(kind: bytes, payload: bytes = b"") -> bytes:
    return Message(kind, payload).encode()


async def read_message(reader: asyncio.StreamReader, limit: int = MAX_MESSAGE) -> Message | None:
    """The next typed message, or None at a clean end of the stream; ProtocolError past `limit` bytes."""
    head = await reader.read(1)
    if not head:
        return None
    try:
        (length,) = struct.unpack("!I", await reader.readexactly(4))
        if not 4 <= length <= limit:
            raise ProtocolError(f"a message of {length} bytes")
        return Message(head, await reader.readexactly(length - 4))
    except asyncio.IncompleteReadError:
        raise ProtocolError("the stream ended inside a message") from None


class Framer:
    """The messages of a stream in batches: every complete message read so far, so that what a peer sent together
    is relayed together (one write, not one per message)."""

    READ_SIZE = 256 * 1024

    def __init__(self, reader: asyncio.StreamReader, limit: int = MAX_MESSAGE) -> None:
        self.reader, self.limit = reader, limit
        self.buffer = bytearray()

    async def batch(self) -> list[Message] | None:
        """At least one message; None at a clean end of the stream (ProtocolError inside a message)."""
        while not (found := self._complete()):
            chunk = await self.reader.read(self.READ_SIZE)
            if not chunk:
                if self.buffer:
                    raise ProtocolError("the stream ended inside a message")
                return None
            self.buffer += chunk
        return found

    def _complete(self) -> list[Message]:
        out: list[Message] = []
        at, buffer = 0, self.buffer
        while len(buffer) - at >= 5:
            length = int.from_bytes(buffer[at + 1:at + 5], "big")
            if not 4 <= length <= self.limit:
                raise ProtocolError(f"a message of {length} bytes")
            if len(buffer) - at - 1 < length:
                break
            out.append(Message(bytes(buffer[at:at + 1]), bytes(buffer[at + 5:at + 1 + length])))
            at += 1 + length
        del buffer[:at]
        return out


async def read_startup(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """A startup packet: its code and the rest."""
    try:
        (length,) = struct.unpack("!I", await reader.readexactly(4))
        if not 8 <= length <= MAX_STARTUP:
            raise ProtocolError(f"a startup packet of {length} bytes")
        body = await reader.readexactly(length - 4)
    except asyncio.IncompleteReadError:
        raise ProtocolError("the stream ended inside the startup packet") from None
    return struct.unpack("!I", body[:4])[0], body[4:]


def startup_packet(params: dict[str, str]) -> bytes:
    body = struct.pack("!I", PROTOCOL_3) + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items())
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def parse_params(body: bytes) -> dict[str, str]:
    """A startup packet's key/value pairs."""
    parts = body.split(b"\0")
    out: dict[str, str] = {}
    for key, value in zip(parts[0::2], parts[1::2], strict=False):
        if not key:
            break
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return out


def _decoder(read: Callable[[bytes], _T]) -> Callable[[bytes], _T]:
    """A reader of a message's payload whose malformed payload (a string without its NUL, a count past the end) is
    a ProtocolError: the connection ends, as for any other peer that does not speak the protocol."""
    @functools.wraps(read)
    def checked(payload: bytes) -> _T:
        try:
            return read(payload)
        except (struct.error, ValueError, IndexError) as exc:
            raise ProtocolError(f"a malformed {read.__name__.split('_')[0]} message: {exc}") from None
    return checked


def cstring(data: bytes, at: int) -> tuple[str, int]:
    """A NUL-terminated string at `at`, and where the next field starts."""
    end = data.index(b"\0", at)
    return data[at:end].decode("utf-8", "replace"), end + 1


def error_response(sqlstate: str, text: str, severity: str = "ERROR", hint: str | None = None) -> bytes:
    fields = [(b"S", severity), (b"V", severity), (b"C", sqlstate), (b"M", text)]
    if hint:
        fields.append((b"H", hint))
    return message(b"E", b"".join(k + v.encode("utf-8", "replace") + b"\0" for k, v in fields) + b"\0")


@_decoder
def error_fields(payload: bytes) -> dict[str, str]:
    """An ErrorResponse's fields by their code letter (S, C, M, ...)."""
    out: dict[str, str] = {}
    at = 0
    while at < len(payload) and payload[at:at + 1] != b"\0":
        code = payload[at:at + 1].decode()
        value, at = cstring(payload, at + 1)
        out[code] = value
    return out


@_decoder
def query_text(payload: bytes) -> str:
    """A simple Query's SQL."""
    return cstring(payload, 0)[0]


@dataclass(frozen=True)
class Parse:
    statement: str
    sql: str
    types: tuple[int, ...] = ()   # the parameters' type OIDs the client gave (0: for the server to infer)


@_decoder
def parse_message(payload: bytes) -> Parse:
    name, at = cstring(payload, 0)
    sql, at = cstring(payload, at)
    (count,) = struct.unpack_from("!H", payload, at)
    return Parse(name, sql, struct.unpack_from(f"!{count}I", payload, at + 2))


def parse_payload(statement: str, sql: str, types: tuple[int, ...] = ()) -> bytes:
    return statement.encode() + b"\0" + sql.encode() + b"\0" + struct.pack(f"!H{len(types)}I", len(types), *types)


@dataclass(frozen=True)
class Bind:
    portal: str
    statement: str
    params: tuple[bytes | None, ...]
    formats: tuple[int, ...]    # per parameter: 0 text, 1 binary


@_decoder
def bind_message(payload: bytes) -> Bind:
    portal, at = cstring(payload, 0)
    statement, at = cstring(payload, at)
    (count,) = struct.unpack_from("!H", payload, at)
    codes = struct.unpack_from(f"!{count}H", payload, at + 2)
    at += 2 + 2 * count
    (n,) = struct.unpack_from("!H", payload, at)
    at += 2
    params: list[bytes | None] = []
    for _ in range(n):
        (size,) = struct.unpack_from("!i", payload, at)
        at += 4
        if size < 0:
            params.append(None)
        else:
            params.append(payload[at:at + size])
            at += size
    formats = tuple(codes[i] if count > 1 else (codes[0] if count == 1 else 0) for i in range(n))
    return Bind(portal, statement, tuple(params), formats)


@_decoder
def execute_portal(payload: bytes) -> str:
    return cstring(payload, 0)[0]


@_decoder
def close_target(payload: bytes) -> tuple[str, str]:
    """A Close's kind (S statement, P portal) and name."""
    return payload[:1].decode(), cstring(payload, 1)[0]


@_decoder
def parameter_types(payload: bytes) -> tuple[int, ...]:
    """A ParameterDescription's type OIDs: the server's answer to a Describe of a statement."""
    (count,) = struct.unpack_from("!H", payload, 0)
    return struct.unpack_from(f"!{count}I", payload, 2)


def auth(code: int, extra: bytes = b"") -> bytes:
    return message(b"R", struct.pack("!I", code) + extra)


def ready(status: bytes) -> bytes:
    return message(b"Z", status)


def backend_key(pid: int, key: int) -> bytes:
    return message(b"K", struct.pack("!II", pid, key))
