"""Under plain mitmdump, mitmproxy's own flow file, HAR and dump hold placeholders; unsafe UIs and listeners are refused."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mitmproxy import http, io

from tests.conftest import GoexProxy, free_port, wait_port
from tests.e2e.test_credentials import AGENT, ALL_FORMS, QUERY_SECRET, SLACK_SECRET, forms, with_secrets
from tests.fake_aws import REAL
from tests.fake_oauth import CLIENT_SECRET

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
#: One call per kind of injection (no S3 upload: mitmproxy's HAR export cannot decode boto3's `aws-chunked` bodies),
#: and an OAuth2 call; the test revokes the access token before running it a second time (a 401, then a retry).
CALLS = """
import os, sys, boto3, botocore, requests
def call(method, url, **kw):
    return requests.request(method, url, timeout=20, **kw).status_code
def s3():
    try:
        return boto3.client("s3", region_name="us-east-1").head_bucket(Bucket="goex-test-bucket")["ResponseMetadata"]["HTTPStatusCode"]
    except botocore.exceptions.ClientError as exc:
        return exc.response["ResponseMetadata"]["HTTPStatusCode"]
print(call("POST", "https://slack.com/api/chat.postMessage", json={"channel": "C0BOTS", "text": "hi"},
           headers={"Authorization": "Bearer " + os.environ["SLACK_TOKEN"]}),
      call("GET", "https://api.github.com/echo", headers={"Authorization": "token " + os.environ["GITHUB_TOKEN"]}),
      call("GET", "https://gmail.googleapis.com/echo"), call("GET", "https://example.com/echo?key=agent-sent-this"),
      call("GET", "https://api.oauth.example/me", headers={"Authorization": "Bearer " + os.environ["API_TOKEN"]}), s3())
