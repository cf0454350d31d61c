"""`secrets` (the encrypted vault: set, list, rm) and `authorize` (OAuth2 consent for a credential)."""

from __future__ import annotations

import json
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import click

from ..audit import store as audit
from ..config import load_config
from ..errors import NotFound, VaultError
from .common import config_option, duration_option, handle_errors, json_option, print_table, when


@click.group()
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

    config = load_config(config_path)
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"secret for {name}: ")
    else:
        value = sys.stdin.read().rstrip("\r\n")
    users = [c.name for c in config.credentials.values() if c.secret.vault == name]
    if any(c in value for c in "\r\n\0") and any(config.credentials[u].inject.kind == "header" for u in users):
        raise VaultError(f"refusing to store {name!r}: it holds a line break or NUL, and a credential injects it into "
                         "a header, where that would start a line of its own (requests would be refused)")
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

    config = load_config(config_path)
    stored = Vault(config.state_dir).names()
    last_used: dict[str, float] = {}
    if config.audit_db.exists():
        with closing(audit.connect(config, readonly=True)) as conn:
            last_used = audit.last_injected(conn)
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
              stored_text[r["stored"]], when(r["last_used"])) for r in rows]
    print_table(("secret", "credential", "hosts", "inject", "in vault", "last used"), cells, flexible=(2, 3))


@secrets.command(name="rm")
@config_option
@click.argument("name")
@handle_errors
def secrets_rm(config_path: Path | None, name: str) -> None:
    """Remove the secret NAME from the vault.

    Example: goex-proxy secrets rm slack-bot
    """
    from ..credentials.vault import Vault

    if not Vault(load_config(config_path).state_dir).remove(name):
        raise NotFound(f"no secret named {name!r} in the vault")
    click.echo(f"removed {name!r}")


@click.command()
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

    config = load_config(config_path)
    credential = config.credentials.get(name)
    if credential is None or credential.inject.oauth2 is None:
        oauth = [c.name for c in config.credentials.values() if c.inject.oauth2]
        raise NotFound(f"no OAuth2 credential named {name!r} in {config.file} "
                       f"(OAuth2 credentials: {', '.join(oauth) or 'none'})")
    tokens = run_flow(config, credential, lambda text: click.echo(text, err=True), not no_browser, timeout)
    life = f", access token valid for {tokens.expires_at - time.time():.0f}s" if tokens.expires_at else ""
    refresh = "with a refresh token" if tokens.refresh_token else "WITHOUT a refresh token (re-run when it expires)"
    click.echo(f"authorized {name}: tokens stored in the vault as {credential.secret.vault!r}, {refresh}{life}")
