"""`run`'s output lines: a request's and an event's layout, their colours, the time, escaping, and no tracebacks."""

from __future__ import annotations

import io
import logging
import re
import time
from pathlib import Path

import pytest
from mitmproxy.test import tflow

from goex_proxy.addons import flowmeta, livelog
from goex_proxy.addons.livelog import LiveFormatter, LiveLog, RequestLine
from goex_proxy.addons.record import Record
from goex_proxy.credentials.redact import SecretScrubber
from goex_proxy.policy.engine import Decision
from tests.conftest import READ_PATH_POLICY, stage_state

ESC = "\033["
SECRET = "s3cr3t-CANARY-value"


@pytest.fixture
def state(tmp_path: Path):
    with stage_state(tmp_path, READ_PATH_POLICY) as s:
        s.scrubber = SecretScrubber({SECRET: "goex-placeholder-key"})
        yield s


@pytest.fixture
def local_time(monkeypatch: pytest.MonkeyPatch):
    """Local time 5:45 ahead of UTC (a POSIX TZ, no tz database needed)."""
    monkeypatch.setenv("TZ", "GOX-05:45")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def request(**changes: object) -> RequestLine:
    fields: dict[str, object] = {"decision": "allow", "request_id": "1M904Z0WS00MH", "agent": "mailbot",
                                 "method": "POST", "url": "https://slack.com/api/chat.postMessage", "status": 200,
                                 "undo_class": "exact", "took_ms": 63.4}
    return RequestLine(**{**fields, **changes})  # type: ignore[arg-type]


def record(message: str, level: int = logging.INFO, exc: BaseException | None = None, **extra: object):
    made = logging.LogRecord("goex_proxy.x", level, __file__, 1, message, (), (type(exc), exc, None) if exc else None)
    made.created = 0.0
    made.__dict__.update(extra)
    return made


def test_a_request_line_has_decision_id_agent_method_url_status_undo_class_and_duration() -> None:
    assert request().line().text() == ("allow     1M904Z0WS00MH mailbot POST https://slack.com/api/chat.postMessage "
                                       "200 undo: exact (63 ms)")


def test_a_read_has_no_undo_class_a_denial_says_why_and_a_failure_has_no_status() -> None:
    assert request(method="GET", undo_class=None).line().text() == \
        "allow     1M904Z0WS00MH mailbot GET https://slack.com/api/chat.postMessage 200 (63 ms)"
    assert request(decision="deny", status=403, undo_class=None, detail="no rule allows it").line().text() == \
        "deny      1M904Z0WS00MH mailbot POST https://slack.com/api/chat.postMessage 403 (63 ms): no rule allows it"
    assert request(decision="challenge", agent=None, status=None, undo_class=None, detail="refused").line().text() \
        == "challenge 1M904Z0WS00MH - POST https://slack.com/api/chat.postMessage failed (63 ms): refused"


def test_colour_marks_the_decision_the_status_by_its_class_and_the_undo_class() -> None:
    coloured = request(undo_class="irreversible: it is sent").line().text(colour=True)
    assert f"{ESC}32mallow    {ESC}0m" in coloured
    assert f"{ESC}1;32m200{ESC}0m" in coloured
    assert f"{ESC}31mundo: irreversible: it is sent{ESC}0m" in coloured
    assert f"{ESC}1;31mdeny" not in coloured
    denied = request(decision="deny", status=403, undo_class=None).line().text(colour=True)
    assert f"{ESC}31mdeny     {ESC}0m" in denied and f"{ESC}1;31m403{ESC}0m" in denied
    assert f"{ESC}1;35m302{ESC}0m" in request(status=302).line().text(colour=True)
    assert f"{ESC}1;31m503{ESC}0m" in request(status=503).line().text(colour=True)
    assert f"{ESC}33mundo: no rule{ESC}0m" in request(undo_class="no rule").line().text(colour=True)
    assert ESC not in request().line().text(colour=False)


