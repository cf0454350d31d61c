"""The encrypted vault: secrets by name, AES-GCM at rest, replaced atomically, keyed by GOEX_PROXY_KEY or vault.key."""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import VaultError

KEY_ENV = "GOEX_PROXY_KEY"
VAULT_FILE = "vault.json"
KEY_FILE = "vault.key"
_AAD = b"goex-proxy vault v1"
#: The nonce every write makes: AES-GCM's standard 96 bits.
_NONCE_BYTES = 12


RAW_KEY_PREFIX = "goex-key-v1:"
MIN_SECRET_LENGTH = 8


def _decode_key(text: str, salt: bytes) -> bytes:
    """`goex-key-v1:` + 32 bytes in base64 is a key as is; anything else is a passphrase stretched with scrypt."""
    text = text.strip()
    if text.startswith(RAW_KEY_PREFIX):
        encoded = text[len(RAW_KEY_PREFIX):]
        try:
            raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise VaultError(f"the vault key after {RAW_KEY_PREFIX!r} must be 32 bytes in base64")
        return raw
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(text.encode())


def new_key_file(path: Path) -> None:
    """Write a fresh random key, readable by its owner only; never overwrite one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(RAW_KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=") + "\n")


class Vault:
    """Named secrets encrypted at rest; every write replaces the file atomically."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / VAULT_FILE
        self.key_path = state_dir / KEY_FILE

    def _key_text(self, create: bool) -> str:
        if os.environ.get(KEY_ENV):
            return os.environ[KEY_ENV]
        if not self.key_path.exists() and create:
            try:
                new_key_file(self.key_path)
            except FileExistsError:  # another process made it first: use theirs
                pass
            except OSError as exc:
                raise VaultError(f"cannot create the vault key {self.key_path}: {exc.strerror or exc}") from None
        try:
            return self.key_path.read_text(encoding="ascii")
        except FileNotFoundError:
            raise VaultError(f"no vault key: set {KEY_ENV} or run `goex-proxy init` (it writes {self.key_path})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise VaultError(f"cannot read the vault key {self.key_path}: {exc}") from None

    def _read(self) -> tuple[dict[str, Any], bytes]:
        """The decrypted entries and the passphrase salt (a new one for a vault not yet written)."""
        try:
            envelope = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}, secrets.token_bytes(16)
        except (OSError, ValueError) as exc:
            raise VaultError(f"the vault {self.path} is unreadable: {exc}") from None
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            salt = base64.b64decode(envelope["salt"])
            nonce = base64.b64decode(envelope["nonce"])
            ciphertext = base64.b64decode(envelope["ciphertext"])
        except (KeyError, TypeError, binascii.Error):
            raise VaultError(f"the vault {self.path} is damaged (its envelope is incomplete)") from None
        key = _decode_key(self._key_text(create=False), salt)
        if len(nonce) != _NONCE_BYTES:  # AES-GCM would refuse it with a ValueError, not as a wrong key
            raise VaultError(f"the vault {self.path} is damaged (its nonce is {len(nonce)} bytes, not "
                             f"{_NONCE_BYTES})")
        try:
            plain = AESGCM(key).decrypt(nonce, ciphertext, _AAD)
        except InvalidTag:
            raise VaultError(f"cannot open the vault {self.path}: the key is wrong ({KEY_ENV} or {self.key_path}) "
                             "or the file was altered") from None
        return json.loads(plain), salt

    def _write(self, entries: dict[str, Any], salt: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = _decode_key(self._key_text(create=True), salt)
        nonce = secrets.token_bytes(_NONCE_BYTES)
        ciphertext = AESGCM(key).encrypt(nonce, json.dumps(entries).encode(), _AAD)
        envelope = {"version": 1, "cipher": "AES-256-GCM", "salt": base64.b64encode(salt).decode(),
                    "nonce": base64.b64encode(nonce).decode(), "ciphertext": base64.b64encode(ciphertext).decode()}
        try:
            self._replace(envelope)
        except OSError as exc:  # a full disk, a directory in the way: the vault as it was, and one line saying so
            raise VaultError(f"cannot write the vault {self.path} (it is unchanged): {exc.strerror or exc}") from None

    def _replace(self, envelope: dict[str, Any]) -> None:
        """Put `envelope` in the vault file's place in one step."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(envelope, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)  # readers see the old vault or the new one, never half of either
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)  # the rename itself survives a crash
            finally:
                os.close(directory)
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, name: str) -> str | None:
        entry = self._read()[0].get(name)
        return str(entry["value"]) if entry else None

    def all(self) -> dict[str, str]:
        """Every secret's value by name (for the proxy, which holds them in memory only)."""
        return {name: str(entry["value"]) for name, entry in self._read()[0].items()}

    def names(self) -> dict[str, float]:
        """Secret names and when each was last set."""
        return {name: float(entry.get("updated", 0)) for name, entry in self._read()[0].items()}

    def _open_lock(self, path: Path) -> int:
        """A lock file of the vault, opened (made if missing); VaultError naming it when it cannot be (a directory put
        in its place, a state directory that is not writable), where the OSError ended the command as a bug."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise VaultError(f"cannot open the vault's lock {path}: {exc.strerror or exc}") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time: a read-modify-write holds an exclusive lock on vault.lock."""
        fd = self._open_lock(self.path.with_name("vault.lock"))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def try_lock_refresh(self, name: str) -> int | None:
        """The open file whose close lets go, if this process alone may now refresh the OAuth2 tokens stored as `name`
        (among every goex-proxy process on this state directory: `run`'s workers, an `exec` or `undo` beside it);
        None while another holds it. Never blocks, so a waiter that is cancelled leaves nothing locked behind."""
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        fd = self._open_lock(self.path.with_name(f"refresh-{digest}.lock"))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def set(self, name: str, value: str) -> None:
        if len(value) < MIN_SECRET_LENGTH:
            raise VaultError(f"refusing to store {name!r}: a secret shorter than {MIN_SECRET_LENGTH} characters "
                             "cannot be told apart from ordinary text when the proxy scrubs it from responses")
        with self._locked():
            entries, salt = self._read()
            entries[name] = {"value": value, "updated": time.time()}
            self._write(entries, salt)

    def remove(self, name: str) -> bool:
        with self._locked():
            entries, salt = self._read()
            if entries.pop(name, None) is None:
                return False
            self._write(entries, salt)
            return True
