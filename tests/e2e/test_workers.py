"""`run --workers 2`: two proxy processes on one address sharing the state directory: one audit chain, limits
counted across both exactly, holds decided from anywhere, reloads in each, a dead worker started again, OAuth2
refreshes shared."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

import pytest

from goex_proxy import ids
from goex_proxy.workers import default_count
from tests.e2e.test_approvals import Agent, one_pending, wait_for

pytestmark = pytest.mark.e2e

POLICY = {"slack": """
    version: 1
    rules:
      - name: post
        allow: {host: slack.com, methods: [POST], path: /api/chat.postMessage, limit: {count: 15, per: 1h}}
      - name: delete after a person looks
        allow: {host: slack.com, methods: [POST], path: /api/chat.delete, hold: {timeout: 2m}}
"""}

# 40 posts at once, each on its own connection (so the kernel spreads them over the workers); prints the statuses.
BURST = """
import json, concurrent.futures, requests
def post(i):
    with requests.Session() as s:
        return s.post("https://slack.com/api/chat.postMessage", json={"channel": "C1", "text": f"m{i}"},
                      headers={"Connection": "close"}, timeout=60).status_code
with concurrent.futures.ThreadPoolExecutor(20) as pool:
    print(json.dumps(list(pool.map(post, range(40)))))
"""


def _workers_of(parent: int) -> list[int]:
    """The pids of the workers `run` (pid `parent`) started."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"--worker" in argv and b"--parent" in argv and argv[argv.index(b"--parent") + 1] == str(parent).encode():
            found.append(int(entry))
    return found


def _writer_of(proxy_pid: int) -> int | None:
    """The pid of the audit writer process a proxy process (`run`, or one of its workers) started, if it runs."""
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"goex_proxy.audit.offload" in argv and ppid == proxy_pid:
            return int(entry)
    return None


