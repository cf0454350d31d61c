"""The console's runs of `execute` over a real state directory: model calls recorded by modellog, file runs recorded
by the sandbox's own `finish`, served by a real console and asked with httpx; keep/undo change the real workspace."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Literal

from goex_proxy.agent import modellog
from goex_proxy.agent.taskprompt import first_messages
from goex_proxy.audit import store as audit
from goex_proxy.config import LLM, Config
from goex_proxy.sandbox import runs
from tests.unit import test_console as shared
from tests.unit.test_console import SCRIPT, Running, fill
from tests.unit.test_console_policies import csrf_of

#: The console served over a state directory with an empty config, as test_console sets it up (tests ask by name).
state, console = shared.state, shared.console
MODEL = LLM(base_url="http://127.0.0.1:9/v1", model="test-model")


def record(config: Config, task: str, code: str, rows: list[str], revise_of: str | None = None,
           agent: str = "bot", run: int | Literal["new"] | None = None) -> int:
    """One model call as `execute` records it: the question, the answer, the code run, its exit code and rows (`run`:
    the run it belongs to, as `execute` records it now; None: as it did before runs were recorded)."""
    messages = first_messages(task, "brief")
    if revise_of is not None:
        messages += [{"role": "assistant", "content": revise_of}, {"role": "user", "content": "it failed"}]
    conn = audit.connect(config)
    try:
        seq = modellog.record_call(conn, "execute", agent, task, MODEL, messages, reply=f"```python\n{code}```",
                                   run=run)
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


def test_two_executes_of_one_task_interleaved_with_another_agents_are_runs_of_their_own_calls(
        console: Running, state: Config) -> None:
    rids = fill(state, [{"method": "POST"} for _ in range(3)])
    task = "post a joke"
    a1 = record(state, task, "print('a1')\n", [rids[0]], run=modellog.NEW_RUN)
    o1 = record(state, task, "print('o1')\n", [], agent="someone-else", run=modellog.NEW_RUN)
    b1 = record(state, task, "print('b1')\n", [rids[1]], run=modellog.NEW_RUN)
    a2 = record(state, task, "print('a2')\n", [rids[2]], revise_of="print('a1')", run=a1)
    o2 = record(state, task, "print('o2')\n", [], revise_of="print('o1')", agent="someone-else", run=o1)
    b2 = record(state, task, "print('b2')\n", [], revise_of="print('b1')", run=b1)
    legacy = record(state, "an older task", "print('l1')\n", [])  # recorded before runs were: guessed from prompts
    legacy2 = record(state, "an older task", "print('l2')\n", [], revise_of="print('l1')")
    conn = audit.connect(state)
    try:
        numbered = {c["seq"]: c["run"] for c in modellog.calls(conn)}
    finally:
        conn.close()
    assert numbered == {a1: a1, o1: o1, b1: b1, a2: a1, o2: o1, b2: b1, legacy: None, legacy2: None}
    client = console.client()
    listing = client.get("/runs").text
    for first in (a1, o1, b1, legacy):
        assert f'href="/runs/{first}"' in listing
    for later in (a2, o2, b2, legacy2):
        assert f'href="/runs/{later}"' not in listing
    for first, mine, theirs, requests in ((a1, ("a1", "a2"), ("b1", "b2", "o1", "o2"), (rids[0], rids[2])),
                                          (b1, ("b1", "b2"), ("a1", "a2", "o1", "o2"), (rids[1],)),
                                          (o1, ("o1", "o2"), ("a1", "a2", "b1", "b2"), ()),
                                          (legacy, ("l1", "l2"), ("a1", "b1"), ())):
        page = client.get(f"/runs/{first}").text
        assert page.count("Model call ") == 2, (first, page)
        assert all(f"print(&#39;{c}&#39;)" in page for c in mine), (first, mine)
        assert not any(f"print(&#39;{c}&#39;)" in page for c in theirs), (first, theirs)
        assert {r for r in rids if f'href="/request/{r}"' in page} == set(requests), first
