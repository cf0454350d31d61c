"""What `execute` tells the model: the APIs an agent's policy allows, the runtime's rules, and why an attempt failed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..policy.engine import PolicySet

#: The most stderr (its end) and denials an attempt's feedback quotes.
STDERR_TAIL = 4000
MAX_DENIALS = 10

RULES = """You write one Python 3 program that carries out the user's task by calling HTTP APIs. It runs unattended
in a sandbox whose only way out is an HTTP(S) proxy that enforces the policy below, records every request, and lets
the user undo what the program did.

Rules of the runtime:
- Use only the Python standard library (urllib.request, json) or httpx; both are installed. The proxy settings
  (HTTPS_PROXY, HTTP_PROXY) and its CA certificate (SSL_CERT_FILE, REQUESTS_CA_BUNDLE) are already in the environment
  and are honoured by urllib and httpx by default: do not change or bypass them, and do not disable TLS verification.
- Credentials are injected by the proxy. Where a credential is listed below, send the placeholder from the named
  environment variable exactly where the API expects the secret (e.g. `Authorization: Bearer <placeholder>`); the proxy
  replaces it. Never ask for, print, guess or hard-code a key or token.
- Stay inside the allowed calls. A call the policy denies gets HTTP 403 with a JSON body whose `reason` says why;
  print that reason and stop rather than trying another way around it.
- No input() and no interactive prompts; no subprocesses. Print a short line for each call you make and its result.
  Exit with a non-zero status if the task could not be completed.
- Reply with the program only, in one ```python fenced block, and nothing else."""


@dataclass(frozen=True)
class Attempt:
    """What one run of the model's code did: its exit status, the end of its stderr, the audit rows it produced."""

    exit_code: int | None  # None: killed at the time limit
    stderr: str
    rows: tuple[dict[str, Any], ...]

    @property
    def denials(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("decision") == "deny"]

    @property
    def failed(self) -> bool:
        return self.exit_code != 0 or bool(self.denials)


def agent_brief(config: Config, policies: PolicySet, agent: str) -> str:
    """The agent's allowed and denied calls (from every policy that applies to it) and its credential placeholders.

    Only rule summaries and variable names: never a secret or a token."""
    allowed: list[str] = []
    denied: list[str] = []
    for policy in policies.policies:
        if not policy.applies_to(agent):
            continue
        for rule in policy.rules:
            if rule.agents is not None and agent not in rule.agents:
                continue
            if rule.effect == "allow":
                allowed.append(f"- {rule.summary()}" + (" [report mode: recorded, not enforced]"
                                                        if policy.mode == "report" else ""))
            else:
                denied.append(f"- {rule.summary()}: {rule.reason or 'denied'}")
    lines = ["Allowed calls (method, host, path globs: `*` is one path segment, `**` any; anything else is denied):"]
    lines += allowed or ["- none: every call will be denied"]
    if denied:
        lines += ["Always denied:", *denied]
    creds = [c for c in config.credentials.values() if c.env]
    if creds:
        lines.append("Credentials (the proxy injects the real secret; the variable holds a placeholder):")
        for c in creds:
            hosts = ", ".join(h.pattern for h in c.hosts)
            lines.append(f"- for {hosts}: environment variable {' or '.join(c.env)}")
    else:
        lines.append("No credential placeholders: the proxy adds any credential a host needs by itself.")
    return "\n".join(lines)


def first_messages(task: str, brief: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": f"{RULES}\n\n{brief}"}, {"role": "user", "content": f"Task: {task}"}]


def feedback(attempt: Attempt) -> str:
    """The user turn that asks for a revision: what was denied and why, the exit status, the end of stderr."""
    parts = ["The program did not complete the task. Revise it and reply with the whole new program."]
    for row in attempt.denials[:MAX_DENIALS]:
        parts.append(f"- DENIED {row.get('method')} {row.get('url')}: {row.get('reason')}"
                     + (f" (rule {row['rule']})" if row.get("rule") else ""))
    if attempt.exit_code is None:
        parts.append("It was stopped at the time limit.")
    else:
        parts.append(f"Exit status: {attempt.exit_code}.")
    if attempt.stderr.strip():
        parts.append("End of its stderr:\n" + attempt.stderr[-STDERR_TAIL:])
    return "\n".join(parts)