def _ended(pid: int) -> bool:
    """Whether the process has ended (gone, or a zombie nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def _listening(port: int) -> int:
    """How many sockets listen on 127.0.0.1:port (one per worker that has bound it)."""
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and local == f"0100007F:{port:04X}":
                count += 1
    return count


def _started(proxy: Any, times: int = 1) -> Any:
    """The proxy with two workers, once the second has loaded its config and policies (the first binds both
    sockets, so the port answers before it has)."""
    proxy.start(workers=2)
    _worker_started(proxy, times)
    return proxy


def _worker_started(proxy: Any, times: int = 1) -> None:
    wait_for(lambda: proxy.log_text().count("worker 1 started") >= times, what="the second worker", timeout=60)


def _burst(proxy: Any) -> list[int]:
    r = proxy.exec("mailbot", sys.executable, "-c", BURST, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_two_workers_share_one_chain_and_count_limits_across_both(make_proxy, upstream):
    proxy = _started(make_proxy(POLICY, start=False))
    statuses = _burst(proxy)
    assert statuses.count(200) == 15, statuses  # 15 an hour across both workers, not 15 each
    assert set(statuses) <= {200, 403, 429}
    rows = [r for r in proxy.rows() if r["path"] == "/api/chat.postMessage"]
    assert len(rows) == 40 and len({r["id"] for r in rows}) == 40
    assert len({ids.tag_of(str(r["id"])) for r in rows}) == 2, "both workers should have answered"
    assert len(upstream.state.slack_messages) == 15
    verified = proxy.cli("log", "verify")
    assert verified.returncode == 0 and "ok: " in verified.stdout, verified.stdout + verified.stderr


def test_another_process_joining_the_port_is_never_handed_a_connection(make_proxy, upstream):
    """Any process of the same user may add a socket to the workers' SO_REUSEPORT group; the group's filter steers
    every connection to the workers' own sockets, so a socket added later never gets one (it would see the agents'
    Proxy-Authorization)."""
    import socket

    proxy = _started(make_proxy(POLICY, start=False))
    rogue = socket.socket()
    rogue.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    rogue.bind(("127.0.0.1", proxy.port))
    rogue.listen(100)
    rogue.setblocking(False)
    try:
        assert _listening(proxy.port) == 3
        assert _burst(proxy).count(200) == 15
        with pytest.raises(BlockingIOError):
            rogue.accept()
    finally:
        rogue.close()


@pytest.mark.parametrize("change", ["listen", "limits"])
def test_a_worker_is_not_started_again_from_a_config_that_moved(make_proxy, upstream, change):
    """A config that now says another address, or anything else a running proxy takes over only at a restart (limits
    here), is not what the other workers run with: the dead worker is not started from it."""
    proxy = _started(make_proxy(POLICY, start=False))
    assert proxy.proc is not None
    text = proxy.config.read_text()
    moved = text.replace(f"listen: 127.0.0.1:{proxy.port}", "listen: 127.0.0.1:1") if change == "listen" \
        else text + "limits: {max_connections_per_agent: 7}\n"
    assert moved != text
    proxy.config.write_text(moved)
    first = wait_for(lambda: _workers_of(proxy.proc.pid), what="the second worker")[0]
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: "not started again while" in proxy.log_text(), what="the refusal", timeout=20)
    assert f"changes {change} since `run` started" in proxy.log_text() and not _workers_of(proxy.proc.pid)
    assert proxy.proc.poll() is None  # the first worker still serves
    proxy.config.write_text(text)  # back as it was: the worker is started again
    _worker_started(proxy, 2)


def test_holds_are_decided_from_anywhere_and_each_worker_reloads(make_proxy, upstream):
    proxy = _started(make_proxy(POLICY, start=False))
    held = Agent(proxy, "chat.delete", {"channel": "C1", "ts": "1.2"})
    card = one_pending(proxy)
    assert proxy.cli("approve", card["id"]).returncode == 0
    assert held.outcome()["status"] == 200
    # A policy edit reaches every worker: no post goes out afterwards, whichever worker takes it.
    proxy.write_policy("slack", """
        version: 1
        rules:
          - name: no more posts
            deny: {host: slack.com, methods: [POST], path: /api/chat.postMessage}
    """)
    before = len(upstream.state.slack_messages)

    def both_reloaded() -> bool:
        return proxy.log_text().count("reloaded") >= 2

    wait_for(both_reloaded, what="a reload in each worker", timeout=30)
    statuses = _burst(proxy)
    assert statuses == [403] * 40, statuses
    assert len(upstream.state.slack_messages) == before


def test_a_dead_worker_is_started_again_and_all_stop_with_run(make_proxy, upstream):
    several = default_count() > 1
    proxy = _started(make_proxy(POLICY, start=False))
    parent = proxy.proc.pid
    first = wait_for(lambda: _workers_of(parent), what="the second worker")[0]
    # On 2 cores or more one writer process, the first's, writes every worker's rows: a worker starts none.
    writer = wait_for(lambda: _writer_of(parent), what="the audit writer process") if several else None
    assert _writer_of(first) is None
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: [p for p in _workers_of(parent) if p != first], what="a new worker", timeout=30)[0]
    _worker_started(proxy, 2)
    assert "worker 1 exited with -9; starting it again" in proxy.log_text()
    assert _burst(proxy).count(200) == 15
    if writer is not None:  # the new worker was handed a link to the same writer, which wrote its rows too
        assert _writer_of(parent) == writer and _writer_of(second) is None
        assert "the audit writer process ended" not in proxy.log_text()
    proxy.stop()
    assert proxy.proc.returncode == 0
    time.sleep(0.5)
    assert not os.path.exists(f"/proc/{second}") or b"zombie" in open(f"/proc/{second}/status", "rb").read().lower()


@pytest.mark.parametrize("round_", range(3))
def test_stopping_by_signals_to_every_process_prints_no_traceback(make_proxy, upstream, round_):
    """A terminal's Ctrl-C or `kill` of the process group signals `run` and its workers at once (and `run` signals
    them again): each stops cleanly, saying nothing a person would take for a crash."""
    proxy = _started(make_proxy(POLICY, start=False))
    assert _burst(proxy).count(200) == 15
    parent = proxy.proc.pid
    pids = [parent, *wait_for(lambda: _workers_of(parent), what="the second worker")]
    for _ in range(3):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(0.02 * round_)
    proxy.proc.wait(30)
    time.sleep(0.5)
    text = proxy.log_text()
    assert "Traceback" not in text and "Exception ignored" not in text, text[-3000:]
    assert proxy.proc.returncode == 0


# 120 posts, 20 at a time, each on its own connection; prints the statuses (0: the connection failed).
LONG_BURST = """
import json, concurrent.futures, requests
def post(i):
    try:
        with requests.Session() as s:
            return s.post("https://slack.com/api/chat.postMessage", json={"channel": "C1", "text": f"m{i}"},
                          headers={"Connection": "close"}, timeout=60).status_code
    except requests.RequestException:
        return 0
