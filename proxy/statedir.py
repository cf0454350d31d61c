"""`goex-proxy init`: the state directory with its CA, audit database, starter config and starter policy."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from .audit import store as audit
from .audit.seal import Seal
from .credentials import vault
from .errors import StateError

STARTER_POLICY = """\
# A starter policy: GET and HEAD on example.com for every agent. Everything else is denied by default.
# Shipped presets can be added to config.yaml as `builtin:gmail-readonly`, `builtin:slack-post-only`, ...
# Check a policy with `goex-proxy policy check FILE`; `goex-proxy run` reloads this file when it changes.
version: 1
name: starter
rules:
  - name: read example.com
    allow: {host: example.com, methods: [GET, HEAD], path: "/**"}
"""


def starter_config(token: str) -> str:
    return f"""\
# goex-proxy configuration (version 1). Unknown keys are errors; `goex-proxy policy check` validates it.
version: 1
listen: 127.0.0.1:8080
agents:
  # The token identifies the agent to the proxy (it is part of the agent's proxy URL); it grants nothing upstream
  # by itself. Use {{env: NAME}} to keep it out of this file.
  agent: {{token: "{token}"}}
policies:
  - policies/starter.yaml
  # - builtin:gmail-readonly
  # - {{use: builtin:slack-post-only, agents: [agent]}}
audit:
  db: audit.db
  max_body_bytes: 65536
upstream:
  routes: {{}}          # e.g. {{slack.com: "http://127.0.0.1:9001"}}: policy and audit still see slack.com
  extra_ca: []        # extra CA files to trust for upstream TLS (on top of the public roots)
# The web console `goex-proxy run` serves (and `goex-proxy console` on its own); `run` prints a link to sign in.
# Only 127.0.0.1 unless you add tls_cert and tls_key; `console: false` (or `run --no-console`) serves none.
console:
  listen: 127.0.0.1:8791
# The model `goex-proxy execute` and `undo --propose` ask (any OpenAI-compatible endpoint):
# llm: {{base_url: "https://api.openai.com/v1", model: gpt-4o, api_key: {{env: OPENAI_API_KEY}}}}
"""


def init(state_dir: Path, *, force: bool = False) -> list[str]:
    """Create what is missing in `state_dir`; never overwrite an existing config or CA. Returns what was made."""
    made: list[str] = []
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(state_dir, 0o700)
        config = state_dir / "config.yaml"
        if not config.exists() or force:
            fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(starter_config(secrets.token_urlsafe(24)))
            made.append(str(config))
        policy = state_dir / "policies" / "starter.yaml"
        if not policy.exists():
            policy.parent.mkdir(exist_ok=True)
            policy.write_text(STARTER_POLICY, encoding="utf-8")
            made.append(str(policy))
        if not (state_dir / "mitmproxy-ca.pem").exists():
            from mitmproxy.certs import CertStore  # slow to import; only init needs it

            CertStore.from_store(state_dir, "mitmproxy", 2048)
            made.append(str(state_dir / "mitmproxy-ca-cert.pem"))
        key = state_dir / vault.KEY_FILE
        if not key.exists():
            vault.new_key_file(key)
            made.append(str(key))
        db = state_dir / "audit.db"
        if not db.exists():
            audit.open_db(db, seal=Seal(state_dir)).close()
            made.append(str(db))
    except OSError as exc:
        raise StateError(f"cannot set up {state_dir}: {exc.strerror or exc}") from None
    return made
