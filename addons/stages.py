"""The pipeline's addons as one mitmproxy addon: each hook calls, in order, only the stages that have it.

mitmproxy hands every hook of a flow to every addon it holds, twice (the hook, then an `update`), through a context
manager and a coroutine for each addon whether or not it has that hook: about 2 µs per addon and hook, some 15% of a
GET's CPU with the pipeline's 15 addons held one by one. Held as one, each stage is still called as mitmproxy would
call it: an awaitable it returns is awaited before the next stage runs, an error is logged as mitmproxy logs it and
the next stage still runs, and AddonHalt and OptionsError go up to mitmproxy (which stops there, or refuses the
option)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from functools import partial
from typing import Any

import mitmproxy.log  # noqa: F401  (with the two below: every hook mitmproxy has is in `hooks.all_hooks`)
import mitmproxy.proxy.layers  # noqa: F401
import mitmproxy.proxy.server_hooks  # noqa: F401
from mitmproxy import addonmanager, exceptions, flow, hooks

#: The logger mitmproxy's own dispatch reports an addon's error on.
log = logging.getLogger("mitmproxy.addonmanager")
_PASSED_UP = (exceptions.AddonHalt, exceptions.OptionsError)

Hook = Callable[..., Any]


class Stages:
    """`stages` held by mitmproxy as one addon (named "goex_pipeline"): an attribute for each hook one of them has."""

    name = "goex_pipeline"

    def __init__(self, stages: Iterable[Any]) -> None:
        self.stages = tuple(stages)
        for hook in hooks.all_hooks:
            found = tuple(f for stage in self.stages if callable(f := getattr(stage, hook, None)))
            if found:
                setattr(self, hook, _in_order(found) if hook != "done" else _run_anyway(_in_order(found)))

    def __repr__(self) -> str:
        return f"Stages({', '.join(type(stage).__name__ for stage in self.stages)})"


def _in_order(found: tuple[Hook, ...]) -> Hook:
    """One hook of several stages: synchronous while they are, a coroutine from the first that returns an
    awaitable (so that mitmproxy's synchronous hooks, `load` and `configure`, stay synchronous)."""
    def call(*args: Any) -> Awaitable[None] | None:
        for i, stage_hook in enumerate(found):
            result = _called(stage_hook, args)
            if result is not None and inspect.isawaitable(result):
                return _rest(result, found[i + 1:], args)
        return None
    return call


def _run_anyway(hook: Hook) -> Hook:
    """`done` as a hook whose awaitable runs even when mitmproxy calls it synchronously and drops what it returns (it
    does so for a script unloaded to be loaded again, as `mitmdump -s` does when the file changes): a task on the
    running loop, which mitmproxy's asynchronous call at shutdown awaits as it would the coroutine."""
    def call(*args: Any) -> Awaitable[None] | None:
        result = hook(*args)
        if result is None:
            return None
        try:
            task = asyncio.get_running_loop().create_task(_awaited(result))
        except RuntimeError:  # no loop runs: nothing else will run it either
            asyncio.run(_awaited(result))
            return None
        _unawaited.add(task)  # the loop holds tasks weakly: one its caller dropped would be collected mid-way
        task.add_done_callback(_unawaited.discard)
        return task
    return call


#: The `done` tasks started by `_run_anyway`, until they end.
_unawaited: set[asyncio.Task[None]] = set()


async def _rest(pending: Awaitable[Any], rest: tuple[Hook, ...], args: tuple[Any, ...]) -> None:
    await _awaited(pending)
    for stage_hook in rest:
        result = _called(stage_hook, args)
        if result is not None and inspect.isawaitable(result):
            await _awaited(result)


def _called(stage_hook: Hook, args: tuple[Any, ...]) -> Any:
    try:
        return stage_hook(*args)
    except _PASSED_UP:
        raise
    except Exception as exc:
        _report(exc)
        return None


async def _awaited(pending: Awaitable[Any]) -> None:
    try:
        await pending
    except _PASSED_UP:
        raise
    except Exception as exc:
        _report(exc)


def _report(exc: Exception) -> None:
    log.error(f"Addon error: {exc}", exc_info=(type(exc), exc, exc.__traceback__))


class HookIndexedAddons(addonmanager.AddonManager):
    """mitmproxy's addon manager, handing each hook of a flow only to the addons that have it, in their order, each
    as mitmproxy does: it hands every hook to every addon, then an `update` to every addon (which none of
    `goex-proxy run`'s has), so that a GET cost 64 dispatches where 5 do. For a master whose addons are those added
    to it (no script addons, whose children change as their files do): `index_hooks` makes one's manager this.

    Each addon's part that has the hook is called with the hook's arguments as mitmproxy calls it, an awaitable it
    returns awaited; an error ends that addon's turn and is logged as mitmproxy logs it, AddonHalt ends the hook and
    OptionsError goes up. Found once a hook (the parts' methods, read once), the arguments read once a hook (mitmproxy
    reads a hook's dataclass fields again for each addon), and no `update` hook made when no addon has one. A hook
    runs as far as it goes without waiting before anything is awaited (`lifecycle_at_once`), so that a connection's
    hooks that never wait need no task of their own (`hooks_at_once`)."""

    _having: dict[str, tuple[tuple[Hook, ...], ...]]

    def _found(self, name: str) -> tuple[tuple[Hook, ...], ...]:
        having = self.__dict__.setdefault("_having", {})
        found = having.get(name)
        if found is None:
            found = having[name] = tuple(calls for calls in map(partial(_calls, name), self.chain) if calls)
        return found

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        rest = self.lifecycle_at_once(event)
        if rest is not None:
            await rest

    async def trigger_event(self, event: hooks.Hook) -> None:
        rest = self._at_once(self._found(event.name), event.args())
        if rest is not None:
            await rest

    def lifecycle_at_once(self, event: hooks.Hook) -> Coroutine[Any, Any, None] | None:
        """`handle_lifecycle` as far as it goes without waiting: None if it ended, else what is left of it, not
        started (an addon's awaitable, and every part after it), for the caller to await where it waits."""
        args = event.args()
        rest = self._at_once(self._found(event.name), args)
        if isinstance(args[0], flow.Flow) and self._found("update"):
            return self._then_update(rest, args[0])
        return rest

    def _at_once(self, found: tuple[tuple[Hook, ...], ...], args: list[Any]) -> Coroutine[Any, Any, None] | None:
        for at, calls in enumerate(found):
            for part, call in enumerate(calls):
                try:
                    result = call(*args)
                except exceptions.AddonHalt:
                    return None
                except exceptions.OptionsError:
                    raise
                except Exception as exc:
                    _report(exc)
                    break  # the rest of this addon's parts are not called, as mitmproxy's `safecall` has it
                if result is not None and inspect.isawaitable(result):
                    return self._rest(result, calls[part + 1:], found[at + 1:], args)
        return None

    async def _rest(self, pending: Awaitable[Any], calls: tuple[Hook, ...], found: tuple[tuple[Hook, ...], ...],
                    args: list[Any]) -> None:
        try:
            await pending
            for call in calls:
                result = call(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
        except exceptions.AddonHalt:
            return
        except exceptions.OptionsError:
            raise
        except Exception as exc:
            _report(exc)
        rest = self._at_once(found, args)
        if rest is not None:
            await rest

    async def _then_update(self, rest: Coroutine[Any, Any, None] | None, message: flow.Flow) -> None:
        if rest is not None:
            await rest
        await self.trigger_event(hooks.UpdateHook([message]))

    def register(self, addon: Any) -> Any:
        self.__dict__.pop("_having", None)
        return super().register(addon)

    def remove(self, addon: Any) -> None:
        self.__dict__.pop("_having", None)
        super().remove(addon)

    def clear(self) -> None:
        self.__dict__.pop("_having", None)
        super().clear()


def _calls(name: str, addon: Any) -> tuple[Hook, ...]:
    """What mitmproxy calls for hook `name` on `addon`: the method of that name of it and of each of its children."""
    return tuple(call for part in addonmanager.traverse([addon]) if callable(call := getattr(part, name, None)))


def index_hooks(manager: addonmanager.AddonManager) -> None:
    """Make a master's addon manager hand each hook only to the addons that have it (see `HookIndexedAddons`)."""
    if type(manager) is not addonmanager.AddonManager:
        raise RuntimeError(f"mitmproxy's master has a {type(manager).__name__}, not its own AddonManager")
    manager.__class__ = HookIndexedAddons
