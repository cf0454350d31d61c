"""Approvals' pure parts and store: `hold:`/`delay:`/`review:` in policies, the gate's choice, the class a request
has before it is sent, cards, one decision per request, one-time links, and the chain over released charges."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from goex_proxy.approvals import store
from goex_proxy.approvals.card import card
from goex_proxy.approvals.gate import choose
from goex_proxy.audit import store as audit
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.config import undo_names
from goex_proxy.credentials.redact import SecretScrubber
from goex_proxy.ids import RequestIds
from goex_proxy.policy.engine import PolicySet, Wait
from goex_proxy.policy.load import check_policy_text
from goex_proxy.undo.catalog import pack_path
from goex_proxy.undo.plan import Exchange, expected_class
from goex_proxy.undo.rules import load_packs

HOLD = Wait("hold", 600.0)


def policy(text: str) -> tuple[object, list[str]]:
    found, problems = check_policy_text(text, "p.yaml")
    return found, [f"{p.line}:{p.col}: {p.message}" for p in problems if p.severity == "error"]


def test_hold_delay_and_review_are_read_from_a_policy() -> None:
    found, problems = policy("""version: 1
review: {exact: pass, lossy: delay 30s, irreversible: hold 5m}
rules:
  - name: held
    allow: {host: a.example, hold: {timeout: 2m, on_timeout: send}}
  - name: plain hold
    allow: {host: b.example, hold: true}
  - name: delayed
    allow: {host: c.example, delay: 45s}
