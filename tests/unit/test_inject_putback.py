"""Inject puts the agent's placeholders back into the request mitmproxy keeps, once it was sent, for every kind."""

from __future__ import annotations

import asyncio
import base64
import json
import textwrap
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.addons import dumper, save, savehar, script
from mitmproxy.test import tflow

from goex_proxy.addons.inject import Inject, Swap, inject_into
from goex_proxy.addons.state import ProxyState
from goex_proxy.config import load_config
from goex_proxy.credentials.sigv4 import AwsKeys

REAL_KEYS = {"access_key_id": "AKIAREALREALREAL0001", "secret_access_key": "real/secret+key/REALREALREALREALREAL"}
SECRET = "s3cr3t-REAL-value"
CONFIG = """
    version: 1
    credentials:
      header: {secret: h, hosts: [h.example], inject: {header: Authorization, value: "token {secret}"}}
      basic: {secret: b, hosts: [b.example], inject: {basic: {username: me}}}
      query: {secret: q, hosts: [q.example], inject: {query: key}}
      aws: {secret: a, hosts: ["**.amazonaws.com"], inject: {aws_sigv4: {}}}
"""


@pytest.fixture
def state(tmp_path: Path) -> ProxyState:
    (tmp_path / "config.yaml").write_text(textwrap.dedent(CONFIG))
    s = ProxyState()
    s.config = load_config(tmp_path / "config.yaml")
    s.secrets = {"header": SECRET, "basic": SECRET, "query": SECRET}
    s.aws_keys = {"aws": AwsKeys.loads(json.dumps(REAL_KEYS))}
    return s


def signed_by_agent() -> http.Request:
    """An S3 GET as the SDK signs it with the placeholder keys the agent holds."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    aws = AWSRequest(method="GET", url="https://bucket.s3.amazonaws.com/key?versionId=1", data=b"")
    S3SigV4Auth(Credentials("goex-placeholder-aws", "goex-placeholder-aws"), "s3", "us-east-1").add_auth(aws)
    return http.Request.make("GET", aws.url, b"", dict(aws.headers.items()))


AGENT_REQUESTS = {
    "header": lambda: http.Request.make("GET", "https://h.example/x", b"", {"Authorization": "token goex-placeholder-header",
                                                                            "Accept": "*/*"}),
    "basic": lambda: http.Request.make("GET", "https://b.example/x", b"", {"Accept": "*/*"}),
    "query": lambda: http.Request.make("GET", "https://q.example/x?a=1&key=goex-placeholder-query&b=%20", b"", {}),
    "aws": signed_by_agent,
}


#: What shows that each kind of injection put the secret in.
INJECTED = {"header": SECRET, "basic": base64.b64encode(f"me:{SECRET}".encode()).decode(), "query": SECRET,
            "aws": REAL_KEYS["access_key_id"]}


def fields(request: http.Request) -> tuple[str, list[tuple[str, str]]]:
    """The path and the headers, by name (re-signing may reorder them; their order is not what the agent said)."""
    return request.path, sorted((k.lower(), v) for k, v in request.headers.items(multi=True))


@pytest.mark.parametrize("name", AGENT_REQUESTS)
def test_put_back_restores_what_the_agent_sent(state, name):
    agents = AGENT_REQUESTS[name]()
    injected = agents.copy()
    asyncio.run(inject_into(state, injected, state.config.credentials[name]))
    assert INJECTED[name] in str(fields(injected))  # the upstream gets the secret

    swap = Swap.between(agents.headers, agents.path, injected)
    assert swap is not None
    swap.put_back(injected)
    assert fields(injected) == fields(agents)
    swap.put_back(injected)  # again (response after responseheaders): no change
    assert fields(injected) == fields(agents)


def test_the_retry_reads_the_injected_token_not_the_kept_one():
    agents = http.Headers([(b"Authorization", b"Bearer goex-placeholder-api")])
    injected = http.Request.make("GET", "https://api.example/", b"", {"Authorization": "Bearer at-1-real"})
    swap = Swap.between(agents, "/", injected)
    assert swap is not None
    swap.put_back(injected)
    assert swap.injected("authorization") == "Bearer at-1-real"
    assert injected.headers["Authorization"] == "Bearer goex-placeholder-api"


def test_hooks_put_back_and_shutdown_puts_back_flows_in_flight(state):
    inject = Inject(state)
    answered, in_flight = tflow.tflow(resp=True), tflow.tflow()
    for f in (answered, in_flight):
        f.request.headers["Authorization"] = "token goex-placeholder-header"
        agents = http.Headers(f.request.headers.fields)
        f.request.headers["Authorization"] = f"token {SECRET}"
        inject._remember(f, agents, f.request.path)
    inject.responseheaders(answered)
    assert answered.request.headers["Authorization"] == "token goex-placeholder-header"
    assert in_flight.request.headers["Authorization"] == f"token {SECRET}"
    inject.done()
    assert in_flight.request.headers["Authorization"] == "token goex-placeholder-header"


def test_mitmdump_calls_scripts_before_its_exporters():
    """The put-back relies on it: on one hook, mitmdump calls its addons in chain order, so a script's hook (with
    every stage) runs before the flow file (`-w`), the HAR and the flow dump read the flow."""
    from mitmproxy import options
    from mitmproxy.tools.dump import DumpMaster

    async def chain() -> list[type]:
        return [type(a) for a in DumpMaster(options.Options(), with_termlog=False).addons.chain]

    order = asyncio.run(chain())
    assert order.index(script.ScriptLoader) < order.index(save.Save) < order.index(savehar.SaveHar) \
        < order.index(dumper.Dumper)
