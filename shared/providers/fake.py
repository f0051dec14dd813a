"""An in-memory provider: a test double for unit and integration tests only, never a default."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from shared.providers.base import (
    BootSource, ProviderDisk, ProviderError, ProviderVm, VmSpec, planned_disks,
)


@dataclass
class FakeVm:
    spec: VmSpec
    ref: str
    mac: str
    host: str = "fake"
    network: str = "migration"
    powered: bool = False
    boots: list[tuple[BootSource, dict[str, str]]] = field(default_factory=list)


class FakeProvider:
    name = "fake"
    simulated = True

    def __init__(self, hosts: tuple[str, ...] = ("fake",)) -> None:
        # The hosts it offers, in this order (a test of the per-host limit gives several).
        self.hosts = hosts
        self.vms: dict[str, FakeVm] = {}
        self._by_key: dict[str, str] = {}
        self.create_calls = 0
        self.created = 0
        # When set, create_vm makes the VM and then waits for the gate before answering, so a
        # test can kill the caller after the infrastructure acted but before it was recorded.
        self.gate: asyncio.Event | None = None
        self._serial = itertools.count(1)
        self.outbound_open: dict[str, bool] = {}
        self._lock = asyncio.Lock()

    async def placements(self, spec: VmSpec, *, idempotency_key: str) -> list[str]:
        ref = self._by_key.get(idempotency_key)
        return [self.vms[ref].host] if ref in self.vms else list(self.hosts)

    async def create_vm(self, spec: VmSpec, *, idempotency_key: str,
                        host: str | None = None) -> ProviderVm:
        self.create_calls += 1
        if host is not None and host not in self.hosts:
            raise ProviderError(f"fake: no host {host!r} (hosts: {', '.join(self.hosts)})")
        async with self._lock:
            ref = self._by_key.get(idempotency_key)
            if ref is None:
                n = next(self._serial)
                ref = f"fake-{n}"
                self.vms[ref] = FakeVm(spec=spec, ref=ref, mac=f"52:54:00:00:{n // 256:02x}:{n % 256:02x}",
                                       host=host or self.hosts[0])
                self._by_key[idempotency_key] = ref
                self.created += 1
            vm = self.vms[ref]
        if self.gate is not None:
            await self.gate.wait()
        return ProviderVm(ref=vm.ref, mac=vm.mac, host=vm.host)

    def _vm(self, ref: str) -> FakeVm:
        if ref not in self.vms:
            raise ProviderError(f"no VM {ref}")
        return self.vms[ref]

    async def attach(self, ref: str, network: str) -> None:
        self._vm(ref).network = network

    async def boot(self, ref: str, source: BootSource, *, kernel_args: dict[str, str] | None = None) -> None:
        vm = self._vm(ref)
        vm.powered = True
        vm.boots.append((source, dict(kernel_args or {})))

    async def power_off(self, ref: str) -> None:
        self._vm(ref).powered = False

    async def delete(self, ref: str) -> None:
        self.vms.pop(ref, None)

    async def addresses(self, ref: str) -> list[str]:
        return []

    async def disks(self, ref: str) -> list[ProviderDisk]:
        return planned_disks(self._vm(ref).spec)

    async def set_outbound(self, group: str, open_: bool) -> None:
        self.outbound_open[group] = open_

    async def close(self) -> None:
        pass

    def by_vm_id(self, vm_id) -> FakeVm:
        return next(v for v in self.vms.values() if v.spec.vm_id == vm_id)
