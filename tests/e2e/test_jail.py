"""`exec` (jailed): a real network namespace where the proxy is the only way out, and `doctor` proving it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import GITHUB_POLICY as POLICY
from tests.conftest import GITHUB_URL as URL
from tests.conftest import GOEX, NODE

pytestmark = pytest.mark.e2e

SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture
def proxy(make_proxy):
    return make_proxy(POLICY)


def jailed(proxy, *command: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess[str]:
    return proxy.run_cli("exec", "--jail", "--config", str(proxy.config), "--agent", "mailbot", "--", *command,
                         timeout=timeout, **kwargs)


def test_the_way_through_the_proxy_works_and_is_audited(proxy, upstream):
    r = jailed(proxy, "curl", "-sS", "--fail", URL)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["full_name"] == "octo/hello"
    assert upstream.seen_paths("api.github.com") == ["/repos/octo/hello"]
    row = proxy.rows()[-1]
    assert (row["agent"], row["decision"], row["status"], row["url"]) == ("mailbot", "allow", 200, URL)


def test_without_a_running_proxy_the_jail_starts_one(make_proxy, upstream):
    """`exec --jail` with no `goex-proxy run`: an in-process proxy on the same config, policy and audit log."""
    proxy = make_proxy(POLICY, start=False)
    r = jailed(proxy, sys.executable, "-c", f"import requests; print(requests.get('{URL}').json()['full_name'])")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "octo/hello"
    denied = jailed(proxy, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "https://api.github.com/user")
    assert denied.stdout == "403"
    assert [(row["decision"], row["url"]) for row in proxy.rows()] == [
        ("allow", URL), ("deny", "https://api.github.com/user")]


def test_the_started_proxys_log_does_not_go_to_the_commands_stdout(make_proxy):
    """The proxy `exec` starts for itself logged to stdout, as mitmdump does: a policy edit it rejected while the
    command ran put "policy reload rejected ..." in the middle of the command's output (`exec -- gen > out.json` got
    it too). Its log now goes to stderr."""
    proxy = make_proxy(POLICY, start=False)
    command = [*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "sh", "-c",
               "echo first; sleep 3; echo last"]
    run = subprocess.Popen(command, env=proxy.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert run.stdout is not None and run.stdout.readline() == "first\n"
    policy = proxy.home / "policies" / "github.yaml"
    policy.write_text(policy.read_text() + "\n  - {not: [valid\n")
    out, err = run.communicate(timeout=60)
    assert (run.returncode, out) == (0, "last\n"), out + err
    assert "policy reload rejected; keeping the last good policies" in err


BYPASSES = {
    "curl --noproxy to the upstream's address": ["curl", "-sk", "-m", "3", "--noproxy", "*", "https://127.0.0.1:{port}/"],
    "curl --noproxy by name": ["curl", "-sk", "-m", "3", "--noproxy", "*", "https://api.github.com/repos/octo/hello"],
    "python raw TCP socket": [sys.executable, "-c",
                              "import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)"],
    "python raw IP socket": [sys.executable, "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, "
                             "socket.IPPROTO_ICMP); s.sendto(b'\\x08\\0\\xf7\\xff\\0\\0\\0\\0', ('1.1.1.1', 0))"],
    "python UDP": [sys.executable, "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                   "s.settimeout(2); s.sendto(b'x', ('127.0.0.1', {port})); s.sendto(b'x', ('8.8.8.8', 53)); "
                   "s.recv(1)"],
    "nc": ["nc", "-z", "-w", "3", "127.0.0.1", "{port}"],
    "dig with the system resolver": ["dig", "+time=1", "+tries=1", "example.com"],
    "dig at a public resolver": ["dig", "+time=1", "+tries=1", "@8.8.8.8", "example.com"],
    "python DNS lookup": [sys.executable, "-c", "import socket; socket.getaddrinfo('api.github.com', 443)"],
    "IPv6 loopback literal": ["curl", "-gsk", "-m", "3", "--noproxy", "*", "https://[::1]:{port}/"],
    "IPv6 public literal": ["curl", "-gsk", "-m", "3", "--noproxy", "*", "https://[2606:4700:4700::1111]/"],
    "node fetch without the proxy variables": [
        "env", "-u", "HTTPS_PROXY", "-u", "https_proxy", "-u", "HTTP_PROXY", "-u", "http_proxy", "-u",
        "NODE_USE_ENV_PROXY", str(NODE), "-e",
        "fetch('https://127.0.0.1:{port}/').then(() => process.exit(0), () => process.exit(3))"],
    "joining the host's network namespace": ["nsenter", "--net=/proc/1/ns/net", "curl", "-sk", "-m", "3",
                                             "https://127.0.0.1:{port}/"],
}


@pytest.mark.parametrize("name", sorted(BYPASSES))
def test_every_way_around_the_proxy_is_blocked(proxy, upstream, name):
    """Each tool that could skip the proxy fails inside the jail, and the upstream (on this machine's loopback,
    which a plain `exec` reaches directly) sees nothing."""
    command = [part.replace("{port}", str(upstream.port)) for part in BYPASSES[name]]
    assert shutil.which(command[0]), f"{command[0]} must be installed for the bypass suite (.ci/run installs it)"
    r = jailed(proxy, *command, timeout=30)
    assert r.returncode != 0, (name, r.stdout, r.stderr)
    assert upstream.seen_paths() == []


def test_the_bypasses_would_work_without_the_jail(proxy, upstream):
    """The suite can fail: the same direct connection from a plain `exec` reaches the upstream."""
    r = proxy.run_cli("exec", "--no-jail", "--config", str(proxy.config), "--agent", "mailbot", "--", "curl", "-sk",
                      "-m", "3", "--noproxy", "*", f"https://127.0.0.1:{upstream.port}/repos/octo/hello")
    assert r.returncode == 0, r.stderr
    assert upstream.seen_paths() == ["/repos/octo/hello"]


def test_files_cwd_stdin_and_exit_code_are_the_commands(proxy, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "in.txt").write_text("from a file\n")
    script = "cat in.txt; cat; pwd; echo written > out.txt; exit 7"
    r = subprocess.run([*GOEX, "exec", "--jail", "--config", str(proxy.config), "--agent", "mailbot", "--", "sh",
                        "-c", script], env=proxy.env, cwd=work, input="from stdin\n", capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 7, r.stderr
    assert r.stdout.splitlines() == ["from a file", "from stdin", str(work)]
    assert (work / "out.txt").read_text() == "written\n"


def test_ctrl_c_reaches_the_command_and_its_status_is_returned(proxy, in_a_group):
    """Ctrl-C goes to the terminal's whole process group: the command handles it, exec waits and reports."""
    p = in_a_group(proxy, "trap 'echo interrupted; exit 42' INT; echo ready; while :; do sleep 0.1; done")
    assert p.stdout.readline() == "ready\n"
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 42, err
    assert out.strip() == "interrupted"


