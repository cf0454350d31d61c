"""The connection to the real PostgreSQL server: TLS as `sslmode` says, then the real password (SCRAM-SHA-256, md5 or
cleartext, as the server asks), which the agent never holds."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import struct
from dataclasses import dataclass

from ..dbconfig import Database
from .wire import SSL_REQUEST, Message, ProtocolError, error_fields, message, read_message, startup_packet

#: Seconds to reach the server, agree on TLS and authenticate.
CONNECT_TIMEOUT = 15.0
_AUTH_OK, _CLEARTEXT, _MD5, _SASL, _SASL_CONTINUE, _SASL_FINAL = 0, 3, 5, 10, 11, 12


class UpstreamError(Exception):
    """The server could not be reached or refused the connection; `sqlstate` is the server's when it said one."""

    def __init__(self, text: str, sqlstate: str = "08001") -> None:
        super().__init__(text)
        self.sqlstate = sqlstate


@dataclass
class Upstream:
    """An authenticated connection, and what the server said once it was ready (ParameterStatus messages)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    parameters: list[Message]
    pid: int
    key: int
    status: bytes


def _tls_context(database: Database) -> ssl.SSLContext:
    if database.sslmode == "verify-full":
        context = ssl.create_default_context(cafile=str(database.ca) if database.ca else None)
        return context
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # require and prefer encrypt without checking, as libpq does
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _start_tls(database: Database, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Ask the server for TLS; True once it is on, False if the server declined and the mode allows that."""
    writer.write(struct.pack("!II", 8, SSL_REQUEST))
    await writer.drain()
    answer = await reader.readexactly(1)
    if answer == b"N":
        if database.sslmode in ("require", "verify-full"):
            raise UpstreamError(f"the server of database {database.name!r} does not offer TLS, and sslmode is "
                                f"{database.sslmode}")
        return False
    if answer != b"S":
        raise UpstreamError(f"the server of database {database.name!r} answered the TLS request with {answer!r}")
    await writer.start_tls(_tls_context(database), server_hostname=database.host)
    return True


async def connect(database: Database, password: str, client_params: dict[str, str]) -> Upstream:
    """An authenticated connection to the database's server, as its configured user; UpstreamError if not."""
    try:
        return await asyncio.wait_for(_connect(database, password, client_params), CONNECT_TIMEOUT)
    except TimeoutError:
        raise UpstreamError(f"the server of database {database.name!r} did not answer within {CONNECT_TIMEOUT:g}s") from None
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ProtocolError) as exc:
        raise UpstreamError(f"cannot reach the server of database {database.name!r}: "
                            f"{getattr(exc, 'strerror', None) or exc}") from None


async def _connect(database: Database, password: str, client_params: dict[str, str]) -> Upstream:
    reader, writer = await asyncio.open_connection(database.host, database.port)
    try:
        if database.sslmode != "disable":
            await _start_tls(database, reader, writer)
        writer.write(startup_packet({**client_params, "user": database.user, "database": database.dbname}))
        await writer.drain()
        await _authenticate(database, password, reader, writer)
        parameters: list[Message] = []
        pid = key = 0
        while True:
            msg = await _next(reader)
            if msg.kind == b"S":
                parameters.append(msg)
            elif msg.kind == b"K":
                pid, key = struct.unpack("!II", msg.payload[:8])
            elif msg.kind == b"Z":
                return Upstream(reader, writer, parameters, pid, key, msg.payload[:1])
            elif msg.kind == b"E":
                _refused(msg)
            # NoticeResponse and anything else before ReadyForQuery: not the agent's business
    except BaseException:
        writer.close()
        raise


async def _next(reader: asyncio.StreamReader) -> Message:
    msg = await read_message(reader)
    if msg is None:
        raise ProtocolError("the server closed the connection")
    return msg


def _refused(msg: Message) -> None:
    fields = error_fields(msg.payload)
    raise UpstreamError(f"the server refused: {fields.get('M', 'an error')}", fields.get("C", "08001"))


async def _authenticate(database: Database, password: str, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
    scram = None
    while True:
        msg = await _next(reader)
        if msg.kind == b"E":
            _refused(msg)
        if msg.kind != b"R":
            raise ProtocolError(f"expected authentication, got message {msg.kind!r}")
        (code,) = struct.unpack("!I", msg.payload[:4])
        data = msg.payload[4:]
        if code == _AUTH_OK:
            return
        if code == _CLEARTEXT:
            writer.write(message(b"p", password.encode() + b"\0"))
        elif code == _MD5:
            inner = hashlib.md5(password.encode() + database.user.encode()).hexdigest()  # noqa: S324 - the protocol's
            writer.write(message(b"p", b"md5" + hashlib.md5(inner.encode() + data[:4]).hexdigest().encode() + b"\0"))
        elif code == _SASL:
            mechanisms = [m.decode() for m in data.split(b"\0") if m]
            if "SCRAM-SHA-256" not in mechanisms:
                raise UpstreamError(f"the server offers {', '.join(mechanisms)}; goex-proxy speaks SCRAM-SHA-256")
            from scramp import ScramClient

            scram = ScramClient(["SCRAM-SHA-256"], database.user, password)
            first = scram.get_client_first().encode()
            writer.write(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
        elif code == _SASL_CONTINUE and scram is not None:
            scram.set_server_first(data.decode())
            writer.write(message(b"p", scram.get_client_final().encode()))
        elif code == _SASL_FINAL and scram is not None:
            try:
                scram.set_server_final(data.decode())
            except Exception as exc:  # noqa: BLE001 - scramp raises its own error: the server is not who it says
                raise UpstreamError(f"the server of database {database.name!r} failed SCRAM verification: {exc}") from None
        else:
            raise UpstreamError(f"the server asks for authentication method {code}, which goex-proxy does not speak")
        await writer.drain()
