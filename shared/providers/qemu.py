"""The qemu provider: the lab's VMs as QEMU processes on this machine (docs/lab-notes.md).

Per VM a run folder, lab_dir/vms/<ref>/: vm.json (spec, mac, network, disks, last boot), qcow2
disks, console-<source>.log (serial), qemu.log (QEMU's own output), qmp.sock, qemu.pid.

- Migration network (create, boot NETWORK): QEMU in the root namespace with slirp, restrict=on,
  so the VM reaches only 10.0.2.100:80, which a guestfwd rule connects to the gateway; slirp's
  DHCP gives iPXE the VM's boot URL. The migration image powers off when its script ends.
- Group network (attach group_network(g), boot DISK): QEMU inside the group's namespace on a tap
  of its bridge (qemu_net); the relay there makes 10.0.2.100:80 the gateway again.

QEMU is started in its own session with its output to a file, so VMs outlive the service that
started them; `teardown` (or `python -m shared.providers.qemu down`) stops everything recorded
under lab_dir. Calls are idempotent: a VM's state is its folder and its QEMU process, never
memory, and each call takes a file lock per VM (services may each hold a provider).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from ipaddress import ip_interface
from pathlib import Path

from shared.logging import get_logger
from shared.providers.base import (
    MIGRATION_NETWORK, BootSource, DiskBus, ProviderDisk, ProviderError, ProviderVm, VmSpec,
    group_network, planned_disks,
)
from shared.providers.qemu_argv import (
    GUEST_GATEWAY_URL, QEMU, DiskFile, boot_url, opt_value, qemu_argv, slirp_netdev, tap_netdev,
    vm_mac, vm_ref,
)
from shared.providers.qemu_net import GroupNetworks, group_namespace, tap_name
from shared.providers.qemu_proc import (
    alive, flock, qmp, read_json, read_pid, run, spawn, stop, tail, wait_gone, write_json,
)
from shared.settings import Settings

__all__ = ["GUEST_GATEWAY_URL", "QemuProvider", "group_namespace", "teardown"]

IMAGE_FILES = ("migration-vmlinuz", "migration-initrd.img", "base-image.tar.zst", "kernel.tar.zst")
IPXE_ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")  # QEMU's default ROM for virtio-net-pci
KVM_PROBE_S = 8.0
START_S = 15.0  # QEMU must answer on QMP within this after it is started
STOP_S = 10.0  # after QMP quit, before SIGTERM
_REF = re.compile(r"^qemu-[0-9a-f]{12}$")
_BOOT_MARK = "=== qemu boot"

log = get_logger(__name__)


def _group_of(network: str) -> str | None:
    prefix = group_network("")
    return network[len(prefix):] if network.startswith(prefix) else None


def _gateway_target(settings: Settings) -> tuple[str, int]:
    host = settings.gateway_host
    return ("127.0.0.1" if host in ("", "0.0.0.0", "::") else host), settings.gateway_port


def _child_env() -> dict[str, str]:
    # guestfwd and nsrelay run as `python -m shared.providers...`: make them importable even
    # when this interpreter does not have the project installed.
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


# --- host checks --------------------------------------------------------------------------------

def _need_qemu() -> None:
    for tool, package in ((QEMU, "qemu-system-x86"), ("qemu-img", "qemu-utils")):
        if shutil.which(tool) is None:
            raise ProviderError(f"{tool} is not installed (apt-get install {package})")


def _need_root() -> None:
    if os.geteuid() != 0:
        raise ProviderError("the qemu provider must run as root: group networks are network "
                            "namespaces with taps and a relay that enters them")


def _need_images(images: Path) -> None:
    missing = [name for name in IMAGE_FILES if not (images / name).is_file()]
    if missing:
        raise ProviderError(f"lab images missing in {images}: {', '.join(missing)}; build them "
                            "with deploy/lab/build-images.sh (or set FERRY_LAB_IMAGES)")


# --- acceleration -------------------------------------------------------------------------------

async def probe_kvm(vmlinuz: Path, folder: Path) -> tuple[str, str]:
    """("kvm"|"tcg", why). KVM counts only if a kernel prints `Linux version` on the serial
    console within KVM_PROBE_S: here /dev/kvm exists but guests abort or stall silently."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm is missing or not usable"
    console, errors = folder / "kvm-probe.console", folder / "kvm-probe.log"
    console.unlink(missing_ok=True)
    with open(errors, "wb") as err:
        proc = await asyncio.create_subprocess_exec(
            QEMU, "-accel", "kvm", "-cpu", "host", "-m", "256", "-display", "none",
            "-monitor", "none", "-no-reboot", "-nic", "none",
            "-chardev", f"file,id=console,path={opt_value(str(console))}", "-serial", "chardev:console",
            "-kernel", str(vmlinuz), "-append", "console=ttyS0 panic=-1",
            stdin=asyncio.subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        deadline = time.monotonic() + KVM_PROBE_S
        while time.monotonic() < deadline:
            if console.exists() and b"Linux version" in console.read_bytes():
                return "kvm", "a kernel booted under KVM"
            if proc.returncode is not None:
                return "tcg", f"QEMU with KVM exited {proc.returncode}: {tail(errors, 2)}"
            try:
                await asyncio.wait_for(proc.wait(), 0.1)
            except TimeoutError:
                pass
        return "tcg", f"no kernel output under KVM within {KVM_PROBE_S:.0f}s"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- the provider -------------------------------------------------------------------------------

class QemuProvider:
    name = "qemu"
    simulated = False

    def __init__(self, settings: Settings):
        self.settings = settings
        self.lab = settings.lab_dir
        self.target = _gateway_target(settings)
        self.env = _child_env()
        self.nets = GroupNetworks(self.lab, self.target, sys.executable, self.env)
        self._accel: str | None = None
        self._children: dict[int, subprocess.Popen] = {}

    # --- records ---

    def _folder(self, ref: str) -> Path:
        if not _REF.match(ref):
            raise ProviderError(f"qemu: {ref!r} is not a qemu VM reference")
        return self.lab / "vms" / ref

    def _lock(self, ref: str):
        return flock(self.lab / "locks" / f"{ref}.lock")

    def _load(self, ref: str) -> dict:
        record = read_json(self._folder(ref) / "vm.json")
        if record is None:
            raise ProviderError(f"qemu: no VM {ref}")
        return record

    def _save(self, ref: str, record: dict) -> None:
        write_json(self._folder(ref) / "vm.json", record)

    @staticmethod
    def _marker(folder: Path) -> str:
        return str(folder / "qemu.pid")

    def _pid(self, folder: Path, record: dict) -> int | None:
        return read_pid(folder / "qemu.pid") or record.get("pid")

    # --- the protocol ---

    async def create_vm(self, spec: VmSpec, *, idempotency_key: str) -> ProviderVm:
        planned = planned_disks(spec)
        for disk in planned:
            if disk.bus != DiskBus.VIRTIO:
                raise ProviderError(f"qemu: VM {spec.name}, disk {disk.index}: planned on "
                                    f"{disk.bus.value}, but the qemu provider attaches virtio "
                                    "disks only")
        ref = vm_ref(idempotency_key)
        folder = self._folder(ref)
        async with self._lock(ref):
            record = read_json(folder / "vm.json")
            if record is not None:
                if record["key"] != idempotency_key:
                    raise ProviderError(f"qemu: {ref} belongs to another idempotency key")
                return ProviderVm(ref=ref, mac=record["mac"])
            _need_root()
            _need_qemu()
            _need_images(self.settings.images_dir)
            folder.mkdir(parents=True, exist_ok=True)
            disks = []
            for n, size_gb in enumerate(spec.disks_gb):
                disk = folder / f"disk{n}.qcow2"
                if not disk.exists():  # made under a temporary name: a crash leaves no half disk
                    partial = folder / f"disk{n}.partial"
                    await run("qemu-img", "create", "-q", "-f", "qcow2", str(partial), f"{size_gb}G")
                    partial.replace(disk)
                disks.append(disk.name)
            record = {"ref": ref, "key": idempotency_key, "spec": spec.model_dump(mode="json"),
                      "mac": vm_mac(ref), "network": MIGRATION_NETWORK, "disks": disks,
                      "planned_disks": [d.model_dump(mode="json") for d in planned],
                      "boot": None, "pid": None}
            self._save(ref, record)
        log.info("qemu: VM created", ref=ref, vm=spec.name, disks_gb=spec.disks_gb)
        return ProviderVm(ref=ref, mac=record["mac"])

    async def attach(self, ref: str, network: str) -> None:
        async with self._lock(ref):
            record = self._load(ref)
            folder = self._folder(ref)
            old = record["network"]
            group = _group_of(network)
            if network != MIGRATION_NETWORK and group is None:
                raise ProviderError(f"qemu: unknown network {network!r}")
            if network != old and alive(self._pid(folder, record), self._marker(folder)):
                raise ProviderError(f"qemu: {ref} is running on {old}; power it off before "
                                    f"moving it to {network}")
            if group is not None:
                bridge = self._bridge_address(record)  # fails before anything changes
                namespace = group_namespace(group)
                async with self.nets.lock(namespace):
                    record["network"] = network  # first: a concurrent clean-up sees the VM
                    self._save(ref, record)
                    await self.nets.ensure(namespace, group, [bridge])
                    await self.nets.ensure_tap(namespace, tap_name(ref))
            else:
                record["network"] = network
                self._save(ref, record)
            if old != network and _group_of(old) is not None:
                await self._leave(ref, _group_of(old))
        if old != network:
            log.info("qemu: VM attached", ref=ref, network=network)

    async def boot(self, ref: str, source: BootSource, *,
                   kernel_args: dict[str, str] | None = None) -> None:
        source = BootSource(source)
        self._reap()
        async with self._lock(ref):
            record = self._load(ref)
            folder = self._folder(ref)
            _need_qemu()
            group = _group_of(record["network"])
            bootfile = None
            if source == BootSource.NETWORK:
                if group is not None:
                    raise ProviderError(f"qemu: {ref} is on {record['network']}, which has no "
                                        "network boot; attach it to the migration network first")
                _need_images(self.settings.images_dir)
                if not IPXE_ROM.is_file():
                    raise ProviderError(f"{IPXE_ROM} is missing (apt-get install ipxe-qemu)")
                args = kernel_args or {}
                if not args.get("ferry.vm") or not args.get("ferry.token"):
                    raise ProviderError("qemu: a network boot needs ferry.vm and ferry.token")
                # ferry.gateway is not used: the VM reaches the gateway as 10.0.2.100.
                bootfile = boot_url(args["ferry.vm"], args["ferry.token"])
            wanted = {"source": source.value, "network": record["network"],
                      "target": list(self.target),
                      "bootfile_sha256": bootfile and hashlib.sha256(bootfile.encode()).hexdigest()}
            pid = self._pid(folder, record)
            if alive(pid, self._marker(folder)) and record.get("boot") == wanted:
                return  # this very boot is under way (a repeated call)
            await self._stop(folder, pid)
            accel = await self._acceleration()
            prefix, netdev = await self._network(ref, record, bootfile)
            spec = VmSpec.model_validate(record["spec"])
            # More vCPUs than host cores only slows everything under TCG.
            cpus = max(1, min(spec.cpus, os.cpu_count() or 1))
            argv = prefix + qemu_argv(
                folder=folder, name=f"{spec.name}-{ref}", accel=accel, cpus=cpus,
                memory_mb=spec.memory_mb,
                disks=[DiskFile(folder / file, disk.serial)
                       for file, disk in zip(record["disks"], self._disks(record), strict=True)],
                mac=record["mac"], source=source, netdev=netdev)
            record["boot"], record["pid"] = wanted, None
            self._save(ref, record)
            (folder / "qmp.sock").unlink(missing_ok=True)
            with open(folder / "qemu.log", "a") as out:
                out.write(f"{_BOOT_MARK} {source.value} on {record['network']} at "
                          f"{time.strftime('%Y-%m-%dT%H:%M:%S')} ({accel}, {cpus} vCPU)\n")
            child = await spawn(argv, log=folder / "qemu.log", cwd=folder, env=self.env)
            self._children[child.pid] = child
            record["pid"] = child.pid
            self._save(ref, record)
            await self._wait_started(ref, folder, child)
        log.info("qemu: VM booted", ref=ref, source=source.value, network=record["network"],
                 accel=accel, pid=child.pid)

    async def power_off(self, ref: str) -> None:
        self._reap()
        async with self._lock(ref):
            record = self._load(ref)
            folder = self._folder(ref)
            await self._stop(folder, self._pid(folder, record))
            if record.get("pid"):
                record["pid"] = None
                self._save(ref, record)

    async def delete(self, ref: str) -> None:
        folder = self._folder(ref)
        async with self._lock(ref):
            record = read_json(folder / "vm.json")
            if record is not None:
                await self._stop(folder, self._pid(folder, record))
                # Renamed away first: a crash halfway through leaves no half-deleted VM.
                trash = self.lab / "vms" / f".deleted-{ref}-{uuid.uuid4().hex[:8]}"
                folder.rename(trash)
                await asyncio.to_thread(shutil.rmtree, trash, True)
                log.info("qemu: VM deleted", ref=ref)
            for stale in (self.lab / "vms").glob(f".deleted-{ref}-*"):  # a crash's leftovers
                await asyncio.to_thread(shutil.rmtree, stale, True)
        group = _group_of(record["network"]) if record is not None else None
        if group is not None:
            await self._leave(ref, group)  # its tap, then the namespace if it was the last
        else:
            await self._collect_networks()  # also finishes a delete a crash interrupted

    async def addresses(self, ref: str) -> list[str]:
        record = self._load(ref)
        address = record["spec"].get("address")
        if _group_of(record["network"]) is None or not address:
            return []
        return [str(ip_interface(address).ip)]

    async def disks(self, ref: str) -> list[ProviderDisk]:
        return self._disks(self._load(ref))

    @staticmethod
    def _disks(record: dict) -> list[ProviderDisk]:
        if "planned_disks" not in record:  # made before disks had serials: as planned now
            return planned_disks(VmSpec.model_validate(record["spec"]))
        return [ProviderDisk.model_validate(d) for d in record["planned_disks"]]

    async def set_outbound(self, group: str, open_: bool) -> None:
        namespace = group_namespace(group)
        async with self.nets.lock(namespace):
            await self.nets.set_outbound(namespace, open_)
        log.info("qemu: group outbound " + ("opened" if open_ else "blocked"), group=group)

    async def close(self) -> None:
        # Nothing is held open (QMP connections last one command). Running VMs are left alone:
        # they outlive the service; teardown() stops them.
        self._reap()
        self._children.clear()

    def _reap(self) -> None:
        """Collect the exit status of VMs this process started that powered off by themselves
        (else they stay zombies of this process until it spawns again)."""
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]

    # --- helpers ---

    async def _network(self, ref: str, record: dict, bootfile: str | None,
                       ) -> tuple[list[str], str]:
        """What QEMU runs under (nothing, or `ip netns exec NS`) and its -netdev."""
        group = _group_of(record["network"])
        if group is None:
            return [], slirp_netdev(python=sys.executable, target=self.target, bootfile=bootfile)
        _need_root()
        namespace = group_namespace(group)
        async with self.nets.lock(namespace):  # rebuilt if teardown removed it
            await self.nets.ensure(namespace, group, [self._bridge_address(record)])
            await self.nets.ensure_tap(namespace, tap_name(ref))
        return ["ip", "netns", "exec", namespace], tap_netdev(tap_name(ref))

    def _bridge_address(self, record: dict) -> str:
        spec = record["spec"]
        if not spec.get("address") or not spec.get("gateway"):
            raise ProviderError(
                f"qemu: VM {spec['name']} has no planned address and gateway; on its group's "
                "network it reaches the migration service through that gateway (set "
                "network.address and network.gateway in the plan)")
        prefix = ip_interface(spec["address"]).network.prefixlen
        return f"{spec['gateway']}/{prefix}"

    async def _leave(self, ref: str, group: str) -> None:
        namespace = group_namespace(group)
        async with self.nets.lock(namespace):
            await self.nets.remove_tap(namespace, tap_name(ref))
        await self._collect_networks()

    def _attached_namespaces(self) -> set[str]:
        found = set()
        for path in (self.lab / "vms").glob("qemu-*/vm.json"):
            group = _group_of((read_json(path) or {}).get("network", ""))
            if group is not None:
                found.add(group_namespace(group))
        return found

    async def _collect_networks(self) -> None:
        """Delete the group namespaces no VM is attached to any more."""
        for namespace in self.nets.recorded():
            if namespace in self._attached_namespaces():
                continue
            async with self.nets.lock(namespace):
                if namespace not in self._attached_namespaces():  # again, under the lock
                    await self.nets.delete(namespace)
                    log.info("qemu: group network deleted", namespace=namespace)

    async def _stop(self, folder: Path, pid: int | None) -> None:
        marker = self._marker(folder)
        if not alive(pid, marker):
            return
        try:
            await qmp(folder, "quit", timeout=3)
            if await wait_gone(pid, marker, STOP_S):
                return
        except (OSError, ConnectionError, TimeoutError, ValueError):
            pass  # no QMP (yet): signals
        await stop(pid, marker, grace=5, group=True)

    async def _wait_started(self, ref: str, folder: Path, child) -> None:
        deadline = time.monotonic() + START_S
        while True:
            if child.poll() is not None:
                raise ProviderError(f"qemu: QEMU for {ref} exited at once (status "
                                    f"{child.returncode}): {self._boot_log(folder)}")
            try:
                if "return" in await qmp(folder, "query-status", timeout=2):
                    return
            except (OSError, ConnectionError, TimeoutError, ValueError):
                pass
            if time.monotonic() > deadline:
                await stop(child.pid, self._marker(folder), grace=2, group=True)
                raise ProviderError(f"qemu: QEMU for {ref} did not answer on QMP within "
                                    f"{START_S:.0f}s: {self._boot_log(folder)}")
            await asyncio.sleep(0.1)

    @staticmethod
    def _boot_log(folder: Path) -> str:
        text = (folder / "qemu.log").read_text(errors="replace") if (folder / "qemu.log").exists() else ""
        lines = text.rsplit(_BOOT_MARK, 1)[-1].strip().splitlines()[1:]  # this boot's only
        return "\n".join(lines[-15:]) or "(QEMU printed nothing)"

    async def _acceleration(self) -> str:
        if self._accel:
            return self._accel
        choice = self.settings.qemu_accel
        if choice in ("kvm", "tcg"):
            accel, why = choice, "FERRY_QEMU_ACCEL"
        elif choice != "auto":
            raise ProviderError(f"FERRY_QEMU_ACCEL={choice!r}: use auto, kvm or tcg")
        else:
            accel, why = await self._probed_acceleration()
        log.info("qemu: acceleration chosen", accel=accel, reason=why)
        self._accel = accel
        return accel

    async def _probed_acceleration(self) -> tuple[str, str]:
        """The KVM probe's verdict, cached in lab_dir per QEMU version and host kernel."""
        _, out, _ = await run(QEMU, "--version")
        key = f"{out.splitlines()[0] if out else '?'} | host kernel {os.uname().release}"
        cache = self.lab / "accel.json"
        async with flock(self.lab / "locks" / "accel.lock"):
            cached = read_json(cache) or {}
            if cached.get("key") == key:
                return cached["accel"], f"cached probe: {cached['reason']}"
            _need_images(self.settings.images_dir)
            accel, why = await probe_kvm(self.settings.images_dir / "migration-vmlinuz", self.lab)
            write_json(cache, {"key": key, "accel": accel, "reason": why})
            return accel, f"probe: {why}"


# --- supervision --------------------------------------------------------------------------------

async def teardown(settings: Settings) -> None:
    """Stop every QEMU and relay recorded under settings.lab_dir and delete every namespace the
    provider made. Leaves the VM folders (disks, consoles) in place. Safe to repeat."""
    lab = settings.lab_dir
    folders = [p for p in (lab / "vms").glob("*") if p.is_dir()]

    async def stop_vm(folder: Path) -> None:
        record = read_json(folder / "vm.json") or {}
        pid = read_pid(folder / "qemu.pid") or record.get("pid")
        await stop(pid, str(folder / "qemu.pid"), grace=5, group=True)

    await asyncio.gather(*(stop_vm(folder) for folder in folders))
    nets = GroupNetworks(lab, _gateway_target(settings), sys.executable, {})
    for namespace in nets.recorded():
        async with nets.lock(namespace):
            await nets.delete(namespace)
    log.info("qemu: lab torn down", vms=len(folders), lab=str(lab))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["down"]:
        print("usage: python -m shared.providers.qemu down   (stop every lab VM and network)",
              file=sys.stderr)
        return 2
    from shared.logging import configure_logging

    settings = Settings()
    configure_logging(settings)
    asyncio.run(teardown(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
