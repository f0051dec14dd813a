"""The provider interface: what creator, provisioner and cutover ask of an infrastructure."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict


class BootSource(StrEnum):
    NETWORK = "network"
    DISK = "disk"


MIGRATION_NETWORK = "migration"


def group_network(group: str) -> str:
    """The final network of a group: its VMs reach each other and the gateway, nothing else."""
    return f"group:{group}"


class DiskBus(StrEnum):
    VIRTIO = "virtio"
    SCSI = "scsi"
    SATA = "sata"


def disk_serial(vm_id: uuid.UUID, index: int) -> str:
    """The serial number the guest sees on the VM's disk `index` (≤ 20 characters: SATA's and
    virtio-blk's limit); the configuration script finds its disks by it."""
    return f"fm{vm_id.hex[:12]}d{index}"


class ProviderDisk(BaseModel):
    model_config = ConfigDict(frozen=True)

    index: int
    size_gb: int
    bus: DiskBus
    serial: str


class VmSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    vm_id: uuid.UUID
    group: str
    name: str
    role: str
    cpus: int
    memory_mb: int
    disks_gb: list[int]
    # The VM's final address on its group's network ("10.20.0.11/24") and its gateway there;
    # providers that build that network (qemu) need them, others may ignore them.
    address: str | None = None
    gateway: str | None = None
    # Per disk (plan order); missing: virtio.
    disk_buses: list[DiskBus] = []


def planned_disks(spec: VmSpec) -> list[ProviderDisk]:
    buses = list(spec.disk_buses) + [DiskBus.VIRTIO] * (len(spec.disks_gb) - len(spec.disk_buses))
    return [ProviderDisk(index=n, size_gb=size, bus=bus, serial=disk_serial(spec.vm_id, n))
            for n, (size, bus) in enumerate(zip(spec.disks_gb, buses))]


class ProviderVm(BaseModel):
    model_config = ConfigDict(frozen=True)

    ref: str
    mac: str | None = None


class ProviderError(Exception):
    pass


class Provider(Protocol):
    name: str
    # Its VMs are simulated (processes speaking the gateway's protocol, or a test's records),
    # not machines: the API, `ferry status` and the UI say so.
    simulated: bool

    async def create_vm(self, spec: VmSpec, *, idempotency_key: str) -> ProviderVm:
        """Create a blank VM attached to the migration network; the same key returns the same VM."""

    async def attach(self, ref: str, network: str) -> None:
        """Move the VM's interface to `network` (MIGRATION_NETWORK or group_network(...))."""

    async def boot(self, ref: str, source: BootSource, *, kernel_args: dict[str, str] | None = None,
                   ) -> None:
        """Power the VM on from the network (with these kernel arguments) or from its disk."""

    async def power_off(self, ref: str) -> None:
        """Power the VM off; a VM already off is fine."""

    async def delete(self, ref: str) -> None:
        """Delete the VM and its disks; a VM already gone is fine."""

    async def addresses(self, ref: str) -> list[str]:
        """The VM's current addresses, as the infrastructure sees them."""

    async def set_outbound(self, group: str, open_: bool) -> None:
        """Open the group network's outbound traffic (cutover), or block it again (its undo).
        Until opened, a group's VMs reach each other and the migration service, nothing else."""

    async def close(self) -> None:
        """Release what the provider holds (processes it supervises, connections)."""
