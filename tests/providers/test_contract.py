"""The provider contract (shared/providers/base.py): what creator, provisioner and cutover may
count on from every provider. Each test runs once per provider (tests/providers/conftest.py)."""

from __future__ import annotations

import ipaddress
import uuid

import pytest

from shared.providers.base import (
    MIGRATION_NETWORK, BootSource, DiskBus, ProviderDisk, ProviderError, ProviderVm, VmSpec,
    disk_serial, group_network,
)
from tests.conftest import eventually
from tests.providers.infra import Infra, SilentGateway

TOKEN = "contract-token"


def a_group() -> str:
    return f"contract-{uuid.uuid4().hex[:8]}"


def spec(group: str, name: str = "a", host: int = 11, disks_gb: tuple[int, ...] = (1,),
         disk_buses: tuple[DiskBus, ...] = ()) -> VmSpec:
    return VmSpec(vm_id=uuid.uuid4(), group=group, name=name, role="app", cpus=1, memory_mb=256,
                  disks_gb=list(disks_gb), disk_buses=list(disk_buses),
                  address=f"10.29.0.{host}/24", gateway="10.29.0.1")


async def create(infra: Infra, vm: VmSpec) -> ProviderVm:
    return await infra.provider.create_vm(vm, idempotency_key=f"vm:{vm.vm_id}")


def kernel_args(vm: VmSpec, gateway: SilentGateway) -> dict[str, str]:
    return {"ferry.gateway": gateway.url, "ferry.vm": str(vm.vm_id), "ferry.token": TOKEN}


async def boot_from_network(infra: Infra, gateway: SilentGateway, vm: VmSpec, ref: str) -> None:
    """Boot the VM from the network and wait until it runs: until it asks for the gateway."""
    await infra.provider.boot(ref, BootSource.NETWORK, kernel_args=kernel_args(vm, gateway))
    if infra.reaches_gateway_within is not None:
        await gateway.asked_by(vm.vm_id, timeout=infra.reaches_gateway_within)


async def no_processes_left(infra: Infra) -> None:
    await eventually(lambda: infra.processes() == [], timeout=30, interval=0.1,
                     what=f"{infra.registration.name}'s processes to end")


async def test_create_is_idempotent_by_key(infra: Infra):
    """Creating twice with one idempotency key answers the same VM and makes no second one."""
    vm = spec(a_group())
    first = await create(infra, vm)
    again = await create(infra, vm)
    assert again == first
    assert infra.vms() == {first.ref}


async def test_a_vm_lands_on_a_host_placements_offered(infra: Infra):
    """placements() offers at least one host; a VM created on the first lands there and says
    so, and from then on placements() offers that host alone."""
    vm = spec(a_group())
    key = f"vm:{vm.vm_id}"
    hosts = await infra.provider.placements(vm, idempotency_key=key)
    assert hosts and all(isinstance(h, str) and h for h in hosts)
    made = await infra.provider.create_vm(vm, idempotency_key=key, host=hosts[0])
    assert made.host == hosts[0]
    assert await infra.provider.placements(vm, idempotency_key=key) == [hosts[0]]
    assert (await create(infra, vm)).host == hosts[0]  # asked again, wherever it would go


async def test_a_host_it_does_not_have_is_refused(infra: Infra):
    """create_vm on a host the provider does not offer is a ProviderError; nothing is made."""
    vm = spec(a_group())
    with pytest.raises(ProviderError, match="no-such-host"):
        await infra.provider.create_vm(vm, idempotency_key=f"vm:{vm.vm_id}",
                                       host="no-such-host")
    assert infra.vms() == set()


async def test_another_key_makes_another_vm(infra: Infra):
    """A different idempotency key makes a different VM, with its own reference and MAC."""
    group = a_group()
    a, b = await create(infra, spec(group, "a", 11)), await create(infra, spec(group, "b", 12))
    assert a.ref != b.ref
    assert a.mac != b.mac or a.mac is None
    assert infra.vms() == {a.ref, b.ref}


async def test_a_new_vm_is_off_on_the_migration_network(infra: Infra):
    """A created VM is powered off and attached to the migration network."""
    made = await create(infra, spec(a_group()))
    assert infra.network(made.ref) == MIGRATION_NETWORK
    assert infra.running(made.ref) is None


async def test_attach_moves_the_vm_between_networks(infra: Infra):
    """attach puts a VM on its group's network and back on the migration network; twice is fine."""
    group = a_group()
    made = await create(infra, spec(group))
    for network in (group_network(group), group_network(group), MIGRATION_NETWORK, MIGRATION_NETWORK):
        await infra.provider.attach(made.ref, network)
        assert infra.network(made.ref) == network


async def test_boot_from_network_hands_the_vm_its_kernel_args(infra: Infra, gateway):
    """A network boot runs the VM from the network with the VM id and token of its kernel
    arguments (a VM that runs asks the gateway with its id), and booting it again the same way
    leaves it so."""
    vm = spec(a_group())
    made = await create(infra, vm)
    args = kernel_args(vm, gateway)
    await boot_from_network(infra, gateway, vm, made.ref)
    await infra.provider.boot(made.ref, BootSource.NETWORK, kernel_args=args)  # a redelivery
    assert infra.running(made.ref) == BootSource.NETWORK
    handed = infra.kernel_args(made.ref)
    assert {k: handed.get(k) for k in ("ferry.vm", "ferry.token")} == \
        {"ferry.vm": str(vm.vm_id), "ferry.token": TOKEN}
    assert handed.items() <= args.items()


