"""The goex-proxy pipeline as mitmproxy addons; `PIPELINE` is the one list that orders the stages.

Load into a plain mitmdump (listening where the config's `listen` says; `ProxyState.check_options` refuses the rest):
    mitmdump -s "$(python -c 'import goex_proxy.addons as a; print(a.__file__)')" --listen-host 127.0.0.1 -p 8080 \
      --set goex_config=PATH --set confdir=STATE_DIR --set connection_strategy=lazy
"""

from __future__ import annotations

from typing import Any

from goex_proxy.addons.connections import Connections
from goex_proxy.addons.decide import Decide
from goex_proxy.addons.egress import Egress
from goex_proxy.addons.gate import Gate
from goex_proxy.addons.httpbounds import HttpBounds
from goex_proxy.addons.identify import Identify
from goex_proxy.addons.inject import Inject
from goex_proxy.addons.preimage import Preimage
from goex_proxy.addons.record import Record
from goex_proxy.addons.route import Route
from goex_proxy.addons.scrub import Scrub
from goex_proxy.addons.stages import Stages
from goex_proxy.addons.state import ProxyState
from goex_proxy.addons.twin import Twin

#: The stages in the order a request passes them; each takes the shared state.
PIPELINE: tuple[type, ...] = (Identify, Connections, Decide, Egress, Twin, Inject, Preimage, Gate, Record, Route,
                              Scrub)


def pipeline(state: ProxyState | None = None, after: tuple[Any, ...] = ()) -> list[Any]:
    """The state addon, the bounded HTTP layers (which hold every connection to `limits:` below the hooks), every
    stage, then `after` (addons that watch what the stages did), held as one addon (see `stages`), ready for
    `master.addons.add(*pipeline())`."""
    state = state or ProxyState()
    return [Stages([state, HttpBounds(state), *(stage(state) for stage in PIPELINE), *after])]


addons = pipeline()
