"""The config file: the shipped example is valid, and mistakes are reported where they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from goex_proxy.audit.seal import Seal
from goex_proxy.config import Config, load_config
from goex_proxy.errors import ConfigError

ROOT = Path(__file__).parent.parent.parent


def test_example_config_is_valid() -> None:
    """config.example.yaml, which documents every key, loads without a problem."""
    config = load_config(ROOT / "config.example.yaml")
    assert set(config.credentials) == {"slack-bot", "github", "gmail", "aws"} and "slackbot" in config.agents
    gmail = config.credentials["gmail"].inject.oauth2
    assert gmail is not None and gmail.provider.token_url == "https://oauth2.googleapis.com/token"
    assert config.credentials["aws"].inject.kind == "aws_sigv4"


@pytest.mark.parametrize(("text", "message"), [
    ("credentials:\n  x: {secret: s, inject: {query: key}}\n", "must bind the secret to at least one host"),
    ("credentials:\n  x: {secret: {value: s}, hosts: [a.example], inject: {query: k}}\n", "unknown key 'value'"),
    ("credentials:\n  x: {secret: s, hosts: [a.example], inject: {header: H, value: nothing}}\n", "must contain {secret}"),
    ("credentials:\n  x: {secret: s, hosts: [a.example], inject: {query: k, basic: {}}}\n", "exactly one of"),
    ("credentials:\n  x: {secret: s, hosts: [a.example], inject: {query: k}, env: [1bad]}\n", "not an environment"),
    ("listen: 8080\n", "'listen' must be HOST:PORT"),
    ("credentials:\n  x: {secret: s, hosts: [a.example], inject: {oauth2: {provider: okta, client_id: c}}}\n",
     "must be one of google, slack, github, generic"),
    ("credentials:\n  x: {secret: s, hosts: [a.example], inject: {oauth2: {provider: generic, client_id: c}}}\n",
     "needs token_url for the generic provider"),
    ("credentials:\n  x: {secret: s, hosts: [a.example], inject: {oauth2: {provider: google, client_id: c, "
     "token_url: 'http://a.example/t'}}}\n", "must be an https:// URL"),
    ("credentials:\n  x: {secret: {env: T}, hosts: [a.example], inject: {oauth2: {provider: google, client_id: c}}}\n",
     "must name a vault secret"),
    ("credentials:\n  x: {secret: s, hosts: [a.example], inject: {oauth2: {provider: google}}}\n", "client_id"),
    ("credentials:\n  x: {secret: s, hosts: [a.example], inject: {oauth2: {provider: google, client_id: c}}}\n"
     "  y: {secret: s, hosts: [b.example], inject: {oauth2: {provider: google, client_id: c}}}\n",
     "already holds the tokens of 'x'"),
    ("credentials:\n  x: {secret: s, hosts: [a.example], inject: {aws_sigv4: {region: x}}}\n", "unknown key 'region'"),
    ("upstream: {routes: {slack.com: ftp://x}}\n", "must be a URL like http://127.0.0.1:9001"),
    ("llm: {model: m}\n", "'llm' is missing the required key 'base_url'"),
    ("llm: {base_url: api.openai.com, model: m}\n", "'llm.base_url' must be an http(s) URL"),
    ("llm: {base_url: 'http://x/v1', model: m, api_key: sk-proj-123}\n", "'llm.api_key' looks like a key itself"),
    ("llm: {base_url: 'http://x/v1', model: m, timeout: 0s}\n", "'llm.timeout' must be a duration"),
    ("sandbox: {hide: 5}\n", "'sandbox.hide' must be a string or a list of strings"),
    ("sandbox: {pass_env: [OK, 'no good']}\n", "'sandbox.pass_env' entry 'no good' is not a variable name"),
    ("sandbox: {mounts: []}\n", "unknown key 'mounts'"),
    ("sandbox: {max_processes: 0}\n", "'sandbox.max_processes' must be a whole number from 1 to 4194304"),
    ("sandbox: {max_processes: 4194305}\n", "'sandbox.max_processes' must be a whole number from 1 to 4194304"),
    ("sandbox: {max_processes: 1000000000000000000000000000000}\n", "'sandbox.max_processes' must be a whole number"),
    ("agents: {bot: {token: abc}}\n", "'agents.bot.token' is 3 characters; use at least 12 random ones"),
    # found by trying wrong values for every key (each had been taken without a word, or ended in an internal error)
    ('audit: {db: "a\\0b"}\n', "'a\\x00b' holds a NUL character"),
    ('state_dir: "\\0"\n', "holds a NUL character"),
    ("upstream: {extra_ca: [" + "x" * 300 + "]}\n", "cannot be read: File name too long"),
    ("upstream: {extra_ca: [config.yaml]}\n", "config.yaml' holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
    ("upstream: {extra_ca: [/bin/sh]}\n", "' is not text (byte "),  # an executable: not UTF-8
    ("credentials:\n  x: {secret: {env: 5}, hosts: [a.example], inject: {query: k}}\n",
     "'credentials.x.secret.env' must name an environment variable"),
    ("llm: {base_url: 'http://x/v1', model: m, api_key: {env: [K]}}\n", "'llm.api_key.env' must name an environment"),
    ('credentials:\n  x: {secret: s, hosts: [a.example], inject: {header: "X\\nY"}}\n',
     "'credentials.x.inject.header' must be a header name"),
    ('credentials:\n  x: {secret: s, hosts: [a.example], inject: {header: X, value: "{secret}\\r\\nX-Evil: 1"}}\n',
     "'credentials.x.inject.value' must not hold a CR, LF or NUL"),
    ("credentials:\n  x: {secret: s, hosts: [a.example], inject: {basic: {username: [u]}}}\n",
     "'credentials.x.inject.basic.username' must be a string (got a list)"),
    ("credentials:\n  x: {secret: s, hosts: [a.example], inject: {basic: {username: 'a:b'}}}\n",
     "'credentials.x.inject.basic.username' must not hold ':'"),
    ("credentials:\n  x: {secret: s, hosts: [a.example], inject: {query: ''}}\n",
     "'credentials.x.inject.query' must name the query parameter"),
    ("credentials:\n  x: {secret: s, hosts: [a.example], methods: [], inject: {query: k}}\n",
     "'credentials.x.methods' must not be empty (leave it out to bind the secret to every method)"),
    ("credentials:\n  x: {secret: s, hosts: [a.example], paths: [], inject: {query: k}}\n",
     "'credentials.x.paths' must not be empty"),
])
def test_mistakes_are_located(tmp_path: Path, text: str, message: str) -> None:
    """Each mistake is an error with the file and line, naming what is wrong."""
    path = tmp_path / "config.yaml"
    path.write_text("version: 1\n" + text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert any(message in str(p) and str(p).startswith(f"{path}:") for p in err.value.problems), err.value.problems


def test_version_true_is_not_version_1(tmp_path: Path) -> None:
    """`version: true` was taken for 1 (True == 1 in Python)."""
    path = tmp_path / "config.yaml"
    path.write_text("version: true\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert [str(p) for p in err.value.problems] == [f"{path}:1:10: 'version' must be 1 (got True)"]


@pytest.mark.parametrize(("text", "got"), [("", "got nothing"), ("- a\n- b\n", "got a list"), ("just text\n", "got a string")])
def test_a_config_that_is_not_a_mapping_is_one_located_line(tmp_path: Path, text: str, got: str) -> None:
    """An empty config, or one whose top level is a list, had ended in a traceback."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert [str(p) for p in err.value.problems] == [f"{path}:1:1: 'config' must be a mapping ({got})"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyError("k"), OSError(5, "I/O error"), UnicodeDecodeError(
    "utf-8", b"\xff", 0, 1, "invalid start byte"), AttributeError("no attribute 'x'")])
