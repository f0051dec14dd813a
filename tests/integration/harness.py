"""Helpers for integration tests: a running Ferryman with the fake provider, and a test
playing the VMs' side over HTTP."""

from __future__ import annotations

import asyncio
import os
import pty
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg

from services.runtime import SERVICES, Host
from shared.cutover_adapters import CutoverAdapters
from shared.providers.base import BootSource
from shared.providers.fake import FakeProvider
from shared.providers.simvm import simulated_host_key
from shared.secrets_key import SecretsKey
from shared.settings import Settings
from shared.ssh import RemoteError
from shared.store.session import Session
from shared.vmclient import VmClient
from tests.conftest import OPERATOR_TOKEN, eventually

REPO = Path(__file__).resolve().parents[2]

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

    async def replication_password(self, group_id: uuid.UUID) -> str:
        """The group's replication password, unsealed with the gateway's key file."""
        async with self.pool.acquire() as conn:
            db = Session(conn, SecretsKey(self.settings.secrets_key_path))
            return await db.groups.replication_password(group_id)

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
        from shared.tls import trusted_ca

        ca = trusted_ca(self.settings)
        return VmClient(self.settings.gateway_url, str(vm_id), self.token(vm_id),
                        cafile=str(ca) if ca else None)

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


class RecordingMachines:
    """The machines the cutover reaches over SSH (legacy hosts and new VMs), at that edge
    (CutoverAdapters.remote): every script is recorded as (host, script) and answered with
    nothing. `unreachable`: hosts whose connection fails as ssh's would; `holds`: a script
    waits for its event before it is answered (a run caught in the middle)."""

    def __init__(self, unreachable: set[str] | None = None):
        self.ran: list[tuple[str, str]] = []
        self.unreachable = unreachable or set()
        self.holds: dict[str, asyncio.Event] = {}

    def __call__(self, label: str, host: str, *_ssh, **_pinned) -> "RecordingMachines.Machine":
        return self.Machine(self, label, host)

    def scripts_on(self, host: str) -> list[str]:
        return [script for on, script in self.ran if on == host]

    class Machine:
        def __init__(self, machines: "RecordingMachines", label: str, host: str):
            self.machines, self.label, self.host = machines, label, host

        async def run(self, script: str, *, what: str, **_options) -> str:
            if self.host in self.machines.unreachable:
                raise RemoteError(f"{what}: cannot reach {self.label} ({self.host}) over SSH: "
                                  "Connection refused")
            self.machines.ran.append((self.host, script))
            if script in self.machines.holds:
                await self.machines.holds[script].wait()
            return ""

        async def close(self) -> None:
            pass


async def start_ferry(settings: Settings, operator: aiohttp.ClientSession,
                      provider: FakeProvider | None = None,
                      services: tuple[str, ...] = SERVICES,
                      cutover: CutoverAdapters | None = None) -> Ferry:
    provider = provider or FakeProvider()
    host = Host(settings, services, provider=provider, gateway=True, cutover=cutover)
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
        await vm.state("configuring", "host-keys")
        await vm.host_keys([simulated_host_key()])
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


async def ferry_cli(settings: Settings, *args: str, expect: int = 0,
                    typed: str | None = None) -> str:
    """`ferry ARGS` as the operator runs it, against the test's gateway; its output. `typed`:
    run on a terminal (a pty), where this line is typed."""
    env = {**os.environ, "FERRY_GATEWAY_HOST": "127.0.0.1",
           "FERRY_GATEWAY_PORT": str(settings.gateway_port),
           "FERRY_GATEWAY_PLAIN_HTTP": str(settings.gateway_plain_http).lower(),
           "FERRY_OPERATOR_TOKEN": OPERATOR_TOKEN, "FERRY_STATE_DIR": str(settings.state_dir),
           "COLUMNS": "200"}
    if typed is None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli.main", *args, cwd=REPO, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out = (await asyncio.wait_for(process.communicate(), 60))[0].decode()
    else:
        terminal, tty = pty.openpty()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli.main", *args, cwd=REPO, env=env, stdin=tty,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            os.write(terminal, typed.encode() + b"\n")
            out = (await asyncio.wait_for(process.communicate(), 60))[0].decode()
        finally:
            os.close(terminal)
            os.close(tty)
    assert process.returncode == expect, out
    return out
