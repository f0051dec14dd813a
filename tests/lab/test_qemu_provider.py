"""The qemu provider with real VMs under QEMU (TCG here): both networks, idempotency, teardown.

A small aiohttp server stands in for the gateway (not Ferryman's, so these tests pin the
provider alone). It serves the iPXE script, the migration kernel and initrd, and per VM two
scripts in turn:

1. on the migration network (slirp): the migration image runs the first script, which makes
   /dev/vda bootable (ext4 /boot with GRUB, the migration kernel and initrd plus a small extra
   initrd whose /init takes a static address from the kernel command line) and reports back;
2. on the group network (namespace, bridge, taps, relay), booted from that disk: /init sets
   the planned address and default gateway, fetches the second script through 10.0.2.100,
   which pings the other VM, tries addresses it must NOT reach, and reports what it saw.

The real journey boots a migrated Debian from disk instead; this proves the provider's part
(disks, boot sources, networks, isolation, idempotency) in about two minutes of QEMU.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import json
import os
import secrets
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from shared.providers.base import (
    MIGRATION_NETWORK, BootSource, ProviderError, VmSpec, group_network,
)
from shared.providers.qemu import GUEST_GATEWAY_URL, QemuProvider, group_namespace, teardown
from shared.providers import qemu_uplink
from shared.providers.qemu_net import tap_name
from shared.providers.qemu_proc import alive, read_pid
from shared.settings import Settings
from tests.conftest import eventually, free_port

IMAGES = Settings().images_dir


def _not_ready() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, taps)"
    if not Path("/usr/bin/qemu-system-x86_64").exists():
        return "needs /usr/bin/qemu-system-x86_64 (apt-get install qemu-system-x86 qemu-utils ipxe-qemu)"
    if not all((IMAGES / f).is_file() for f in ("migration-vmlinuz", "migration-initrd.img")):
        return f"needs the lab images in {IMAGES} (deploy/lab/build-images.sh)"
    return None


pytestmark = [pytest.mark.lab, pytest.mark.skipif(_not_ready() is not None, reason=_not_ready() or "")]

GROUP_GATEWAY = "10.20.0.1"

FINAL_INIT = r"""#!/bin/sh
# Test stand-in for a migrated VM's first boot: the planned static address, then the script.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /run
echo 0 >/proc/sys/kernel/printk
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        ferry.gateway=*) FERRY_GATEWAY="${arg#*=}" ;;
        ferry.vm=*) FERRY_VM_ID="${arg#*=}" ;;
        ferry.token=*) FERRY_TOKEN="${arg#*=}" ;;
        ferry.ip=*) FERRY_IP="${arg#*=}" ;;
        ferry.gw=*) FERRY_GW="${arg#*=}" ;;
    esac
done
export FERRY_GATEWAY FERRY_VM_ID FERRY_TOKEN
while read -r m; do [ -n "$m" ] && modprobe -q "$m" 2>/dev/null; done </etc/ferry-modules
ip link set lo up
n=0; while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 50 ]; do n=$((n + 1)); sleep 0.2; done
ip link set eth0 up
ip addr add "$FERRY_IP" dev eth0
ip route add default via "$FERRY_GW" dev eth0
echo "FERRY-FINAL: eth0 $FERRY_IP via $FERRY_GW at $(cut -d' ' -f1 /proc/uptime)s"
if curl -fsS --retry 30 --retry-all-errors --retry-delay 1 --connect-timeout 5 \
    -H "Authorization: Bearer $FERRY_TOKEN" -o /tmp/final.sh "$FERRY_GATEWAY/v1/vms/$FERRY_VM_ID/script"
then
    bash /tmp/final.sh
    echo "FERRY-FINAL: script rc=$? at $(cut -d' ' -f1 /proc/uptime)s"
else
    echo "FERRY-FINAL: could not fetch the script"
