"""The secrets key: the file of Fernet keys that seals the secrets the store keeps (the group's
replication password), and the sealing itself.

The file holds one key a line, newest first (lines starting with # are comments). A value is
sealed with the newest key and unsealed with whichever key opens it (cryptography's
MultiFernet), so a rotation can add a key in front, re-seal everything, then drop the old ones
(shared/store/sealed.py). A process re-reads the file when it changes, so a running gateway
follows a rotation without a restart. Errors name the file, never a key or a value."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

HEADER = ("# Ferryman's secrets key: Fernet keys, newest first. Keep this file (mode 0600) and"
          " back it up:\n# without it the sealed secrets in the store cannot be read. Rotate"
          " with: python -m services.secrets_key rotate\n")


class SecretsKeyError(Exception):
    """The key file is missing or garbled, or a value was sealed with a key it does not hold."""


def read_keys(path: Path) -> list[bytes]:
    """The file's keys, newest first; raises SecretsKeyError naming the file and line."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SecretsKeyError(f"the secrets key file {path} does not exist"
                              " (FERRY_SECRETS_KEY_FILE)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretsKeyError(f"the secrets key file {path} cannot be read: "
                              f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            Fernet(line)
        except ValueError:
            raise SecretsKeyError(f"the secrets key file {path}, line {number}: not a Fernet key"
                                  " (32 url-safe base64-encoded bytes)") from None
        keys.append(line.encode())
    if not keys:
        raise SecretsKeyError(f"the secrets key file {path} holds no key")
    return keys


def write_keys(path: Path, keys: list[bytes]) -> None:
    """Replace the file with these keys, atomically (a reader sees the old file or the new one,
    never half of one), readable by its owner only whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(HEADER + "".join(key.decode() + "\n" for key in keys))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def make_key_file(path: Path) -> bool:
    """Make the file with one new key unless it exists; True if this call made it. Two processes
    making it at once agree on one key: the file appears whole, by a link that fails if it is
    already there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(HEADER + Fernet.generate_key().decode() + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    finally:
        Path(temporary).unlink(missing_ok=True)


@dataclass(frozen=True)
class _Loaded:
    stamp: tuple[int, int, int]
    keys: list[bytes]
    box: MultiFernet


class SecretsKey:
    """Seals and unseals with the key file's keys, re-read whenever the file changes."""

    def __init__(self, path: Path):
        self.path = path
        self._loaded: _Loaded | None = None

    def _current(self) -> _Loaded:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            raise SecretsKeyError(f"the secrets key file {self.path} does not exist"
                                  " (FERRY_SECRETS_KEY_FILE)") from None
        stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
        if self._loaded is None or self._loaded.stamp != stamp:
            keys = read_keys(self.path)
            self._loaded = _Loaded(stamp, keys, MultiFernet([Fernet(k) for k in keys]))
        return self._loaded

    @property
    def keys(self) -> list[bytes]:
        """The keys, newest first."""
        return list(self._current().keys)

    def seal(self, clear: str) -> str:
        """The value encrypted and authenticated with the newest key (a Fernet token)."""
        return self._current().box.encrypt(clear.encode()).decode()

    def unseal(self, sealed: str, *, what: str = "a sealed value") -> str:
        try:
            return self._current().box.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise SecretsKeyError(f"{what} was sealed with a key that the secrets key file "
                                  f"{self.path} does not hold (or it was altered)") from None

    def reseal(self, sealed: str, *, what: str = "a sealed value") -> str | None:
        """The value sealed again with the newest key, or None when the newest key alone
        already opens it (nothing to do)."""
        loaded = self._current()
        try:
            Fernet(loaded.keys[0]).decrypt(sealed.encode())
            return None
        except InvalidToken:
            pass
        try:
            return loaded.box.rotate(sealed.encode()).decode()
        except InvalidToken:
            raise SecretsKeyError(f"{what} was sealed with a key that the secrets key file "
                                  f"{self.path} does not hold (or it was altered)") from None
