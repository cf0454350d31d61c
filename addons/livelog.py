"""What `goex-proxy run` prints while it runs: a line per request, and the lines of holds, approvals and reloads."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import IO, Any

from mitmproxy import http
from mitmproxy.utils import human

from goex_proxy.addons import flowmeta, replies
from goex_proxy.addons.state import ProxyState
from goex_proxy.printable import shown

#: The logger of the lines about requests: LiveLog's, and `event`'s (holds, approvals). `run` shows it at INFO;
#: `--quiet` leaves LiveLog out, so that only the events are left.
log = logging.getLogger("goex_proxy.live")
#: How wide the second column (a decision, or an event's kind) is padded, so that ids and agents line up.
VERB_WIDTH = len("challenge")
#: The log record attribute that carries a line's coloured spans (its message is the same line, plain).
LINE = "goex_line"

BOLD, DIM, RED, GREEN, YELLOW, MAGENTA = "1", "2", "31", "32", "33", "35"
#: Decisions as the audit log names them, coloured like `goex-proxy log` colours them.
DECISION_COLOURS = {"allow": GREEN, "report": YELLOW, "deny": RED, "challenge": YELLOW, "hold": YELLOW,
                    "delay": YELLOW, "error": MAGENTA}
#: Event kinds: a request that waits, one that goes, one that does not.
EVENT_COLOURS = {"held": YELLOW, "delayed": YELLOW, "approved": GREEN, "sent": GREEN, "denied": RED,
                 "cancelled": RED, "expired": RED}
_LEVEL_COLOURS = {logging.WARNING: YELLOW, logging.ERROR: RED, logging.CRITICAL: RED}

Span = tuple[str, str]


def paint(text: str, sgr: str, colour: bool) -> str:
    """`text` in the SGR style `sgr` ("31", "1;32") when `colour` and both are non-empty; else `text` as it is."""
    return f"\033[{sgr}m{text}\033[0m" if colour and sgr and text else text


def wants_colour(stream: IO[str]) -> bool:
    """Colour only on a terminal, and not when NO_COLOR is set to anything but the empty string (no-color.org)."""
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # no such method, or a closed stream
        return False
    return terminal and not os.environ.get("NO_COLOR")


def stamp(when: float) -> str:
    """The time a line starts with: `HH:MM:SS`, local time, as mitmdump writes it (without its milliseconds)."""
    return time.strftime("%H:%M:%S", time.localtime(when))


@dataclass(frozen=True)
class Line:
    """A line after its time: spans of text, each with the SGR style it has on a terminal ("" for none)."""

    spans: tuple[Span, ...]

    def text(self, colour: bool = False) -> str:
        return " ".join(paint(text, sgr, colour) for text, sgr in self.spans if text)


def _verb(word: str, sgr: str) -> Span:
    """The second column, padded to `VERB_WIDTH` so that the ids after it line up."""
    return word.ljust(VERB_WIDTH), sgr


def status_colour(status: int | None) -> str:
    """As mitmdump colours a status: 2xx green, 3xx magenta, 4xx and 5xx red; no response red."""
    if status is None or status >= 400:
        return f"{BOLD};{RED}"
    return f"{BOLD};{GREEN}" if status < 300 else f"{BOLD};{MAGENTA}"


def class_colour(undo_class: str) -> str:
    """An undo class: green when undo takes it back exactly, red when nothing can, yellow for the rest."""
    return GREEN if undo_class == "exact" else RED if undo_class.startswith("irreversible") else YELLOW


def method_colour(method: str) -> str:
    """As mitmdump colours a method: GET green, DELETE red, the rest magenta."""
    return f"{BOLD};" + {"GET": GREEN, "DELETE": RED}.get(method.upper(), MAGENTA)


@dataclass(frozen=True)
class RequestLine:
    """The line of one request as it ended; every text already scrubbed and escaped (`LiveLog.request_line`)."""

    decision: str
    request_id: str
    agent: str | None
    method: str
    url: str
    status: int | None        # None: no response (`detail` says why)
    undo_class: str | None    # as its audit row has it; None for reads, denials and failures
    took_ms: float
    detail: str = ""          # why it was not allowed, or what failed

    def line(self) -> Line:
        spans: list[Span] = [_verb(self.decision, DECISION_COLOURS.get(self.decision, BOLD)), (self.request_id, DIM),
                             (self.agent or "-", ""), (self.method, method_colour(self.method)), (self.url, BOLD),
                             (str(self.status) if self.status is not None else "failed", status_colour(self.status))]
        if self.undo_class:
            spans.append((f"undo: {self.undo_class}", class_colour(self.undo_class)))
        spans.append((f"({self.took_ms:.0f} ms)" + (f": {self.detail}" if self.detail else ""), ""))
        return Line(tuple(spans))


def event_line(kind: str, request_id: str, agent: str | None, text: str) -> Line:
    """An event about a request (`event`), every part escaped."""
    return Line((_verb(shown(kind), EVENT_COLOURS.get(kind, BOLD)), (shown(request_id), DIM), (shown(agent or "-"), ""),
                 (shown(text), "")))


def event(kind: str, request_id: str, agent: str | None, text: str) -> None:
    """Print a line about a request on `run`'s output, in the request lines' layout: its time, `kind` (a past
    participle, coloured: "held" and "delayed" yellow, "approved" and "sent" green, "denied", "cancelled" and
    "expired" red, any other bold), `request_id`, `agent` ("-" for None), then `text`:

        14:03:07 held      1M904Z0Z700G1 mailbot POST https://slack.com/api/chat.postMessage: rule 'post' says hold
        14:03:31 approved  1M904Z0Z700G1 mailbot by alice; sending it

    `text` must already be scrubbed of secrets (`ProxyState.scrubber.text`); control and invisible characters in
    every part are escaped here. Shown by `run` at INFO, also with `--quiet`; elsewhere (`undo`, `exec`) not at all.
    """
    line = event_line(kind, request_id, agent, text)
    log.info("%s", line.text(), extra={LINE: line})


class LiveLog:
    """Logs each request's line when it is answered or fails, with secrets replaced and control characters
    escaped; after the record and scrub stages, so it sees the undo class record gave the row, and what the agent
    saw."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    def request_line(self, flow: http.HTTPFlow) -> RequestLine:
        url = f"{flow.request.host}:{flow.request.port}" if flow.request.method == "CONNECT" else flowmeta.url(flow)
        return RequestLine(decision_of(flow), self._safe(flowmeta.request_id(flow)), self._safe(flowmeta.agent(flow)),
                           self._safe(flow.request.method), self._safe(url),
                           flow.response.status_code if flow.response is not None and not broke_off(flow) else None,
                           self._safe(flowmeta.undo_class(flow)), (time.time() - flow.request.timestamp_start) * 1000,
                           self._safe(detail_of(flow)))

    def _safe(self, text: str | None) -> str:
        """`text` with secrets replaced and control characters escaped ("" for None)."""
        return shown(self.state.scrubber.text(text)) if text else ""

    def logged_line(self, flow: http.HTTPFlow) -> Line:
        """The line shown for a request. Its parts are scrubbed one by one; a spelling with a space in it can span two
        (the method the agent chose, then the URL), so the joined line is scrubbed too, and shown uncoloured if that
        finds one."""
        line = self.request_line(flow).line()
        if not self.state.scrubber.spaced:
            return line
        text = line.text()
        scrubbed = self.state.scrubber.text(text)
        return line if scrubbed == text else Line(((scrubbed, ""),))

    def _log(self, flow: http.HTTPFlow) -> None:
        line = self.logged_line(flow)
        log.info("%s", line.text(), extra={LINE: line})

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and flow.response.status_code >= 300:  # a refused tunnel; accepted ones are quiet
            self._log(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self._log(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._log(flow)


class LiveFormatter(logging.Formatter):
    """`run`'s output: every log line starts with its time; a request's or an event's line is coloured span by span,
    any other line yellow (warning) or red (error), after its client's address if it has one (mitmproxy's); a
    message's further lines are indented under its first, an exception is named on the line (never a traceback), and
    control characters are escaped."""

    def __init__(self, colour: bool) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        line = getattr(record, LINE, None)
        body = line.text(self.colour) if isinstance(line, Line) else self._message(record)
        return f"{paint(stamp(record.created), DIM, self.colour)} {body}"

    def _message(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if client := getattr(record, "client", None):  # mitmproxy's lines about a connection name its client
            text = f"{human.format_address(client)}: {text}"
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            text += f" ({type(exc).__name__}: {exc})" if str(exc) else f" ({type(exc).__name__})"
        sgr = _LEVEL_COLOURS.get(record.levelno, "")
        return f"\n{' ' * (len(stamp(0)) + 1)}".join(paint(shown(part), sgr, self.colour) for part in text.split("\n"))


def format_output() -> None:
    """Give `run`'s output (mitmproxy's terminal log, on the root logger) the live format, coloured when it goes to a
    terminal and NO_COLOR is not set; and have it write each line as it comes, also into a pipe (`run | tee`). A
    record no longer looks up its caller's file and line, its thread or its process, which `run`'s output never
    shows (Python's logging HOWTO, "Optimization"): each request's line is a record."""
    from mitmproxy.addons.termlog import TermLogHandler

    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False

    for handler in logging.getLogger().handlers:
        if isinstance(handler, TermLogHandler):
            handler.setFormatter(LiveFormatter(wants_colour(handler.file)))
            if callable(reconfigure := getattr(handler.file, "reconfigure", None)):
                reconfigure(line_buffering=True)
                if not isinstance(handler.file, TurnBuffered):
                    handler.file = TurnBuffered(handler.file)
                    atexit.register(handler.file.at_exit)
                    handler.emit = _held_only_for_requests(handler.emit, handler.file)  # type: ignore[method-assign]


def _held_only_for_requests(emit: Any, file: TurnBuffered) -> Any:
    """`emit`, which then writes anything but a request's line at once (with the lines held before it): a warning or
    an error is not held to the end of the loop's turn, after what the turn did next (a connection closed, say)."""

    def emitted(record: logging.LogRecord) -> None:
        emit(record)
        if not isinstance(getattr(record, LINE, None), Line):
            file.flush()

    return emitted


class TurnBuffered:
    """`run`'s output as its log handler writes it: the requests' lines written on the event loop are held until the
    loop's turn ends, then written together, one write to the terminal or pipe for all of them (any other line is
    written at once, with those held before it: `_held_only_for_requests`). A write each let go of the GIL,
    and a request's line then cost ~75 µs more in the running proxy than making it does (the loop waited to take the
    GIL back from the audit writer). A line written from another thread, or with no loop running, is written at once,
    after any held."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._held: list[str] = []
        #: The loops whose turn's end is to write what is held: each asks for its own, since a loop that closed with
        #: its last turn's lines held never writes them, and lines held behind them waited for it too.
        self._waiting: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            with self._lock:
                self._write_held()
                return self.stream.write(text)
        with self._lock:
            if loop not in self._waiting:
                self._waiting.add(loop)
                loop.call_soon(self._turn_ended, loop)
            self._held.append(text)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._write_held()
            self.stream.flush()

    def _turn_ended(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write the turn's lines (and any another loop held); as mitmproxy's handler does when it cannot print
        (stdout a pipe whose reader went away), exit; a stream closed meanwhile (the proxy stopping) takes nothing
        more."""
        with self._lock:
            self._waiting.discard(loop)
        try:
            self.flush()
        except ValueError:
            pass
        except OSError:
            sys.exit(1)

    def at_exit(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.flush()

    def _write_held(self) -> None:
        held, self._held = self._held, []
        if held:
            self.stream.write("".join(held))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def decision_of(flow: http.HTTPFlow) -> str:
    """The decision as the request's audit row has it: `challenge`, `hold` or `delay` for a request that waited
    (whatever became of it), else the policy's (`allow`, `report`, `deny`), or `error` when there was none."""
    if flowmeta.challenged(flow):
        return "challenge"
    approval = flowmeta.approval(flow)
    try:
        kind = json.loads(approval).get("kind") if approval else None
    except (ValueError, AttributeError):
        kind = None
    if kind in ("hold", "delay"):
        return str(kind)
    decision = flowmeta.decision(flow)
    return decision.label if decision else "error"


def detail_of(flow: http.HTTPFlow) -> str:
    """What ends a request's line: why it was not allowed, what failed, or what goex-proxy's own error says."""
    decision = flowmeta.decision(flow)
    if decision and decision.effect != "allow" and decision.reason:
        return str(decision.reason)
    if flow.response is None:
        return str(flow.error.msg) if flow.error else "no response"
    if broke_off(flow):  # as its row says (`rows.not_passed_on`), with the status the row keeps
        return f"the agent did not get the upstream's {flow.response.status_code} whole: {flow.error.msg}"
    if flow.response.status_code >= 500 and flowmeta.is_own_response(flow):
        return replies.said(flow.response)
    return ""


def broke_off(flow: http.HTTPFlow) -> bool:
    """Whether the upstream's answer did not reach the agent whole though it came: mitmproxy refused it (framing that
    could smuggle) or it broke off, and the agent got mitmproxy's 502 or a cut answer. Its line says `failed`, as
    `log` says `error`, and not the status (which the row keeps, for undo)."""
    return flow.response is not None and flow.error is not None and not flowmeta.is_own_response(flow)
