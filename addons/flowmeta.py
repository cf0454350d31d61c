"""Per-flow values the stages share, kept beside each flow (not in its exportable `flow.metadata`), with typed access."""

from __future__ import annotations

from typing import Any

from mitmproxy import flow as mflow
from mitmproxy import http

from goex_proxy.audit import layout
from goex_proxy.ids import RequestIds
from goex_proxy.policy.engine import Decision
from goex_proxy.policy.limits import Charge
from goex_proxy.policy.requestview import RequestView
from goex_proxy.undo.plan import Exchange

_AGENT = "goex.agent"
_REQUEST_ID = "goex.request_id"
_DECISION = "goex.decision"
_OWN_RESPONSE = "goex.own_response"
_RECORDED = "goex.recorded"
_CREDENTIAL = "goex.credential"
_PATH = "goex.path"
_RETRIED = "goex.retried"
_URL = "goex.url"
_UNDO_CLASS = "goex.undo_class"
_UNDO_OF = "goex.undo_of"
_PREIMAGE = "goex.preimage"
_HEADERS_SCRUBBED = "goex.headers_scrubbed"
_CHECKED = "goex.checked"
_REPLACED = "goex.replaced"
_CHARGE = "goex.charge"
_CHALLENGED = "goex.challenged"
_EXCHANGE = "goex.exchange"
_IDS = RequestIds()
#: The attribute holding each live flow's values. Not `flow.metadata`: mitmproxy writes that into flow files (`-w`,
#: which fails on a live object), copies it with `flow.copy()` and reads it back from files, so a replayed or loaded
#: flow would arrive with an identity, a decision or "already recorded" that this pipeline never made. mitmproxy
#: writes, copies and compares a flow by its declared state only, which this attribute is not part of.
_VALUES = "_goex_values"


def _of(flow: mflow.Flow) -> dict[str, Any]:
    """This flow's values (an empty set for a flow no stage has seen)."""
    values: dict[str, Any] | None = flow.__dict__.get(_VALUES)
    if values is None:
        values = flow.__dict__[_VALUES] = {}
    return values


def agent(flow: http.HTTPFlow) -> str | None:
    """The authenticated agent (set by identify)."""
    return _of(flow).get(_AGENT)


def set_agent(flow: http.HTTPFlow, name: str) -> None:
    _of(flow)[_AGENT] = name


def request_id(flow: http.HTTPFlow) -> str:
    """The audit id of this request, made on first use so that any stage can quote it."""
    if _REQUEST_ID not in _of(flow):
        started = flow.request.timestamp_start if isinstance(flow, http.HTTPFlow) else flow.timestamp_created
        _of(flow)[_REQUEST_ID] = _IDS.new(started)
    return str(_of(flow)[_REQUEST_ID])


def set_request_id(flow: http.HTTPFlow, value: str) -> None:
    """Use an id chosen by `goex-proxy undo` (identify checks who may choose)."""
    _of(flow)[_REQUEST_ID] = value


def decision(flow: http.HTTPFlow) -> Decision | None:
    """The policy decision (set by decide)."""
    return _of(flow).get(_DECISION)


def set_decision(flow: http.HTTPFlow, value: Decision) -> None:
    _of(flow)[_DECISION] = value


def charge(flow: http.HTTPFlow) -> Charge | None:
    """What an allowed request counts against its rules' limits, and when (set by decide)."""
    return _of(flow).get(_CHARGE)


def set_charge(flow: http.HTTPFlow, value: Charge) -> None:
    _of(flow)[_CHARGE] = value


def clear_charge(flow: http.HTTPFlow) -> None:
    """The request no longer counts against limits (it waits; gate charges it again if it is sent)."""
    _of(flow).pop(_CHARGE, None)


def is_own_response(flow: http.HTTPFlow) -> bool:
    """True when the response was made by goex-proxy (a denial or error), not by the upstream."""
    return bool(_of(flow).get(_OWN_RESPONSE))


def mark_own_response(flow: http.HTTPFlow) -> None:
    _of(flow)[_OWN_RESPONSE] = True


def recorded(flow: http.HTTPFlow) -> str | None:
    """'intent' once the request row is committed, 'final' once its outcome is written too (set by record)."""
    return _of(flow).get(_RECORDED)


def set_recorded(flow: http.HTTPFlow, state: str) -> None:
    _of(flow)[_RECORDED] = state


def path(flow: http.HTTPFlow) -> str | None:
    """The request's canonical path, as policies matched it (set by decide)."""
    return _of(flow).get(_PATH)


def set_path(flow: http.HTTPFlow, value: str) -> None:
    _of(flow)[_PATH] = value


def credential(flow: http.HTTPFlow) -> str | None:
    """The name of the credential injected into this request (set by inject)."""
    return _of(flow).get(_CREDENTIAL)


def set_credential(flow: http.HTTPFlow, name: str) -> None:
    _of(flow)[_CREDENTIAL] = name


def retried(flow: http.HTTPFlow) -> bool:
    """True once inject has sent the request a second time (after a refreshed OAuth2 token)."""
    return bool(_of(flow).get(_RETRIED))


def mark_retried(flow: http.HTTPFlow) -> None:
    _of(flow)[_RETRIED] = True


def headers_scrubbed(flow: http.HTTPFlow, response: http.Response) -> bool:
    """True when scrub already cleaned the headers of this very response (not one it was replaced with)."""
    return _of(flow).get(_HEADERS_SCRUBBED) is response


