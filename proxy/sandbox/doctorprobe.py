"""The checks `goex-proxy doctor` runs inside a jail: every way around the proxy fails, the way through it works.

Run as `python -I doctorprobe.py PORT [SANDBOX]` (standard library only), where PORT is a canary that `doctor` listens
on at 127.0.0.1 and ::1 outside the jail, and SANDBOX (JSON) names what the jail must keep out of sight: goex-proxy's
files, the processes outside, a Unix socket `doctor` listens on, and a marker to write in the workspace. Prints a
JSON list of {"check", "ok", "detail"}. A check of a way around the proxy or the sandbox passes when that way fails.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import ssl
import struct
import sys
import urllib.error
import urllib.request
from collections.abc import Callable

TIMEOUT = 2.0
PUBLIC_V4 = [("1.1.1.1", 443), ("8.8.8.8", 53)]
PUBLIC_V6 = [("2606:4700:4700::1111", 443)]
PROBE_HOST = "goex-doctor.invalid"


def blocked(attempt: Callable[[], str]) -> tuple[bool, str]:
    """Run a way around the proxy: passing means it raised."""
    try:
        return False, f"got through: {attempt()}"
    except (OSError, urllib.error.URLError) as exc:
        return True, f"blocked ({getattr(exc, 'reason', None) or exc})"


def connect(family: int, address: tuple[str, int]) -> str:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(address)
        return f"connected to {address[0]}:{address[1]}"


def connect_all(family: int, addresses: list[tuple[str, int]]) -> tuple[bool, str]:
    return all_blocked([functools.partial(connect, family, a) for a in addresses])


def dns_query(name: str) -> bytes:
    header = struct.pack("!HHHHHH", 0x6f6b, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return header + labels + struct.pack("!HH", 1, 1)


def udp_exchange(server: tuple[str, int]) -> str:
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(dns_query("example.com"), server)
        s.recvfrom(512)
        return f"{server[0]}:{server[1]} answered"


def resolvers() -> list[tuple[str, int]]:
    try:
        with open("/etc/resolv.conf") as f:
            return [(line.split()[1], 53) for line in f if line.startswith("nameserver") and len(line.split()) > 1]
    except OSError:
        return []


def via_proxy(url: str, context: ssl.SSLContext | None = None) -> tuple[bool, str]:
    """A request through the proxy the environment names: passing means goex-proxy answered it."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler(), urllib.request.HTTPSHandler(context=context))
    try:
        reply = opener.open(url, timeout=10)
    except urllib.error.HTTPError as exc:
        reply = exc
    except (OSError, urllib.error.URLError) as exc:
        return False, f"failed: {getattr(exc, 'reason', None) or exc}"
    decision = reply.headers.get("X-Goex-Decision")
    if decision is None:
        return False, f"answered {reply.status} without goex-proxy's headers: not the proxy"
    return True, f"goex-proxy answered {reply.status} ({decision})"


def checks(canary: int) -> list[tuple[str, Callable[[], tuple[bool, str]]]]:
    cafile = os.environ.get("SSL_CERT_FILE")
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    dns_servers = resolvers() + [("8.8.8.8", 53)]

    def raw_socket() -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
            s.sendto(b"\x08\0\xf7\xff\0\0\0\0", ("1.1.1.1", 0))
            return "an ICMP packet was sent to 1.1.1.1"

    def vsock() -> str:
        """A virtual machine's socket to its host: no network namespace holds it (where there is no vsock, it fails
        here too, and there is nothing to reach)."""
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
        return "a vsock socket was made (the way to the host of a virtual machine)"

    def interfaces() -> tuple[bool, str]:
        names = sorted(name for _, name in socket.if_nameindex())
        return names == ["lo"], "only lo" if names == ["lo"] else f"interfaces: {', '.join(names)}"

    return [
        ("proxy path, HTTP", lambda: via_proxy(f"http://{PROBE_HOST}/")),
        ("proxy path, HTTPS with the CA", lambda: via_proxy(
            f"https://{PROBE_HOST}/", ssl.create_default_context(cafile=cafile) if cafile else None)),
        ("direct TCP to this machine", lambda: blocked(lambda: connect(socket.AF_INET, ("127.0.0.1", canary)))),
        ("direct TCP to public addresses", lambda: connect_all(socket.AF_INET, PUBLIC_V4)),
        ("HTTP ignoring the proxy settings (--noproxy)", lambda: blocked(
            lambda: f"answered {no_proxy.open(f'http://127.0.0.1:{canary}/', timeout=TIMEOUT).status}")),
        ("DNS lookup", lambda: blocked(lambda: f"example.com is {socket.getaddrinfo('example.com', 443)[0][4][0]}")),
        ("DNS to the resolvers, UDP", lambda: all_blocked([functools.partial(udp_exchange, s) for s in dns_servers])),
        ("raw socket", lambda: blocked(raw_socket)),
        ("vsock", lambda: blocked(vsock)),
        ("IPv6", lambda: connect_all(socket.AF_INET6, PUBLIC_V6 + [("::1", canary)])),
        ("network interfaces", interfaces),
    ]


