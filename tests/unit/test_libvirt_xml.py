"""The libvirt provider's documents and placement, without libvirt."""

from __future__ import annotations

import uuid
from xml.etree import ElementTree as ET

import pytest

from shared.providers import libvirt_xml as xml
from shared.providers.base import BootSource, ProviderError, VmSpec, planned_disks
from shared.providers.libvirt_hosts import choose

VM_ID = uuid.UUID("20044256-26e9-469c-9885-913546ded3e2")


def record(network: str = xml.MIGRATION_NETWORK, buses=("virtio", "scsi", "sata", "scsi")):
    spec = VmSpec(vm_id=VM_ID, group="shop", name="db2", role="db-replica", cpus=2,
                  memory_mb=1024, disks_gb=[10, 20, 5, 5], disk_buses=list(buses),
                  address="10.20.0.13/24", gateway="10.20.0.1")
    return xml.Record(key="vm:1", spec=spec.model_dump(mode="json"), network=network,
                      disks=xml.disk_entries(planned_disks(spec), str(VM_ID)))


def domain(source: BootSource, network: str = xml.MIGRATION_NETWORK, token: str | None = None):
    text = xml.domain_xml(record=record(network), vm_id=str(VM_ID), domain_type="qemu", cpus=2,
                          pool="ferry", source=source, token=token, console_log="/tmp/c.log")
    return text, ET.fromstring(text)


def test_the_record_survives_the_domain_xml():
    text, _ = domain(BootSource.DISK)
    found = xml.metadata_of(text)
    assert found is not None and found.key == "vm:1" and found.spec["name"] == "db2"
    assert [d["serial"] for d in found.disks] == [d["serial"] for d in record().disks]


def test_a_domain_without_ferrymans_record_is_not_ours():
    assert xml.metadata_of("<domain><name>x</name><metadata><other/></metadata></domain>") is None


def test_disks_on_each_bus_carry_their_serials_and_their_controllers():
    _, root = domain(BootSource.DISK)
    disks = root.findall("devices/disk")
    assert [(d.find("target").get("bus"), d.find("target").get("dev")) for d in disks] == \
        [("virtio", "vda"), ("scsi", "sda"), ("sata", "sdb"), ("scsi", "sdc")]
    assert [d.find("serial").text for d in disks] == [d.serial for d in planned_disks(
        VmSpec(vm_id=VM_ID, group="g", name="n", role="app", cpus=1, memory_mb=1,
               disks_gb=[1, 1, 1, 1]))]
    assert {c.get("type") for c in root.findall("devices/controller")} == {"scsi", "sata"}
    assert root.find("devices/controller[@type='scsi']").get("model") == "virtio-scsi"


def test_a_network_boot_boots_the_nic_first_and_carries_the_token_as_serial():
    _, root = domain(BootSource.NETWORK, token="t0k3n")
    assert root.find("devices/interface/boot").get("order") == "1"
    assert root.find("devices/disk/boot").get("order") == "2"
    assert root.find("sysinfo/system/entry[@name='serial']").text == "t0k3n"
    # The migration image ends by powering off; a network boot that fails is retried by the
    # firmware, which reboots after a while instead of halting on the blank disks.
    assert root.find("on_poweroff").text == "destroy"
    assert root.find("on_reboot").text == "restart"
    assert root.find("os/bios").get("rebootTimeout") == "10000"
    assert root.find("uuid").text == str(VM_ID) and root.find("name").text == "db2.shop"


def test_a_disk_boot_on_the_group_network_has_the_outbound_filter_and_no_token():
    _, root = domain(BootSource.DISK, network=xml.group_network_name("shop"), token="t0k3n")
    assert root.find("devices/interface/boot") is None
    assert root.find("devices/disk/boot").get("order") == "1"
    assert root.find("devices/interface/filterref").get("filter") == "ferry-out-shop"
    assert root.find("sysinfo/system/entry[@name='serial']").text == "none"
    assert root.find("on_reboot").text == "restart"
    assert root.find("os/bios") is None  # a disk that fails to boot is not retried


def test_the_migration_network_is_isolated_and_answers_pxe_with_one_url():
    root = ET.fromstring(xml.migration_network_xml("10.215.0.0/24", "http://10.215.0.1:8470/"
                                                   "v1/boot/${uuid}?token=${serial}"))
    assert root.find("forward") is None  # isolated: no NAT, no route out
    assert root.find("ip").get("address") == "10.215.0.1"
    assert root.find("ip/dhcp/bootp").get("file").endswith("${uuid}?token=${serial}")


def test_a_group_network_is_routed_to_the_forward_device_only():
    root = ET.fromstring(xml.group_network_xml("shop", "10.20.0.1/24", "ferry-legacy"))
    assert root.find("forward").attrib == {"mode": "route", "dev": "ferry-legacy"}
    assert root.find("ip").attrib == {"address": "10.20.0.1", "netmask": "255.255.255.0"}
    assert len(root.find("bridge").get("name")) <= 15
    assert ET.fromstring(xml.group_network_xml("shop", "10.20.0.1/24", "")).find(
        "forward").attrib == {"mode": "route"}


def test_the_outbound_filter_refuses_new_connections_beyond_the_group_until_opened():
    blocked = ET.fromstring(xml.outbound_filter_xml("shop", "10.20.0.0/24", "10.215.0.1", False))
    accepted = [r.find("all").attrib for r in blocked.findall("rule[@action='accept']")]
    assert {"dstipaddr": "10.20.0.0", "dstipmask": "24"} in accepted
    assert {"dstipaddr": "10.215.0.1"} in accepted
    assert blocked.findall("rule[@action='reject'][@direction='out']")
    opened = ET.fromstring(xml.outbound_filter_xml("shop", "10.20.0.0/24", "10.215.0.1", True))
    assert not opened.findall("rule[@action='reject']")
    # One UUID per group: redefining the filter changes it in place on running interfaces.
    assert blocked.find("uuid").text == opened.find("uuid").text != \
        ET.fromstring(xml.outbound_filter_xml("web", "10.20.0.0/24", "10.215.0.1", True)) \
        .find("uuid").text


def test_a_vm_goes_to_the_host_with_the_most_free_memory_that_fits():
    assert choose({"qemu:///system": 900, "qemu+ssh://b/system": 4000}, 1024) == \
        "qemu+ssh://b/system"
    assert choose({"a": 4000, "b": 4000}, 1024) == "a"  # a tie: the first listed
    with pytest.raises(ProviderError, match=r"no libvirt host has 8192 MiB .*a: 4000 MiB free"):
        choose({"a": 4000}, 8192)
