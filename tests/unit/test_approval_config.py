"""The `approvals:` section: where links are served and what they start with, the channels, and every mistake as one
located line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from goex_proxy.approvalconfig import DEFAULT_LISTEN, Approvals
from goex_proxy.config import load_config
from goex_proxy.errors import ConfigError
from goex_proxy.secretref import SecretRef

ROOT = Path(__file__).parent.parent.parent


def load(tmp_path: Path, text: str) -> Approvals:
    path = tmp_path / "config.yaml"
    path.write_text("version: 1\n" + text)
    return load_config(path).approvals


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "config.yaml"
    path.write_text("version: 1\n" + text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return [str(p) for p in err.value.problems]


def test_no_section_serves_no_links_and_tells_nobody(tmp_path: Path) -> None:
    approvals = load(tmp_path, "")
    assert approvals == Approvals() and approvals.listen is None and approvals.base_url is None
    assert not approvals.notify


def test_a_section_listens_on_loopback_by_default_and_links_start_with_the_listen_address(tmp_path: Path) -> None:
    approvals = load(tmp_path, "approvals:\n  notify: [{webhook: 'http://127.0.0.1:9/hook'}]\n")
    assert approvals.listen == DEFAULT_LISTEN == ("127.0.0.1", 8790)
    assert approvals.base_url == "http://127.0.0.1:8790" and approvals.link_ttl is None
    assert approvals.notify[0].kind == "webhook" and approvals.notify[0].url == SecretRef(inline="http://127.0.0.1:9/hook")


def test_every_channel_form(tmp_path: Path) -> None:
    approvals = load(tmp_path, """\
approvals:
  listen: "[::1]:8799"
  public_url: https://approve.example.net/goex/
  link_ttl: 15m
  notify:
    - webhook: https://hooks.example.net/goex
    - webhook: {url_env: GOEX_HOOK}
    - ntfy: https://ntfy.sh/goex-topic
    - ntfy: {url_secret: ntfy-topic, token_env: NTFY_TOKEN}
    - slack: {url_secret: slack-approvals}
    - slack: {url_env: SLACK_HOOK}
