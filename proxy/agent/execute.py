"""`goex-proxy execute`: a model writes the code for a task, the person looks at it, it runs jailed through the
proxy, and the person keeps or undoes what it did; every step is recorded."""

from __future__ import annotations

import codecs
import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..audit import store as audit
from ..config import Config
from ..errors import GoexError
from ..policy.engine import PolicySet
from ..printable import shown
from ..sandbox import runs
from ..sandbox.diff import describe
from ..sandbox.jail import proxy_for_jail, start_jailed
from ..undo.plan import SAFE_METHODS
from . import llm, modellog
from .taskprompt import Attempt, agent_brief, feedback, first_messages

#: Seconds to wait after the program ends for the proxy to record the outcomes of its last requests.
OUTCOME_WAIT = 3.0
#: The exit status reported when the program was stopped at the time limit (as timeout(1) does).
TIMED_OUT = 124


@dataclass(frozen=True)
class Options:
    agent: str
    yes: bool
    show_only: bool
    retries: int
    timeout: float
    then: str  # ask | keep | undo
    workspace: Path | None = None


class Aborted(GoexError):
    """The person chose not to run the code."""


def execute(config: Config, policies: PolicySet, task: str, opts: Options, console: Any,
            show_rows: Callable[[list[dict[str, Any]]], None],
            undo_rows: Callable[[list[dict[str, Any]]], None],
            settle_hold: Callable[[str, str], None] | None = None) -> int:
    """The whole flow; returns the exit status for the command (the last program's, or 124 if it timed out).
    `settle_hold(ID, "commit" | "rollback")` carries out the choice for each held database transaction the code
    used (`transaction: hold`), while the gateway that holds it (an in-process one included) still runs."""
    model = llm.configured(config)
    conn = audit.connect(config)
    messages = first_messages(task, agent_brief(config, policies, opts.agent))
    calls: list[int] = []
    attempts: list[Attempt] = []
    held: list[runs.Run] = []  # the file changes of the last attempt, held until the person chooses
    status = 0
    choice = "aborted"
    try:
        with tempfile.TemporaryDirectory(prefix="goex-execute-") as tmp, proxy_for_jail(config) as bridged:
            for number in range(1, opts.retries + 2):
                code = _ask_for_code(config, conn, messages, opts.agent, task, calls, console)
                console.rule(f"attempt {number}: code written by {model.model}" if number > 1
                             else f"code written by {model.model}")
                reviewed = _review(code, opts, console)
                if reviewed is None:
                    choice = "shown only" if opts.show_only else "aborted"
                    modellog.update(conn, calls[-1], choice=choice)
                    return 0
                code = reviewed
                for earlier in held:  # a revision starts from the workspace as it was, not from a failed attempt's files
                    runs.undo(config, earlier.id)
                attempt, file_run = _run(bridged, opts, code, Path(tmp) / f"attempt{number}.py")
                held = [file_run] if file_run is not None else []
                attempts.append(attempt)
                modellog.update(conn, calls[-1], code=code, exit_code=attempt.exit_code,
                                rows=[str(r["id"]) for r in attempt.rows])
                status = TIMED_OUT if attempt.exit_code is None else attempt.exit_code
                click.echo(f"the program {_how_it_ended(attempt, opts.timeout)}; it made {len(attempt.rows)} "
                           f"request(s)" + (f", {len(attempt.denials)} denied" if attempt.denials else ""))
                show_rows(list(attempt.rows))
                _show_files(held)
                if not attempt.failed or number > opts.retries:
                    break
                messages = [*messages, {"role": "assistant", "content": f"```python\n{code}```"},
                            {"role": "user", "content": feedback(attempt)}]
                click.echo(f"asking the model to revise it ({opts.retries + 1 - number} more attempt(s) allowed)")
            every = [r for a in attempts for r in a.rows]
            choice, chosen = _keep_or_undo(every, held, opts)
            if settle_hold is not None:
                chosen = _settle_holds(every, choice, chosen, settle_hold)
        for run in held:  # undoing all drops the files too; keeping, or undoing some requests, keeps them
            if choice == "undo all":
                runs.undo(config, run.id)
                click.echo(f"dropped the file changes of run {run.id}; the workspace is as it was")
            else:
                runs.keep(config, run.id)
                click.echo(f"kept the file changes of run {run.id}; `goex-proxy files undo {run.id}` takes them back")
        if chosen:
            undo_rows(chosen)
    finally:
        if calls:
            for seq in calls:
                modellog.update(conn, seq, choice=choice)
        conn.close()
    return status


