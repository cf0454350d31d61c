"""Notifications of waiting requests: a card with one-time approve/deny links, to each configured channel."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..approvalconfig import LINK_TTL_CAP, Approvals, Channel, check_url
from ..config import Config
from ..credentials.vault import VAULT_FILE
from ..durations import format_duration
from ..errors import GoexError
from . import store

if TYPE_CHECKING:  # httpx is imported when a notification is sent: a proxy that sends none starts without it
    import httpx

log = logging.getLogger(__name__)

#: The actions a notification's links carry, in the order they are shown, with their labels.
ACTIONS = {"hold": (("approve", "Approve"), ("deny", "Deny")), "delay": (("cancel", "Cancel"), ("approve", "Send now"))}
#: How long one channel may take to accept a notification.
TIMEOUT_SECONDS = 10.0
#: ntfy keeps a longer message as an attachment; Slack cuts a section's text at 3000 characters.
NTFY_BODY_BYTES = 4000
SLACK_TEXT_CHARS = 2900
_SHORT_ANSWER = re.compile(r"[\w .:/-]{1,60}")


@dataclass(frozen=True)
class Notice:
    """What every channel is told about one waiting request: its card, when its wait ends, and its links."""

    request_id: str
    kind: str                      # hold or delay
    card: dict[str, Any]
    deadline: float
    links: dict[str, str] = field(default_factory=dict)   # action -> URL; empty when no links are served
    expires: float | None = None
    now: float = field(default_factory=time.time)

    @property
    def buttons(self) -> list[tuple[str, str, str]]:
        """(action, label, URL) of each link, in the order they are shown."""
        return [(action, label, self.links[action]) for action, label in ACTIONS[self.kind] if action in self.links]

    @property
    def headline(self) -> str:
        target = f"{self.card.get('method', '')} {urlsplit(str(self.card.get('url', ''))).hostname or ''}".strip()
        if self.kind == "hold":
            return f"Held for approval: {target}"
        return f"Delayed: {target} is sent in {_left(self)} unless cancelled"

    @property
    def footer(self) -> str:
        until = time.strftime("%H:%M:%S %Z", time.localtime(self.deadline))
        verb = "decide" if self.kind == "hold" else "cancel"
        tail = ""
        if not self.links and self.kind == "hold":
            tail = f"; decide with `goex-proxy approve {self.request_id}` or `goex-proxy deny {self.request_id}`"
        elif not self.links:
            tail = f"; cancel with `goex-proxy cancel {self.request_id}`"
        return (f"request {self.request_id} · undo class: {self.card.get('undo_class')} · {verb} within "
                f"{_left(self)} (until {until}){tail}")


def _left(notice: Notice) -> str:
    return format_duration(max(1, round(notice.deadline - notice.now)))


def link_expiry(approvals: Approvals, deadline: float, now: float) -> float:
    """When a request's links stop working: at its deadline, or sooner as `link_ttl` (capped) says."""
    return min(deadline, now + min(approvals.link_ttl or LINK_TTL_CAP, LINK_TTL_CAP))


async def make_links(state: Any, request_id: str, kind: str, deadline: float, now: float) -> tuple[dict[str, str], float]:
    """One-time links for a waiting request's actions, stored (as hashes) in the audit writer's transaction."""
    approvals: Approvals = state.config.approvals
    base = approvals.base_url
    if base is None or state.writer is None:
        return {}, now
    actions = [action for action, _ in ACTIONS[kind]]
    expires = link_expiry(approvals, deadline, now)
    tokens = await asyncio.wrap_future(state.writer.apply(
        lambda conn, writer: store.make_links(conn, request_id, actions, expires)))
    return {action: f"{base}/a/{token}" for action, token in tokens.items()}, expires


# The messages ----------------------------------------------------------------------------------------------------


def webhook_message(notice: Notice) -> dict[str, Any]:
    """A generic JSON POST: the card, the links (and each button's label), and a text for chat-like receivers."""
    return {
        "event": "goex-proxy.waiting",
        "request_id": notice.request_id,
        "kind": notice.kind,
        "text": f"{notice.headline}\n{notice.card.get('summary', '')}\n{notice.footer}",
        "card": notice.card,
        "deadline": notice.deadline,
        "deadline_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(notice.deadline)),
        "links": dict(notice.links),
        "actions": [{"action": a, "label": label, "url": url, "method": "POST"} for a, label, url in notice.buttons],
        "links_expire": notice.expires if notice.links else None,
    }


def _header(value: str) -> str:
    """A header value ntfy reads: ASCII as is, anything else as RFC 2047 (which ntfy documents)."""
    value = " ".join(value.split())
    if value.isascii():
        return value
    return f"=?UTF-8?B?{base64.b64encode(value.encode()).decode()}?="


