"""Which credential a request is bound to, found by its host without trying every credential in turn."""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from .kinds import Credential


class Bindings:
    """The credentials of a config, indexed by the literal host names they are bound to. A request's host is looked
    up there, and only those credentials, and the ones with a host glob (`*.example.com`), are asked whether they bind
    it: with a hundred credentials each request tried a hundred host globs (about 40 µs of every request's time). The
    answer is the one the config's order gives, as before: the first credential that binds the host, method and path.
    Only which credential is injected depends on this; every credential's secret is scrubbed from every answer."""

    def __init__(self, credentials: Iterable[Credential]) -> None:
        self._order = tuple(credentials)
        by_host: dict[str, list[int]] = {}
        globbed: list[int] = []  # credentials with a host glob: asked for every host
        for i, credential in enumerate(self._order):
            if any(h.literal is None for h in credential.hosts):
                globbed.append(i)
                continue
            for h in credential.hosts:
                places = by_host.setdefault(h.literal or "", [])
                if not places or places[-1] != i:  # a host named twice by one credential
                    places.append(i)
        self._by_host = {host: tuple(places) for host, places in by_host.items()}
        self._globbed = tuple(globbed)

    def first(self, host: str, method: str, path: str) -> Credential | None:
        """The first credential, in the config's order, bound to this host (lower case, no trailing dot), method and
        path, if any."""
        named = self._by_host.get(host, ())
        candidates = heapq.merge(named, self._globbed) if named and self._globbed else named or self._globbed
        return next((self._order[i] for i in candidates if self._order[i].binds(host, method, path)), None)
