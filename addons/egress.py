"""Stage 3, egress: the SSRF guard. An upstream's name is resolved once, every address checked, and the connection
made to an address that was checked (no DNS-rebinding window)."""

from __future__ import annotations

from collections.abc import Awaitable

from mitmproxy import http
from mitmproxy.proxy import server_hooks

from goex_proxy.addons import replies
from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.state import ProxyState
from goex_proxy.net.egress import Blocked, literal_address
from goex_proxy.policy.engine import Decision

RULE = "upstream.block_private_networks"


class Egress:
    """Refuses requests whose host is, or resolves to, a private, loopback, link-local, metadata or otherwise
    non-public address (unless `upstream.routes` or `upstream.allow_private` says so) or the proxy itself, and
    connects each allowed one to the address it checked."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self._renamed: dict[int, tuple[str, int]] = {}

    @fail_closed("egress")
    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response or flow.error or not flow.live:
            return None
        assert self.state.config is not None
        if self.state.config.route_for(flow.request.host, flow.request.port) is not None:
            return None
        try:  # an address needs no look-up: checked at once, the request's hook not made to wait
            if self.state.pins.literal(self.state.config.egress, flow.request.host, flow.request.port) is not None:
                return None
        except Blocked as exc:
            _blocked(flow, exc)
            return None
        return self._check(flow)

    @fail_closed("egress")
    async def _check(self, flow: http.HTTPFlow) -> None:
        from goex_proxy.net.resolver import ResolveError

        assert self.state.config is not None
        try:
            await self.state.pins.addresses(self.state.config.egress, self.state.config.resolver, flow.request.host,
                                             flow.request.port, fresh=True)
        except Blocked as exc:
            _blocked(flow, exc)
        except ResolveError as exc:
            replies.reply(flow, 502, {"error": "goex-proxy: the upstream host cannot be resolved", "reason": str(exc)},
                          {"X-Goex-Decision": "error"})

    @fail_closed("egress")
    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        from goex_proxy.net.resolver import ResolveError

        assert self.state.config is not None and data.server.address is not None
        host, port = data.server.address
        if self.state.config.route_for(str(host), port) is not None:
            return  # the route stage connects it where the operator said
        try:
            found = await self.state.pins.addresses(self.state.config.egress, self.state.config.resolver, str(host), port)
        except (Blocked, ResolveError) as exc:
            data.server.error = f"goex-proxy: {exc}"
            return
        if literal_address(str(host)) is None:
            self._renamed[id(data.server)] = (host, port)
            data.server.address = (str(found[0]), port)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        """Give the open connection its name back, so that mitmproxy reuses it for that host (see the route stage)."""
        original = self._renamed.pop(id(data.server), None)
        if original is not None:
            object.__setattr__(data.server, "address", original)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._renamed.pop(id(data.server), None)


def _blocked(flow: http.HTTPFlow, why: Blocked) -> None:
    replies.refuse(flow, Decision("deny", f"blocked: {why}", RULE))
