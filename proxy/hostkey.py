"""The one form in which a host name is compared everywhere (policies, routes, limits, credentials, undo, the log)."""

from __future__ import annotations


def host_key(host: str) -> str:
    """A host as goex-proxy compares it: lower-case, without the trailing dot of the DNS root (`API.Example.` and
    `api.example` are one host to a policy, a route and a filter of the log alike)."""
    return host.lower().rstrip(".")
