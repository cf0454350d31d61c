"""`init`, `run`, `exec`, `env` and `doctor`: the state directory, the proxy, and an agent's command run through
it (jailed, or given the proxy settings only) or checked to have no way around it."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..config import Config, load_config, weak_token
from ..configfile import home
from ..errors import GoexError, StateError
from ..sandbox import agentenv
from .common import config_option, handle_errors, json_option, print_table


@click.command()
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


@click.command()
@config_option
@click.option("--quiet", is_flag=True, help="No line per request (holds, approvals, reloads, warnings and errors are "
                                            "still shown).")
@click.option("--console/--no-console", "with_console", default=None,
              help="Serve the web console (on console.listen, else 127.0.0.1:8791), or not; default: when the config "
                   "has a console: section.")
@click.option("--workers", type=click.IntRange(1, 64), envvar="GOEX_PROXY_WORKERS",
              help="Proxy processes sharing the listen address (default: the number of cores, at most 8; "
                   "$GOEX_PROXY_WORKERS).")
@click.option("--worker", type=int, hidden=True)  # set by `run` on the workers it starts
@click.option("--parent", type=int, hidden=True)
@click.option("--listen-fd", "listen_fd", type=int, hidden=True)
@click.option("--writer-fd", "writer_fd", type=int, hidden=True)
@handle_errors
def run(config_path: Path | None, quiet: bool, with_console: bool | None, workers: int | None, worker: int | None,
        parent: int | None, listen_fd: int | None, writer_fd: int | None) -> None:
    """Run the proxy in the foreground until Ctrl-C, with a line per request as it ends.

    Each line: time, decision, request id, agent, method, URL, status, undo class (for writes), duration, and why
    for a denial; holds, approvals, reloads and errors get a line too. Coloured on a terminal unless NO_COLOR is set.

    Edits to the config, the policy files and the vault are picked up while it runs; an edit with a mistake is
    reported and the last good version stays in force.

    With a console (see --console), it prints a sign-in link for the web console: good once, within 10 minutes
    (`goex-proxy console link` makes another).

    Example: goex-proxy run --config ~/.goex-proxy/config.yaml
    """
    from .. import runtime
    from ..policy.load import load_policy_set
    from ..workers import default_count, die_with_parent

    config = load_config(config_path)
    policies = load_policy_set(config.policy_sources)
    if worker is not None:  # started by `run`, which checked everything below and said so
        die_with_parent(parent or 0)
        runtime.run(config, policies, quiet, worker=worker, listen_fd=listen_fd, writer_fd=writer_fd)
        return
    workers = workers or default_count()
    console = _console_address(config, with_console)
    if console is not None and console != config.console.listen:  # --console without a section: guarded from agents too
        config = dataclasses.replace(config, console=dataclasses.replace(config.console, listen=console))
    runtime.check_can_listen(config, console)
    runtime.check_can_start(config)  # an unusable audit database, seal or CA is a reason not to start (exit 2)
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
    _warn_databases(config)
    if config.approvals.notify:
        from ..approvals.notify import targets

        for target in targets(config):
            if target.problem:
                click.echo(f"goex-proxy: warning: {target.channel.name}: {target.problem}; it will not be notified",
                           err=True)
    click.echo(f"goex-proxy {__version__} on {config.listen_host}:{config.listen_port}"
               + (f" ({workers} workers)" if workers > 1 else "") + "; "
               f"{len(policies.policies)} polic{'y' if len(policies.policies) == 1 else 'ies'}; audit {config.audit_db}"
               + (f"; approval links on {config.approvals.base_url}" if config.approvals.listen else "")
               + (f"; databases on {config.databases.listen[0]}:{config.databases.listen[1]}"
                  if config.databases.by_name else ""))
    also = [_serve_console(config, console)] if console else []
    if config.databases.by_name:
        also.append(_serve_databases(config, quiet))
    runtime.run(config, policies, quiet, also, workers=workers)


def _warn_databases(config: Config) -> None:
    """Say which databases cannot be reached for want of their password (their connections will be refused)."""
    if not config.databases.by_name:
        return
    from ..credentials.vault import Vault

    stored = Vault(config.state_dir).all()
    for database in config.databases.by_name.values():
        if database.password.reveal(stored) is None:
            click.echo(f"goex-proxy: warning: database {database.name!r} has no password ({database.password.describe()} "
                       "is not set); its connections will be refused", err=True)


def _serve_databases(config: Config, quiet: bool) -> Any:
    """What starts the database gateway in `run`'s loop (on `databases.listen`), with a line per statement unless
    `quiet`."""
    async def start() -> Any:
        from ..db.gateway import serve_gateway

        return await serve_gateway(config, quiet)

    return start


def _console_address(config: Config, wanted: bool | None) -> tuple[str, int] | None:
    """Where `run` serves the console: `console.listen` unless --no-console; with --console, its default address when
    the config has no section. An address beyond this machine without TLS is refused here, before anything starts."""
    from ..consoleconfig import DEFAULT_LISTEN, exposure_problem

    if wanted is False:
        return None
    address = config.console.listen or (DEFAULT_LISTEN if wanted else None)
    if address is not None and (problem := exposure_problem(address, config.console.tls,
                                                            config.console.public_url)) is not None:
        raise StateError(f"{problem} ({config.file})")
    return address


def _serve_console(config: Config, address: tuple[str, int]) -> Any:
    """What starts the console in `run`'s loop and prints a sign-in link (it is never logged; `console link` makes
    more)."""
    async def start() -> Any:
        from ..console.server import serve_console
        from .console import say_link

        served = await serve_console(config, address)
        assert served is not None
        say_link(served.base, await served.new_link())
        return served

    return start


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


@click.command(name="exec", context_settings={"ignore_unknown_options": True})
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
    config = load_config(config_path)
    if jail:
        sys.exit(_exit_code(_run_jailed(config, agent, list(command), workspace, files_mode == "apply")))
    if workspace is not None or files_mode != "apply":
        raise click.UsageError("--workspace and --files need the jail (leave out --no-jail)")
    env = agentenv.apply(dict(os.environ), agentenv.agent_env(config, agent), config)
    agentenv.check_listening(config)
    passed_on = _wait_like_a_shell()  # before starting it: a Ctrl-C as it starts reaches it, and must not end us
    try:
        child = subprocess.Popen(list(command), env=env)
    except OSError as exc:
        raise GoexError(f"cannot run {command[0]!r}: {exc.strerror or exc}") from None
    passed_on.to(child)
    sys.exit(_exit_code(child.wait()))


class _PassedOn:
    """Signals to pass on to a child, kept until it is there (a jail takes a moment to start, and a Ctrl-C meanwhile
    must neither be lost nor end us with a traceback)."""

    def __init__(self, jailed: bool) -> None:
        self.jailed = jailed
        self.child: subprocess.Popen[bytes] | None = None
        self.kept: list[int] = []

    def __call__(self, signum: int, _frame: Any) -> None:
        if self.child is None:
            self.kept.append(signum)
        else:
            self.child.send_signal(signum)

    def to(self, child: subprocess.Popen[bytes]) -> None:
        self.child = child
        if not self.jailed:  # in our process group, it gets Ctrl-C from the terminal (it got those kept as it started)
            for sig in (signal.SIGINT, signal.SIGQUIT):
                signal.signal(sig, signal.SIG_IGN)  # now, not before: a child inherits an ignored Ctrl-C
            self.kept = [signum for signum in self.kept if signum not in (signal.SIGINT, signal.SIGQUIT)]
        for signum in self.kept:
            child.send_signal(signum)
        self.kept.clear()


def _wait_like_a_shell(jailed: bool = False) -> _PassedOn:
    """A command run as is gets Ctrl-C (and Ctrl-\\) straight from the terminal, being in our process group: we
    pass on only TERM and HUP. A jail is in a group of its own (each of its processes passes signals on, so in ours
    the command would get each Ctrl-C twice): we pass those on too. Call this before starting the child, then `to`
    it: until then, signals are kept."""
    passed_on = _PassedOn(jailed)
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, passed_on)
    return passed_on


def _run_jailed(config: Config, agent: str, command: list[str], workspace: Path | None = None,
                apply: bool = True) -> int:
    """COMMAND in a jail bridged to the running proxy, or to one started here for it; its file changes recorded and
    applied (or held for review); its exit status."""
    from ..sandbox.jail import proxy_for_jail, start_jailed
    from ..sandbox.runs import NotApplied

    agentenv.proxy_url(config, agent)  # an unknown agent or a missing token: said before anything starts
    with proxy_for_jail(config) as bridged:
        passed_on = _wait_like_a_shell(jailed=True)
        jailed = start_jailed(bridged, agent, command, workspace)
        passed_on.to(jailed.child)
        status = jailed.wait()
        try:
            run = jailed.finish(status, apply)
        except NotApplied as exc:  # said, and the command's own status still returned
            click.echo(f"{TERMINAL_RESET if sys.stderr.isatty() else ''}goex-proxy: {exc}", err=True)
            run = None
    if run is not None:
        _say_run(run)
    return status


#: What a jailed command may have left a terminal in, undone before `exec` says what its run changed (the command
#: and all it started have ended): the alternate screen, a scrolling region, origin mode, no wrapping, a hidden
#: cursor, colours or attributes that hide text (black on black, concealed, default colours redefined), and the
#: line-drawing character set (G0 or G1, shifted out to), which draws letters as box pieces. Its output is the
#: terminal's as it wrote it; what goex-proxy says after it must be seen.
TERMINAL_RESET = ("\x1b[?1049l\x1b[r\x1b[?6l\x1b[?7h\x1b[?25h\x1b[0m\x1b]110\x07\x1b]111\x07"
                  "\x0f\x1b(B\x1b)B")


def _say_run(run: Any) -> None:
    """One line on stderr about a run's file changes and what can be done with them, on a terminal the command's
    output cannot hide it on."""
    from ..sandbox.runs import KEPT

    if sys.stderr.isatty():
        click.echo(TERMINAL_RESET, nl=False, err=True)

    counts = ", ".join(f"{n} {action}" for action, n in run.counts.items() if n)
    if run.state == KEPT:
        click.echo(f"goex-proxy: run {run.id} changed {len(run.changes)} path(s) in {run.workspace} ({counts}); "
                   f"undo with `goex-proxy files undo {run.id}`", err=True)
    else:
        click.echo(f"goex-proxy: run {run.id} changed {len(run.changes)} path(s) in {run.workspace} ({counts}), held "
                   f"for review: `goex-proxy files diff {run.id}`, then `files keep {run.id}` or `files undo "
                   f"{run.id}`", err=True)


@click.command(name="env")
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
    config = load_config(config_path)
    env = agentenv.agent_env(config, agent, proxy_host=proxy_host, ca_path=ca_path)
    try:
        pem = config.ca_cert.read_text(encoding="ascii")
    except OSError:
        raise StateError(f"the CA certificate {config.ca_cert} is missing; run `goex-proxy init`") from None
    click.echo(agentenv.render(env, fmt, pem), nl=False)


@click.command()
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

    results = run_checks(load_config(config_path), agent, jail=not no_jail)
    if as_json:
        for r in results:
            click.echo(json.dumps(r))
    else:
        print_table(("check", "result", "detail"),
                    [(r["check"], "pass" if r["ok"] else "FAIL", r["detail"]) for r in results], flexible=2,
                    colour_column=1, title=f"goex-proxy doctor ({'this environment' if no_jail else 'jail'}, "
                                           f"agent {agent})")
    sys.exit(0 if all(r["ok"] for r in results) else 1)
