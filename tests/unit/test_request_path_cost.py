"""What the request path no longer spends per request: each test pins one saving of issue 20's (bench/README.md,
"The request path")."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import hooks, http

from goex_proxy.ids import RequestIds


def test_the_running_proxy_builds_requests_without_mitmproxys_field_type_checks(tmp_path: Path) -> None:
    """mitmproxy checks every field of every request and response it parses unless Python runs with -O (~41 µs of a
    GET); `run`'s master turns that off."""
    from goex_proxy.config import load_config
    from goex_proxy.policy.engine import PolicySet
    from goex_proxy.runtime import build_master

    config = tmp_path / "config.yaml"
    config.write_text("version: 1\n", encoding="utf-8")

    async def main() -> None:
        m = build_master(load_config(config), PolicySet())
        await m.addons.trigger_event(hooks.DoneHook())

    asyncio.run(main())
    # A str where mitmproxy's parser always gives bytes: its debug check would raise TypeError.
    http.ResponseData("HTTP/1.1", 200, b"OK", http.Headers(), b"", None, 1.0, 2.0)  # type: ignore[arg-type]


def test_the_rows_a_batch_commits_wake_the_event_loop_once(tmp_path: Path) -> None:
    """The record stage's waits for its rows' commit are settled on the event loop together, one wake-up of the loop
    per batch: `asyncio.wrap_future` woke it through its self-pipe for each row."""
    from goex_proxy.audit.seal import Seal
    from goex_proxy.audit.writer import AuditWriter

    writer = AuditWriter(tmp_path / "audit.db", Seal(tmp_path))
    made = RequestIds()

    async def main() -> list[str | None]:
        loop = asyncio.get_running_loop()
        posted = 0
        post = loop.call_soon_threadsafe

        def counted(*args: object) -> object:
            nonlocal posted
            posted += 1
            return post(*args)  # type: ignore[arg-type]

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        queued = threading.Event()
        writer.apply(lambda conn, w: queued.wait(5))  # the writer is busy while all five are queued: one batch
        rows = [_get_row(made) for _ in range(5)]
        waits = [writer.awaited_intent(row) for row in rows]
        queued.set()
        results = await asyncio.gather(*waits)
        assert posted == 1
        return results

    try:
        assert asyncio.run(main()) == [None] * 5
    finally:
        writer.close()


def test_identify_reads_a_plain_requests_credentials_once_and_takes_off_only_headers_it_sent(tmp_path: Path,
                                                                                              monkeypatch) -> None:
    """A plain request's Proxy-Authorization was decoded and checked twice, and five headers popped whether sent or
    not (a `pop` of a missing one raises KeyError inside): ~25 µs of a GET."""
    import base64

    from mitmproxy.test import taddons, tflow

    from goex_proxy.addons import flowmeta
    from goex_proxy.addons.identify import Identify
    from tests.conftest import READ_PATH_POLICY, stage_state

    checks, pops = [], []
    check, pop = Identify.check, http.Headers.pop

    def counted_check(self: Identify, *creds: str) -> tuple[str | None, str]:
        checks.append(creds[0])
        return check(self, *creds)

    def counted_pop(self: http.Headers, key: str, *default: object) -> object:
        pops.append(key)
        return pop(self, key, *default)

    monkeypatch.setattr(Identify, "check", counted_check)
    monkeypatch.setattr(http.Headers, "pop", counted_pop)
    with stage_state(tmp_path, READ_PATH_POLICY) as state, taddons.context():
        f = tflow.tflow()
        f.request.headers["Proxy-Authorization"] = "Basic " + base64.b64encode(b"bot:bot-token-4242").decode()
        Identify(state).requestheaders(f)
    assert flowmeta.agent(f) == "bot" and "Proxy-Authorization" not in f.request.headers
    assert checks == ["bot"] and pops == ["Proxy-Authorization"]


