"""A pipeline stage's hook called in a unit test as mitmproxy calls it: what it returns to be awaited is awaited."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any


def finished(result: Any) -> Any:
    """`result` of a hook, run to its end if it is a coroutine (a stage that waits: the decide stage reading a large
    body in its thread); a synchronous hook's result as it is."""
    if inspect.iscoroutine(result):
        return asyncio.run(result)
    return result
