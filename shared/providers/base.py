"""The provider interface: what creator, provisioner and cutover ask of an infrastructure."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict, model_validator


class BootSource(StrEnum):
    NETWORK = "network"
    DISK = "disk"


MIGRATION_NETWORK = "migration"


class DiskBus(StrEnum):
    """The bus a disk is attached on, which decides its name inside the VM (vdX or sdX)."""

    VIRTIO = "virtio"
    SCSI = "scsi"
    SATA = "sata"


# SATA's IDENTIFY data and virtio-blk's ID both hold 20 bytes of serial: a longer one is cut.
SERIAL_MAX = 20


def disk_serial(vm_id: uuid.UUID, index: int) -> str:
    """The serial of a VM's disk number `index` (plan order): the guest finds the disk by it,
    whatever its bus and name. Unique per VM and disk, at most SERIAL_MAX ASCII characters."""
    serial = f"fm{vm_id.hex[:12]}d{index}"
    if len(serial) > SERIAL_MAX:
        raise ValueError(f"disk index {index}: serial {serial!r} is longer than {SERIAL_MAX}")
    return serial


def group_network(group: str) -> str:
    """The final network of a group: its VMs reach each other and the gateway, nothing else."""
    return f"group:{group}"


class VmSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    vm_id: uuid.UUID
    group: str
    name: str
    role: str
    cpus: int
    memory_mb: int
    disks_gb: list[int]
    # The bus of each disk, in the order of disks_gb; empty: every disk on virtio.
    disk_buses: list[DiskBus] = []
    # The VM's final address on its group's network ("10.20.0.11/24") and its gateway there;
    # providers that build that network (libvirt) need them, others may ignore them.
    address: str | None = None
    gateway: str | None = None

    @model_validator(mode="after")
    def _a_bus_per_disk(self) -> VmSpec:
        if self.disk_buses and len(self.disk_buses) != len(self.disks_gb):
            raise ValueError(f"VM {self.name}: {len(self.disk_buses)} disk bus(es) for "
                             f"{len(self.disks_gb)} disk(s)")
        return self


class ProviderDisk(BaseModel):
    """One disk of a VM as the provider attached it."""

    model_config = ConfigDict(frozen=True)

    index: int  # in plan order, from 0
    size_gb: int
    bus: DiskBus
    serial: str  # what the guest reads (virtio-blk serial, SCSI/SATA unit serial number)


def planned_disks(spec: VmSpec) -> list[ProviderDisk]:
    """The disks a provider attaches for `spec`, in plan order."""
    buses = spec.disk_buses or [DiskBus.VIRTIO] * len(spec.disks_gb)
    return [ProviderDisk(index=i, size_gb=size, bus=bus, serial=disk_serial(spec.vm_id, i))
            for i, (size, bus) in enumerate(zip(spec.disks_gb, buses, strict=True))]


class ProviderVm(BaseModel):
    model_config = ConfigDict(frozen=True)

    ref: str
    mac: str | None = None
    # The destination host it is on, in the provider's words (libvirt: the URI): the limits
    # count VMs in flight per host (shared/limits.py).
    host: str | None = None


class ProviderError(Exception):
    pass


class Provider(Protocol):
    name: str
    # Its VMs are simulated (processes speaking the gateway's protocol, or a test's records),
    # not machines: the API, `ferry status` and the UI say so.
    simulated: bool

    async def placements(self, spec: VmSpec, *, idempotency_key: str) -> list[str]:
        """The hosts that could take this VM now, best first (the order create_vm would pick
        them in); only its host when the VM was made already for this key. ProviderError when
        none can (libvirt: no host has the memory)."""

    async def create_vm(self, spec: VmSpec, *, idempotency_key: str,
                        host: str | None = None) -> ProviderVm:
        """Create a blank VM attached to the migration network, on `host` (one of
        placements()) or where the provider chooses; the same key returns the same VM,
        wherever it was made."""

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

    async def disks(self, ref: str) -> list[ProviderDisk]:
        """The VM's disks in plan order, each with its bus and the serial the guest sees."""

    async def set_outbound(self, group: str, open_: bool) -> None:
        """Open the group network's outbound traffic (cutover), or block it again (its undo).
        Until opened, a group's VMs reach each other and the migration service, nothing else."""

    async def close(self) -> None:
        """Release what the provider holds (processes it supervises, connections)."""
