"""The `goex-proxy` command line; the only place where exceptions become messages and exit codes.

Exit codes: 0 success; 1 a check found problems (policy check, log verify) or a record was not found;
2 bad usage, an invalid config or policy, or missing state; `exec` exits with its command's code.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..audit import store as audit
from ..config import Config, home, load_config, weak_token
from ..durations import parse_duration
from ..errors import AuditError, ConfigError, GoexError, NotFound, StateError, VaultError
from ..sandbox import agentenv


def _console() -> Any:
    """A rich console for human output, imported on first use so that `--json` and scripts start fast."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, flexible: int | tuple[int, ...] = (),
                 colour_column: int | None = None, title: str | None = None) -> None:
    """Every table of the command line, printed by the one renderer: on a terminal, fitted to its width by shortening
    the `flexible` columns; piped, each row whole on one line (ids never cut or wrapped, no trailing spaces)."""
    from .tables import render

    click.echo(render(headers, rows, flexible=flexible, colour_column=colour_column, title=title), nl=False)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn goex-proxy's own exceptions into a one-line message and an exit code, never a traceback."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            for problem in exc.problems:
                click.echo(str(problem), err=True)
            sys.exit(2)
        except NotFound as exc:
            click.echo(f"goex-proxy: {exc}", err=True)
            sys.exit(1)
        except sqlite3.DatabaseError as exc:
            click.echo(f"goex-proxy: the audit database cannot be read: {exc}", err=True)
            sys.exit(2)
        except GoexError as exc:
            click.echo(f"goex-proxy: {exc}", err=True)
            sys.exit(2)
        except click.ClickException:
            raise
        except Exception as exc:  # last resort: one line, never a traceback (GOEX_PROXY_DEBUG=1 shows it)
            if os.environ.get("GOEX_PROXY_DEBUG"):
                raise
            where = exc.__traceback__
            while where is not None and where.tb_next is not None:
                where = where.tb_next
            at = f" at {Path(where.tb_frame.f_code.co_filename).name}:{where.tb_lineno}" if where else ""
            click.echo(f"goex-proxy: internal error ({type(exc).__name__}{at}): {str(exc)[:300]}; this is a bug, "
                       "please report it (GOEX_PROXY_DEBUG=1 shows the traceback)", err=True)
            sys.exit(70)

    return run


def config_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
                        help="Config file (default: $GOEX_PROXY_HOME/config.yaml).")(fn)


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON, one object per line.")(fn)


def duration_option(name: str, default: str, help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An option taking a duration (`30s`, `5m`, `1h`), read by `parse_duration` like every duration goex-proxy takes
    (a plain number still means seconds); the command gets seconds."""
    def seconds(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
        text = value.strip()
        try:
            return float(text) if text.isdigit() and int(text) > 0 else parse_duration(text)
        except ValueError as exc:
            raise click.BadParameter(f"{exc}; a plain number is seconds") from None

    return click.option(name, metavar="DURATION", default=default, show_default=True, callback=seconds, help=help)


def _config(path: Path | None) -> Config:
    return load_config(path)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _iso(ts: float | None) -> str | None:
    """A recorded time for --json: ISO 8601 in UTC with its zone, to the millisecond (`ts` stays the epoch)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"must be a duration like 1h or an ISO time like 2026-11-24T10:00 (got {text!r})") from None
    return (moment if moment.tzinfo else moment.astimezone()).timestamp()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="goex-proxy")
def cli() -> None:
    """goex-proxy: let LLM agents use real accounts through a proxy that enforces policy and records everything."""


@cli.command()
@click.option("--force", is_flag=True, help="Write a fresh starter config even if one exists.")
@handle_errors
def init(force: bool) -> None:
    """Create the state directory ($GOEX_PROXY_HOME or ~/.goex-proxy): CA, audit database, starter config.

    Example: goex-proxy init
    """
    from .. import statedir

    state = home()
    made = statedir.init(state, force=force)
    for path in made:
        click.echo(f"created {path}")
    click.echo(f"goex-proxy state is in {state}" + ("" if made else " (nothing to do)"))
    click.echo("next: goex-proxy run   (then, in another shell: goex-proxy exec --agent agent -- curl https://example.com)")


@cli.command()
@config_option
@click.option("--quiet", is_flag=True, help="No line per request (reloads, warnings and errors are still shown).")
@handle_errors
def run(config_path: Path | None, quiet: bool) -> None:
    """Run the proxy in the foreground until Ctrl-C, with a line per request as it ends.

    Edits to the config, the policy files and the vault are picked up while it runs; an edit with a mistake is
    reported and the last good version stays in force.

    Example: goex-proxy run --config ~/.goex-proxy/config.yaml
    """
    from .. import runtime
    from ..policy.load import load_policy_set

    config = _config(config_path)
    policies = load_policy_set([(p.path, p.agents) for p in config.policies])
    runtime.check_can_listen(config)
    audit.connect(config).close()  # an unusable audit database is a reason not to start (exit 2)
    if any(c.secret.vault for c in config.credentials.values()):
        from ..credentials.vault import Vault

        stored = Vault(config.state_dir).all()  # a wrong key is a reason not to start (exit 2)
        for c in config.credentials.values():
            if c.secret.reveal(stored) is None:
                click.echo(f"goex-proxy: warning: credential {c.name!r} has no secret ({c.secret.describe()} is not "
                           "set); requests it is bound to will be denied", err=True)
    for name, agent in config.agents.items():
        token = agent.token.reveal()
        if token is None:
            click.echo(f"goex-proxy: warning: agent {name!r} has no token ({agent.token.describe()} is not set); "
                       "its requests will be refused", err=True)
        elif short := weak_token(token):
            click.echo(f"goex-proxy: warning: agent {name!r}'s token ({agent.token.describe()}) {short}; its requests "
                       "will be refused", err=True)
    click.echo(f"goex-proxy {__version__} on {config.listen_host}:{config.listen_port}; "
               f"{len(policies.policies)} polic{'y' if len(policies.policies) == 1 else 'ies'}; audit {config.audit_db}")
    runtime.run(config, policies, quiet)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


