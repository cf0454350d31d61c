"""A connection's hooks run in the turn of the event loop that asks for them, as far as they go without waiting.

mitmproxy 11 (on Python 3.11) makes a task of every hook of every flow: a name, a debug stamp, a turn of the event
loop, then a second `server_event` to hand the layer the hook's completion, four times a GET. For the connections of a
master whose addons are `HookIndexedAddons` (`run`'s and the in-process proxy's), the commands a layer gives for an
event are handled as mitmproxy handles them, and its hooks are run once it has given them all, in order: a hook whose
addons end without waiting has its completion handed to the layer at once, as the next event of the same call; one
that waits goes on in a task. What is left of such a hook was not started (`lifecycle_at_once`), so all its waiting
runs in that task, as it did in mitmproxy's: an addon's awaitable sees the task it runs in as its current task (httpx
and anyio check that they leave a cancel scope in the task that entered it)."""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
from collections.abc import Coroutine, Generator
from typing import Any

from mitmproxy import flow
from mitmproxy.proxy import commands, events, layer, server
from mitmproxy.utils import asyncio_utils

from goex_proxy.addons.stages import HookIndexedAddons
from goex_proxy.mitmtrim import joined_sends


def hooks_at_once() -> None:
    """From now on, connection handlers run their hooks so when their master's addons are `HookIndexedAddons`."""
    if not isinstance(server.ConnectionHandler.__dict__.get("layer"), _HooksAtOnce):
        server.ConnectionHandler.layer = _HooksAtOnce()  # type: ignore[assignment]


class _HooksAtOnce:
    """`ConnectionHandler.layer`: kept as mitmproxy sets it (the handler's own, then the proxy mode's), read as a
    `_TopLayer` over it."""

    def __get__(self, handler: server.ConnectionHandler | None, owner: type | None = None) -> Any:
        return self if handler is None else handler.__dict__["goex_top_layer"]

    def __set__(self, handler: server.ConnectionHandler, top: layer.Layer) -> None:
        handler.__dict__["goex_top_layer"] = _TopLayer(handler, top)


class _TopLayer:
    """A handler's top layer, read through for everything, whose `handle_event` runs hooks at once. Its own
    `handle_event` is read at each event: mitmproxy's `NextLayer` replaces it once it knows its child."""

    __slots__ = ("handler", "layer", "addons")

    def __init__(self, handler: server.ConnectionHandler, top: layer.Layer) -> None:
        self.handler, self.layer = handler, top
        addons = getattr(getattr(handler, "master", None), "addons", None)
        self.addons = addons if isinstance(addons, HookIndexedAddons) else None

    def handle_event(self, event: events.Event) -> Generator[commands.Command, Any, None]:
        if self.addons is None:
            return self.layer.handle_event(event)
        return _hooks_at_once(self.handler, self.addons, self.layer, event)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.layer, name)

    def __repr__(self) -> str:
        return repr(self.layer)


def _hooks_at_once(handler: server.ConnectionHandler, addons: HookIndexedAddons, top: layer.Layer,
                   event: events.Event) -> Generator[commands.Command, Any, None]:
    completed: collections.deque[commands.StartHook] = collections.deque()
    hooks: list[commands.StartHook] = []
    try:
        while True:
            for command in joined_sends(top.handle_event(event)):  # a response's head and body: one write
                if isinstance(command, commands.StartHook):
                    hooks.append(command)
                else:
                    yield command
            _run_given(handler, addons, hooks, completed)
            if not completed:
                return
            event = events.HookCompleted(completed.popleft())
    except BaseException:
        # The layer (or the handler carrying out its commands) raised: mitmproxy logs "mitmproxy has crashed!" and
        # ends this event. As in mitmproxy, whose hook tasks were started as the layer gave them and handed their
        # completions on in a `server_event` each, the hooks given still run and every completion still reaches
        # the layer, each in a call of its own.
        _run_given(handler, addons, hooks, completed)
        for hook in completed:
            _started(handler, hook, handler.server_event(events.HookCompleted(hook)))
        raise


def _run_given(handler: server.ConnectionHandler, addons: HookIndexedAddons, hooks: list[commands.StartHook],
               completed: collections.deque[commands.StartHook]) -> None:
    """Run the hooks given, in order, each once; those that ended at once and that a layer waits for are completed."""
    while hooks:
        hook = hooks.pop(0)
        if _ended_at_once(handler, addons, hook) and hook.blocking:
            completed.append(hook)


def _ended_at_once(handler: server.ConnectionHandler, addons: HookIndexedAddons, hook: commands.StartHook) -> bool:
    """Run `hook` as mitmproxy's `handle_hook` does, as far as it goes without waiting: True if it ended; else what is
    left goes on in a task of the handler's (mitmproxy's `hook_task`), which ends with any error the hook raised."""
    rest: Coroutine[Any, Any, None] | None
    try:
        (data,) = hook.args()
        rest = addons.lifecycle_at_once(hook)
    except BaseException as error:  # noqa: BLE001  (the task mitmproxy would have run ends with it, and is logged)
        task: Coroutine[Any, Any, None] = _raise(error)
        rest = None
    else:
        if rest is None and not (isinstance(data, flow.Flow) and data.intercepted):
            return True
        task = _hook_task(handler, hook, data, rest)
    _started(handler, hook, task, rest)
    return False


def _started(handler: server.ConnectionHandler, hook: commands.StartHook, task: Coroutine[Any, Any, None],
             rest: Coroutine[Any, Any, None] | None = None) -> None:
    started = asyncio_utils.create_task(task, name=f"handle_hook({hook.name})", client=handler.client.peername)
    handler.hook_tasks.add(started)
    started.add_done_callback(handler.hook_tasks.remove)
    if rest is not None:
        started.add_done_callback(functools.partial(_close_if_never_run, rest))


def _close_if_never_run(rest: Coroutine[Any, Any, None], task: asyncio.Task[None]) -> None:
    """A hook's task cancelled before it ran (its loop shutting down) never awaited what was left of the hook: that,
    and each awaitable it was handed, is closed, so that none is reported as never awaited."""
    if inspect.getcoroutinestate(rest) == inspect.CORO_CREATED:
        _close(rest)


def _close(coroutine: Coroutine[Any, Any, Any]) -> None:
    # a coroutine not started yet: its frame's locals are its arguments
    for value in coroutine.cr_frame.f_locals.values():  # type: ignore[attr-defined]
        if inspect.iscoroutine(value) and inspect.getcoroutinestate(value) == inspect.CORO_CREATED:
            _close(value)
    coroutine.close()


async def _raise(error: BaseException) -> None:
    raise error


async def _hook_task(handler: server.ConnectionHandler, hook: commands.StartHook, data: Any,
                     rest: Coroutine[Any, Any, None] | None) -> None:
    with handler.timeout_watchdog.disarm():
        if rest is not None:
            await rest
        if isinstance(data, flow.Flow):
            await data.wait_for_resume()
    if hook.blocking:
        await handler.server_event(events.HookCompleted(hook))
