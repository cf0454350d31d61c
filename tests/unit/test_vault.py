"""The vault: secrets encrypted at rest, a wrong key fails clearly, writes are atomic."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from goex_proxy.credentials.vault import KEY_ENV, Vault, new_key_file
from goex_proxy.errors import VaultError


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    new_key_file(tmp_path / "vault.key")
    return Vault(tmp_path)


def test_round_trip_and_nothing_in_clear(vault: Vault) -> None:
    """A stored secret reads back, and the file on disk holds neither it nor its base64."""
    vault.set("slack-bot", "xoxb-CANARY-123")
    assert vault.get("slack-bot") == "xoxb-CANARY-123" and vault.get("nope") is None
    raw = vault.path.read_bytes()
    assert b"CANARY" not in raw and base64.b64encode(b"xoxb-CANARY-123") not in raw
    assert oct(vault.path.stat().st_mode & 0o777) == "0o600"
    assert oct(vault.key_path.stat().st_mode & 0o777) == "0o600"


def test_wrong_key_fails_clearly(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening with another key raises a VaultError naming the key, never returns garbage."""
    vault.set("a", "secret-value-1")
    monkeypatch.setenv(KEY_ENV, "goex-key-v1:" + base64.urlsafe_b64encode(os.urandom(32)).decode())
    with pytest.raises(VaultError, match="the key is wrong"):
        vault.get("a")


def test_passphrase_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GOEX_PROXY_KEY may be a passphrase; the same passphrase opens the vault again, another does not."""
    monkeypatch.setenv(KEY_ENV, "correct horse battery staple")
    Vault(tmp_path).set("a", "value-one-1")
    assert Vault(tmp_path).get("a") == "value-one-1" and not (tmp_path / "vault.key").exists()
    monkeypatch.setenv(KEY_ENV, "wrong horse")
    with pytest.raises(VaultError):
        Vault(tmp_path).get("a")


def test_damaged_file_is_a_clear_error(vault: Vault) -> None:
    """A tampered ciphertext is refused (AES-GCM authenticates it)."""
    vault.set("a", "secret-value-1")
    envelope = json.loads(vault.path.read_text())
    blob = bytearray(base64.b64decode(envelope["ciphertext"]))
    blob[0] ^= 1
    envelope["ciphertext"] = base64.b64encode(bytes(blob)).decode()
    vault.path.write_text(json.dumps(envelope))
    with pytest.raises(VaultError, match="wrong|altered"):
        vault.get("a")


def test_writes_replace_the_file_atomically(vault: Vault) -> None:
    """Each write goes to a temporary file renamed over the vault; none is left behind, and removal works."""
    vault.set("a", "value-one-1")
    inode = vault.path.stat().st_ino
    vault.set("b", "value-two-2")
    assert vault.path.stat().st_ino != inode
    assert sorted(vault.names()) == ["a", "b"]
    assert vault.remove("a") and not vault.remove("a")
    assert [p.name for p in vault.path.parent.iterdir() if p.name.startswith(".")] == []


def test_missing_key_is_a_clear_error(tmp_path: Path) -> None:
    """With no key file and no GOEX_PROXY_KEY, reading an existing vault says how to get a key."""
    (tmp_path / "vault.json").write_text(json.dumps({"salt": "", "nonce": "", "ciphertext": ""}))
    with pytest.raises(VaultError, match="no vault key"):
        Vault(tmp_path).get("a")


def test_short_secrets_are_refused(vault: Vault) -> None:
    """A secret too short to scrub safely from responses is refused with the reason."""
    with pytest.raises(VaultError, match="shorter than 8"):
        vault.set("a", "pass")


def test_concurrent_writers_lose_nothing(vault: Vault) -> None:
    """Writers in parallel each keep their secret: read-modify-write is locked."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(4) as pool:
        list(pool.map(_store, [(str(vault.path.parent), f"s{i}") for i in range(8)]))
    assert sorted(vault.names()) == sorted(f"s{i}" for i in range(8))