@cli.command(name="exec", context_settings={"ignore_unknown_options": True})
@config_option
@click.option("--agent", required=True, help="The agent the command acts as.")
@click.option("--jail/--no-jail", default=True, show_default=True,
              help="Run it in a jail (Linux namespaces): the proxy is its only way out, goex-proxy's files and the "
                   "person's credential stores are out of sight, the system is read-only, and workspace writes are "
                   "copy-on-write. --no-jail only sets the proxy variables (for containers and VMs).")
@click.option("--workspace", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The directory the jailed command may change (default: the current directory).")
@click.option("--files", "files_mode", type=click.Choice(["apply", "review"]), default="apply", show_default=True,
              help="When the jailed command ends: apply its file changes to the workspace (undo with `files undo`), "
                   "or hold them until `files keep` or `files undo`.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@handle_errors
def exec_(config_path: Path | None, agent: str, jail: bool, workspace: Path | None, files_mode: str,
          command: tuple[str, ...]) -> None:
    """Run COMMAND as AGENT, jailed, with its traffic sent through the proxy; exits with COMMAND's exit code.

    Example: goex-proxy exec --agent mailbot -- python agent.py
    """
    config = _config(config_path)
    if jail:
        sys.exit(_exit_code(_run_jailed(config, agent, list(command), workspace, files_mode == "apply")))
    if workspace is not None or files_mode != "apply":
        raise click.UsageError("--workspace and --files need the jail (leave out --no-jail)")
    env = agentenv.apply(dict(os.environ), agentenv.agent_env(config, agent), config)
    agentenv.check_listening(config)
    try:
        child = subprocess.Popen(list(command), env=env)
    except OSError as exc:
        raise GoexError(f"cannot run {command[0]!r}: {exc.strerror or exc}") from None
    _wait_like_a_shell(child)
    sys.exit(_exit_code(child.wait()))


def _wait_like_a_shell(child: subprocess.Popen[bytes]) -> None:
    """Ctrl-C reaches the child straight from the terminal (same process group); we only pass on TERM and HUP."""
    def forward(signum: int, _frame: Any) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)


def _run_jailed(config: Config, agent: str, command: list[str], workspace: Path | None = None,
                apply: bool = True) -> int:
    """COMMAND in a jail bridged to the running proxy, or to one started here for it; its file changes recorded and
    applied (or held for review); its exit status."""
    from ..sandbox.jail import proxy_for_jail, start_jailed
    from ..sandbox.runs import NotApplied

    agentenv.proxy_url(config, agent)  # an unknown agent or a missing token: said before anything starts
    with proxy_for_jail(config) as bridged:
        jailed = start_jailed(bridged, agent, command, workspace)
        _wait_like_a_shell(jailed.child)
        status = jailed.wait()
        try:
            run = jailed.finish(status, apply)
        except NotApplied as exc:  # said, and the command's own status still returned
            click.echo(f"goex-proxy: {exc}", err=True)
            run = None
    if run is not None:
        _say_run(run)
    return status


def _say_run(run: Any) -> None:
    """One line on stderr about a run's file changes and what can be done with them."""
    from ..sandbox.runs import KEPT

    counts = ", ".join(f"{n} {action}" for action, n in run.counts.items() if n)
    if run.state == KEPT:
        click.echo(f"goex-proxy: run {run.id} changed {len(run.changes)} path(s) in {run.workspace} ({counts}); "
                   f"undo with `goex-proxy files undo {run.id}`", err=True)
    else:
        click.echo(f"goex-proxy: run {run.id} changed {len(run.changes)} path(s) in {run.workspace} ({counts}), held "
                   f"for review: `goex-proxy files diff {run.id}`, then `files keep {run.id}` or `files undo "
                   f"{run.id}`", err=True)


@cli.command()
@config_option
@click.option("--agent", required=True, help="The agent whose proxy settings are checked.")
@click.option("--no-jail", is_flag=True, help="Check this environment as plain `exec` leaves it (to test a sandbox "
                                              "of your own) instead of a jail.")
@json_option
@handle_errors
def doctor(config_path: Path | None, agent: str, no_jail: bool, as_json: bool) -> None:
    """Check that every way around the proxy is blocked and the way through it works; exits 1 if any check fails.

    Example: goex-proxy doctor --agent mailbot
    """
    from ..sandbox.doctor import run_checks

    results = run_checks(_config(config_path), agent, jail=not no_jail)
    if as_json:
        for r in results:
            click.echo(json.dumps(r))
    else:
        _print_table(("check", "result", "detail"),
                     [(r["check"], "pass" if r["ok"] else "FAIL", r["detail"]) for r in results], flexible=2,
                     colour_column=1, title=f"goex-proxy doctor ({'this environment' if no_jail else 'jail'}, "
                                            f"agent {agent})")
    sys.exit(0 if all(r["ok"] for r in results) else 1)


@cli.command()
@config_option
@click.argument("task")
@click.option("--agent", required=True, help="The agent the code runs as (its policy bounds what the code may do).")
@click.option("--yes", is_flag=True, help="Run the code without asking.")
@click.option("--show-only", is_flag=True, help="Show the code and stop; never run it.")
@click.option("--retry", "retries", type=click.IntRange(0, 10), default=0, show_default=True,
              help="When calls are denied or the program fails, let the model revise it up to N times.")
@duration_option("--timeout", "5m", "Time limit for each run of the code (30s, 5m; a plain number is seconds).")
@click.option("--then", "then", type=click.Choice(["ask", "keep", "undo"]), default="ask", show_default=True,
              help="Afterwards: ask whether to keep or undo what the code did, or keep it, or undo all of it.")
@click.option("--workspace", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The directory the code may change (default: the current directory); its changes are held until "
                   "you keep them.")
@handle_errors
def execute(config_path: Path | None, task: str, agent: str, yes: bool, show_only: bool, retries: int, timeout: float,
            then: str, workspace: Path | None) -> None:
    """Have the configured model write Python code for TASK, show it, run it jailed through the proxy as AGENT,
    show the requests it made, and keep or undo them. Everything is recorded (prompts, code, requests, choice).

    Example: goex-proxy execute "send a funny joke to #random on slack" --agent slackbot
    """
    from ..agent.execute import Options
    from ..agent.execute import execute as run_task
    from ..agent.llm import configured
    from ..policy.load import load_policy_set

    config = _config(config_path)
    configured(config)  # no model: said before anything else
    agentenv.proxy_url(config, agent)
    if not (yes or show_only) and not sys.stdin.isatty():  # before the model is asked (a call costs money)
        raise GoexError("execute asks before it runs code: pass --yes to run it without a terminal, or --show-only")
    policies = load_policy_set([(p.path, p.agents) for p in config.policies])
    options = Options(agent, yes, show_only, retries, timeout, then, workspace)
    sys.exit(run_task(config, policies, task, options, _console(), _show_rows,
                      lambda rows: _undo_rows(config, rows)))


def _show_rows(rows: list[dict[str, Any]]) -> None:
    """The requests a run made, numbered, with what undo could do for each."""
    if not rows:
        return
    cells = [(str(i), str(row["id"]), str(row["method"]), str(row["url"]), str(row["decision"]), _outcome(row),
              row.get("undo_class") or ("-" if row["method"] in ("GET", "HEAD", "OPTIONS") else ""))
             for i, row in enumerate(rows, start=1)]
    _print_table(("#", "id", "method", "url", "decision", "status", "undo"), cells, flexible=3, colour_column=4)


@cli.group()
def files() -> None:
    """Review, keep or undo the file changes of jailed runs (each run that changed files has an id)."""


@files.command(name="list")
@config_option
@click.option("--agent", help="Only this agent's runs.")
@click.option("--since", help="Only since then: a duration (30m, 1h, 7d) or an ISO time.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1),
              help="At most this many runs (newest).")
@json_option
@handle_errors
def files_list(config_path: Path | None, agent: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """The runs that changed files, newest first: what they changed and whether it is pending, kept or undone.

    Example: goex-proxy files list --agent mailbot --since 1h
    """
    from ..printable import shown
    from ..sandbox import runs

    found = runs.recorded(_config(config_path), agent=agent, since=_since(since), limit=limit)
    if as_json:
        for r in found:
            click.echo(json.dumps({"id": r.id, "agent": r.agent, "ts": r.ts, "time": _iso(r.ts), "ended": r.ended,
                                   "workspace": r.workspace, "command": r.command, "exit_code": r.exit_code,
                                   "state": r.state, **r.counts}))
        return
    cells = [(r.id, _when(r.ts), r.agent, shown(r.workspace), str(r.counts["added"]), str(r.counts["changed"]),
              str(r.counts["deleted"]), r.state, shown(" ".join(r.command))) for r in found]
    _print_table(("id", "when", "agent", "workspace", "added", "changed", "deleted", "state", "command"), cells,
                 flexible=(3, 8))


@files.command(name="diff")
@config_option
@click.argument("run_id")
@json_option
@handle_errors
def files_diff(config_path: Path | None, run_id: str, as_json: bool) -> None:
    """What a run changed: each path added, changed or deleted (kind, mode, link, size), and a unified diff of text.

    Example: goex-proxy files diff 01JD3K2M5X0A1
    """
    from dataclasses import asdict

    from ..printable import shown
    from ..sandbox import runs
    from ..sandbox.diff import describe, unified

    config = _config(config_path)
    run = runs.load(config, run_id)
    sides = runs.contents(config, run)
    requests = runs.requests_of(config, run)
    if as_json:
        click.echo(json.dumps({"id": run.id, "state": run.state, "agent": run.agent, "workspace": run.workspace,
                               "requests": [r["id"] for r in requests], "changes": [
            {"path": c.path, "action": c.action, "before": asdict(c.before) if c.before else None,
             "after": asdict(c.after) if c.after else None, "diff": "".join(unified(c, *sides[i]))}
            for i, c in enumerate(run.changes)]}))
        return
    click.echo(f"run {run.id} ({run.state}) by {run.agent} in {shown(run.workspace)}: {shown(' '.join(run.command))}")
    if requests:
        click.echo(f"requests it made: {' '.join(str(r['id']) for r in requests)} (`goex-proxy show ID`)")
    for i, change in enumerate(run.changes):
        click.echo(describe(change))
        for line in unified(change, *sides[i]):
            click.echo("    " + line, nl=False)


@files.command(name="keep")
@config_option
@click.argument("run_id")
@click.option("--force", is_flag=True, help="Apply even over paths changed since the run (their contents are lost).")
@handle_errors
def files_keep(config_path: Path | None, run_id: str, force: bool) -> None:
    """Apply a run's held changes to its workspace (what each path held before is kept for `files undo`).

    Example: goex-proxy files keep 01JD3K2M5X0A1
    """
    from ..sandbox import runs

    run = runs.keep(_config(config_path), run_id, force=force)
    click.echo(f"kept run {run.id}: {len(run.changes)} path(s) applied to {run.workspace}")


@files.command(name="undo")
@config_option
@click.argument("run_id")
@click.option("--force", is_flag=True, help="Restore even paths changed since the run (those later changes are lost).")
@handle_errors
def files_undo(config_path: Path | None, run_id: str, force: bool) -> None:
    """Take a run's file changes back: restore the workspace byte for byte, or drop changes never applied.

    Example: goex-proxy files undo 01JD3K2M5X0A1
    """
    from ..sandbox import runs

    run = runs.undo(_config(config_path), run_id, force=force)
    done = "restored in" if run.state == runs.UNDONE else "dropped, never applied to"
    click.echo(f"undid run {run.id}: {len(run.changes)} path(s) {done} {run.workspace}")


@cli.command(name="env")
@config_option
@click.option("--agent", required=True, help="The agent the settings are for.")
@click.option("--format", "fmt", type=click.Choice(["shell", "json", "docker"]), default="shell", show_default=True)
@click.option("--proxy-host", help="Host the sandbox reaches the proxy at (default: the listen address).")
@click.option("--ca-path", help="Where the CA certificate is inside the sandbox (default: its path here).")
@handle_errors
def env_(config_path: Path | None, agent: str, fmt: str, proxy_host: str | None, ca_path: str | None) -> None:
    """Print the proxy settings for a sandbox that is not a child process (container, VM, remote runner).

    Example: goex-proxy env --agent mailbot --format docker > agent.env
    """
    config = _config(config_path)
    env = agentenv.agent_env(config, agent, proxy_host=proxy_host, ca_path=ca_path)
    try:
        pem = config.ca_cert.read_text(encoding="ascii")
    except OSError:
        raise StateError(f"the CA certificate {config.ca_cert} is missing; run `goex-proxy init`") from None
    click.echo(agentenv.render(env, fmt, pem), nl=False)


@cli.group()
def secrets() -> None:
    """Store, list and remove secrets in the encrypted vault (values are never printed)."""


@secrets.command(name="set")
@config_option
@click.argument("name")
@handle_errors
def secrets_set(config_path: Path | None, name: str) -> None:
    """Store a secret read from standard input (never from the command line) under NAME.

    Example: printf %s "$SLACK_BOT_TOKEN" | goex-proxy secrets set slack-bot
    """
    from ..credentials.vault import Vault

    config = _config(config_path)
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"secret for {name}: ")
    else:
        value = sys.stdin.read().rstrip("\r\n")
    users = [c.name for c in config.credentials.values() if c.secret.vault == name]
    if any(config.credentials[u].inject.kind == "aws_sigv4" for u in users):
        from ..credentials.sigv4 import AwsKeys

        try:
            AwsKeys.loads(value)
        except ValueError as exc:
            raise VaultError(f"refusing to store {name!r}: {exc}") from None
    Vault(config.state_dir).set(name, value)
    click.echo(f"stored {name!r} in the vault" + (f" (used by {', '.join(users)})" if users else
                                                  " (no credential in the config uses it yet)"))


@secrets.command(name="list")
@config_option
@json_option
@handle_errors
def secrets_list(config_path: Path | None, as_json: bool) -> None:
    """List secret names, the credentials that use them and their bindings, and when each was last injected.

    Example: goex-proxy secrets list
    """
    from ..credentials.vault import Vault

    config = _config(config_path)
    stored = Vault(config.state_dir).names()
    last_used: dict[str, float] = {}
    if config.audit_db.exists():
        with closing(audit.connect(config, readonly=True)) as conn:
            last_used = dict(conn.execute("SELECT credential, max(ts) FROM requests WHERE credential IS NOT NULL "
                                          "GROUP BY credential").fetchall())
    rows: list[dict[str, Any]] = []
    for c in config.credentials.values():
        where = " ".join(h.pattern for h in c.hosts)
        rows.append({"secret": c.secret.describe(), "credential": c.name, "hosts": where,
                     "inject": c.inject.describe(), "stored": c.secret.vault in stored if c.secret.vault else None,
                     "last_used": last_used.get(c.name)})
    used = {c.secret.vault for c in config.credentials.values()}
    used |= {c.inject.oauth2.client_secret.vault for c in config.credentials.values()
             if c.inject.oauth2 and c.inject.oauth2.client_secret}
    rows += [{"secret": f"vault:{n}", "credential": None, "hosts": None, "inject": None, "stored": True,
              "last_used": None} for n in stored if n not in used]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    stored_text: dict[bool | None, str] = {True: "yes", False: "MISSING", None: "-"}
    cells = [(str(r["secret"]), r["credential"] or "-", r["hosts"] or "-", r["inject"] or "-",
              stored_text[r["stored"]], _when(r["last_used"])) for r in rows]
    _print_table(("secret", "credential", "hosts", "inject", "in vault", "last used"), cells, flexible=(2, 3))


@secrets.command(name="rm")
@config_option
@click.argument("name")
@handle_errors
def secrets_rm(config_path: Path | None, name: str) -> None:
    """Remove the secret NAME from the vault.

    Example: goex-proxy secrets rm slack-bot
    """
    from ..credentials.vault import Vault

    if not Vault(_config(config_path).state_dir).remove(name):
        raise NotFound(f"no secret named {name!r} in the vault")
    click.echo(f"removed {name!r}")


@cli.command()
@config_option
@click.argument("name")
@click.option("--no-browser", is_flag=True, help="Only print the address to open (for a browser on another machine).")
@duration_option("--timeout", "5m", "How long to wait for the provider's redirect (30s, 5m; a plain number is seconds).")
@handle_errors
def authorize(config_path: Path | None, name: str, no_browser: bool, timeout: float) -> None:
    """Let credential NAME act for you: OAuth2 consent in a browser (PKCE, loopback redirect); tokens go to the vault.

    Example: goex-proxy authorize gmail
    """
    from ..credentials.authorize import authorize as run_flow

    config = _config(config_path)
    credential = config.credentials.get(name)
    if credential is None or credential.inject.oauth2 is None:
        oauth = [c.name for c in config.credentials.values() if c.inject.oauth2]
        raise NotFound(f"no OAuth2 credential named {name!r} in {config.file} "
                       f"(OAuth2 credentials: {', '.join(oauth) or 'none'})")
    tokens = run_flow(config, credential, lambda text: click.echo(text, err=True), not no_browser, timeout)
    life = f", access token valid for {tokens.expires_at - time.time():.0f}s" if tokens.expires_at else ""
    refresh = "with a refresh token" if tokens.refresh_token else "WITHOUT a refresh token (re-run when it expires)"
    click.echo(f"authorized {name}: tokens stored in the vault as {credential.secret.vault!r}, {refresh}{life}")


@cli.command()
@config_option
@click.argument("request_id", required=False)
@click.option("--agent", help="Undo this agent's whole session (with --since), newest request first.")
@click.option("--since", help="With --agent: from then on, a duration (30m, 1h) or an ISO time.")
@click.option("--dry-run", is_flag=True, help="Print the plan and stop.")
@click.option("--yes", is_flag=True, help="Carry out the plan without asking.")
@click.option("--force", is_flag=True, help="Undo an undo, or carry on despite a conflict (clobbering a later change).")
@click.option("--propose", is_flag=True, help="For a request no rule can undo: ask the configured model (llm:) for "
              "compensating requests; they are checked, shown and run only when you confirm.")
@click.option("--save-rule", "save_rule", type=click.Path(path_type=Path), default=None,
              help="With --propose: once the proposal has run, save it as an undo rule pack FILE (a new file).")
@json_option
@handle_errors
def undo(config_path: Path | None, request_id: str | None, agent: str | None, since: str | None, dry_run: bool,
         yes: bool, force: bool, propose: bool, save_rule: Path | None, as_json: bool) -> None:
    """Take back what a recorded request (or an agent's session) did: print the plan, ask, then replay the
    compensating requests through the pipeline (policy re-checked, credentials injected, each audited as the undo).

    With --propose, a request no rule can undo is shown to the configured model (secrets scrubbed), whose proposed
    requests must stay on the request's origin and be allowed by policy; they are marked as proposed by a model and
    run only once you confirm. --save-rule FILE then keeps them as an undo rule for requests of the same kind.

    Examples: goex-proxy undo 01JD3K2M5X0A1 --dry-run;  goex-proxy undo --agent mailbot --since 1h;
    goex-proxy undo 01JD3K2M5X0A1 --propose --save-rule undo-notes.yaml
    """
    from ..undo import session
    from ..undo.run import Journal

    request_id = request_id.upper() if request_id else request_id  # ids are case-free (Crockford base32)

    if save_rule is not None and not propose:
        raise click.UsageError("--save-rule goes with --propose")
    if propose and (request_id is None or agent is not None or since is not None):
        raise click.UsageError("--propose takes one REQUEST_ID (not a session)")
    if propose and force:
        raise click.UsageError("--force does not go with --propose")
    if propose:
        assert request_id is not None
        _propose_undo(_config(config_path), request_id, save_rule, dry_run, yes, as_json)
        return
    if (request_id is None) == (agent is None) or (agent is not None) != (since is not None):
        raise click.UsageError("give a REQUEST_ID, or --agent NAME --since WHEN for a whole session")
    config = _config(config_path)
    conn = audit.connect(config)
    journal = Journal(conn)
    if request_id is not None:
        rows = [audit.get(conn, request_id)]
    else:
        assert agent is not None
        rows = session.session_rows(conn, agent, _since(since))
    planned = _show_plans(session.plan_rows(config, journal, rows, force), as_json)
    todo = [p for p in planned if p.passed_over is None]
    file_runs = _file_runs_to_undo(session.file_runs(config, agent, _since(since)), as_json) if agent is not None else []
    if request_id is not None:
        session.check_undoable(planned[0])
    if not todo and not file_runs:
        raise NotFound(f"nothing to undo for {agent} since {since}" + "".join(f"\n  {p.request_id}: {p.passed_over}"
                                                                         for p in planned if p.passed_over))
    if dry_run:
        return
    if not yes:
        if not sys.stdin.isatty():
            raise GoexError("undo asks before it acts: pass --yes to carry out the plan without a terminal")
        count = len(todo) + len(file_runs)
        click.confirm(f"carry out {'this plan' if count == 1 else f'these {count} plans'}?", abort=True)
    session.undo_file_runs(config, file_runs, force, lambda run: click.echo(f"file run {run.id}: {run.state}"))
    if todo:
        _carry_out_all(config, todo, planned, journal, agent, force)


def _undo_rows(config: Config, rows: list[dict[str, Any]]) -> None:
    """Undo these rows, newest first, through the undo engine: each plan shown, then carried out (no more asking)."""
    from ..undo import session
    from ..undo.run import Journal

    conn = audit.connect(config)
    journal = Journal(conn)
    planned = _show_plans(session.plan_rows(config, journal, session.newest_first(conn, rows), False), False)
    todo = [p for p in planned if p.passed_over is None]
    if todo:
        _carry_out_all(config, todo, planned, journal, None, False)
    skipped = [p for p in planned if p.passed_over is not None]
    for p in skipped:
        click.echo(f"not undone: {p.request_id}: {p.passed_over}", err=True)
    if skipped:
        sys.exit(4)


def _show_plans(planning: Any, as_json: bool) -> list[Any]:
    """Each plan printed as it is made; all of them."""
    planned = []
    for p in planning:
        _print_undo_plan(p.row, p.plan, p.states, as_json)
        planned.append(p)
    return planned


def _file_runs_to_undo(found: list[Any], as_json: bool) -> list[Any]:
    """The session's jailed runs with file changes to take back, each printed."""
    from ..sandbox.runs import KEPT

    for run in found:
        verb = "restore" if run.state == KEPT else "discard (never applied)"
        if as_json:
            click.echo(json.dumps({"file_run": run.id, "state": run.state, "workspace": run.workspace,
                                   "paths": [c.path for c in run.changes]}))
        else:
            click.echo(f"file run {run.id} in {run.workspace}: {verb} {len(run.changes)} path(s)")
    return found


def _say_step(r: Any) -> None:
    click.echo(f"  {'done' if r.ok else 'FAILED'}: {r.step.describe()} -> {r.status if r.status is not None else '-'}"
               + (f" ({r.request_id})" if r.request_id else "") + (f": {r.detail}" if r.detail and not r.ok else ""),
               err=not r.ok)


def _carry_out_all(config: Config, todo: list[Any], planned: list[Any], journal: Any, agent: str | None,
                   force: bool) -> None:
    """Carry out the plans, each step and each plan's end said as it happens; exit 3 (conflict) or 4 at the first
    that does not finish; for a session, then say what was and was not undone."""
    from ..undo import session

    def say_outcome(p: Any, outcome: Any) -> None:
        if outcome.state == "done":
            click.echo(outcome.message)
        else:
            click.echo(f"{p.plan.request_id}: {outcome.message}", err=True)

    carried = session.carry_out_all(config, todo, journal, force, _say_step, say_outcome)
    _report_session(carried.done, carried.left, [p for p in planned if p.passed_over is not None], agent)
    if carried.outcome is not None:
        sys.exit(3 if carried.outcome.state == "conflict" else 4)


def _print_undo_plan(row: dict[str, Any], the_plan: Any, states: dict[int, str], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"request_id": the_plan.request_id, "verdict": the_plan.verdict, "rule": the_plan.rule,
                               "fidelity": the_plan.fidelity, "reason": the_plan.reason,
                               "guard": the_plan.guard.describe() if the_plan.guard else None,
                               "steps": [{"method": s.method, "url": s.url, "why": s.why,
                                          "state": states.get(i)} for i, s in enumerate(the_plan.steps)]}))
        return
    click.echo(f"undo {the_plan.request_id}: {row['method']} {row['url']} by {row['agent']} ({_outcome(row)})")
    click.echo(f"  rule: {the_plan.rule or '-'}   fidelity: {the_plan.fidelity}"
               + (f"   ({the_plan.reason})" if the_plan.verdict != "plan" else ""))
    if the_plan.guard is not None:
        click.echo(f"  first checks: {the_plan.guard.describe()} (refused if {the_plan.conflict})")
    for i, step in enumerate(the_plan.steps, start=1):
        state = states.get(i - 1)
        click.echo(f"  step {i}: {step.describe()}" + (f"   [{state}]" if state else ""))
        if step.why:
            click.echo(f"          {step.why}")


