"""The SSRF guard's address rules: which resolved addresses a request may reach."""

from __future__ import annotations

import ipaddress

import pytest

from goex_proxy.config import Config
from goex_proxy.globs import Glob
from goex_proxy.net.egress import EgressRules, address_class, literal_address, parse_allow


@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private network address (RFC 1918)"), ("172.16.0.1", "RFC 1918"), ("192.168.1.1", "RFC 1918"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("169.254.169.254", "cloud metadata"), ("fd00:ec2::254", "cloud metadata"), ("168.63.129.16", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("100.64.0.1", "carrier-grade NAT"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("0.1.2.3", "non-public"), ("240.0.0.1", "non-public"),
    ("::ffff:127.0.0.1", "IPv4-mapped"), ("::ffff:8.8.8.8", "IPv4-mapped"),
    ("64:ff9b::7f00:1", "embedding 127.0.0.1"), ("2002:7f00:1::", "embedding 127.0.0.1"),
    ("fd12:3456::1", "unique local"),
    # Each reaches an IPv4 address through a translator or the host's own stack (the red team's three, which Python
    # 3.11 calls global), whatever that address is; and a zone, which names one of this machine's interfaces.
    ("::127.0.0.1", "IPv4-compatible IPv6 address (of 127.0.0.1)"), ("::8.8.8.8", "IPv4-compatible"),
    ("::ffff:0:7f00:1", "IPv4-translated IPv6 address (of 127.0.0.1)"), ("::ffff:0:808:808", "IPv4-translated"),
    ("64:ff9b:1::a00:1", "local-use NAT64"), ("64:ff9b:1::808:808", "local-use NAT64"),
    ("2606:4700::1%eth0", "with a zone"), ("::1%lo", "with a zone"),
    # The second red team's: site-local, the rest of ::/8 and of 64:ff9b::/32 (Python 3.11 calls each global).
    ("fec0::1", "site-local"), ("fec0::a9fe:a9fe", "site-local"), ("0:0:1::ffff:7f00:1", "reserved IPv6 address (::/8)"),
    ("::5efe:7f00:1", "reserved IPv6 address (::/8)"), ("64:ff9b::1:7f00:1", "local-use NAT64"),
])
def test_non_public_addresses_are_refused_with_their_kind(address: str, why: str) -> None:
    reason = address_class(ipaddress.ip_address(address))
    assert reason is not None and why in reason


@pytest.mark.parametrize("address", ["8.8.8.8", "140.82.112.3", "2606:4700:4700::1111", "64:ff9b::808:808",
                                     "2001:4860:4860::8888", "2002:808:808::1"])
def test_public_addresses_pass(address: str) -> None:
    assert address_class(ipaddress.ip_address(address)) is None


def rules(*allow: str, listen: tuple[str, int] = ("127.0.0.1", 8080), block: bool = True) -> EgressRules:
    parsed = [parse_allow(a) for a in allow]
    return EgressRules(block, tuple(a for a in parsed if isinstance(a, Glob)),
                       tuple(a for a in parsed if not isinstance(a, Glob)), listen)


def ips(*text: str) -> list:
    return [ipaddress.ip_address(t) for t in text]


def test_every_address_of_a_name_must_be_allowed() -> None:
    """A name that resolves to a public and a private address is refused: the connection could go to either."""
    reason = rules().refusal("mixed.example", 443, ips("8.8.8.8", "10.0.0.5"))
    assert reason is not None and reason.startswith("mixed.example is 10.0.0.5 a private network address")
    assert "upstream.allow_private" in reason
    assert rules().refusal("dns.google", 443, ips("8.8.8.8", "2001:4860:4860::8888")) is None


def test_allow_private_by_network_or_host_glob() -> None:
    assert rules("10.1.0.0/16").refusal("db.internal", 443, ips("10.1.2.3")) is None
    assert rules("10.1.0.0/16").refusal("db.internal", 443, ips("10.2.0.1")) is not None
    assert rules("192.168.1.5").refusal("printer", 80, ips("192.168.1.5")) is None
    assert rules("*.corp.example").refusal("wiki.corp.example", 443, ips("10.9.9.9")) is None
    assert rules("*.corp.example").refusal("corp.example.evil.test", 443, ips("10.9.9.9")) is not None


def test_the_proxy_itself_is_refused_even_when_private_addresses_are_allowed() -> None:
    own = rules("127.0.0.0/8", block=False).refusal("127.0.0.1", 8080, ips("127.0.0.1"))
    assert own is not None and "this proxy's own listen address" in own
    assert rules("127.0.0.0/8").refusal("127.0.0.1", 8081, ips("127.0.0.1")) is None
    wildcard = rules(listen=("0.0.0.0", 3128), block=False)
    assert wildcard.refusal("localhost", 3128, ips("127.0.0.1")) is not None
    assert wildcard.refusal("example.com", 3128, ips("8.8.8.8")) is None  # not an address of this machine
    for spelled in ("::ffff:127.0.0.1", "::127.0.0.1", "::ffff:0:7f00:1", "64:ff9b::7f00:1", "2002:7f00:1::1"):
        # the listener, in IPv6's IPv4 forms (a translator or tunnel may carry each back to this machine)
        reason = rules(block=False).refusal(spelled, 8080, ips(spelled))
        assert reason is not None and "this proxy's own listen address" in reason, spelled


def test_turning_the_guard_off_allows_private_addresses() -> None:
    assert rules(block=False).refusal("db", 5432, ips("10.0.0.1")) is None


def test_literals_and_allow_entries_parse() -> None:
    assert literal_address("[::1]") == ipaddress.ip_address("::1")
    assert literal_address("10.0.0.1") == ipaddress.ip_address("10.0.0.1")
    assert literal_address("example.com") is None
    assert isinstance(parse_allow("*.corp.example"), Glob)
    with pytest.raises(ValueError):
        parse_allow("http://x/")


def test_config_reads_the_upstream_keys(tmp_path) -> None:
    from goex_proxy.config import config_problems

    file = tmp_path / "config.yaml"
    file.write_text("version: 1\nupstream:\n  block_private_networks: maybe\n  allow_private: ['10.0.0.0/33']\n"
                    "  resolver: dns.example\n")
    messages = [p.message for p in config_problems(file)]
    assert any("'upstream.block_private_networks' must be true or false" in m for m in messages), messages
    assert any("'upstream.allow_private' entry '10.0.0.0/33'" in m for m in messages), messages
    assert any("'upstream.resolver'" in m for m in messages), messages
    config = Config(file=file, state_dir=tmp_path, allow_private=("10.0.0.0/8", "*.corp"), resolver=("127.0.0.1", 53))
    assert config.egress.refusal("a.corp", 443, ips("172.16.0.1")) is None
    assert config.egress.refusal("b.other", 443, ips("10.3.3.3")) is None


def test_the_consoles_public_name_is_refused_whatever_it_resolves_to(tmp_path) -> None:
    """A console behind a reverse proxy, or at a public address no interface has, is refused by its name, as the
    approval links' public name is."""
    import ipaddress

    from goex_proxy.config import Config
    from goex_proxy.consoleconfig import Console

    config = Config(file=tmp_path / "config.yaml", state_dir=tmp_path,
                    console=Console(listen=("0.0.0.0", 8791), public_url="https://console.example.net:8791"))
    why = config.egress.refusal("Console.Example.NET.", 443, [ipaddress.ip_address("8.8.4.4")])
    assert why is not None and "web console" in why
    assert config.egress.refusal("other.example.net", 443, [ipaddress.ip_address("8.8.4.4")]) is None
