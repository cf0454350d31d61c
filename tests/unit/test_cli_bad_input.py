"""Bad input to the command line (damaged state files, edited audit rows, malformed ids): one line saying what is
wrong and where, a non-zero exit, never a traceback or an internal error (each case was found by trying it)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from goex_proxy import cli
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.ids import RequestIds, packed
from tests.conftest import free_port

NOW = time.time()


def _state(tmp_path: Path) -> tuple[Path, list[str]]:
    """A config and audit log with two recorded requests (their ids)."""
    config = tmp_path / "config.yaml"
    config.write_text("version: 1\nagents: {bot: {token: bot-token-4242}}\n", encoding="utf-8")
    ids = RequestIds()
    writer = AuditWriter(tmp_path / "audit.db", Seal(tmp_path))
    made = []
    for i, method in enumerate(("GET", "POST")):
        request_id = ids.new(NOW - 60 + i)
        writer.record_intent({"id": request_id, "ts": NOW - 60 + i, "agent": "bot", "method": method,
                              "scheme": "https", "host": "example.com", "port": 443, "path": "/x",
                              "url": "https://example.com/x", "req_headers": "[]", "decision": "allow"}).result(5)
        writer.record_outcome(request_id, {"status": 201 if method == "POST" else 200, "resp_body": b'{"id": "a1"}',
                                           "resp_headers": '[["Content-Type", "application/json"]]',
                                           "ended": NOW - 59 + i, "duration_ms": 3.0}).result(5)
        made.append(request_id)
    writer.close()
    return config, made


def _run(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli.cli, [*args, "--config", str(config)])


def _one_line(result: Result, exit_code: int, *wanted: str) -> None:
    """The command failed with `exit_code` and said so in one line holding each of `wanted`."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == exit_code and len(lines) == 1, result.output
    assert "internal error" not in lines[0] and all(w in lines[0] for w in wanted), lines[0]


@pytest.mark.parametrize(("anchor", "args"), [
    ('{"seq": 1e400, "id": "X", "hash": "%s"}' % ("a" * 64), ("log", "verify")),
    ("[" * 100_000, ("log", "verify")),
    ('{"seq": 1e400, "id": "X", "hash": "%s"}' % ("a" * 64), ("log", "prune", "--older-than", "1s")),
])
def test_a_malformed_anchor_is_named_in_one_line(tmp_path: Path, anchor: str, args: tuple[str, ...]) -> None:
    """A seq past what an integer holds (OverflowError) or JSON nested past Python's limit (RecursionError) in the
    anchor ended `log verify` and `log prune` as internal errors."""
    config, _ = _state(tmp_path)
    (tmp_path / "audit.anchor").write_text(anchor, encoding="utf-8")
    _one_line(_run(config, *args), 2, f"{tmp_path / 'audit.anchor'} is not an audit anchor")


def test_a_malformed_anchor_given_to_verify_is_named_in_one_line(tmp_path: Path) -> None:
    config, _ = _state(tmp_path)
    kept = tmp_path / "kept.json"
    kept.write_text('{"seq": 1e999, "id": "X", "hash": "%s"}' % ("a" * 64), encoding="utf-8")
    _one_line(_run(config, "log", "verify", "--anchor", str(kept)), 2, f"{kept} is not an audit anchor")


def test_a_copy_of_the_state_directorys_anchor_given_to_verify_is_read_as_one(tmp_path: Path) -> None:
    """`audit.anchor` was one JSON line, as `log anchor` prints, so a copy of it was an anchor `log verify --anchor`
    took; a file of slots (written since) was refused as no anchor. Its newest whole slot is read."""
    config, _ = _state(tmp_path)
    kept = tmp_path / "kept-anchor"
    kept.write_bytes((tmp_path / "audit.anchor").read_bytes())
    result = _run(config, "log", "verify", "--anchor", str(kept))
    assert result.exit_code == 0 and f"the anchor in {kept}" in result.output, result.output


DAMAGED_STATE = {
    "anchor not JSON": ("audit.anchor", "file", "audit.anchor is not an audit anchor"),
    "anchor a directory": ("audit.anchor", "dir", "audit.anchor is not a regular file"),
    "anchor lock a directory": (".audit.anchor.lock", "dir", "cannot open the audit anchor's lock"),
    "CA not PEM": ("mitmproxy-ca.pem", "file", "mitmproxy-ca.pem does not hold a private key and its certificate"),
    "CA a directory": ("mitmproxy-ca.pem", "dir", "cannot read the CA"),
}


def _damage(state: Path, name: str, kind: str) -> None:
    path = state / name
    if path.exists():
        path.unlink()
    if kind == "dir":
        path.mkdir()
    else:
        path.write_bytes(b"junk\xff")