def _report_session(done: list[Any], left: list[Any], skipped: list[Any], agent: str | None) -> None:
    """What a session undo did and did not take back."""
    if agent is None:
        return
    click.echo(f"session of {agent}: {len(done)} undone" + "".join(f"\n  undone: {p.request_id}" for p in done))
    for p in left:
        click.echo(f"  not undone (not attempted): {p.request_id}", err=True)
    for p in skipped:
        click.echo(f"  not undone: {p.request_id}: {p.passed_over}", err=bool(left))


def _propose_undo(config: Config, request_id: str, save_rule: Path | None, dry_run: bool, yes: bool,
                  as_json: bool) -> None:
    """`undo ID --propose`: the model asked and its answer checked (agent.proposeflow), the proposal shown, and on
    confirmation run as an undo; each choice recorded with the model's call."""
    from ..agent import proposeflow

    def asking(row: dict[str, Any], model: Any) -> None:
        if not as_json:
            click.echo(f"undo {row['id']}: {row['method']} {row['url']} by {row['agent']} ({_outcome(row)})")
            click.echo(f"  no rule plans it; asking the model {model.model} at {model.base_url}")

    asked = proposeflow.ask(config, request_id, save_rule, asking)
    _print_proposal(asked.plan, asked.proposal, asked.decisions, asked.model.model, save_rule, as_json)
    if dry_run:
        asked.record("not run: --dry-run")
        return
    if not yes:
        if not sys.stdin.isatty():
            asked.record("declined: no terminal to confirm on, and no --yes")
            raise GoexError("undo asks before it acts: pass --yes to carry out the proposal without a terminal")
        if not click.confirm("carry out these steps, proposed by a model?"):
            asked.record("declined")
            click.echo("declined: nothing was run", err=True)
            sys.exit(1)
    outcome = proposeflow.carry_out_proposal(config, asked, _say_step)
    if outcome.state != "done":
        click.echo(f"{asked.request_id}: {outcome.message}" + ("; the rule was not saved" if save_rule is not None
                                                               else ""), err=True)
        sys.exit(3 if outcome.state == "conflict" else 4)
    click.echo(outcome.message)
    if save_rule is not None and asked.rule_text is not None:
        proposeflow.write_rule(save_rule, asked.rule_text)
        click.echo(f"saved the undo rule to {save_rule}: check it, then add it to undo_rules in {config.file}")


