"""The stages held as one mitmproxy addon: each hook reaches the stages that have it, in order, as mitmproxy would."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from mitmproxy import exceptions, hooks, master, options
from mitmproxy.proxy.layers.http import HttpRequestHook
from mitmproxy.test import tflow

from goex_proxy.addons import PIPELINE, pipeline
from goex_proxy.addons.stages import HookIndexedAddons, Stages, index_hooks


class Recorder:
    """A stage that notes each call of its `request` hook in a shared list."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.label, self.calls = name, calls
        self.name = f"recorder {name}"  # mitmproxy's name for the addon: one of a name per master

    def request(self, flow: Any) -> None:
        self.calls.append(self.label)


class Slow(Recorder):
    async def request(self, flow: Any) -> None:  # type: ignore[override]
        await asyncio.sleep(0.01)
        self.calls.append(self.label)


class Broken(Recorder):
    def request(self, flow: Any) -> None:
        self.calls.append(self.label)
        raise ValueError("stage broke")


class BrokenLater(Recorder):
    async def request(self, flow: Any) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        raise ValueError("stage broke after waiting")


class Halting(Recorder):
    def request(self, flow: Any) -> None:
        self.calls.append(self.label)
        raise exceptions.AddonHalt()


class NoHooks:
    pass


class Parent(Recorder):
    """An addon with children (mitmproxy calls its hook, then each child's), and an `update` hook."""

    def __init__(self, name: str, calls: list[str], *children: Any) -> None:
        super().__init__(name, calls)
        self.addons = list(children)

    def update(self, flows: list[Any]) -> None:
        self.calls.append(f"{self.label} update {len(flows)}")


def run_request_hook(*stages: Any) -> Master:
    """A real mitmproxy master holding `stages` as one addon, then a plain addon after it; the request hook fired."""
    async def main() -> Master:
        m = Master(stages)
        await m.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))
        return m
    return asyncio.run(main())


def new_master() -> master.Master:
    """A real mitmproxy master on the running loop, without its handler that turns log records into events (left on
    the root logger, it would post them to this test's loop once it is closed)."""
    m = master.Master(options.Options(), event_loop=asyncio.get_running_loop())
    m._legacy_log_events.uninstall()
    return m


class Master(master.Master):
    def __init__(self, stages: tuple[Any, ...]) -> None:
        super().__init__(options.Options(), event_loop=asyncio.get_running_loop())
        self._legacy_log_events.uninstall()
        self.calls: list[str] = []
        for stage in stages:
            stage.calls = self.calls
        self.addons.add(Stages(stages), Recorder("after the pipeline", self.calls))


def test_a_hook_reaches_the_stages_that_have_it_in_order_an_awaited_one_before_the_next() -> None:
    m = run_request_hook(Recorder("a", []), NoHooks(), Slow("b", []), Recorder("c", []))
    assert m.calls == ["a", "b", "c", "after the pipeline"]


def test_a_stage_without_a_hook_gives_the_addon_no_such_hook() -> None:
    held = Stages([NoHooks(), Recorder("a", [])])
    assert callable(held.request)
    assert getattr(held, "response", None) is None  # mitmproxy passes over it, as over an addon without the hook
    assert getattr(held, "addons", None) is None  # not nested addons of mitmproxy's: it would call each twice


@pytest.mark.parametrize("broken", [Broken, BrokenLater])
def test_an_error_in_one_stage_is_logged_as_mitmproxy_logs_it_and_the_next_stage_still_runs(
        broken: type, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="mitmproxy.addonmanager"):
        m = run_request_hook(Recorder("a", []), broken("broken", []), Recorder("c", []))
    assert m.calls[0] == "a" and m.calls[-2:] == ["c", "after the pipeline"]
    assert [r.getMessage() for r in caplog.records] == [
        "Addon error: " + ("stage broke" if broken is Broken else "stage broke after waiting")]


def test_addon_halt_stops_the_stages_after_it_and_every_addon_after_the_pipeline() -> None:
    m = run_request_hook(Recorder("a", []), Halting("halting", []), Recorder("c", []))
    assert m.calls == ["a", "halting"]


def test_a_refused_option_is_refused_through_the_pipeline() -> None:
    class Refuses:
        def configure(self, updated: set[str]) -> None:
            if "listen_port" in updated:
                raise exceptions.OptionsError("no such port")

    async def main() -> None:
        m = new_master()
        m.addons.add(Stages([NoHooks(), Refuses()]))
        with pytest.raises(exceptions.OptionsError, match="no such port"):
            m.options.update(listen_port=1)
        assert m.options.listen_port != 1

    asyncio.run(main())


