"""The SSRF guard's rules: which upstream addresses a request may reach after its name is resolved."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..globs import Glob, compile_host
from ..hostkey import host_key

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Cloud instance-metadata endpoints (AWS, GCP, Azure, Oracle, OpenStack; ECS tasks; Alibaba; AWS over IPv6; Azure's
#: wire server), some of them outside the private ranges.
METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254", "168.63.129.16"))
_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: IPv6 ranges that stand for an IPv4 address where a translator or the host's own stack carries them, none of them
#: global (Python 3.11 calls them so): IPv4-compatible (`::a.b.c.d`, RFC 4291, deprecated), IPv4-translated
#: (`::ffff:0:a.b.c.d`, RFC 2765's SIIT) and NAT64 prefixes other than the well-known one (the local-use
#: 64:ff9b:1::/48 of RFC 8215, and the rest of 64:ff9b::/32); the rest of ::/8, reserved by the IETF, and site-local
#: fec0::/10 (deprecated, still routed where a network uses it) are no one's public address either.
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_OTHER_NAT64 = ipaddress.ip_network("64:ff9b::/32")
_RESERVED_V6 = ipaddress.ip_network("::/8")


def _low_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries for a translator or tunnel to reach: 6to4, well-known NAT64, mapped,
    translated or compatible (None: none)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _IPV4_TRANSLATED or ip in _IPV4_COMPATIBLE and int(ip) > 1:
        return _low_ipv4(ip)
    return None


def address_class(ip: Address) -> str | None:
    """Why a connection to `ip` is one the SSRF guard refuses by default, or None for a public address."""
    if ip in METADATA:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            return "an IPv6 address with a zone, which names a local interface"
        if ip.ipv4_mapped is not None:
            return f"an IPv4-mapped IPv6 address (of {ip.ipv4_mapped})"
        if ip in _IPV4_TRANSLATED:
            return f"an IPv4-translated IPv6 address (of {_low_ipv4(ip)})"
        if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # not :: or ::1, named below
            return f"an IPv4-compatible IPv6 address (of {_low_ipv4(ip)})"
        if ip in _OTHER_NAT64 and ip not in _NAT64:
            return "a local-use NAT64 address (64:ff9b::/32 outside the well-known 64:ff9b::/96)"
        if ip in _RESERVED_V6 and int(ip) > 1 and ip not in _NAT64:  # (64:ff9b::/96 is in it, decoded below)
            return "a reserved IPv6 address (::/8)"
        if ip.is_site_local:
            return "a site-local IPv6 address (fec0::/10)"
        embedded = _embedded_ipv4(ip)
        if embedded is not None and (inner := address_class(embedded)) is not None:
            return f"an IPv6 address embedding {embedded}, {inner}"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a carrier-grade NAT address (100.64.0.0/10)"
    if any(ip in net for net in _RFC1918):
        return "a private network address (RFC 1918)"
    if isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.ip_network("fc00::/7"):
        return "a unique local IPv6 address"
    if not ip.is_global:
        return "a reserved, non-public address"
    return None


def literal_address(host: str) -> Address | None:
    """`host` as an IP address if it is one (`[::1]` too), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_local(ip: Address) -> bool:
    """Whether `ip` is an address of this machine (binding to it works only then)."""
    import socket  # here: loading a config (`log`) needs none of it

    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((str(ip), 0))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class EgressRules:
    """What `upstream:` says about where requests may go."""

    block_private: bool = True
    allow_hosts: tuple[Glob, ...] = ()
    allow_networks: tuple[Network, ...] = ()
    listen: tuple[str, int] = ("127.0.0.1", 8080)
    links: tuple[str, int] | None = None   # where approval links are served (`approvals.listen`)
    link_host: str | None = None           # the host approval links are written with (`approvals.public_url`)
    console: tuple[str, int] | None = None  # where the web console is served (`console.listen`)
    #: where the consoles running over the state directory listen (`goex-proxy console --listen` anywhere), as their
    #: files say: asked at each check, pinned answers included
    consoles: Callable[[], list[tuple[str, int]]] | None = field(default=None, compare=False)
    console_host: str | None = None        # the host the console is reached by (`console.public_url`)

    def refusal(self, host: str, port: int, addresses: list[Address]) -> str | None:
        """Why a connection to `host` at these addresses must not be made, or None if every one may be reached."""
        if self.link_host is not None and host_key(host) == self.link_host:
            return f"{host} serves goex-proxy's approval links, which no agent may reach"
        if self.console_host is not None and host_key(host) == self.console_host:
            return f"{host} serves goex-proxy's web console, which no agent may reach"
        for ip in addresses:
            if _is_listener(self.listen, ip, port):
                return f"{host} is {ip}, this proxy's own listen address"
            if self.links is not None and _is_listener(self.links, ip, port):
                return f"{host} is {ip}, where goex-proxy serves approval links, which no agent may reach"
            if self.console is not None and _is_listener(self.console, ip, port):
                return f"{host} is {ip}, where goex-proxy serves its web console, which no agent may reach"
            if (why := self.console_refusal(host, port, [ip])) is not None:
                return why
            if not self.block_private:
                continue
            why = address_class(ip)
            if why is None or any(g.matches(host) for g in self.allow_hosts):
                continue
            if any(ip.version == net.version and ip in net for net in self.allow_networks):
                continue
            said = f"{host} is {ip}" if str(ip) != host.strip("[]") else f"{ip} is"
            return (f"{said} {why}; only upstream.routes and upstream.allow_private may reach such addresses "
                    "(SSRF guard)")
        return None

    def console_refusal(self, host: str, port: int, addresses: list[Address]) -> str | None:
        """Why these addresses are a running console's, which no agent may reach (it may have started after they
        were pinned)."""
        running = self.consoles() if self.consoles is not None else []
        for ip in addresses:
            if any(_is_listener(listen, ip, port) for listen in running):
                return f"{host} is {ip}, where goex-proxy serves its web console, which no agent may reach"
        return None