def _print_proposal(the_plan: Any, proposal: Any, decisions: list[Any], model: str, save_rule: Path | None,
                    as_json: bool) -> None:
    """The proposal, marked as a model's, each step with why, what it sends and the policy rule that allows it."""
    from ..agent.propose import describe_body

    if as_json:
        click.echo(json.dumps({
            "request_id": the_plan.request_id, "verdict": "proposed", "proposed_by": model,
            "explanation": proposal.explanation, "save_rule": str(save_rule) if save_rule else None,
            "steps": [{"method": s.method, "url": s.url, "headers": dict(s.headers),
                       "body": (s.body or b"").decode("utf-8", "replace") or None, "why": s.why, "allowed_by": d.rule}
                      for s, d in zip(the_plan.steps, decisions, strict=True)]}))
        return
    click.echo(f"PROPOSED BY A MODEL ({model}) — not a rule; check it before you confirm")
    for i, (step, decision) in enumerate(zip(the_plan.steps, decisions, strict=True), start=1):
        click.echo(f"  step {i}: {step.describe()}")
        if step.why:
            click.echo(f"          {step.why}")
        for name, value in step.headers:
            click.echo(f"          {name}: {value}")
        if step.body:
            click.echo(f"          body: {describe_body(step)}")
        click.echo(f"          allowed by policy ({decision.rule or decision.reason})")
    if proposal.explanation:
        click.echo(f"  the model explains: {proposal.explanation}")
    if save_rule is not None:
        click.echo(f"  once done, it is saved as an undo rule to {save_rule}")


