"""`goex-proxy undo` of a form-encoded API with nested fields (Stripe's customers), with an undo pack written as a
user would write one (there is no shipped Stripe pack): nested `form:` values in bracket notation, a `form:` that is
one `${...}` map, and the template functions `pick`, `merge` and `toMap`.

Two servers: tests/fake_stripe.py, faithful to Stripe's documented behaviour (a metadata key sent as "" is removed,
an optional field sent as "" is unset), for the whole story; and localstripe (PyPI, a Stripe emulator someone else
wrote), whose own bracket-notation parser reads what undo sends, for the changes it handles as Stripe does (it keeps
a key sent as "" as "", so no key is added or removed there). Every assertion reads the customers directly from the
server, not through the proxy."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
import requests

from tests.conftest import GoexProxy, free_port, wait_port
from tests.fake_stripe import SECRET_KEY, FakeStripe

pytestmark = pytest.mark.e2e

HOST = "api.stripe.example"
API = f"https://{HOST}/v1/customers"
POLICY = {"stripe": f"""
    version: 1
    rules:
      - name: customers
        allow: {{host: {HOST}, methods: [GET, POST], paths: [/v1/customers, "/v1/customers/*"]}}
      # Undo deletes the customers the agent created, through the policy as the agent: deleting must be allowed,
      # and is confined, being irreversible.
      - name: delete a few customers
        allow: {{host: {HOST}, methods: [DELETE], path: "/v1/customers/*", limit: {{count: 5, per: 1h}}}}
"""}
CREDENTIAL = f"""credentials:
  stripe:
    secret: stripe-key
    hosts: [{HOST}]
    inject: {{header: Authorization, value: "Bearer {{secret}}"}}
    env: STRIPE_API_KEY
"""
RESTORED = ["name", "email", "description"]   # the fields the pack puts back, with the metadata

#: The customer update's undo, its form as nested YAML: each field as it was (one that was null sent as "", which
#: unsets it), and the metadata as it was, the keys the agent added sent as "" (which removes them).
NESTED_FORM = """
        form:
          name: '${pre.json.name != null ? pre.json.name : ""}'
          email: '${pre.json.email != null ? pre.json.email : ""}'
          description: '${pre.json.description != null ? pre.json.description : ""}'
          metadata: '${response.json.metadata.filter(k, !(k in pre.json.metadata)).toMap("").merge(pre.json.metadata)}'
"""
#: The same form as one `${...}` map.
ONE_MAP_FORM = """
        form: >-
          ${pre.json.pick(["name", "email", "description"])
            .merge(["name", "email", "description"].filter(k, pre.json[k] == null).toMap(""))
            .merge({"metadata": response.json.metadata.filter(k, !(k in pre.json.metadata)).toMap("")
                                .merge(pre.json.metadata)})}
"""
PACK = f"""
version: 1
name: stripe-customers
description: Stripe customers created or updated by an agent; deleting one is for good.
rules:
  - name: create a customer
    match: {{host: {HOST}, methods: [POST], path: /v1/customers}}
    effective: response.status == 200
    class: exact
    guard:
      read: {{method: GET, url: '${{request.base_url + "/" + response.json.id}}'}}
      expect: read.status == 200 && read.json == response.json
      conflict: the customer was changed after the agent created it
    undo:
      - method: DELETE
        url: '${{request.base_url + "/" + response.json.id}}'
        why: deletes the customer the agent created

  - name: update a customer
    match: {{host: {HOST}, methods: [POST], path: "/v1/customers/*"}}
    preimage: {{method: GET, url: "${{request.url}}"}}
    when: pre.status == 200 && !("deleted" in pre.json)
    effective: response.status == 200
    class: needs-preimage
    guard:
      read: {{method: GET, url: "${{request.url}}"}}
      # What undo would overwrite must be as the agent left it (Stripe may move the balance meanwhile).
      expect: >-
        read.status == 200 && read.json.pick({RESTORED}) == response.json.pick({RESTORED})
        && read.json.metadata == response.json.metadata
      conflict: the customer was changed again after the agent's update
    undo:
      - method: POST
        url: "${{request.url}}"
        FORM
        why: puts back the name, email, description and metadata the customer had before the agent's update

  - name: delete a customer
    match: {{host: {HOST}, methods: [DELETE], path: "/v1/customers/*"}}
    class: irreversible
    reason: Stripe deletes a customer for good (its payment methods and subscriptions go with it)
"""
AGENT = """
import json, os, sys, requests
api, ann, change = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
auth = {"Authorization": "Bearer " + os.environ["STRIPE_API_KEY"]}   # a placeholder: the proxy injects the key
made = requests.post(api, data={"name": "Zed Agent", "email": "zed@example.com", "metadata[source]": "agent"},
                     headers=auth, timeout=20)