def test_an_event_line_lines_up_with_request_lines_and_escapes_every_part() -> None:
    line = livelog.event_line("held", "1M904Z0Z700G1", "mail\x1bbot", "POST https://x/y: rule 'post'\nsays hold")
    assert line.text() == "held      1M904Z0Z700G1 mail\\x1bbot POST https://x/y: rule 'post'\\x0asays hold"
    assert line.text().index("1M904Z0Z700G1") == request().line().text().index("1M904Z0WS00MH")
    assert f"{ESC}33mheld" in line.text(colour=True)
    assert f"{ESC}32mapproved" in livelog.event_line("approved", "1", None, "by alice").text(colour=True)
    assert f"{ESC}31mdenied" in livelog.event_line("denied", "1", None, "by alice").text(colour=True)
    assert livelog.event_line("approved", "1M904Z0Z700G1", None, "by alice").text() == \
        "approved  1M904Z0Z700G1 - by alice"


def test_event_logs_its_line_on_the_live_logger(caplog: pytest.LogCaptureFixture, local_time: None) -> None:
    with caplog.at_level(logging.INFO, logger="goex_proxy.live"):
        livelog.event("approved", "1M904Z0Z700G1", "mailbot", "by alice")
    [logged] = caplog.records
    assert logged.name == "goex_proxy.live" and logged.getMessage() == "approved  1M904Z0Z700G1 mailbot by alice"
    logged.created = 0.0
    assert LiveFormatter(colour=False).format(logged) == "05:45:00 approved  1M904Z0Z700G1 mailbot by alice"
    assert LiveFormatter(colour=True).format(logged).startswith(f"{ESC}2m05:45:00{ESC}0m {ESC}32mapproved")


def test_any_other_line_gets_the_local_time_its_further_lines_indented_and_no_traceback(local_time: None) -> None:
    plain = LiveFormatter(colour=False)
    assert plain.format(record("policies reloaded: open")) == "05:45:00 policies reloaded: open"
    rejected = record("config reload rejected; keeping the last good config:\nconfig.yaml:3:1: invalid\x07 YAML",
                      logging.WARNING)
    assert plain.format(rejected) == ("05:45:00 config reload rejected; keeping the last good config:\n"
                                      "         config.yaml:3:1: invalid\\x07 YAML")
    failed = plain.format(record("goex-proxy record.request failed", logging.ERROR, exc=RuntimeError("boom")))
    assert failed == "05:45:00 goex-proxy record.request failed (RuntimeError: boom)"
    assert "Traceback" not in failed
    tls = record("Client TLS handshake failed.", logging.WARNING, client=("127.0.0.1", 5555))
    assert plain.format(tls) == "05:45:00 127.0.0.1:5555: Client TLS handshake failed."
    assert f"{ESC}33mconfig reload rejected" in LiveFormatter(colour=True).format(rejected)
    error = record("goex-proxy record.request failed", logging.ERROR)
    assert f"{ESC}31mgoex-proxy record.request failed" in LiveFormatter(colour=True).format(error)
    assert ESC not in plain.format(rejected) + failed


class Stream(io.StringIO):
    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


@pytest.mark.parametrize(("terminal", "no_color", "expected"), [
    (True, None, True), (True, "1", False), (True, "", True), (False, None, False)])
def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch, terminal: bool,
                                                    no_color: str | None, expected: bool) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    if no_color is not None:
        monkeypatch.setenv("NO_COLOR", no_color)
    assert livelog.wants_colour(Stream(terminal)) is expected


def test_format_output_formats_mitmproxys_terminal_log(monkeypatch: pytest.MonkeyPatch, local_time: None) -> None:
    from mitmproxy.addons.termlog import TermLogHandler

    out = Stream(terminal=False)
    handler = TermLogHandler(out)
    logging.getLogger().addHandler(handler)
    try:
        livelog.format_output()
        assert isinstance(handler.formatter, LiveFormatter) and not handler.formatter.colour
        handler.emit(record("policies reloaded: open"))
    finally:
        logging.getLogger().removeHandler(handler)
    assert out.getvalue() == "05:45:00 policies reloaded: open\n"