@cli.group()
def policy() -> None:
    """Check policies and try them against recorded traffic."""


@policy.command()
@config_option
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@handle_errors
def check(config_path: Path | None, files: tuple[Path, ...]) -> None:
    """Print every problem in policy or undo-pack FILES (or the config, its policies and its undo packs) as
    file:line:col: message.

    Example: goex-proxy policy check policies/slack-post-only.yaml
    """
    from ..undo.policycheck import check as check_files

    targets, problems = check_files(files, config_path)
    for problem in problems:
        click.echo(str(problem))
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        sys.exit(1)
    click.echo(f"ok: {len(targets)} file{'' if len(targets) == 1 else 's'} (policies and undo packs) checked, no errors")


@policy.command(name="test")
@config_option
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--against-log", is_flag=True, required=True, help="Replay the recorded requests of the audit log.")
@json_option
@handle_errors
def test_(config_path: Path | None, files: tuple[Path, ...], against_log: bool, as_json: bool) -> None:
    """Show which recorded requests the policies would decide differently if FILES replaced the configured policies
    of the same name (or were added to them): each request the policy decided is decided again by the configured
    policies (before) and with FILES in their place (after). What refused a request besides the policy (the SSRF
    guard, credential injection, identity) is no change FILES make.

    Example: goex-proxy policy test new-slack.yaml --against-log
    """
    from ..policy import whatif

    config = _config(config_path)
    current, candidate = whatif.policy_sets([(p.path, p.agents) for p in config.policies], files)
    db = audit.connect(config, readonly=True)
    seen, changes = whatif.replay(audit.iter_rows(db), current, candidate)
    if as_json:
        for c in changes:
            click.echo(json.dumps({**c.__dict__, "time": _iso(c.ts)}))
        return
    if not changes:
        click.echo(f"no change: the {seen} recorded requests the policy decided would be decided the same way")
        return
    cells = [(c.id, _when(c.ts), c.agent or "-", f"{c.method} {c.url}", c.before, c.after,
              f"{c.rule or '-'}: {c.reason}" + (" [body was truncated in the log]" if c.body_truncated else ""))
             for c in changes]
    _print_table(("id", "time", "agent", "request", "before", "after", "rule / reason"), cells, flexible=(3, 6),
                 colour_column=5, title=f"{len(changes)} of {seen} recorded requests would be decided differently "
                                        "(before: the configured policies; after: with "
                                        f"{', '.join(str(f) for f in files)})")