def _ask_for_code(config: Config, conn: Any, messages: list[dict[str, str]], agent: str, task: str,
                  calls: list[int], console: Any) -> str:
    assert config.llm is not None
    run = calls[0] if calls else modellog.NEW_RUN  # every call of one `execute` names its first: the console's run
    scrub = llm.secret_scrubber(config)  # a second lock: nothing the model reads should hold a secret, even by accident
    messages = [{**m, "content": scrub.text(m["content"])} for m in messages]
    asking = f"asking {config.llm.model} for the code (at most {config.llm.timeout:g}s)"
    started = time.monotonic()
    try:
        if console.is_terminal:
            with console.status(f"{asking}… Ctrl-C stops"):
                reply = llm.ask(config, messages)
        else:
            console.print(f"{asking}…", markup=False, highlight=False)
            reply = llm.ask(config, messages)
        console.print(f"{config.llm.model} answered in {time.monotonic() - started:.1f}s", markup=False,
                      highlight=False)
    except llm.LLMError as exc:
        calls.append(modellog.record_call(conn, "execute", agent, task, config.llm, messages, error=str(exc), run=run))
        raise
    calls.append(modellog.record_call(conn, "execute", agent, task, config.llm, messages, reply=reply, run=run))
    try:
        return llm.code_in(reply)
    except llm.LLMError as exc:
        modellog.update(conn, calls[-1], error=str(exc))
        raise


def reviewable(code: str) -> tuple[str, int]:
    """The code as a person reviews it: every character that renders as nothing or reorders the text around it
    (zero-width and bidirectional controls) written as an escape, lines kept; and how many were escaped."""
    out, hidden = [], 0
    for line in code.split("\n"):
        escaped = shown(line)
        hidden += escaped != line
        out.append(escaped)
    return "\n".join(out), hidden


def _review(code: str, opts: Options, console: Any) -> str | None:
    """Show all of the code (wrapped, never cropped; invisible characters escaped; its size and sha256); the code to
    run (perhaps edited), or None when it is not to run. The default answer runs nothing."""
    from rich.syntax import Syntax

    def show(text: str) -> None:
        visible, hidden = reviewable(text)
        # soft_wrap off for this print: a soft-wrapping console crops a Syntax's long lines instead of wrapping them
        console.print(Syntax(visible, "python", line_numbers=True, word_wrap=True), soft_wrap=False)
        digest = hashlib.sha256(text.encode()).hexdigest()
        console.print(f"{text.count(chr(10)) + (not text.endswith(chr(10)))} lines, {len(text.encode()):,} bytes, "
                      f"sha256 {digest}", markup=False, highlight=False)
        if hidden:
            console.print(f"WARNING: {hidden} line(s) hold characters that render invisibly or reorder the text; they "
                          "are shown as \\u escapes above, and that is what runs", markup=False, highlight=False)

    show(code)
    if opts.show_only:
        return None
    if opts.yes:
        return code
    if not sys.stdin.isatty():
        raise GoexError("execute asks before it runs code: pass --yes to run it without a terminal, or --show-only")
    while True:
        answer = click.prompt("run it, edit it in $EDITOR, or abort?", type=click.Choice(["run", "edit", "abort"]),
                              default="abort")
        if answer == "run":
            return code
        if answer == "abort":
            raise Aborted("aborted: nothing was run")
        edited = click.edit(code, extension=".py", require_save=False)
        if edited is not None and edited.strip():
            code = edited if edited.endswith("\n") else edited + "\n"
        show(code)


def _run(config: Config, opts: Options, code: str, path: Path) -> tuple[Attempt, runs.Run | None]:
    """Run the code jailed, streaming its output, stopped at the time limit; what it did, and its file changes (held
    for review)."""
    path.write_text(code, encoding="utf-8")
    started = time.time()
    jailed = start_jailed(config, opts.agent, [sys.executable, "-u", str(path)], opts.workspace, reveal=(path,),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          start_new_session=True)
    child = jailed.child
    errors: list[bytes] = []
    tees = [threading.Thread(target=_tee, args=(child.stdout, sys.stdout, []), daemon=True),
            threading.Thread(target=_tee, args=(child.stderr, sys.stderr, errors), daemon=True)]
    for tee in tees:
        tee.start()
    exit_code: int | None
    try:
        exit_code = child.wait(opts.timeout)
    except subprocess.TimeoutExpired:
        _kill(child)
        exit_code = None
    except KeyboardInterrupt:
        _kill(child)
        jailed.finish(None, apply=False)
        raise
    finally:
        jailed.close()
        for tee in tees:
            tee.join(5)
    file_run = jailed.finish(exit_code, apply=False)
    stderr = b"".join(errors).decode("utf-8", "replace")
    return Attempt(exit_code, stderr, tuple(_rows_since(config, opts.agent, started))), file_run


def _show_files(held: list[runs.Run]) -> None:
    """The file changes a run made in its workspace, one line each (`goex-proxy files diff` shows the lines)."""
    for run in held:
        click.echo(f"it changed {len(run.changes)} path(s) in {run.workspace} (run {run.id}; held until you choose; "
                   f"`goex-proxy files diff {run.id}` shows every line):")
        for change in run.changes:
            click.echo("  " + describe(change))


