"""The `approvals:` section: where one-time approval links are served and named, and where waiting requests are told."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .durations import format_duration, parse_duration
from .hostkey import host_key
from .secretref import SecretRef
from .yamlsrc import Checker, YMap, type_name

#: Where links are served when the section says nothing: this machine only.
DEFAULT_LISTEN = ("127.0.0.1", 8790)
#: The longest a link lives (and how long it lives when the request waits longer and `link_ttl` says nothing).
LINK_TTL_CAP = 86400.0
CHANNEL_KINDS = ("webhook", "ntfy", "slack")
_KEYS = {"listen", "public_url", "link_ttl", "notify"}
_URL_KEYS = ("url", "url_secret", "url_env")
_TOKEN_KEYS = ("token_secret", "token_env")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Channel:
    """One `notify:` entry: what kind of message it takes and where it is POSTed (the URL may itself be a secret)."""

    kind: str
    url: SecretRef
    token: SecretRef | None = None   # ntfy: an access token, sent as `Authorization: Bearer`
    index: int = 0

    @property
    def name(self) -> str:
        """How log lines name it: never by its URL, which may carry a secret."""
        return f"notify[{self.index}] ({self.kind})"


@dataclass(frozen=True)
class Approvals:
    """The `approvals:` section; the default (no section) serves no links and tells nobody."""

    listen: tuple[str, int] | None = None
    public_url: str | None = None     # the base links are written with, without a trailing slash
    link_ttl: float | None = None     # None: until the request's deadline, at most LINK_TTL_CAP
    notify: tuple[Channel, ...] = ()

    @property
    def base_url(self) -> str | None:
        """What links start with: `public_url`, else the listen address; None when no links are served."""
        if self.listen is None:
            return None
        return self.public_url or f"http://{netloc(*self.listen)}"


def netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine only (a name other than localhost could be anything)."""
    host = host_key(host.strip("[]"))
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(value: str) -> str | None:
    """Why a URL to POST a notification to (or to write links with) is not acceptable, if it is not."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s) URL"
    if parts.username is not None or parts.password is not None:
        return "must not carry a user or password (name a secret instead)"
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return "must be https:// unless it names this machine (it carries links that approve requests)"
    return None


def parse_host_port(value: Any, example: str = "127.0.0.1:8080") -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets) as a listen address; ValueError naming the bad value."""
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if sep and host and port.isdigit() and 0 < int(port) < 65536:
            return host.strip("[]"), int(port)
    raise ValueError(f"must be HOST:PORT like {example} (got {value!r})")


def _host_port(value: Any) -> tuple[str, int]:
    try:
        return parse_host_port(value, "127.0.0.1:8790")
    except ValueError as exc:
        raise ValueError(f"{exc}; or false to serve no links") from None


def _listen(check: Checker, spec: YMap) -> tuple[str, int] | None:
    if "listen" not in spec:
        return DEFAULT_LISTEN
    if spec["listen"] is False:
        return None
    return check.parsed(spec, "listen", "approvals.listen", _host_port) or DEFAULT_LISTEN


def _public_url(check: Checker, spec: YMap) -> str | None:
    url = check.string(spec, "public_url", "approvals.public_url")
    if url is None:
        return None
    parts = urlsplit(url)
    problem = check_url(url)
    if problem is None and (parts.query or parts.fragment):
        problem = "must not have a query or fragment (links are written as PUBLIC_URL/a/TOKEN)"
    if problem is not None:
        check.error(check.at(spec, "public_url"), f"'approvals.public_url' {problem} (got {url!r})")
        return None
    return url.rstrip("/")


def _exposure(check: Checker, spec: YMap, listen: tuple[str, int] | None, public_url: str | None) -> None:
    """Links carry the authority to approve: served beyond this machine only behind https."""
    if listen is None:
        if public_url is not None:
            check.error(check.at(spec, "public_url"), "'approvals.public_url' is set but 'approvals.listen' is false: "
                                                      "nothing would answer its links")
        return
    if not is_loopback(listen[0]) and not (public_url or "").startswith("https://"):
        check.error(check.at(spec, "listen"),
                    f"'approvals.listen' {netloc(*listen)} is not a loopback address: links carry the authority to "
                    "approve requests, so serve them beyond this machine only behind TLS (set 'approvals.public_url' "
                    "to the https:// URL of the tunnel or reverse proxy in front), or listen on 127.0.0.1")


def _link_ttl(check: Checker, spec: YMap) -> float | None:
    ttl = check.parsed(spec, "link_ttl", "approvals.link_ttl", parse_duration)
    if ttl is not None and ttl > LINK_TTL_CAP:
        check.error(check.at(spec, "link_ttl"), f"'approvals.link_ttl' must be at most "
                                                f"{format_duration(LINK_TTL_CAP)} (got {spec['link_ttl']!r})")
        return None
    return ttl


