"""KVM or TCG for a libvirt host's domains. /dev/kvm existing is not enough: on these machines
it exists, yet a KVM guest makes no progress. So KVM counts only if the host's domain
capabilities offer it and (on this machine's own libvirt, where the lab's kernel is at hand) a
kernel booted under KVM prints `Linux version` on its serial console within PROBE_S."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

PROBE_S = 8.0
PROBE_DOMAIN = "ferry-kvm-probe"
BOOT_DIR = Path("/var/lib/libvirt/boot")


def _local(uri: str) -> bool:
    return "://" in uri and uri.split("://", 1)[1].startswith("/")


def _kvm_offered(conn: Any) -> str | None:
    """Why the host cannot run KVM domains, or None."""
    import libvirt

    try:
        conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
    except libvirt.libvirtError as exc:
        return f"the host offers no KVM domains ({exc.get_error_message()})"
    return None


def _boot_under_kvm(conn: Any, vmlinuz: Path) -> str | None:
    """Why a kernel did not boot under KVM, or None when it did."""
    import libvirt

    BOOT_DIR.mkdir(parents=True, exist_ok=True)
    kernel = BOOT_DIR / "ferry-kvm-probe-vmlinuz"
    shutil.copyfile(vmlinuz, kernel)
    console = Path("/var/log/libvirt/qemu") / f"{PROBE_DOMAIN}.console.log"
    console.unlink(missing_ok=True)
    xml = f"""<domain type='kvm'><name>{PROBE_DOMAIN}</name><memory unit='MiB'>256</memory>
      <vcpu>1</vcpu><os><type arch='x86_64'>hvm</type><kernel>{kernel}</kernel>
      <cmdline>console=ttyS0 panic=-1</cmdline></os><cpu mode='host-passthrough'/>
      <on_reboot>destroy</on_reboot><devices><serial type='pty'><log file='{console}'/>
      </serial><memballoon model='none'/></devices></domain>"""
    try:
        old = conn.lookupByName(PROBE_DOMAIN)  # a probe a crash left running
        old.destroy()
    except libvirt.libvirtError:
        pass
    try:
        domain = conn.createXML(xml, 0)
    except libvirt.libvirtError as exc:
        return f"a KVM domain did not start: {exc.get_error_message()}"
    try:
        deadline = time.monotonic() + PROBE_S
        while time.monotonic() < deadline:
            if console.exists() and b"Linux version" in console.read_bytes():
                return None
            if not domain.isActive():
                return "the KVM domain stopped before its kernel printed anything"
            time.sleep(0.2)
        return f"no kernel output under KVM within {PROBE_S:.0f}s"
    finally:
        try:
            domain.destroy()
        except libvirt.libvirtError:
            pass


def kvm_verdict(conn: Any, uri: str, vmlinuz: Path | None, cache: Path) -> tuple[str, str]:
    """("kvm"|"qemu", why) for the host; blocking (run it in a thread). Cached per host, libvirt
    and hypervisor version and kernel, since a probe costs seconds."""
    key = f"{uri} | {conn.getLibVersion()} | {conn.getVersion()} | {os.uname().release}"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["type"], f"cached probe: {cached['why']}"
    except (OSError, ValueError):
        pass
    why = _kvm_offered(conn)
    if why is None and _local(uri) and vmlinuz is not None and vmlinuz.is_file():
        why = _boot_under_kvm(conn, vmlinuz)
    verdict = ("qemu", why) if why else ("kvm", "the host offers KVM" + (
        " and a kernel booted under it" if _local(uri) else ""))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "type": verdict[0], "why": verdict[1]}))
    return verdict[0], f"probe: {verdict[1]}"