def test_each_ctrl_c_reaches_the_command_once(proxy, in_a_group):
    """A Ctrl-C reaches the terminal's whole foreground process group. The jail's own processes pass signals on to
    the command, so they must not be in that group: each would pass on its copy, and the command got two (a CI run's
    trap printed 'interrupted' twice). exec passes them on instead, once."""
    p = in_a_group(proxy, "n=0; trap 'n=$((n+1)); echo $n' INT; trap 'exit 42' TERM; echo 0; "
                                   "while :; do sleep 0.05; done")
    assert p.stdout.readline() == "0\n"
    in_group = [pid for pid in _descendants(p.pid) if _pgid(pid) == p.pid]
    assert in_group == [], "processes of the jail in the terminal's process group"
    for sent in range(1, 4):
        os.killpg(p.pid, signal.SIGINT)
        assert p.stdout.readline() == f"{sent}\n"
        time.sleep(0.3)  # room for a second copy to arrive
    os.killpg(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 42, err
    assert out == "", "the command got more Ctrl-Cs than were sent"


@pytest.mark.parametrize("jail", ["--jail", "--no-jail"])
def test_ctrl_c_ends_a_command_that_does_not_catch_it(proxy, in_a_group, jail):
    """Its default action stays: a command started with Ctrl-C ignored would inherit that, and could not be stopped.
    The command is `sleep` itself (an exec keeps an ignored signal ignored): a shell looping over short sleeps caught
    the Ctrl-C (dash does with -c) and went on when its sleep had just ended on its own (a CI run waited 30 s)."""
    p = in_a_group(proxy, "echo ready; exec sleep 600", jail)
    assert p.stdout.readline() == "ready\n"
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGINT, err


def test_a_ctrl_c_as_the_command_starts_ends_it_and_not_exec(proxy, in_a_group):
    """Without the jail, the command gets Ctrl-C from the terminal and exec ignores it; but exec ignored it only once
    the command had started, and a Ctrl-C the command got before that ended exec too ('Aborted!', exit 1)."""
    for _ in range(10):
        p = in_a_group(proxy, "echo ready; sleep 3; echo survived", "--no-jail")
        assert p.stdout.readline() == "ready\n"
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 128 + signal.SIGINT and "survived" not in out, (out, err)


def test_the_command_gets_broken_pipes_as_outside_the_jail(proxy):
    """Python ignores SIGPIPE and SIGXFSZ; the jail's processes are Python, and an exec keeps what is ignored: the
    command then got EPIPE where it would have ended quietly (`yes | head -n 1` printed 'Broken pipe')."""
    r = jailed(proxy, "sh", "-c", "yes | head -n 1; grep SigIgn /proc/self/status")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    ignored = int(r.stdout.split()[-1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1)), r.stdout


@pytest.fixture
def in_a_group():
    """Starts `exec --jail -- sh -c SCRIPT` leading a process group of its own, as a shell starts a foreground job;
    killed with its jail at the end of the test, whether or not it ended."""
    started: list[subprocess.Popen[str]] = []

    def start(proxy, script: str, jail: str = "--jail") -> subprocess.Popen[str]:
        started.append(subprocess.Popen([*GOEX, "exec", jail, "--config", str(proxy.config), "--agent", "mailbot",
                                         "--", "sh", "-c", script], env=proxy.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True))
        return started[-1]

    yield start
    for p in started:
        for pid in [*_descendants(p.pid), p.pid] if p.poll() is None else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        p.communicate()


def _descendants(pid: int) -> list[int]:
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found += [int(child), *_descendants(int(child))]
    except OSError:  # it ended meanwhile
        pass
    return found


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_a_missing_command_or_unknown_agent_runs_nothing(proxy):
    missing = jailed(proxy, "no-such-command-xyz")
    assert missing.returncode == 2 and "cannot run 'no-such-command-xyz'" in missing.stderr
    unknown = proxy.run_cli("exec", "--jail", "--config", str(proxy.config), "--agent", "nobody", "--", "true")
    assert unknown.returncode == 2 and "no agent named 'nobody'" in unknown.stderr


@contextlib.contextmanager
def jailinit_dir():
    """A run directory for jailinit.py alone (a copy of it, and the folders its spec names), owned by nobody when
    the tests run as root, with the command prefix that runs a program as its owner; removed after."""
    nobody = os.geteuid() == 0
    user = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"] if nobody else []
    run_dir = Path(tempfile.mkdtemp(prefix="goex-jailinit-"))
    try:
        shutil.copy(Path(__file__).parents[2] / "proxy" / "sandbox" / "jailinit.py", run_dir / "jailinit.py")
        for name in ("root", "upper", "work", "ws"):
            (run_dir / name).mkdir()
        (run_dir / "empty").touch()
        if nobody:
            for path in [run_dir, *run_dir.iterdir()]:
                os.chown(path, 65534, 65534)
        yield run_dir, user
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(run_dir)], check=False)
        shutil.rmtree(run_dir)


