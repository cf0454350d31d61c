"""Red team of d98043f: GETs that servers run as another method, which `methods_run_as` (and the decide stage's
`readings`) do not see, so the record stage forwards them before their row is committed (`Record._goes_on_unwaited`).

The product's own model (`requestview.readings`) says a GET with `_method` in its query or urlencoded form, or a
method-override header, is run as the method it names, and `php_name` says how PHP names keys. These are the same
overrides spelled as such servers read them. Each test failed on d98043f; now the request counts as run as DELETE
(so it is decided as a DELETE, and its row is committed before it is forwarded)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mitmproxy.test import taddons, tflow

from goex_proxy.addons import flowmeta
from goex_proxy.addons.decide import Decide, methods_run_as
from goex_proxy.addons.record import Record
from tests.conftest import stage_state
from tests.hookrun import finished

#: GET and DELETE both allowed: the decision is allow either way, so what is shown is the record stage's choice alone.
POLICY = """
version: 1
name: p
rules:
  - name: read and delete
    allow: {host: address, methods: [GET, DELETE], path: "/**"}
"""


@pytest.fixture
def state(tmp_path: Path):
    with stage_state(tmp_path, POLICY) as s:
        yield s


def _get(path: str, headers: tuple[tuple[str, str], ...] = (), body: bytes = b"") -> tflow.HTTPFlow:
    f = tflow.tflow()
    f.request.method = "GET"
    f.request.path = path
    for name, value in headers:
        f.request.headers.add(name, value)
    f.request.raw_content = body
    flowmeta.set_agent(f, "bot")
    return f


CASES = {
    # PHP (and so Slim's MethodOverrideMiddleware, which honours the header on any method) reads a header as
    # $_SERVER['HTTP_X_HTTP_METHOD_OVERRIDE'] whether it came with '-' or '_' (PHP's built-in server, FrankenPHP/Caddy,
    # nginx with underscores_in_headers); older gunicorn mapped it so too.
    "header spelled with underscores": _get("/items/1", (("X_HTTP_Method_Override", "DELETE"),)),
    # PHP turns '.' and ' ' in a key into '_' and drops leading spaces (`php_name`): each of these is `_method`.
    "query key .method": _get("/items/1?.method=DELETE"),
    "query key with a leading space": _get("/items/1?%20_method=DELETE"),
    "query key cut at a NUL": _get("/items/1?_method%00junk=DELETE"),
    # A urlencoded body that is not UTF-8 has no form pairs to the policy (`form_pairs` gives up), while servers parse it.
    "form body with a non-UTF-8 byte": _get("/items/1", (("Content-Type", "application/x-www-form-urlencoded"),),
                                            b"_method=DELETE&junk=\xff"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_get_a_server_runs_as_delete_is_not_forwarded_before_its_commit(state, case: str) -> None:
    """Was a hole. The GET is allowed (as it should be: DELETE is allowed too) and, its override unseen, goes upstream before
    its row is committed: a DELETE with nothing in the log if the proxy dies now. Correct: `methods_run_as` names
    DELETE, and the record stage waits for the commit."""
    f = CASES[case]
    with taddons.context():
        finished(Decide(state).request(f))
    assert f.response is None and flowmeta.decision(f) is not None and flowmeta.decision(f).effect == "allow"
    assert "DELETE" in methods_run_as(f), f"{case}: the override is not seen ({methods_run_as(f)})"
    assert not Record(state)._goes_on_unwaited(f)


READ_ONLY = """
version: 1
name: p
rules:
  - name: read only
    allow: {host: address, methods: [GET], path: "/**"}
"""


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_same_override_passes_a_policy_that_allows_only_reads(tmp_path: Path, case: str) -> None:
    """Was a hole (policy level, older than d98043f, made worse by it). `?_method=DELETE` on a GET is refused by a read-only
    policy (`readings` must be allowed), but each spelling above is allowed: the DELETE a PHP/Slim server runs is
    both unauthorised and, since d98043f, forwarded before its row is committed. Correct: refused as the plain
    `_method` is."""
    with stage_state(tmp_path, READ_ONLY) as s:
        plain = _get("/items/1?_method=DELETE")
        with taddons.context():
            finished(Decide(s).request(plain))
        assert plain.response is not None and plain.response.status_code == 403  # the spelling the policy knows
        f = CASES[case]
        with taddons.context():
            finished(Decide(s).request(f))
        assert f.response is not None and f.response.status_code == 403, f"{case}: allowed by a read-only policy"