def _store(args: tuple[str, str]) -> None:
    Vault(Path(args[0])).set(args[1], f"value-of-{args[1]}")


def test_key_like_passphrase_is_still_stretched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A passphrase that happens to be valid base64 of 32 bytes is stretched with scrypt, not used raw."""
    from goex_proxy.credentials.vault import _decode_key

    phrase = "a" * 43
    assert _decode_key(phrase, b"salt-one") != _decode_key(phrase, b"salt-two")
    assert len(_decode_key("goex-key-v1:" + "A" * 43, b"x")) == 32


def test_secret_spellings_cover_json_percent_and_embedded_base64() -> None:
    """The scrubber's spellings include JSON escapes, lower-case percent escapes and base64 inside longer text."""
    from goex_proxy.credentials.kinds import Credential, Injection
    from goex_proxy.credentials.redact import SecretScrubber
    from goex_proxy.globs import compile_host
    from goex_proxy.secretref import SecretRef

    secret = "sk-Test/Secret+abc123"
    c = Credential("k", SecretRef(vault="k"), (compile_host("api.example.com"),), Injection("header"))
    scrub = SecretScrubber({form: c.placeholder for form in c.forms(secret)})
    for text in [json.dumps({"t": secret}).replace("/", "\\/"), "x=sk-Test%2fSecret%2babc123",
                 base64.b64encode(f"Bearer {secret}".encode()).decode(),
                 base64.b64encode(f"Bearer  {secret}".encode()).decode(),
                 base64.b64encode(f"Bearer   {secret}".encode()).decode()]:
        cleaned = scrub.text(text)
        assert "goex-placeholder-k" in cleaned and secret not in cleaned, text


@pytest.mark.parametrize("nonce", ["", "AAAA", base64.b64encode(bytes(200)).decode()])
def test_a_nonce_of_the_wrong_size_is_a_damaged_vault(vault: Vault, nonce: str) -> None:
    """AES-GCM refuses such a nonce with a ValueError, which ended `secrets list` and `run` as an internal error."""
    vault.set("a", "secret-value-1")
    envelope = json.loads(vault.path.read_text())
    vault.path.write_text(json.dumps({**envelope, "nonce": nonce}))
    with pytest.raises(VaultError, match=r"is damaged \(its nonce is \d+ bytes, not 12\)"):
        vault.get("a")


@pytest.mark.parametrize("lock", ["vault.lock", "refresh"])
def test_a_lock_file_that_cannot_be_opened_is_a_vault_error(vault: Vault, lock: str) -> None:
    """A directory where the vault's lock goes made `secrets set` and `secrets rm` end as an internal error."""
    vault.set("a", "secret-value-1")
    if lock == "vault.lock":
        (vault.path.parent / "vault.lock").unlink()
        (vault.path.parent / "vault.lock").mkdir()
        with pytest.raises(VaultError, match="cannot open the vault's lock .*vault.lock: Is a directory"):
            vault.set("b", "secret-value-2")
    else:
        import hashlib

        (vault.path.parent / f"refresh-{hashlib.sha256(b'a').hexdigest()[:16]}.lock").mkdir()
        with pytest.raises(VaultError, match="cannot open the vault's lock .*refresh-.*: Is a directory"):
            vault.try_lock_refresh("a")
    assert vault.get("a") == "secret-value-1"


def test_a_vault_that_cannot_be_written_is_left_as_it_was(vault: Vault) -> None:
    """A write that fails (here the temporary file's name taken by a directory; a full disk alike) is a VaultError
    saying the vault is unchanged, not an OSError ending the command as an internal error."""
    vault.set("a", "secret-value-1")
    before = vault.path.read_bytes()
    (vault.path.parent / f".vault.json.{os.getpid()}.tmp").mkdir()
    with pytest.raises(VaultError, match=r"cannot write the vault .* \(it is unchanged\): Is a directory"):
        vault.set("b", "secret-value-2")
    assert vault.path.read_bytes() == before
