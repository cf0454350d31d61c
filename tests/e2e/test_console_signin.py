"""Signing in to the console for real: `goex-proxy console` in a subprocess over a running proxy's state directory,
its printed link and `goex-proxy console link`'s each good once; no agent reaches a console listening where the
config does not say (the running console's file tells the proxy); `console link` with no console running is one line."""

from __future__ import annotations

import http.server
import re
import threading

import httpx
import pytest
import requests

from tests.conftest import free_port
from tests.e2e.test_approvals import wait_for
from tests.e2e.test_console import LINK, console_alone

pytestmark = pytest.mark.e2e

ANYWHERE = {"anywhere": """
    version: 1
    rules:
      - name: read anything
        allow: {host: "**", methods: [GET]}
"""}


def opens_once(base: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=20)
    r = client.get(f"/?token={token}")
    assert r.status_code == 303 and client.get("/").status_code == 200
    again = httpx.get(f"{base}/?token={token}", timeout=20)
    assert again.status_code == 401 and "goex-proxy console link" in again.text and "set-cookie" not in again.headers
    return client


def through_proxy(proxy, url: str) -> requests.Response:
    return requests.get(url, proxies={"http": proxy.proxy_url()}, timeout=20, allow_redirects=False)


class Hello(http.server.ThreadingHTTPServer):
    def __init__(self, port: int) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "5")
                self.end_headers()
                self.wfile.write(b"hello")

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", port), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_links_sign_in_once_and_no_agent_reaches_a_console_on_another_address(make_proxy, upstream, tmp_path):
    proxy = make_proxy(ANYWHERE, extra_config='  allow_private: ["127.0.0.1/32"]\n')  # loopback allowed to agents
    hello = Hello(free_port())
    try:  # the control: this proxy lets agents reach a loopback server
        assert through_proxy(proxy, f"http://127.0.0.1:{hello.server_address[1]}/").text == "hello"
    finally:
        hello.shutdown()
        hello.server_close()

    # The config has no console: section; the console's address is said only by the running console.
    with console_alone(proxy, tmp_path) as console:
        base, first, port = console.base, console.token, console.port
        assert base == f"http://127.0.0.1:{port}" and "within 10 minutes" in console.out.read_text()
        signed = opens_once(base, first)

        made = proxy.run_cli("console", "link", "--config", str(proxy.config))
        assert made.returncode == 0 and made.stdout.count("\n") == 1, made
        link = LINK.search(made.stdout)
        assert link and link.group(1) == base and link.group(2) != first
        opens_once(base, link.group(2))

        refused = through_proxy(proxy, f"http://127.0.0.1:{port}/")
        assert refused.status_code >= 400 and "web console" in refused.text, refused.text
        refused = through_proxy(proxy, f"http://localhost:{port}/?token={link.group(2)}")
        assert refused.status_code >= 400 and "web console" in refused.text, refused.text
        assert signed.get("/").status_code == 200
    assert console.process.returncode == 0 and console.out.read_text().count(first) == 1
    assert not list((proxy.home / "consoles").glob("*.json")), "its file is removed when it stops"

    none = proxy.run_cli("console", "link", "--config", str(proxy.config))
    assert none.returncode == 2 and "no console runs over" in none.stderr and none.stderr.count("\n") == 1, none
    assert "Traceback" not in none.stderr and not re.search(r"token=", none.stdout + none.stderr)


def test_run_prints_a_link_good_once_and_console_link_makes_more(make_proxy, upstream):
    port = free_port()
    proxy = make_proxy(ANYWHERE, extra_config=f"console: {{listen: '127.0.0.1:{port}'}}\n")
    found = wait_for(lambda: LINK.search(proxy.log_text()), what="the console's link")
    base = found.group(1)
    opens_once(base, found.group(2))
    made = proxy.run_cli("console", "link", "--config", str(proxy.config))
    link = LINK.search(made.stdout)
    assert made.returncode == 0 and link and link.group(1) == base, made
    opens_once(base, link.group(2))