def set_headers_scrubbed(flow: http.HTTPFlow, response: http.Response) -> None:
    _of(flow)[_HEADERS_SCRUBBED] = response


def checked(flow: http.HTTPFlow, response: http.Response) -> tuple[str | None, bytes | None] | None:
    """What scrub's check of this very response found (why it cannot be passed on, or its decoded body), if made."""
    kept = _of(flow).get(_CHECKED)
    return kept[1] if kept is not None and kept[0] is response else None


def set_checked(flow: http.HTTPFlow, response: http.Response, found: tuple[str | None, bytes | None]) -> None:
    _of(flow)[_CHECKED] = (response, found)


def drop_checked(flow: http.HTTPFlow) -> None:
    """Forget the check (and the decoded body it holds) once scrub has acted on it."""
    _of(flow).pop(_CHECKED, None)


def replaced(flow: http.HTTPFlow) -> http.Response | None:
    """The upstream's answer a stage replaced with goex-proxy's own (a malformed one, a refused switch of protocols, a
    stage failing on it): what happened upstream, which the row keeps beside why the agent did not get it."""
    return _of(flow).get(_REPLACED)


def set_replaced(flow: http.HTTPFlow, response: http.Response) -> None:
    _of(flow)[_REPLACED] = response


def url(flow: http.HTTPFlow) -> str:
    """The URL as recorded (set by record; route may change the scheme of the live request afterwards)."""
    return str(_of(flow).get(_URL) or request_url(flow.request))


def request_url(req: http.Request) -> str:
    """The request's URL, an IPv6 address in brackets: mitmproxy's `url` leaves them out (`http://::1:8080/x`), which
    names no one address and port, and which a URL parser (undo's, a pre-image read's origin check) refuses. Made as
    the audit log makes a row's URL from its parts."""
    if ":" not in req.host:
        return req.url
    return layout.url_of(req.scheme, req.host, req.port, req.path) or req.url


def set_url(flow: http.HTTPFlow, value: str) -> None:
    _of(flow)[_URL] = value


def undo_class(flow: http.HTTPFlow) -> str | None:
    """What `undo` could do for the exchange, as its audit row has it (set by record with the outcome; None for a
    read, a denial, a failure, or before the request ends)."""
    return _of(flow).get(_UNDO_CLASS)


def set_undo_class(flow: http.HTTPFlow, value: str | None) -> str | None:
    """Keep the undo class record computed; returns it, for the row."""
    _of(flow)[_UNDO_CLASS] = value
    return value


def undo_of(flow: http.HTTPFlow) -> str | None:
    """The request this one compensates, when `undo` sent it (set by identify)."""
    return _of(flow).get(_UNDO_OF)


def set_undo_of(flow: http.HTTPFlow, request_id: str) -> None:
    _of(flow)[_UNDO_OF] = request_id


def preimage(flow: http.HTTPFlow) -> tuple[int, tuple[tuple[str, str], ...], bytes] | None:
    """Status, headers and body of the resource as read before forwarding (set by preimage)."""
    return _of(flow).get(_PREIMAGE)


def set_preimage(flow: http.HTTPFlow, status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> None:
    _of(flow)[_PREIMAGE] = (status, headers, body)


def exchange(flow: http.HTTPFlow) -> Exchange | None:
    """The request as the gate read it for its undo class (set by gate), its undo variables built once: the outcome
    row's class reads the request from it again. It holds the injected credential, so it is never exported."""
    return _of(flow).get(_EXCHANGE)


def set_exchange(flow: http.HTTPFlow, value: Exchange) -> None:
    _of(flow)[_EXCHANGE] = value



def challenged(flow: http.HTTPFlow) -> bool:
    """True when identify answered 407 to a request that sent no proxy credentials at all: a challenge (clients such
    as git first ask without them), not a refused identity."""
    return bool(_of(flow).get(_CHALLENGED))


def set_challenged(flow: http.HTTPFlow) -> None:
    _of(flow)[_CHALLENGED] = True


_REVIEW = "goex.review"
_APPROVAL = "goex.approval"
_VIEW = "goex.view"
_TOKEN_DIGEST = "goex.token_digest"


def token_digest(flow: http.HTTPFlow) -> str | None:
    """The sha256 of the token the request's agent identified with (set by identify)."""
    return _of(flow).get(_TOKEN_DIGEST)


def set_token_digest(flow: http.HTTPFlow, value: str) -> None:
    _of(flow)[_TOKEN_DIGEST] = value


def view(flow: http.HTTPFlow) -> RequestView | None:
    """The request as the policy decided it, before any credential was injected (set by decide)."""
    return _of(flow).get(_VIEW)


def set_view(flow: http.HTTPFlow, value: RequestView) -> None:
    _of(flow)[_VIEW] = value


def review(flow: http.HTTPFlow) -> tuple[str, str] | None:
    """The undo class and reason of a request that passed without waiting and goes to the review queue (set by
    gate)."""
    return _of(flow).get(_REVIEW)


def set_review(flow: http.HTTPFlow, undo_class: str, why: str) -> None:
    _of(flow)[_REVIEW] = (undo_class, why)


def approval(flow: http.HTTPFlow) -> str | None:
    """What became of a request that waited, as its audit row keeps it (set by gate; recorded with the outcome)."""
    return _of(flow).get(_APPROVAL)


def set_approval(flow: http.HTTPFlow, value: str) -> None:
    _of(flow)[_APPROVAL] = value