def sandbox_checks(spec: dict) -> list[tuple[str, Callable[[], tuple[bool, str]]]]:  # type: ignore[type-arg]
    """What the jail keeps of the host: none of goex-proxy's files, processes or sockets, nothing writable outside the
    workspace."""
    def read(path: str) -> str:
        with open(path, "rb") as f:
            data = f.read()
        if data:
            return f"read {len(data)} bytes of {path}"
        raise OSError(f"{path} reads as empty")

    def write(path: str) -> str:
        with open(path, "ab") as f:
            f.write(b"")
        return f"opened {path} for writing"

    def state_dir() -> tuple[bool, str]:
        try:
            seen = sorted(os.listdir(spec["state_dir"]))
        except OSError as exc:
            return True, f"not there ({exc.strerror})"
        extra = [name for name in seen if name != os.path.basename(spec["ca_cert"])]
        return not extra, f"shows {', '.join(extra)}" if extra else "shows only the CA certificate"

    def processes() -> tuple[bool, str]:
        """Only the jail's own two processes (its init and this probe) are there to see."""
        others = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/cmdline", "rb") as f:
                        cmdline = f.read()
                except OSError:
                    continue
                if b"jailinit" not in cmdline and b"doctorprobe" not in cmdline:
                    program = cmdline.split(b"\0")[0].decode(errors="replace")
                    others.append(f"{name} ({program})")
        return not others, f"visible: {', '.join(others)}" if others else "only the jail's own processes"

    def unix_socket() -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT)
            s.connect(spec["socket"])
            return f"connected to {spec['socket']}"

    def marker() -> tuple[bool, str]:
        with open(spec["marker"], "w") as f:
            f.write("written inside the jail\n")
        return True, "written (doctor checks it stays out of the workspace until kept)"

    def kernel_settings() -> str:
        with open("/proc/sys/kernel/core_pattern") as f:
            same = f.read()
        with open("/proc/sys/kernel/core_pattern", "w") as f:  # the value it has: harmless even if it got through
            f.write(same)
        return "wrote /proc/sys/kernel/core_pattern"

    def keyrings() -> str:
        import ctypes

        number = {"x86_64": 250, "aarch64": 219}.get(os.uname().machine)
        if number is None:
            return "no keyctl number known for this machine"
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(number, 0, -4, 0) < 0:  # KEYCTL_GET_KEYRING_ID of the user keyring
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return "reached the user keyring"

    def write_confinement() -> tuple[bool, str]:
        """Landlock, which the jail applies wherever the kernel has it (and refuses to run the command where it
        fails): a read-only mount does not stop a FIFO on it from being opened for writing."""
        import ctypes

        version = ctypes.CDLL(None, use_errno=True).syscall(444, None, 0, 1)  # the ABI version (x86_64 and aarch64)
        if version < 1:
            return False, "this kernel has no Landlock (or it is off): a host FIFO in view takes what is written to it"
        if version < 2:  # jailinit.LANDLOCK_LEAST_ABI: the first refuses every move of a file to another directory
            return False, ("this kernel's Landlock is too old (ABI 1; the jail needs 2, Linux 5.19): a host FIFO in "
                           "view takes what is written to it")
        return True, f"only in the workspace, /tmp, /var/tmp, /run, /dev and /proc (Landlock ABI {version})"

    def process_cap() -> tuple[bool, str]:
        """At most `max_processes` at once: RLIMIT_NPROC, which the kernel holds every uid but root to, and run as
        root (uid 0 outside, as uid_map says) a pids cgroup of the jail's own."""
        most = spec["max_processes"]
        with open("/proc/self/uid_map") as f:
            as_root = f.read().split()[1] == "0"
        if not as_root:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_NPROC)[0]
            return 0 <= soft <= most, f"RLIMIT_NPROC {soft} (the cap is {most})"
        with open("/proc/self/cgroup") as f:
            groups = [line.split(":", 2) for line in f.read().splitlines()]
        for number, controllers, path in groups:
            mark = "/" + spec["cgroup_prefix"]
            if ("pids" in controllers.split(",") or number == "0") and mark in path:
                end = path.find("/", path.index(mark) + 1)  # the jail's group; its processes are below
                capped = path if end < 0 else path[:end]
                for top in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
                    try:
                        with open(f"{top}{capped}/pids.max") as f:
                            cap = f.read().strip()
                    except OSError:
                        continue
                    return cap.isdigit() and int(cap) <= most + 1, f"run as root: pids cgroup {capped}, at most {cap}"
        return False, "run as root, which RLIMIT_NPROC does not hold, and in no pids cgroup of the jail's own"

    return [
        ("goex-proxy's state directory out of sight", state_dir),
        ("config, vault, vault key, CA key, audit database and its chain key unreadable",
         lambda: all_blocked([functools.partial(read, p) for p in spec["secret_files"]])),
        ("config and policy files unwritable",
         lambda: all_blocked([functools.partial(write, p) for p in spec["config_files"]])),
        ("processes outside the jail invisible", processes),
        ("a host Unix socket unreachable", lambda: blocked(unix_socket)),
        ("a write outside the workspace refused",
         lambda: all_blocked([functools.partial(write, os.path.join(d, ".goex-doctor-write")) for d in spec["outside"]])),
        ("files open for writing only where the jail may write", write_confinement),
        ("kernel settings (/proc/sys) unwritable", lambda: blocked(kernel_settings)),
        ("kernel keyrings refused", lambda: blocked(keyrings)),
        ("a cap on the jail's processes (sandbox.max_processes)", process_cap),
        ("a write in the workspace", marker),
    ]


def all_blocked(attempts: list[Callable[[], str]]) -> tuple[bool, str]:
    """Passing means every attempt failed."""
    results = [blocked(a) for a in attempts]
    failed = [detail for ok, detail in results if not ok]
    return not failed, "; ".join(failed) if failed else f"{results[0][1]} ({len(results)} tried)"


def main(argv: list[str]) -> int:
    canary = int(argv[1])
    todo = checks(canary) + (sandbox_checks(json.loads(argv[2])) if len(argv) > 2 else [])
    results = []
    for name, check in todo:
        try:
            ok, detail = check()
        except Exception as exc:  # a check that cannot be made is not a pass
            ok, detail = False, f"could not check: {type(exc).__name__}: {exc}"
        results.append({"check": name, "ok": ok, "detail": detail})
    sys.stdout.write(json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
