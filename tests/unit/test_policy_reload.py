"""Policy reloads: a request is decided wholly under the old policy set or wholly under the new one, and loading a
large policy happens off the event loop, which goes on deciding requests meanwhile."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import threading
import time
from pathlib import Path

from mitmproxy.test import taddons, tflow

from goex_proxy.addons import flowmeta
from goex_proxy.addons.decide import Decide
from goex_proxy.config import PolicySource
from goex_proxy.policy.engine import PolicySet, decide
from goex_proxy.policy.load import check_policy_text
from goex_proxy.policy.requestview import RequestView
from tests.conftest import stage_state
from tests.hookrun import finished

#: Allows GET and DELETE on the host: a GET that says it is a DELETE (a method override) is allowed.
BOTH = """
version: 1
name: p
rules:
  - name: reads and deletes
    allow: {host: address, methods: [GET, DELETE], path: /path}
"""
#: Allows neither: the same request is denied by default, on its first reading.
NEITHER = """
version: 1
name: p
rules:
  - name: posts only
    allow: {host: address, methods: [POST], path: /path}
"""


def _set(text: str) -> PolicySet:
    policy, problems = check_policy_text(text, "p.yaml")
    assert policy is not None, problems
    return PolicySet.of([policy])


def test_a_request_is_decided_wholly_under_one_policy_set_while_another_thread_swaps_them(tmp_path: Path) -> None:
    """Decide reads the policy set once per request. A request with a method override is decided twice (as a GET, then
    as the DELETE it names); were the set swapped between the two, the first reading would be allowed under one set
    and the second denied under the other, a refusal neither set makes on its own (`request-reading`)."""
    sets = [_set(BOTH), _set(NEITHER)]
    stop = threading.Event()
    swaps = 0
    interval = sys.getswitchinterval()
    with stage_state(tmp_path, BOTH) as state, taddons.context():
        def swapper() -> None:
            nonlocal swaps
            while not stop.is_set():
                state.policies = sets[swaps % 2]
                swaps += 1
        sys.setswitchinterval(1e-6)   # switch threads as often as the interpreter can
        thread = threading.Thread(target=swapper)
        thread.start()
        try:
            outcomes = []
            for _ in range(1500):
                f = tflow.tflow()   # GET http://address:22/path
                f.request.headers["X-HTTP-Method-Override"] = "DELETE"
                flowmeta.set_agent(f, "bot")
                finished(Decide(state).request(f))
                d = flowmeta.decision(f)
                outcomes.append((d.effect, d.rule))
        finally:
            stop.set()
            thread.join()
            sys.setswitchinterval(interval)
    assert swaps > 1000
    assert set(outcomes) <= {("allow", "p/reads and deletes"), ("deny", None)}, set(outcomes)
    assert ("allow", "p/reads and deletes") in outcomes and ("deny", None) in outcomes


def _big_policy(rules: int) -> str:
    lines = ["version: 1", "name: big", "rules:"]
    for i in range(rules):
        lines.append(f'  - {{name: "read {i}", allow: {{host: address, methods: [GET], path: "/v1/res{i}/**"}}}}')
    return "\n".join(lines) + "\n"


def test_a_reload_of_a_10000_rule_policy_does_not_stall_requests_decided_meanwhile(tmp_path: Path) -> None:
    """The reload reads the file in a worker thread: decisions go on every millisecond or so while it loads, the
    longest pause between two of them a small part of the reload's own time; then the new set is in force at once."""
    with stage_state(tmp_path, BOTH) as state:
        policy_file = tmp_path / "big.yaml"
        policy_file.write_text(BOTH)
        state.config = dataclasses.replace(state.config, policies=(PolicySource("big.yaml", policy_file),))
        state._mtimes = state._stat()
        policy_file.write_text(_big_policy(10_000))
        os.utime(policy_file, ns=(time.time_ns(), time.time_ns() + 10**9))
        view = RequestView("bot", "GET", "http", "address", 22, "/v1/res9999/x")

        async def main() -> tuple[float, float, int, list[str]]:
            gaps: list[float] = []
            effects: list[str] = []
            done = asyncio.Event()

            async def requests() -> None:
                last = time.perf_counter()
                while not done.is_set():
                    effects.append(decide(view, state.policies, time.time(), state.limits).effect)
                    await asyncio.sleep(0.001)
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now

            ticker = asyncio.create_task(requests())
            await asyncio.sleep(0.05)
            started = time.perf_counter()
            assert await state.reload_if_changed()
            took = time.perf_counter() - started
            await asyncio.sleep(0.05)
            done.set()
            await ticker
            return took, max(gaps), len(gaps), effects

        took, longest, ticks, effects = asyncio.run(main())
    assert len(state.policies.policies[0].rules) == 10_000
    # Side by side: the loop kept answering through the reload; its longest pause is a fraction of the reload.
    assert longest < took / 4, (longest, took)
    assert ticks > 20, ticks
    # Before the swap the old set denied the request, after it the new one allows it: never a mix, never back.
    assert effects[0] == "deny" and effects[-1] == "allow"
    assert effects == sorted(effects, key=lambda e: e == "allow")


def test_every_config_field_is_either_taken_over_by_a_reload_or_named_as_needing_a_restart() -> None:
    """A field in neither table made `run`'s reload fail with a KeyError when it was edited (`databases:` and
    `console:` both did)."""
    from goex_proxy.addons.state import RELOADED
    from goex_proxy.config import RESTART_ONLY, Config

    fields = {f.name for f in dataclasses.fields(Config)} - {"file"}
    assert not set(RELOADED) & set(RESTART_ONLY)
    assert fields - set(RELOADED) - set(RESTART_ONLY) == set()
