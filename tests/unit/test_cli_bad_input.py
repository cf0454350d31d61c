"""Bad input to the command line (damaged state files, edited audit rows, malformed ids): one line saying what is
wrong and where, a non-zero exit, never a traceback or an internal error (each case was found by trying it)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from goex_proxy import cli
from goex_proxy.audit.seal import Seal
from goex_proxy.audit.writer import AuditWriter
from goex_proxy.ids import RequestIds

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
        writer.record_outcome(request_id, {"status": 200, "resp_headers": "[]", "resp_body": b"{}",
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