class _CountedWrites(io.RawIOBase):
    """A terminal or pipe standing in for stdout: keeps what reaches it, one entry per write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.writes.append(bytes(data))
        return len(data)


def test_the_lines_of_one_turn_of_the_event_loop_reach_stdout_in_one_write() -> None:
    """Each request's line was a write of its own (line buffering), which let go of the GIL: the requests' lines
    written on the loop in one turn now go out together when the turn ends; one from another thread goes out at once,
    after them, and so does any other line (a warning is not held past what the turn does next: a connection closed
    before its reason was written raced whoever read the log on seeing it closed)."""
    import logging

    from mitmproxy.addons.termlog import TermLogHandler

    from goex_proxy.addons import livelog
    from tests.unit.test_livelog import request

    def request_line(text: str) -> None:
        line = request(url=f"https://slack.com/{text}").line()
        said.info("%s", line.text(), extra={livelog.LINE: line})

    raw = _CountedWrites()
    out = io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8")
    handler = TermLogHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    said = logging.getLogger("goex_proxy.live")
    level = said.level
    said.setLevel(logging.INFO)  # as `run` logs requests' lines
    try:
        livelog.format_output()

        async def main() -> None:
            for n in range(3):
                request_line(f"line{n}")
            assert raw.writes == []
            await asyncio.sleep(0)
            assert len(raw.writes) == 1 and raw.writes[0].count(b"\n") == 3
            request_line("held")
            thread = threading.Thread(target=said.warning, args=("from the writer",))
            thread.start()
            thread.join()
            assert b"/held" in raw.writes[1] and raw.writes[2].endswith(b"from the writer\n")
            request_line("before")
            said.warning("a connection refused")  # at once, after the line held before it
            assert b"/before" in raw.writes[3] and raw.writes[-1].endswith(b"a connection refused\n")

        asyncio.run(main())
    finally:
        root.removeHandler(handler)
        said.setLevel(level)


def test_a_line_held_for_a_loop_that_closed_does_not_hold_back_another_loops_lines() -> None:
    """A line written in the last turn a loop runs (a thread's `asyncio.run` ending: the database gateway's) waits
    for a turn end that never comes. Every line after it, on any loop, was held behind it, never asking for a turn
    end of its own: the requests' lines reached stdout only at exit, or when some thread without a loop wrote."""
    from goex_proxy.addons.livelog import TurnBuffered

    out = io.StringIO()
    buffered = TurnBuffered(out)
    ended = asyncio.new_event_loop()

    def last() -> None:
        buffered.write("stopping\n")
        ended.stop()

    ended.call_soon(last)
    ended.run_forever()
    ended.close()

    async def main() -> None:
        buffered.write("GET\n")
        for _ in range(3):
            await asyncio.sleep(0)
        assert out.getvalue() == "stopping\nGET\n"

    asyncio.run(main())


def test_a_batch_is_anchored_in_place_without_a_file_made_or_freed(tmp_path: Path, monkeypatch) -> None:
    """Each batch's anchor was a new file renamed over the last: about 100 us of the writer's CPU a batch, and freeing
    the last file as much again (a thread of its own closed it). After the first, it is written in place into the
    anchor file, whose inode stays, and every batch's rows are anchored before its waiters are told."""
    import os

    from goex_proxy.audit import seal as seal_module
    from goex_proxy.audit.seal import Seal
    from goex_proxy.audit.writer import AuditWriter

    writer = AuditWriter(tmp_path / "audit.db", Seal(tmp_path))
    made = RequestIds()
    try:
        first = _get_row(made)
        assert writer.record_intent(first).result(5) is None
        inode = os.stat(tmp_path / "audit.anchor").st_ino
        renamed: list[object] = []
        monkeypatch.setattr(seal_module.os, "replace", lambda *args: renamed.append(args))
        for _ in range(5):
            row = _get_row(made)
            assert writer.record_intent(row).result(5) is None
            assert Seal(tmp_path).anchor().id == row["id"]  # type: ignore[union-attr]
        assert renamed == [] and os.stat(tmp_path / "audit.anchor").st_ino == inode
    finally:
        writer.close()


