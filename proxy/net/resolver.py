"""Host names resolved to IP addresses, by the system resolver or by asking one DNS server over UDP."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import secrets
import socket
import struct
import time

from mitmproxy import dns
from mitmproxy.net.dns import classes, domain_names, op_codes, response_codes, types

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_TRIES = 2


class ResolveError(Exception):
    """A host that has no address to connect to; the message names the host and who was asked."""


class _NoReply(Exception):
    """The DNS server gave no usable reply to one question; the message says why."""


def parse_server(text: str) -> tuple[str, int]:
    """Parse `IP`, `IP:PORT` or `[IPv6]:PORT` (port 53 by default); raise ValueError naming the bad value."""
    host, port = text.strip(), "53"
    if host.startswith("["):
        host, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            host = ""
        elif rest:
            port = rest[1:]
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or (isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None):
        raise ValueError(f"must be a DNS server IP address like 127.0.0.1:5353, [::1]:53 or 10.0.0.2 (got {text!r})")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must name a port from 1 to 65535 after the DNS server's address (got {text!r})")
    return str(address), int(port)


async def resolve(host: str, port: int, server: tuple[str, int] | None = None, timeout: float = 5.0) -> list[Address]:
    """The addresses of `host`, each once: itself if an IP literal, else from `server` or the system resolver.

    `timeout` bounds each question to `server` (asked twice at most), or the whole system lookup.
    """
    if not host:
        raise ResolveError("no host name to resolve")
    literal = _literal(host)
    if literal is not None:
        return [literal]
    if server is None:
        return await _system(host, port, timeout)
    return await _ask(host, server, timeout)


def _literal(host: str) -> Address | None:
    """The address `host` spells out (`10.0.0.1`, `::1`, `[::1]`), or None if it is a name."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise ResolveError(f"refusing {host!r}: an IPv6 address with a zone names a local interface")
    return address


async def _system(host: str, port: int, timeout: float) -> list[Address]:
    """The addresses the system resolver gives for `host`, in its order."""
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
    except socket.gaierror as e:
        raise ResolveError(f"no address for {host!r} (system resolver: {e.strerror})") from e
    except TimeoutError as e:
        raise ResolveError(f"no address for {host!r} (system resolver: timeout after {timeout:g}s)") from e
    except UnicodeError as e:
        raise ResolveError(f"no address for {host!r}: not a valid host name ({e})") from e
    found = [ipaddress.ip_address(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
    if not found:
        raise ResolveError(f"no address for {host!r} (system resolver returned no IP address)")
    return list(dict.fromkeys(found))


async def _ask(host: str, server: tuple[str, int], timeout: float) -> list[Address]:
    """The A then AAAA addresses `server` gives for `host`, both asked at once; either kind suffices."""
    name = host.lower().removesuffix(".")
    try:
        domain_names.pack(name)
    except ValueError as e:
        raise ResolveError(f"no address for {host!r}: not a valid host name ({e})") from e
    qtypes = (types.A, types.AAAA)
    outcomes = await asyncio.gather(*(_query(name, qtype, server, timeout) for qtype in qtypes),
                                    return_exceptions=True)
    found: list[Address] = []
    reasons: list[str] = []
    for qtype, outcome in zip(qtypes, outcomes, strict=True):
        if isinstance(outcome, _NoReply):
            reasons.append(str(outcome))
        elif isinstance(outcome, BaseException):
            raise outcome
        elif outcome.response_code != response_codes.NOERROR:
            reasons.append(f"answered {response_codes.to_str(outcome.response_code)}")
        else:
            found += _addresses(outcome, name, qtype)
    if found:
        return list(dict.fromkeys(found))
    reason = reasons[0] if reasons else "has no A or AAAA record for it"
    raise ResolveError(f"no address for {host!r} (DNS server {_where(server)} {reason})")


async def _query(name: str, qtype: int, server: tuple[str, int], timeout: float) -> dns.Message:
    """The reply of `server` to one question about `name`, asked again once if the first goes unanswered."""
    loop = asyncio.get_running_loop()
    for _ in range(_TRIES):
        question = _question(name, qtype)
        try:
            transport, exchange = await loop.create_datagram_endpoint(
                functools.partial(_Exchange, question), remote_addr=server)
            try:
                transport.sendto(question.packed)
                return await asyncio.wait_for(exchange.reply, timeout)
            finally:
                transport.close()
        except TimeoutError:
            continue
        except OSError as e:
            raise _NoReply(f"is unreachable: {e.strerror or e}") from e
    raise _NoReply(f"did not answer: timeout after {_TRIES} tries of {timeout:g}s")


def _question(name: str, qtype: int) -> dns.Message:
    """A recursive query for records of `qtype` of `name`, with a fresh random id."""
    return dns.Message(
        timestamp=time.time(), id=secrets.randbelow(65536), query=True, op_code=op_codes.QUERY,
        authoritative_answer=False, truncation=False, recursion_desired=True, recursion_available=False,
        reserved=0, response_code=response_codes.NOERROR, questions=[dns.Question(name, qtype, classes.IN)],
        answers=[], authorities=[], additionals=[])


class _Exchange(asyncio.DatagramProtocol):
    """One question asked on a connected UDP socket; `reply` gets the first datagram that answers it."""

    def __init__(self, question: dns.Message) -> None:
        self.question = question
        self.reply: asyncio.Future[dns.Message] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | bytes | int, ...]) -> None:
        """Take a reply with the question's id and question; drop anything else."""
        try:
            message = dns.Message.unpack(data)
        except (struct.error, ValueError):
            return
        asked = [(q.name.lower(), q.type, q.class_) for q in self.question.questions]
        answered = [(q.name.lower(), q.type, q.class_) for q in message.questions]
        if not self.reply.done() and not message.query and message.id == self.question.id and answered == asked:
            self.reply.set_result(message)

    def error_received(self, exc: Exception) -> None:
        """An ICMP error (port unreachable) ends the exchange."""
        if not self.reply.done():
            self.reply.set_exception(exc)


def _addresses(reply: dns.Message, name: str, qtype: int) -> list[Address]:
    """The `qtype` addresses the answer section gives for `name` or the names its CNAME chain there leads to."""
    records = [rr for rr in reply.answers if rr.class_ == classes.IN]
    cnames = [(rr.name.lower(), _target(rr)) for rr in records if rr.type == types.CNAME]
    names, grown = {name}, True
    while grown:
        targets = {target for owner, target in cnames if owner in names and target is not None}
        grown = not targets <= names
        names |= targets
    size = 4 if qtype == types.A else 16
    return [ipaddress.ip_address(rr.data) for rr in records
            if rr.type == qtype and rr.name.lower() in names and len(rr.data) == size]


def _target(record: dns.ResourceRecord) -> str | None:
    """The lower-cased name a CNAME record points to, or None if its data is not a name."""
    try:
        return record.domain_name.lower()
    except (struct.error, ValueError):
        return None


def _where(server: tuple[str, int]) -> str:
    """`server` written as HOST:PORT, IPv6 in brackets."""
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