def test_the_pipeline_is_one_addon_holding_every_stage_in_pipeline_order() -> None:
    [held] = pipeline()
    names = [type(stage).__name__ for stage in held.stages]
    assert names == ["ProxyState", "HttpBounds", *(stage.__name__ for stage in PIPELINE)]
    for hook in ("requestheaders", "request", "responseheaders", "response", "error", "configure", "running", "done"):
        assert callable(getattr(held, hook)), hook


def test_an_indexed_manager_hands_hooks_on_as_mitmproxys_does(caplog: pytest.LogCaptureFixture) -> None:
    """The same calls in the same order, an addon added later included, errors logged and AddonHalt obeyed; only the
    addons without the hook are passed over."""
    async def calls(indexed: bool) -> list[str]:
        m = new_master()
        if indexed:
            index_hooks(m.addons)
        seen: list[str] = []
        m.addons.add(Recorder("a", seen), NoHooks(), Stages([Broken("b", seen)]), Recorder("c", seen))
        await m.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))
        later = Stages([Halting("halting", seen)])
        later.name = "more stages"
        m.addons.add(later, Recorder("never", seen))
        await m.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))
        return seen

    with caplog.at_level(logging.ERROR, logger="mitmproxy.addonmanager"):
        theirs, ours = asyncio.run(calls(False)), asyncio.run(calls(True))
    assert ours == theirs == ["a", "b", "c", "a", "b", "c", "halting"]
    assert [r.getMessage() for r in caplog.records] == ["Addon error: stage broke"] * 4


def test_an_addons_children_and_update_hooks_are_called_as_mitmproxy_calls_them(
        caplog: pytest.LogCaptureFixture) -> None:
    """Each addon's part in turn (an error ends that addon's turn, not the hook's), then `update` to the addons that
    have it, with the flow."""
    async def calls(indexed: bool) -> list[str]:
        m = new_master()
        if indexed:
            index_hooks(m.addons)
        seen: list[str] = []
        m.addons.add(Parent("p", seen, Slow("slow child", seen), Broken("broken child", seen), Recorder("lost", seen)),
                     Parent("q", seen, Parent("grandchild", seen)))
        await m.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))
        return seen

    with caplog.at_level(logging.ERROR, logger="mitmproxy.addonmanager"):
        theirs, ours = asyncio.run(calls(False)), asyncio.run(calls(True))
    assert ours == theirs == ["p", "slow child", "broken child", "q", "grandchild",
                              "p update 1", "q update 1", "grandchild update 1"]
    assert [r.getMessage() for r in caplog.records] == ["Addon error: stage broke"] * 2


def test_the_running_proxys_master_hands_hooks_only_to_the_addons_that_have_them(tmp_path) -> None:
    from goex_proxy.config import load_config
    from goex_proxy.policy.engine import PolicySet
    from goex_proxy.runtime import build_master

    config = tmp_path / "config.yaml"
    config.write_text("version: 1\n", encoding="utf-8")

    async def main() -> None:
        m = build_master(load_config(config), PolicySet())
        assert isinstance(m.addons, HookIndexedAddons)
        [pipeline_addon] = [a for a in m.addons.chain if isinstance(a, Stages)]
        await m.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))
        having = m.addons._having
        assert pipeline_addon.request in [call for calls in having["request"] for call in calls]
        assert having["update"] == ()  # then no `update` hook is made
        m.addons.add(Recorder("later", []))
        assert "_having" not in m.addons.__dict__  # worked out again for the addon added
        await m.addons.trigger_event(hooks.DoneHook())  # the audit writer closed

    asyncio.run(main())


class Closing:
    """A stage whose `done` waits before it has closed, as ProxyState's does (its gate, then its audit writer)."""

    def __init__(self) -> None:
        self.closed = False

    async def done(self) -> None:
        await asyncio.sleep(0.01)
        self.closed = True


def test_done_runs_when_mitmproxy_removes_the_pipeline_synchronously() -> None:
    """`mitmdump -s` loads a script again when its file changes: it removes the old pipeline with a synchronous call
    of `done` and drops what that returns, so ProxyState's coroutine was never run ("coroutine 'ProxyState.done' was
    never awaited"), and the old pipeline's audit writer, gate and policy watcher were never stopped. Now `done` runs
    on the loop either way, and is still awaited at shutdown."""
    async def removed() -> Closing:
        m, closing = new_master(), Closing()
        held = Stages([NoHooks(), closing])
        m.addons.add(held)
        m.addons.remove(held)  # as mitmproxy's script loader does
        await asyncio.sleep(0.05)
        return closing

    async def shut_down() -> Closing:
        m, closing = new_master(), Closing()
        m.addons.add(Stages([closing]))
        await m.addons.trigger_event(hooks.DoneHook())
        assert closing.closed  # awaited, not only started
        return closing

    assert asyncio.run(removed()).closed
    assert asyncio.run(shut_down()).closed