def _get_row(made: RequestIds) -> dict[str, Any]:
    """A GET's request row, with a new id from `made`."""
    return {"id": made.new(1_700_000_000.0), "ts": 1_700_000_000.0, "agent": "bot", "method": "GET", "scheme": "https",
            "host": "example.com", "port": 443, "path": "/", "url": "https://example.com/", "decision": "allow"}


def test_the_rows_of_one_turn_of_the_event_loop_are_written_in_one_transaction(tmp_path: Path, monkeypatch) -> None:
    """Requests whose rows the loop takes in one turn, each letting go of the GIL on the way (a socket write, say),
    are written together: the writer woke at the first row queued and wrote a transaction, and an anchor, for every
    two or three (each some 27 pages of the log)."""
    from goex_proxy.audit.seal import Seal
    from goex_proxy.audit.writer import AuditWriter

    commits: list[int] = []
    commit = AuditWriter._commit

    def counted(self: AuditWriter, batch: list[Any]) -> Any:
        commits.append(len(batch))
        return commit(self, batch)

    monkeypatch.setattr(AuditWriter, "_commit", counted)
    writer = AuditWriter(tmp_path / "audit.db", Seal(tmp_path))
    commits.clear()  # the writer's start
    made = RequestIds()

    async def request() -> str | None:
        time.sleep(0.002)  # what a request's own work does between its rows: the GIL let go
        return await writer.awaited_intent(_get_row(made))

    async def main() -> list[str | None]:
        return list(await asyncio.gather(*(request() for _ in range(5))))

    try:
        assert asyncio.run(main()) == [None] * 5
        assert commits == [5]
    finally:
        writer.close()


def test_what_a_turn_took_is_queued_before_anything_asked_for_after_it_on_the_loop(tmp_path: Path) -> None:
    """The record stage's rows and outcomes wait for the end of the loop's turn; anything else asked for on the loop
    after them in that turn (here a read in the writer's transaction) is still queued after them."""
    from goex_proxy.audit.seal import Seal
    from goex_proxy.audit.writer import AuditWriter

    writer = AuditWriter(tmp_path / "audit.db", Seal(tmp_path))
    request_id = RequestIds().new(1_700_000_000.0)

    async def main() -> Any:
        await writer.awaited_intent({"id": request_id, "ts": 1_700_000_000.0, "agent": "bot", "method": "GET",
                                     "scheme": "https", "host": "example.com", "port": 443, "path": "/",
                                     "url": "https://example.com/", "decision": "allow"})
        writer.outcome_in_turn(request_id, {"status": 200, "error": None, "ended": 1_700_000_001.0})
        return await asyncio.wrap_future(writer.apply(
            lambda conn, w: conn.execute("SELECT status FROM requests").fetchall()))

    try:
        assert asyncio.run(main()) == [(200,)]
    finally:
        writer.close()


def test_a_waiter_that_went_away_leaves_its_batchs_other_waiters_and_the_writer_going(tmp_path: Path) -> None:
    """A thread-safe future cancelled before its batch is written (`asyncio.wrap_future` cancels it when the task
    awaiting it is cancelled: a database client gone while its wait is written, a task ended at shutdown) made the
    writer's set_result raise InvalidStateError: the rest of the batch's waiters on the loop were never told (their
    requests waited forever) and the writer's thread ended (every request after it waited forever too)."""
    from goex_proxy.audit.seal import Seal
    from goex_proxy.audit.writer import AuditWriter

    writer = AuditWriter(tmp_path / "audit.db", Seal(tmp_path))
    made = RequestIds()

    async def main() -> list[str | None]:
        queued = threading.Event()
        writer.apply(lambda conn, w: queued.wait(5))  # the writer is busy while the next batch is queued
        gone = writer.record_intent(_get_row(made))
        waits = [writer.awaited_intent(_get_row(made)) for _ in range(2)]
        await asyncio.sleep(0)  # the turn's rows are queued, after the one whose waiter goes away
        assert gone.cancel()
        queued.set()
        first = list(await asyncio.wait_for(asyncio.gather(*waits), 5))
        return first + [await asyncio.wait_for(writer.awaited_intent(_get_row(made)), 5)]

    try:
        assert asyncio.run(main()) == [None] * 3
    finally:
        writer.close()