"""


def mitm_args(proxy: GoexProxy, *extra: str, host: str | None = "127.0.0.1") -> list[str]:
    """The README's recipe for the pipeline under mitmproxy's own tools, listening where the config says."""
    import goex_proxy.addons as addons_pkg

    ca = proxy.config.read_text().split("extra_ca: [")[1].split("]")[0]  # mitmproxy does not read our extra_ca
    listen = ["--listen-host", host] if host is not None else []
    return [*listen, "-p", str(proxy.port), "--set", f"confdir={proxy.home}", "--set", "connection_strategy=lazy",
            "--set", f"ssl_verify_upstream_trusted_ca={ca}", "-s", addons_pkg.__file__,
            "--set", f"goex_config={proxy.config}", *extra]


def secret_spellings(oauth_server) -> list[bytes]:
    """Every secret the proxy holds, in every spelling a file could carry it."""
    values = oauth_server.state.issued + [CLIENT_SECRET, *REAL.values()]
    return [f.encode() for f in ALL_FORMS + [f for v in values for f in forms(v)]]


@pytest.fixture
def proxy(make_proxy, upstream, oauth_server, aws_relay, monkeypatch) -> GoexProxy:
    return with_secrets(make_proxy, oauth_server, aws_relay, monkeypatch)


def run_mitmdump(proxy: GoexProxy, tmp_path: Path, *extra: str,
                 steps: list[str | Callable[[], None]]) -> tuple[list[subprocess.CompletedProcess[str]], bytes]:
    """mitmdump with `extra` options while each step runs in turn (a string: an agent's Python script); the agents'
    results and mitmdump's output, once it has exited (and so written its files)."""
    dump_file = tmp_path / "dump.txt"
    results: list[subprocess.CompletedProcess[str]] = []
    with open(dump_file, "wb") as dump:
        proc = subprocess.Popen([str(BIN / "mitmdump"), *mitm_args(proxy, *extra)], env=proxy.env, stdout=dump,
                                stderr=subprocess.STDOUT)
        try:
            wait_port(proxy.port, proc=proc)
            for step in steps:
                if callable(step):
                    step()
                else:
                    results.append(proxy.exec("mailbot", sys.executable, "-c", step))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    return results, dump_file.read_bytes()


def assert_no_secret(oauth_server, **files: bytes) -> None:
    for name, data in files.items():
        for form in secret_spellings(oauth_server):
            assert form not in data, f"the {name} holds {form!r}"


def read_flows(path: Path) -> list[http.HTTPFlow]:
    with open(path, "rb") as f:
        return [fl for fl in io.FlowReader(f).stream() if isinstance(fl, http.HTTPFlow)]


def kept_requests(flows: list[http.HTTPFlow]) -> dict[tuple[str, str, str], http.Request]:
    return {(fl.request.host, fl.request.path.split("?")[0], fl.request.method): fl.request for fl in flows}


def test_flow_file_and_dump_hold_placeholders(proxy, upstream, oauth_server, aws_relay, tmp_path):
    """`-w` and `--flow-detail 3` after every injection kind and the error paths: the flow file reads back whole,
    every kept request carries the agent's placeholder, nothing holds a secret, and the upstream got each secret."""
    flows_file = tmp_path / "flows.mitm"
    (r,), dumped = run_mitmdump(proxy, tmp_path, "-w", str(flows_file), "--flow-detail", "3", steps=[AGENT])
    assert r.returncode == 0, r.stderr + dumped.decode(errors="replace")
    out = json.loads(r.stdout)
    assert (out["slack"]["status"], out["oauth-after-expiry"]["status"], out["s3"]) == (200, 200, "hello")
    seen = {(s.host, s.path.split("?")[0], s.method): s for s in upstream.state.seen}
    assert seen[("slack.com", "/api/chat.postMessage", "POST")].headers["Authorization"] == f"Bearer {SLACK_SECRET}"
    assert f"key={QUERY_SECRET}" in seen[("example.com", "/echo", "GET")].path
    assert aws_relay.verdicts and all(v.valid and v.key_id == REAL["access_key_id"] for v in aws_relay.verdicts)

    flows = read_flows(flows_file)
    kept = kept_requests(flows)
    assert len(flows) >= 15 and b"Addon error" not in dumped
    assert kept[("slack.com", "/api/chat.postMessage", "POST")].headers["Authorization"] == \
        "Bearer goex-placeholder-slack-bot"
    assert kept[("api.github.com", "/echo", "GET")].headers["Authorization"] == "token goex-placeholder-github"
    assert "Authorization" not in kept[("gmail.googleapis.com", "/echo", "GET")].headers  # the agent sent none
    assert kept[("example.com", "/echo", "GET")].query["key"] == "agent-sent-this"
    oauth = [fl.request.headers.get("Authorization") for fl in flows if fl.request.host == "api.oauth.example"]
    assert oauth == ["Bearer goex-placeholder-api", None]  # what the agent sent: the second call sent nothing
    s3 = [fl.request for fl in flows if fl.request.host.endswith("amazonaws.com")]
    assert s3 and all("Credential=goex-placeholder-aws" in q.headers["Authorization"] for q in s3)
    assert b"Bearer goex-placeholder-slack-bot" in dumped  # --flow-detail 3 printed the request headers
    assert_no_secret(oauth_server, flow_file=flows_file.read_bytes(), dump=dumped)


def test_har_holds_placeholders_also_after_an_oauth2_retry(proxy, upstream, oauth_server, aws_relay, tmp_path):
    """`hardump` and `-w` together, with a 401 that the proxy answers by refreshing the token and retrying: the HAR
    and the flow file show the agent's request, placeholder included, and the retried answer."""
    oauth_server.state.lifetime = 3600
    tokens = oauth_server.state.new_tokens()  # long-lived: only the revocation below causes a 401
    stored = json.dumps({**tokens, "expires_at": time.time() + 3600})
    assert proxy.run_cli("secrets", "set", "--config", str(proxy.config), "api-oauth", input=stored.encode()).returncode == 0
    har_file, flows_file = tmp_path / "flows.har", tmp_path / "flows.mitm"
    (first, second), dumped = run_mitmdump(proxy, tmp_path, "--set", f"hardump={har_file}", "-w", str(flows_file),
                                           steps=[CALLS, oauth_server.state.revoke_access, CALLS])
    assert first.stdout.split() == second.stdout.split() == ["200", "200", "200", "200", "200", "404"], \
        first.stderr + second.stderr + dumped.decode(errors="replace")
    assert [s for _, s in oauth_server.state.api_calls] == [200, 401, 200]
    assert aws_relay.verdicts and all(v.valid for v in aws_relay.verdicts)  # no bucket, but signed with the real keys

    entries = json.loads(har_file.read_bytes())["log"]["entries"]
    assert len(entries) == len(read_flows(flows_file)) == 12
    auth = [h["value"] for e in entries if e["request"]["url"].startswith("https://api.oauth.example/")
            for h in e["request"]["headers"] if h["name"].lower() == "authorization"]
    assert auth == ["Bearer goex-placeholder-api"] * 2
    s3 = [h["value"] for e in entries if "amazonaws.com" in e["request"]["url"]
          for h in e["request"]["headers"] if h["name"].lower() == "authorization"]
    assert len(s3) == 2 and all("Credential=goex-placeholder-aws" in v for v in s3)
    assert [e["response"]["status"] for e in entries if "oauth" in e["request"]["url"]] == [200, 200]
    assert_no_secret(oauth_server, har=har_file.read_bytes(), flow_file=flows_file.read_bytes(), output=dumped)


def refusals(output: str) -> list[str]:
    """What each line of the pipeline's refusals names (mitmproxy prints a script's error after a traceback)."""
    found = re.findall(r"^mitmproxy\.exceptions\.OptionsError: goex-proxy (?:needs the mitmproxy option (\S+=\S+) "
                       r"\(.*|does not run under (mitmweb or mitmproxy's console): .*mitmdump.*)$", output, re.M)
    return [option or tool for option, tool in found]


@pytest.mark.parametrize("tool", ["mitmweb", "mitmproxy"])
def test_interactive_uis_are_refused(proxy, tool):
    """mitmweb and mitmproxy's console show each flow live, secret injected, and let a person edit it: refused
    before anything listens."""
    ui = ["--set", "web_open_browser=false", "--set", f"web_port={free_port()}"] if tool == "mitmweb" else []
    r = subprocess.run([str(BIN / tool), *mitm_args(proxy, *ui)], env=proxy.env, capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    assert refusals(r.stdout + r.stderr) == ["mitmweb or mitmproxy's console"], r.stdout + r.stderr


@pytest.mark.parametrize(("where", "named"), [
    ({"host": None}, "listen_host=127.0.0.1"),
    ({"host": "0.0.0.0"}, "listen_host=127.0.0.1"),
    ({"port": "other"}, "listen_port=PORT"),
    ({"extra": ["--mode", "regular", "--mode", "socks5@PORT2"]}, "mode=['regular']"),
])
def test_listening_elsewhere_than_the_config_is_refused(proxy, where, named):
    """Plain mitmdump listens on every interface unless told otherwise: the pipeline refuses to run anywhere but at
    the config's `listen`, and says which option to set."""
    args = mitm_args(proxy, *[a.replace("PORT2", str(free_port())) for a in where.get("extra", [])],
                     host=where.get("host", "127.0.0.1"))
    if "port" in where:
        args[args.index(str(proxy.port))] = str(free_port())
    r = subprocess.run([str(BIN / "mitmdump"), *args], env=proxy.env, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert refusals(r.stdout + r.stderr) == [named.replace("PORT", str(proxy.port))], r.stdout + r.stderr


@pytest.mark.parametrize("option", ["stickyauth=~d api.example.test", "map_remote=|//api.github.com/|//example.com/",
                                    "modify_headers=/~q/Authorization/Bearer x"])
def test_options_that_change_requests_after_the_pipeline_are_refused(proxy, option):
    """mitmproxy's sticky auth, remapping, header and body rewriting and replays run after the pipeline decided,
    injected and recorded a request: a stuck credential or a remapped host would carry a secret where its binding
    does not allow, unrecorded. Before, they were accepted."""
    r = subprocess.run([str(BIN / "mitmdump"), *mitm_args(proxy, "--set", option)], env=proxy.env,
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    name = option.partition("=")[0]
    assert f"goex-proxy refuses the mitmproxy option {name} " in r.stdout + r.stderr, r.stdout + r.stderr
