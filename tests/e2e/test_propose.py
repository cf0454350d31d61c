"""`goex-proxy undo ID --propose` end to end: a real proxy, json-server as the REST API no undo rule covers, the
scripted OpenAI-compatible server as the model, and real `goex-proxy` CLI processes. A proposal is checked, shown,
confirmed, run as an audited undo and saved as a rule; a proposal for another host or one policy denies is refused
before anything is sent; the model's failures are one line each; and no secret ever reaches the model."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from goex_proxy.ids import packed
from tests.conftest import GoexProxy, free_port, serve_json
from tests.fake_openai import Delay, FakeOpenAI

pytestmark = pytest.mark.e2e

LLM_KEY = "sk-test-llm-key-31415"
POLICY = {"notes": """
    version: 1
    rules:
      - name: the posts
        allow: {host: notes.example, methods: [GET, POST, DELETE], paths: [/posts, "/posts/**"]}
      - name: comments are kept
        deny: {host: notes.example, methods: [DELETE], path: "/comments/**", reason: comments are kept forever}
      - name: the echo API
        allow: {host: example.com, methods: [POST, DELETE], path: "/echo/**"}
"""}
# Without builtin:rest, no rule knows how to take back a POST to a REST collection.
NO_REST = "undo_rules: [builtin:slack]\n"
AGENT = """
import requests
r = requests.post("http://notes.example/posts", json={"title": "agent's post"}, timeout=20)
print(r.status_code, r.json()["id"])
"""


def llm_block(base_url: str, timeout: str = "10s") -> str:
    return (f'llm:\n  base_url: "{base_url}"\n  model: fake-model\n  api_key: {{env: GOEX_TEST_LLM_KEY}}\n'
            f"  timeout: {timeout}\n")


def delete(url: str, **more: Any) -> str:
    return json.dumps({"steps": [{"method": "DELETE", "url": url, "why": "deletes the post the agent created", **more}],
                       "explanation": "the agent created one post; deleting it takes the request back"})


@pytest.fixture
def notes(tmp_path: Path) -> Iterator[str]:
    """json-server with two posts, on 127.0.0.1."""
    with serve_json(tmp_path, {"posts": [{"id": "1", "title": "one"}, {"id": "2", "title": "two"}],
                              "comments": [{"id": "1", "text": "hi"}]}) as url:
        yield url


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    monkeypatch.setenv("GOEX_TEST_LLM_KEY", LLM_KEY)
    with FakeOpenAI(api_key=LLM_KEY) as server:
        yield server


@pytest.fixture
def proxy(make_proxy, notes: str, fake: FakeOpenAI) -> GoexProxy:
    return make_proxy(POLICY, routes={"notes.example": notes}, extra_config=NO_REST + llm_block(fake.base_url))


def posts(base: str) -> list[dict[str, Any]]:
    return sorted(requests.get(f"{base}/posts", timeout=10).json(), key=lambda p: str(p["id"]))


def agent_posts(proxy: GoexProxy) -> tuple[str, str]:
    """The agent creates a post; its audit id and the post's id."""
    r = proxy.exec("mailbot", sys.executable, "-c", AGENT)
    assert r.returncode == 0, r.stderr
    status, post = r.stdout.split()
    assert status == "201"
    row = next(row for row in reversed(proxy.rows()) if row["method"] == "POST")
    return str(row["id"]), post



