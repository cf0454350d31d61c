"""The reversibility census: every documented mutating operation in each shipped pack's scope has a sample exchange,
each pack covers at least 80% of them with a class computed by its own rules, and the README's table is the
command's output (so neither can drift from the packs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from goex_proxy.cli import cli
from goex_proxy.presets import undo_dir, undo_names
from goex_proxy.undo import catalog
from goex_proxy.undo.plan import plan, preimage_read
from goex_proxy.undo.rules import load_packs

README = Path(__file__).resolve().parents[2] / "README.md"
OPERATIONS = catalog.load_catalogs(catalog.catalog_files())
ROWS = catalog.census(OPERATIONS)
VENDOR_PACKS = sorted(n for n in undo_names() if n != "rest")


def test_every_vendor_pack_has_a_catalog_and_covers_at_least_80_percent() -> None:
    shares = {s.pack: s for s in catalog.shares(ROWS)}
    assert sorted(shares) == VENDOR_PACKS
    for pack, share in shares.items():
        assert share.documented >= 20, pack
        assert share.share >= 0.8, (pack, share.not_covered)


@pytest.mark.parametrize("row", [r for r in ROWS if r.covered], ids=lambda r: f"{r.pack}:{r.label}")
def test_a_covered_operation_is_planned_or_says_why_not(row: catalog.Row) -> None:
    """Covered means the rule plans the documented exchange (guarded), or is irreversible with a reason."""
    assert row.fidelity in catalog.COVERED
    assert row.fidelity != "irreversible" or row.reason


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda o: f"{o.pack}:{o.name}:{o.case}")
def test_a_sample_has_a_pre_image_exactly_where_the_pack_reads_one(operation: catalog.Operation) -> None:
    """The catalog says what the proxy would have read before the call, no more: a sample with a pre-image the rules
    never read (or without one they need) would classify something that cannot happen."""
    read = preimage_read(load_packs([catalog.pack_path(operation.pack)]), operation.exchange)
    assert (read is not None) == (operation.exchange.pre_status is not None), read


def test_the_plans_of_the_samples_stay_on_their_origin_and_name_the_resource_from_the_request() -> None:
    """No compensation of a covered sample goes anywhere but the request's own origin (a URL built from a field the
    answer may leave out would have planned nothing)."""
    packs = {name: load_packs([catalog.pack_path(name)]) for name in VENDOR_PACKS}
    for op in OPERATIONS:
        p = plan("R", op.exchange, packs[op.pack])
        origin = op.exchange.url.split("/")[2]
        assert all(s.url.split("/")[2] == origin for s in (*p.steps, *([p.guard] if p.guard else []))), op.name


def test_the_readme_table_is_the_command_output() -> None:
    result = CliRunner().invoke(cli, ["undo", "catalog", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    summaries = [line for line in lines if "documented" in line]
    assert [s["pack"] for s in summaries] == VENDOR_PACKS
    expected = catalog.markdown(catalog.Share(s["pack"], s["documented"], s["covered"], tuple(s["not_covered"]),
                                              s["irreversible"]) for s in summaries)
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- undo catalog: generated[^\n]*-->\n(.*?)<!-- undo catalog: end -->", text, re.S)
    assert found is not None, "README.md has lost its undo catalog table"
    assert found.group(1) == expected, (
        "README.md's undo catalog table is stale; regenerate it with: python -c \"from goex_proxy.undo import "
        "catalog; print(catalog.markdown(catalog.shares(catalog.census(catalog.load_catalogs("
        "catalog.catalog_files())))), end='')\"")
    rows = [line for line in lines if "operation" in line]
    assert len(rows) == len(ROWS) and all(line["class"] for line in rows)


def test_the_table_names_each_operation_its_class_and_rule() -> None:
    result = CliRunner().invoke(cli, ["undo", "catalog"])
    assert result.exit_code == 0, result.output
    assert re.search(r"github\s+Create or update file contents \(a new file\)\s+exact\s+github/create a file", result.output)
    assert re.search(r"slack\s+conversations\.inviteShared\s+not covered\s+-", result.output)
    assert re.search(r"gmail\s+23\s+23\s+100%", result.output)


def test_catalog_takes_no_other_option() -> None:
    result = CliRunner().invoke(cli, ["undo", "catalog", "--dry-run"])
    assert result.exit_code == 2 and "'undo catalog' takes only --json" in result.output


def test_a_catalog_mistake_is_located(tmp_path: Path) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text("version: 1\npack: x\noperations:\n  - name: a\n    doc: http://example.com\n"
                   "    request: {method: GET, url: 'https://x.example/'}\n    response: {status: 200, json: {}, body: x}\n")
    _, _, problems = catalog.read_catalog(bad.read_text(), str(bad))
    assert [str(p).split(": ", 1)[1] for p in problems] == [
        "'operations[0].doc' must be the https:// address of the vendor's page",
        "'operations[0].response' may have one of 'json', 'form' or 'body', not several"]


def test_policy_check_of_the_shipped_packs_and_presets_prints_no_warning(tmp_path: Path) -> None:
    """Every shipped pack checks clean on its own, and a config using every shipped preset with every shipped pack
    (the default) has no allow rule that lets an irreversible call through without a limit."""
    packs = [str(undo_dir() / f"{n}.yaml") for n in undo_names()]
    checked = CliRunner().invoke(cli, ["policy", "check", *packs])
    assert checked.exit_code == 0 and "warning" not in checked.output, checked.output
    presets = sorted(p.stem for p in undo_dir().parent.glob("*.yaml"))
    config = tmp_path / "config.yaml"
    config.write_text("version: 1\nagents: {bot: {token: t0ken-of-the-bot}}\npolicies: ["
                      + ", ".join(f"builtin:{p}" for p in presets) + "]\n")
    checked = CliRunner().invoke(cli, ["policy", "check", "--config", str(config)])
    assert checked.exit_code == 0 and "warning" not in checked.output, checked.output
    assert f"{len(presets) + len(packs)} files" in checked.output


def test_a_reader_that_stops_early_ends_the_command_quietly() -> None:
    """`goex-proxy undo catalog --json | head -1`: no 'internal error' when head closes the pipe."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "goex_proxy", "undo", "catalog", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    errors = proc.stderr.read()
    assert json.loads(first)["pack"] and proc.wait(30) in (0, 141) and errors == b"", errors


@pytest.mark.parametrize("version", ["true", "null", "2"])
def test_an_undo_pack_or_catalog_whose_version_is_not_1_is_one_located_line(version: str) -> None:
    """`version: true` was taken for 1 in undo packs and catalogs (True == 1 in Python), as it was in configs and
    policies."""
    from goex_proxy.undo.rules import check_pack_text

    _, problems = check_pack_text(f"version: {version}\nname: p\nrules: []\n", "p.yaml")
    assert [str(p) for p in problems] == [f"p.yaml:1:10: 'version' must be 1 (got {_yaml_value(version)!r})"]
    _, _, problems = catalog.read_catalog(f"version: {version}\npack: p\noperations: []\n", "c.yaml")
    assert [str(p) for p in problems] == [f"c.yaml:1:10: 'version' must be 1 (got {_yaml_value(version)!r})"]


def _yaml_value(text: str) -> object:
    return {"true": True, "null": None}.get(text, int(text) if text.isdigit() else text)