def _is_listener(listen: tuple[str, int], ip: Address, port: int) -> bool:
    """Whether a connection to `ip`:`port` would reach a socket listening at `listen` (0.0.0.0 and :: reach this
    machine, as an IPv6 address carrying an IPv4 one may reach it: `_embedded_ipv4`)."""
    if port != listen[1]:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and (embedded := _embedded_ipv4(ip)) is not None:
        ip = embedded  # a translator or tunnel may carry it back to this machine
    if ip.is_unspecified:
        return True
    host = listen[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        return ip.is_loopback or ip.is_unspecified or is_local(ip)
    try:
        return ip == ipaddress.ip_address(host) or (ip.is_loopback and ipaddress.ip_address(host).is_loopback)
    except ValueError:  # listening on a name
        return ip.is_loopback or is_local(ip)


#: Seconds a checked answer is used for new connections to the same host and port before it is looked up again.
PIN_SECONDS = 30.0


class Blocked(Exception):
    """A connection the SSRF guard refuses; the message says which address and why."""


class Pins:
    """Checked answers, by host and port: the only addresses upstream connections are made to."""

    def __init__(self) -> None:
        self._pins: dict[tuple[str, int], tuple[list[Address], float]] = {}

    async def addresses(self, rules: EgressRules, resolver: tuple[str, int] | None, host: str, port: int,
                        fresh: bool = False) -> list[Address]:
        """The checked addresses of `host` (looked up again if `fresh` or the pin is old); raise Blocked if any
        address may not be reached, ResolveError if it has none."""
        host = host_key(host)
        pinned = self._pins.get((host, port))
        if pinned is not None and not fresh and pinned[1] > time.monotonic():
            if (why := rules.console_refusal(host, port, pinned[0])) is not None:
                raise Blocked(why)
            return pinned[0]
        literal = literal_address(host)
        if literal is not None:
            found = [literal]
        else:
            from .resolver import resolve

            found = await resolve(host, port, resolver)
        return self._pinned(rules, host, port, found)

    def literal(self, rules: EgressRules, host: str, port: int) -> list[Address] | None:
        """`addresses` of a host that is an address itself, which needs no look-up, so no waiting (None: a name)."""
        host = host_key(host)
        literal = literal_address(host)
        return None if literal is None else self._pinned(rules, host, port, [literal])

    def _pinned(self, rules: EgressRules, host: str, port: int, found: list[Address]) -> list[Address]:
        """`found`, checked (Blocked if any address may not be reached) and pinned for the next connections."""
        why = rules.refusal(host, port, found)
        if why is not None:
            raise Blocked(why)
        found.sort(key=lambda ip: ip.version)  # IPv4 first: a host with an unreachable IPv6 address still connects
        self._pins[(host, port)] = (found, time.monotonic() + PIN_SECONDS)
        return found


def parse_allow(entry: str) -> Glob | Network:
    """An `upstream.allow_private` entry: a network (`10.1.0.0/16`, `192.168.1.5`) or a host glob (`*.corp.example`)."""
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return compile_host(host_key(entry))