fi
poweroff -f
sleep 10
"""

PREPARE_DISK = r"""#!/bin/bash
# Run by the migration image: make /dev/vda boot the migration kernel with FINAL_INIT on top.
set -euo pipefail
api() { curl -fsS --retry 5 --retry-all-errors --connect-timeout 5 -H "Authorization: Bearer $FERRY_TOKEN" "$@"; }
echo "FERRY-TEST: preparing /dev/vda"
wipefs -a -q /dev/vda || true
sfdisk -q --wipe always /dev/vda <<'EOF'
label: dos
start=2048, type=83, bootable
EOF
for _ in $(seq 50); do [ -b /dev/vda1 ] && break; sleep 0.1; done
mkfs.ext4 -q -F -L fmtest /dev/vda1
mkdir -p /mnt && mount /dev/vda1 /mnt && mkdir -p /mnt/boot
api -o /mnt/boot/vmlinuz "$FERRY_GATEWAY/support/migration-vmlinuz"
api -o /mnt/boot/initrd.img "$FERRY_GATEWAY/support/migration-initrd.img"
api -o /mnt/boot/final.cpio.gz "$FERRY_GATEWAY/support/final-init.cpio.gz"
grub-install --target=i386-pc --boot-directory=/mnt/boot /dev/vda
cat >/mnt/boot/grub/grub.cfg <<EOF
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
menuentry final {
    insmod part_msdos
    insmod ext2
    echo 'FERRY-GRUB: loading'
    linux /boot/vmlinuz console=ttyS0 panic=-1 ferry.gateway=$FERRY_GATEWAY ferry.vm=$FERRY_VM_ID ferry.token=$FERRY_TOKEN ferry.ip=@ADDRESS@ ferry.gw=@GATEWAY@
    initrd /boot/initrd.img /boot/final.cpio.gz
}
EOF
sync
umount /mnt
api -X POST -H 'Content-Type: application/json' --data-binary '{"phase": "migration"}' \
    "$FERRY_GATEWAY/v1/vms/$FERRY_VM_ID/report" >/dev/null
echo "FERRY-TEST: disk prepared"
"""

FINAL_CHECKS = r"""#!/bin/bash
# Run on the group network: what the VM reaches and what it must not.
set -uo pipefail
api() { curl -fsS --connect-timeout 5 --max-time 30 -H "Authorization: Bearer $FERRY_TOKEN" "$@"; }
probe() {  # probe NAME URL: "true" if anything answers there
    if curl -s -o /dev/null --connect-timeout 3 --max-time 6 "$2"; then echo true >/tmp/probe.$1
    else echo false >/tmp/probe.$1; fi
}
addr="$(ip -4 -o addr show dev eth0 | awk '{print $4}')"
routes="$(ip route | tr '\n' ';')"
ping_ok=false
for _ in $(seq 120); do
    if ping -c 1 -W 1 @PEER@ >/dev/null 2>&1; then ping_ok=true; break; fi
done
probe host "http://@HOST_IP@:@DECOY_PORT@/" &
probe slirp_host "http://10.0.2.2:@DECOY_PORT@/" &
probe bridge_gateway_port "http://@GATEWAY@:@GATEWAY_PORT@/" &
probe relay_other_port "http://10.0.2.100:@GATEWAY_PORT@/" &
wait
reach="{"
for p in host slirp_host bridge_gateway_port relay_other_port; do reach="$reach\"$p\": $(cat /tmp/probe.$p),"; done
reach="${reach%,}}"
api -X POST -H 'Content-Type: application/json' \
    --data-binary "{\"phase\": \"final\", \"addr\": \"$addr\", \"routes\": \"$routes\", \"ping\": $ping_ok, \"reach\": $reach}" \
    "$FERRY_GATEWAY/v1/vms/$FERRY_VM_ID/report" >/dev/null
# Stay up (answering the peer's pings) until the test has every report.
for _ in $(seq 240); do
    [ "$(api "$FERRY_GATEWAY/v1/vms/$FERRY_VM_ID/hold" || true)" = go ] && break
    sleep 0.5
done
"""


def newc_gz(files: dict[str, bytes]) -> bytes:
    """A gzip'd newc cpio of executable files (the kernel unpacks it over the first initrd)."""
    out = bytearray()

    def entry(ino: int, name: str, mode: int, data: bytes) -> None:
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
        out.extend(b"070701" + "".join(f"{v:08x}" for v in fields).encode() + name.encode() + b"\0")
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, data) in enumerate(files.items(), start=1):
        entry(ino, name, 0o100755, data)
    entry(0, "TRAILER!!!", 0, b"")
    return gzip.compress(bytes(out))


@dataclass
class GuestVm:
    token: str
    prepare: str
    final: str
    boot_fetches: list[bool] = field(default_factory=list)  # token right?
    reports: list[dict] = field(default_factory=list)