def test_an_unexpected_failure_after_the_commit_refuses_the_batch_and_the_writer_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure `_write` does not expect (here in keeping the anchor, outside the transaction's own guard) ended the
    writer's thread: its waiters, and every request after them, waited forever. Now the batch is refused (its
    requests are not sent) and the next one is written."""
    from goex_proxy.audit.seal import Seal
    from goex_proxy.audit.writer import AuditWriter
    from goex_proxy.errors import AuditError

    writer = AuditWriter(tmp_path / "audit.db", Seal(tmp_path))
    made = RequestIds()
    anchor = AuditWriter._anchor
    failures = iter([RuntimeError("a bug")])

    def fails_once(self: AuditWriter, head: Any) -> str | None:
        for exc in failures:
            raise exc
        return anchor(self, head)

    monkeypatch.setattr(AuditWriter, "_anchor", fails_once)
    try:
        with pytest.raises(AuditError, match="a bug"):
            writer.record_intent(_get_row(made)).result(5)

        async def on_the_loop() -> str | None:
            return await writer.awaited_intent(_get_row(made))

        assert asyncio.run(on_the_loop()) is None
        assert writer.record_intent(_get_row(made)).result(5) is None
    finally:
        writer.close()


def test_hooks_that_end_without_waiting_are_run_in_the_turn_that_asked_for_them(tmp_path: Path, monkeypatch) -> None:
    """mitmproxy 11 on Python 3.11 made a task of every hook a flow has (a name, a debug stamp, a turn of the event
    loop, then a second `server_event` to say it ended: ~12 µs, four a GET). A GET through the in-process proxy now
    makes one, for the request hook, which waits for its row's commit (its thread writer writes every row ahead; with
    `run`'s writer process a read makes none: `tests/e2e/test_reads_unwaited.py`). The agent still gets the
    upstream's answer, and each hook still ran (its row and its outcome are in the log)."""
    import dataclasses
    import sqlite3

    import requests
    from mitmproxy.utils import asyncio_utils

    from goex_proxy import runtime
    from goex_proxy.config import Route
    from goex_proxy.policy.engine import PolicySet
    from goex_proxy.policy.load import check_policy_text
    from tests.conftest import LoopbackServer
    from tests.e2e.test_inprocess import _config

    def answer(conn: Any) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")

    upstream = LoopbackServer(answer)
    made: list[str] = []
    create = asyncio_utils.create_task

    def counted(coro: Any, *, name: str, client: Any = None) -> Any:
        made.append(name)
        return create(coro, name=name, client=client)

    monkeypatch.setattr(asyncio_utils, "create_task", counted)
    policy = "version: 1\nname: p\nrules:\n  - name: read\n    allow: {host: api.example.test, methods: [GET], path: /hello}\n"
    loaded, problems = check_policy_text(policy, "p.yaml")
    assert loaded is not None, problems
    # Routed, as the benchmark's host is: a host reached by its own address has its addresses checked (a coroutine).
    config = dataclasses.replace(_config(tmp_path),
                                 routes={"api.example.test": Route("http", "127.0.0.1", upstream.port)})
    proxy = runtime.InProcessProxy(config, PolicySet.of([loaded]))
    try:
        got = requests.get("http://api.example.test/hello", timeout=10,
                           proxies={"http": f"http://bot:bot-token-4242@127.0.0.1:{proxy.port}"})
        assert (got.status_code, got.content) == (200, b"hello")
    finally:
        proxy.close()
        upstream.close()
    hooks_made = [name for name in made if name.startswith("handle_hook")]
    assert hooks_made == ["handle_hook(request)"]
    with sqlite3.connect(tmp_path / "audit.db") as db:
        assert db.execute("SELECT method, status FROM requests").fetchall() == [("GET", 200)]
