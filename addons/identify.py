"""Stage 1, identify: who is calling, from proxy credentials `http://AGENT:TOKEN@host:port`; anyone else gets 407."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import weakref

from mitmproxy import connection, http, tcp
from mitmproxy.flow import Error

from goex_proxy.addons import flowmeta, replies
from goex_proxy.addons.connections import hang_up
from goex_proxy.addons.failclosed import fail_closed
from goex_proxy.addons.state import ProxyState
from goex_proxy.config import weak_token
from goex_proxy.ids import is_request_id
from goex_proxy.policy.engine import Decision


def parse_basic(header: str) -> tuple[str, str] | None:
    """(user, password) from a `Basic` Proxy-Authorization value, or None."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


#: The identity `goex-proxy undo` replays compensations as, on its own in-process proxy only (a per-run token);
#: each request names the agent it acts for and the request it undoes in these headers, which never go upstream.
#: It also chooses the audit id of each compensation, journaled before sending, so that an undo interrupted mid-way
#: can find out whether a step it sent was recorded as answered.
UNDO_IDENTITY = "goex-undo"
UNDO_AGENT_HEADER = "X-Goex-Undo-Agent"
UNDO_OF_HEADER = "X-Goex-Undo-Of"
UNDO_REQUEST_ID_HEADER = "X-Goex-Undo-Request-Id"
log = logging.getLogger(__name__)
#: Why a request without Proxy-Authorization is answered 407: a challenge to send them, recorded as such.
NO_CREDENTIALS = "no proxy credentials were sent"


_UNDO_AGENT, _UNDO_OF, _UNDO_REQUEST_ID = (h.lower().encode() for h in (UNDO_AGENT_HEADER, UNDO_OF_HEADER,
                                                                          UNDO_REQUEST_ID_HEADER))
_PROXY_AUTHORIZATION, _PROXY_CONNECTION = b"proxy-authorization", b"proxy-connection"
_DROPPED = frozenset({_UNDO_AGENT, _UNDO_OF, _UNDO_REQUEST_ID, _PROXY_AUTHORIZATION, _PROXY_CONNECTION})


def _dropped_sent(headers: http.Headers) -> frozenset[bytes]:
    """Which of the headers identify takes off a request it sent (lower-cased), read in one pass over its fields: a
    `pop` of one it did not send looks every field up and raises KeyError inside (five of them ~25 µs a request)."""
    return _DROPPED.intersection(name.lower() for name, _ in headers.fields)


def token_digest(token: str) -> str:
    """What a flow keeps of the token it came with, to tell later whether that token still holds (never the token)."""
    return hashlib.sha256(token.encode()).hexdigest()