def one_line_failure(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    return r.stderr.strip()


def test_a_proposal_is_checked_confirmed_run_as_an_audited_undo_and_saved_as_a_rule(proxy, notes, fake, tmp_path):
    before = posts(notes)
    rid, post = agent_posts(proxy)
    assert len(posts(notes)) == len(before) + 1
    r = proxy.cli("undo", rid, "--dry-run")
    assert r.returncode == 2 and "no undo rule matches this request" in r.stderr

    fake.script(delete(f"http://notes.example/posts/{post}"))
    saved = tmp_path / "notes-undo.yaml"
    r = proxy.cli("undo", rid, "--propose", "--yes", "--save-rule", str(saved))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PROPOSED BY A MODEL (fake-model) — not a rule; check it before you confirm" in r.stdout
    assert f"step 1: DELETE http://notes.example/posts/{post}" in r.stdout
    assert "allowed by policy (notes/the posts)" in r.stdout and f"undone {rid}" in r.stdout
    assert posts(notes) == before

    compensation = [row for row in proxy.rows() if row["undo_of"] == rid]
    assert [(c["method"], c["url"], c["decision"], c["status"]) for c in compensation] == [
        ("DELETE", f"http://notes.example/posts/{post}", "allow", 200)]
    [call] = proxy.model_calls()
    assert (call["kind"], call["subject"], call["agent"], call["model"], call["choice"], call["error"]) == (
        "propose", rid, "mailbot", "fake-model", "accepted", None)
    assert json.loads(call["rows"]) == [compensation[0]["id"]] and "DELETE" in call["reply"]

    # The saved rule is a valid undo pack; with it, a second post is undone without asking the model.
    assert "url: ${response." in saved.read_text()  # the post the answer names (Location, or its id), not this one
    check = proxy.cli("policy", "check", str(saved))
    assert check.returncode == 0 and "no errors" in check.stdout, check.stdout
    second, post2 = agent_posts(proxy)
    proxy.config.write_text(proxy.config.read_text().replace(NO_REST, f"undo_rules: [{saved}]\n"))
    r = proxy.cli("undo", second, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "rule: notes-undo/undo POST /posts (proposed by fake-model)" in r.stdout
    assert f"step 1: DELETE http://notes.example/posts/{post2}" in r.stdout
    r = proxy.cli("undo", second, "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert posts(notes) == before
    assert len(fake.chat_requests()) == 1


@pytest.mark.parametrize(("answer", "message"), [
    (delete("http://evil.example/posts/1"), "step 1 is aimed at http://evil.example, not at the origin of the request "
                                            "it undoes (http://notes.example)"),
    (delete("http://notes.example/comments/1"), "step 1 (DELETE http://notes.example/comments/1) would be denied by "
                                                "policy (rule notes/comments are kept): comments are kept forever"),
    (delete("http://notes.example/posts/1", headers={"Authorization": "Bearer goex-placeholder-x"}),
     "sets the credential header 'Authorization'"),
])
def test_a_proposal_for_another_host_or_that_policy_denies_is_refused_before_anything_is_sent(
        proxy, notes, fake, upstream, answer, message):
    rid, _ = agent_posts(proxy)
    state, rows, seen = posts(notes), len(proxy.rows()), len(upstream.state.seen)
    fake.script(answer)
    line = one_line_failure(proxy.cli("undo", rid, "--propose", "--yes"))
    assert line.startswith("goex-proxy: refused the model's proposal: ") and line.endswith("; nothing was run")
    assert message in line
    assert posts(notes) == state and len(proxy.rows()) == rows and len(upstream.state.seen) == seen
    [call] = proxy.model_calls()
    assert call["choice"] == "refused: " + line.removeprefix("goex-proxy: ")


def propose_with(proxy: GoexProxy, notes: str, rid: str, name: str, config: str, *extra: str) -> str:
    """`undo RID --propose` under another config (same state): its one-line failure; nothing was sent."""
    state, rows = posts(notes), len(proxy.rows())
    path = proxy.home / f"{name}.yaml"
    path.write_text(config)
    line = one_line_failure(proxy.run_cli("undo", "--config", str(path), rid, "--propose", *extra, input=b"y\n"))
    assert posts(notes) == state and len(proxy.rows()) == rows
    return line


def test_each_failure_of_the_model_is_one_line_and_nothing_runs(proxy, notes, fake):
    rid, _ = agent_posts(proxy)
    ours, text = llm_block(fake.base_url), proxy.config.read_text()
    assert "no model is configured: add `llm:" in propose_with(proxy, notes, rid, "none", text.replace(ours, ""), "--yes")
    unreachable = text.replace(ours, llm_block(f"http://127.0.0.1:{free_port()}/v1"))
    assert "cannot reach the model endpoint" in propose_with(proxy, notes, rid, "unreachable", unreachable, "--yes")
    fake.script("Sure! To undo it, DELETE the post.")
    assert "the model's reply is not valid JSON" in propose_with(proxy, notes, rid, "prose", text, "--yes")

    calls = proxy.model_calls()  # every question asked is recorded, a failed one with its error
    assert [(c["reply"] is not None, c["error"] is not None) for c in calls] == [(False, True), (True, False)]
    assert "cannot reach" in calls[0]["error"] and calls[0]["choice"] is None
    assert calls[1]["choice"].startswith("refused: the model's reply is not valid JSON")


def test_a_model_that_does_not_answer_in_time_is_one_line_and_nothing_runs(proxy, notes, fake):
    rid, post = agent_posts(proxy)
    fake.script(Delay(3, delete(f"http://notes.example/posts/{post}")),
                Delay(3, delete(f"http://notes.example/posts/{post}")))  # the client retries once
    slow = proxy.config.read_text().replace(llm_block(fake.base_url), llm_block(fake.base_url, timeout="1s"))
    assert "did not answer within 1s (llm.timeout)" in propose_with(proxy, notes, rid, "slow", slow, "--yes")
    [call] = proxy.model_calls()
    assert "did not answer within" in call["error"] and call["reply"] is None


def test_without_a_terminal_or_with_a_rule_that_plans_it_nothing_is_run(proxy, notes, fake):
    rid, post = agent_posts(proxy)
    text = proxy.config.read_text()
    fake.script(delete(f"http://notes.example/posts/{post}"))
    line = propose_with(proxy, notes, rid, "no-tty", text)
    assert line == "goex-proxy: undo asks before it acts: pass --yes to carry out the proposal without a terminal"
    assert proxy.model_calls()[0]["choice"].startswith("declined: no terminal")
    default_rules = text.replace(NO_REST, "")  # builtin:rest plans it: the model is not asked
    line = propose_with(proxy, notes, rid, "planned", default_rules, "--yes")
    assert line == (f"goex-proxy: the undo rule rest/create in a collection already plans the undo of {rid}: run "
                    f"`goex-proxy undo {rid}` without --propose")
    assert len(fake.chat_requests()) == 1 and len(proxy.model_calls()) == 1


CANARY = "CANARY-echo-secret-5e1d7"
CANARY_CREDENTIAL = """credentials:
  echo-key:
    secret: echo-key
    hosts: [example.com]
    inject: {header: X-Echo-Key, value: "{secret}"}
"""


def test_no_secret_reaches_the_model(make_proxy, upstream, fake):
    """The credential the proxy injected, which the upstream echoed back in its answer, is in no prompt."""
    proxy = make_proxy(POLICY, start=False, extra_config=CANARY_CREDENTIAL + llm_block(fake.base_url))
    stored = proxy.run_cli("secrets", "set", "--config", str(proxy.config), "echo-key", input=CANARY.encode())
    assert stored.returncode == 0, stored.stderr
    proxy.start()
    r = proxy.exec("mailbot", sys.executable, "-c",
                   "import requests; print(requests.post('https://example.com/echo/notes', json={'n': 1}, "
                   "timeout=20).status_code)")
    assert r.returncode == 0 and r.stdout.strip() == "200", r.stderr
    assert any(s.headers.get("X-Echo-Key") == CANARY for s in upstream.state.seen)  # it was injected, and echoed
    rid = str(proxy.rows()[-1]["id"])
    seen = len(upstream.state.seen)

    fake.script(json.dumps({"steps": [{"method": "DELETE", "url": "https://example.com/echo/notes"}]}))
    r = proxy.cli("undo", rid, "--propose", "--dry-run", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    shown = json.loads(r.stdout)
    assert (shown["verdict"], shown["proposed_by"], shown["steps"][0]["url"]) == (
        "proposed", "fake-model", "https://example.com/echo/notes")
    assert len(upstream.state.seen) == seen  # a dry run sends nothing
    prompts = fake.prompts()
    assert len(prompts) == 2 and "X-Echo-Key" in prompts[1]  # the header and its echo were shown, hidden
    spellings = [CANARY, base64.b64encode(CANARY.encode()).decode().rstrip("="), CANARY.encode().hex(), LLM_KEY]
    for text in prompts + [json.dumps(c) for c in proxy.model_calls()]:
        assert not [s for s in spellings if s in text]
    assert proxy.model_calls()[0]["choice"] == "not run: --dry-run"


def test_a_row_edited_in_the_database_is_never_shown_to_the_model_nor_undone(proxy, notes, fake):
    """The agent's row is edited in the audit database (its URL now names post 1): the model is never asked to undo
    what the row now says, and nothing is sent. Before, the model was shown the edited row and its DELETE ran."""
    rid, post = agent_posts(proxy)
    with sqlite3.connect(proxy.home / "audit.db") as conn:
        conn.execute("UPDATE requests SET path = '/posts/1', url = 'http://notes.example/posts/1' WHERE id = ?", (packed(rid),))
    fake.script(delete("http://notes.example/posts/1"))
    line = propose_with(proxy, notes, rid, "same", proxy.config.read_text(), "--yes")
    assert "its audit row does not hold" in line and "was edited" in line, line
    assert proxy.model_calls() == []
