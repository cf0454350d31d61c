"""`goex-proxy undo` with the generic REST pack against real DAV servers whose resources are not JSON: Radicale
(CalDAV, iCalendar `text/calendar`) and WsgiDAV (WebDAV, any bytes), both from PyPI, each started on 127.0.0.1 with
its own config and one htpasswd-style user whose password goex-proxy injects (the agent never holds it).

What the two servers do that matters here (checked by hand against Radicale 3.9 and WsgiDAV 4.4):
- Radicale parses and re-serialises every iCalendar object (vobject): a GET does NOT return the bytes PUT (the
  properties of an event come back in another order), but re-PUTting what a GET returned is a fixed point. Its ETag
  is a hash of the stored bytes, answered on PUT (201 new, 204 replaced) and GET; it honours If-Match and
  If-None-Match. It ignores a PUT's Content-Type, refuses a body that is not iCalendar (400) and refuses POST (405).
- WsgiDAV stores the bytes as they are; its ETag is inode-mtime-size (mtime in whole seconds, so two writes of one
  size within a second share an ETag: the "person" below always writes another length); a PUT that creates answers
  201 with an HTML body.

Every assertion reads the upstream's state directly from the server (not through the proxy), as bytes."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests

from tests.conftest import GoexProxy, free_port, wait_port

pytestmark = pytest.mark.e2e

USER, PASSWORD = "alice", "alice-dav-secret-4242"   # goex-proxy injects it; the agent never holds it
HOST = "cal.example"
COLLECTION = "/alice/calendar/"
POLICY = {"dav": f"""
    version: 1
    rules:
      - name: the calendar
        allow: {{host: {HOST}, methods: [GET, HEAD, PUT, DELETE], path: "{COLLECTION}**"}}
"""}
CREDENTIAL = f"""credentials:
  dav:
    secret: dav-password
    hosts: [{HOST}]
    inject: {{basic: {{username: {USER}}}}}
"""
ICAL_TYPE = "text/calendar; charset=utf-8"


def event(uid: str, summary: str, description: str = "") -> bytes:
    """An iCalendar object as a client writes it: DTSTAMP before DTSTART (Radicale stores them the other way round),
    UTF-8 beyond ASCII, and a DESCRIPTION with '=' and '&' (it must not be mistaken for a form)."""
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//goex-proxy tests//agent//EN", "BEGIN:VEVENT", f"UID:{uid}",
             "DTSTAMP:20260101T090000Z", "DTSTART:20260105T100000Z", "DTEND:20260105T103000Z", f"SUMMARY:{summary}"]
    if description:
        lines.append(f"DESCRIPTION:{description}")
    return ("\r\n".join([*lines, "END:VEVENT", "END:VCALENDAR"]) + "\r\n").encode()


SEED = {
    "standup.ics": event("standup@goex", "Daily standup – Zürich", "room=4&floor=2"),
    "review.ics": event("review@goex", "Quarterly review", "bring the numbers; x=1"),
    "lunch.ics": event("lunch@goex", "Lunch – café"),
}
#: What the agent does: a new event, one replaced, one deleted (in that order).
CREATED, REPLACED, DELETED = "new.ics", "standup.ics", "review.ics"
AGENT_WRITES = {
    CREATED: event("new@goex", "Planning, added by the agent"),
    REPLACED: event("standup@goex", "Standup MOVED by the agent", "the agent rewrote this"),
}
AGENT = """
import json, sys, requests
base, writes, deleted = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
out = {}
for name, body in writes.items():
    out[name] = requests.put(base + name, data=body.encode(), headers={"Content-Type": "text/calendar; charset=utf-8"},
                             timeout=20).status_code
