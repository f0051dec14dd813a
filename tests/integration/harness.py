"""Helpers for integration tests: a running Ferryman with the fake provider, and a test
playing the VMs' side over HTTP."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import aiohttp
import asyncpg

from services.runtime import SERVICES, Host
from shared.providers.base import BootSource
from shared.providers.fake import FakeProvider
from shared.settings import Settings
from shared.vmclient import VmClient
from tests.conftest import eventually

THREE_VMS = """
group: {group}
vms:
  - name: app1
    role: app
    cpus: 1
    memory_mb: 512
    disks: [{{size_gb: 10}}]
    filesystems: [{{mount: /, size_gb: 8}}]
    network: {{address: 10.20.0.11/24, hostname: app1.shop.example}}
  - name: db1
    role: db-master
    cpus: 1
    memory_mb: 1024
    disks: [{{size_gb: 10}}]
    filesystems: [{{mount: /, size_gb: 8}}]
    network: {{address: 10.20.0.12/24, hostname: db1.shop.example}}
  - name: db2
    role: db-replica
    replica_of: db1
    cpus: 1
    memory_mb: 1024
    disks: [{{size_gb: 10}}]
    filesystems: [{{mount: /, size_gb: 8}}]
    network: {{address: 10.20.0.13/24, hostname: db2.shop.example}}
"""


@dataclass
class Ferry:
    settings: Settings
    host: Host
    provider: FakeProvider
    operator: aiohttp.ClientSession

    @property
    def pool(self) -> asyncpg.Pool:
        assert self.host.pool
        return self.host.pool

    async def submit(self, plan_text: str) -> uuid.UUID:
        async with self.operator.post("/v1/groups", data=plan_text) as response:
            body = await response.json()
            assert response.status == 201, body
            return uuid.UUID(body["id"])

    async def vm_ids(self, group_id: uuid.UUID) -> dict[str, uuid.UUID]:
        rows = await self.pool.fetch("SELECT name, id FROM vms WHERE group_id = $1", group_id)
        return {r["name"]: r["id"] for r in rows}

    async def state(self, vm_id: uuid.UUID) -> str:
        return await self.pool.fetchval("SELECT state FROM vms WHERE id = $1", vm_id)

    async def group_status(self, group_id: uuid.UUID) -> str:
        return await self.pool.fetchval("SELECT status FROM groups WHERE id = $1", group_id)

    async def wait_state(self, vm_id: uuid.UUID, *states: str, timeout: float = 20) -> str:
        async def reached():
            current = await self.state(vm_id)
            return current if current in states else None
        return await eventually(reached, timeout, what=f"VM {vm_id} in {states}")

    async def wait_group(self, group_id: uuid.UUID, status: str, timeout: float = 20) -> None:
        async def reached():
            return await self.group_status(group_id) == status
        await eventually(reached, timeout, what=f"group {group_id} {status}")

    def token(self, vm_id: uuid.UUID) -> str:
        """The token the VM was last booted with, as the provider handed it to the VM."""
        vm = self.provider.by_vm_id(vm_id)
        args = [a for s, a in vm.boots if a.get("ferry.token")]
        return args[-1]["ferry.token"]

    def vm(self, vm_id: uuid.UUID) -> VmClient:
        return VmClient(self.settings.gateway_url, str(vm_id), self.token(vm_id))

    async def wait_booted(self, vm_id: uuid.UUID, source: BootSource, count: int = 1) -> None:
        async def booted():
            try:
                vm = self.provider.by_vm_id(vm_id)
            except StopIteration:
                return False
            return sum(1 for s, _ in vm.boots if s == source) >= count
        await eventually(booted, what=f"VM {vm_id} booted from {source}")
        # The provider is called inside the transaction that records the boot; a real VM
        # takes far longer to boot than that commit, so the test waits for it too.
        booted_state = "configuring" if source == BootSource.NETWORK else "provisioning"
        await self.wait_state(vm_id, booted_state, "configured", "provisioned", "halted",
                              "failed", "loading", "ready")


async def start_ferry(settings: Settings, operator: aiohttp.ClientSession,
                      provider: FakeProvider | None = None,
                      services: tuple[str, ...] = SERVICES) -> Ferry:
    provider = provider or FakeProvider()
    host = Host(settings, services, provider=provider, gateway=True)
    await host.start()
    return Ferry(settings, host, provider, operator)


async def configure_vm(ferry: Ferry, vm_id: uuid.UUID) -> None:
    """Play the migration image: fetch the script, report its steps, report configured."""
    await ferry.wait_booted(vm_id, BootSource.NETWORK)
    async with ferry.vm(vm_id) as vm:
        script = await vm.script()
        assert script.startswith("#!/bin/bash")
        await vm.state("configuring", "partition")
        await vm.message("partitioned /dev/vda")
        await vm.state("configuring", "unpack-archives")
        await vm.state("configured", "done")


async def first_boot_app(ferry: Ferry, vm_id: uuid.UUID) -> None:
    await ferry.wait_booted(vm_id, BootSource.DISK)
    async with ferry.vm(vm_id) as vm:
        await vm.state("provisioned", "first-boot")


async def load_master(ferry: Ferry, vm_id: uuid.UUID) -> None:
    await ferry.wait_booted(vm_id, BootSource.DISK)
    async with ferry.vm(vm_id) as vm:
        await vm.state("provisioned", "first-boot")
        await vm.state("loading", "load-dumps")
        await vm.state("ready", "loaded", detail={"log_file": "bin.000003", "log_pos": 1234})


async def play_journey(ferry: Ferry, group_id: uuid.UUID) -> None:
    """Every VM configures, boots from disk and checks in; the replica follows its master."""
    ids = await ferry.vm_ids(group_id)
    await asyncio.gather(*(configure_vm(ferry, ids[name]) for name in ids))
    await first_boot_app(ferry, ids["app1"])
    await load_master(ferry, ids["db1"])
    await ferry.wait_booted(ids["db2"], BootSource.DISK)
    async with ferry.vm(ids["db2"]) as replica:
        await replica.state("provisioned", "first-boot")
        await replica.state("loading", "load-dumps")
        assert (await replica.master(wait=10))["complete"]
        await replica.state("replicating", "replication-started")
        await replica.state("ready", "replicating")