def _outcome(row: dict[str, Any]) -> str:
    if row["status"] is not None:
        return str(row["status"])
    if row["error"]:
        return "error"
    return "pending"


@cli.group(invoke_without_command=True)
@config_option
@click.option("--agent", help="Only this agent.")
@click.option("--host", help="Only this host.")
@click.option("--since", help="Only since then: a duration (30m, 1h, 7d) or an ISO time.")
@click.option("--decision", type=click.Choice(["allow", "deny", "report", "error", "challenge"]), help="Only this decision.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1),
              help="At most this many rows (newest).")
@json_option
@click.pass_context
@handle_errors
def log(click_ctx: click.Context, config_path: Path | None, agent: str | None, host: str | None, since: str | None,
        decision: str | None, limit: int, as_json: bool) -> None:
    """List recorded requests, oldest to newest; `pending` means it may have happened (no outcome was recorded).

    Example: goex-proxy log --agent mailbot --since 1h
    """
    if click_ctx.invoked_subcommand is not None:
        click_ctx.obj = config_path
        return
    config = _config(config_path)
    db = audit.connect(config, readonly=True)
    rows = audit.query(db, agent=agent, host=host, since=_since(since), decision=decision, limit=limit)[::-1]
    if as_json:
        for row in rows:
            click.echo(json.dumps({**row, "time": _iso(row["ts"])}))
        return
    headers = ("id", "time", "agent", "decision", "status", "method", "url", "rule", "undo")
    cells = [(row["id"], _when(row["ts"])[5:], row["agent"] or "-", row["decision"] or "-", _outcome(row),
              row["method"] or "-", row["url"] or "-", row["rule"] or "-",
              f"undoes {row['undo_of']}" if row.get("undo_of") else row.get("undo_class") or "-") for row in rows]
    _print_table(headers, cells, flexible=(6, 7), colour_column=3)


