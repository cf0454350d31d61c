"""A connection's hooks run in the turn that asks for them (`addons/hooksnow.py`): a hook whose addons end without
waiting is completed in the same call, one that waits goes on in a task of its own, where all its waiting is done."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from mitmproxy import exceptions, master, options
from mitmproxy.proxy import commands, events, server
from mitmproxy.proxy.layers.http import HttpRequestHook
from mitmproxy.test import tflow

from goex_proxy.addons.hooksnow import _hooks_at_once
from goex_proxy.addons.stages import HookIndexedAddons, index_hooks


class Said(commands.Command):
    """A command the layer gives, other than a hook, with what it says."""

    def __init__(self, what: str) -> None:
        self.what = what


class Layer:
    """A top layer as mitmproxy drives it: for an event, a command, then its hook (blocking, as a stream's are);
    for the hook's completion, a command saying so."""

    def __init__(self) -> None:
        self.flow = tflow.tflow()
        self.hook = HttpRequestHook(self.flow)
        self.hook.blocking = True

    def handle_event(self, event: events.Event) -> Any:
        if isinstance(event, events.HookCompleted):
            yield Said(f"completed {event.command.name}")
        else:
            yield Said("before the hook")
            yield self.hook


class Handler:
    """What `_hooks_at_once` uses of mitmproxy's connection handler; `server_event` keeps the events it is given."""

    def __init__(self) -> None:
        self.client = SimpleNamespace(peername=("127.0.0.1", 4242))
        self.hook_tasks: set[asyncio.Task[None]] = set()
        self.timeout_watchdog = server.TimeoutWatchdog(60, self._timed_out)
        self.events: list[events.Event] = []

    async def _timed_out(self) -> None:
        raise AssertionError("no hook here may time out")

    async def server_event(self, event: events.Event) -> None:
        self.events.append(event)


def manager(*addons: Any) -> HookIndexedAddons:
    m = master.Master(options.Options(), event_loop=asyncio.get_running_loop())
    m._legacy_log_events.uninstall()
    index_hooks(m.addons)
    m.addons.add(*addons)
    assert isinstance(m.addons, HookIndexedAddons)
    return m.addons


def said_for(handler: Handler, addons: HookIndexedAddons, layer: Layer) -> list[str]:
    """What the commands given for one event say, the hooks run as the connection runs them."""
    return [c.what for c in _hooks_at_once(handler, addons, layer, events.Start())]  # type: ignore[arg-type, attr-defined]


class Seen:
    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any] | None] = []

    def request(self, flow: Any) -> None:
        self.tasks.append(asyncio.current_task())


class Waits(Seen):
    """An addon that waits inside a cancel scope (as httpx does), noting its task before and after."""

    async def request(self, flow: Any) -> None:  # type: ignore[override]
        with anyio.CancelScope():
            self.tasks.append(asyncio.current_task())
            await asyncio.sleep(0)
            self.tasks.append(asyncio.current_task())


def test_a_hook_that_never_waits_is_completed_in_the_same_call_without_a_task() -> None:
    async def main() -> None:
        handler, layer, seen = Handler(), Layer(), Seen()
        said = said_for(handler, manager(seen), layer)
        assert said == ["before the hook", "completed request"]
        assert seen.tasks == [asyncio.current_task()] and not handler.hook_tasks and not handler.events

    asyncio.run(main())


def test_a_hook_that_waits_goes_on_in_a_task_where_all_its_waiting_is_done() -> None:
    async def main() -> None:
        handler, layer, waits, after = Handler(), Layer(), Waits(), Seen()
        said = said_for(handler, manager(waits, after), layer)
        assert said == ["before the hook"] and not waits.tasks and not after.tasks  # nothing of it started yet
        [task] = handler.hook_tasks
        await task
        here = asyncio.current_task()
        assert waits.tasks == [task, task] and after.tasks == [task] and here not in waits.tasks
        assert [type(e) for e in handler.events] == [events.HookCompleted]
        assert handler.events[0].command is layer.hook  # type: ignore[attr-defined]

    asyncio.run(main())


def test_an_intercepted_flow_waits_in_its_task_until_it_is_resumed() -> None:
    async def main() -> None:
        handler, layer = Handler(), Layer()
        layer.flow.intercept()
        said = said_for(handler, manager(Seen()), layer)
        assert said == ["before the hook"]
        [task] = handler.hook_tasks
        await asyncio.sleep(0.01)
        assert not task.done() and not handler.events
        layer.flow.resume()
        await task
        assert [type(e) for e in handler.events] == [events.HookCompleted]

    asyncio.run(main())


class RefusesOption:
    def request(self, flow: Any) -> None:
        raise exceptions.OptionsError("no such option")


def test_an_error_the_hook_raises_ends_its_task_as_mitmproxys_did_and_the_layer_goes_on() -> None:
    async def main() -> None:
        handler, layer = Handler(), Layer()
        said = said_for(handler, manager(RefusesOption()), layer)
        assert said == ["before the hook"]
        [task] = handler.hook_tasks
        with pytest.raises(exceptions.OptionsError, match="no such option"):
            await task
        assert not handler.events  # no completion, as when mitmproxy's hook task raised

    asyncio.run(main())


