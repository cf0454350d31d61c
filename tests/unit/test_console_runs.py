"""The console's runs of `execute` over a real state directory: model calls recorded by modellog, file runs recorded
by the sandbox's own `finish`, served by a real console and asked with httpx; keep/undo change the real workspace."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from goex_proxy.agent import modellog
from goex_proxy.agent.taskprompt import first_messages
from goex_proxy.audit import store as audit
from goex_proxy.config import LLM, Config, load_config
from goex_proxy.sandbox import runs
from tests.unit.test_console import SCRIPT, Running, fill, write_config

MODEL = LLM(base_url="http://127.0.0.1:9/v1", model="test-model")


@pytest.fixture
def state(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path))


@pytest.fixture
def console(state: Config) -> Iterator[Running]:
    running = Running(state)
    yield running
    running.close()


def record(config: Config, task: str, code: str, rows: list[str], revise_of: str | None = None,
           agent: str = "bot") -> int:
    """One model call as `execute` records it: the question, the answer, the code run, its exit code and rows."""
    messages = first_messages(task, "brief")
    if revise_of is not None:
        messages += [{"role": "assistant", "content": revise_of}, {"role": "user", "content": "it failed"}]
    conn = audit.connect(config)
    try:
        seq = modellog.record_call(conn, "execute", agent, task, MODEL, messages, reply=f"```python\n{code}```")
        modellog.update(conn, seq, code=code, exit_code=0, rows=rows, choice="keep")
    finally:
        conn.close()
    return int(seq)


def file_run(config: Config, workspace: Path, files: dict[str, str], agent: str = "bot") -> runs.Run:
    """A jailed run's layer as the overlay leaves it, recorded (held, not applied) by the sandbox's own `finish`."""
    started = time.time()
    layer = runs.new_run_dir(config)
    for name, text in files.items():
        (layer.upper / name).write_text(text)
    found = runs.finish(config, layer, agent, str(workspace), [sys.executable, "-u", "/tmp/goex-execute-x/attempt1.py"],
                        started, 0, apply=False)
    assert found is not None
    return found


def csrf_of(console: Running, client: httpx.Client) -> str:
    port = console.served.address[1]
    return str(console.served.console.keys.csrf(str(client.cookies[f"goex_console_{port}"])))


def test_a_runs_long_code_line_is_on_its_page_whole_and_escaped(console: Running, state: Config) -> None:
    [rid] = fill(state, [{"method": "GET"}])
    long_line = "x = '" + "a" * 3000 + SCRIPT + "b" * 3000 + "'"
    first = record(state, f"post a joke {SCRIPT}", "raise SystemExit(1)\n", [])
    second = record(state, f"post a joke {SCRIPT}", long_line + "\nprint(x)\n", [rid], revise_of="raise SystemExit(1)")
    client = console.client()
    listing = client.get("/runs")
    assert listing.status_code == 200 and f'href="/runs/{first}"' in listing.text
    assert f'href="/runs/{second}"' not in listing.text  # a revision is a call of the same run, not a run
    page = client.get(f"/runs/{first}").text
    escaped = long_line.replace("'", "&#39;").replace("<", "&lt;").replace(">", "&gt;")
    assert escaped in page and SCRIPT not in page
    assert page.count("Model call ") == 2 and "raise SystemExit(1)" in page
    assert f'href="/request/{rid}"' in page and "It changed no file." in page
    css = client.get("/static/console.css").text
    rule = css[css.index("pre.code{"):].split("}", 1)[0]
    assert "white-space:pre-wrap" in rule and "overflow-wrap:anywhere" in rule and "max-height:none" in rule
    assert client.get("/runs/999999").status_code == 404
    assert console.client(signed_in=False).get(f"/runs/{first}").status_code == 401


def test_keep_and_undo_of_a_runs_files_change_and_restore_the_workspace(console: Running, state: Config,
                                                                       tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("before\n")
    seq = record(state, "edit the notes", "open('notes.txt', 'w').write('after')\n", [])
    held = file_run(state, workspace, {"notes.txt": "after\n", "new.txt": "made\n"})
    client = console.client()
    page = client.get(f"/runs/{seq}").text
    assert held.id in page and "pending" in page and "Keep these file changes" in page
    keep = f"/runs/{seq}/files/{held.id}/keep"
    assert client.post(keep, data={}).status_code == 403
    assert client.post(keep, data={"csrf": "0" * 64}).status_code == 403
    assert (workspace / "notes.txt").read_text() == "before\n" and not (workspace / "new.txt").exists()
    csrf = csrf_of(console, client)
    r = client.post(keep, data={"csrf": csrf})
    assert r.status_code == 200 and "kept the file changes" in r.text, r.text
    assert (workspace / "notes.txt").read_text() == "after\n" and (workspace / "new.txt").read_text() == "made\n"
    assert runs.load(state, held.id).state == runs.KEPT
    (workspace / "new.txt").write_text("edited by hand later\n")  # undo must not silently overwrite this
    undo = f"/runs/{seq}/files/{held.id}/undo"
    conflict = client.post(undo, data={"csrf": csrf})
    assert conflict.status_code == 409 and "changed since the run" in conflict.text and 'name="force"' in conflict.text
    assert (workspace / "notes.txt").read_text() == "after\n"
    forced = client.post(undo, data={"csrf": csrf, "force": "1"})
    assert forced.status_code == 200 and "restored" in forced.text
    assert (workspace / "notes.txt").read_text() == "before\n" and not (workspace / "new.txt").exists()
    assert runs.load(state, held.id).state == runs.UNDONE
    assert client.post(undo, data={"csrf": csrf}).status_code == 409  # nothing left to undo


def test_undo_all_of_a_run_drops_its_held_files_and_passes_over_reads(console: Running, state: Config,
                                                                      tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    [read] = fill(state, [{"method": "GET"}])
    seq = record(state, "write a file", "open('out.txt', 'w').write('x')\n", [read])
    held = file_run(state, workspace, {"out.txt": "x\n"})
    other = tmp_path / "other"
    other.mkdir()
    record(state, "another task", "pass\n", [], agent="someone-else")
    untouched = file_run(state, other, {"keep.txt": "y\n"}, agent="someone-else")
    client = console.client()
    assert "Undo all of this run" in client.get(f"/runs/{seq}").text
    assert client.post(f"/runs/{seq}/undo", data={}).status_code == 403
    assert runs.load(state, held.id).state == runs.PENDING
    r = client.post(f"/runs/{seq}/undo", data={"csrf": csrf_of(console, client)})
    assert r.status_code == 200 and "dropped the unapplied changes" in r.text, r.text
    assert runs.load(state, held.id).state == runs.DISCARDED and not (workspace / "out.txt").exists()
    assert runs.load(state, untouched.id).state == runs.PENDING  # another agent's run is not this run's
    assert "Nothing of it is left to undo." in client.get(f"/runs/{seq}").text


def test_a_session_undo_takes_back_the_agents_file_runs_too(console: Running, state: Config, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("before\n")
    kept = file_run(state, workspace, {"notes.txt": "after\n"})
    runs.keep(state, kept.id)
    other = file_run(state, workspace, {"theirs.txt": "x\n"}, agent="someone-else")
    assert (workspace / "notes.txt").read_text() == "after\n"
    client = console.client()
    page = client.get("/session", params={"agent": "bot", "since": "1h"}).text
    assert kept.id in page and other.id not in page and "restore 1 path(s)" in page
    assert client.post("/session/undo", data={"agent": "bot", "run": kept.id}).status_code == 403
    assert client.post("/session/undo", data={"agent": "bot", "run": other.id,
                                              "csrf": csrf_of(console, client)}).status_code == 409
    assert runs.load(state, other.id).state == runs.PENDING  # another agent's run is refused, untouched
    done = client.post("/session/undo", data={"agent": "bot", "run": kept.id, "csrf": csrf_of(console, client)})
    assert done.status_code == 200 and f"file run {kept.id}: undone" in done.text, done.text
    assert (workspace / "notes.txt").read_text() == "before\n" and runs.load(state, kept.id).state == runs.UNDONE