@log.command()
@config_option
@click.option("--anchor", "anchor_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also check against an anchor saved earlier with `goex-proxy log anchor`.")
@click.pass_obj
@handle_errors
def verify(group_config: Path | None, config_path: Path | None, anchor_file: Path | None) -> None:
    """Check the audit log's keyed hash chain and name the first broken row.

    The newest row is also checked against the anchor kept in the state directory (and against --anchor), so rows
    removed from the end are caught as well as edited, removed or reordered ones.

    Example: goex-proxy log verify --anchor ~/goex-anchor.json
    """
    from ..audit.seal import Anchor, Seal

    config = _config(config_path or group_config)
    seal = Seal(config.state_dir)
    conn = audit.connect(config, readonly=True)
    key = audit.chain_key(conn, seal)
    anchors = [("the state directory's anchor", seal.anchor())]
    if anchor_file is not None:
        try:
            text = anchor_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise AuditError(f"cannot read the anchor {anchor_file}: {exc.strerror or exc}") from None
        anchors.append((f"the anchor in {anchor_file}", Anchor.loads(text, str(anchor_file))))
    rows = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
    for what, anchor in anchors:
        if anchor is None and key is not None and rows:
            click.echo(f"BROKEN: {what} ({seal.anchor_path}) is missing, so rows removed from the end of the log "
                       "could not be told apart; it is written with every row and only goex-proxy writes there")
            sys.exit(1)
        result = audit.verify(conn, key, anchor)
        if result.broken_id is not None:
            click.echo(f"BROKEN at row {result.broken_id} (seq {result.broken_seq}): {result.problem}; "
                       f"{result.checked} rows before it are intact (checked against {what})")
            sys.exit(1)
    how = "keyed hash chain intact" if key is not None else (
        "hash chain intact, but not keyed: an older version wrote it; `goex-proxy run` keys it on start")
    checked = [what for what, anchor in anchors if anchor is not None]
    click.echo(f"ok: {result.checked} rows, {how}" + (f"; newest rows match {' and '.join(checked)}" if checked else ""))


