"""`console`: the web console served on its own over an existing state directory (no proxy needed)."""

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


@click.command()
@config_option
@click.option("--listen", help="HOST:PORT to serve on (default: console.listen in the config, else 127.0.0.1:8791). "
                                "Beyond this machine only with console.tls_cert and tls_key set.")
@handle_errors
def console(config_path: Path | None, listen: str | None) -> None:
    """Serve the web console until Ctrl-C: the audit log live, each request's detail and undo, and the approvals.

    It prints a link with a token, once: open it to sign in (the token is good until the console stops). It works
    whether or not `goex-proxy run` runs; approving a waiting request needs the proxy it waits in.

    Example: goex-proxy console --listen 127.0.0.1:8791
    """
    from ..audit import store as audit
    from ..console.server import run_alone
    from ..consoleconfig import DEFAULT_LISTEN

    config = load_config(config_path)
    address = listen_option(listen) or config.console.listen or DEFAULT_LISTEN
    audit.connect(config).close()  # an unusable audit database is a reason not to start (exit 2)
    run_alone(config, address, lambda link: click.echo(f"goex-proxy console on {link.partition('/?')[0]}; open "
                                                       f"(once, to sign in): {link}"))
