"""QEMU command lines for the qemu provider, and the names it derives; pure functions."""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

from shared.providers.base import BootSource, ProviderError
from shared.providers.qemu_net import GUEST_GATEWAY_IP

GUEST_GATEWAY_URL = f"http://{GUEST_GATEWAY_IP}"
QEMU = "qemu-system-x86_64"
# Under TCG the default model is faster than `max` (whose AVX2 code paths are emulated slowly),
# Nehalem and max-without-AVX on hashing and zstd, and boots fastest (docs/lab.md); Debian runs
# on it. A guest needing x86-64-v2 (RHEL 9) needs another model.
TCG_CPU = "qemu64"
BOOTP_FILE_MAX = 127  # the BOOTP `file` field slirp puts the boot URL in holds 128 bytes


# --- names, pure --------------------------------------------------------------------------------

def vm_ref(idempotency_key: str) -> str:
    return "qemu-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:12]


def vm_mac(ref: str) -> str:
    """52:54:00 (QEMU's prefix, locally administered) + three bytes of the ref's hash."""
    tail3 = hashlib.sha256(ref.encode()).digest()[:3]
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail3)


def opt_value(value: str) -> str:
    """A value inside a QEMU option list, where ',' separates options and ',,' is a comma."""
    return value.replace(",", ",,")


def boot_url(vm_id: str, token: str) -> str:
    return f"{GUEST_GATEWAY_URL}/v1/boot/{quote(vm_id, safe='')}?token={quote(token, safe='')}"


def slirp_netdev(*, python: str, target: tuple[str, int], bootfile: str | None) -> str:
    """User networking that reaches nothing but the gateway, as 10.0.2.100:80. libslirp splits
    the guestfwd command like a shell (g_shell_parse_argv), hence shlex."""
    cmd = shlex.join([python, "-m", "shared.providers.guestfwd", target[0], str(target[1])])
    netdev = f"user,id=n0,restrict=on,guestfwd=tcp:{GUEST_GATEWAY_IP}:80-cmd:{opt_value(cmd)}"
    if bootfile:
        if len(bootfile) > BOOTP_FILE_MAX:
            raise ProviderError(f"boot URL longer than {BOOTP_FILE_MAX} bytes (DHCP's boot file "
                                f"field): {len(bootfile)}")
        netdev += f",bootfile={opt_value(bootfile)}"
    return netdev


def tap_netdev(tap: str) -> str:
    return f"tap,id=n0,ifname={tap},script=no,downscript=no"


class DiskFile(NamedTuple):
    """A VM's disk image and the serial its guest reads from the disk."""

    path: Path
    serial: str


def accel_args(accel: str) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    # Multi-threaded TCG: one host thread per vCPU, faster than thread=single (docs/lab.md).
    return ["-accel", "tcg,thread=multi", "-cpu", TCG_CPU]


def qemu_argv(*, folder: Path, name: str, accel: str, cpus: int, memory_mb: int,
              disks: list[DiskFile], mac: str, source: BootSource, netdev: str) -> list[str]:
    """QEMU's command line; it runs with `folder` as its working directory (qmp.sock is
    relative, so deep folders do not hit the 108-byte unix socket path limit)."""
    argv = [QEMU, "-name", opt_value(name), "-machine", "pc", *accel_args(accel),
            "-smp", str(cpus), "-m", str(memory_mb),
            "-display", "none", "-monitor", "none", "-parallel", "none",
            "-chardev", f"file,id=console,path={opt_value(str(folder / f'console-{source}.log'))}",
            "-serial", "chardev:console",
            "-qmp", "unix:qmp.sock,server=on,wait=off",
            "-pidfile", str(folder / "qemu.pid")]
    for n, disk in enumerate(disks):
        # Default cache (writeback): cache=unsafe is no faster here (docs/lab-notes.md), so the
        # safer default stays. A device of its own, not if=virtio, to carry the serial the
        # configuration script finds the disk by.
        argv += ["-drive", f"file={opt_value(str(disk.path))},if=none,id=d{n},format=qcow2,"
                           "discard=unmap",
                 "-device", f"virtio-blk-pci,drive=d{n},serial={opt_value(disk.serial)}"]
    # No romfile=: QEMU patches the PCI id only into its default ROM (lab notes, pitfall 1).
    argv += ["-netdev", netdev, "-device", f"virtio-net-pci,netdev=n0,mac={mac}"]
    if source == BootSource.NETWORK:
        # The migration image powers off when done; a reboot would PXE-boot it again.
        argv += ["-boot", "n", "-no-reboot"]
    else:
        argv += ["-boot", "c"]
    return argv
