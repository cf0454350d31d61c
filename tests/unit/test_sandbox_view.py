"""What a jail hides, protects and passes: computed from the config, the Python environment and the host's sockets."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from goex_proxy.config import load_config
from goex_proxy.errors import GoexError
from goex_proxy.sandbox.view import host_sockets, jail_env, python_paths, supervisor_paths, view_for


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".kube").mkdir()
    (home / ".netrc").write_text("machine x password y\n")
    (home / ".bash_history").write_text("export GITHUB_TOKEN=ghp_typed_once\n")
    (home / ".config" / "chromium").mkdir(parents=True)
    (home / ".local" / "share" / "keyrings").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    state = tmp_path / "state"
    (state / "policies").mkdir(parents=True)
    (state / "policies" / "p.yaml").write_text("version: 1\nrules: []\n")
    outside_policy = tmp_path / "elsewhere.yaml"
    outside_policy.write_text("version: 1\nrules: []\n")
    (state / "audit.db").write_bytes(b"")
    (state / "config.yaml").write_text(
        "version: 1\nagents: {a: {token: a-token-long-enough}}\n"
        f"policies: [policies/p.yaml, {outside_policy}]\n"
        "sandbox:\n  hide: [~/private]\n  expose: [~/.kube]\n  pass_env: [KEEP_ME, GOEX_PROXY_KEY]\n")
    (home / "private").mkdir()
    return load_config(state / "config.yaml")


def test_supervisor_files_are_hidden_wherever_they_are(config, tmp_path: Path) -> None:
    """The state directory, the config, a policy outside the state directory and the audit database are all hidden."""
    paths = supervisor_paths(config)
    assert str(config.state_dir) in paths and str(config.file) in paths
    assert str(tmp_path / "elsewhere.yaml") in paths and str(config.audit_db) in paths


def test_credential_stores_are_hidden_unless_exposed(config, tmp_path: Path) -> None:
    """~/.ssh and ~/.netrc hidden by default, and the shell's history (a token typed on a command line), a browser's
    profile (its cookies are signed-in sessions) and the desktop's keyring; ~/private by `sandbox.hide`; ~/.kube
    shown because `expose` names it."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    view = view_for(config, workspace, workspace)
    home = tmp_path / "home"
    assert {str(home / ".ssh"), str(home / ".netrc"), str(home / "private")} <= set(view.hide)
    assert {str(home / ".bash_history"), str(home / ".config" / "chromium"),
            str(home / ".local" / "share" / "keyrings")} <= set(view.hide)
    assert str(home / ".kube") not in view.hide
    assert view.reveal[0] == str(config.ca_cert)
    assert view.workspace == str(workspace) and view.cwd == str(workspace)


def test_a_workspace_inside_what_jails_hide_or_protect_is_refused(config, tmp_path: Path) -> None:
    """The state directory, a credential store, goex-proxy's Python environment and / cannot be workspaces."""
    for bad in (config.state_dir, tmp_path / "home" / ".ssh", Path(sys.prefix), Path("/")):
        with pytest.raises(GoexError, match="workspace"):
            view_for(config, bad, bad)


def test_the_python_environment_inside_a_workspace_is_protected(config) -> None:
    """A workspace holding goex-proxy's virtualenv gets it bound read-only over the overlay."""
    parent = Path(sys.prefix).parent
    view = view_for(config, parent, parent)
    assert os.path.realpath(sys.prefix) in view.protect
    assert all(p.startswith(view.workspace) for p in view.protect)
    assert os.path.realpath(sys.prefix) in python_paths()


def test_the_environment_is_an_allow_list_and_never_carries_a_secret(config) -> None:
    """Ordinary variables and `pass_env` pass; anything else of the person's does not."""
    base = {"PATH": "/bin", "LANG": "C", "LC_ALL": "C", "KEEP_ME": "1", "AWS_SECRET_ACCESS_KEY": "x",
            "GITHUB_TOKEN": "ghp_x", "GOEX_PROXY_KEY": "vault-key"}
    env = jail_env(base, config)
    assert env == {"PATH": "/bin", "LANG": "C", "LC_ALL": "C", "KEEP_ME": "1", "GOEX_PROXY_KEY": "vault-key"}
    # jail.start_jailed then drops the withheld names (the vault key among them) whatever pass_env says:
    from goex_proxy.sandbox import agentenv
    assert "GOEX_PROXY_KEY" not in agentenv.apply(env, {}, config)


def test_host_sockets_are_listed_from_proc(tmp_path: Path) -> None:
    """A Unix socket bound on this machine shows in the list the jail covers."""
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        s.listen(1)
        assert str(path) in host_sockets()


MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 254:0 /root/.cache /mnt/alias\\040dir rw,relatime - ext4 /dev/vda rw
41 27 254:0 /srv /srv rw,relatime - ext4 /dev/vda rw
42 27 0:50 / /data rw,relatime - tmpfs tmpfs rw
"""


def test_a_bind_mount_showing_a_hidden_path_elsewhere_is_an_alias_of_it() -> None:
    """A hidden path under a directory bind-mounted elsewhere (even with a space in its name) has an alias there;
    another filesystem or an unrelated directory of the same one does not."""
    from goex_proxy.sandbox.view import aliases, mounts

    table = mounts(MOUNTINFO)
    assert table[1].point == "/mnt/alias dir"
    assert aliases("/root/.cache/state/vault.key", table) == ["/mnt/alias dir/state/vault.key"]
    assert aliases("/mnt/alias dir/state", table) == ["/root/.cache/state"]
    assert aliases("/root/.ssh", table) == []
    assert aliases("/data/x", table) == []


def test_a_layer_its_agent_made_unreadable_is_still_removed() -> None:
    """remove_tree opens directories of mode 000 (nested, as a non-root owner would meet them) before removing."""
    import inspect
    import shutil
    import subprocess
    import tempfile

    from goex_proxy.sandbox.runs import remove_tree

    base = Path(tempfile.mkdtemp(prefix="goex-remove-"))  # directly in /tmp: reachable by nobody once chowned
    try:
        layer = base / "layer"
        (layer / "a" / "b").mkdir(parents=True)
        (layer / "a" / "b" / "f").write_text("x")
        if os.geteuid() == 0:  # root is not stopped by modes: remove as nobody, who then owns the tree
            subprocess.run(["chown", "-R", "65534:65534", str(base)], check=True)
        (layer / "a" / "b").chmod(0)
        (layer / "a").chmod(0)
        if os.geteuid() == 0:
            # The function's own source, run as nobody: the checkout (and its venv) may be unreadable to nobody.
            code = ("import os, shutil, subprocess\nfrom pathlib import Path\nclass GoexError(Exception): pass\n"
                    f"{inspect.getsource(remove_tree)}\nremove_tree(Path({str(layer)!r}))\n")
            done = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                                   os.path.realpath(sys.executable), "-I", "-c", code], capture_output=True, text=True,
                                  env={"PATH": os.environ["PATH"]})
            assert done.returncode == 0, done.stderr
        else:
            remove_tree(layer)
        assert not layer.exists()
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_the_python_environment_under_a_scratch_directory_is_shown_read_only(config, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout under /tmp (as CI systems make them) keeps its venv usable in the jail, whose /tmp is fresh: it is
    protected (bound read-only) like one inside the workspace; one elsewhere on the host needs nothing."""
    import goex_proxy.sandbox.view as view_module

    monkeypatch.setattr(view_module, "python_paths", lambda: ["/tmp/checkout/.venv", "/usr/lib/python3"])
    ws = tmp_path / "ws"
    ws.mkdir()
    assert view_for(config, ws, ws).protect == ("/tmp/checkout/.venv",)


def test_the_id_tags_beside_an_audit_database_elsewhere_are_hidden(tmp_path: Path) -> None:
    """The lock files by which processes keep their request ids apart live beside the audit database: hidden too."""
    from goex_proxy import ids

    elsewhere = tmp_path / "logs" / "audit.db"
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "config.yaml").write_text(
        f"version: 1\nagents: {{a: {{token: a-token-long-enough}}}}\naudit: {{db: {elsewhere}}}\n")
    config = load_config(tmp_path / "state" / "config.yaml")
    ids.claim(config.audit_db)
    assert str(ids.tags_folder(elsewhere)) in supervisor_paths(config)


def test_the_write_lock_beside_an_audit_database_elsewhere_is_hidden(tmp_path: Path) -> None:
    """Writers of the log take turns by a lock file beside it: a jailed command that could open it (even to read)
    could take the lock and hold it, and every request would wait for its row forever."""
    from goex_proxy.audit import writer

    elsewhere = tmp_path / "logs" / "audit.db"
    elsewhere.parent.mkdir()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "config.yaml").write_text(
        f"version: 1\nagents: {{a: {{token: a-token-long-enough}}}}\naudit: {{db: {elsewhere}}}\n")
    config = load_config(tmp_path / "state" / "config.yaml")
    turns = writer._WriteTurns(config.audit_db)
    try:
        lock = tmp_path / "logs" / ".audit.db.write-lock"
        assert lock.exists()
        assert str(lock) in supervisor_paths(config)
    finally:
        turns.close()
