"""`goex-proxy execute`: a scripted OpenAI-compatible model writes the code, it runs jailed through the real proxy
against the Slack fake, and what it did is kept or undone; denials feed back; failures are one line."""

from __future__ import annotations

import json

import pytest

from tests.conftest import free_port
from tests.fake_openai import Delay, FakeOpenAI

pytestmark = pytest.mark.e2e

CANARY = "xoxb-CANARY-execute-93c1d7"
LLM_KEY = "sk-test-llm-key-CANARY"
POLICY = {"slack": """
    version: 1
    name: slack
    agents: [slackbot]
    rules:
      - name: post to bots
        allow:
          host: slack.com
          methods: [POST]
          path: /api/chat.postMessage
          when: 'request.json.channel == "C0BOTS"'
      - name: tidy up
        allow: {host: slack.com, methods: [POST], path: /api/chat.delete}
"""}
CREDENTIAL = """credentials:
  slack-bot:
    secret: slack-bot
    hosts: [slack.com]
    inject: {header: Authorization, value: "Bearer {secret}"}
    env: SLACK_TOKEN
"""
TASK = "send a funny joke to #bots on slack"


def post_code(channel: str) -> str:
    return f"""Here is the program:

```python
import json, os, sys, urllib.error, urllib.request

print("model key visible:", os.environ.get("TEST_LLM_KEY"))
body = json.dumps({{"channel": "{channel}", "text": "why did the proxy cross the road?"}}).encode()
req = urllib.request.Request("https://slack.com/api/chat.postMessage", data=body, headers={{
    "Content-Type": "application/json", "Authorization": "Bearer " + os.environ["SLACK_TOKEN"]}})
try:
    print(urllib.request.urlopen(req, timeout=20).read().decode())
except urllib.error.HTTPError as e:
    print("denied:", json.loads(e.read())["reason"], file=sys.stderr)
    sys.exit(1)
```
"""


@pytest.fixture
def fake():
    with FakeOpenAI(api_key=LLM_KEY) as server:
        yield server


@pytest.fixture
def proxy(make_proxy, fake):
    llm = f"llm: {{base_url: '{fake.base_url}', model: fake-model, api_key: {{env: TEST_LLM_KEY}}, timeout: 10s}}\n"
    p = make_proxy(POLICY, start=False, extra_config=CREDENTIAL + llm)
    p.env["TEST_LLM_KEY"] = LLM_KEY
    stored = p.run_cli("secrets", "set", "--config", str(p.config), "slack-bot", input=CANARY.encode())
    assert stored.returncode == 0, stored.stderr
    return p.start()


def execute(proxy, *args: str, timeout: float = 90):
    return proxy.run_cli("execute", "--config", str(proxy.config), TASK, "--agent", "slackbot", *args,
                         timeout=timeout)



def test_the_code_runs_jailed_and_undoing_all_restores_the_service(proxy, fake, upstream):
    before = dict(upstream.state.slack_messages)
    fake.script(post_code("C0BOTS"))
    r = execute(proxy, "--yes", "--then", "undo")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "urllib.request.urlopen" in r.stdout  # the code was shown
    assert "model key visible: None" in r.stdout  # the supervisor's key is withheld from the agent's code
    assert '"ok": true' in r.stdout  # its output streamed through
    rows = proxy.rows()
    post, delete = rows[0], rows[-1]
    assert (post["url"], post["decision"], post["status"]) == ("https://slack.com/api/chat.postMessage", "allow", 200)
    assert delete["undo_of"] == post["id"] and delete["url"].endswith("/api/chat.delete") and delete["status"] == 200
    assert upstream.state.slack_messages == before
    assert upstream.state.slack_calls == ["chat.postMessage", "chat.delete"]
    [call] = proxy.model_calls()
    assert (call["kind"], call["subject"], call["model"], call["exit_code"], call["choice"]) == (
        "execute", TASK, "fake-model", 0, "undo all")
    assert json.loads(call["rows"]) == [post["id"]] and "urlopen" in call["code"]
    prompt = "\n".join(fake.prompts())
    assert "chat.postMessage" in prompt and "SLACK_TOKEN" in prompt and TASK in prompt
    assert CANARY not in prompt and CANARY not in json.dumps(rows, default=str)
    assert fake.chat_requests()[0].header("authorization") == f"Bearer {LLM_KEY}"