with concurrent.futures.ThreadPoolExecutor(20) as pool:
    print(json.dumps(list(pool.map(post, range(120)))))
"""


@pytest.mark.skipif(default_count() < 2, reason="a writer process runs on 2 cores or more")
def test_a_killed_writer_process_leaves_no_row_in_flight(make_proxy, upstream):
    """The audit writer processes killed under load: the rows one committed but whose outcomes it had not written yet
    (handed over, in its pipe or read), and those whose commit it never answered (their requests refused), are ended
    by its proxy process's thread, not left looking in flight while that process runs on."""
    import subprocess

    proxy = _started(make_proxy({"slack": POLICY["slack"].replace("count: 15", "count: 1000")}, start=False))
    wait_for(lambda: _workers_of(proxy.proc.pid), what="the second worker")
    writer = wait_for(lambda: _writer_of(proxy.proc.pid), what="the audit writer process")  # every worker's
    burst = subprocess.Popen([*proxy_exec(proxy), sys.executable, "-c", LONG_BURST], env=proxy.env,
                             stdout=subprocess.PIPE, text=True)
    wait_for(lambda: len(proxy.rows()) > 30, what="rows")
    os.kill(writer, signal.SIGKILL)
    statuses = json.loads(burst.communicate(timeout=120)[0])
    assert set(statuses) <= {200, 502} and statuses.count(200) > 30, statuses

    def unended() -> list[Any]:
        return [r["id"] for r in proxy.rows() if r["status"] is None and r["error"] is None]

    wait_for(lambda: not unended(), what="every row to have its outcome", timeout=10)
    assert [r["status"] for r in proxy.rows()].count(200) == statuses.count(200)
    verified = proxy.cli("log", "verify")
    assert verified.returncode == 0 and "ok: " in verified.stdout, verified.stdout + verified.stderr