changed = requests.post(f"{api}/{ann}", data=change, headers=auth, timeout=20)
print(json.dumps({"created": made.json()["id"], "statuses": [made.status_code, changed.status_code],
                  "after": changed.json()}))
"""
#: The agent's update on the fake: changes the name, sets the description (it was null), changes a metadata key,
#: adds one and removes one.
CHANGE = {"name": "Ann B. Example", "description": "VIP since today", "metadata[tier]": "gold",
          "metadata[score]": "10", "metadata[region]": ""}


@dataclass
class Stripe:
    """A Stripe server, read and written directly with the secret key (a person's dashboard, not the agent)."""

    origin: str

    def call(self, method: str, path: str, data: Any = None) -> requests.Response:
        return requests.request(method, f"{self.origin}/v1/customers{path}", data=data, timeout=10,
                                headers={"Authorization": f"Bearer {SECRET_KEY}"})

    def create(self, **fields: str) -> dict[str, Any]:
        r = self.call("POST", "", fields)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def get(self, cid: str) -> tuple[int, dict[str, Any]]:
        r = self.call("GET", f"/{cid}")
        return r.status_code, r.json()

    def customers(self) -> dict[str, dict[str, Any]]:
        r = self.call("GET", "?limit=100")
        assert r.status_code == 200, r.text
        return {c["id"]: c for c in r.json()["data"]}


@pytest.fixture
def fake_stripe() -> Iterator[Stripe]:
    server = FakeStripe()
    yield Stripe(server.url)
    server.close()


LOCALSTRIPE = """
import sys
from aiohttp import web
from localstripe import resources
resources.Store.dump_to_disk = lambda self: None   # it pickles its store to one /tmp file, shared by every instance
from localstripe.server import app
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)   # its own command listens on every address
"""


@pytest.fixture
def localstripe(tmp_path: Path) -> Iterator[Stripe]:
    port = free_port()
    log = open(tmp_path / "localstripe.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", LOCALSTRIPE, str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, timeout=30, proc=proc)
        yield Stripe(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def stripe_proxy(make_proxy, tmp_path: Path, stripe: Stripe, form: str = NESTED_FORM) -> GoexProxy:
    pack = tmp_path / "stripe-undo.yaml"
    pack.write_text(PACK.replace("        FORM\n", form.lstrip("\n")))
    proxy = make_proxy(POLICY, start=False, routes={HOST: stripe.origin},
                       extra_config=CREDENTIAL + f"undo_rules: [{pack}, builtin:rest]\n")
    stored = proxy.run_cli("secrets", "set", "--config", str(proxy.config), "stripe-key", input=SECRET_KEY.encode())
    assert stored.returncode == 0, stored.stderr
    checked = proxy.cli("policy", "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return proxy.start()


def seed(stripe: Stripe) -> dict[str, Any]:
    """Ann, whom the agent updates, and Bo, whom nobody touches."""
    ann = stripe.create(**{"name": "Ann Example", "email": "ann@example.com", "metadata[tier]": "silver",
                           "metadata[region]": "eu", "metadata[note]": "a=b&c [x] ü"})
    stripe.create(name="Bo", email="bo@example.com", description="untouched", **{"metadata[tier]": "bronze"})
    assert ann["description"] is None
    return ann


def run_agent(proxy: GoexProxy, ann: str, change: dict[str, str]) -> dict[str, Any]:
    r = proxy.exec("mailbot", sys.executable, "-c", AGENT, API, ann, json.dumps(change))
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["statuses"] == [200, 200], out
    return dict(out)


def writes(proxy: GoexProxy) -> list[dict[str, Any]]:
    return [row for row in proxy.rows() if row["method"] != "GET" and not row["undo_of"]]


def compensation_of(proxy: GoexProxy, row: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in proxy.rows() if c["undo_of"] == row["id"] and c["method"] != "GET")


def undo(proxy: GoexProxy, *args: str) -> subprocess.CompletedProcess[str]:
    return proxy.cli("undo", *args, "--yes")


@pytest.mark.parametrize("form", [NESTED_FORM, ONE_MAP_FORM], ids=["nested-form", "one-map-form"])
def test_create_and_update_are_undone(make_proxy, tmp_path, fake_stripe, form):
    ann = seed(fake_stripe)
    before = fake_stripe.customers()
    proxy = stripe_proxy(make_proxy, tmp_path, fake_stripe, form)
    out = run_agent(proxy, ann["id"], CHANGE)
    zed = out["created"]
    assert out["after"]["metadata"] == {"tier": "gold", "score": "10", "note": "a=b&c [x] ü"}
    assert out["after"]["description"] == "VIP since today"
    create, update = writes(proxy)
    assert (create["undo_class"], update["undo_class"]) == ("exact", "needs-preimage")
    assert update["pre_status"] == 200 and json.loads(update["pre_body"]) == before[ann["id"]]

    r = undo(proxy, str(update["id"]))
    assert r.returncode == 0, r.stdout + r.stderr
    # Ann as before: the fields the pack restores, and her metadata exactly (score gone, region back, tier silver).
    assert fake_stripe.get(ann["id"]) == (200, before[ann["id"]])
    sent = compensation_of(proxy, update)
    assert sent["method"] == "POST" and sent["url"] == f"{API}/{ann['id']}"
    assert next(v for k, v in json.loads(sent["req_headers"]) if k.lower() == "content-type").startswith(
        "application/x-www-form-urlencoded")
    assert sorted(parse_qsl(sent["req_body"].decode(), keep_blank_values=True)) == sorted([
        ("name", "Ann Example"), ("email", "ann@example.com"), ("description", ""), ("metadata[tier]", "silver"),
        ("metadata[region]", "eu"), ("metadata[note]", "a=b&c [x] ü"), ("metadata[score]", "")])

    r = undo(proxy, str(create["id"]))
    assert r.returncode == 0, r.stdout + r.stderr
    assert fake_stripe.get(zed) == (200, {"id": zed, "object": "customer", "deleted": True})
    assert fake_stripe.customers() == before


def test_a_persons_change_after_the_agent_is_kept(make_proxy, tmp_path, fake_stripe):
    """Someone edits both customers on the dashboard after the agent: both undos are refused as conflicts, and the
    person's changes stay."""
    ann = seed(fake_stripe)
    proxy = stripe_proxy(make_proxy, tmp_path, fake_stripe)
    zed = run_agent(proxy, ann["id"], CHANGE)["created"]
    create, update = writes(proxy)
    person_ann = fake_stripe.call("POST", f"/{ann['id']}", {"metadata[tier]": "platinum"}).json()
    person_zed = fake_stripe.call("POST", f"/{zed}", {"description": "a real customer after all"}).json()

    for row, cid, person in ((update, ann["id"], person_ann), (create, zed, person_zed)):
        r = undo(proxy, str(row["id"]))
        assert r.returncode == 3, (r.returncode, r.stdout + r.stderr)
        assert "conflict" in r.stderr.lower(), r.stdout + r.stderr
        assert fake_stripe.get(cid) == (200, person)
    assert [c for c in proxy.rows() if c["undo_of"] and c["method"] != "GET"] == []


def test_a_session_undo_restores_the_customers(make_proxy, tmp_path, fake_stripe):
    ann = seed(fake_stripe)
    before = fake_stripe.customers()
    proxy = stripe_proxy(make_proxy, tmp_path, fake_stripe)
    zed = run_agent(proxy, ann["id"], CHANGE)["created"]
    r = undo(proxy, "--agent", "mailbot", "--since", "1h")
    assert r.returncode == 0, r.stdout + r.stderr
    assert fake_stripe.customers() == before
    assert fake_stripe.get(zed)[1].get("deleted") is True


def test_an_unknown_form_value_is_refused_by_the_fake(fake_stripe):
    """The fake is as strict as Stripe where a broken undo would show: JSON, or a map sent as one string."""
    ann = seed(fake_stripe)
    assert fake_stripe.call("POST", f"/{ann['id']}", {"metadata": json.dumps({"tier": "gold"})}).status_code == 400
    r = requests.post(f"{fake_stripe.origin}/v1/customers/{ann['id']}", json={"name": "x"}, timeout=10,
                      headers={"Authorization": f"Bearer {SECRET_KEY}"})
    assert r.status_code == 400
    assert fake_stripe.get(ann["id"]) == (200, ann)


def test_localstripe_reads_the_nested_form_undo_sends(make_proxy, tmp_path, localstripe):
    """localstripe parses the bracket notation itself: the update (every restored field and a metadata key changed)
    and the create are undone, and the customer is as before, field for field."""
    ann = localstripe.create(**{"name": "Ann Example", "email": "ann@example.com", "description": "regular",
                                "metadata[tier]": "silver", "metadata[region]": "eu"})
    before = localstripe.customers()
    proxy = stripe_proxy(make_proxy, tmp_path, localstripe)
    change = {"name": "Ann B.", "email": "ann.b@example.com", "description": "VIP", "metadata[tier]": "gold"}
    out = run_agent(proxy, ann["id"], change)
    assert out["after"]["metadata"] == {"tier": "gold", "region": "eu"}
    create, update = writes(proxy)
    assert (create["undo_class"], update["undo_class"]) == ("exact", "needs-preimage")

    r = undo(proxy, "--agent", "mailbot", "--since", "1h")
    assert r.returncode == 0, r.stdout + r.stderr
    assert localstripe.get(ann["id"]) == (200, before[ann["id"]])
    assert localstripe.get(out["created"])[0] == 404   # localstripe forgets a deleted customer
    assert localstripe.customers() == before
