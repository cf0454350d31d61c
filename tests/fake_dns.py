"""A scriptable DNS server on 127.0.0.1 over UDP: names answer with set addresses, which may change per query."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from types import TracebackType

from mitmproxy import dns
from mitmproxy.net.dns import response_codes, types


class FakeDNS:
    """Answers A and AAAA questions from `set` with TTL 0, NXDOMAIN for unknown names; records every question.

    `set(name, ["10.0.0.1", "::1"])` answers the same every time; `set(name, [["1.2.3.4"], ["127.0.0.1"]])` answers
    the first list to the first question of each type about `name`, the second to the next, then the last forever.
    `alias(name, target)` answers questions about `name` with a CNAME to `target` followed by `target`'s records.
    """

    def __init__(self) -> None:
        self.queries: list[tuple[str, int]] = []
        self._steps: dict[str, list[list[str]]] = {}
        self._aliases: dict[str, str] = {}
        self._asked: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, name="fake-dns", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """Where the server listens, as `resolve` takes it."""
        host, port = self._sock.getsockname()
        return str(host), int(port)

    def set(self, name: str, answers: list[str] | list[list[str]]) -> None:
        """Answer `name` with `answers`: one list of IP strings, or one list per successive question."""
        steps = [list(step) for step in answers if isinstance(step, list)] or [[str(ip) for ip in answers]]
        with self._lock:
            self._steps[_key(name)] = steps
            for kind in (types.A, types.AAAA):
                self._asked.pop((_key(name), kind), None)

    def alias(self, name: str, target: str) -> None:
        """Answer questions about `name` with a CNAME record pointing to `target`, then `target`'s addresses."""
        with self._lock:
            self._aliases[_key(name)] = _key(target)

    def start(self) -> FakeDNS:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        self._sock.close()

    def __enter__(self) -> FakeDNS:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _serve(self) -> None:
        """Answer each query datagram until stopped; ignore anything that is not one."""
        while not self._stopping.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            try:
                query = dns.Message.unpack(data)
            except (struct.error, ValueError):
                continue
            if query.query and query.question is not None:
                self._sock.sendto(self._answer(query, query.question).packed, peer)

    def _answer(self, query: dns.Message, question: dns.Question) -> dns.Message:
        """The reply to `question`, taking the next scripted answer of its name and type."""
        name = _key(question.name)
        with self._lock:
            self.queries.append((name, question.type))
            records: list[dns.ResourceRecord] = []
            if name in self._aliases:
                records.append(dns.ResourceRecord.CNAME(question.name, self._aliases[name], ttl=0))
                name = self._aliases[name]
            steps = self._steps.get(name)
            if steps is None:
                return query.fail(response_codes.NXDOMAIN)
            asked = self._asked.get((name, question.type), 0)
            self._asked[(name, question.type)] = asked + 1
        owner = records[0].domain_name if records else question.name
        for ip in map(ipaddress.ip_address, steps[min(asked, len(steps) - 1)]):
            if isinstance(ip, ipaddress.IPv4Address) and question.type == types.A:
                records.append(dns.ResourceRecord.A(owner, ip, ttl=0))
            elif isinstance(ip, ipaddress.IPv6Address) and question.type == types.AAAA:
                records.append(dns.ResourceRecord.AAAA(owner, ip, ttl=0))
        return query.succeed(records)


def _key(name: str) -> str:
    """`name` as the server looks it up: lower case, no trailing dot."""
    return name.lower().removesuffix(".")