class Identify:
    """Authenticates every request (or its CONNECT tunnel) and records the agent's name on the flow."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        #: The agent each CONNECT tunnel authenticated as, and the token it showed (checked again at each request, so
        #: that an agent removed from the config, or given a new token, is cut off at once).
        self.tunnels: weakref.WeakKeyDictionary[connection.Client, tuple[str, str]] = weakref.WeakKeyDictionary()
        #: The same for a plain connection's latest request: what an upgrade on it (WebSocket, a raw stream) goes on as.
        self.plain: weakref.WeakKeyDictionary[connection.Client, tuple[str, str]] = weakref.WeakKeyDictionary()
        #: The raw stream on each connection, whose row says why it ended when a reload ends it.
        self.streams: weakref.WeakKeyDictionary[connection.Client, tcp.TCPFlow] = weakref.WeakKeyDictionary()
        state.after_reload.append(self.end_revoked)

    @staticmethod
    def refuse(flow: http.HTTPFlow | tcp.TCPFlow, why: str) -> None:
        """Deny the flow for its identity; an HTTP request is answered 407 (a challenge when it sent no credentials)."""
        if why == NO_CREDENTIALS:
            flowmeta.set_challenged(flow)
        flowmeta.set_decision(flow, Decision("deny", f"proxy authentication failed: {why}", "identify"))
        if isinstance(flow, http.HTTPFlow):
            replies.auth_required(flow, why)

    def authenticate(self, flow: http.HTTPFlow) -> tuple[tuple[str, str] | None, str]:
        """The agent's name and token from the request's proxy credentials, if they hold; else None and why not."""
        header = flow.request.headers.get("Proxy-Authorization")
        if not header:
            return None, NO_CREDENTIALS
        creds = parse_basic(header)
        if creds is None:
            return None, "proxy credentials must use the Basic scheme"
        name, why = self.check(*creds)
        return (creds if name is not None else None), why

    def check(self, name: str, token: str) -> tuple[str | None, str]:
        """The agent's name if this token is its current one, or None and why not."""
        assert self.state.config is not None
        if name == UNDO_IDENTITY and self.state.undo_token:
            ok = hmac.compare_digest(token.encode(), self.state.undo_token.encode())
            return (name, "") if ok else (None, "unknown agent or wrong token")
        agent = self.state.config.agents.get(name)
        expected = agent.token.reveal() if agent else None
        if expected is None or weak_token(expected) or not hmac.compare_digest(token.encode(), expected.encode()):
            return None, "unknown agent or wrong token"  # a weak token (from the environment) proves nothing
        return name, ""

    def end_revoked(self) -> None:
        """After a reload, end at once every connection whose identity no longer holds (its agent removed or given
        another token). Each message of a stream is checked too, but not everything on one is a message: WebSocket
        pings, pongs and closes pass with no hook (125 bytes each way, as often as the agent likes), and a stream that
        waits, or a long answer, sends none."""
        for opened in (self.tunnels, self.plain):
            for client, creds in list(opened.items()):
                name, why = self.check(*creds)
                if name is None:
                    why = f"the identity it was opened with is no longer valid: {why}"
                    log.warning("ended a connection of agent %r from %s: %s", creds[0], client.peername, why)
                    if (stream := self.streams.get(client)) is not None and stream.error is None:
                        stream.error = Error(f"goex-proxy ended the stream: {why}")
                    hang_up(client.id, why)

    @fail_closed("identify")
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        creds, why = self.authenticate(flow)
        if creds is None:
            self.refuse(flow, why)
            return
        self.tunnels[flow.client_conn] = creds
        flowmeta.set_agent(flow, creds[0])
        del flow.request.headers["Proxy-Authorization"]

    @fail_closed("identify")
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        in_tunnel = flow.client_conn in self.tunnels
        if in_tunnel:
            name, why = self.tunnel_agent(flow)
            creds: tuple[str, str] | None = self.tunnels[flow.client_conn]
        else:
            creds, why = self.authenticate(flow)
            name = creds[0] if creds else None
        if name is None:
            self.refuse(flow, why)
            return
        if creds is not None:
            flowmeta.set_token_digest(flow, token_digest(creds[1]))
            if not in_tunnel:
                self.plain[flow.client_conn] = creds
        sent = _dropped_sent(flow.request.headers)
        acting_for = flow.request.headers.pop(UNDO_AGENT_HEADER, None) if _UNDO_AGENT in sent else None
        undo_of = flow.request.headers.pop(UNDO_OF_HEADER, None) if _UNDO_OF in sent else None
        chosen_id = flow.request.headers.pop(UNDO_REQUEST_ID_HEADER, None) if _UNDO_REQUEST_ID in sent else None
        if name == UNDO_IDENTITY:
            assert self.state.config is not None
            if not acting_for or acting_for not in self.state.config.agents or not undo_of:
                self.refuse(flow, f"an undo request must name a known agent ({UNDO_AGENT_HEADER}) and the request it "
                                  f"undoes ({UNDO_OF_HEADER})")
                return
            if chosen_id is not None and not is_request_id(chosen_id):
                self.refuse(flow, f"{UNDO_REQUEST_ID_HEADER} is not a request id")
                return
            name = acting_for
            flowmeta.set_undo_of(flow, undo_of)
            if chosen_id is not None:
                flowmeta.set_request_id(flow, chosen_id)
        flowmeta.set_agent(flow, name)
        if _PROXY_AUTHORIZATION in sent:
            flow.request.headers.pop("Proxy-Authorization", None)
        if _PROXY_CONNECTION in sent:
            flow.request.headers.pop("Proxy-Connection", None)  # hop-by-hop, for the proxy: never forwarded upstream

    @fail_closed("identify")
    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        """A raw stream in a tunnel belongs to the agent that opened the tunnel, if that identity still holds."""
        self.streams[flow.client_conn] = flow
        if flow.client_conn not in self.tunnels:
            return
        name, why = self.tunnel_agent(flow)
        if name is None:
            self.refuse(flow, why)
            return
        flowmeta.set_agent(flow, name)

    @fail_closed("identify")
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """A WebSocket outlives its upgrade: each message is relayed only while the identity it was opened with holds."""
        assert flow.websocket is not None
        why = self.revoked(flow)
        if why is not None:
            flow.websocket.messages[-1].drop()
            self._end_stream(flow, why)

    @fail_closed("identify")
    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        """So does a raw stream: its bytes are relayed only while the identity it was opened with holds."""
        why = self.revoked(flow)
        if why is not None:
            flow.messages[-1].content = b""
            flow.error = Error(f"goex-proxy ended the stream: {why}")
            self._end_stream(flow, why)

    @staticmethod
    def _end_stream(flow: http.HTTPFlow | tcp.TCPFlow, why: str) -> None:
        log.warning("ended a stream of agent %r from %s: %s", flowmeta.agent(flow), flow.client_conn.peername, why)
        hang_up(flow.client_conn.id, why)

    def revoked(self, flow: http.HTTPFlow | tcp.TCPFlow) -> str | None:
        """Why the identity a stream's connection came in with no longer holds (its agent was removed from the config,
        or given another token), or None while it holds."""
        creds = self.tunnels.get(flow.client_conn) or self.plain.get(flow.client_conn)
        if creds is None:
            return None
        name, why = self.check(*creds)
        return None if name is not None else f"the identity it was opened with is no longer valid: {why}"

    def tunnel_agent(self, flow: http.HTTPFlow | tcp.TCPFlow) -> tuple[str | None, str]:
        """The agent whose CONNECT opened this flow's tunnel, if its identity still holds; else None and why not."""
        name, why = self.check(*self.tunnels[flow.client_conn])
        return name, (f"the tunnel's identity is no longer valid: {why}" if name is None else "")