def _tee(stream: Any, out: Any, into: list[bytes]) -> None:
    """Copy the program's output to ours as it comes, keeping it in `into` (stderr: for the model's feedback). Its
    control characters are shown as escapes, line by line: the program writes to the person's terminal, and a
    sequence that moved the cursor, cleared the screen or made text invisible could hide the review printed after it
    under one the program printed."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    while True:
        chunk = stream.read1(65536)
        into.append(chunk)
        text = decoder.decode(chunk, final=not chunk)
        out.buffer.write("\n".join(shown(line) for line in text.split("\n")).encode("utf-8", "replace"))
        out.flush()
        if not chunk:
            return


def _kill(child: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()


def _rows_since(config: Config, agent: str, started: float) -> list[dict[str, Any]]:
    """The agent's audit rows from `started` on, oldest first, once their outcomes are recorded and no row has come
    for one more look (a read's row is committed up to tens of milliseconds after its answer reached the program)."""
    deadline = time.monotonic() + OUTCOME_WAIT
    conn = audit.connect(config, readonly=True)
    before: list[Any] | None = None
    try:
        while True:
            rows = [r for r in audit.query(conn, agent=agent, since=started, limit=None, order="ASC")
                    if not r.get("undo_of")]
            seen = [r["id"] for r in rows]
            ended = all(r["status"] is not None or r["error"] for r in rows)
            if (ended and seen == before) or time.monotonic() > deadline:
                return rows
            before = seen if ended else None
            time.sleep(0.05)
    finally:
        conn.close()


def _how_it_ended(attempt: Attempt, timeout: float) -> str:
    if attempt.exit_code is None:
        return f"was stopped at the time limit ({timeout:g}s)"
    if attempt.exit_code < 0:
        return f"was ended by signal {-attempt.exit_code}"
    return f"exited with status {attempt.exit_code}"


def _keep_or_undo(rows: list[dict[str, Any]], held: list[runs.Run], opts: Options
                  ) -> tuple[str, list[dict[str, Any]]]:
    """Ask (or take `--then`) whether to keep what the program did (requests and files) or undo all of it, or some of
    its requests (its files are then kept): the choice, and the rows to undo."""
    changes = [r for r in rows if r["decision"] in ("allow", "report") and r["method"] not in SAFE_METHODS]
    if not changes and not held:
        click.echo("nothing to keep or undo: the program changed nothing through the proxy and no file")
        return "keep (no changes)", []
    then = opts.then
    if then == "ask" and not sys.stdin.isatty():
        click.echo("kept (no terminal to ask on; pass --then undo to undo instead); `goex-proxy undo ID` can still "
                   "undo each request")
        return "keep", []
    chosen = changes
    if then == "ask":
        numbers = {str(i): r for i, r in enumerate(rows, start=1) if r in changes}
        what = f"{len(changes)} request(s)" + (f" and {sum(len(r.changes) for r in held)} file change(s)" if held else "")
        some = f", or undo some requests (row numbers {', '.join(numbers)})" if numbers else ""
        answer = click.prompt(f"keep what it did, undo all ({what}){some}?", default="keep").strip().lower()
        if answer in ("keep", "k"):
            return "keep", []
        if answer not in ("undo", "u", "undo all"):
            picked = answer.replace(",", " ").split()
            unknown = [p for p in picked if p not in numbers]
            if unknown or not picked:
                raise GoexError(f"not a choice: {answer!r} (keep, undo, or row numbers from {', '.join(numbers)}); "
                                "nothing was undone — `goex-proxy undo ID` still can")
            chosen = [numbers[p] for p in picked]
    elif then == "keep":
        click.echo("kept; `goex-proxy undo ID` can still undo each request")
        return "keep", []
    return "undo " + ("all" if chosen is changes else " ".join(str(r["id"]) for r in chosen)), chosen


_HELD = re.compile(r"held: undone by `goex-proxy db rollback ([0-9A-Z]+)`")


def hold_of(row: dict[str, Any]) -> str | None:
    """The held database transaction a statement's row belongs to (`transaction: hold`), from its undo class."""
    found = _HELD.match(str(row.get("undo_class") or ""))
    return found.group(1) if found else None


def _settle_holds(rows: list[dict[str, Any]], choice: str, chosen: list[dict[str, Any]],
                  settle_hold: Callable[[str, str], None]) -> list[dict[str, Any]]:
    """The run's held transactions follow the choice: kept, committed; undone (all, or any of its statements
    picked), rolled back whole. The rows left for the undo engine (held statements are undone by the rollback)."""
    holds = list(dict.fromkeys(h for r in rows if (h := hold_of(r)) is not None))
    undone = {hold_of(r) for r in chosen}
    for hold_id in holds:
        settle_hold(hold_id, "rollback" if choice == "undo all" or hold_id in undone else "commit")
    return [r for r in chosen if hold_of(r) is None]
