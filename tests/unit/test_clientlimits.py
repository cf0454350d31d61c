"""`limits:`: read from the config with located mistakes, and the connection table that applies it."""

from __future__ import annotations

from pathlib import Path

import pytest

from goex_proxy.config import load_config
from goex_proxy.errors import ConfigError
from goex_proxy.net.clientlimits import ClientLimits, MiB, format_size, parse_size
from goex_proxy.net.conntable import ConnectionTable

ROOT = Path(__file__).parent.parent.parent


def config(tmp_path: Path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text("version: 1\n" + text)
    return load_config(path)


def test_the_example_config_spells_out_the_defaults() -> None:
    """config.example.yaml shows every `limits:` key with its default value."""
    limits = load_config(ROOT / "config.example.yaml").limits
    assert limits == ClientLimits(hosts=limits.hosts)
    assert [h.host.pattern for h in limits.hosts] == ["**.s3.amazonaws.com"]


def test_limits_are_read_with_units_and_per_host_caps(tmp_path: Path) -> None:
    limits = config(tmp_path, """limits:
  max_request_body: 1MiB
  max_response_body: 2097152
  max_header_bytes: 16KiB
  hosts:
    "*.uploads.example": {max_request_body: 1GiB}
    slack.com: {max_response_body: 8MiB}
  max_connections: 500
  max_connections_per_agent: 10
  max_unidentified_per_address: 5
  header_timeout: 5s
  idle_timeout: 1m
  http2_max_streams: 50
  http2_max_resets: {count: 30, per: 5s}
""").limits
    assert (limits.max_request_body, limits.max_response_body, limits.max_header_bytes) == (MiB, 2 * MiB, 16 << 10)
    assert limits.request_body_cap("a.uploads.example") == (1 << 30, "limits.hosts.*.uploads.example.max_request_body")
    assert limits.request_body_cap("slack.com") == (MiB, "limits.max_request_body")
    assert limits.response_body_cap("SLACK.COM.") == (8 * MiB, "limits.hosts.slack.com.max_response_body")
    assert limits.connection_cap() == 500 and limits.max_connections_per_agent == 10
    assert (limits.header_timeout, limits.idle_timeout) == (5.0, 60.0)
    assert (limits.http2_max_streams, limits.http2_max_resets, limits.http2_reset_window) == (50, 30, 5.0)


def test_auto_connections_stay_below_the_open_file_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` leaves room for the proxy's own files and about four descriptors per connection, at most 4,096."""
    import resource

    for soft, expected in ((256, 32), (1024, 224), (1 << 20, 4096), (100, 16)):
        monkeypatch.setattr(resource, "getrlimit", lambda _, soft=soft: (soft, soft))
        assert ClientLimits().connection_cap() == expected


@pytest.mark.parametrize(("text", "message"), [
    ("limits: {max_body: 1MiB}\n", "unknown key 'max_body' in 'limits'"),
    ("limits: {max_request_body: 32MB}\n", "'limits.max_request_body' must be a size like"),
    ("limits: {max_header_bytes: 0}\n", "'limits.max_header_bytes' must be a size like"),
    ("limits: {max_connections: lots}\n", "'limits.max_connections' must be auto or a whole number"),
    ("limits: {max_connections_per_agent: -1}\n", "'limits.max_connections_per_agent' must be a whole number"),
    ("limits: {header_timeout: 30}\n", "'limits.header_timeout' must be a duration"),
    ("limits: {http2_max_resets: 100}\n", "'limits.http2_max_resets' must be {count: N, per: DURATION}"),
    ("limits: {hosts: {'a/b': {max_request_body: 1MiB}}}\n", "'limits.hosts' key 'a/b' must be a host name"),
    ("limits: {hosts: {a.example: {max_body: 1MiB}}}\n", "unknown key 'max_body' in 'limits.hosts.a.example'"),
    ("limits: {hosts: {a.example: {max_request_body: big}}}\n", "'limits.hosts.a.example.max_request_body' must be"),
    # taken before, each crashed every HTTP/2 connection in mitmproxy as it sent its settings (the client hung)
    ("limits: {http2_max_streams: 4294967296}\n", "'limits.http2_max_streams' must be at most 4294967295 (HTTP/2"),
    ("limits: {max_header_bytes: 8GiB}\n", "'limits.max_header_bytes' must be at most 4294967295 (HTTP/2"),
])
def test_mistakes_are_located(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(tmp_path, text)
    assert any(message in str(p) for p in err.value.problems), err.value.problems


def test_sizes_read_and_write_in_binary_units() -> None:
    assert [parse_size(v) for v in (512, "512", "64KiB", "32 MiB", "1gib")] == [512, 512, 64 << 10, 32 << 20, 1 << 30]
    assert [format_size(v) for v in (32 << 20, 64 << 10, 1 << 30, 1000)] == ["32 MiB", "64 KiB", "1 GiB", "1,000 bytes"]
    for bad in ("", "1.5MiB", "-1", True, "10 MB"):
        with pytest.raises(ValueError):
            parse_size(bad)


def table(total: int = 100, **limits: object) -> ConnectionTable:
    return ConnectionTable(ClientLimits(**limits), total)  # type: ignore[arg-type]


def test_silent_connections_of_one_address_make_room_by_closing_their_oldest() -> None:
    t = table(max_unidentified_per_address=2)
    assert t.open("a1", "10.0.0.1", 0).evict == ()
    assert t.open("a2", "10.0.0.1", 0).evict == ()
    assert t.open("b1", "10.0.0.2", 0).evict == ()
    assert t.open("a3", "10.0.0.1", 0).evict == ("a1",)
    t.identify("a2", "bot")  # an identified connection no longer counts for its address
    assert t.open("a4", "10.0.0.1", 0).evict == ()
    assert set(t.conns) == {"a2", "a3", "b1", "a4"}


def test_past_the_total_the_oldest_silent_connection_goes_and_identified_ones_are_kept() -> None:
    t = table(total=2)
    t.open("x", "10.0.0.1", 0)
    t.open("y", "10.0.0.2", 0)
    t.identify("x", "bot")
    assert t.open("z", "10.0.0.3", 0).evict == ("y",)
    t.identify("z", "other")
    refused = t.open("w", "10.0.0.4", 0)
    assert not refused.admitted and "limits.max_connections is 2" in refused.why
    assert set(t.conns) == {"x", "z"}


def test_an_agent_at_its_cap_is_refused_until_one_of_its_connections_closes() -> None:
    t = table(max_connections_per_agent=2)
    for key in "abc":
        t.open(key, "127.0.0.1", 0)
    assert t.identify("a", "bot") and t.identify("b", "bot")
    assert not t.identify("c", "bot")
    assert t.identify("c", "other")
    t.close("a")
    t.open("d", "127.0.0.1", 0)
    assert t.identify("d", "bot") and t.per_agent == {"bot": 2, "other": 1}


def test_timeouts_run_only_while_nothing_is_in_flight() -> None:
    t = table(header_timeout=30.0, idle_timeout=120.0)
    t.open("new", "127.0.0.1", 0)
    t.open("busy", "127.0.0.1", 0)
    t.open("idle", "127.0.0.1", 0)
    t.begin("busy", "f1")
    t.begin("idle", "f2")
    t.end("idle", "f2", 10)
    assert [k for k, _ in t.overdue(29)] == []
    assert t.overdue(30) == [("new", "without a complete request head for 30s (limits.header_timeout)")]
    assert t.overdue(130) == [("new", "without a complete request head for 30s (limits.header_timeout)"),
                              ("idle", "idle between requests for 2m (limits.idle_timeout)")]
    t.touch("idle", 100)
    t.awaiting("new", 100)  # a tunnel opened: its first request is due within the header timeout again
    assert t.overdue(129) == []
