"""First process of a jail: new namespaces, the agent's view of the machine built in them, then the command.

Run as `python -I -S jailinit.py FD` (standard library only, so that it starts fast and imports nothing the agent
could have touched). FD is a Unix socket to the parent; the parent first sends the jail's spec (a 4-byte length, then
a marshalled dict: see `jail.JailedRun`). This process then

1. leaves the host's user, network, mount, PID, IPC and UTS namespaces (a user namespace of its own, so no privilege
   is needed and root gains none over the host), brings loopback up and listens on 127.0.0.1:PORT (and on each of
   `more_ports`: the database gateway's);
2. forks the jail's init (PID 1 of the new PID namespace), which builds the new root: the host's root bound
   read-only, a copy-on-write overlay on the workspace (writes land in the run's upper layer), the Python
   environment and other protected paths bound read-only over it, every hidden path covered by an empty read-only
   directory or file (in a copy of its directory made of the names it has now: see `shield_parents`), host Unix
   sockets covered, fresh /proc, /dev, /tmp, /var/tmp and /run; pivots into it; and
   enters a second user and mount namespace so that every one of these mounts is locked (the agent cannot unmount
   or remount any of them, even as root inside);
3. hands the listening sockets to the parent (which bridges their connections to the proxy from outside) once all of
   that worked, or writes `error: ...` and never runs the command.

The init then starts the command in a session of its own (no controlling terminal: it cannot push keystrokes into
the person's shell), with no capabilities and no way to gain any, and at most `max_processes` processes and threads;
passes on the signals this process is sent, and exits with the command's status; its exit ends every process left in
the jail.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import marshal
import os
import resource
import signal
import socket
import stat
import struct
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 22, 24, 38
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_JSET_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
CLONE_NEWCGROUP = 0x02000000
AF_VSOCK, AF_ALG = 40, 38
ENOSYS, EPERM, EAFNOSUPPORT = 38, 1, 97
X32_SYSCALL_BIT = 0x40000000
KEYCTL_JOIN_SESSION_KEYRING = 1
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
#: Syscalls the C library has no wrapper for in every version (and those the filter refuses), by machine.
SYSCALLS = {"x86_64": {"pivot_root": 155, "keyctl": 250, "mount_setattr": 442, "add_key": 248, "request_key": 249,
                       "clone": 56, "unshare": 272, "clone3": 435, "socket": 41, "io_uring_setup": 425,
                       "io_uring_enter": 426, "io_uring_register": 427, "landlock_create_ruleset": 444,
                       "landlock_add_rule": 445, "landlock_restrict_self": 446},
            "aarch64": {"pivot_root": 41, "keyctl": 219, "mount_setattr": 442, "add_key": 217, "request_key": 218,
                        "clone": 220, "unshare": 97, "clone3": 435, "socket": 198, "io_uring_setup": 425,
                        "io_uring_enter": 426, "io_uring_register": 427, "landlock_create_ruleset": 444,
                        "landlock_add_rule": 445, "landlock_restrict_self": 446}}
#: The seccomp audit architecture of each machine.
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
#: System calls the command may not make: the kernel keyrings, which are per uid, not per namespace (the person's
#: user keyring would otherwise be the agent's to link and read).
REFUSED_SYSCALLS = ("keyctl", "add_key", "request_key")
#: System calls refused when their first argument (the flags of clone and unshare) asks for a cgroup namespace: in one
#: of its own (with a user namespace it may make), root in the jail (uid 0 to the cgroup files of a jail run as root)
#: could mount each cgroup hierarchy at the group it is in, shared with goex-proxy, and set its memory limit (or stop
#: its OOM killer, or lift the jail's process cap).
NO_CGROUP_NAMESPACE = ("unshare", "clone")
#: System calls that answer ENOSYS, as if the kernel had none, so that programs fall back to others: clone3, whose
#: flags are in memory a filter cannot read (a cgroup namespace, or CLONE_INTO_CGROUP with a cgroup directory of the
#: host's read-only /sys/fs/cgroup, whose files root in the jail may write); io_uring, whose operations no filter
#: sees (IORING_OP_SOCKET makes any socket socket(2) is refused).
UNSUPPORTED_SYSCALLS = ("clone3", "io_uring_setup", "io_uring_enter", "io_uring_register")
#: System calls refused (EAFNOSUPPORT, as where the kernel has no such family) when their first argument is a socket
#: family the jail must not have: AF_VSOCK, which no network namespace holds, reaches the hypervisor and the host of a
#: virtual machine (and other VMs' guests from the host), so the jail could talk past the proxy; AF_ALG, the kernel's
#: crypto interface, which programs do without and whose bugs have given root (as Docker's default profile refuses).
REFUSED_FAMILIES = ("socket",)
#: Kernel interfaces in /proc: read-only (a jailed root is uid 0 to /proc/sys's checks), or hidden altogether.
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")
PROC_MASKED = ("kcore", "keys", "key-users", "kmsg", "timer_list", "sched_debug", "latency_stats", "acpi", "scsi",
               "asound")
#: The most entries a directory holding a hidden path is rebuilt from (see shield_parents).
MOST_ENTRIES = 4096
#: Devices the jail's /dev holds (bound from the host's), and the links every program expects there.
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}
#: Where in the jail the command may open a file for writing (Landlock), with its workspace: the places it may write
#: anyway. A read-only mount refuses writes to a file, not the opening of a FIFO on it for writing, which writes
#: nothing to the file system: a host program's FIFO in view (a service's control pipe; any of root's when the jail
#: runs as root) would take what the agent writes.
WRITABLE = ("/tmp", "/var/tmp", "/run", "/dev", "/proc")
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH, LANDLOCK_ACCESS_FS_WRITE_FILE = 1, 1, 1 << 1
#: Moving or linking a file into another directory, which every Landlock ruleset refuses unless a rule allows it (and
#: only ABI 2, Linux 5.19, can allow it): without it `git mv`, `os.rename` between directories and installers' moves fail.
LANDLOCK_ACCESS_FS_REFER = 1 << 13
LANDLOCK_LEAST_ABI = 2
EOPNOTSUPP, EBADFD = 95, 77
#: Signals passed on to the command rather than acted on.
FORWARDED = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.syscall.restype = ctypes.c_long


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


class LandlockRulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class LandlockPathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # packed in the kernel's header
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class SetupError(Exception):
    """A step of building the jail failed; the message says which."""


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def _syscall(name: str, *args: object) -> int:
    machine = os.uname().machine
    numbers = SYSCALLS.get(machine)
    if numbers is None:
        raise SetupError(f"no jail on {machine} yet (x86_64 and aarch64 only)")
    return int(libc.syscall(numbers[name], *args))


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = os.fsencode
    _check(libc.mount(source and enc(source), enc(target), fstype and enc(fstype), flags, data and enc(data)),
           f"mount {fstype or 'bind'} on {target}")


def read_only(target: str, recursive: bool = True) -> None:
    """Make the mount at `target` (and every mount under it) read-only, set-id-less and device-less: a device node
    anywhere but the jail's /dev (a chroot's, a copy of /dev) would reach the device, and a read-only mount does not
    stop writes to one (root in the jail is uid 0 to a disk's node)."""
    attr = MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    _check(_syscall("mount_setattr", AT_FDCWD, os.fsencode(target), flags, ctypes.byref(attr), ctypes.sizeof(attr)),
           f"making {target} read-only")


def unshare(flags: int, what: str) -> None:
    _check(libc.unshare(flags), what)


def map_ids(uid: int, gid: int) -> None:
    """In a user namespace just made: the same uid and gid as outside, and no supplementary groups."""
    for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                       ("/proc/self/gid_map", f"{gid} {gid} 1")):
        with open(path, "w") as f:
            f.write(text)


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _lexists(path: str) -> bool:
    try:
        os.lstat(path)
    except OSError:
        return False
    return True