def run_jailinit(run_dir: Path, user: list[str], command: list[str], timeout: float = 30, **spec: object
                 ) -> tuple[bytes, int, str]:
    """jailinit.py run in `run_dir` as `user`, jailing `command` (more of its spec in `spec`): what it answered,
    how many descriptors it handed back, and the command's output."""
    import marshal
    import socket
    import struct

    spec = {"port": 8123, "root": str(run_dir / "root"), "run_dir": str(run_dir), "workspace": str(run_dir / "ws"),
             "cwd": str(run_dir / "ws"), "hide": [], "protect": [], "reveal": [], "sockets": [], **spec,
             "command": command}
    ours, theirs = socket.socketpair()
    p = subprocess.Popen([*user, SYSTEM_PYTHON, "-I", "-S", str(run_dir / "jailinit.py"), str(theirs.fileno())],
                         pass_fds=(theirs.fileno(),), stdout=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin"})
    theirs.close()
    payload = marshal.dumps(spec)
    ours.sendall(struct.pack("!I", len(payload)) + payload)
    message, fds, _, _ = socket.recv_fds(ours, 4096, 1)
    for fd in fds:
        os.close(fd)
    out, _ = p.communicate(timeout=timeout)
    return message, len(fds), out


def test_the_jail_needs_no_privilege():
    """As an unprivileged user (nobody), the jail's first process still makes all its namespaces and mounts: the
    command keeps its uid, reaches nothing on this machine's loopback, sees only its own processes, and its writes to
    the workspace land in the run's layer."""
    import socket

    assert Path(SYSTEM_PYTHON).exists(), "a Python any user may run, for the jail's first process"
    with jailinit_dir() as (run_dir, user), socket.create_server(("127.0.0.1", 0)) as host_listener:
        port = host_listener.getsockname()[1]
        script = (f"id -u; set -- /proc/[0-9]*; echo $#; touch written; python3 -c \"import socket; "
                  f"socket.create_connection(('127.0.0.1', {port}), timeout=2)\" 2>/dev/null && echo reached "
                  "|| echo blocked")
        message, handed, out = run_jailinit(run_dir, user, ["sh", "-c", script])
        assert message == b"ok" and handed == 1, message
        assert out.split() == [str(65534 if user else os.geteuid()), "2", "blocked"]
        assert (run_dir / "upper" / "written").exists() and not (run_dir / "ws" / "written").exists()


#: Runs the program in its arguments under a seccomp filter that fails landlock_restrict_self (446 on x86_64 and
#: aarch64) with EPERM, as a container's filter may.
NO_LANDLOCK_RESTRICT = """
import ctypes, os, struct, sys
program = [(0x20, 0, 0, 0), (0x15, 0, 1, 446), (0x06, 0, 0, 0x00050000 | 1), (0x06, 0, 0, 0x7FFF0000)]
code = b"".join(struct.pack("HBBI", *op) for op in program)
buf = ctypes.create_string_buffer(code)
fprog = struct.pack("HxxxxxxP", len(program), ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0 and libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) == 0, ctypes.get_errno()
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_a_landlock_that_fails_runs_no_command():
    """Where the kernel has Landlock and restricting the command with it fails, the command is not run (unconfined, a
    host FIFO in view would take what it writes): the jail says why and exits 126."""
    with jailinit_dir() as (run_dir, user):
        wrapper = [SYSTEM_PYTHON, "-c", NO_LANDLOCK_RESTRICT]
        message, _, out = run_jailinit(run_dir, [*user, *wrapper], ["sh", "-c", "echo ran"])
    assert message == b"ok", message  # the jail itself was built
    assert out == ""


def test_doctor_passes_in_a_jail_and_fails_outside(proxy):
    """doctor's network and sandbox checks all pass in a jail; outside one, the ways around the proxy are found."""
    inside = proxy.cli("doctor", "--agent", "mailbot", "--json")
    assert inside.returncode == 0, inside.stdout + inside.stderr
    results = [json.loads(line) for line in inside.stdout.splitlines()]  # JSON Lines: one check per line
    assert {r["check"] for r in results} >= {"proxy path, HTTP", "proxy path, HTTPS with the CA",
                                             "direct TCP to this machine", "DNS lookup", "raw socket", "vsock", "IPv6",
                                             "HTTP ignoring the proxy settings (--noproxy)",
                                             "goex-proxy's state directory out of sight",
                                             "config, vault, vault key, CA key, audit database and its chain key unreadable",
                                             "config and policy files unwritable", "processes outside the jail invisible",
                                             "a host Unix socket unreachable", "a write outside the workspace refused",
                                             "kernel settings (/proc/sys) unwritable", "kernel keyrings refused",
                                             "files open for writing only where the jail may write",
                                             "a cap on the jail's processes (sandbox.max_processes)",
                                             "a write in the workspace held until kept"}
    assert all(r["ok"] for r in results), results
    outside = proxy.cli("doctor", "--agent", "mailbot", "--no-jail", "--json")
    assert outside.returncode == 1
    failed = {r["check"] for r in map(json.loads, outside.stdout.splitlines()) if not r["ok"]}
    assert {"direct TCP to this machine", "HTTP ignoring the proxy settings (--noproxy)"} <= failed
    table = proxy.cli("doctor", "--agent", "mailbot")
    assert table.returncode == 0 and "FAIL" not in table.stdout and "direct TCP to this machine" in table.stdout
    assert [line for line in table.stdout.splitlines() if line != line.rstrip()] == []  # piped: no padding


def test_doctor_passes_with_a_home_under_tmp(proxy, tmp_path):
    """A HOME under /tmp (CI runners, scratch accounts) failed "a write outside the workspace refused": the probe's
    write there landed in the jail's own /tmp, which the jail replaces with an empty one, and never reached the home.
    Such a directory is no longer among those the probe must fail to write to."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)  # hidden by the jail: covered, and so its parent made in the jail's /tmp
    r = subprocess.run([*GOEX, "doctor", "--config", str(proxy.config), "--agent", "mailbot", "--json"],
                       env={**proxy.env, "HOME": str(home)}, capture_output=True, text=True, timeout=120)
    results = {c["check"]: c for c in map(json.loads, r.stdout.splitlines())}
    assert results["a write outside the workspace refused"]["ok"], results["a write outside the workspace refused"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (home / ".goex-doctor-write").exists()


def test_the_proxys_own_address_is_not_an_upstream(make_proxy, upstream):
    """From the jail, the proxy's listen address asked for through the proxy (its admin surface, were it to have one)
    is refused by the SSRF guard even where policy allows any host, and so is the machine's loopback by any name."""
    proxy = make_proxy({"anywhere": """
        version: 1
        name: anywhere
        rules:
          - name: read anything
            allow: {host: "**", methods: [GET]}
    """})
    for url in (f"http://127.0.0.1:{proxy.port}/", f"http://localhost:{upstream.port}/"):
        r = jailed(proxy, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url)
        assert r.stdout == "403", (url, r.stdout, r.stderr)
    onboarding = jailed(proxy, "curl", "-sS", "http://mitm.it/")  # mitmproxy's own pages are not served
    assert json.loads(onboarding.stdout)["error"] == "goex-proxy: the upstream host cannot be resolved"
    reasons = [row["reason"] for row in proxy.rows()]
    assert "this proxy's own listen address" in reasons[0] and "a loopback address" in reasons[1]
    assert upstream.seen_paths() == []


def test_the_commands_own_output_and_renames_still_work_under_landlock(proxy, outside):
    """Landlock keeps the jail's write-opens to its workspace and scratch directories, and two things ordinary programs
    do were refused with it: reopening stdout or stderr (`> /dev/stdout`, `tee /dev/stderr`), which opens the file the
    person gave the command (a log file, their terminal) at its own path, outside those places; and moving a file to
    another directory (`git mv`, `os.rename`, an installer's temporary files), which Landlock refuses everywhere unless
    its ruleset lets the directories take files from elsewhere."""
    workspace = outside / "ws"
    workspace.mkdir()
    log = outside / "out.log"
    script = ("echo to-stdout > /dev/stdout; echo to-stderr > /dev/stderr; "
              "mkdir a b && echo 1 > a/x && python3 -c \"import os; os.rename('a/x', 'b/x'); os.link('b/x', 'a/y')\" "
              "&& echo renamed; mkdir /tmp/a /tmp/b && echo 1 > /tmp/a/x && "
              "python3 -c \"import os; os.rename('/tmp/a/x', '/tmp/b/x')\" && echo renamed-in-tmp; "
              "git init -q . && git add b/x && git mv b/x a/z && echo git-mv")
    terminal, tty = os.openpty()
    try:
        with open(log, "a") as out:  # O_APPEND: `> /dev/stdout` truncates the file as it does outside a jail
            r = subprocess.run([*GOEX, "exec", "--config", str(proxy.config), "--agent", "mailbot", "--", "sh", "-c",
                                script], env=proxy.env, cwd=workspace, stdout=out, stderr=tty, timeout=90)
        os.set_blocking(terminal, False)
        shown = b""
        with contextlib.suppress(OSError):  # EAGAIN: all read
            while chunk := os.read(terminal, 65536):
                shown += chunk
    finally:
        os.close(terminal)
        os.close(tty)
    assert r.returncode == 0, shown
    assert log.read_text().split() == ["to-stdout", "renamed", "renamed-in-tmp", "git-mv"], shown
    assert b"to-stderr" in shown and b"denied" not in shown, shown
    assert (workspace / "a" / "z").read_text() == "1\n" and (workspace / "a" / "y").exists()
