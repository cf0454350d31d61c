"""`run` moves what it made to start out of the cyclic collector's sight once it is up (`runtime._FreezeWhenUp`)."""

from __future__ import annotations

import asyncio
import gc
import weakref

from mitmproxy import hooks, master, options

from goex_proxy.addons.stages import index_hooks
from goex_proxy.runtime import _FreezeWhenUp


def test_what_exists_when_the_proxy_runs_is_frozen_and_garbage_first_collected() -> None:
    """Added after the master's hooks were indexed (as `serve` adds it), its `running` hook still comes, and freezes
    what is alive then; a cycle left over from starting is collected first, not frozen with the rest."""
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    async def main() -> weakref.ref[Cycle]:
        m = master.Master(options.Options(), event_loop=asyncio.get_running_loop())
        index_hooks(m.addons)
        m.addons.add(_FreezeWhenUp())
        gc.disable()  # no collection but the hook's
        try:
            left = weakref.ref(Cycle())  # garbage only a collection finds
            await m.addons.trigger_event(hooks.RunningHook())
        finally:
            gc.enable()
        return left

    gc.unfreeze()
    try:
        left = asyncio.run(main())
        assert gc.get_freeze_count() > 10_000  # mitmproxy's and this test process's objects
        assert left() is None
    finally:
        gc.unfreeze()
