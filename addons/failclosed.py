"""`fail_closed`: a hook that raises answers 502 and forwards nothing (mitmproxy itself would forward)."""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

from mitmproxy import http

from goex_proxy.addons import replies
from goex_proxy.errors import GoexError

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


def _fail(stage: str, hook: str, flow: Any) -> None:
    why = sys.exc_info()[1]
    if isinstance(why, GoexError):  # a failure the product explains (the audit log refusing a row): one line
        log.error("goex-proxy %s.%s failed (%s); answering 502 and forwarding nothing", stage, hook, why)
    else:
        log.exception("goex-proxy %s.%s failed; answering 502 and forwarding nothing", stage, hook)
    if isinstance(flow, http.HTTPFlow):
        if flow.websocket is not None and flow.websocket.messages:  # a message hook: that message is not relayed
            flow.websocket.messages[-1].drop()
            if flow.killable:
                flow.kill()
            return
        try:
            replies.internal_error(flow, stage)
        except Exception:  # even the error reply failed: answer a bare 502
            flow.response = http.Response.make(502, b"goex-proxy: internal error; nothing was forwarded\n")
        if flow.websocket is not None:
            flow.websocket = None
    elif hasattr(flow, "server"):  # server_connect hook data: refuse the connection
        flow.server.error = f"goex-proxy {stage} stage failed"
    elif hasattr(flow, "kill"):  # a TCP or UDP stream: refuse its connection too (a kill alone does not)
        if getattr(flow, "server_conn", None) is not None:
            flow.server_conn.error = f"goex-proxy {stage} stage failed"
        if flow.killable:
            flow.kill()


def fail_closed(stage: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Wrap a hook `(self, ..., flow)` of stage `stage` so that an exception blocks the flow instead of letting it
    through. The flow must be the last argument: that is what the 502 is answered on."""

    def wrap(hook: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(hook):
            @functools.wraps(hook)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                try:
                    return await hook(*args, **kwargs)
                except Exception:
                    _fail(stage, hook.__name__, args[-1])
                    return None
            return cast(Callable[P, R], run_async)

        @functools.wraps(hook)
        def run(*args: P.args, **kwargs: P.kwargs) -> Any:
            try:
                return hook(*args, **kwargs)
            except Exception:
                _fail(stage, hook.__name__, args[-1])
                return None
        return cast(Callable[P, R], run)

    return wrap