def test_live_log_scrubs_and_escapes_what_it_shows_and_takes_the_undo_class_record_set(state) -> None:
    f = tflow.tflow(resp=True)  # GET http://address:22/path -> 200
    f.request.method = "POST"
    f.request.path = f"/path/{SECRET}/\x1b[2J"
    flowmeta.set_agent(f, "bot")
    flowmeta.set_decision(f, Decision("allow", "allowed", "p/write"))
    outcome = Record(state).outcome(f)
    assert outcome["undo_class"] == "no rule" and flowmeta.undo_class(f) == "no rule"
    text = LiveLog(state).request_line(f).line().text()
    assert re.fullmatch(r"allow +\S{13} bot POST http://address:22/path/goex-placeholder-key/\\x1b\[2J 200 "
                        r"undo: no rule \(\d+ ms\)", text), text
    flowmeta.set_decision(f, Decision("deny", f"no rule allows POST address/{SECRET}", "p/x"))
    denied = LiveLog(state).request_line(f).line().text()
    assert SECRET not in denied and denied.endswith("ms): no rule allows POST address/goex-placeholder-key")


def test_a_failed_request_says_what_failed(state) -> None:
    f = tflow.tflow(err=True)
    flowmeta.set_decision(f, Decision("allow", "allowed", "p/read"))
    line = LiveLog(state).request_line(f)
    assert (line.status, line.undo_class, line.detail) == (None, "", "error")
    assert " failed (" in line.line().text()


def test_the_request_line_is_logged_when_a_request_ends(state, caplog: pytest.LogCaptureFixture) -> None:
    f = tflow.tflow(resp=True)
    flowmeta.set_agent(f, "bot")
    flowmeta.set_decision(f, Decision("allow", "allowed", "p/read"))
    with caplog.at_level(logging.INFO, logger="goex_proxy.live"):
        LiveLog(state).response(f)
    [logged] = caplog.records
    assert re.fullmatch(r"allow +\S{13} bot GET http://address:22/path 200 \(\d+ ms\)", logged.getMessage())
    assert isinstance(getattr(logged, livelog.LINE), livelog.Line)


def test_a_request_that_waited_shows_hold_or_delay_as_its_row_does(state) -> None:
    """The gate writes the row with decision hold or delay; the line says the same, whatever became of the wait."""
    f = tflow.tflow(resp=True)
    flowmeta.set_decision(f, Decision("allow", "allowed", "p/read"))
    assert livelog.decision_of(f) == "allow"
    flowmeta.set_approval(f, '{"kind":"hold","state":"approved"}')
    assert livelog.decision_of(f) == "hold"
    flowmeta.set_approval(f, '{"kind":"delay","state":"cancelled"}')
    flowmeta.set_decision(f, Decision("deny", "cancelled by alice", "p/read"))
    assert livelog.decision_of(f) == "delay"
    assert LiveLog(state).request_line(f).line().text().endswith("ms): cancelled by alice")


def test_a_secret_split_across_two_parts_of_a_request_line_is_not_shown(state, caplog: pytest.LogCaptureFixture
                                                                        ) -> None:
    """Each part of a line is scrubbed alone; a spelling that spans the space between two (the method the agent chose
    and the URL) is only whole in the joined line, which is scrubbed too."""
    spaced = "tok-canary-9f http://address"
    state.scrubber = SecretScrubber({spaced: "goex-placeholder-key"})
    f = tflow.tflow(resp=True)
    f.request.method = "tok-CANARY-9f"
    flowmeta.set_decision(f, Decision("allow", "allowed", "p/read"))
    with caplog.at_level(logging.INFO, logger="goex_proxy.live"):
        LiveLog(state).response(f)
    [logged] = caplog.records
    for shown_text in (logged.getMessage(), getattr(logged, livelog.LINE).text(colour=True)):
        assert spaced not in shown_text.lower() and "goex-placeholder-key" in shown_text, shown_text
