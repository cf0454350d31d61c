"""Fuzzed configs, policies and undo packs: whatever the bytes, the answer is `file:line:col: message` lines, never a
traceback."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from goex_proxy.config import config_problems
from goex_proxy.policy.load import check_policy_text
from goex_proxy.undo.rules import check_pack_text

ROOT = Path(__file__).parents[2]
CONFIGS = [ROOT / "config.example.yaml"]
POLICIES = sorted((ROOT / "policies").glob("*.yaml"))
PACKS = sorted((ROOT / "policies" / "undo").glob("*.yaml"))
#: What a mutation inserts: YAML's own syntax, tags that need a well-formed value, and characters YAML forbids.
PIECES = [":", "- ", "{", "}", "[", "]", ",", "&a ", "*a", "!!int ", "!!timestamp ", "!!float ", "!!binary ", "!!set ",
          "!!map ", "!!seq ", "? ", "|", ">", "'", '"', "\n", "  ", "#", "\t", "\x00", "\x1b", "\ufeff", "%", "@", "`",
          "~", "null", "true", "0x", "1e9999", "<<: *a", "${", "}}", "**", "{a,b}", "when: ", "read: ", "undo: ",
          "guard: ", "match: ", "limit: ", "per: ", "-1", "999999999999999999999", "\\", "é", "\U0001f600"]
#: Derandomized, so that the suite gives the same verdict every run; explore more locally with a new seed
#: (`--hypothesis-seed=N`) or more examples.
#: A failing case is a whole file: Hypothesis warns that its repr is large, and the warning (an error here) took the
#: failure's place in the report.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")
SETTINGS = settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, seeds: list[Path]) -> str:
    text = draw(st.sampled_from(seeds)).read_text(encoding="utf-8")
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate line"]))
        piece = draw(st.sampled_from(PIECES) | st.text(max_size=3))
        if kind == "insert":
            text = text[:at] + piece + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 20)):]
        elif kind == "replace":
            text = text[:at] + piece + text[at + len(piece):]
        else:
            lines = text.splitlines(keepends=True) or [""]
            i = draw(st.integers(0, len(lines) - 1))
            text = "".join(lines[: i + 1] + lines[i:])
    return text


def assert_located(problems: list, file: str) -> None:
    for p in problems:
        line = str(p)
        assert line.startswith(f"{file}:{p.line}:{p.col}: ") and "\n" not in line, line


@SETTINGS
@given(mutated(POLICIES))
def test_a_mutated_policy_is_a_list_of_located_problems(text: str) -> None:
    """Any mutation of a shipped policy is read or reported, one located line per problem."""
    _, problems = check_policy_text(text, "policy.yaml")
    assert_located(problems, "policy.yaml")


@SETTINGS
@given(mutated(PACKS))
def test_a_mutated_undo_pack_is_a_list_of_located_problems(text: str) -> None:
    """Any mutation of a shipped undo pack is read or reported, one located line per problem."""
    _, problems = check_pack_text(text, "pack.yaml")
    assert_located(problems, "pack.yaml")


@SETTINGS
@given(mutated(CONFIGS))
def test_a_mutated_config_is_a_list_of_located_problems(text: str) -> None:
    """Any mutation of config.example.yaml is read or reported, one located line per problem."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        assert_located(config_problems(path), str(path))