def post_and_write_code(channel: str) -> str:
    """A program that posts a message and writes a file in its workspace (and edits one that was there)."""
    return post_code(channel).replace("```python\n", "```python\nopen('joke.txt', 'w').write('the joke\\n')\n"
                                       "open('notes.txt', 'a').write('told a joke\\n')\n", 1)


@pytest.fixture
def workspace(tmp_path, fake):
    """A project directory holding the person's notes, and a model scripted to post and write files in it."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("my notes\n")
    fake.script(post_and_write_code("C0BOTS"))
    return project


def test_files_and_requests_are_shown_together_and_undo_all_takes_back_both(proxy, upstream, workspace):
    """The program posts to Slack and writes files: its file changes are held (not in the workspace) while the
    person looks, shown with its requests, and "undo all" deletes the message and drops the files."""
    r = execute(proxy, "--yes", "--then", "undo", "--workspace", str(workspace))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "it changed 2 path(s)" in r.stdout
    assert "added    joke.txt" in r.stdout and "changed  notes.txt" in r.stdout
    assert "dropped the file changes of run" in r.stdout
    assert upstream.state.slack_calls == ["chat.postMessage", "chat.delete"] and upstream.state.slack_messages == {}
    assert sorted(p.name for p in workspace.iterdir()) == ["notes.txt"]
    assert (workspace / "notes.txt").read_text() == "my notes\n"
    [run] = [json.loads(line) for line in proxy.cli("files", "list", "--json").stdout.splitlines()]
    assert run["state"] == "discarded" and run["agent"] == "slackbot"


def test_keeping_applies_the_held_files(proxy, upstream, workspace):
    """"keep" applies the program's file changes to the workspace, and `files undo` can still take them back."""
    r = execute(proxy, "--yes", "--then", "keep", "--workspace", str(workspace))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (workspace / "joke.txt").read_text() == "the joke\n"
    assert (workspace / "notes.txt").read_text() == "my notes\ntold a joke\n"
    [run] = [json.loads(line) for line in proxy.cli("files", "list", "--json").stdout.splitlines()]
    assert run["state"] == "kept"
    assert proxy.cli("files", "undo", run["id"]).returncode == 0
    assert sorted(p.name for p in workspace.iterdir()) == ["notes.txt"]


def test_a_denial_goes_back_to_the_model_and_the_revision_succeeds(proxy, fake, upstream):
    fake.script(post_code("C0RANDOM"), post_code("C0BOTS"))
    r = execute(proxy, "--yes", "--retry", "2", "--then", "keep")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "attempt 2" in r.stdout and "1 denied" in r.stdout
    assert [m["channel"] for m in upstream.state.slack_messages.values()] == ["C0BOTS"]
    revision = fake.chat_requests()[1].body["messages"]
    assert revision[-2]["role"] == "assistant" and "C0RANDOM" in revision[-2]["content"]
    assert "DENIED POST https://slack.com/api/chat.postMessage" in revision[-1]["content"]
    assert "Exit status: 1" in revision[-1]["content"] and "denied:" in revision[-1]["content"]
    calls = proxy.model_calls()
    assert [c["exit_code"] for c in calls] == [1, 0] and {c["choice"] for c in calls} == {"keep"}
    assert [c["run"] for c in calls] == [calls[0]["seq"]] * 2  # the revision is of the run its first call began


def test_without_retries_a_denial_ends_it_with_the_programs_status(proxy, fake, upstream):
    fake.script(post_code("C0RANDOM"))
    r = execute(proxy, "--yes")
    assert r.returncode == 1 and "1 denied" in r.stdout
    assert upstream.state.slack_messages == {} and len(fake.chat_requests()) == 1


def test_show_only_never_runs_and_no_terminal_means_no_run(proxy, fake, upstream):
    fake.script(post_code("C0BOTS"), post_code("C0BOTS"))
    shown = execute(proxy, "--show-only")
    assert shown.returncode == 0 and "urlopen" in shown.stdout
    asked = execute(proxy)
    assert asked.returncode == 2 and "pass --yes" in asked.stderr
    assert upstream.state.slack_calls == [] and proxy.rows() == []
    assert [c["choice"] for c in proxy.model_calls()] == ["shown only"]  # without a terminal, the model is not asked


