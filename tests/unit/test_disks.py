"""Disks found by what they are: the serial each planned disk gets, and the script's search
for it in sysfs (services/configurator/templates/disks.sh.mustache)."""

from __future__ import annotations

import uuid

import pydantic
import pytest

from shared.providers.base import DiskBus, VmSpec, disk_serial, planned_disks


def test_serials_are_short_ascii_and_unique_per_vm_and_disk():
    """A serial fits SATA's and virtio-blk's 20 bytes, and no two disks of a fleet share one."""
    vms = [uuid.uuid4() for _ in range(50)]
    serials = [disk_serial(vm, i) for vm in vms for i in range(12)]
    assert len(set(serials)) == len(serials)
    assert all(len(s) <= 20 and s.isascii() and s.isalnum() for s in serials)
    assert disk_serial(vms[0], 1) == disk_serial(vms[0], 1)


def test_planned_disks_default_to_virtio_and_need_a_bus_per_disk():
    """Without buses every disk is virtio; with them, one per disk, or the spec is refused."""
    fields = dict(vm_id=uuid.uuid4(), group="g", name="app1", role="app", cpus=1, memory_mb=512,
                  disks_gb=[10, 20])
    assert [d.bus for d in planned_disks(VmSpec(**fields))] == [DiskBus.VIRTIO] * 2
    mixed = planned_disks(VmSpec(**fields, disk_buses=["scsi", "sata"]))
    assert [(d.index, d.size_gb, d.bus) for d in mixed] == [(0, 10, DiskBus.SCSI),
                                                            (1, 20, DiskBus.SATA)]
    with pytest.raises(pydantic.ValidationError, match="VM app1: 1 disk bus"):
        VmSpec(**fields, disk_buses=["scsi"])