""")
    assert problems == []
    rules = found.rules  # type: ignore[attr-defined]
    assert [r.wait for r in rules] == [Wait("hold", 120.0, "send"), HOLD, Wait("delay", 45.0)]
    assert dict(found.review) == {"exact": None, "lossy": Wait("delay", 30.0),  # type: ignore[attr-defined]
                                  "irreversible": Wait("hold", 300.0)}


@pytest.mark.parametrize(("text", "message"), [
    ("review: {exact: wait}", "'review.exact' must be 'pass', 'delay DURATION', 'hold' or 'hold TIMEOUT'"),
    ("review: {exact: delay}", "'review.exact' must be 'pass'"),
    ("review: {reversible: pass}", "unknown key 'reversible' in 'review'"),
    ("rules:\n  - name: x\n    allow: {host: a, hold: true, delay: 1s}", "has both 'hold' and 'delay'"),
    ("rules:\n  - name: x\n    allow: {host: a, hold: {on_timeout: approve}}", "must be 'deny' or 'send'"),
    ("rules:\n  - name: x\n    allow: {host: a, hold: {timeout: soon}}", "'rules[0].allow.hold.timeout' must be a duration"),
    ("rules:\n  - name: x\n    allow: {host: a, delay: 0s}", "'rules[0].allow.delay' must be a duration"),
    ("rules:\n  - name: x\n    deny: {host: a, hold: true}", "unknown key 'hold'"),
    ("rules:\n  - name: x\n    allow: {host: a, protocol: tcp, hold: true}", "applies to HTTP requests only"),
])
def test_a_wrong_wait_is_one_clear_located_problem(text: str, message: str) -> None:
    body = text if text.startswith("rules") else text + "\nrules: []"
    _, problems = policy("version: 1\n" + body + "\n")
    assert len(problems) == 1 and message in problems[0], problems


def test_review_takes_the_strictest_of_the_enforced_policies_for_the_agent() -> None:
    texts = ["version: 1\nname: a\nreview: {exact: pass, lossy: delay 10s}\nrules: []\n",
             "version: 1\nname: b\nagents: [bot]\nreview: {exact: hold, lossy: delay 1m}\nrules: []\n",
             "version: 1\nname: c\nmode: report\nreview: {irreversible: hold}\nrules: []\n"]
    policies = PolicySet.of(policy(t)[0] for t in texts)  # type: ignore[misc]
    assert policies.review_for("bot") == {"exact": HOLD, "lossy": Wait("delay", 60.0)}
    assert policies.review_for("other") == {"exact": None, "lossy": Wait("delay", 10.0)}


def test_the_gate_takes_the_strictest_of_the_rule_and_the_class() -> None:
    review = {"exact": None, "lossy": Wait("delay", 30.0), "irreversible": HOLD}
    assert choose(None, "r", review, "exact").action == "review"
    assert choose(None, "r", review, None).action == "go"   # a read: nothing to undo, never gated by class
    assert choose(None, "r", {}, "irreversible").action == "go"  # no review: today's behaviour
    assert choose(Wait("delay", 5.0), "r", review, "exact").action == "delay"
    held = choose(Wait("delay", 5.0), "r", review, "irreversible")
    assert (held.action, held.why) == ("hold", "irreversible: review says hold up to 10m")
    assert choose(Wait("delay", 60.0), "r", review, "lossy").why == "rule 'r' says delay 1m"
    assert choose(HOLD, "r", {}, None).action == "hold"  # a rule may hold even a read


@pytest.fixture(scope="module")
def packs():  # type: ignore[no-untyped-def]
    return load_packs([pack_path(n) for n in undo_names() if n != "rest"] + [pack_path("rest")])


def slack(method: str, body: dict[str, object]) -> Exchange:
    return Exchange("POST", f"https://slack.com/api/{method}", (("content-type", "application/json"),),
                    json.dumps(body).encode())


def test_the_class_before_sending_is_the_rules_or_the_worse_of_those_the_response_decides(packs) -> None:  # type: ignore[no-untyped-def]
    assert expected_class(packs, slack("chat.delete", {"channel": "C", "ts": "1"}))[0] == "irreversible"
    assert expected_class(packs, slack("reactions.add", {"channel": "C", "name": "x"}))[0] == "exact"
    assert expected_class(packs, slack("conversations.create", {"name": "x"}))[0] == "lossy"
    unknown = Exchange("POST", "https://nowhere.example/do", (), b"")
    assert expected_class(packs, unknown) == ("irreversible", None)  # only the answer can tell if a rule applies
    json_type = (("content-type", "application/json"),)
    replace = Exchange("PUT", "https://nowhere.example/items/1", json_type, b'{"a": 2}', None, (), None,
                       200, json_type, b'{"a": 1}')  # the gate runs after the pre-image read
    assert expected_class(packs, replace)[0] == "needs-preimage"


def test_a_card_says_what_the_request_will_do_without_its_secrets(packs) -> None:  # type: ignore[no-untyped-def]
    scrub = SecretScrubber({"xoxb-real-secret": "{{SLACK}}"})
    exchange = slack("chat.delete", {"channel": "C0BOTS", "ts": "1.5", "token": "xoxb-real-secret",
                                     "blob": "x" * 500, **{f"k{i}": i for i in range(10)}})
    found = card(exchange, "irreversible", expected_class(packs, exchange)[1], "irreversible: review says hold",
                 scrub)
    text = json.dumps(found)
    assert "xoxb-real-secret" not in text and found["fields"]["token"] == "{{SLACK}}"
    assert found["fields"]["blob"] == "x" * 79 + "… (500 characters)"  # cut, and says how long it was
    assert len(found["fields"]) == 14  # every field of a small body is named, the channel among them
    assert found["summary"].startswith("POST https://slack.com/api/chat.delete with channel=C0BOTS")
    assert "Undo could not take it back" in found["summary"]
    create = slack("conversations.create", {"name": "room"})
    planned = card(create, "lossy", expected_class(packs, create)[1], "lossy", scrub)
    assert planned["undo"] == ["POST https://slack.com/api/conversations.archive"]


def entry(owner: str | None = None, kind: str = "hold") -> dict[str, object]:
    return {"ts": time.time(), "agent": "bot", "kind": kind, "state": store.HELD if kind == "hold" else store.DELAYED,
            "deadline": time.time() + 60, "on_timeout": "deny", "undo_class": "irreversible", "why": "test",
            "card": "{}", "owner": owner or store.this_process()}


def waiting(tmp_path: Path, n: int = 1, **kwargs: object) -> tuple[AuditWriter, list[str]]:
    writer, ids = AuditWriter(tmp_path / "a.db", Seal(tmp_path)), RequestIds()
    made = []
    for _ in range(n):
        rid = ids.new()
        row = {"id": rid, "ts": time.time(), "agent": "bot", "method": "POST", "scheme": "https", "host": "h",
               "port": 443, "path": "/", "url": "https://h/", "decision": "hold"}
        writer.record_wait(row, entry(**kwargs)).result(5)  # type: ignore[arg-type]
        made.append(rid)
    return writer, made


def test_people_deciding_at_once_leave_exactly_one_decision(tmp_path: Path) -> None:
    writer, (rid,) = waiting(tmp_path)
    results: list[str] = []

    def decide(action: str) -> None:
        conn = audit.open_db(tmp_path / "a.db", seal=Seal(tmp_path))
        try:
            store.decide(conn, rid, action, f"person-{action}")
            results.append(action)
        except store.ApprovalError as exc:
            results.append(f"refused: {exc}")

    threads = [threading.Thread(target=decide, args=(a,)) for a in ("approve", "deny") * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [r for r in results if not r.startswith("refused")]
    assert len(won) == 1 and all("no longer waiting" in r for r in results if r.startswith("refused"))
    conn = audit.open_db(tmp_path / "a.db", readonly=True)
    assert store.get(conn, rid)["decided_by"] == f"person-{won[0]}"
    writer.close()


def test_a_wait_whose_proxy_is_gone_cannot_be_approved_and_cancel_is_for_delays(tmp_path: Path) -> None:
    writer, (rid,) = waiting(tmp_path, owner="1:not-a-start-time")
    conn = audit.open_db(tmp_path / "a.db", seal=Seal(tmp_path))
    with pytest.raises(store.ApprovalError, match="no longer running"):
        store.decide(conn, rid, "approve", "me")
    writer2, (held,) = waiting(tmp_path / "b")
    conn2 = audit.open_db(tmp_path / "b" / "a.db", seal=Seal(tmp_path / "b"))
    with pytest.raises(store.ApprovalError, match="held for approval, not delayed; deny it instead"):
        store.decide(conn2, held, "cancel", "me")
    writer.close()
    writer2.close()


def test_a_link_works_once_and_a_forged_or_expired_one_never(tmp_path: Path) -> None:
    writer, (rid, other) = waiting(tmp_path, 2)
    links = writer.apply(lambda conn, w: store.make_links(conn, rid, ("approve", "deny"), time.time() + 60)).result(5)
    expired = writer.apply(lambda conn, w: store.make_links(conn, other, ("approve",), time.time() - 1)).result(5)
    conn = audit.open_db(tmp_path / "a.db", seal=Seal(tmp_path))
    assert store.peek_link(conn, links["approve"])[0] == "approve"  # looking does not use it
    assert store.use_link(conn, links["approve"], "link").state == store.APPROVED
    for token, why in ((links["approve"], "already used"), (links["deny"], "already used"),
                       (links["approve"][:-2] + "xx", "not valid"), (expired["approve"], "expired")):
        with pytest.raises(store.ApprovalError, match=why):
            store.use_link(conn, token, "link")
    stored = [r[0] for r in conn.execute("SELECT token_sha256 FROM approval_links")]
    assert links["approve"] not in stored and len(stored) == 3  # only digests are kept
    writer.close()


def test_a_charge_taken_when_a_wait_ends_is_under_the_chain(tmp_path: Path) -> None:
    writer, (rid,) = waiting(tmp_path)
    charged = audit.charged(["p/r"], 5.0)

    def release(conn: sqlite3.Connection, w: AuditWriter) -> None:
        conn.execute("INSERT INTO limit_hits (key, agent, ts, request_id) VALUES ('p/r', 'bot', 5.0, ?)", (rid,))
        conn.execute("UPDATE approvals SET charged = ? WHERE request_id = ?", (charged, rid))

    writer.apply(release).result(5)
    conn = audit.open_db(tmp_path / "a.db", readonly=True)
    key = audit.chain_key(conn, Seal(tmp_path))
    assert audit.verify(conn, key).broken_id is None  # in flight: its approvals entry says what it was charged
    kept = store.outcome(store.get(conn, rid))
    writer.record_outcome(rid, {"status": 200, "ended": 6.0, "approval": kept}).result(5)
    writer.close()
    assert json.loads(kept)["charged"] == {"keys": ["p/r"], "at": 5.0}
    assert audit.verify(conn, key).broken_id is None
    with sqlite3.connect(tmp_path / "a.db") as rw:
        rw.execute("""UPDATE requests SET approval = replace(approval, '"held"', '"approved"')""")
    assert "outcome fields do not match" in str(audit.verify(conn, key).problem)
    with sqlite3.connect(tmp_path / "a.db") as rw:
        rw.execute("""UPDATE requests SET approval = replace(approval, '"approved"', '"held"')""")
        rw.execute("DELETE FROM limit_hits")
    assert "limit_hits was edited" in str(audit.verify(conn, key).problem)


def test_the_readme_example_is_a_valid_policy() -> None:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Approvals"):]
    example = section[section.index("```yaml\n") + 8:section.index("```\n", section.index("```yaml\n") + 8)]
    found, problems = policy(example)
    assert problems == [] and found is not None
    assert [r.wait.describe() if r.wait else None for r in found.rules] == [  # type: ignore[attr-defined]
        None, "hold up to 10m", "delay 1m"]


def test_a_report_mode_policy_is_warned_that_it_never_holds() -> None:
    _, problems = check_policy_text("version: 1\nmode: report\nreview: {irreversible: hold}\nrules: []\n", "p.yaml")
    assert [(p.severity, p.line) for p in problems] == [("warning", 2)]
    assert "never holds or delays" in problems[0].message


def test_no_agent_request_reaches_the_approval_links_whatever_else_egress_allows() -> None:
    import ipaddress

    from goex_proxy.net.egress import EgressRules

    rules = EgressRules(block_private=False, links=("127.0.0.1", 8790), link_host="approve.example.net")
    loopback, public = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("203.0.113.9")
    assert "approval links" in str(rules.refusal("localhost", 8790, [loopback]))
    assert "approval links" in str(rules.refusal("Approve.Example.NET.", 443, [public]))  # the tunnel's public name
    assert rules.refusal("localhost", 8791, [loopback]) is None and rules.refusal("api.example", 443, [public]) is None


@pytest.mark.parametrize("host", ["slack.com", "api.github.com", "gmail.googleapis.com", "bucket.s3.amazonaws.com",
                                  "s3.eu-west-1.amazonaws.com", "nowhere.example", "Slack.com", ""])
def test_the_rule_index_keeps_every_rule_a_host_may_match_in_pack_order(packs, host: str) -> None:  # type: ignore[no-untyped-def]
    from goex_proxy.undo.plan import rules_for

    indexed = list(rules_for(packs, host))
    assert indexed == [r for r in packs if r in indexed]  # pack order
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        for path in ("/", "/api/chat.delete", "/repos/o/r", "/gmail/v1/users/me/messages/1", "/b/k", "/items/1"):
            assert [r for r in indexed if r.matches(method, host, path)] == \
                   [r for r in packs if r.matches(method, host, path)]


def test_a_key_sent_twice_waits_if_any_of_its_readings_waits() -> None:
    from goex_proxy.policy.limits import LimitCounters
    from goex_proxy.policy.requestview import RequestView

    found, _ = policy("""version: 1