@log.command()
@config_option
@click.pass_obj
@handle_errors
def anchor(group_config: Path | None, config_path: Path | None) -> None:
    """Print the newest row of the audit chain as an anchor to keep elsewhere (a file, a ticket, a chat message).

    `goex-proxy log verify --anchor FILE` later proves that nothing up to that row was removed or rewritten.

    Example: goex-proxy log anchor > ~/goex-anchor.json
    """
    from ..audit.seal import Anchor

    config = _config(config_path or group_config)
    head = audit.connect(config, readonly=True).execute(
        "SELECT seq, id, hash FROM requests ORDER BY seq DESC LIMIT 1").fetchone()
    if head is None:
        raise AuditError("the audit log has no rows yet, so there is nothing to anchor")
    click.echo(Anchor(int(head[0]), str(head[1]), str(head[2])).dumps(), nl=False)


def _pretty_body(body: bytes | None, size: int | None, headers: list[list[str]], highlight: bool) -> Any:
    """A recorded body for `show`: JSON indented (and highlighted when `highlight`, on a terminal: rich pads highlighted
    lines to the console's width, which a pipe must not get), text as it is, binary data by its size."""
    if not body:
        return "(empty)" if not size else f"({size} bytes, not stored)"
    note = f"\n… ({size} bytes in all; the first {len(body)} stored)" if size and size > len(body) else ""
    from rich.syntax import Syntax

    content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return f"({len(body)} bytes of binary data){note}"
    if "json" in content_type or text.lstrip()[:1] in "{[":
        try:
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
            if highlight:
                return Syntax(_seen(text) + note, "json", word_wrap=True)
        except ValueError:
            pass
    from rich.text import Text

    return Text(_seen(text) + note)  # not markup: recorded bytes must not restyle what a person reads


def _seen(value: object) -> str:
    """A recorded value as a person may safely read it in a terminal: control, invisible and bidirectional
    characters written as escapes (line breaks kept), so that it cannot move the cursor or reorder what is shown."""
    from ..printable import shown

    return "\n".join(shown(line) for line in str(value).split("\n"))


def _plain(value: object) -> str:
    """`_seen`, with rich markup escaped too (for a line that mixes it with goex-proxy's own styling)."""
    from rich.markup import escape

    return escape(_seen(value))


#: Audit columns holding JSON text, given by `show --json` as JSON (never a string to decode again).
_JSON_COLUMNS = ("req_headers", "resp_headers", "pre_headers", "charged")


def _header_line(name: str, value: str) -> str:
    return f"  {_plain(name)}:" + (f" {_plain(value)}" if value else "")


@cli.command()
@config_option
@click.argument("request_id")
@json_option
@handle_errors
def show(config_path: Path | None, request_id: str, as_json: bool) -> None:
    """Show one recorded exchange in full, bodies pretty-printed.

    Example: goex-proxy show 01JD3K2M5X0A1
    """
    config = _config(config_path)
    row = audit.get(audit.connect(config, readonly=True), request_id.upper())  # ids are case-free (Crockford)
    if as_json:
        printable: dict[str, Any] = {}
        for key, value in row.items():
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            elif key in _JSON_COLUMNS and isinstance(value, str):
                value = json.loads(value)  # headers as [[name, value], ...] in the order sent, repeats kept
            printable[key] = value
            if key == "ts":
                printable["time"] = _iso(value)
        click.echo(json.dumps(printable))
        return
    out = _console()
    terminal = out.is_terminal  # piped: bodies neither highlighted nor wrapped, so no line is padded or split
    req_headers = json.loads(row["req_headers"] or "[]")
    resp_headers = json.loads(row["resp_headers"] or "[]")
    out.print(f"[bold]{_plain(row['id'])}[/]  {_when(row['ts'])}  agent [bold]{_plain(row['agent'] or '-')}[/]")
    out.print(f"decision: [bold]{_plain(row['decision'])}[/]  rule: {_plain(row['rule'] or '-')}")
    out.print(f"undo: {_plain(row.get('undo_class') or '-')}" + (f"  (this request undoes {_plain(row['undo_of'])})"
                                                                 if row.get("undo_of") else ""))
    out.print(f"reason: {_plain(row['reason'] or '-')}")
    if row["report"]:
        out.print(f"[yellow]{_plain(row['report'])}[/]")
    out.print(f"\n[bold]{_plain(row['method'])} {_plain(row['url'])}[/]"
              + (f" {_plain(row['http_version'])}" if row["http_version"] else ""))
    for k, v in req_headers:
        out.print(_header_line(k, v))
    out.print(_pretty_body(row["req_body"], row["req_body_size"], req_headers, terminal),
              soft_wrap=not terminal)  # on a terminal, wrap, never crop
    outcome = _outcome(row)
    if outcome == "pending":
        out.print("\n[yellow]no outcome recorded: the request may have happened[/]")
        return
    if row["error"]:
        out.print(f"\n[magenta]error: {_plain(row['error'])}[/]")
        return
    out.print(f"\n[bold]{row['status']}[/] in {row['duration_ms']:.1f} ms")
    for k, v in resp_headers:
        out.print(_header_line(k, v))
    out.print(_pretty_body(row["resp_body"], row["resp_body_size"], resp_headers, terminal),
              soft_wrap=not terminal)  # on a terminal, wrap, never crop


def main() -> None:
    from ..hardening import harden_process

    harden_process()
    cli()