@pytest.mark.parametrize("case", sorted(DAMAGED_STATE))
def test_run_refuses_a_damaged_seal_or_ca_in_one_line(tmp_path: Path, case: str) -> None:
    """`run` checked the audit database before starting, but not the anchor, its lock or the CA: it started, and a
    damaged anchor stopped it with mitmproxy's dump of every error logged during startup (exit 1), a damaged CA with
    mitmproxy's traceback. Now one line naming the file, exit 2, and nothing listens."""
    config, _ = _state(tmp_path)
    config.write_text(config.read_text(encoding="utf-8") + f"listen: 127.0.0.1:{free_port()}\n", encoding="utf-8")
    name, kind, message = DAMAGED_STATE[case]
    _damage(tmp_path, name, kind)
    ran = subprocess.run([sys.executable, "-m", "goex_proxy", "run", "--no-console", "--workers", "1", "--config",
                          str(config)], capture_output=True, text=True, timeout=60)
    lines = ran.stderr.strip().splitlines()
    assert ran.returncode == 2 and len(lines) == 1 and message in lines[0], ran.stderr
    assert "Traceback" not in ran.stderr + ran.stdout and not ran.stdout, ran.stdout


@pytest.mark.parametrize("case", sorted(DAMAGED_STATE))
def test_undo_refuses_a_damaged_seal_or_ca_in_one_line(tmp_path: Path, case: str) -> None:
    """undo's in-process proxy met the same errors as it started: their dump, then an internal error (exit 70)."""
    config, (_, created) = _state(tmp_path)
    name, kind, message = DAMAGED_STATE[case]
    _damage(tmp_path, name, kind)
    result = CliRunner().invoke(cli.cli, ["undo", created, "--yes", "--config", str(config)])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output


def _edit(tmp_path: Path, sql: str, *params: object) -> None:
    """Edit the audit log as someone with the file could (such a row fails `log verify`; reading it must not fail)."""
    import sqlite3

    with closing(sqlite3.connect(tmp_path / "audit.db")) as conn, conn:
        conn.execute(sql, params)


@pytest.mark.parametrize("ts", ["yesterday", 1e300, -1e300])
def test_a_recorded_time_that_is_no_time_is_shown_as_such(tmp_path: Path, ts: object) -> None:
    """A ts that is text or past the year 9999 ended `log`, `log --json`, `show` (and `secrets list`, with a
    credential's last use) with a TypeError or OverflowError as an internal error."""
    config, (first, _) = _state(tmp_path)
    _edit(tmp_path, "UPDATE requests SET ts = ? WHERE id = ?", ts, packed(first))
    listed = _run(config, "log")
    assert listed.exit_code == 0 and f"{first}  (not a time)" in listed.output, listed.output
    as_json = _run(config, "log", "--json")
    assert as_json.exit_code == 0 and '"time": null' in as_json.output, as_json.output
    shown = _run(config, "show", first)
    assert shown.exit_code == 0 and shown.output.startswith(f"{first}  (not a time)  agent bot"), shown.output


@pytest.mark.parametrize("column", ["port", "scheme", "duration_ms", "method", "decision"])
def test_log_json_gives_a_value_edited_to_bytes_as_text(tmp_path: Path, column: str) -> None:
    """The row layout keeps zero-length blobs in many columns (values left out) and two-byte ones (a loopback
    client): one edited to other bytes reads back as bytes, and `log --json` ended in an internal error (exit 70) on
    it where `log` and `show --json` give it."""
    config, (first, _) = _state(tmp_path)
    _edit(tmp_path, f"UPDATE requests SET {column} = ? WHERE id = ?", b"\x01x\xff", packed(first))
    as_json = _run(config, "log", "--json")
    assert as_json.exit_code == 0, as_json.output
    listed = [json.loads(line) for line in as_json.output.splitlines()]
    assert [r[column] for r in listed if r["id"] == first] == ["\x01x\ufffd"]


def test_show_gives_an_outcome_without_its_duration(tmp_path: Path) -> None:
    """A duration edited away (NULL; NaN, which SQLite stores as NULL) passed show's check of what it reads (a
    number or none) and ended it with an internal error as it formatted None as a number."""
    config, (first, _) = _state(tmp_path)
    _edit(tmp_path, "UPDATE requests SET duration_ms = NULL WHERE id = ?", packed(first))
    shown = _run(config, "show", first)
    assert shown.exit_code == 0 and "\n200\n" in shown.output, shown.output


@pytest.mark.parametrize(("column", "value", "said"), [
    ("approval", "{not json", "the approval of row {id} is not JSON"),
    ("approval", "[1]", "the approval of row {id} is not a JSON object"),
    ("charged", "[unterminated", "the charged of row {id} is not JSON"),
    ("row_images", b'{"rows": []}', "the row_images of row {id} are not a JSON object naming its table and rows"),
    ("duration_ms", "slow", "the duration_ms of row {id} is not a number"),
    ("resp_body_size", "big", "the resp_body_size of row {id} is not a number"),
])
def test_show_names_a_damaged_value_before_printing_anything(tmp_path: Path, column: str, value: object,
                                                             said: str) -> None:
    """A value not as goex-proxy writes it ended `show` with an internal error (JSONDecodeError, KeyError, ValueError),
    part of the row already printed; now one line naming the row and its field, and nothing else."""
    config, (_, created) = _state(tmp_path)
    _edit(tmp_path, f"UPDATE requests SET {column} = ? WHERE id = ?", value, packed(created))
    _one_line(_run(config, "show", created), 2, "the audit log is damaged: " + said.format(id=created),
              "goex-proxy log verify")