""")
    assert approvals.listen == ("::1", 8799) and approvals.link_ttl == 900
    assert approvals.base_url == "https://approve.example.net/goex"  # no trailing slash: links add /a/TOKEN
    kinds = [(c.kind, c.url.describe(), c.token.describe() if c.token else None, c.name) for c in approvals.notify]
    assert kinds == [("webhook", "inline", None, "notify[0] (webhook)"), ("webhook", "env:GOEX_HOOK", None, "notify[1] (webhook)"),
                     ("ntfy", "inline", None, "notify[2] (ntfy)"), ("ntfy", "vault:ntfy-topic", "env:NTFY_TOKEN", "notify[3] (ntfy)"),
                     ("slack", "vault:slack-approvals", None, "notify[4] (slack)"), ("slack", "env:SLACK_HOOK", None, "notify[5] (slack)")]
    assert "hooks.example.net" not in repr(approvals.notify[0])  # a channel's repr never shows its URL


def test_listen_false_serves_no_links(tmp_path: Path) -> None:
    approvals = load(tmp_path, "approvals: {listen: false, notify: [{ntfy: 'https://ntfy.sh/t'}]}\n")
    assert approvals.listen is None and approvals.base_url is None and len(approvals.notify) == 1


def test_a_public_address_is_served_behind_https(tmp_path: Path) -> None:
    approvals = load(tmp_path, "approvals: {listen: '0.0.0.0:8790', public_url: 'https://goex.example.net'}\n")
    assert approvals.listen == ("0.0.0.0", 8790) and approvals.base_url == "https://goex.example.net"


def test_the_example_config_s_commented_section_is_valid(tmp_path: Path) -> None:
    """config.example.yaml shows the section commented out (nothing is sent by default); uncommented, it loads."""
    text = (ROOT / "config.example.yaml").read_text()
    block = re.search(r"^# approvals:\n(?:#   .*\n)+", text, re.MULTILINE)
    assert block is not None
    path = tmp_path / "config.yaml"
    path.write_text("version: 1\n" + "\n".join(line[2:] for line in block.group(0).splitlines()) + "\n")
    approvals = load_config(path).approvals
    assert approvals.public_url == "https://approve.example.net" and approvals.link_ttl == 900
    assert [c.kind for c in approvals.notify] == ["webhook", "ntfy", "ntfy", "slack", "slack"]
    assert load_config(ROOT / "config.example.yaml").approvals == Approvals()


@pytest.mark.parametrize(("text", "where", "message"), [
    ("approvals: yes\n", (2, 12), "'approvals' must be a mapping (got a boolean)"),
    ("approvals: {notify: [], mail: x}\n", (2, 25), "unknown key 'mail' in 'approvals'"),
    ("approvals: {listen: 8790}\n", (2, 21), "'approvals.listen' must be HOST:PORT like 127.0.0.1:8790"),
    ("approvals: {listen: '0.0.0.0:8790'}\n", (2, 21), "'approvals.listen' 0.0.0.0:8790 is not a loopback address"),
    ("approvals: {listen: '192.168.1.5:8790', public_url: 'http://192.168.1.5:8790'}\n", (2, 53),
     "'approvals.public_url' must be https:// unless it names this machine"),
    ("approvals: {listen: 'myhost.lan:8790', public_url: 'http://localhost:8790'}\n", (2, 21),
     "is not a loopback address: links carry the authority to approve"),
    ("approvals: {public_url: 'ftp://x.example'}\n", (2, 25), "'approvals.public_url' must be an http(s) URL"),
    ("approvals: {public_url: 'https://a.example/x?y=1'}\n", (2, 25), "must not have a query or fragment"),
    ("approvals: {public_url: 'https://u:p@a.example'}\n", (2, 25), "must not carry a user or password"),
    ("approvals: {public_url: 5}\n", (2, 25), "'approvals.public_url' must be a string (got a number)"),
    ("approvals: {listen: false, public_url: 'https://a.example'}\n", (2, 40),
     "'approvals.public_url' is set but 'approvals.listen' is false"),
    ("approvals: {link_ttl: soon}\n", (2, 23), "'approvals.link_ttl' must be a duration like 30s"),
    ("approvals: {link_ttl: 2d}\n", (2, 23), "'approvals.link_ttl' must be at most 1d"),
    ("approvals: {notify: {webhook: 'https://a.example'}}\n", (2, 21), "'approvals.notify' must be a list"),
    ("approvals: {notify: [https://a.example]}\n", (2, 22), "'approvals.notify[0]' must be a mapping (got a string)"),
    ("approvals: {notify: [{email: me@example.com}]}\n", (2, 23), "unknown key 'email' in 'approvals.notify[0]'"),
    ("approvals: {notify: [{}]}\n", (2, 22), "'approvals.notify[0]' needs exactly one of webhook, ntfy, slack"),
    ("approvals: {notify: [{webhook: 'https://a.example', ntfy: 'https://b.example'}]}\n", (2, 22),
     "needs exactly one of webhook, ntfy, slack"),
    ("approvals: {notify: [{webhook: 'http://hooks.example.net/x'}]}\n", (2, 32),
     "'approvals.notify[0].webhook.url' must be https:// unless it names this machine"),
    ("approvals: {notify: [{webhook: 'hooks.example.net'}]}\n", (2, 32), "must be an http(s) URL"),
    ("approvals: {notify: [{ntfy: 'https://me:pw@ntfy.example/t'}]}\n", (2, 29), "must not carry a user or password"),
    ("approvals: {notify: [{webhook: 7}]}\n", (2, 32), "'approvals.notify[0].webhook' must be a URL or a mapping"),
    ("approvals: {notify: [{slack: 'https://hooks.slack.com/services/T/B/X'}]}\n", (2, 30),
     "a Slack incoming webhook URL is itself a secret"),
    ("approvals: {notify: [{slack: {url: 'https://hooks.slack.com/services/T/B/X'}}]}\n", (2, 31),
     "'approvals.notify[0].slack' must not write the URL"),
    ("approvals: {notify: [{slack: {}}]}\n", (2, 30), "'approvals.notify[0].slack' needs exactly one of url_secret, url_env"),
    ("approvals: {notify: [{slack: {url_secret: a, url_env: B}}]}\n", (2, 30), "needs exactly one of url_secret, url_env"),
    ("approvals: {notify: [{slack: {url_env: 'not a name'}}]}\n", (2, 40),
     "'approvals.notify[0].slack.url_env' 'not a name' is not an environment variable name"),
    ("approvals: {notify: [{slack: {url_secret: ''}}]}\n", (2, 43),
     "'approvals.notify[0].slack.url_secret' must be a non-empty string (got a string)"),
    ("approvals: {notify: [{slack: {url_secret: [a]}}]}\n", (2, 43),
     "'approvals.notify[0].slack.url_secret' must be a non-empty string (got a list)"),
    ("approvals: {notify: [{slack: {url_secret: a, token_env: T}}]}\n", (2, 46),
     "unknown key 'token_env' in 'approvals.notify[0].slack'"),
    ("approvals: {notify: [{webhook: {url_env: H, token_secret: t}}]}\n", (2, 45),
     "unknown key 'token_secret' in 'approvals.notify[0].webhook'"),
    ("approvals: {notify: [{ntfy: {url: 'https://ntfy.sh/t', token_secret: a, token_env: B}}]}\n", (2, 29),
     "'approvals.notify[0].ntfy' needs exactly one of token_secret, token_env"),
])
def test_each_mistake_is_one_located_line(tmp_path: Path, text: str, where: tuple[int, int], message: str) -> None:
    path = tmp_path / "config.yaml"
    found = problems(tmp_path, text)
    located = [p for p in found if message in p]
    assert len(located) == 1, found
    assert located[0].startswith(f"{path}:{where[0]}:{where[1]}: "), found
    assert len(found) == 1, found


def test_every_mistake_in_the_section_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, "approvals:\n  listen: '10.0.0.1:1'\n  link_ttl: 9w\n  notify:\n"
                               "    - slack: 'https://hooks.slack.com/x'\n    - webhook: 'ftp://x'\n")
    assert len(found) == 4, found
    assert [p.split(":")[1] for p in found] == ["3", "4", "6", "7"]


def test_a_slack_url_written_into_the_config_is_never_repeated_in_the_error(tmp_path: Path) -> None:
    found = problems(tmp_path, "approvals: {notify: [{slack: 'https://hooks.slack.com/services/T0/B0/SECRETPART'}]}\n")
    assert not any("SECRETPART" in p for p in found), found
