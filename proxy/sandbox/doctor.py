"""`doctor`'s checks: the probe (`doctorprobe`) run in a jail or in this environment, a canary listening for anything
that reaches this machine directly, and the probe's workspace write judged by where it ended up."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..audit import seal as auditseal
from ..config import Config
from ..credentials import vault
from ..errors import GoexError
from . import agentenv, pidcap, runs
from .canary import Canary
from .view import SCRATCH

#: The probe, run by path in an isolated interpreter (`-I`): it imports nothing of goex-proxy.
PROBE = Path(__file__).with_name("doctorprobe.py")


def run_checks(config: Config, agent: str, jail: bool = True) -> list[dict[str, Any]]:
    """Every check's result (`check`, `ok`, `detail`), from the probe run as `agent` in a jail (or, without `jail`,
    with only the proxy settings plain `exec` gives), and whether anything reached the canary."""
    probe = [sys.executable, "-I", str(PROBE)]
    with Canary() as canary:
        if not jail:
            agentenv.check_listening(config)
            done = subprocess.run([*probe, str(canary.port)], stdout=subprocess.PIPE, check=False,
                                  env=agentenv.apply(dict(os.environ), agentenv.agent_env(config, agent), config))
            results = probe_results(done.stdout)
        else:
            results = _in_a_jail(config, agent, probe, canary.port)
    if canary.hits:
        results.append({"check": "nothing reached this machine directly", "ok": False,
                        "detail": f"{canary.hits} connection(s) reached the canary on 127.0.0.1/::1"})
    return results


def probe_results(out: bytes) -> list[dict[str, Any]]:
    """The results the probe printed (one JSON list), or why there are none."""
    try:
        results: list[dict[str, Any]] = json.loads(out)
    except ValueError:
        raise GoexError("the checks did not run to the end (see the messages above)") from None
    return results


def _outside(*places: Path) -> list[str]:
    """The directories the probe must not be able to write to: those the jail shows, not those under a scratch
    directory (/tmp, /run, ...), which the jail replaces with an empty one of its own (a HOME under /tmp: a write
    there lands in the jail's /tmp, and is gone with it)."""
    return sorted({str(p) for p in places if not any(p.is_relative_to(scratch) for scratch in SCRATCH)})


def _in_a_jail(config: Config, agent: str, probe: list[str], canary: int) -> list[dict[str, Any]]:
    """The probe run in a jail on a scratch workspace holding a Unix socket of ours; its writes held for review, then
    checked to have stayed out of the workspace, and dropped."""
    from .jail import proxy_for_jail, start_jailed

    agentenv.proxy_url(config, agent)
    with tempfile.TemporaryDirectory(prefix="goex-doctor-") as tmp, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        workspace = Path(tmp)
        listener.bind(str(workspace / "host.sock"))
        listener.listen(1)
        marker = workspace / "written-in-the-jail"
        secret_files = [config.file, config.audit_db, config.state_dir / vault.KEY_FILE,
                        config.state_dir / vault.VAULT_FILE, config.state_dir / "mitmproxy-ca.pem",
                        config.state_dir / auditseal.KEY_FILE, config.state_dir / auditseal.ANCHOR_FILE]
        spec = {"state_dir": str(config.state_dir), "ca_cert": str(config.ca_cert),
                "secret_files": [str(p) for p in secret_files],
                "config_files": [str(config.file), *(str(p.path) for p in config.policies)],
                "socket": str(workspace / "host.sock"), "marker": str(marker),
                "max_processes": config.sandbox.max_processes, "cgroup_prefix": pidcap.PREFIX,
                "outside": _outside(Path.home(), Path("/etc"), Path("/usr"), Path(sys.prefix), config.state_dir)}
        with proxy_for_jail(config) as bridged:
            jailed = start_jailed(bridged, agent, [*probe, str(canary), json.dumps(spec)], workspace,
                                  stdout=subprocess.PIPE)
            out, _ = jailed.child.communicate()
            run = jailed.finish(jailed.child.returncode, apply=False)
        results = probe_results(out)
        kept_out = not marker.exists()
        held = run is not None and any(c.path == marker.name for c in run.changes)
        if run is not None:
            runs.undo(config, run.id)
        for r in results:
            if r["check"] == "a write in the workspace":
                r["check"] = "a write in the workspace held until kept"
                r["ok"] = r["ok"] and kept_out and held
                r["detail"] = ("held in the run's layer, not in the workspace" if r["ok"] else
                               f"in the workspace: {not kept_out}; in the run's changes: {held}")
    return results
