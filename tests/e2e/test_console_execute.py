"""A run of `goex-proxy execute` on the console, for real: a scripted model writes the code, it runs jailed through
`goex-proxy run` against the Slack fake and writes files in a workspace (kept), then `goex-proxy console` over the same
state directory shows the run whole and "Undo all of this run" restores both the Slack fake and the workspace."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_console import console_alone, csrf_of, signed_in
from tests.e2e.test_execute import execute, fake, post_and_write_code, proxy  # noqa: F401 (fixtures)

pytestmark = pytest.mark.e2e
LONG = "# " + " ".join(f"joke{i}" for i in range(700)) + " <b>end</b>"


@pytest.fixture
def console(proxy: Any, tmp_path: Path) -> Iterator[tuple[str, str]]:  # noqa: F811
    """`goex-proxy console` on its own over the proxy's state directory: its base URL and token."""
    with console_alone(proxy, tmp_path) as served:
        yield served.base, served.token


def test_an_execute_run_is_shown_whole_and_undoing_it_restores_slack_and_the_workspace(
        proxy: Any, fake: Any, upstream: Any, console: tuple[str, str], tmp_path: Path) -> None:  # noqa: F811
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("my notes\n")
    fake.script(post_and_write_code("C0BOTS").replace("```python\n", f"```python\n{LONG}\n", 1))
    r = execute(proxy, "--yes", "--then", "keep", "--workspace", str(project))
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(upstream.state.slack_messages) == 1 and (project / "joke.txt").exists()
    [call] = proxy.model_calls()
    post = str(proxy.rows()[0]["id"])

    client = signed_in(*console)
    listing = client.get("/runs").text
    assert f'href="/runs/{call["seq"]}"' in listing and "send a funny joke" in listing
    page = client.get(f"/runs/{call['seq']}").text
    assert LONG.replace("<", "&lt;").replace(">", "&gt;") in page and "<b>end</b>" not in page
    assert f'href="/request/{post}"' in page and "joke.txt" in page and "notes.txt" in page and ": kept" in page
    assert client.post(f"/runs/{call['seq']}/undo", data={"csrf": "0" * 64}).status_code == 403
    assert len(upstream.state.slack_messages) == 1, "a refused POST changes nothing"

    done = client.post(f"/runs/{call['seq']}/undo", data={"csrf": csrf_of(page)}, headers={"Origin": console[0]})
    assert done.status_code == 200, done.text
    assert upstream.state.slack_messages == {} and upstream.state.slack_calls[-1] == "chat.delete"
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt"]
    assert (project / "notes.txt").read_text() == "my notes\n"
    assert "Nothing of it is left to undo." in client.get(f"/runs/{call['seq']}").text
    assert httpx.get(f"{console[0]}/runs", timeout=10).status_code == 401
    assert re.search(r"restored .* as it was before run", done.text)
