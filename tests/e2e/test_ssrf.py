"""The SSRF guard through a real proxy: names are resolved once (by a scripted DNS server), every address checked,
and the connection made to the checked address."""

from __future__ import annotations

import http.server
import threading

import pytest
import requests

from tests.e2e.test_approvals import wait_for
from tests.fake_dns import FakeDNS

pytestmark = pytest.mark.e2e

POLICY = {"anywhere": """
    version: 1
    name: anywhere
    rules:
      - name: read anything
        allow: {host: "**", methods: [GET]}
"""}


class Recorder(http.server.ThreadingHTTPServer):
    """A plain HTTP server on one address that says which it is and counts what reached it."""

    def __init__(self, address: tuple[str, int], name: str) -> None:
        self.name, self.seen = name, []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.seen.append(self.path)
                body = recorder.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(address, Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def dns():
    with FakeDNS() as server:
        yield server


@pytest.fixture
def servers():
    """One port, two servers: 'public' on 127.0.0.2 (allowed by the config below) and 'internal' on 127.0.0.1."""
    for _ in range(20):
        # The kernel picks a port free on 127.0.0.1 (so nothing holds it on every address either); a probe's port closed
        # and bound again could be taken in between by another test's server, which failed this fixture once in CI.
        internal = Recorder(("127.0.0.1", 0), "internal")
        port = internal.server_address[1]
        try:
            public = Recorder(("127.0.0.2", port), "public")
            break
        except OSError:
            internal.shutdown()
            internal.server_close()
    else:
        pytest.fail("no port was free on both 127.0.0.1 and 127.0.0.2")
    yield port, public, internal
    for s in (public, internal):
        s.shutdown()
        s.server_close()


@pytest.fixture
def proxy(make_proxy, dns):
    host, port = dns.address
    return make_proxy(POLICY, extra_config=f'  resolver: "{host}:{port}"\n  allow_private: ["127.0.0.2/32", '
                                           f'"*.corp.test"]\n')


def get(proxy, url: str) -> requests.Response:
    return requests.get(url, proxies={"http": proxy.proxy_url(), "https": proxy.proxy_url()}, timeout=20,
                        allow_redirects=False, verify=str(proxy.ca_cert))


def test_a_name_that_changes_its_answer_gets_no_second_lookup(proxy, dns, servers):
    """DNS rebinding: the first answer (allowed) is what the connection uses; the next answer (loopback) is refused
    on its own lookup. The internal server never sees a request."""
    port, public, internal = servers
    dns.set("rebind.test", [["127.0.0.2"], ["127.0.0.1"]])
    first = get(proxy, f"http://rebind.test:{port}/first")
    assert (first.status_code, first.text) == (200, "public")
    second = get(proxy, f"http://rebind.test:{port}/second")
    assert second.status_code == 403
    assert "rebind.test is 127.0.0.1 a loopback address" in second.json()["reason"]
    assert public.seen == ["/first"] and internal.seen == []
    # An outcome is written after its answer (gathered with others for up to 5 ms): the denial, written whole at once,
    # may be in the log before the first request's outcome is.
    def ended() -> list[dict[str, object]] | None:
        found = proxy.rows()
        return found if all(r["status"] is not None for r in found) else None

    rows = wait_for(ended, timeout=10, what="every row's outcome")
    assert [(r["decision"], r["status"]) for r in rows] == [("allow", 200), ("deny", 403)]
    assert rows[1]["rule"] == "upstream.block_private_networks"


def test_a_name_resolving_to_loopback_is_refused(proxy, dns, servers):
    port, public, internal = servers
    dns.set("internal.test", ["127.0.0.1"])
    dns.set("both.test", ["127.0.0.2", "127.0.0.1"])
    for host in ("internal.test", "both.test"):
        r = get(proxy, f"http://{host}:{port}/")
        assert r.status_code == 403 and f"{host} is 127.0.0.1 a loopback address" in r.json()["reason"]
    assert internal.seen == [] and public.seen == []


def test_allow_private_opens_a_host_glob(proxy, dns, servers):
    port, public, _ = servers
    dns.set("wiki.corp.test", ["127.0.0.1"])
    r = get(proxy, f"http://wiki.corp.test:{port}/page")
    assert (r.status_code, r.text) == (200, "internal")


@pytest.mark.parametrize(("url", "why"), [
    ("http://127.0.0.1:{port}/", "a loopback address"),
    ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
    ("http://[::ffff:127.0.0.1]:{port}/", "an IPv4-mapped IPv6 address"),
    ("http://[::1]:{port}/", "a loopback address"),
    ("http://[::127.0.0.1]:{port}/", "an IPv4-compatible IPv6 address (of 127.0.0.1)"),
    ("http://[::ffff:0:7f00:1]:{port}/", "an IPv4-translated IPv6 address (of 127.0.0.1)"),
    ("http://[64:ff9b:1::a00:1]/", "a local-use NAT64 address"),
    ("http://0.0.0.0:{port}/", "the unspecified address"),
    ("http://10.0.0.1/", "a private network address (RFC 1918)"),
    ("http://100.64.0.1/", "a carrier-grade NAT address"),
    ("http://224.0.0.1/", "a multicast address"),
    ("http://metadata.test/computeMetadata/v1/", "a cloud metadata address"),
])
def test_non_public_targets_are_refused_after_resolution(proxy, dns, servers, url, why):
    port, public, internal = servers
    dns.set("metadata.test", ["169.254.169.254"])
    r = get(proxy, url.replace("{port}", str(port)))
    assert r.status_code == 403, r.text
    assert why in r.json()["reason"] and r.headers["X-Goex-Decision"] == "deny"
    assert internal.seen == [] and public.seen == []


def test_the_proxy_cannot_be_sent_to_itself(proxy):
    r = get(proxy, f"http://127.0.0.1:{proxy.port}/")
    assert r.status_code == 403 and "this proxy's own listen address" in r.json()["reason"]


def test_redirects_are_the_agents_to_follow_and_each_is_decided(proxy, upstream):
    """The proxy does not follow a redirect to the metadata service; the agent's next request is refused."""
    r = get(proxy, "https://slack.com/redirect?to=http://169.254.169.254/latest/meta-data/")
    assert r.status_code == 302
    follow = get(proxy, r.headers["Location"])
    assert follow.status_code == 403 and "a cloud metadata address" in follow.json()["reason"]
    assert [p.partition("?")[0] for p in upstream.seen_paths()] == ["/redirect"]


def test_an_unknown_name_gets_a_clear_502(proxy, dns):
    r = get(proxy, "http://nowhere.test/")
    assert r.status_code == 502 and "nowhere.test" in r.json()["reason"]