class Noted:
    """An addon noting each flow hook it is handed."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def requestheaders(self, flow: Any) -> None:
        self.seen.append(f"requestheaders {flow.request.path}")


class LiveHandler(server.ConnectionHandler):
    """mitmproxy's connection handler (its own `server_event`), its hooks handed to `addons` as a proxy's are."""

    def __init__(self, addons: Any) -> None:
        from mitmproxy import connection
        from mitmproxy.proxy import context, mode_specs

        self.master = SimpleNamespace(addons=addons)
        client = connection.Client(peername=("127.0.0.1", 4242), sockname=("127.0.0.1", 8080), timestamp_start=0,
                                   proxy_mode=mode_specs.ProxyMode.parse("regular"))
        super().__init__(context.Context(client, options.Options()))

    async def handle_hook(self, hook: commands.StartHook) -> None:
        with self.timeout_watchdog.disarm():
            await self.master.addons.handle_lifecycle(hook)


def stream_hook(path: str) -> commands.StartHook:
    from mitmproxy.proxy.layers.http import HttpRequestHeadersHook

    flow = tflow.tflow()
    flow.request.path = path
    hook = HttpRequestHeadersHook(flow)
    hook.blocking = True  # as a stream's layer marks the hooks it pauses for
    return hook


class TwoStreams:
    """An HTTP/2 connection's layer as mitmproxy drives it: one read gives a hook for each of two streams; `crash`
    says where mitmproxy's layer code raises (a bug of its: "mitmproxy has crashed!"), once."""

    def __init__(self, crash: str) -> None:
        self.crash = crash
        self.first, self.second = stream_hook("/one"), stream_hook("/two")
        self.completed: list[str] = []

    def handle_event(self, event: events.Event) -> Any:
        if isinstance(event, events.HookCompleted):
            if self.crash == "completing /one" and event.command is self.first:
                self.crash = ""
                raise AssertionError("Unexpected event")
            self.completed.append(event.command.args()[0].request.path)
            return
        yield self.first
        if self.crash == "after /one":
            self.crash = ""
            raise AssertionError("Unexpected event")
        yield self.second


async def _through_server_event(indexed: bool, crash: str) -> tuple[list[str], list[str]]:
    from goex_proxy.addons.hooksnow import hooks_at_once

    hooks_at_once()
    noted = Noted()
    m = master.Master(options.Options(), event_loop=asyncio.get_running_loop())
    m._legacy_log_events.uninstall()
    if indexed:
        index_hooks(m.addons)
    m.addons.add(noted)
    handler = LiveHandler(m.addons)
    layer = TwoStreams(crash)
    handler.layer = layer  # type: ignore[assignment]
    await handler.server_event(events.Start())
    for _ in range(20):
        await asyncio.sleep(0)
    return noted.seen, layer.completed


@pytest.mark.parametrize("indexed", [False, True], ids=["mitmproxy", "hooks at once"])
def test_a_hook_a_layer_gave_before_it_crashed_still_runs_and_completes(indexed: bool) -> None:
    """mitmproxy starts a hook's task as the layer gives it, so a crash later in the same event ("mitmproxy has
    crashed!") leaves it running: its flow is answered. Hooks run once the layer's commands are all given must still
    run when the layer raised instead: else the stream it paused for waits for ever, its request never decided."""
    seen, completed = asyncio.run(_through_server_event(indexed, "after /one"))
    assert seen == ["requestheaders /one"] and completed == ["/one"]


@pytest.mark.parametrize("indexed", [False, True], ids=["mitmproxy", "hooks at once"])
def test_a_crash_completing_one_streams_hook_leaves_another_streams_completion(indexed: bool) -> None:
    """mitmproxy hands each hook's completion to the layer in a `server_event` of its own, so a crash handling one
    ("mitmproxy has crashed!") is that one's: the other stream's hook still completes and its flow goes on. Completed
    in one call, the completions queued behind the one that raised were dropped: that stream's addons had run (an
    outcome recorded), but the layer never heard, and its client waited for an answer that never came."""
    seen, completed = asyncio.run(_through_server_event(indexed, "completing /one"))
    assert seen == ["requestheaders /one", "requestheaders /two"] and completed == ["/two"]


class WaitsThroughAStage(Seen):
    """A stage that hands back an awaitable, as the pipeline's stages do (a coroutine not yet started)."""

    def request(self, flow: Any) -> Any:
        async def later() -> None:
            await asyncio.sleep(0)
            self.tasks.append(asyncio.current_task())
        return later()


def test_a_hook_task_cancelled_before_it_ran_leaves_nothing_never_awaited() -> None:
    """What was left of a hook that waits was made before its task ran: a loop shutting down cancels that task before
    its first step, and the awaitables the hook's addons handed back were never awaited (Python reports each as it
    collects it, which the tests take for an error)."""
    import gc
    import warnings

    async def main() -> None:
        handler, layer, stage = Handler(), Layer(), WaitsThroughAStage()
        said_for(handler, manager(stage), layer)
        [task] = handler.hook_tasks
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not stage.tasks and not handler.events

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)], [str(w.message) for w in caught]
