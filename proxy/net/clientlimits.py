"""What one client may cost the proxy (`limits:`): body and header bytes, connections, timeouts, HTTP/2 streams."""

from __future__ import annotations

import re
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..durations import parse_duration
from ..globs import Glob, compile_host
from ..hostkey import host_key
from ..yamlsrc import Checker, YMap

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
_UNITS = {"": 1, "b": 1, "kib": KiB, "mib": MiB, "gib": GiB}
_SIZE = re.compile(r"(\d+)\s*([kmg]ib|b)?", re.IGNORECASE)
_KEYS = {"max_request_body", "max_response_body", "max_header_bytes", "hosts", "max_connections",
         "max_connections_per_agent", "max_unidentified_per_address", "header_timeout", "idle_timeout",
         "http2_max_streams", "http2_max_resets"}
_HOST_KEYS = {"max_request_body", "max_response_body"}
#: Open files kept back from `max_connections: auto` for the audit database, policy files, DNS and the like.
RESERVED_FILES = 128
#: Open files `auto` counts per client connection: its own socket and upstream ones (up to 5 per host at once).
FILES_PER_CONNECTION = 4
AUTO_CONNECTIONS_CEILING = 4096


def parse_size(value: object) -> int:
    """A byte count: a whole number, or one with a unit like `64KiB`, `32MiB`, `1GiB`."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if m and int(m.group(1)) > 0:
        return int(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    raise ValueError(f"must be a size like 65536, 64KiB, 32MiB or 1GiB (got {value!r})")


def format_size(size: int) -> str:
    """`33554432` as `32 MiB`; a size that is no whole number of KiB, MiB or GiB in bytes."""
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size:,} bytes"


@dataclass(frozen=True)
class HostBodies:
    """A `limits.hosts` entry: body caps for the hosts a glob matches (None: the general cap)."""

    host: Glob
    max_request_body: int | None = None
    max_response_body: int | None = None


@dataclass(frozen=True)
class ClientLimits:
    """The `limits:` section. Every default is safe on its own; `max_connections` None means "from the open-file
    limit" (`connection_cap`)."""

    max_request_body: int = 32 * MiB
    max_response_body: int = 64 * MiB
    max_header_bytes: int = 64 * KiB
    hosts: tuple[HostBodies, ...] = ()
    max_connections: int | None = None
    max_connections_per_agent: int = 64
    max_unidentified_per_address: int = 64
    header_timeout: float = 30.0
    idle_timeout: float = 120.0
    http2_max_streams: int = 100
    http2_max_resets: int = 100
    http2_reset_window: float = 10.0

    def request_body_cap(self, host: str) -> tuple[int, str]:
        """The largest request body to `host` goex-proxy buffers, and the setting that says so."""
        for entry in self.hosts:
            if entry.max_request_body is not None and entry.host.matches(host_key(host)):
                return entry.max_request_body, f"limits.hosts.{entry.host.pattern}.max_request_body"
        return self.max_request_body, "limits.max_request_body"

    def response_body_cap(self, host: str) -> tuple[int, str]:
        """The largest response body from `host` goex-proxy buffers, and the setting that says so."""
        for entry in self.hosts:
            if entry.max_response_body is not None and entry.host.matches(host_key(host)):
                return entry.max_response_body, f"limits.hosts.{entry.host.pattern}.max_response_body"
        return self.max_response_body, "limits.max_response_body"

    def connection_cap(self) -> int:
        """`max_connections`, or for `auto` what the open-file limit allows, at most 4,096: accepting past the
        limit fails with EMFILE, and the accept loop retries every second instead of serving."""
        if self.max_connections is not None:
            return self.max_connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return AUTO_CONNECTIONS_CEILING
        return max(16, min(AUTO_CONNECTIONS_CEILING, (soft - RESERVED_FILES) // FILES_PER_CONNECTION))


def _count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"must be a whole number ≥ 1 (got {value!r})")


#: The largest value an HTTP/2 setting holds (RFC 9113 6.5.1: 32 bits); `http2_max_streams` and `max_header_bytes`
#: are advertised as SETTINGS_MAX_CONCURRENT_STREAMS and SETTINGS_MAX_HEADER_LIST_SIZE.
HTTP2_SETTING_MAX = 2**32 - 1


def _h2_setting(parse: Callable[[Any], int]) -> Callable[[Any], int]:
    """`parse`, then refused past what an HTTP/2 setting holds: a larger value was taken, and every HTTP/2 connection
    then crashed in mitmproxy as it sent its settings, its client waiting with no answer."""
    def parsed(value: object) -> int:
        number = parse(value)
        if number > HTTP2_SETTING_MAX:
            raise ValueError(f"must be at most {HTTP2_SETTING_MAX} (HTTP/2 sends it in 32 bits; got {value!r:.40})")
        return number
    return parsed


def _connections(value: object) -> int | None:
    """`auto` (None: from the open-file limit) or a count."""
    if value == "auto":
        return None
    try:
        return _count(value)
    except ValueError:
        raise ValueError(f"must be auto or a whole number ≥ 1 (got {value!r})") from None


def _resets(value: object) -> tuple[int, float]:
    if isinstance(value, YMap) and set(value) == {"count", "per"}:
        return _count(value["count"]), parse_duration(value["per"])
    raise ValueError(f"must be {{count: N, per: DURATION}} like {{count: 100, per: 10s}} (got {value!r})")


def parse_limits(check: Checker, top: YMap) -> ClientLimits:
    """The `limits:` section of a config document, with its problems recorded on `check`."""
    spec = check.mapping(top.get("limits", YMap()), "limits", check.at(top, "limits"), _KEYS) or YMap()
    values: dict[str, Any] = {}
    parsers = {"max_request_body": parse_size, "max_response_body": parse_size,
               "max_header_bytes": _h2_setting(parse_size), "max_connections": _connections,
               "max_connections_per_agent": _count, "max_unidentified_per_address": _count,
               "header_timeout": parse_duration, "idle_timeout": parse_duration,
               "http2_max_streams": _h2_setting(_count)}
    for key, parse in parsers.items():
        if key in spec and (value := check.parsed(spec, key, f"limits.{key}", parse)) is not None:
            values[key] = value
    if (resets := check.parsed(spec, "http2_max_resets", "limits.http2_max_resets", _resets)) is not None:
        values["http2_max_resets"], values["http2_reset_window"] = resets
    return ClientLimits(**values, hosts=_hosts(check, spec))


def _hosts(check: Checker, spec: YMap) -> tuple[HostBodies, ...]:
    raw = spec.get("hosts")
    if raw is None:
        return ()
    if not isinstance(raw, YMap):
        check.error(check.at(spec, "hosts"), "'limits.hosts' must be a mapping of host glob to body caps")
        return ()
    out = []
    for pattern, caps in raw.items():
        where = f"limits.hosts.{pattern}"
        entry = check.mapping(caps, where, raw.value_pos[pattern], _HOST_KEYS)
        try:
            host = compile_host(pattern)
        except ValueError as exc:
            check.error(raw.key_pos[pattern], f"'limits.hosts' key {pattern!r} {exc}")
            continue
        if entry is not None:
            sizes = {key: check.parsed(entry, key, f"{where}.{key}", parse_size) for key in _HOST_KEYS}
            out.append(HostBodies(host, sizes["max_request_body"], sizes["max_response_body"]))
    return tuple(out)
