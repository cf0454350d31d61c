"""With `run`'s audit writer process, a read goes on as its row is handed over; a request that may change anything, one
counted toward a limit or asking for an upgrade, and every request under `audit.wait_for_reads`, waits for its
row's commit. Shown with the writer process stopped (SIGSTOP): what waits does not reach the upstream until it runs
again, and every row is in the log after."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
import requests

from tests.e2e.test_scenarios import SLACK, session

pytestmark = pytest.mark.e2e

POLICY = {"p": """
    version: 1
    name: p
    rules:
      - name: channels
        allow: {host: slack.com, methods: [GET, POST, DELETE], path: "/api/conversations.{list,history}"}
      - name: counted
        allow: {host: slack.com, methods: [GET], path: /api/users.list, limit: {count: 50, per: 1h}}
"""}

#: Requests that wait for their row: (name, method, path, headers).
WAITING = [("a write", "POST", "/conversations.history", {}),
           ("a GET a server runs as DELETE", "GET", "/conversations.history", {"X-HTTP-Method-Override": "DELETE"}),
           ("a GET counted toward a limit", "GET", "/users.list", {}),
           ("a GET asking for an upgrade", "GET", "/conversations.history",
            {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})]


@contextlib.contextmanager
def _writer_stopped(proxy) -> Iterator[None]:
    """The proxy's audit writer process stopped (SIGSTOP) for the block, then let go on."""
    found = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(proxy.proc.pid)], capture_output=True, text=True,
                           check=True).stdout
    pids = [int(line.split()[0]) for line in found.splitlines() if "goex_proxy.audit.offload" in line]
    assert len(pids) == 1, found  # `run` writes through a writer process on a machine with more than one core
    os.kill(pids[0], signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pids[0], signal.SIGCONT)


def _rows_with(proxy, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 15
    while len(rows := proxy.rows()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return rows


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="`run` has a writer process only with two cores or more")
def test_a_read_goes_on_while_the_writer_process_is_stopped_and_what_may_change_anything_waits(make_proxy, upstream):
    proxy = make_proxy(POLICY)
    s = session(proxy)
    assert s.get(f"{SLACK}/conversations.list").status_code == 200  # the writer process is up and answering
    with _writer_stopped(proxy):
        read = s.get(f"{SLACK}/conversations.list?while=stopped", timeout=10)
        assert read.status_code == 200
        for name, method, path, headers in WAITING:
            with pytest.raises(requests.exceptions.Timeout):
                session(proxy).request(method, f"{SLACK}{path}", headers=headers, timeout=1.5)
            assert upstream.seen_paths("slack.com") == ["/api/conversations.list",
                                                        "/api/conversations.list?while=stopped"], name
    rows = _rows_with(proxy, 2 + len(WAITING))
    assert [(r["method"], r["path"], r["status"]) for r in rows[:2]] == [
        ("GET", "/api/conversations.list", 200), ("GET", "/api/conversations.list?while=stopped", 200)]
    assert len(rows) == 2 + len(WAITING)  # each request that waited has its row, written ahead once the writer ran
    assert proxy.cli("log", "verify").returncode == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="`run` has a writer process only with two cores or more")
def test_wait_for_reads_makes_a_read_wait_for_its_row(make_proxy, upstream):
    proxy = make_proxy(POLICY, extra_config="audit: {wait_for_reads: true}\n")
    s = session(proxy)
    assert s.get(f"{SLACK}/conversations.list").status_code == 200
    with _writer_stopped(proxy):
        with pytest.raises(requests.exceptions.Timeout):
            session(proxy).get(f"{SLACK}/conversations.list?while=stopped", timeout=1.5)
        assert upstream.seen_paths("slack.com") == ["/api/conversations.list"]
    assert len(_rows_with(proxy, 2)) == 2