def _secret_ref(check: Checker, spec: YMap, keys: tuple[str, ...], where: str) -> SecretRef | None:
    """The one of `url`/`*_secret`/`*_env` (as `keys` name them) a channel mapping gives."""
    given = [k for k in keys if k in spec]
    if len(given) != 1:
        check.error(spec.pos, f"'{where}' needs exactly one of {', '.join(keys)}")
        return None
    key = given[0]
    value = spec[key]
    if not isinstance(value, str) or not value:
        check.error(check.at(spec, key), f"'{where}.{key}' must be a non-empty string (got {type_name(value)})")
        return None
    if key.endswith("_env"):
        if not _ENV_NAME.fullmatch(value):
            check.error(check.at(spec, key), f"'{where}.{key}' {value!r} is not an environment variable name")
            return None
        return SecretRef(env=value)
    if key.endswith("_secret"):
        return SecretRef(vault=value)
    if (problem := check_url(value)) is not None:
        check.error(check.at(spec, key), f"'{where}.{key}' {problem} (got {value!r})")
        return None
    return SecretRef(inline=value)


def _channel(check: Checker, item: Any, index: int, pos: tuple[int, int]) -> Channel | None:
    where = f"approvals.notify[{index}]"
    entry = check.mapping(item, where, pos, set(CHANNEL_KINDS))
    kinds = [k for k in CHANNEL_KINDS if entry is not None and k in entry]
    if entry is None or len(kinds) != 1:
        if entry is not None and not [k for k in entry if k not in CHANNEL_KINDS]:
            check.error(entry.pos, f"'{where}' needs exactly one of {', '.join(CHANNEL_KINDS)}")
        return None
    kind = kinds[0]
    value, at = entry[kind], check.at(entry, kind)
    where = f"{where}.{kind}"
    if kind == "slack" and not isinstance(value, YMap):
        check.error(at, f"'{where}' must be {{url_secret: NAME}} or {{url_env: VAR}}: a Slack incoming webhook URL "
                        "is itself a secret (store it with `goex-proxy secrets set NAME`); never write it here")
        return None
    if isinstance(value, str):
        spec = YMap(url=value)
        spec.pos, spec.key_pos, spec.value_pos = at, {"url": at}, {"url": at}
    elif isinstance(value, YMap):
        spec = value
    else:
        check.error(at, f"'{where}' must be a URL or a mapping (got {type_name(value)})")
        return None
    return _channel_spec(check, kind, spec, where, index)


def _channel_spec(check: Checker, kind: str, spec: YMap, where: str, index: int) -> Channel | None:
    url_keys = ("url_secret", "url_env") if kind == "slack" else _URL_KEYS
    allowed = set(url_keys) | (set(_TOKEN_KEYS) if kind == "ntfy" else set())
    if kind == "slack" and "url" in spec:
        check.error(spec.key_pos["url"], f"'{where}' must not write the URL: a Slack incoming webhook URL is itself a "
                                         "secret; store it with `goex-proxy secrets set NAME` and write {url_secret: "
                                         "NAME}, or {url_env: VAR}")
        return None
    if check.mapping(spec, where, spec.pos, allowed) is None or any(k not in allowed for k in spec):
        return None
    url = _secret_ref(check, spec, url_keys, where)
    token = _secret_ref(check, spec, _TOKEN_KEYS, where) if any(k in spec for k in _TOKEN_KEYS) else None
    return Channel(kind, url, token, index) if url is not None else None


def _channels(check: Checker, spec: YMap) -> tuple[Channel, ...]:
    if "notify" not in spec:
        return ()
    found = [_channel(check, item, i, pos)
             for i, item, pos in check.items(spec["notify"], "approvals.notify", check.at(spec, "notify"))]
    return tuple(c for c in found if c is not None)


def parse_approvals(check: Checker, top: YMap) -> Approvals:
    """The `approvals:` section, every problem recorded on `check`; no section, no links and no notifications."""
    if "approvals" not in top:
        return Approvals()
    spec = check.mapping(top["approvals"], "approvals", check.at(top, "approvals"), _KEYS)
    if spec is None:
        return Approvals()
    listen, public_url = _listen(check, spec), _public_url(check, spec)
    if public_url is not None or "public_url" not in spec:  # a wrong public_url is one problem, not two
        _exposure(check, spec, listen, public_url)
    return Approvals(listen, public_url, _link_ttl(check, spec), _channels(check, spec))