def test_any_exception_reaching_a_command_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      error: Exception) -> None:
    """The last resort: whatever escapes a command prints one line naming it and where, exit 70, no traceback."""
    from click.testing import CliRunner

    from goex_proxy import cli
    from goex_proxy.cli import logs

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(logs, "load_audit_settings", fail)
    monkeypatch.delenv("GOEX_PROXY_DEBUG", raising=False)
    result = CliRunner().invoke(cli.cli, ["log", "verify", "--config", str(tmp_path / "config.yaml")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 70 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(f"goex-proxy: internal error ({type(error).__name__} at test_config.py:")


def test_cli_contracts_help_flag_limit_and_case_free_ids(tmp_path: Path) -> None:
    """`-h` is a help flag; `log --limit -1` is refused rather than silently meaning all; `show` finds an id typed
    in lower case (the id alphabet is case-free)."""
    from click.testing import CliRunner

    from goex_proxy import cli
    from goex_proxy.audit.seal import Seal
    from goex_proxy.audit.writer import AuditWriter
    from goex_proxy.ids import RequestIds

    runner = CliRunner()
    assert runner.invoke(cli.cli, ["-h"]).exit_code == 0 and "Usage:" in runner.invoke(cli.cli, ["log", "-h"]).output
    config = tmp_path / "config.yaml"
    config.write_text("version: 1\nagents: {bot: {token: bot-token-4242}}\n")
    refused = runner.invoke(cli.cli, ["log", "--limit", "-1", "--config", str(config)])
    assert refused.exit_code == 2 and "-1 is not in the range 1<=x<=" in refused.output
    request_id = RequestIds().new(1_700_000_000.0)
    writer = AuditWriter(tmp_path / "audit.db", Seal(tmp_path))
    writer.record_intent({"id": request_id, "ts": 1_700_000_000.0, "agent": "bot", "method": "GET", "scheme": "https",
                          "host": "example.com", "port": 443, "path": "/", "url": "https://example.com/",
                          "req_headers": '[["Content-Type", "application/json"], ["X-Note", "\\u001b[2Jcleared"]]',
                          "reason": "[bold red]approved by security[/]",
                          "req_body": b'{"text": "' + b"word" * 40 + b'END-OF-A-LONG-LINE"}', "decision": "allow"}
                         ).result(5)
    writer.close()
    shown = runner.invoke(cli.cli, ["show", request_id.lower(), "--json", "--config", str(config)])
    assert shown.exit_code == 0 and request_id in shown.output
    table = runner.invoke(cli.cli, ["show", request_id, "--config", str(config)])
    assert table.exit_code == 0 and "END-OF-A-LONG-LINE" in table.output  # wrapped, not cropped at 80 columns
    # recorded bytes neither restyle the page (rich markup) nor drive the terminal (escape sequences)
    assert "[bold red]approved by security[/]" in table.output and "\x1b" not in table.output
    assert "\\x1b[2Jcleared" in table.output


def test_a_wildcard_listen_address_is_reached_at_its_own_familys_loopback(tmp_path) -> None:
    """`::` may bind IPv6 only: agents are sent to ::1, not to 127.0.0.1 where nothing listens."""
    import dataclasses

    from goex_proxy.sandbox import agentenv

    config = Config(file=tmp_path / "config.yaml", state_dir=tmp_path)
    expected = {"::": "::1", "0.0.0.0": "127.0.0.1", "": "127.0.0.1", "127.0.0.2": "127.0.0.2"}
    for listen, reached in expected.items():
        assert agentenv.proxy_address(dataclasses.replace(config, listen_host=listen))[0] == reached


def test_a_problem_quoting_a_huge_value_stays_a_readable_line(tmp_path: Path) -> None:
    """A value of 100,000 characters was quoted whole: one line of 100 KB. Its middle is now left out, saying how
    much, and the start and the end of the message stay."""
    path = tmp_path / "config.yaml"
    path.write_text("version: 1\nlisten: " + "x" * 100_000 + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    [line] = [str(p) for p in err.value.problems]
    assert line.startswith(f"{path}:2:9: 'listen' must be HOST:PORT like 127.0.0.1:8080 (got 'xxx")
    assert len(line) < 500 and "characters left out)" in line and line.endswith("xxx')"), line


@pytest.mark.parametrize("settings", ["", "state_dir: st\n", "state_dir: /abs/st\naudit: {db: logs/a.db}\n",
                                      "audit: {db: /abs/a.db, max_body_bytes: 0, retention: 90d}\n",
                                      "state_dir: ~/st\naudit: {db: ~/a.db}\n"])
def test_the_audit_settings_read_alone_are_the_configs(tmp_path: Path, settings: str) -> None:
    """`log`, `show` and `log verify` read only `state_dir` and `audit:`; they must find the log and seal exactly
    where `run` writes them (paths relative to the config's folder and the state directory, `~` expanded)."""
    from goex_proxy.configfile import load_audit_settings

    path = tmp_path / "config.yaml"
    path.write_text("version: 1\n" + settings, encoding="utf-8")
    config, alone = load_config(path), load_audit_settings(path)
    assert (alone.state_dir, alone.audit_db, alone.max_body_bytes, alone.retention) == (
        config.state_dir, config.audit_db, config.max_body_bytes, config.retention)
    assert alone.audit_db.is_absolute() and alone.state_dir.is_absolute()


@pytest.mark.parametrize(("text", "message"), [
    ("audti: {db: other.db}\n", "unknown key 'audti'"),
    ("audit: {db: 5}\n", "'audit.db' must be a string"),
    ("audit: {retention: soon}\n", "'audit.retention'"),
    ("audit: {db: \"a\\0b\"}\n", "holds a NUL character"),
    ("version: 2\n", "'version' must be 1"),
    ("[1, 2]\n", "'config' must be a mapping"),
])
def test_the_audit_settings_read_alone_still_refuse_what_would_misplace_the_log(tmp_path: Path, text: str,
                                                                                 message: str) -> None:
    """Read alone, the audit settings are checked as in the whole config, and so is the top level: a misspelt
    `audit` key would otherwise send `log` to the default database without a word."""
    from goex_proxy.configfile import load_audit_settings

    path = tmp_path / "config.yaml"
    path.write_text(text if text.startswith(("version", "[")) else "version: 1\n" + text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_audit_settings(path)
    assert any(message in str(p) for p in err.value.problems), err.value.problems


def test_the_log_is_read_while_another_section_of_the_config_is_wrong(tmp_path: Path) -> None:
    """A config `run` refuses (here an undefined policy and a bad listen address) is when the log matters most:
    `log` reads it, and `policy check` still names what is wrong."""
    from click.testing import CliRunner

    from goex_proxy import cli
    from goex_proxy.audit import store as audit

    path = tmp_path / "config.yaml"
    path.write_text("version: 1\nlisten: nowhere\npolicies: [missing.yaml]\n", encoding="utf-8")
    audit.open_db(tmp_path / "audit.db", seal=Seal(tmp_path)).close()
    listed = CliRunner().invoke(cli.cli, ["log", "--config", str(path)])
    assert listed.exit_code == 0 and "id" in listed.output, listed.output
    checked = CliRunner().invoke(cli.cli, ["policy", "check", "--config", str(path)])
    assert checked.exit_code != 0 and "'listen' must be HOST:PORT" in checked.output, checked.output


@pytest.mark.parametrize(("text", "message"), [
    ("state_dir: ~no-such-user-goex/st\n", "'state_dir' names the home directory of no user here"),
    ("audit: {db: ~no-such-user-goex/a.db}\n", "'audit.db' names the home directory of no user here"),
    ("state_dir: loop/st\n", "'state_dir' cannot be followed: Symlink loop"),
    ("state_dir: \"st\\ud800\"\n", "cannot be written as UTF-8"),
    ("agents: {\"a\\udc80\": {token: x}}\n", "cannot be written as UTF-8"),
    ("audit: {retention: 1" + "0" * 400 + "s}\n", "'audit.retention' must be a duration"),
])
def test_audit_settings_no_path_can_be_made_of_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    """A `~user` with no home, a symlink loop, a lone surrogate (YAML's "\\ud800") and a duration past any float ended
    `log` (and `run`, and `policy check`) in an internal error, exit 70: they are problems of the config, where they
    are."""
    from goex_proxy.configfile import load_audit_settings

    (tmp_path / "loop").symlink_to("loop")
    path = tmp_path / "config.yaml"
    path.write_text("version: 1\n" + text, encoding="utf-8")
    for load in (load_audit_settings, load_config):
        with pytest.raises(ConfigError) as err:
            load(path)
        assert any(message in str(p) for p in err.value.problems), err.value.problems


def test_a_state_directory_the_log_cannot_be_looked_for_in_is_said_so(tmp_path: Path, monkeypatch) -> None:
    """`log` on a state directory whose audit database cannot even be looked for (a name longer than the system takes;
    a directory the person may not enter) ended in an internal error, exit 70: it says what the system said."""
    from click.testing import CliRunner

    from goex_proxy import cli

    path = tmp_path / "config.yaml"
    path.write_text(f"version: 1\nstate_dir: {'x' * 300}\n", encoding="utf-8")
    monkeypatch.delenv("GOEX_PROXY_DEBUG", raising=False)
    result = CliRunner().invoke(cli.cli, ["log", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert "cannot look for the audit database" in result.output and "File name too long" in result.output


@pytest.mark.parametrize(("args", "env", "said"), [
    (["--config", "~no-such-user-goex/config.yaml"], {}, "the config ~no-such-user-goex/config.yaml names the home"),
    ([], {"GOEX_PROXY_HOME": "~no-such-user-goex"}, "GOEX_PROXY_HOME ~no-such-user-goex names the home"),
])
def test_a_config_path_of_no_users_home_is_said_so(monkeypatch, args: list[str], env: dict[str, str], said: str) -> None:
    """`--config ~someone/...` or `GOEX_PROXY_HOME=~someone` where there is no such user ended every command in an
    internal error (pathlib's RuntimeError), exit 70."""
    from click.testing import CliRunner

    from goex_proxy import cli

    monkeypatch.delenv("GOEX_PROXY_DEBUG", raising=False)
    result = CliRunner().invoke(cli.cli, ["log", *args], env=env)
    assert result.exit_code == 2 and said in result.output, result.output
