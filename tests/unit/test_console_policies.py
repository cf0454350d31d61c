"""The console's policies page over a real config and audit log: the loaded files and their rules, `policy check`'s
problems, and a pasted draft replayed against logged rows (nothing saved)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from goex_proxy.config import Config, load_config
from goex_proxy.console import policies
from tests.unit.test_console import SCRIPT, Running, fill, write_config

POLICY = """version: 1
name: team-slack
rules:
  - name: post messages
    allow:
      host: slack.com
      methods: [POST]
      path: /p*
"""
DRAFT = f"""version: 1
name: team-slack
rules:
  - name: no posting
    deny:
      host: slack.com
      methods: [POST]
      path: /p1
      reason: "{SCRIPT}"
  - name: post messages
    allow:
      host: slack.com
      methods: [POST]
      path: /p*
"""


@pytest.fixture
def state(tmp_path: Path) -> Config:
    (tmp_path / "team.yaml").write_text(POLICY)
    path = write_config(tmp_path)
    path.write_text("version: 1\nagents: {}\npolicies:\n  - {use: team.yaml, agents: [bot]}\n")
    return load_config(path)


@pytest.fixture
def console(state: Config) -> Iterator[Running]:
    running = Running(state)
    yield running
    running.close()


def files(root: Path) -> list[str]:
    """The files under the state directory, but SQLite's own (-wal, -shm: opening the log makes them)."""
    return sorted(str(p) for p in root.rglob("*") if not p.name.endswith(("-wal", "-shm")))


def csrf_of(console: Running, client: httpx.Client) -> str:
    port = console.served.address[1]
    return str(console.served.console.keys.csrf(str(client.cookies[f"goex_console_{port}"])))


def test_the_page_shows_the_loaded_files_their_rules_and_policy_checks_verdict(console: Running, state: Config,
                                                                               tmp_path: Path) -> None:
    client = console.client()
    page = client.get("/policies")
    assert page.status_code == 200 and "team-slack" in page.text and str(tmp_path / "team.yaml") in page.text
    assert "<td>post messages</td>" in page.text and "POST slack.com/p* (&#39;post messages&#39;)" in page.text
    assert 'id="check-ok"' in page.text
    (tmp_path / "team.yaml").write_text(POLICY + "  - name: broken\n    allow: {host: slack.com, methods: [FETCH]}\n")
    broken = client.get("/policies").text
    assert 'id="check-ok"' not in broken and "team.yaml:" in broken and "error(s)" in broken
    assert console.client(signed_in=False).get("/policies").status_code == 401


def test_a_draft_that_denies_what_was_allowed_shows_those_rows_and_saves_nothing(console: Running, state: Config,
                                                                                  tmp_path: Path) -> None:
    ids = fill(state, [{"rule": "team-slack/post messages"}, {"rule": "team-slack/post messages"}])
    client = console.client()
    assert client.post("/policies/whatif", data={"draft": DRAFT}).status_code == 403
    before = files(tmp_path)
    r = client.post("/policies/whatif", data={"draft": DRAFT, "csrf": csrf_of(console, client)})
    assert r.status_code == 200, r.text
    result = r.text[r.text.index('id="result"'):]
    assert "1 of 2 logged requests would be decided differently" in result
    assert f'href="/request/{ids[1]}"' in result and f'href="/request/{ids[0]}"' not in result
    assert 'class="d-allow">allow' in result and 'class="d-deny">deny' in result
    assert SCRIPT not in r.text and "&lt;script&gt;" in result
    assert "team-slack" in r.text and "no posting" not in r.text.split('id="whatif"')[0]  # the loaded file is unchanged
    assert files(tmp_path) == before and (tmp_path / "team.yaml").read_text() == POLICY
    same = client.post("/policies/whatif", data={"draft": POLICY, "csrf": csrf_of(console, client)}).text
    assert "No change: the 2 logged requests" in same
    bad = client.post("/policies/whatif", data={"draft": "version: 1\nname: x\nrules: 7\n",
                                                "csrf": csrf_of(console, client)})
    assert bad.status_code == 200 and "nothing was replayed" in bad.text


#: Three lists of 400 nested: 64 million evaluations, half a minute of CPU for one logged request.
LONG = "[" + ",".join(str(i) for i in range(400)) + "]"
HOSTILE = f"""version: 1
name: team-slack
rules:
  - name: post messages
    allow:
      host: slack.com
      methods: [POST]
      when: '{LONG}.all(x, {LONG}.all(y, {LONG}.all(z, x + y + z >= 0)))'
"""


def whatif_children(parent: int | None = None) -> list[int]:
    """The what-if processes that `parent` (this process by default) started."""
    parent = os.getpid() if parent is None else parent
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"whatifjob" in command:
            found.append(int(stat.parent.name))
    return found


def test_a_draft_that_runs_too_long_is_stopped_at_the_time_limit_and_said_in_one_line(
        console: Running, state: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policies, "TIMEOUT_S", 1.5)
    fill(state, [{"rule": "team-slack/post messages"}])
    client, other = console.client(), console.client()
    answers: list[httpx.Response] = []
    started = time.monotonic()
    slow = threading.Thread(target=lambda: answers.append(client.post(
        "/policies/whatif", data={"draft": HOSTILE, "csrf": csrf_of(console, client)})))
    slow.start()
    deadline = time.monotonic() + 5
    while not whatif_children() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert whatif_children(), "the what-if runs in a process of its own"
    second = other.post("/policies/whatif", data={"draft": POLICY, "csrf": csrf_of(console, other)})
    assert "another what-if is running" in second.text  # one at a time
    assert other.get("/policies").status_code == 200  # the console answers meanwhile
    slow.join(30)
    took = time.monotonic() - started
    [r] = answers
    assert r.status_code == 200 and took < 10, took
    result = r.text[r.text.index('id="result"'):]
    assert result.count("the what-if stopped after 1.5 s: ") == 1 and "nests .all() in the body of .all()" in result
    assert not whatif_children()  # killed and reaped
    assert "No change" in other.post("/policies/whatif", data={"draft": POLICY,
                                                                "csrf": csrf_of(console, other)}).text


def test_a_draft_that_needs_too_much_memory_is_stopped_and_said(console: Running, state: Config,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policies, "MEMORY_BYTES", 100 << 20)
    fill(state, [{"rule": "team-slack/post messages", "req_body": b"x" * (4 << 20)}])
    draft = HOSTILE.replace(HOSTILE.split("when: ")[1].strip(), "'" + " + ".join(["request.body"] * 40) + " != \"\"'")
    client = console.client()
    r = client.post("/policies/whatif", data={"draft": draft, "csrf": csrf_of(console, client)})
    assert r.status_code == 200
    result = r.text[r.text.index('id="result"'):]
    assert "it needed more than the 100 MiB of memory it may use" in result, result