async def test_boot_from_disk_on_the_group_network(infra: Infra, gateway):
    """Provisioning's sequence (network boot, power off, attach to the group's network, disk
    boot) leaves the VM running from its disk on its group's network."""
    group = a_group()
    vm = spec(group)
    made = await create(infra, vm)
    await boot_from_network(infra, gateway, vm, made.ref)
    await infra.provider.power_off(made.ref)
    await infra.provider.attach(made.ref, group_network(group))
    await infra.provider.boot(made.ref, BootSource.DISK)
    # Polled: a process just started may show no command line for a moment (a vfork'd child's
    # parent resumes before exec has set up its arguments), which reads as not running.
    await eventually(lambda: infra.running(made.ref) == BootSource.DISK, timeout=10,
                     interval=0.05, what="the VM running from its disk")
    assert infra.network(made.ref) == group_network(group)


async def test_power_off_twice_is_fine(infra: Infra, gateway):
    """Power off stops a running VM and its process; a VM already off, or never booted, is fine."""
    vm = spec(a_group())
    made = await create(infra, vm)
    await infra.provider.power_off(made.ref)  # never booted
    await boot_from_network(infra, gateway, vm, made.ref)
    await infra.provider.power_off(made.ref)
    assert infra.running(made.ref) is None
    await infra.provider.power_off(made.ref)
    assert infra.running(made.ref) is None
    await no_processes_left(infra)


async def test_delete_twice_is_fine_and_the_vm_is_gone(infra: Infra, gateway):
    """Deleting a running VM stops it and removes it; the provider then refuses it, and deleting
    it again is fine. Its sibling stays."""
    group = a_group()
    vm = spec(group, "a", 11)
    made = await create(infra, vm)
    sibling = await create(infra, spec(group, "b", 12))
    await boot_from_network(infra, gateway, vm, made.ref)
    await infra.provider.delete(made.ref)
    await infra.provider.delete(made.ref)
    assert infra.vms() == {sibling.ref}
    await no_processes_left(infra)
    with pytest.raises(ProviderError):
        await infra.provider.boot(made.ref, BootSource.DISK)
    with pytest.raises(ProviderError):
        await infra.provider.attach(made.ref, group_network(group))
    with pytest.raises(ProviderError):
        await infra.provider.power_off(made.ref)
    with pytest.raises(ProviderError):
        await infra.provider.disks(made.ref)


async def test_addresses_per_network(infra: Infra):
    """addresses() is a list of IP address strings: none on the migration network; on the group's
    network the planned address for providers that report addresses, else none."""
    group = a_group()
    vm = spec(group)
    made = await create(infra, vm)
    assert await infra.provider.addresses(made.ref) == []
    await infra.provider.attach(made.ref, group_network(group))
    found = await infra.provider.addresses(made.ref)
    assert isinstance(found, list) and all(ipaddress.ip_address(a) for a in found)
    planned = str(ipaddress.ip_interface(vm.address).ip)
    assert found == ([planned] if infra.registration.reports_addresses else [])


async def test_disks_are_reported_as_planned(infra: Infra):
    """disks() gives a created VM's disks in plan order, each with its planned size and bus and
    the serial the guest finds it by; without planned buses every disk is on virtio."""
    group = a_group()
    wanted = [DiskBus.SCSI, DiskBus.VIRTIO, DiskBus.SATA]
    vm = spec(group, "a", 11, disks_gb=(1, 3, 2), disk_buses=tuple(wanted))
    made = await create(infra, vm)
    assert await infra.provider.disks(made.ref) == [
        ProviderDisk(index=i, size_gb=size, bus=bus, serial=disk_serial(vm.vm_id, i))
        for i, (size, bus) in enumerate(zip((1, 3, 2), wanted))]
    plain = spec(group, "b", 12, disks_gb=(1, 1))
    found = await infra.provider.disks((await create(infra, plain)).ref)
    assert [(d.bus, d.serial) for d in found] == [(DiskBus.VIRTIO, disk_serial(plain.vm_id, i))
                                                  for i in range(2)]
    assert len(infra.vms()) == 2


async def test_outbound_block_twice_each_way(infra: Infra):
    """A group's outbound traffic starts blocked; set_outbound opens it and blocks it again,
    each twice without error, and providers that block it really change it."""
    group = a_group()
    made = await create(infra, spec(group))
    await infra.provider.attach(made.ref, group_network(group))  # the group's network exists
    blocks = infra.registration.blocks_outbound
    assert infra.outbound_open(group) is (False if blocks else None)
    for open_ in (False, False, True, True, False):
        await infra.provider.set_outbound(group, open_)
        assert infra.outbound_open(group) is (open_ if blocks else None)


def test_every_registered_provider_is_under_contract():
    """A provider registered without joining this suite fails here, not in production."""
    from shared.providers import registrations
    from tests.providers.conftest import PROVIDERS

    names = {p if isinstance(p, str) else p.values[0] for p in PROVIDERS}
    assert names == {r.name for r in registrations()}