def _mount_point(path: str, like_dir: bool) -> None:
    """An empty directory or file at `path` to mount over (inside a tmpfs the jail just made)."""
    if _lexists(path):
        return
    if like_dir:
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o444))


def build_dev(root: str) -> None:
    """A /dev of the few devices programs need, its own pseudo-terminals and /dev/shm."""
    dev = root + "/dev"
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
    for name in DEVICES:
        if _lexists("/dev/" + name):
            _mount_point(f"{dev}/{name}", False)
            mount("/dev/" + name, f"{dev}/{name}", None, MS_BIND)
    os.mkdir(dev + "/pts")
    mount("devpts", dev + "/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    os.mkdir(dev + "/shm")
    mount("tmpfs", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for name, target in DEV_LINKS.items():
        os.symlink(target, f"{dev}/{name}")
    mount(None, dev, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC)


def build_root(spec: dict) -> None:  # type: ignore[type-arg]
    """The agent's view of the machine, mounted at spec["root"]; see the module docstring."""
    root = spec["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here reaches the host's mounts
    mount("/", root, None, MS_BIND | MS_REC)
    read_only(root)
    shield_parents(spec)
    for scratch in ("/tmp", "/var/tmp", "/run"):
        if os.path.isdir(root + scratch):
            mount("tmpfs", root + scratch, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777" if scratch != "/run" else "mode=0755")
    build_dev(root)
    workspace = spec.get("workspace")
    if workspace:
        _mount_point(root + workspace, True)  # a workspace under /tmp needs its mount point in the new /tmp
        os.chdir(spec["run_dir"])  # relative layer paths: no escaping of ',' or ':' in the person's paths
        mount("overlay", root + workspace, "overlay", MS_NOSUID | MS_NODEV,
              f"lowerdir={_escape(workspace)},upperdir=upper,workdir=work,userxattr")
    for path in spec["protect"]:  # goex-proxy's Python in the workspace or a scratch directory: the host's, read-only
        if not _lexists(path):
            continue
        if not _lexists(root + path):
            _mount_point(root + path, os.path.isdir(path))  # under a fresh scratch directory
        mount(path, root + path, None, MS_BIND | MS_REC)
        read_only(root + path)
    empty = spec["run_dir"] + "/empty"
    covered: list[str] = []
    for path in sorted(spec["hide"], key=len):
        target = root + path
        if any(target.startswith(done + "/") for done in covered) or os.path.islink(path):
            continue  # inside a directory already hidden
        is_dir = os.path.isdir(path)
        if not _lexists(target):
            try:  # under a scratch directory of the jail's: hidden all the same, so the agent cannot fill it
                _mount_point(target, is_dir)
            except OSError:
                continue  # under a read-only directory: not in this view at all
        if is_dir:
            mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=64k")
            covered.append(target)
        else:
            mount(empty, target, None, MS_BIND)
            read_only(target, recursive=False)
    for path in spec["reveal"]:  # the CA certificate and allowed sockets: the host's, read-only, at their paths
        if _lexists(path):
            _mount_point(root + path, os.path.isdir(path))
            mount(path, root + path, None, MS_BIND)
            read_only(root + path, recursive=False)
    for target in covered:
        read_only(target, recursive=False)
    for path in spec["sockets"]:  # host Unix sockets still in view: covered by an empty file
        target = root + path
        try:
            if stat.S_ISSOCK(os.lstat(target).st_mode):
                mount(empty, target, None, MS_BIND)
                read_only(target, recursive=False)
        except OSError:
            continue
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mask_proc(root + "/proc", empty)
    os.chdir(root)
    _check(_syscall("pivot_root", b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "detaching the host's root")
    os.chdir("/")


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def shield_parents(spec: dict) -> None:  # type: ignore[type-arg]
    """Rebuild each directory that holds a hidden path or a host socket (outside the workspace and the scratch
    directories) from the names it has now: a tmpfs where every other entry is the host's, bound (with what is
    mounted below it), and each hidden one an empty file or directory of the tmpfs itself, which the covers of
    build_root then go on.

    A mount made on one of the host's files does not survive the file being renamed over or deleted on the host (the
    kernel drops the mount), so covering ~/.netrc itself would uncover the new ~/.netrc that an editor, `git
    credential-store` or `docker login` writes by rename while the agent runs; and a directory shown whole (an
    overlay of it) would show a hidden file renamed aside (an editor's `config.yaml~`) under its new name. Here a
    hidden name is the tmpfs's whatever the host does, a name made later is not in view, and an entry renamed over
    on the host loses its bind and shows the tmpfs's empty entry. A service restarted meanwhile binds its socket
    again at the same name: still the empty file. A directory with more entries than MOST_ENTRIES keeps per-path
    covers only."""
    root = spec["root"]
    hidden = {path for path in [*spec["hide"], *spec["sockets"]] if _lexists(path) and not os.path.islink(path)}
    fenced = [spec.get("workspace") or "/nonexistent", "/tmp", "/var/tmp", "/run", "/dev",
              *(path for path in spec["hide"] if os.path.isdir(path) and not os.path.islink(path))]
    parents = {os.path.dirname(path) for path in hidden}
    for parent in sorted(parents, key=len):
        if any(_inside(parent, d) for d in fenced) or not os.path.isdir(parent) or os.path.islink(parent):
            continue
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        if len(names) > MOST_ENTRIES:
            continue
        target = root + parent if parent != "/" else root
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV,
              f"mode={stat.S_IMODE(os.stat(parent).st_mode):o},size=1m,nr_inodes={len(names) + 16}")
        for name in names:
            path = os.path.join(parent, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(path), f"{target}/{name}")
                continue
            _mount_point(f"{target}/{name}", stat.S_ISDIR(st.st_mode))
            if path not in hidden:
                try:  # one that cannot be bound (gone since) stays an empty entry: that hides more, never less
                    mount(path, f"{target}/{name}", None, MS_BIND | MS_REC)
                except SetupError:
                    continue
                if _inside(root, path):  # the copy of the view under construction it carries (the state directory
                    libc.umount2(os.fsencode(root + root), MNT_DETACH)  # in ~/.cache, say) is not needed twice
        read_only(target)


def mask_proc(proc: str, empty: str) -> None:
    """/proc/sys and the like read-only, /proc/kcore, /proc/keys and the like empty."""
    for name in PROC_READ_ONLY:
        path = f"{proc}/{name}"
        if _lexists(path):
            mount(path, path, None, MS_BIND | MS_REC)
            read_only(path)
    for name in PROC_MASKED:
        path = f"{proc}/{name}"
        if not _lexists(path):
            continue
        if os.path.isdir(path):
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0555,size=4k")
        else:
            mount(empty, path, None, MS_BIND)
        read_only(path, recursive=False)


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def lock_mounts(uid: int, gid: int) -> None:
    """A second user and mount namespace: every mount made above becomes locked to the agent."""
    unshare(CLONE_NEWUSER | CLONE_NEWNS, "locking the jail's mounts")
    map_ids(uid, gid)


def first_to_go_out_of_memory() -> None:
    """The jail's processes (this one, and all it starts) are the ones the kernel ends first when memory runs out. Files
    in the jail's /tmp or /dev/shm are memory no process's size shows, so the kernel would otherwise end the largest
    process of the machine (goex-proxy, as often as not) and leave the jail that filled them; ending this one ends the
    jail and frees them."""
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")


def limit_processes(most: int | None) -> None:
    """At most `most` processes and threads of the jail at once: RLIMIT_NPROC counts the tasks of a uid in each user
    namespace, and the jail's is its own, so a fork bomb stops at the jail's cap instead of taking every process slot
    of the person's uid (goex-proxy's own threads included). The kernel does not hold root (uid 0) to it: `pidcap`."""
    if most:
        hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        most = most if hard == resource.RLIM_INFINITY else min(most, hard)  # a lower cap of the person's stays
        resource.setrlimit(resource.RLIMIT_NPROC, (most, most))


def drop_privileges() -> None:
    """No capability now or after exec, and no way to gain one (set-id files, file capabilities)."""
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == 22:  # EINVAL: past the last cap
            break
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "setting no_new_privs")


def confine_writes(workspace: str) -> bool:
    """Landlock: no file opened for writing but under the workspace or WRITABLE (see there), or the command's own
    stdin, stdout and stderr (see `_allow_reopening`); files move between directories there as before (REFER).
    False, and nothing done, on a kernel without Landlock (before 5.13, or with it off) or with only its first ABI
    (before 5.19), which cannot let a file move to another directory at all; a SetupError if it is there and fails.
    Needs no_new_privs; the restriction holds for every process the command starts."""
    version = _syscall("landlock_create_ruleset", None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if version < 1:
        if ctypes.get_errno() in (ENOSYS, EOPNOTSUPP):
            return False
        _check(version, "asking for Landlock")
    if version < LANDLOCK_LEAST_ABI:
        return False
    access = LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_REFER
    handled = LandlockRulesetAttr(access)
    ruleset = _syscall("landlock_create_ruleset", ctypes.byref(handled), ctypes.sizeof(handled), 0)
    if ruleset < 0:
        _check(ruleset, "making a Landlock ruleset")
    try:
        for path in (workspace, *WRITABLE):
            try:
                beneath = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                _check(_add_rule(ruleset, beneath, access), f"letting the jail write under {path}")
            finally:
                os.close(beneath)
        for fd in (0, 1, 2):
            _allow_reopening(ruleset, fd)
        _check(_syscall("landlock_restrict_self", ruleset, 0), "restricting the jail's writes (Landlock)")
    finally:
        os.close(ruleset)
    return True


def _add_rule(ruleset: int, beneath: int, access: int) -> int:
    rule = LandlockPathBeneathAttr(access, beneath)
    return _syscall("landlock_add_rule", ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0)


def _allow_reopening(ruleset: int, fd: int) -> None:
    """The file the command was given on `fd` for writing may be opened for writing again: `> /dev/stdout` and
    `tee /dev/stderr` open it at its own path (the person's terminal, or a log file they redirected to), which is
    outside the jail's places, and the command may write to it anyway. A pipe or socket has no path to open (and
    Landlock checks no open of one): nothing to allow."""
    try:
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:  # not open
        return
    if mode not in (os.O_WRONLY, os.O_RDWR):
        return
    if _add_rule(ruleset, fd, LANDLOCK_ACCESS_FS_WRITE_FILE) != 0 and ctypes.get_errno() != EBADFD:
        _check(-1, f"letting the command reopen its descriptor {fd}")


def refuse_syscalls() -> None:
    """A seccomp filter: the refused system calls fail with EPERM, unshare and clone with EPERM when asked for a cgroup
    namespace, clone3 and io_uring with ENOSYS, socket with EAFNOSUPPORT for AF_VSOCK and AF_ALG, and a foreign ABI
    (32-bit or x32 calls, which have other numbers) ends the process. Needs no_new_privs."""
    machine = os.uname().machine
    numbers = SYSCALLS[machine]
    program: list[tuple[int, int, int, int]] = [(BPF_LD_W_ABS, 0, 0, 4)]  # the call's audit architecture
    program.append((BPF_JEQ_K, 1, 0, AUDIT_ARCH[machine]))
    program.append((BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS))
    program.append((BPF_LD_W_ABS, 0, 0, 0))  # the call's number
    if machine == "x86_64":
        program.append((BPF_JGE_K, 0, 1, X32_SYSCALL_BIT))
        program.append((BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS))
    checks = [*((name, "refused") for name in REFUSED_SYSCALLS),
              *((name, "unsupported") for name in UNSUPPORTED_SYSCALLS),
              *((name, "cgroup namespace") for name in NO_CGROUP_NAMESPACE), *((name, "family") for name in REFUSED_FAMILIES)]
    answers: dict[str, list[tuple[int, int, int, int]]] = {  # each after the ALLOW that ends the checks
        "refused": [(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM)],
        "unsupported": [(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | ENOSYS)],
        "cgroup namespace": [(BPF_LD_W_ABS, 0, 0, 16),  # the low half of the first argument (the flags)
                             (BPF_JSET_K, 0, 1, CLONE_NEWCGROUP), (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM),
                             (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)],
        "family": [(BPF_LD_W_ABS, 0, 0, 16),  # the socket's family
                   (BPF_JEQ_K, 1, 0, AF_VSOCK), (BPF_JEQ_K, 0, 1, AF_ALG),
                   (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | EAFNOSUPPORT), (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)]}
    at, where = 1, {}
    for answer, ops in answers.items():
        where[answer] = at
        at += len(ops)
    for i, (name, answer) in enumerate(checks):  # jump past the checks that follow and the ALLOW, to the answer
        program.append((BPF_JEQ_K, len(checks) - i - 1 + where[answer], 0, numbers[name]))
    program.append((BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    for ops in answers.values():
        program.extend(ops)
    filters = (SockFilter * len(program))(*(SockFilter(*op) for op in program))
    fprog = SockFprog(len(program), filters)
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "installing the syscall filter")


def run_init(spec: dict, report: int, uid: int, gid: int) -> int:  # type: ignore[type-arg]
    """PID 1 of the jail: build the view, report, start the command, pass on signals, return its wait status."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        _syscall("keyctl", KEYCTL_JOIN_SESSION_KEYRING, None)  # not the person's session keyring
        first_to_go_out_of_memory()
        build_root(spec)
        libc.sethostname(b"goex-jail", 9)
        lock_mounts(uid, gid)
        os.chdir(spec["cwd"])
    except (SetupError, OSError) as exc:
        os.write(report, f"error: {exc}".encode())
        return 125 << 8
    os.write(report, b"ok")
    os.close(report)
    command = spec["command"]
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            for sig in (*FORWARDED, signal.SIGPIPE, signal.SIGXFSZ):  # the last two Python ignores (an exec keeps it)
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
            limit_processes(spec.get("max_processes"))
            drop_privileges()
            confine_writes(spec["workspace"])
            refuse_syscalls()
            os.execvp(command[0], command)
        except (OSError, SetupError) as exc:
            sys.stderr.write(f"goex-proxy: cannot run {command[0]!r}: {getattr(exc, 'strerror', None) or exc}\n")
            os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
    for sig in FORWARDED:
        signal.signal(sig, lambda signum, _frame: _signal_group(child, signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)  # what came meanwhile is passed on now
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        if pid == child:
            return status


def _signal_group(leader: int, signum: int) -> None:
    """Pass a signal on to the command's group; to the command alone while it has no group yet (it makes one with
    `setsid` just after it is forked, and a signal held while the jail started comes at once: it was lost)."""
    try:
        os.killpg(leader, signum)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(leader, signum)  # blocked there until its default action is back, then acted on


def receive_spec(channel: socket.socket) -> dict:  # type: ignore[type-arg]
    head = _recv_exactly(channel, 4)
    return marshal.loads(_recv_exactly(channel, struct.unpack("!I", head)[0]))  # type: ignore[no-any-return]


def _recv_exactly(channel: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = channel.recv(n - len(data))
        if not chunk:
            raise SetupError("the parent closed the channel")
        data += chunk
    return data


def main(argv: list[str]) -> int:
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # Held until there is someone to pass them on to (this process's handler, then the init's, which inherits the
    # mask): a signal that came before would be lost, or end this process with a traceback.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    channel = socket.socket(fileno=int(argv[1]))
    uid, gid = os.geteuid(), os.getegid()
    try:
        spec = receive_spec(channel)
        unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS,
                "making the jail's namespaces")
        map_ids(uid, gid)
        loopback_up()
        listeners = []
        for port in [spec["port"], *spec.get("more_ports", ())]:  # the proxy's, then the database gateway's
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(128)
            listeners.append(listener)
    except (SetupError, OSError, ValueError) as exc:
        channel.sendall(f"error: {getattr(exc, 'strerror', None) or exc}".encode())
        return 125
    read_end, write_end = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(read_end)
        for listener in listeners:
            listener.close()
        channel.close()
        status = run_init(spec, write_end, uid, gid)
        os._exit(_exit_code(status))
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reply:
        message = reply.read()
    if message != b"ok":
        channel.sendall(message or b"error: the jail's init ended before it was set up")
        os.waitpid(init, 0)
        return 125
    socket.send_fds(channel, [b"ok"], [listener.fileno() for listener in listeners])
    for listener in listeners:
        listener.close()
    channel.close()
    for sig in FORWARDED:
        signal.signal(sig, lambda signum, _frame: os.kill(init, signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    while True:
        try:
            _, status = os.waitpid(init, 0)
            break
        except InterruptedError:
            continue
    return _exit_code(status)


def _exit_code(status: int) -> int:
    """The command's wait status as an exit code: a signal's death is 128 + its number, as shells report it."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 125


if __name__ == "__main__":
    sys.exit(main(sys.argv))