out[deleted] = requests.delete(base + deleted, timeout=20).status_code
print(json.dumps(out))
"""


@dataclass
class Dav:
    """A DAV server's collection, read and written directly (as a person's client would, not through the proxy)."""

    kind: str
    origin: str   # http://127.0.0.1:PORT

    def url(self, name: str = "") -> str:
        return f"{self.origin}{COLLECTION}{name}"

    def request(self, method: str, name: str = "", **kw: Any) -> requests.Response:
        return requests.request(method, self.url(name), auth=(USER, PASSWORD), timeout=10, **kw)

    def put(self, name: str, body: bytes, content_type: str = ICAL_TYPE) -> bytes:
        """Write `body`; the bytes the server now holds (what a GET returns)."""
        r = self.request("PUT", name, data=body, headers={"Content-Type": content_type})
        assert r.status_code in (201, 204), (r.status_code, r.text)
        return self.get(name)

    def get(self, name: str) -> bytes:
        r = self.request("GET", name)
        assert r.status_code == 200, (name, r.status_code, r.text)
        return r.content

    def status(self, name: str) -> int:
        return self.request("GET", name).status_code

    def members(self) -> dict[str, bytes]:
        """Every resource in the collection (PROPFIND, depth 1) and its bytes."""
        r = self.request("PROPFIND", headers={"Depth": "1", "Content-Type": "application/xml"},
                         data=b'<?xml version="1.0"?><propfind xmlns="DAV:"><prop><resourcetype/></prop></propfind>')
        assert r.status_code == 207, (r.status_code, r.text)
        names = []
        for response in ET.fromstring(r.content).iter("{DAV:}response"):
            href = unquote(urlsplit(response.findtext("{DAV:}href") or "").path)
            if href.rstrip("/") != COLLECTION.rstrip("/") and not href.endswith("/"):
                names.append(href.rsplit("/", 1)[-1])
        return {name: self.get(name) for name in sorted(names)}


def _radicale(tmp_path: Path) -> Iterator[Dav]:
    root = tmp_path / "radicale"
    root.mkdir()
    (root / "users").write_text(f"{USER}:{PASSWORD}\n")
    port = free_port()
    (root / "config").write_text(f"""[server]
hosts = 127.0.0.1:{port}
[auth]
type = htpasswd
htpasswd_filename = {root / "users"}
htpasswd_encryption = plain
[rights]
type = owner_only
[storage]
filesystem_folder = {root / "collections"}
[logging]
level = warning
""")
    log = open(root / "radicale.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "radicale", "--config", str(root / "config")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        wait_port(port, timeout=30, proc=proc)
        dav = Dav("radicale", f"http://127.0.0.1:{port}")
        made = dav.request("MKCALENDAR")
        assert made.status_code == 201, (made.status_code, made.text)
        yield dav
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _wsgidav(tmp_path: Path) -> Iterator[Dav]:
    root = tmp_path / "wsgidav"
    (root / "share" / COLLECTION.strip("/")).mkdir(parents=True)
    port = free_port()
    (root / "wsgidav.json").write_text(json.dumps({
        "host": "127.0.0.1", "port": port, "verbose": 1,
        "provider_mapping": {"/": str(root / "share")},
        "http_authenticator": {"domain_controller": None, "accept_basic": True, "accept_digest": False,
                               "default_to_digest": False, "trusted_auth_header": None},
        "simple_dc": {"user_mapping": {"*": {USER: {"password": PASSWORD}}}},
        "dir_browser": {"enable": False},
    }))
    log = open(root / "wsgidav.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("wsgidav")), "--config", str(root / "wsgidav.json")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        wait_port(port, timeout=30, proc=proc)
        yield Dav("wsgidav", f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture(params=["radicale", "wsgidav"])
def dav(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Dav]:
    """The server, with the seed events in its collection."""
    server = _radicale if request.param == "radicale" else _wsgidav
    yield from _seeded(server(tmp_path))


def _seeded(servers: Iterator[Dav]) -> Iterator[Dav]:
    for dav in servers:
        for name, body in SEED.items():
            dav.put(name, body)
        yield dav


@pytest.fixture
def webdav(tmp_path: Path) -> Iterator[Dav]:
    yield from _wsgidav(tmp_path)


def dav_proxy(make_proxy, dav: Dav) -> GoexProxy:
    proxy = make_proxy(POLICY, start=False, routes={HOST: dav.origin}, extra_config=CREDENTIAL)
    stored = proxy.run_cli("secrets", "set", "--config", str(proxy.config), "dav-password", input=PASSWORD.encode())
    assert stored.returncode == 0, stored.stderr
    return proxy.start()


@pytest.fixture
def proxy(make_proxy, dav: Dav) -> GoexProxy:
    return dav_proxy(make_proxy, dav)


def run_agent(proxy: GoexProxy) -> dict[str, int]:
    writes = {name: body.decode() for name, body in AGENT_WRITES.items()}
    r = proxy.exec("mailbot", sys.executable, "-c", AGENT, f"https://{HOST}{COLLECTION}", json.dumps(writes), DELETED)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def agent_rows(proxy: GoexProxy) -> dict[str, dict[str, Any]]:
    """The agent's writes (not the reads), by resource name."""
    rows = [row for row in proxy.rows() if row["method"] not in ("GET", "HEAD") and not row["undo_of"]]
    return {str(row["url"]).rsplit("/", 1)[-1]: row for row in rows}