class StandInGateway:
    """Serves what the VMs fetch and records what they report (bearer token per VM)."""

    def __init__(self, port: int):
        self.port = port
        self.vms: dict[str, GuestVm] = {}
        self.released = False
        self.overlay = newc_gz({"init": FINAL_INIT.encode()})
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/boot/{vm}", self.boot)
        app.router.add_get("/support/{name}", self.support)
        app.router.add_get("/v1/vms/{vm}/script", self.script)
        app.router.add_post("/v1/vms/{vm}/report", self.report)
        app.router.add_get("/v1/vms/{vm}/hold", self.hold)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    def _vm(self, request: web.Request) -> GuestVm:
        vm = self.vms.get(request.match_info["vm"])
        if vm is None or request.headers.get("Authorization") != f"Bearer {vm.token}":
            raise web.HTTPUnauthorized()
        return vm

    async def boot(self, request: web.Request) -> web.Response:
        vm_id = request.match_info["vm"]
        vm = self.vms.get(vm_id)
        ok = vm is not None and request.query.get("token") == vm.token
        if vm:
            vm.boot_fetches.append(ok)
        if not ok:
            raise web.HTTPUnauthorized()
        gw = GUEST_GATEWAY_URL
        return web.Response(text=(
            "#!ipxe\n"
            f"kernel {gw}/support/migration-vmlinuz ferry.gateway={gw} ferry.vm={vm_id} "
            f"ferry.token={vm.token} console=ttyS0 panic=-1\n"
            f"initrd {gw}/support/migration-initrd.img\nboot\n"))

    async def support(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "final-init.cpio.gz":
            return web.Response(body=self.overlay)
        if name in ("migration-vmlinuz", "migration-initrd.img"):
            return web.FileResponse(IMAGES / name)
        raise web.HTTPNotFound()

    async def script(self, request: web.Request) -> web.Response:
        vm = self._vm(request)
        done = any(r.get("phase") == "migration" for r in vm.reports)
        return web.Response(text=vm.final if done else vm.prepare)

    async def report(self, request: web.Request) -> web.Response:
        self._vm(request).reports.append(await request.json())
        return web.Response(status=204)

    async def hold(self, request: web.Request) -> web.Response:
        self._vm(request)
        return web.Response(text="go" if self.released else "wait")

    def reported(self, phase: str) -> dict[str, dict]:
        return {vm_id: r for vm_id, vm in self.vms.items() for r in vm.reports
                if r.get("phase") == phase}


class Decoy:
    """A listener on every address of the root namespace that no VM may reach."""

    def __init__(self):
        self.port = free_port()
        self.peers: list[object] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        async def seen(reader, writer):
            self.peers.append(writer.get_extra_info("peername"))
            writer.close()

        self._server = await asyncio.start_server(seen, "0.0.0.0", self.port)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()


def host_address() -> str:
    """A non-loopback address of this machine (root namespace), or 10.0.2.2 if it has none."""
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True).stdout
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            if a.get("scope") == "global":
                return a["local"]
    return "10.0.2.2"


def root_namespace_view() -> dict:
    ip = lambda *a: json.loads(subprocess.run(["ip", "-j", *a], capture_output=True, text=True).stdout or "[]")  # noqa: E731
    return {"links": {link["ifname"] for link in ip("link")},
            "addrs": {f"{a['local']}/{a['prefixlen']}" for link in ip("addr")
                      for a in link.get("addr_info", [])},
            "routes": {r.get("dst", "") for r in ip("route")}}


def lab_processes(settings: Settings) -> list[str]:
    """Command lines of processes the provider started for this lab_dir: QEMU (its pidfile
    is in the lab folder) and the relays of its namespaces."""
    namespaces = {p.parent.name for p in (settings.lab_dir / "nets").glob("*/net.json")}
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(settings.lab_dir) in cmdline or (
                "shared.providers.nsrelay" in cmdline and any(ns in cmdline for ns in namespaces)):
            found.append(f"{proc.name}: {cmdline}")
    return found


def namespace_exists(namespace: str) -> bool:
    return Path("/run/netns", namespace).exists()


def ns_json(namespace: str, *args: str) -> list:
    out = subprocess.run(["ip", "-n", namespace, "-j", *args], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out or "[]")


@pytest.fixture
async def provider(settings: Settings):
    made = QemuProvider(settings)
    yield made
    await made.close()
    await teardown(settings)


@pytest.fixture
async def gateway(settings: Settings):
    server = StandInGateway(settings.gateway_port)
    await server.start()
    yield server
    await server.stop()


def spec(group: str, name: str, address: str) -> VmSpec:
    return VmSpec(vm_id=uuid.uuid4(), group=group, name=name, role="app", cpus=1, memory_mb=512,
                  disks_gb=[1], address=address, gateway=GROUP_GATEWAY)


def qemu_pid(settings: Settings, ref: str) -> int | None:
    folder = settings.lab_dir / "vms" / ref
    pid = read_pid(folder / "qemu.pid")
    return pid if alive(pid, str(folder / "qemu.pid")) else None


