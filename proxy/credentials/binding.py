"""Which credential a request is bound to, found by its host without trying every credential in turn."""

from __future__ import annotations

from collections.abc import Iterable

from ..globs import HostIndex
from .kinds import Credential


class Bindings:
    """The credentials of a config, indexed by the literal host names they are bound to. A request's host is looked
    up there, and only those credentials, and the ones with a host glob (`*.example.com`), are asked whether they bind
    it: with a hundred credentials each request tried a hundred host globs (about 40 µs of every request's time). The
    answer is the one the config's order gives, as before: the first credential that binds the host, method and path.
    Only which credential is injected depends on this; every credential's secret is scrubbed from every answer."""

    def __init__(self, credentials: Iterable[Credential]) -> None:
        self._order = tuple(credentials)
        self._hosts = HostIndex(credential.hosts for credential in self._order)

    def first(self, host: str, method: str, path: str) -> Credential | None:
        """The first credential, in the config's order, bound to this host (lower case, no trailing dot), method and
        path, if any."""
        return next((self._order[i] for i in self._hosts.positions(host)
                     if self._order[i].binds(host, method, path)), None)