def compensations(proxy: GoexProxy) -> list[dict[str, Any]]:
    return [row for row in proxy.rows() if row["undo_of"] and row["method"] not in ("GET", "HEAD")]


def header(row: dict[str, Any], name: str, which: str = "req_headers") -> str:
    return next((str(v) for k, v in json.loads(str(row[which] or "[]")) if str(k).lower() == name), "")


def undo(proxy: GoexProxy, *args: str) -> subprocess.CompletedProcess[str]:
    return proxy.cli("undo", *args, "--yes")


def test_each_change_is_undone_byte_for_byte(proxy, dav):
    before = dav.members()
    assert sorted(before) == sorted(SEED)
    assert run_agent(proxy) == {CREATED: 201, REPLACED: 204, DELETED: 204 if dav.kind == "wsgidav" else 200}
    after_agent = dav.members()
    assert sorted(after_agent) == sorted([CREATED, REPLACED, "lunch.ics"]) and after_agent[REPLACED] != before[REPLACED]

    rows = agent_rows(proxy)
    assert [(name, row["method"], row["undo_class"]) for name, row in rows.items()] == [
        (CREATED, "PUT", "needs-preimage"), (REPLACED, "PUT", "needs-preimage"), (DELETED, "DELETE", "needs-preimage")]
    # The pre-images are the resources as the server held them, read (with the injected credential) before each write.
    assert rows[CREATED]["pre_status"] == 404
    assert (rows[REPLACED]["pre_status"], rows[REPLACED]["pre_body"]) == (200, before[REPLACED])
    assert (rows[DELETED]["pre_status"], rows[DELETED]["pre_body"]) == (200, before[DELETED])
    assert header(rows[REPLACED], "content-type", "pre_headers").startswith("text/calendar")

    # The delete, newest: the event is back at the same URL, byte for byte, sent as iCalendar.
    r = undo(proxy, str(rows[DELETED]["id"]))
    assert r.returncode == 0, r.stdout + r.stderr
    assert dav.get(DELETED) == before[DELETED]
    back = compensations(proxy)[-1]
    assert (back["method"], back["url"], back["undo_of"]) == ("PUT", rows[DELETED]["url"], rows[DELETED]["id"])
    assert back["req_body"] == before[DELETED] and header(back, "content-type").startswith("text/calendar")

    # The replace: the pre-image bytes put back with their own Content-Type (not `{}`, not JSON).
    r = undo(proxy, str(rows[REPLACED]["id"]))
    assert r.returncode == 0, r.stdout + r.stderr
    assert dav.get(REPLACED) == before[REPLACED]
    back = compensations(proxy)[-1]
    assert (back["method"], back["url"], back["undo_of"]) == ("PUT", rows[REPLACED]["url"], rows[REPLACED]["id"])
    assert back["req_body"] == before[REPLACED] and header(back, "content-type").startswith("text/calendar")

    # The new event: deleted.
    r = undo(proxy, str(rows[CREATED]["id"]))
    assert r.returncode == 0, r.stdout + r.stderr
    assert dav.status(CREATED) == 404
    assert compensations(proxy)[-1]["method"] == "DELETE"

    assert dav.members() == before
    assert sorted(str(c["undo_of"]) for c in compensations(proxy)) == sorted(str(row["id"]) for row in rows.values())