def proxy_exec(proxy: Any) -> list[str]:
    """`goex-proxy exec` as the agent mailbot through this proxy, the command to follow."""
    from tests.conftest import GOEX

    return [*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--"]


def test_ctrl_c_under_load_answers_nothing_its_rows_say_was_interrupted(make_proxy, upstream):
    """Ctrl-C (SIGINT to the process group) while agents post: everything stops (no audit writer process left, no
    traceback, exit 0), and no agent gets an answer whose row says its request was interrupted (the first process
    serves on while its workers stop, after its audit log closed)."""
    import subprocess

    from tests.conftest import GOEX, wait_port

    proxy = make_proxy({"slack": POLICY["slack"].replace("count: 15", "count: 1000")}, start=False)
    with open(proxy.log_path, "ab") as log:
        proxy.proc = subprocess.Popen([*GOEX, "run", "--config", str(proxy.config), "--workers", "2"], env=proxy.env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_port(proxy.port, proc=proxy.proc)
    _worker_started(proxy)
    burst = subprocess.Popen([*proxy_exec(proxy), sys.executable, "-c", LONG_BURST], env=proxy.env,
                             stdout=subprocess.PIPE, text=True)
    wait_for(lambda: len(proxy.rows()) > 30, what="rows")
    os.killpg(proxy.proc.pid, signal.SIGINT)
    assert proxy.proc.wait(30) == 0
    statuses = json.loads(burst.communicate(timeout=120)[0])
    text = proxy.log_text()
    assert "Traceback" not in text and "Exception ignored" not in text, text[-3000:]
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _writer_of_home(int(p), proxy.home)]
    done = {json.loads(r["req_body"])["text"] for r in proxy.rows() if r["status"] == 200}
    answered = {f"m{i}" for i, status in enumerate(statuses) if status == 200}
    assert answered <= done, sorted(answered - done)


def _under_load(make_proxy: Any) -> tuple[Any, int, int, Any]:
    """`run --workers 2` with LONG_BURST posting through it and its log past 30 rows: the proxy, its second worker's
    pid, the audit writer process's and the burst's process."""
    import subprocess

    proxy = _started(make_proxy({"slack": POLICY["slack"].replace("count: 15", "count: 1000")}, start=False))
    worker = wait_for(lambda: _workers_of(proxy.proc.pid), what="the second worker")[0]
    writer = wait_for(lambda: _writer_of(proxy.proc.pid), what="the audit writer process")
    burst = subprocess.Popen([*proxy_exec(proxy), sys.executable, "-c", LONG_BURST], env=proxy.env,
                             stdout=subprocess.PIPE, text=True)
    wait_for(lambda: len(proxy.rows()) > 30, what="rows")
    return proxy, worker, writer, burst


def _writer_of_home(pid: int, home: Any) -> bool:
    """Whether the process is an audit writer process of the proxy whose home this is."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read()
    except OSError:
        return False
    return b"goex_proxy.audit.offload" in argv and str(home).encode() in argv


@pytest.mark.skipif(default_count() < 2, reason="a writer process runs on 2 cores or more")
def test_stopping_with_a_stopped_writer_process_leaves_nothing_behind(make_proxy, upstream):
    """`run` stopped while the audit writer process its workers share is stopped (SIGSTOP) under load: the first
    process, given the time to, kills it, and each worker ends its rows; a worker killed first by `run` left its rows
    in flight (and, when each had a writer process, that process stopped for good, holding the log's write lock
    maybe)."""
    proxy, _, writer, burst = _under_load(make_proxy)
    os.kill(writer, signal.SIGSTOP)
    try:
        time.sleep(0.3)
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(40) == 0
        burst.communicate(timeout=120)
        wait_for(lambda: _ended(writer), what="the stopped writer process to end", timeout=5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(writer, signal.SIGKILL)
    assert [r["id"] for r in proxy.rows() if r["status"] is None and r["error"] is None] == []


@pytest.mark.skipif(default_count() < 2, reason="a writer process runs on 2 cores or more")
def test_a_worker_started_again_once_the_shared_writer_is_gone_writes_by_a_writer_of_its_own(make_proxy, upstream):
    """The shared writer process killed, then a worker killed too: the worker started again gets no link (there is no
    writer to hand one to) and starts a writer process of its own; every row still gets its outcome."""
    proxy = _started(make_proxy({"slack": POLICY["slack"].replace("count: 15", "count: 1000")}, start=False))
    parent = proxy.proc.pid
    first = wait_for(lambda: _workers_of(parent), what="the second worker")[0]
    writer = wait_for(lambda: _writer_of(parent), what="the audit writer process")
    os.kill(writer, signal.SIGKILL)
    time.sleep(0.3)
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: [p for p in _workers_of(parent) if p != first], what="a new worker", timeout=30)[0]
    _worker_started(proxy, 2)
    wait_for(lambda: _writer_of(second), what="the new worker's own writer process", timeout=20)
    statuses = _burst(proxy)
    # The first process, idle until now, learns its writer died from the first rows it hands it, in one turn of its
    # event loop: those are refused (502, fail closed), as a lone proxy's are. How many depends on how many of the 20
    # requests at once reached it in that turn (CI saw 7 of 40 refused under load): never more than 20, never from the
    # second worker, and no request after them.
    assert set(statuses) <= {200, 502} and statuses.count(200) >= 20, (statuses, proxy.log_text()[-6000:])
    assert _burst(proxy) == [200] * 40, proxy.log_text()[-6000:]
    assert [r["id"] for r in proxy.rows() if r["status"] is None and r["error"] is None] == []
    proxy.stop()
    assert proxy.proc.returncode == 0
    text = proxy.log_text()
    assert "Traceback" not in text, text[-3000:]


@pytest.mark.skipif(default_count() < 2, reason="a writer process runs on 2 cores or more")
def test_run_stops_with_a_stopped_worker_ending_its_rows(make_proxy, upstream):
    """A worker stopped with SIGSTOP holds rows in flight; `run` stopped then kills it in the end: its rows are ended
    (by the shared writer, which waits for it a while), and the writer process does not outlive `run`. A worker's
    first rows went to its thread writer while its link waited for the writer's word, and were left in flight when
    their requests were still going (3 runs in 16). `run` takes ~30 s (5 s of the shared writer waiting for the
    stopped worker, then 25 for `Workers.stop`)."""
    proxy, worker, writer, burst = _under_load(make_proxy)
    os.kill(worker, signal.SIGSTOP)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(60) == 0
        took = time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)
    burst.kill()
    burst.communicate()
    wait_for(lambda: _ended(writer), what="the writer process to end", timeout=5)
    left = [r for r in proxy.rows() if r["status"] is None and r["error"] is None]
    assert not left, ([(r["id"], r["ts"], r["path"]) for r in left], took, proxy.log_text()[-6000:])
    assert took < 40, took