def test_show_json_names_a_column_that_is_not_json_and_gives_the_rest_as_stored(tmp_path: Path) -> None:
    """`show --json` decodes the headers and charges it gives as JSON (a JSONDecodeError ended it as an internal
    error); what it does not decode it gives as stored, damaged or not."""
    config, (_, created) = _state(tmp_path)
    _edit(tmp_path, "UPDATE requests SET duration_ms = 'slow', approval = '[1]' WHERE id = ?", packed(created))
    shown = _run(config, "show", created, "--json")
    assert shown.exit_code == 0 and '"duration_ms": "slow"' in shown.output, shown.output
    _edit(tmp_path, "UPDATE requests SET charged = '[unterminated' WHERE id = ?", packed(created))
    _one_line(_run(config, "show", created, "--json"), 2,
              f"the audit log is damaged: the charged of row {created} is not JSON")


@pytest.mark.parametrize("verb", ["keep", "undo", "diff"])
@pytest.mark.parametrize("run_id", ["0" * 300, "../..", "a/b"])
def test_a_file_run_id_no_run_has_is_not_found(tmp_path: Path, verb: str, run_id: str) -> None:
    """`files keep` and `files undo` made a path of the id before looking it up: one longer than a file name may be
    ended them with an OSError as an internal error."""
    config, _ = _state(tmp_path)
    (tmp_path / "runs").mkdir()  # as the first jailed run that changed files leaves it
    _one_line(_run(config, "files", verb, run_id), 1, f"no file run {run_id!r}")


@pytest.mark.parametrize(("key", "args", "code"), [("state_dir", ("log",), 2), ("audit: {db", ("run", "--workers", "1"), 2),
                                                   ("upstream: {extra_ca", ("policy", "check"), 1)])
def test_a_nul_in_a_config_path_is_one_located_line(tmp_path: Path, key: str, args: tuple[str, ...], code: int) -> None:
    """YAML's "\\0" escape put a NUL in a path, which ended each command with a ValueError as an internal error
    (`policy check` says what it found with exit 1, as for any problem)."""
    config = tmp_path / "config.yaml"
    value = '"a\\0b"' if key == "state_dir" else ('"a\\0b"}' if "db" in key else '["a\\0b"]}')
    config.write_text(f"version: 1\n{key}: {value}\n", encoding="utf-8")
    _one_line(_run(config, *args), code, f"{config}:2:", "holds a NUL character")


def test_secrets_set_refuses_a_line_break_in_a_secret_a_header_carries(tmp_path: Path) -> None:
    """Such a secret was stored, and then sent upstream as a header line of its own (the proxy now refuses to inject
    it): said when it is set instead, the vault left as it was."""
    from goex_proxy.credentials.vault import Vault, new_key_file

    config = tmp_path / "config.yaml"
    config.write_text("version: 1\ncredentials:\n  h: {secret: h, hosts: [h.example], inject: {header: X-Key}}\n"
                      "  q: {secret: q, hosts: [q.example], inject: {query: key}}\n", encoding="utf-8")
    new_key_file(tmp_path / "vault.key")
    result = CliRunner().invoke(cli.cli, ["secrets", "set", "h", "--config", str(config)],
                                input="tok-12345678\r\nX-Evil: 1\n")
    _one_line(result, 2, "refusing to store 'h': it holds a line break or NUL")
    assert not (tmp_path / "vault.json").exists()
    kept = CliRunner().invoke(cli.cli, ["secrets", "set", "q", "--config", str(config)], input="two\nlines-1234\n")
    assert kept.exit_code == 0 and Vault(tmp_path).get("q") == "two\nlines-1234"  # a query parameter is encoded


@pytest.mark.parametrize("args", [("log",), ("files", "list"), ("review",)])
def test_a_limit_past_what_sqlite_holds_is_refused_as_an_option(tmp_path: Path, args: tuple[str, ...]) -> None:
    """`--limit 99999999999999999999` reached SQLite, whose "datatype mismatch" was said as an audit database that
    cannot be read; the largest limit SQLite holds still lists every row."""
    config, made = _state(tmp_path)
    refused = _run(config, *args, "--limit", str(2**63))
    assert refused.exit_code == 2 and f"{2**63} is not in the range 1<=x<=" in refused.output, refused.output
    assert "audit database" not in refused.output
    listed = _run(config, *args, "--limit", str(2**63 - 1))
    assert listed.exit_code == 0, listed.output
    assert args != ("log",) or all(i in listed.output for i in made)