@pytest.mark.timeout(900)
async def test_migration_network_then_group_network(settings, provider, gateway):
    group = f"lab-{uuid.uuid4().hex[:8]}"
    specs = [spec(group, "a", "10.20.0.11/24"), spec(group, "b", "10.20.0.12/24")]
    decoy = Decoy()
    await decoy.start()
    try:
        # --- create: the same key gives the same VM, and its disk is made once ---
        made = [await provider.create_vm(s, idempotency_key=f"vm:{s.vm_id}") for s in specs]
        disks = [settings.lab_dir / "vms" / m.ref / "disk0.qcow2" for m in made]
        first = [(d.stat().st_ino, d.stat().st_mtime_ns) for d in disks]
        again = [await provider.create_vm(s, idempotency_key=f"vm:{s.vm_id}") for s in specs]
        assert again == made and len({m.ref for m in made}) == 2
        assert [(d.stat().st_ino, d.stat().st_mtime_ns) for d in disks] == first
        assert all(m.mac.startswith("52:54:00:") for m in made)

        # --- boot from the network: each VM alone on slirp, the gateway as 10.0.2.100 ---
        host_ip = host_address()
        for s, m, peer in zip(specs, made, reversed(specs)):
            vm = GuestVm(token=secrets.token_urlsafe(32),
                         prepare=PREPARE_DISK.replace("@ADDRESS@", s.address)
                                             .replace("@GATEWAY@", GROUP_GATEWAY),
                         final=FINAL_CHECKS.replace("@PEER@", peer.address.split("/")[0])
                                           .replace("@HOST_IP@", host_ip)
                                           .replace("@DECOY_PORT@", str(decoy.port))
                                           .replace("@GATEWAY@", GROUP_GATEWAY)
                                           .replace("@GATEWAY_PORT@", str(settings.gateway_port)))
            gateway.vms[str(s.vm_id)] = vm
            args = {"ferry.gateway": "http://not-used.invalid", "ferry.vm": str(s.vm_id),
                    "ferry.token": vm.token}
            await provider.boot(m.ref, BootSource.NETWORK, kernel_args=args)
            pid = qemu_pid(settings, m.ref)
            assert pid
            await provider.boot(m.ref, BootSource.NETWORK, kernel_args=args)  # repeated call
            assert qemu_pid(settings, m.ref) == pid
        assert await provider.addresses(made[0].ref) == []

        await eventually(lambda: len(gateway.reported("migration")) == 2, timeout=400,
                         interval=0.5, what="both VMs to prepare their disks and report")
        # The migration image powers off by itself when its script is done.
        await eventually(lambda: not any(qemu_pid(settings, m.ref) for m in made), timeout=60,
                         interval=0.2, what="both VMs to power off")
        for vm in gateway.vms.values():
            assert vm.boot_fetches and all(vm.boot_fetches)  # ?token= survived QEMU's parsing

        # --- the group network: namespace, bridge, taps, relay; boot from disk ---
        namespace = group_namespace(group)
        for m in made:
            await provider.power_off(m.ref)  # already off: fine
            await provider.attach(m.ref, group_network(group))
            await provider.attach(m.ref, group_network(group))
            await provider.boot(m.ref, BootSource.DISK)
            pid = qemu_pid(settings, m.ref)
            await provider.boot(m.ref, BootSource.DISK)
            assert pid and qemu_pid(settings, m.ref) == pid
        assert namespace_exists(namespace)
        bridge = {f"{a['local']}/{a['prefixlen']}" for link in ns_json(namespace, "addr", "show", "br0")
                  for a in link["addr_info"] if a["family"] == "inet"}
        assert bridge == {f"{GROUP_GATEWAY}/24", "10.0.2.100/32"}
        links = {link["ifname"]: link for link in ns_json(namespace, "link")}
        for m in made:
            assert links[tap_name(m.ref)]["master"] == "br0"
        # The group's way out is its uplink (qemu_uplink): a /30 to the root namespace, the
        # default route, and the group's subnet routed to it from the root namespace. Nothing
        # else of the group's network is in the root namespace.
        outer, _ = qemu_uplink.link_addresses(namespace)
        uplink_net = str(ipaddress.ip_interface(f"{outer}/30").network)
        assert {r["dst"] for r in ns_json(namespace, "route")} == {"10.20.0.0/24", uplink_net,
                                                                   "default"}
        root = root_namespace_view()
        assert not {tap_name(m.ref) for m in made} & root["links"]
        assert qemu_uplink.root_link(namespace) in root["links"]
        assert not {f"{GROUP_GATEWAY}/24", "10.0.2.100/32"} & root["addrs"]
        assert "10.20.0.0/24" in root["routes"] and "10.0.2.100" not in root["routes"]
        assert [await provider.addresses(m.ref) for m in made] == [["10.20.0.11"], ["10.20.0.12"]]

        finals = await eventually(lambda: len(gateway.reported("final")) == 2 and gateway.reported("final"),
                                  timeout=400, interval=0.5, what="both VMs to report from the group network")
        for s in specs:
            report = finals[str(s.vm_id)]
            assert report["addr"] == s.address
            assert f"default via {GROUP_GATEWAY}" in report["routes"]
            assert report["ping"] is True, report  # the other VM, over the bridge
            assert report["reach"] == {"host": False, "slirp_host": False,
                                       "bridge_gateway_port": False, "relay_other_port": False}
        assert decoy.peers == []
        gateway.released = True
        await eventually(lambda: not any(qemu_pid(settings, m.ref) for m in made), timeout=120,
                         interval=0.2, what="both VMs to power off")

        # --- delete: the namespace goes with the group's last VM ---
        await provider.delete(made[0].ref)
        await provider.delete(made[0].ref)
        assert not (settings.lab_dir / "vms" / made[0].ref).exists()
        assert namespace_exists(namespace)
        assert tap_name(made[0].ref) not in {link["ifname"] for link in ns_json(namespace, "link")}
        await provider.delete(made[1].ref)
        assert not namespace_exists(namespace)
        assert lab_processes(settings) == []
    finally:
        await decoy.stop()


