"""What `execute` tells the model: only the agent's own rules and placeholder names, and why an attempt failed."""

from __future__ import annotations

from pathlib import Path

from goex_proxy.agent.taskprompt import Attempt, agent_brief, feedback
from goex_proxy.config import Config
from goex_proxy.credentials.kinds import Credential, Injection
from goex_proxy.globs import compile_host
from goex_proxy.policy.engine import PolicySet
from goex_proxy.policy.load import check_policy_text
from goex_proxy.secretref import SecretRef

POLICY = """
version: 1
name: slack
agents: [slackbot, other]
rules:
  - name: post
    allow: {host: slack.com, methods: [POST], path: /api/chat.postMessage, limit: {count: 5, per: 1h}}
  - name: only for other
    allow: {host: api.github.com, agents: [other]}
  - name: never delete
    deny: {host: slack.com, path: "/api/*.delete", reason: "deleting is for humans"}
"""
ELSEWHERE = """
version: 1
name: gmail
agents: [mailbot]
rules:
  - name: read mail
    allow: {host: gmail.googleapis.com, methods: [GET]}
"""


def test_the_brief_names_the_agents_rules_and_placeholders_only(tmp_path: Path) -> None:
    policies = [check_policy_text(text, f"{n}.yaml")[0] for n, text in (("s", POLICY), ("g", ELSEWHERE))]
    secret = SecretRef(inline="xoxb-REAL-SECRET")
    slack = Credential("slack-bot", secret, (compile_host("slack.com"),), Injection("header", "Authorization",
                                                                                    "Bearer {secret}"),
                       env=("SLACK_TOKEN",))
    config = Config(file=tmp_path / "c.yaml", state_dir=tmp_path, credentials={"slack-bot": slack})
    brief = agent_brief(config, PolicySet.of(p for p in policies if p), "slackbot")
    assert "POST slack.com/api/chat.postMessage ('post', at most 5 per 1h)" in brief
    assert "deleting is for humans" in brief and "for slack.com: environment variable SLACK_TOKEN" in brief
    assert "api.github.com" not in brief and "gmail" not in brief and "xoxb-REAL-SECRET" not in brief


def test_feedback_quotes_denials_exit_status_and_the_end_of_stderr() -> None:
    rows = ({"method": "POST", "url": "https://slack.com/api/chat.delete", "decision": "deny",
             "reason": "deleting is for humans", "rule": "slack/never delete"},
            {"method": "GET", "url": "https://slack.com/api/auth.test", "decision": "allow"})
    text = feedback(Attempt(2, "x" * 10_000 + "Traceback: boom", rows))
    assert "DENIED POST https://slack.com/api/chat.delete: deleting is for humans (rule slack/never delete)" in text
    assert "auth.test" not in text and "Exit status: 2." in text and text.endswith("Traceback: boom")
    assert len(text) < 4500
    assert "stopped at the time limit" in feedback(Attempt(None, "", ()))