def _tag(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "_", text.lower()).strip("_") or "unknown"


def _cut_bytes(text: str, limit: int) -> str:
    data = text.encode()
    return text if len(data) <= limit else data[:limit - 3].decode(errors="ignore") + "…"


def _ntfy_value(value: str) -> str:
    """A value in ntfy's `Actions` header: quoted when it holds the header's separators (as ntfy documents)."""
    value = _header(value)
    if not any(ch in value for ch in ",;\"'"):
        return value
    return f"'{value}'" if '"' in value else f'"{value}"'


def ntfy_message(notice: Notice) -> tuple[dict[str, str], bytes]:
    """ntfy's publish API: the summary as the body; title, priority and tags as headers; the links as two `http`
    action buttons (POST), and a tap on the notification opening the first link's page (which only shows)."""
    headers = {
        "Title": _header(notice.headline),
        "Priority": "high" if notice.kind == "hold" else "default",
        "Tags": ",".join(["warning" if notice.kind == "hold" else "hourglass_flowing_sand", "goex-proxy",
                          _tag(str(notice.card.get("undo_class", "")))]),
        "Content-Type": "text/plain; charset=utf-8",
    }
    if notice.buttons:
        headers["Actions"] = "; ".join(f"http, {_ntfy_value(label)}, {_ntfy_value(url)}, method=POST, clear=true"
                                       for _, label, url in notice.buttons)
        headers["Click"] = notice.buttons[0][2]
    body = f"{notice.card.get('summary', '')}\n{notice.footer}"
    return headers, _cut_bytes(body, NTFY_BODY_BYTES).encode()


def _slack_escape(text: str) -> str:
    """Slack reads &, < and > as control characters (mentions, links): escaped as its documentation says."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(notice: Notice) -> dict[str, Any]:
    """A Slack incoming webhook's Block Kit message: a section with the summary, and an actions block whose two
    buttons open the links (a page that asks for one more tap: opening a URL never acts)."""
    text = f"*{_slack_escape(notice.headline)}*\n{_slack_escape(str(notice.card.get('summary', '')))}\n" \
           f"_{_slack_escape(notice.footer)}_"
    if len(text) > SLACK_TEXT_CHARS:
        text = text[:SLACK_TEXT_CHARS - 1] + "…"
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": True}}]
    if notice.buttons:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "action_id": f"goex-{action}", "text": {"type": "plain_text", "text": label},
             "url": url, "style": "primary" if action == "approve" else "danger"}
            for action, label, url in notice.buttons]})
    return {"text": _slack_escape(notice.headline), "blocks": blocks, "unfurl_links": False, "unfurl_media": False}


def request_for(channel: Channel, notice: Notice) -> dict[str, Any]:
    """httpx's arguments for the POST a channel takes (without its URL)."""
    if channel.kind == "ntfy":
        headers, body = ntfy_message(notice)
        return {"headers": headers, "content": body}
    return {"json": slack_message(notice) if channel.kind == "slack" else webhook_message(notice)}


# Sending ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A channel with its URL (and token) read: where one notification goes, or why it cannot."""

    channel: Channel
    url: str | None
    token: str | None = None
    problem: str | None = None


def targets(config: Config) -> list[Target]:
    """Each channel's URL and token, read from the config, the vault or the environment (the vault only if named)."""
    channels = config.approvals.notify
    vault: Mapping[str, str] = {}
    if any(c.url.vault or (c.token and c.token.vault) for c in channels):
        from ..credentials.vault import Vault

        try:
            vault = Vault(config.state_dir).all()
        except GoexError as exc:
            return [Target(c, None, problem=f"cannot read the vault: {exc}") for c in channels]
    return [_target(c, vault) for c in channels]


def _target(channel: Channel, vault: Mapping[str, str]) -> Target:
    url = channel.url.reveal(vault)
    if url is None:
        return Target(channel, None, problem=f"its URL ({channel.url.describe()}) is not set")
    if (problem := check_url(url)) is not None:
        return Target(channel, None, problem=f"its URL ({channel.url.describe()}) {problem}")
    token = channel.token.reveal(vault) if channel.token is not None else None
    if channel.token is not None and token is None:
        return Target(channel, None, problem=f"its token ({channel.token.describe()}) is not set")
    return Target(channel, url, token)


def _failure(exc: BaseException) -> str:
    """Why a POST failed, in words that cannot hold its URL (a Slack webhook URL is a secret)."""
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {TIMEOUT_SECONDS:g}s"
    if isinstance(exc, httpx.ConnectError):
        return "could not connect"
    return f"the request failed ({type(exc).__name__})"