@pytest.mark.timeout(300)
async def test_vms_outlive_the_provider_and_teardown_stops_everything(settings, provider):
    group = f"lab-{uuid.uuid4().hex[:8]}"
    a, b = spec(group, "a", "10.20.0.11/24"), spec(group, "b", "10.20.0.12/24")
    ref_a = (await provider.create_vm(a, idempotency_key="vm:a")).ref
    ref_b = (await provider.create_vm(b, idempotency_key="vm:b")).ref
    # No gateway answers: VM a sits in iPXE, VM b (blank disk) in SeaBIOS. Enough to stop.
    await provider.boot(ref_a, BootSource.NETWORK,
                        kernel_args={"ferry.vm": str(a.vm_id), "ferry.token": "t"})
    await provider.attach(ref_b, group_network(group))
    await provider.boot(ref_b, BootSource.DISK)
    await provider.close()
    again = QemuProvider(settings)  # as after a restart of the service
    assert qemu_pid(settings, ref_a) and qemu_pid(settings, ref_b)
    await again.boot(ref_b, BootSource.DISK)  # finds it running: nothing to do
    namespace = group_namespace(group)
    assert namespace_exists(namespace)
    assert len(lab_processes(settings)) == 3  # two QEMU and the relay

    await teardown(settings)
    assert lab_processes(settings) == []
    assert not namespace_exists(namespace)
    await teardown(settings)  # again: nothing to do

    # The records stay: booting again rebuilds the group network.
    await again.boot(ref_b, BootSource.DISK)
    assert namespace_exists(namespace) and qemu_pid(settings, ref_b)
    await again.power_off(ref_b)
    await again.power_off(ref_b)
    assert not qemu_pid(settings, ref_b)
    # Back on the migration network, the group has no VM left: its namespace goes.
    await again.attach(ref_b, MIGRATION_NETWORK)
    assert not namespace_exists(namespace) and lab_processes(settings) == []


async def test_errors_are_clear(settings, provider, tmp_path):
    made = await provider.create_vm(spec("g", "a", "10.20.0.11/24"), idempotency_key="vm:e")
    disk = settings.lab_dir / "vms" / made.ref / "disk0.qcow2"
    disk.write_bytes(b"not a qcow2 image")
    with pytest.raises(ProviderError, match="exited at once.*qcow2"):
        await provider.boot(made.ref, BootSource.DISK)
    with pytest.raises(ProviderError, match="ferry.vm and ferry.token"):
        await provider.boot(made.ref, BootSource.NETWORK, kernel_args={})
    no_gateway = await provider.create_vm(
        VmSpec(vm_id=uuid.uuid4(), group="g", name="b", role="app", cpus=1, memory_mb=256,
               disks_gb=[1], address="10.20.0.12/24"), idempotency_key="vm:f")
    with pytest.raises(ProviderError, match="no planned address and gateway"):
        await provider.attach(no_gateway.ref, group_network("g"))
    elsewhere = QemuProvider(settings.model_copy(update={"lab_images": tmp_path / "none"}))
    with pytest.raises(ProviderError, match="build-images.sh"):
        await elsewhere.create_vm(spec("g", "c", "10.20.0.13/24"), idempotency_key="vm:g")
