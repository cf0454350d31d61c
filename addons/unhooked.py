"""Where mitmproxy hands upstream bytes to the agent or to its log without calling a hook: its error pages (quoting
what a broken upstream sent), WebSocket ping, pong and close frames, and its log lines. Each is wrapped once per
process so that the scrubber sees them."""

from __future__ import annotations

import importlib
import logging
import re
import weakref
from collections.abc import Callable
from typing import Any

from goex_proxy.addons.state import ProxyState
from goex_proxy.credentials.redact import ScrubStream

#: The state whose scrubber the wrappers use (the latest proxy set up in this process).
_state: ProxyState | None = None
#: A Python bytes literal, as mitmproxy quotes what an upstream sent: its escapes (`\'`, `\xNN`) would hide a
#: secret's spelling from the scrubber, so it is not shown at all.
_LINE_BREAKS = re.compile(r"[\r\n]+")
_BYTES_LITERAL = re.compile(r"""\bb(['"])(?:\\.|(?!\1).)*\1?""", re.DOTALL)


def scrub_unhooked(state: ProxyState) -> None:
    global _state
    _state = state
    _wrap_error_pages()
    _wrap_websocket_controls()
    _filter_logs()


def scrubbed_text(text: str) -> str:
    """Text mitmproxy made from what an upstream sent, as the agent, the logs and the kept flow may show it."""
    scrub = _state.scrubber if _state is not None else None
    if not scrub:
        return text
    return scrub.text(_BYTES_LITERAL.sub("(bytes not shown)", text))


def _wrap_error_pages() -> None:
    for name, required in (("_http1", True), ("_http2", True), ("_http3", False)):
        try:
            module = importlib.import_module(f"mitmproxy.proxy.layers.http.{name}")
            original = module.format_error
        except (ImportError, AttributeError):
            if required:  # a mitmproxy laid out otherwise: refuse to run rather than leak through its error pages
                raise
            continue
        if getattr(original, "goex_scrubbed", False):
            continue

        def format_error(status_code: int, message: str, _original: Callable[[int, str], bytes] = original) -> bytes:
            return _original(status_code, scrubbed_text(message))

        format_error.goex_scrubbed = True  # type: ignore[attr-defined]
        module.format_error = format_error


def _wrap_websocket_controls() -> None:
    """Ping and pong payloads and close reasons are relayed by mitmproxy's WebSocket layer with no hook."""
    import wsproto.events
    from mitmproxy.proxy.layers import websocket

    original = websocket.WebsocketConnection.send2
    if getattr(original, "goex_scrubbed", False):
        return

    streams: weakref.WeakKeyDictionary[Any, ScrubStream] = weakref.WeakKeyDictionary()

    def send2(self: Any, event: wsproto.events.Event) -> Any:
        scrub = _state.scrubber if _state is not None else None
        if not scrub or not isinstance(event, wsproto.events.Ping | wsproto.events.Pong | wsproto.events.CloseConnection):
            return original(self, event)
        # One stream per side of a connection: a secret cut between pings is caught where it ends, and a piece of
        # one at the edge of a payload is withheld.
        stream = streams.get(self)
        if stream is None:
            stream = streams[self] = scrub.stream()
        if isinstance(event, wsproto.events.Ping | wsproto.events.Pong):
            event = type(event)(payload=stream.feed(bytes(event.payload)))
        elif event.reason:
            reason = stream.feed(_LINE_BREAKS.sub(" ", event.reason).encode())
            event = wsproto.events.CloseConnection(code=event.code, reason=reason.decode("utf-8", "replace"))
        return original(self, event)

    send2.goex_scrubbed = True  # type: ignore[attr-defined]
    websocket.WebsocketConnection.send2 = send2  # type: ignore[method-assign]


class _ScrubRecords(logging.Filter):
    """Log records leave with secrets replaced (mitmproxy logs WebSocket ping payloads and upstream errors)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _state is not None and _state.scrubber:
            message = record.getMessage()
            cleaned = scrubbed_text(message) if "b'" in message or 'b"' in message else _state.scrubber.text(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


_FILTER = _ScrubRecords()


def _filter_logs() -> None:
    """Every handler of the root logger (mitmproxy's and goex-proxy's output) gets the filter, once."""
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
