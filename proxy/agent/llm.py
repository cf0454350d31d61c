"""The supervising model: chat completions from any OpenAI-compatible endpoint, each failure one clear sentence."""

from __future__ import annotations

import json
import re
from typing import Any

from ..config import LLM, Config
from ..credentials.kinds import PLACEHOLDER_PREFIX, Credential, Injection
from ..credentials.redact import SecretScrubber
from ..credentials.vault import Vault
from ..errors import GoexError
from ..secretref import SecretRef

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


class LLMError(GoexError):
    """The model could not be asked, or its answer is not what was asked for; nothing was run."""


def configured(config: Config) -> LLM:
    """The config's `llm`, or a clear error saying how to set one."""
    if config.llm is None or not config.llm.base_url or not config.llm.model:
        raise LLMError(f"no model is configured: add `llm: {{base_url: ..., model: ..., api_key: {{env: NAME}}}}` "
                       f"to {config.file}")
    return config.llm


def secret_scrubber(config: Config) -> SecretScrubber:
    """Every spelling of every secret goex-proxy can know: each credential's (the vault's or the environment's),
    OAuth2 client secrets, every other vault entry, and the model's own API key. The audit log is already scrubbed of
    the injected ones; this is the second lock, so that no secret reaches the model even from a row recorded before
    a secret was known, or one the agent pasted in. A vault that cannot be opened is an error, not an empty set.
    A secret from the environment is known only if this process has the variable too (the proxy's own scrubbing of
    the audit log, which had it, is then the lock that holds)."""
    vault = Vault(config.state_dir).all()
    forms: dict[str, str] = {}

    def add(credential: Credential, stored: str, placeholder: str) -> None:
        try:
            spellings = credential.forms(stored)
        except (ValueError, GoexError):
            spellings = sorted(credential.spellings(stored))
        forms.update({form: placeholder for form in spellings if form not in forms})

    for c in config.credentials.values():
        if stored := c.secret.reveal(vault):
            add(c, stored, c.placeholder)
        if c.inject.oauth2 and c.inject.oauth2.client_secret and (found := c.inject.oauth2.client_secret.reveal(vault)):
            forms.update({form: c.placeholder for form in c.spellings(found) if form not in forms})
    plain = Injection("header")
    for name, value in vault.items():
        add(Credential(name, SecretRef(vault=name), (), plain), value, f"{PLACEHOLDER_PREFIX}vault-{name}")
    if config.llm is not None and config.llm.api_key is not None and (key := config.llm.api_key.reveal(vault)):
        add(Credential("llm", config.llm.api_key, (), plain), key, "<the model's API key>")
    return SecretScrubber(forms)


def ask(config: Config, messages: list[dict[str, str]]) -> str:
    """The model's reply to `messages` (system, user and assistant turns), as text."""
    import openai

    llm = configured(config)
    key = "not-needed"  # local OpenAI-compatible servers often take no key; the SDK insists on one
    if llm.api_key is not None:
        found = llm.api_key.reveal(Vault(config.state_dir).all() if llm.api_key.vault else None)
        if found is None:
            raise LLMError(f"the model's API key ({llm.api_key.describe()}) is not set")
        key = found
    client = openai.OpenAI(base_url=llm.base_url, api_key=key, timeout=llm.timeout, max_retries=1)
    where = f"the model endpoint {llm.base_url}"
    try:
        reply = client.chat.completions.create(model=llm.model, messages=messages)  # type: ignore[arg-type]
    except openai.APITimeoutError:
        raise LLMError(f"{where} did not answer within {llm.timeout:g}s (llm.timeout)") from None
    except openai.APIConnectionError as exc:
        raise LLMError(f"cannot reach {where}: {exc.__cause__ or exc}") from None
    except openai.AuthenticationError:
        raise LLMError(f"{where} refused the API key (401); check llm.api_key") from None
    except openai.APIStatusError as exc:
        raise LLMError(f"{where} answered {exc.status_code}: {_message(exc.body) or exc.message}") from None
    except openai.OpenAIError as exc:
        raise LLMError(f"{where} gave an answer that is not a chat completion: {exc}") from None
    try:
        content = reply.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        content = None
    if not content or not content.strip():
        raise LLMError(f"{where} gave an empty reply")
    return content


def _message(body: object) -> str | None:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return None


def code_in(reply: str) -> str:
    """The Python program in a reply: its fenced block (the longest, if several), else the reply if it parses as
    Python on its own. Raises LLMError when there is none."""
    blocks: list[str] = [b.strip() for b in _FENCE.findall(reply) if b.strip()]
    if blocks:
        return max(blocks, key=len) + "\n"
    text = reply.strip()
    if text and "```" not in text:
        try:
            compile(text, "<reply>", "exec")
        except (SyntaxError, ValueError):
            pass
        else:
            return text + "\n"
    raise LLMError("the model's reply has no Python code (expected one ```python block)")


def json_in(reply: str) -> Any:
    """The JSON document in a reply (bare, or in one fenced block). Raises LLMError when it is not valid JSON."""
    text = reply.strip()
    fenced = re.fullmatch(r"```[a-zA-Z]*\s*\n(.*?)```", text, re.DOTALL)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise LLMError(f"the model's reply is not valid JSON ({exc}); nothing was run") from None
