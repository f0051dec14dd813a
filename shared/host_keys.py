"""SSH host keys pinned: a machine's public host keys as its own sshd would present them, their
fingerprints as `ssh-keygen -lf` and ssh's own warnings print them, and the known_hosts file
the cutover hands to `ssh -o StrictHostKeyChecking=yes`.

A new VM reports its keys through the gateway when its configuration script made them (or found
them in its root archive); a key line that is not a public key of a known type and a sane size
is refused here, at the door, so that what the store holds always makes a valid known_hosts.
Plain functions, no I/O but the writer's one file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

# The key types OpenSSH's sshd makes with `ssh-keygen -A` or accepts as a HostKey, by the name
# a public key line starts with (and its blob repeats). DSA is gone from OpenSSH 9.8.
KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com", "ssh-dss",
})
# A blob's size: an ed25519 key's is 51 bytes, an RSA 16384-bit key's about 2 KB; anything far
# beyond is not a host key.
MIN_BLOB = 32
MAX_BLOB = 4096
MAX_COMMENT = 200
MAX_KEYS = 8  # sshd makes 3 or 4; a root archive may bring a few more


class BadHostKey(ValueError):
    """A line that is not a usable public host key; the message says which and why."""


@dataclass(frozen=True)
class HostKey:
    """One public host key: its type and its base64 blob (the comment is dropped: it is the
    legacy host's name or root@<wherever ssh-keygen ran>, and known_hosts has no use for it)."""

    type: str
    blob: str

    @property
    def line(self) -> str:
        return f"{self.type} {self.blob}"

    @property
    def fingerprint(self) -> str:
        """SHA256:..., as ssh prints it (base64 without padding)."""
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def __str__(self) -> str:
        return f"{self.type} {self.fingerprint}"


def parse_key(text: str) -> HostKey:
    """One public key line (`TYPE BASE64 [COMMENT]`, as in ssh_host_*_key.pub), or BadHostKey."""
    if not isinstance(text, str):
        raise BadHostKey("a host key must be a line of text")
    words = text.strip().split(None, 2)
    if len(words) < 2:
        raise BadHostKey(f"not a public key line (TYPE BASE64 [COMMENT]): {text[:80]!r}")
    kind, blob = words[0], words[1]
    comment = words[2] if len(words) == 3 else ""
    if kind not in KEY_TYPES:
        raise BadHostKey(f"unknown host key type {kind[:40]!r} (known: "
                         f"{', '.join(sorted(KEY_TYPES))})")
    if "\n" in comment or "\r" in comment or len(comment) > MAX_COMMENT:
        raise BadHostKey(f"the comment of the {kind} key is not one short line")
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise BadHostKey(f"the {kind} key is not valid base64") from None
    if not MIN_BLOB <= len(raw) <= MAX_BLOB:
        raise BadHostKey(f"the {kind} key is {len(raw)} bytes; a host key is "
                         f"{MIN_BLOB} to {MAX_BLOB}")
    if _blob_type(raw) != kind:
        raise BadHostKey(f"the {kind} key's data is not a {kind} key")
    return HostKey(kind, base64.b64encode(raw).decode())


def parse_keys(lines: list[str]) -> list[HostKey]:
    """A machine's public host keys, one per type (what a known_hosts can pin), or BadHostKey."""
    if not lines:
        raise BadHostKey("no host key given")
    if len(lines) > MAX_KEYS:
        raise BadHostKey(f"{len(lines)} host keys; at most {MAX_KEYS}")
    keys = []
    for number, line in enumerate(lines):
        try:
            keys.append(parse_key(line))
        except BadHostKey as exc:
            raise BadHostKey(f"key {number + 1}: {exc}") from None
    kinds = [key.type for key in keys]
    repeated = sorted({kind for kind in kinds if kinds.count(kind) > 1})
    if repeated:
        raise BadHostKey(f"more than one {', '.join(repeated)} key: a machine presents one of "
                         "each type")
    return keys


def _blob_type(raw: bytes) -> str | None:
    """The type a key blob names first (an SSH string: 4-byte length, then the name)."""
    if len(raw) < 4:
        return None
    (size,) = struct.unpack(">I", raw[:4])
    if size > 64 or len(raw) < 4 + size:
        return None
    return raw[4:4 + size].decode("ascii", errors="replace")


def known_hosts_name(address: str, port: int = 22) -> str:
    """A host as known_hosts and ssh's -R name it: bare on port 22, else [address]:port."""
    return address if port == 22 else f"[{address}]:{port}"


def known_hosts_lines(address: str, port: int, keys: list[HostKey]) -> list[str]:
    name = known_hosts_name(address, port)
    if not name or any(c.isspace() or c in ",#" for c in address):
        raise BadHostKey(f"{address!r} cannot be named in a known_hosts file")
    return [f"{name} {key.line}" for key in keys]


def write_known_hosts(path: Path, pinned: dict[tuple[str, int], list[HostKey]]) -> None:
    """A known_hosts file holding exactly `pinned` ((address, port) -> keys), replaced whole:
    ssh with StrictHostKeyChecking=yes then reaches those machines only if they present one of
    these keys, and no other machine at all."""
    lines = [line for (address, port), keys in pinned.items()
             for line in known_hosts_lines(address, port, keys)]
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(f"{line}\n" for line in lines))
    os.replace(partial, path)


def fingerprints(keys: list[HostKey]) -> str:
    """`ssh-ed25519 SHA256:..., ssh-rsa SHA256:...`: what an operator compares with
    `ssh-keyscan HOST | ssh-keygen -lf -`."""
    return ", ".join(str(key) for key in keys) or "none"
