"""What is mounted in a legacy host's chroot: only what its daemons need, all of it private to
the lab (never this machine's /dev or /run bound in: lab-notes pitfall 8)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# (mount point in the root, type, options)
MOUNTS = (
    ("proc", "proc", "nosuid,nodev,noexec"),
    ("dev", "tmpfs", "mode=755,nosuid,noexec,size=1m"),
    ("run", "tmpfs", "mode=755,nosuid,nodev,size=32m"),
)
# /dev holds these nodes only: (name, major, minor); all 0666 like on any Linux host.
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("random", 1, 8), ("urandom", 1, 9),
           ("tty", 5, 0))
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))


class MountError(Exception):
    pass


def mount_all(root: Path) -> None:
    """Mount proc, a private /dev and a fresh /run in `root` (those not mounted already)."""
    mounted = set(mounts_below(root))
    for name, fstype, options in MOUNTS:
        target = root / name
        if str(target) in mounted:
            continue
        target.mkdir(exist_ok=True)
        _run(["mount", "-t", fstype, "-o", options, f"ferry-legacy-{name}", str(target)])
        if name == "dev":
            _populate_dev(target)


def unmount_all(root: Path) -> list[str]:
    """Unmount everything below `root`, deepest first; returns what could not be unmounted."""
    left = []
    for point in sorted(mounts_below(root), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            # Busy (a process we could not stop still has it): detach it, so the root can go.
            if subprocess.run(["umount", "--lazy", point], capture_output=True).returncode:
                left.append(point)
    return left


def mounts_below(root: Path) -> list[str]:
    """Mount points at or below `root`, from this mount namespace's table."""
    base = os.path.realpath(root)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as table:
        for line in table:
            point = _unescape(line.split()[4])
            if point == base or point.startswith(base + "/"):
                found.append(point)
    return found


def _populate_dev(dev: Path) -> None:
    for name, major, minor in DEVICES:
        node = dev / name
        os.mknod(node, 0o666 | 0o020000, os.makedev(major, minor))  # S_IFCHR
        node.chmod(0o666)
    for name, target in DEV_LINKS:
        (dev / name).symlink_to(target)


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo."""
    return field.encode().decode("unicode_escape").encode("latin-1").decode("utf-8")


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise MountError(f"{' '.join(argv)}: {done.stderr.strip()}")