rules:
  - name: post
    allow: {host: a.example, methods: [POST], duplicate_keys: accept}
  - name: general waits
    allow: {host: a.example, methods: [POST], duplicate_keys: accept, hold: true,
            when: 'request.form.channel == "C0GENERAL"'}
""")
    view = RequestView("bot", "POST", "https", "a.example", 443, "/post",
                       headers=(("content-type", "application/x-www-form-urlencoded"),),
                       body=b"channel=C0BOTS&channel=C0GENERAL")
    from goex_proxy.policy.engine import decide

    assert decide(view, PolicySet.of([found]), 0.0, LimitCounters()).wait == HOLD  # type: ignore[list-item]


def test_the_link_server_is_unreachable_at_any_spelling_of_this_machine() -> None:
    import ipaddress

    from goex_proxy.net.egress import EgressRules

    rules = EgressRules(block_private=False, links=("127.0.0.1", 8790))
    for spelled in ("0.0.0.0", "::", "::ffff:127.0.0.1", "::1"):
        assert "approval links" in str(rules.refusal(spelled, 8790, [ipaddress.ip_address(spelled)])), spelled


HOLD_POLICY = """version: 1
name: p
rules:
  - name: write
    allow: {host: address, methods: [POST], path: /items/**, hold: true}
"""


def test_a_held_request_whose_row_could_not_be_anchored_leaves_no_card_waiting(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A request to hold whose row and approvals entry were committed but whose anchor could not be written is
    refused (the writer fails closed); its entry stayed `held`, a card a person could approve for a request nobody
    held any more. The entry and the row now end together, 'not sent', and the chain holds."""
    import asyncio
    import errno

    from mitmproxy.test import taddons, tflow

    from goex_proxy.addons import flowmeta
    from goex_proxy.addons.gate import Gate
    from goex_proxy.approvals import store as approvals
    from goex_proxy.audit import seal as seal_module
    from goex_proxy.audit import store as audit
    from goex_proxy.audit.seal import Seal
    from goex_proxy.errors import AuditError
    from goex_proxy.policy.engine import Decision, Wait
    from tests.conftest import stage_state

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with stage_state(tmp_path, HOLD_POLICY) as state:
        f = tflow.tflow()
        f.request.method, f.request.path, f.request.content = "POST", "/items", b'{"name": "widget"}'
        f.request.timestamp_start = 1_700_000_000.25  # a float, as mitmproxy's clock gives (the test flow's is an int)
        flowmeta.set_agent(f, "bot")
        flowmeta.set_decision(f, Decision("allow", "allowed", "p/write", wait=Wait("hold", 600.0)))
        monkeypatch.setattr(seal_module.os, "replace", full)  # the anchor made anew
        monkeypatch.setattr(seal_module.os, "pwrite", full)  # or written in place
        with taddons.context():
            try:
                asyncio.run(Gate(state).request(f))
            except AuditError:
                pass  # refused: fail_closed answers the flow, or the error reaches the caller
        monkeypatch.undo()
        request_id = flowmeta.request_id(f)
        state.writer.apply(lambda conn, w: None).result(5)  # after the entry's end, queued before it
    conn = audit.open_db(tmp_path / "audit.db", readonly=True)
    entry = conn.execute("SELECT state, reason FROM approvals WHERE request_id = ?", (request_id,)).fetchone()
    assert entry is not None and entry[0] not in approvals.WAITING, entry
    row = audit.get(conn, request_id)
    assert row["error"] and "not sent" in row["error"] and row["outcome_hash"] is not None
    assert audit.verify(conn, audit.chain_key(conn, Seal(tmp_path)), Seal(tmp_path).anchor()).broken_id is None
