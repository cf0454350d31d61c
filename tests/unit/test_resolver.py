"""The resolver: literals never looked up, A and AAAA from a real UDP DNS server, clear errors, the system path."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from ipaddress import ip_address

import pytest
from mitmproxy.net.dns import types

from goex_proxy.net.resolver import ResolveError, parse_server, resolve
from tests.fake_dns import FakeDNS


@pytest.fixture
def fake_dns() -> Iterator[FakeDNS]:
    with FakeDNS() as server:
        yield server


@pytest.mark.parametrize("host, expected", [
    ("10.1.2.3", "10.1.2.3"),
    ("::1", "::1"),
    ("[2001:db8::7]", "2001:db8::7"),
])
def test_literal_needs_no_query(fake_dns: FakeDNS, host: str, expected: str) -> None:
    """An IP literal, bracketed IPv6 included, comes back alone and no DNS question is asked."""
    assert asyncio.run(resolve(host, 443, fake_dns.address)) == [ip_address(expected)]
    assert fake_dns.queries == []


def test_zoned_ipv6_literal_is_refused(fake_dns: FakeDNS) -> None:
    """An IPv6 literal with a zone names a local interface, so it is refused, not resolved."""
    with pytest.raises(ResolveError, match="zone"):
        asyncio.run(resolve("fe80::1%eth0", 443, fake_dns.address))
    assert fake_dns.queries == []


def test_a_and_aaaa_both_returned(fake_dns: FakeDNS) -> None:
    """Both A and AAAA are asked, and the addresses of both come back, A first, each once."""
    fake_dns.set("both.test", ["192.0.2.1", "2001:db8::1", "192.0.2.2", "192.0.2.1"])
    got = asyncio.run(resolve("Both.Test.", 443, fake_dns.address))
    assert got == [ip_address("192.0.2.1"), ip_address("192.0.2.2"), ip_address("2001:db8::1")]
    assert sorted(fake_dns.queries) == [("both.test", types.A), ("both.test", types.AAAA)]


def test_cname_followed_within_the_answer(fake_dns: FakeDNS) -> None:
    """A CNAME in the answer section leads to the addresses given there for its target."""
    fake_dns.set("real.test", ["198.51.100.9"])
    fake_dns.alias("www.test", "real.test")
    assert asyncio.run(resolve("www.test", 80, fake_dns.address)) == [ip_address("198.51.100.9")]
    assert {name for name, _ in fake_dns.queries} == {"www.test"}


def test_nxdomain_names_host_and_server(fake_dns: FakeDNS) -> None:
    """An unknown name fails with a message naming the host, the server and NXDOMAIN."""
    host, port = fake_dns.address
    with pytest.raises(ResolveError) as raised:
        asyncio.run(resolve("x.test", 443, fake_dns.address))
    assert str(raised.value) == f"no address for 'x.test' (DNS server {host}:{port} answered NXDOMAIN)"


def test_name_without_addresses_fails(fake_dns: FakeDNS) -> None:
    """A name that exists but has no A or AAAA record fails rather than returning nothing."""
    fake_dns.set("empty.test", [])
    with pytest.raises(ResolveError, match="'empty.test'.*no A or AAAA record"):
        asyncio.run(resolve("empty.test", 443, fake_dns.address))


def test_each_resolve_gets_the_next_answer(fake_dns: FakeDNS) -> None:
    """A name that changes its answer between lookups (DNS rebinding) is seen changing, one step per resolve."""
    fake_dns.set("rebind.test", [["203.0.113.5"], ["127.0.0.1", "::1"]])
    first = asyncio.run(resolve("rebind.test", 443, fake_dns.address))
    second = asyncio.run(resolve("rebind.test", 443, fake_dns.address))
    third = asyncio.run(resolve("rebind.test", 443, fake_dns.address))
    assert first == [ip_address("203.0.113.5")]
    assert second == third == [ip_address("127.0.0.1"), ip_address("::1")]


def test_silent_server_times_out() -> None:
    """A server that never answers fails with a timeout after one retry, within the time asked."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        started = time.monotonic()
        with pytest.raises(ResolveError, match=r"'quiet.test'.*127\.0\.0\.1:\d+ did not answer: timeout after 2 tries"):
            asyncio.run(resolve("quiet.test", 443, silent.getsockname(), timeout=0.3))
        assert 0.5 < time.monotonic() - started < 2.0


def test_closed_port_is_unreachable() -> None:
    """A server port nobody listens on fails at once as unreachable instead of waiting for the timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
        gone.bind(("127.0.0.1", 0))
        address = gone.getsockname()
    with pytest.raises(ResolveError, match="'gone.test'.*unreachable"):
        asyncio.run(resolve("gone.test", 443, address, timeout=5.0))


def test_invalid_name_is_refused(fake_dns: FakeDNS) -> None:
    """A name DNS cannot carry fails before any question is sent."""
    with pytest.raises(ResolveError, match="not a valid host name"):
        asyncio.run(resolve("a..test", 443, fake_dns.address))
    assert fake_dns.queries == []


def test_system_resolver_finds_localhost() -> None:
    """Without a server the system resolver answers, and `localhost` is a loopback address."""
    got = asyncio.run(resolve("localhost", 80))
    assert got and all(address.is_loopback for address in got)
    assert len(got) == len(set(got))


def test_system_resolver_failure_names_host() -> None:
    """A name the system resolver cannot find fails with a message naming it."""
    with pytest.raises(ResolveError, match="no address for 'nothing.invalid'"):
        asyncio.run(resolve("nothing.invalid", 80))


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("10.0.0.2", ("10.0.0.2", 53)),
    ("[::1]:53", ("::1", 53)),
    ("[::1]", ("::1", 53)),
    ("::1", ("::1", 53)),
])
def test_parse_server_accepts(text: str, expected: tuple[str, int]) -> None:
    """An IP address with or without a port, IPv6 in brackets when it has one, is a server."""
    assert parse_server(text) == expected


@pytest.mark.parametrize("text, message", [
    ("dns.example:53", "IP address"),
    ("", "IP address"),
    ("[::1", "IP address"),
    ("[::1]53", "IP address"),
    ("fe80::1%eth0", "IP address"),
    ("127.0.0.1:0", "port"),
    ("127.0.0.1:65536", "port"),
    ("127.0.0.1:dns", "port"),
    ("[::1]:", "port"),
    ("127.0.0.1:", "port"),
])
def test_parse_server_refuses(text: str, message: str) -> None:
    """A name, a malformed address or a bad port is refused with a message quoting the value."""
    with pytest.raises(ValueError, match=message) as raised:
        parse_server(text)
    assert repr(text) in str(raised.value)