def test_the_review_shows_all_that_runs(proxy, fake):
    """A long line's tail is shown (wrapped, not cropped), characters that render invisibly or reorder text are shown
    as escapes with a warning, and the code's sha256 is printed: what is reviewed is all that runs."""
    import hashlib

    code = ('print("' + "a very long harmless looking string " * 4 + '");import os;os.system("echo TAIL-OF-THE-LINE")\n'
            'access = "user" # \u202e \u2066admin\u2069 \u2066\n')
    fake.script(f"```python\n{code}```")
    shown = execute(proxy, "--show-only")
    assert shown.returncode == 0 and "TAIL-OF-THE-LINE" in shown.stdout
    assert "\u202e" not in shown.stdout and "\\u202e" in shown.stdout and "render invisibly" in shown.stdout
    assert f"sha256 {hashlib.sha256(code.encode()).hexdigest()}" in shown.stdout and "2 lines" in shown.stdout
    tail = next(line for line in shown.stdout.splitlines() if "TAIL-OF-THE-LINE" in line)
    assert not tail.lstrip().startswith(("1 ", "2 "))  # a wrapped line's rest has no line number of its own
    assert "asking " in shown.stdout and " for the code (at most " in shown.stdout  # progress while the model works
    assert " answered in " in shown.stdout


def test_a_program_past_its_time_limit_is_stopped(proxy, fake):
    fake.script("```python\nimport time\nprint('working', flush=True)\ntime.sleep(60)\n```")
    r = execute(proxy, "--yes", "--timeout", "2s")
    assert r.returncode == 124 and "stopped at the time limit (2s)" in r.stdout and "working" in r.stdout


@pytest.mark.parametrize("case", ["no code", "timeout", "unreachable", "no model"])
def test_model_failures_are_one_line_and_nothing_runs(make_proxy, fake, upstream, case):
    if case == "no model":
        llm = ""
    else:
        url = f"http://127.0.0.1:{free_port()}/v1" if case == "unreachable" else fake.base_url
        llm = f"llm: {{base_url: '{url}', model: fake-model, timeout: 1s}}\n"
    proxy = make_proxy(POLICY, extra_config=llm)
    fake.api_key = None
    fake.script(*(["I would rather not write code today."] if case == "no code" else [Delay(5, "late")] * 2))
    r = execute(proxy, "--yes")
    expected = {"no code": "has no Python code", "timeout": "did not answer within 1s",
                "unreachable": "cannot reach the model endpoint", "no model": "no model is configured"}[case]
    assert r.returncode == 2 and expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert upstream.state.slack_calls == [] and proxy.rows() == []


def converse(argv: list[str], env: dict[str, str], script: list[tuple[str, str]], timeout: float = 60) -> tuple[int, str]:
    """Run a command on a pseudo-terminal, answering each prompt in `script` (text to wait for, line to type)."""
    import os
    import pty
    import select
    import subprocess
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    seen, pending, deadline = "", list(script), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536).decode(errors="replace")
                except OSError:  # the other end closed: the command ended
                    break
                if not chunk:
                    break
                seen += chunk
            if pending and pending[0][0] in seen.split("\x00")[-1]:
                os.write(master, (pending[0][1] + "\n").encode())
                seen += "\x00"  # answered: wait for the next prompt after this point
                pending.pop(0)
            elif proc.poll() is not None and not ready:
                break
        return proc.wait(timeout=10), seen.replace("\x00", "")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_on_a_terminal_the_person_edits_runs_and_undoes_chosen_rows(proxy, fake, upstream):
    """Edit in $EDITOR (the edit fixes the channel), run, then undo row 1 by number."""
    from tests.conftest import GOEX

    fake.script(post_code("C0RANDOM"))
    env = {**proxy.env, "EDITOR": "sed -i s/C0RANDOM/C0BOTS/", "TERM": "dumb"}
    code, out = converse([*GOEX, "execute", "--config", str(proxy.config), TASK, "--agent", "slackbot"], env,
                         [("run it, edit it", "edit"), ("run it, edit it", "run"), ("undo some", "1")])
    assert code == 0, out
    assert upstream.state.slack_calls == ["chat.postMessage", "chat.delete"] and upstream.state.slack_messages == {}
    post = proxy.rows()[0]
    assert '"channel": "C0BOTS"' in post["req_body"].decode()
    [call] = proxy.model_calls()
    assert call["choice"] == f"undo {post['id']}" and "C0BOTS" in call["code"]