def test_a_persons_edit_after_the_agent_is_never_overwritten(proxy, dav):
    """Someone edits the replaced and the created event, and re-creates the deleted one, straight on the server (not
    through the proxy) after the agent: each undo is refused as a conflict and leaves the person's bytes alone."""
    run_agent(proxy)
    rows = agent_rows(proxy)
    person = {
        # Other lengths than the agent's: WsgiDAV's ETag is inode-mtime-size, with mtime in whole seconds.
        REPLACED: dav.put(REPLACED, event("standup@goex", "Standup: a person moved it back to 9:30 and said so")),
        CREATED: dav.put(CREATED, event("new@goex", "Planning (a person took this one over, with notes)")),
        DELETED: dav.put(DELETED, event("review@goex", "Quarterly review, re-created by a person")),
    }
    for name in (DELETED, REPLACED, CREATED):
        r = undo(proxy, str(rows[name]["id"]))
        assert r.returncode == 3, (name, r.returncode, r.stdout + r.stderr)
        assert "conflict" in r.stderr.lower(), (name, r.stdout + r.stderr)
        assert dav.get(name) == person[name], name
    # Refused before any step: no compensation was sent at all.
    assert compensations(proxy) == []


def test_a_session_undo_restores_the_collection_byte_for_byte(proxy, dav):
    before = dav.members()
    run_agent(proxy)
    rows = agent_rows(proxy)
    r = undo(proxy, "--agent", "mailbot", "--since", "1h")
    assert r.returncode == 0, r.stdout + r.stderr
    assert dav.members() == before
    # Newest first: the delete, then the replace, then the create.
    assert [c["undo_of"] for c in compensations(proxy)] == [rows[n]["id"] for n in (DELETED, REPLACED, CREATED)]


BINARY_AGENT = """
import sys, requests
base = sys.argv[1]
a = requests.put(base + "chart.png", data=bytes(range(255, -1, -1)) * 3, headers={"Content-Type": "image/png"}, timeout=20)
b = requests.delete(base + "logo.png", timeout=20)
print(a.status_code, b.status_code)
"""


def test_binary_resources_come_back_byte_for_byte(make_proxy, webdav):
    """Bytes that are not UTF-8 (every byte value, a PNG signature) survive the pre-image and the compensation."""
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) + b"\xff\xfe\x00\x80 not text"
    webdav.put("chart.png", png, "image/png")
    webdav.put("logo.png", png[::-1], "image/png")
    before = webdav.members()
    assert before == {"chart.png": png, "logo.png": png[::-1]}
    proxy = dav_proxy(make_proxy, webdav)
    r = proxy.exec("mailbot", sys.executable, "-c", BINARY_AGENT, f"https://{HOST}{COLLECTION}")
    assert (r.returncode, r.stdout.split()) == (0, ["204", "204"]), r.stdout + r.stderr
    assert webdav.members() == {"chart.png": bytes(range(255, -1, -1)) * 3}

    r = undo(proxy, "--agent", "mailbot", "--since", "1h")
    assert r.returncode == 0, r.stdout + r.stderr
    assert webdav.members() == before
    assert all(header(c, "content-type") == "image/png" for c in compensations(proxy) if c["method"] == "PUT")
