"""`console`: the web console served on its own over an existing state directory (no proxy needed); `console link`:
a new sign-in link for a console that runs."""

from __future__ import annotations

from pathlib import Path

import click

from ..approvalconfig import parse_host_port
from ..config import load_config
from .common import config_option, handle_errors


def listen_option(value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    try:
        return parse_host_port(value, "127.0.0.1:8791")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None


def say_link(base: str, link: str) -> None:
    """The one line a console's start prints (the link is never logged)."""
    from ..console.auth import LINK_SECONDS

    click.echo(f"goex-proxy console on {base}; open (once, within {int(LINK_SECONDS // 60)} minutes, to sign in): "
               f"{link}")


@click.group(invoke_without_command=True)
@config_option
@click.option("--listen", help="HOST:PORT to serve on (default: console.listen in the config, else 127.0.0.1:8791). "
                                "Beyond this machine only with console.tls_cert, tls_key and public_url set.")
@click.pass_context
@handle_errors
def console(ctx: click.Context, config_path: Path | None, listen: str | None) -> None:
    """Serve the web console until Ctrl-C: the audit log live, each request's detail and undo, and the approvals.

    It prints a sign-in link: it signs one browser in, once, within 10 minutes; `goex-proxy console link` makes
    another while it runs. It works whether or not `goex-proxy run` runs; approving a waiting request needs the proxy
    it waits in.

    Example: goex-proxy console --listen 127.0.0.1:8791
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..audit import store as audit
    from ..console.server import run_alone
    from ..consoleconfig import DEFAULT_LISTEN

    config = load_config(config_path)
    address = listen_option(listen) or config.console.listen or DEFAULT_LISTEN
    audit.connect(config).close()  # an unusable audit database is a reason not to start (exit 2)
    run_alone(config, address, say_link)


@console.command()
@config_option
@handle_errors
def link(config_path: Path | None) -> None:
    """Print a new sign-in link for the console that runs over this state directory (served by `goex-proxy run` or
    `goex-proxy console`): it signs one browser in, once, within 10 minutes.

    Example: goex-proxy console link
    """
    from ..audit import store as audit
    from ..console.auth import LINK_SECONDS, mint_link
    from ..consoleconfig import running_consoles
    from ..errors import StateError

    parent = click.get_current_context().parent
    config = load_config(config_path or (parent.params.get("config_path") if parent else None))
    running = running_consoles(config.state_dir)
    if not running:
        raise StateError(f"no console runs over {config.state_dir} (start one: goex-proxy console, or goex-proxy run "
                         "with a console: section)")
    conn = audit.connect(config)
    try:
        token = mint_link(conn)
    finally:
        conn.close()
    click.echo(f"open (once, within {int(LINK_SECONDS // 60)} minutes, to sign in): {running[0].base}/?token={token}")
