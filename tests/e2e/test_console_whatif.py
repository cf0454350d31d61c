"""The console's what-if against a real `goex-proxy run`: a draft whose condition takes seconds of CPU per request is
replayed in a process of its own, and the proxy serving that console keeps answering agents at its usual speed."""

from __future__ import annotations

import statistics
import threading
import time

import httpx
import pytest
import requests

from tests.conftest import GITHUB_POLICY, GITHUB_URL
from tests.e2e.test_console import csrf_of, signed_in, with_console
from tests.unit.test_console_policies import whatif_children

pytestmark = pytest.mark.e2e

#: Three lists of 250 nested: about 15 million evaluations, several seconds of CPU, for the one logged request to
#: /repos/octo/slow (the condition is cheap for every other path).
LONG = "[" + ",".join(str(i) for i in range(250)) + "]"
HOSTILE = f"""version: 1
name: github
rules:
  - name: read repos
    allow:
      host: api.github.com
      methods: [GET]
      path: "/repos/**"
      when: 'request.path != "/repos/octo/slow" || {LONG}.all(x, {LONG}.all(y, {LONG}.all(z, x + y + z >= 0)))'
"""


def timed(session: requests.Session, url: str) -> float:
    started = time.monotonic()
    r = session.get(url, timeout=60)
    assert r.status_code == 200, r.text
    return time.monotonic() - started


def test_the_proxy_answers_at_its_usual_speed_while_a_hostile_draft_is_replayed(make_proxy) -> None:
    proxy, base, token = with_console(make_proxy, GITHUB_POLICY)
    agent = requests.Session()
    agent.proxies, agent.verify = {"https": proxy.proxy_url("mailbot")}, str(proxy.ca_cert)
    slow = GITHUB_URL.rsplit("/", 1)[0] + "/slow"
    for _ in range(3):  # the tunnel, the host's certificate and the log's first rows, before anything is timed
        timed(agent, GITHUB_URL)
    assert agent.get(slow, timeout=60).status_code == 404  # allowed, logged; the fake has no such repo
    baseline = [timed(agent, GITHUB_URL) for _ in range(15)]

    console = signed_in(base, token)
    csrf = csrf_of(console.get("/policies").text)
    answers: list[httpx.Response] = []
    began = time.monotonic()
    replay = threading.Thread(target=lambda: answers.append(
        console.post("/policies/whatif", data={"draft": HOSTILE, "csrf": csrf}, timeout=120)))
    replay.start()
    assert proxy.proc is not None
    deadline = time.monotonic() + 20
    while not whatif_children(proxy.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert whatif_children(proxy.proc.pid), "the what-if runs in a process of its own"
    during = []
    while replay.is_alive() and len(during) < 100:
        during.append(timed(agent, GITHUB_URL))
    measured = time.monotonic() - began
    replay.join(120)
    took = time.monotonic() - began
    [r] = answers
    assert r.status_code == 200 and "No change: the " in r.text, r.text[-2000:]
    assert "nests .all() in the body of .all()" in r.text  # policy check's warning, shown with the result
    assert len(during) >= 5 and measured < took, (len(during), measured, took)  # all made while it ran
    # side by side: the same requests, before and while the replay runs (in-process, each waited out the replay)
    assert statistics.median(during) <= 4 * statistics.median(baseline), (baseline, during)
    assert max(during) < took / 2, (during, took)
