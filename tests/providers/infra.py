"""What each provider's infrastructure holds, seen from outside the provider.

The contract suite asks a provider to act, then looks here to see that it did: a provider's own
answers are not evidence. For the fake that is its memory; for sim its records and processes;
for qemu its run folders, QEMU's command lines and the group namespaces."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from shared.providers import Registration
from shared.providers.base import BootSource, Provider, group_network
from shared.providers.fake import FakeProvider
from shared.providers.qemu import group_namespace
from shared.providers.qemu_net import tap_name
from shared.providers.qemu_uplink import OUTBOUND_CHAIN
from shared.providers.sim import SimProvider
from shared.settings import Settings
from tests.conftest import eventually
from tests.lab.test_qemu_provider import lab_processes, namespace_exists, ns_json, qemu_pid


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


class QemuInfra:
    reaches_gateway_within = 180.0  # SeaBIOS, then iPXE's DHCP and boot URL, under TCG

    def __init__(self, registration: Registration, provider, settings: Settings):
        self.registration, self.provider, self.settings = registration, provider, settings
        self.vm_folders = settings.lab_dir / "vms"

    def _argv(self, ref: str) -> list[str]:
        pid = qemu_pid(self.settings, ref)
        return cmdline(pid) if pid else []

    def vms(self) -> set[str]:
        return {path.parent.name for path in self.vm_folders.glob("qemu-*/vm.json")}

    def network(self, ref: str) -> str:
        network = json.loads((self.vm_folders / ref / "vm.json").read_text())["network"]
        group = network.removeprefix(group_network(""))
        if network != group:  # on a group network: its tap must be on the group's bridge
            namespace = group_namespace(group)
            links = {link["ifname"]: link for link in ns_json(namespace, "link")} \
                if namespace_exists(namespace) else {}
            if links.get(tap_name(ref), {}).get("master") != "br0":
                return f"{network}, without its tap on the bridge"
        return network

    def running(self, ref: str) -> BootSource | None:
        boot = option(self._argv(ref), "-boot")
        return {"n": BootSource.NETWORK, "c": BootSource.DISK}.get(boot or "")

    def kernel_args(self, ref: str) -> dict[str, str]:
        """The VM id and token of the boot URL QEMU's DHCP hands to iPXE (ferry.gateway is
        not passed: the VM reaches the gateway as 10.0.2.100)."""
        netdev = option(self._argv(ref), "-netdev") or ""
        found = re.search(r"bootfile=((?:[^,]|,,)*)", netdev)
        if not found:
            return {}
        url = urlsplit(found.group(1).replace(",,", ","))
        return {"ferry.vm": unquote(url.path.rsplit("/", 1)[-1]),
                "ferry.token": parse_qs(url.query)["token"][0]}

    def processes(self) -> list[str]:
        return lab_processes(self.settings)

    def outbound_open(self, group: str) -> bool | None:
        namespace = group_namespace(group)
        rules = subprocess.run(["ip", "netns", "exec", namespace, "iptables", "-S", OUTBOUND_CHAIN],
                               capture_output=True, text=True, check=True).stdout
        return "REJECT" not in rules
