"""Requests goex-proxy makes itself (token refreshes, retries): sent where `upstream.routes` says, TLS checked by name."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..config import Config
from ..hostkey import host_key

#: Seconds a request of goex-proxy's own may take, connecting included.
TIMEOUT = 30.0


def ssl_context(config: Config) -> ssl.SSLContext:
    """Public roots plus `upstream.extra_ca`: the same trust the proxy gives the upstreams it forwards to."""
    import certifi

    context = ssl.create_default_context(cafile=certifi.where())
    for path in config.extra_ca:
        context.load_verify_locations(cafile=str(path))
    return context


def routed(config: Config, url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The URL to connect to, the headers that keep the original host, and the httpx extensions for its TLS name."""
    parts = urlsplit(url)
    host = host_key(parts.hostname or "")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    route = config.route_for(host, port)
    if route is None:
        return url, {}, {}
    netloc = f"[{route.host}]:{route.port}" if ":" in route.host else f"{route.host}:{route.port}"
    target = urlunsplit((route.scheme, netloc, parts.path, parts.query, ""))
    return target, {"Host": parts.netloc.rpartition("@")[2]}, {"sni_hostname": host}


def client(config: Config) -> Any:
    """An httpx.AsyncClient that trusts what the proxy trusts, follows no redirects and reads no proxy settings."""
    import httpx

    return httpx.AsyncClient(verify=ssl_context(config), trust_env=False, follow_redirects=False, timeout=TIMEOUT)


def sync_client(config: Config) -> Any:
    """The blocking twin of `client`, for commands (`authorize`) that run outside the proxy's event loop."""
    import httpx

    return httpx.Client(verify=ssl_context(config), trust_env=False, follow_redirects=False, timeout=TIMEOUT)