async def send(client: httpx.AsyncClient, target: Target, notice: Notice) -> bool:
    """POST one notification; a failure is logged in one line (never with the URL or token) and not raised."""
    import httpx

    name = target.channel.name
    if target.url is None:
        log.error("could not notify %s of request %s: %s", name, notice.request_id, target.problem)
        return False
    args = request_for(target.channel, notice)
    if target.token:
        args["headers"] = {**args.get("headers", {}), "Authorization": f"Bearer {target.token}"}
    try:
        answer = await client.post(target.url, **args)
    except (httpx.HTTPError, OSError, ValueError) as exc:
        log.error("could not notify %s of request %s: %s", name, notice.request_id, _failure(exc))
        return False
    if not answer.is_success:
        said = answer.text.strip()[:60]
        said = f" ({said})" if _SHORT_ANSWER.fullmatch(said) else ""
        log.error("could not notify %s of request %s: it answered HTTP %d%s", name, notice.request_id,
                  answer.status_code, said)
        return False
    return True


def client() -> httpx.AsyncClient:
    """The proxy's own client for notifications: never through a proxy from the environment (nor the agents'), no
    redirects followed (they could carry the links elsewhere), a short timeout."""
    import httpx

    return httpx.AsyncClient(timeout=TIMEOUT_SECONDS, trust_env=False, follow_redirects=False)


#: Each config's channels as last read, and the vault's state they were read at (the vault is decrypted once, not
#: once per notification: with a passphrase key that costs a scrypt each time).
_READ: dict[int, tuple[Any, Any, list[Target]]] = {}


def _vault_state(config: Config) -> Any:
    try:
        return (config.state_dir / VAULT_FILE).stat().st_mtime_ns, os.environ.get("GOEX_PROXY_KEY") is not None
    except OSError:
        return None


def cached_targets(config: Config) -> list[Target]:
    """`targets(config)`, read again only when the approvals section or the vault file changed."""
    seen = _vault_state(config)
    kept = _READ.get(id(config.approvals))
    if kept is not None and kept[0] is config.approvals and kept[1] == seen:
        return kept[2]
    found = targets(config)
    _READ.clear()
    _READ[id(config.approvals)] = (config.approvals, seen, found)
    return found


#: At most this many notifications per agent in any minute; past it, waits are announced only by `pending` (a
#: looping agent must not flood the person's phone, or use up a public ntfy server's allowance).
MOST_PER_MINUTE = 6
#: When each proxy (by its shared state's id) last notified for each agent.
_SENT: dict[int, dict[str, list[float]]] = {}


def _flooding(state: Any, agent: str | None, now: float) -> bool:
    """Whether this agent's notifications are past MOST_PER_MINUTE (if not, this one is counted)."""
    sent = _SENT.setdefault(id(state), {})
    recent = [t for t in sent.get(agent or "", []) if now - t < 60]
    if len(recent) >= MOST_PER_MINUTE:
        if len(recent) == MOST_PER_MINUTE:
            log.warning("agent %s has more than %d requests a minute waiting for a person; until that eases, they are "
                        "not notified one by one (see goex-proxy pending)", agent, MOST_PER_MINUTE)
            recent.append(now)  # warned once per burst
        sent[agent or ""] = recent
        return True
    sent[agent or ""] = [*recent, now]
    return False


async def notify(config: Config, notice: Notice) -> list[bool]:
    """Send a notice to every channel at once; one channel's failure does not touch the others."""
    found = await asyncio.to_thread(cached_targets, config)
    async with client() as http:
        return list(await asyncio.gather(*(send(http, target, notice) for target in found)))


async def announce(state: Any, request_id: str, card: dict[str, Any], deadline: float, kind: str) -> None:
    """Tell every configured channel that a request waits, with one-time links to decide it. Never raises: a
    notification that cannot be sent changes nothing for the request."""
    config: Config | None = state.config
    if config is None or not config.approvals.notify:
        return
    now = time.time()
    if _flooding(state, card.get("agent"), now):
        return
    try:
        links, expires = await make_links(state, request_id, kind, deadline, now)
    except Exception as exc:  # the links could not be stored: the notice still tells the person, without them
        log.error("could not make approval links for request %s: %s", request_id, exc)
        links, expires = {}, now
    try:
        await notify(config, Notice(request_id, kind, card, deadline, links, expires, now))
    except Exception as exc:  # a bug here must not end the task noisily, nor touch the request
        log.error("could not notify anyone of request %s: %s", request_id, type(exc).__name__)

