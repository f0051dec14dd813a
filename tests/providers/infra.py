"""What each provider's infrastructure holds, seen from outside the provider.

The contract suite asks a provider to act, then looks here to see that it did: a provider's own
answers are not evidence. For the fake that is its memory; for sim its records and processes;
for libvirt what libvirtd itself reports (a connection of the suite's own) and QEMU's processes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Protocol
from xml.etree import ElementTree as ET

from shared.providers import Registration
from shared.providers.base import MIGRATION_NETWORK, BootSource, Provider, group_network
from shared.providers.fake import FakeProvider
from shared.providers.sim import SimProvider
from shared.settings import Settings
from tests.conftest import eventually


class SilentGateway:
    """Listens where the VMs look for the gateway, notes the first line of each request and
    never answers, so a VM that reached it waits there (until it is powered off)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}"
        self.requests: list[str] = []
        self._held: set[asyncio.Task] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._hold, self.host, self.port)

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._held.add(task)
        try:
            self.requests.append((await reader.readline()).decode(errors="replace").strip())
            await reader.read()  # until the VM gives up or is gone
        finally:
            writer.close()
            self._held.discard(task)

    async def asked_by(self, vm_id: object, timeout: float) -> None:
        await eventually(lambda: any(str(vm_id) in r for r in self.requests), timeout=timeout,
                         interval=0.1, what=f"a request from VM {vm_id}")

    async def stop(self) -> None:
        if self._server:
            self._server.close()
        held = list(self._held)
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)


class Infra(Protocol):
    registration: Registration
    provider: Provider
    # Seconds a VM booted from the network takes to ask the gateway for something; None for
    # VMs that run nothing (the fake's).
    reaches_gateway_within: float | None

    def vms(self) -> set[str]:
        """The references of the VMs the infrastructure holds."""

    def network(self, ref: str) -> str:
        """The network the VM is attached to (MIGRATION_NETWORK or group_network(...))."""

    def running(self, ref: str) -> BootSource | None:
        """What the VM runs from, or None while it is powered off."""

    def kernel_args(self, ref: str) -> dict[str, str]:
        """The kernel arguments the running VM was handed, as far as they reach it."""

    def processes(self) -> list[str]:
        """Processes the provider started that still run (none for an in-memory provider)."""

    def outbound_open(self, group: str) -> bool | None:
        """Whether the group's outbound traffic is open; None where nothing blocks it."""


def cmdline(pid: int) -> list[str]:
    """A live process's argv, or [] for one that is gone or a zombie (exited, not reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return []
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except (OSError, IndexError):
        return []


def live_processes(*needles: str) -> dict[int, list[str]]:
    """Live processes whose command line holds every needle."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            argv = cmdline(int(proc.name))
            if argv and all(n in " ".join(argv) for n in needles):
                found[int(proc.name)] = argv
    return found


def option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else None


class FakeInfra:
    reaches_gateway_within = None

    def __init__(self, registration: Registration, provider: FakeProvider):
        self.registration, self.provider = registration, provider

    def vms(self) -> set[str]:
        return set(self.provider.vms)

    def network(self, ref: str) -> str:
        return self.provider.vms[ref].network

    def running(self, ref: str) -> BootSource | None:
        vm = self.provider.vms[ref]
        return vm.boots[-1][0] if vm.powered else None

    def kernel_args(self, ref: str) -> dict[str, str]:
        return self.provider.vms[ref].boots[-1][1]

    def processes(self) -> list[str]:
        return []

    def outbound_open(self, group: str) -> bool | None:
        return self.provider.outbound_open.get(group, False)  # never opened: blocked


class SimInfra:
    reaches_gateway_within = 20.0  # a Python process's start

    def __init__(self, registration: Registration, provider: SimProvider):
        self.registration, self.provider = registration, provider
        self.folder = provider.folder

    def _record(self, ref: str) -> dict:
        return json.loads((self.folder / f"{ref}.json").read_text())

    def vms(self) -> set[str]:
        return {path.stem for path in self.folder.glob("sim-*.json")}

    def network(self, ref: str) -> str:
        return self._record(ref)["network"]

    def running(self, ref: str) -> BootSource | None:
        pid = self._record(ref)["pid"]
        source = option(cmdline(pid), "--source") if pid else None
        return BootSource(source) if source else None

    def kernel_args(self, ref: str) -> dict[str, str]:
        return self._record(ref)["kernel_args"]

    def processes(self) -> list[str]:
        return [" ".join(argv) for argv in
                live_processes("shared.providers.simvm", str(self.folder)).values()]

    def outbound_open(self, group: str) -> bool | None:
        return None  # simulated VMs are processes on this machine's loopback


class LibvirtInfra:
    reaches_gateway_within = 180.0  # SeaBIOS, then iPXE's DHCP and boot URL, under TCG
    GROUPS = "contract-"  # the suite's groups: other domains on the host are not its own

    def __init__(self, registration: Registration, provider, settings: Settings):
        import libvirt

        self.registration, self.provider, self.settings = registration, provider, settings
        self.uri = settings.libvirt_hosts[0]
        self.conn = libvirt.open(self.uri)

    def _domain(self, ref: str):
        return self.conn.lookupByUUIDString(ref.partition("@")[0])

    def _xml(self, ref: str, live: bool = True) -> ET.Element:
        import libvirt

        flags = 0 if live else libvirt.VIR_DOMAIN_XML_INACTIVE
        return ET.fromstring(self._domain(ref).XMLDesc(flags))

    def vms(self) -> set[str]:
        return {f"{d.UUIDString()}@{self.uri}" for d in self.conn.listAllDomains(0)
                if d.name().split(".", 1)[-1].startswith(self.GROUPS)}

    def network(self, ref: str) -> str:
        """The network the domain's interface is on; a group network must exist and run."""
        name = self._xml(ref, live=False).find("devices/interface/source").get("network")
        if name == "ferry-migration":
            return MIGRATION_NETWORK
        group = name.removeprefix("ferry-g-")
        if not any(n.name() == name and n.isActive() for n in self.conn.listAllNetworks(0)):
            return f"{group_network(group)}, whose libvirt network does not run"
        return group_network(group)

    def running(self, ref: str) -> BootSource | None:
        if not self._domain(ref).isActive():
            return None
        nic_boot = self._xml(ref).find("devices/interface/boot")
        return BootSource.NETWORK if nic_boot is not None else BootSource.DISK

    def kernel_args(self, ref: str) -> dict[str, str]:
        """What iPXE fills into the migration network's one boot URL: ${uuid} is the domain's
        UUID, ${serial} its SMBIOS serial."""
        bootp = ET.fromstring(self.conn.networkLookupByName("ferry-migration").XMLDesc(0)) \
            .find("ip/dhcp/bootp").get("file")
        if "${uuid}" not in bootp or "token=${serial}" not in bootp:
            return {}
        serial = self._xml(ref).find("sysinfo/system/entry[@name='serial']").text
        return {"ferry.vm": self._domain(ref).UUIDString(), "ferry.token": serial}

    def processes(self) -> list[str]:
        # QEMU's argv names the guest: -name guest=<vm>.<group>,...
        return [" ".join(argv) for argv in live_processes("qemu-system", "guest=").values()
                if f".{self.GROUPS}" in " ".join(argv)]

    def outbound_open(self, group: str) -> bool | None:
        text = self.conn.nwfilterLookupByName(f"ferry-out-{group}").XMLDesc(0)
        return "action='reject'" not in text and 'action="reject"' not in text
