"""The libvirt provider: VMs as libvirt domains on one or more hypervisor hosts
(docs/providers.md).

- A VM is the domain `<vm>.<group>` whose UUID is the VM's id, its disks volumes of the storage
  pool, and Ferryman's record (idempotency key, spec, network, disks) in the domain's metadata;
  a domain without that record is someone else's and is never changed. Its reference is
  `<uuid>@<host URI>`: the host it was placed on.
- The migration network (`ferry-migration`, isolated): its DHCP hands iPXE one boot URL for
  every VM, the gateway's boot listener's `http://...:8471/v1/boot/${uuid}` (no token); each
  network boot sets the domain's SMBIOS serial to the VM's new token, which the migration
  image reads (/sys/class/dmi/id/product_serial).
- A group's network (`ferry-g-<group>`, routed, no NAT): this host holds the group's gateway
  address; the network filter `ferry-out-<group>` on each VM's interface refuses new outbound
  connections beyond the group and the migration service until set_outbound opens it.

All state is libvirt's, never memory: services may each hold a provider, and a restarted one
finds everything again.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
import uuid
from ipaddress import ip_interface, ip_network
from typing import Any

from shared.logging import get_logger
from shared.providers import libvirt_xml as xml
from shared.providers.base import (
    MIGRATION_NETWORK, BootSource, ProviderDisk, ProviderError, ProviderVm, VmSpec,
    group_network, planned_disks,
)
from shared.providers.kvm_probe import kvm_verdict
from shared.providers.libvirt_hosts import Hypervisor, choose, free_memory_mb, rank
from shared.settings import Settings
from shared.tls import gateway_scheme

log = get_logger(__name__)

# Room a new disk needs in the pool when made: qcow2 starts sparse, but a pool that cannot hold
# this much would fail the VM halfway through its configuration rather than here.
ROOM_PER_DISK = 1024 ** 3
CONSOLE_DIR = "/var/log/libvirt/qemu"
SHUTDOWN_S = 10.0


def _group_of(network: str) -> str | None:
    prefix = group_network("")
    return network[len(prefix):] if network.startswith(prefix) else None


def _libvirt_error() -> type[Exception]:
    import libvirt

    return libvirt.libvirtError



def boot_url(settings: Settings, address: str) -> str:
    """The URL iPXE gets by DHCP: the gateway's boot listener (plain HTTP, no token in it), or,
    without one, the gateway itself with the token (the SMBIOS serial) as a parameter."""
    if settings.gateway_boot_port:
        return f"http://{address}:{settings.gateway_boot_port}/v1/boot/${{uuid}}"
    return (f"{gateway_scheme(settings)}://{address}:{settings.gateway_port}"
            "/v1/boot/${uuid}?token=${serial}")

class LibvirtProvider:
    name = "libvirt"
    simulated = False

    def __init__(self, settings: Settings):
        if not settings.libvirt_hosts:
            raise ProviderError("FERRY_LIBVIRT_URIS names no libvirt host")
        try:
            import libvirt  # noqa: F401
        except ImportError:
            raise ProviderError("the libvirt provider needs libvirt-python "
                                "(pip install 'ferryman[libvirt]'; it builds against "
                                "Debian's libvirt-dev)") from None
        self.settings = settings
        self.hosts = {uri: Hypervisor(uri) for uri in settings.libvirt_hosts}
        self.subnet = ip_network(settings.libvirt_migration_subnet)
        self.migration_gateway = str(next(self.subnet.hosts()))
        self.boot_url = settings.libvirt_boot_url or boot_url(settings, self.migration_gateway)
        self._types: dict[str, str] = {}

    # --- references ---

    def _host(self, ref: str) -> tuple[str, Hypervisor]:
        vm_id, sep, uri = ref.partition("@")
        try:
            uuid.UUID(vm_id)
        except ValueError:
            sep = ""
        if not sep or uri not in self.hosts:
            raise ProviderError(f"libvirt: {ref!r} is not a VM reference of the hosts in "
                                f"FERRY_LIBVIRT_URIS ({', '.join(self.hosts)})")
        return vm_id, self.hosts[uri]

    @staticmethod
    def _ref(vm_id: str, uri: str) -> str:
        return f"{vm_id}@{uri}"

    # --- the protocol ---

    async def placements(self, spec: VmSpec, *, idempotency_key: str) -> list[str]:
        made = await self._made(spec, idempotency_key)
        if made is not None:
            return [made.host]
        return rank(await self._free_memory(), spec.memory_mb)

    async def _made(self, spec: VmSpec, idempotency_key: str) -> ProviderVm | None:
        """The VM made already for this key, on whichever host (a repeated create)."""
        vm_id = str(spec.vm_id)
        found = await asyncio.gather(*(self._find(hv, vm_id, spec) for hv in self.hosts.values()))
        for uri, record in zip(self.hosts, found):
            if record is not None:
                if record.key != idempotency_key:
                    raise ProviderError(f"libvirt: domain {xml.domain_name(record.spec)} on {uri} "
                                        "belongs to another request (idempotency key)")
                return ProviderVm(ref=self._ref(vm_id, uri), mac=xml.mac_address(vm_id), host=uri)
        return None

    async def _free_memory(self) -> dict[str, int]:
        return dict(zip(self.hosts, await asyncio.gather(
            *(hv.call(free_memory_mb) for hv in self.hosts.values()))))

    async def create_vm(self, spec: VmSpec, *, idempotency_key: str,
                        host: str | None = None) -> ProviderVm:
        vm_id = str(spec.vm_id)
        # Every host is asked first: the VM may exist on any of them (a repeated create).
        made = await self._made(spec, idempotency_key)
        if made is not None:
            return made
        if host is not None and host not in self.hosts:
            raise ProviderError(f"libvirt: {host!r} is not one of the hosts in "
                                f"FERRY_LIBVIRT_URIS ({', '.join(self.hosts)})")
        uri = host or choose(await self._free_memory(), spec.memory_mb)
        hv = self.hosts[uri]
        disks = xml.disk_entries(planned_disks(spec), vm_id)
        record = xml.Record(key=idempotency_key, spec=spec.model_dump(mode="json"),
                            network=xml.MIGRATION_NETWORK, disks=disks,
                            extra={"host": uri, "pool": self.settings.libvirt_pool})
        await self._ensure_migration_network(hv)
        await hv.call(lambda conn: self._make_volumes(conn, disks))
        domain_type = await self._domain_type(hv)
        await hv.call(lambda conn: conn.defineXML(self._xml(record, vm_id, domain_type,
                                                            BootSource.DISK, None)))
        log.info("libvirt: VM created", vm=spec.name, host=uri, domain=xml.domain_name(record.spec),
                 disks=[f"{d['size_gb']}G {d['bus']}" for d in disks], type=domain_type)
        return ProviderVm(ref=self._ref(vm_id, uri), mac=xml.mac_address(vm_id), host=uri)

    async def disks(self, ref: str) -> list[ProviderDisk]:
        record = await self._record(ref)
        return [ProviderDisk.model_validate({k: v for k, v in d.items() if k != "volume"})
                for d in record.disks]

    async def attach(self, ref: str, network: str) -> None:
        vm_id, hv = self._host(ref)
        group = _group_of(network)
        if network != MIGRATION_NETWORK and group is None:
            raise ProviderError(f"libvirt: unknown network {network!r}")
        record = await self._record(ref)
        name = xml.MIGRATION_NETWORK if group is None else xml.group_network_name(group)
        if record.network == name:
            return
        if await hv.call(lambda conn: conn.lookupByUUIDString(vm_id).isActive()):
            raise ProviderError(f"libvirt: {xml.domain_name(record.spec)} is running; power it "
                                f"off before moving it to {network}")
        if group is None:
            await self._ensure_migration_network(hv)
        else:
            await self._ensure_group_network(hv, record.spec)
        record.network = name
        await self._redefine(hv, vm_id, record, BootSource.DISK, None)
        log.info("libvirt: VM attached", ref=ref, network=name)

    async def boot(self, ref: str, source: BootSource, *,
                   kernel_args: dict[str, str] | None = None) -> None:
        source = BootSource(source)
        vm_id, hv = self._host(ref)
        record = await self._record(ref)
        token = None
        if source == BootSource.NETWORK:
            if record.network != xml.MIGRATION_NETWORK:
                raise ProviderError(f"libvirt: {xml.domain_name(record.spec)} is on "
                                    f"{record.network}, which has no network boot; attach it to "
                                    "the migration network first")
            args = kernel_args or {}
            if not args.get("ferry.vm") or not args.get("ferry.token"):
                raise ProviderError("libvirt: a network boot needs ferry.vm and ferry.token")
            if args["ferry.vm"] != vm_id:
                raise ProviderError(f"libvirt: the boot is for VM {args['ferry.vm']}, not {vm_id}")
            token = args["ferry.token"]
            await self._ensure_migration_network(hv)
        else:
            group = _group_of_network_name(record.network)
            if group is not None:
                await self._ensure_group_network(hv, record.spec)
        wanted = {"source": source.value, "network": record.network,
                  "token_sha256": token and hashlib.sha256(token.encode()).hexdigest()}
        running = await hv.call(lambda conn: conn.lookupByUUIDString(vm_id).isActive())
        if running and record.boot == wanted:
            return  # this very boot is under way (a repeated call)
        if running:
            await self._stop(hv, vm_id)
        record.boot = wanted
        await self._redefine(hv, vm_id, record, source, token)
        await hv.call(lambda conn: conn.lookupByUUIDString(vm_id).create())
        log.info("libvirt: VM booted", ref=ref, source=source.value, network=record.network)

    async def power_off(self, ref: str) -> None:
        vm_id, hv = self._host(ref)
        await self._record(ref)
        await self._stop(hv, vm_id)

    async def delete(self, ref: str) -> None:
        vm_id, hv = self._host(ref)
        record = await hv.call(lambda conn: _delete_domain(conn, vm_id))
        if record is None:
            return
        group = _group_of_network_name(record.network)
        if group is not None:
            await hv.call(lambda conn: _collect_group_network(conn, group))
        log.info("libvirt: VM deleted", ref=ref, domain=xml.domain_name(record.spec))

    async def addresses(self, ref: str) -> list[str]:
        record = await self._record(ref)
        address = record.spec.get("address")
        if _group_of_network_name(record.network) is None or not address:
            return []
        return [str(ip_interface(address).ip)]

    async def set_outbound(self, group: str, open_: bool) -> None:
        """Redefined with its UUID, the filter changes on every running interface that uses it,
        on every host that has the group's network."""
        for hv in self.hosts.values():
            subnet = await hv.call(lambda conn: _group_subnet(conn, group))
            if subnet is None:
                continue
            text = xml.outbound_filter_xml(group, subnet, self.migration_gateway, open_)
            await hv.call(lambda conn: conn.nwfilterDefineXML(text))
        log.info("libvirt: group outbound " + ("opened" if open_ else "blocked"), group=group)

    async def close(self) -> None:
        # Domains outlive the service; teardown() removes them.
        for hv in self.hosts.values():
            await asyncio.to_thread(hv.close)

    # --- helpers ---

    async def _find(self, hv: Hypervisor, vm_id: str, spec: VmSpec) -> xml.Record | None:
        """Ferryman's record of this VM on the host, or None; refuses a domain of the VM's name
        that Ferryman did not make (or made for another VM)."""
        name = xml.domain_name(spec.model_dump(mode="json"))

        def look(conn: Any) -> xml.Record | None:
            error = _libvirt_error()
            for lookup in (lambda: conn.lookupByUUIDString(vm_id), lambda: conn.lookupByName(name)):
                try:
                    domain = lookup()
                except error:
                    continue
                record = xml.metadata_of(domain.XMLDesc(0))
                if record is None or domain.UUIDString() != vm_id:
                    raise ProviderError(
                        f"libvirt: domain {domain.name()} on {hv.uri} is taken by a domain "
                        "Ferryman did not make for this VM; nothing was changed (rename or "
                        "remove it, or rename the VM in the plan)")
                return record
            return None

        return await hv.call(look)

    async def _record(self, ref: str) -> xml.Record:
        vm_id, hv = self._host(ref)

        def read(conn: Any) -> xml.Record:
            try:
                domain = conn.lookupByUUIDString(vm_id)
            except _libvirt_error():
                raise ProviderError(f"libvirt: no VM {ref}") from None
            record = xml.metadata_of(domain.XMLDesc(0))
            if record is None:
                raise ProviderError(f"libvirt: domain {domain.name()} was not made by Ferryman")
            return record

        return await hv.call(read)

    def _xml(self, record: xml.Record, vm_id: str, domain_type: str, source: BootSource,
             token: str | None) -> str:
        # More vCPUs than host cores only slows everything under TCG.
        cpus = int(record.spec["cpus"])
        if domain_type == "qemu":
            cpus = max(1, min(cpus, 2))
        return xml.domain_xml(record=record, vm_id=vm_id, domain_type=domain_type, cpus=cpus,
                              pool=self.settings.libvirt_pool, source=source, token=token,
                              console_log=f"{CONSOLE_DIR}/{xml.domain_name(record.spec)}.console.log")

    async def _redefine(self, hv: Hypervisor, vm_id: str, record: xml.Record,
                        source: BootSource, token: str | None) -> None:
        domain_type = await self._domain_type(hv)
        text = self._xml(record, vm_id, domain_type, source, token)
        await hv.call(lambda conn: conn.defineXML(text))

    async def _stop(self, hv: Hypervisor, vm_id: str) -> None:
        """ACPI power button first (a clean shutdown), then pulled plug."""

        def stop(conn: Any) -> None:
            domain = conn.lookupByUUIDString(vm_id)
            if not domain.isActive():
                return
            try:
                domain.shutdown()
            except _libvirt_error():
                pass
            deadline = time.monotonic() + SHUTDOWN_S
            while time.monotonic() < deadline:
                if not domain.isActive():
                    return
                time.sleep(0.2)
            try:
                domain.destroy()
            except _libvirt_error():
                if domain.isActive():
                    raise

        await hv.call(stop)

    async def _domain_type(self, hv: Hypervisor) -> str:
        if hv.uri in self._types:
            return self._types[hv.uri]
        choice = self.settings.libvirt_domain_type
        if choice in ("kvm", "qemu"):
            kind, why = choice, "FERRY_LIBVIRT_DOMAIN_TYPE"
        elif choice != "auto":
            raise ProviderError(f"FERRY_LIBVIRT_DOMAIN_TYPE={choice!r}: use auto, kvm or qemu")
        else:
            vmlinuz = self.settings.images_dir / "migration-vmlinuz"
            cache = (self.settings.state_dir / "libvirt" /
                     f"kvm-{hashlib.sha256(hv.uri.encode()).hexdigest()[:12]}.json")
            kind, why = await hv.call(lambda conn: kvm_verdict(conn, hv.uri, vmlinuz, cache))
        log.info("libvirt: domain type chosen", host=hv.uri, type=kind, reason=why)
        self._types[hv.uri] = kind
        return kind

    def _make_volumes(self, conn: Any, disks: list[dict]) -> None:
        """The VM's volumes in the pool (the pool made if missing); existing ones are kept, so a
        create repeated after a crash finishes the job."""
        pool = _ensure_pool(conn, self.settings.libvirt_pool, str(self.settings.libvirt_pool_path))
        pool.refresh(0)
        have = set(pool.listVolumes())
        new = [d for d in disks if d["volume"] not in have]
        room = pool.info()[3]
        if new and room < ROOM_PER_DISK * len(new):
            raise ProviderError(
                f"libvirt: storage pool {self.settings.libvirt_pool} on {conn.getURI()} has "
                f"{room // 1024 ** 2} MiB free; {len(new)} new disk(s) need at least "
                f"{ROOM_PER_DISK * len(new) // 1024 ** 2} MiB")
        for disk in new:
            pool.createXML(xml.volume_xml(disk["volume"], disk["size_gb"]), 0)

    async def _ensure_migration_network(self, hv: Hypervisor) -> None:
        text = xml.migration_network_xml(str(self.subnet), self.boot_url)
        await hv.call(lambda conn: _ensure_network(conn, xml.MIGRATION_NETWORK, text))

    async def _ensure_group_network(self, hv: Hypervisor, spec: dict) -> None:
        group = spec["group"]
        if not spec.get("address") or not spec.get("gateway"):
            raise ProviderError(
                f"libvirt: VM {spec['name']} has no planned address and gateway; its group's "
                "network is built from them (set network.address and network.gateway in the plan)")
        iface = ip_interface(spec["address"])
        gateway = f"{spec['gateway']}/{iface.network.prefixlen}"
        net_text = xml.group_network_xml(group, gateway, self.settings.libvirt_group_forward_dev)
        filter_text = xml.outbound_filter_xml(group, str(iface.network), self.migration_gateway,
                                              open_=False)

        def ensure(conn: Any) -> None:
            try:
                conn.nwfilterLookupByName(xml.outbound_filter_name(group))
            except _libvirt_error():  # blocked from the start; set_outbound changes it later
                conn.nwfilterDefineXML(filter_text)
            _ensure_network(conn, xml.group_network_name(group), net_text)

        await hv.call(ensure)


def _group_of_network_name(name: str) -> str | None:
    prefix = xml.group_network_name("")
    return name[len(prefix):] if name.startswith(prefix) else None


def _ensure_pool(conn: Any, name: str, path: str) -> Any:
    try:
        pool = conn.storagePoolLookupByName(name)
    except _libvirt_error():
        pool = conn.storagePoolDefineXML(xml.pool_xml(name, path), 0)
        pool.build(0)
        pool.setAutostart(1)
    if not pool.isActive():
        pool.create(0)
    return pool


def _ensure_network(conn: Any, name: str, text: str) -> None:
    """Defined and started; a migration network defined differently (another subnet or boot
    URL) is redefined while no domain uses it, else refused with what differs."""
    try:
        network = conn.networkLookupByName(name)
    except _libvirt_error():
        network = conn.networkDefineXML(text)
        network.setAutostart(1)
    else:
        if name == xml.MIGRATION_NETWORK and not _same_network(network.XMLDesc(0), text):
            if network.isActive() and _domains_on(conn, name, active_only=True):
                raise ProviderError(
                    f"libvirt: network {name} on {conn.getURI()} is defined with another subnet "
                    "or boot URL, and VMs are running on it; stop them or undefine it")
            if network.isActive():
                network.destroy()
            network = conn.networkDefineXML(text)
            network.setAutostart(1)
    if not network.isActive():
        network.create()


def _same_network(current: str, wanted: str) -> bool:
    from xml.etree import ElementTree as ET

    def key(text: str) -> tuple:
        root = ET.fromstring(text)
        ip = root.find("ip")
        bootp = root.find("ip/dhcp/bootp")
        return (ip.get("address") if ip is not None else None,
                bootp.get("file") if bootp is not None else None)

    return key(current) == key(wanted)


def _domains_on(conn: Any, network: str, active_only: bool = False) -> list[str]:
    found = []
    for domain in conn.listAllDomains(0):
        if active_only and not domain.isActive():
            continue
        if xml.interface_network(domain.XMLDesc(0)) == network:
            found.append(domain.name())
    return found


def _group_subnet(conn: Any, group: str) -> str | None:
    from xml.etree import ElementTree as ET

    try:
        network = conn.networkLookupByName(xml.group_network_name(group))
    except _libvirt_error():
        return None
    ip = ET.fromstring(network.XMLDesc(0)).find("ip")
    return str(ip_interface(f"{ip.get('address')}/{ip.get('netmask')}").network)


def _collect_group_network(conn: Any, group: str) -> None:
    """The group's network and filter go with its last VM."""
    name = xml.group_network_name(group)
    if _domains_on(conn, name):
        return
    try:
        network = conn.networkLookupByName(name)
        if network.isActive():
            network.destroy()
        network.undefine()
    except _libvirt_error():
        pass
    try:
        conn.nwfilterLookupByName(xml.outbound_filter_name(group)).undefine()
    except _libvirt_error():
        pass


def _delete_domain(conn: Any, vm_id: str) -> xml.Record | None:
    """Stop, undefine and delete the volumes of the VM's domain; None when already gone."""
    import libvirt

    try:
        domain = conn.lookupByUUIDString(vm_id)
    except libvirt.libvirtError:
        return None
    record = xml.metadata_of(domain.XMLDesc(0))
    if record is None:
        raise ProviderError(f"libvirt: domain {domain.name()} was not made by Ferryman; "
                            "it is left alone")
    if domain.isActive():
        domain.destroy()
    domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                         | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
    for disk in record.disks:
        try:
            pool = conn.storagePoolLookupByName(record.extra["pool"])
            pool.storageVolLookupByName(disk["volume"]).delete(0)
        except libvirt.libvirtError:
            pass  # already gone
    return record


# --- teardown ------------------------------------------------------------------------------------

def _teardown_host(conn: Any) -> int:
    """Every domain, network and filter Ferryman made on the host; others are left alone."""
    import libvirt

    removed = 0
    for domain in conn.listAllDomains(0):
        if xml.metadata_of(domain.XMLDesc(0)) is not None:
            _delete_domain(conn, domain.UUIDString())
            removed += 1
    for network in conn.listAllNetworks(0):
        if network.name().startswith("ferry-"):
            if network.isActive():
                network.destroy()
            network.undefine()
    for nwfilter in conn.listAllNWFilters(0):
        if nwfilter.name().startswith("ferry-out-"):
            try:
                nwfilter.undefine()
            except libvirt.libvirtError:
                pass
    return removed


async def teardown(settings: Settings) -> None:
    """Remove every VM, network and filter Ferryman made on the configured hosts; safe to repeat."""
    for uri in settings.libvirt_hosts:
        hv = Hypervisor(uri)
        try:
            removed = await hv.call(_teardown_host)
        finally:
            hv.close()
        log.info("libvirt: host torn down", host=uri, vms=removed)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["down"]:
        print("usage: python -m shared.providers.libvirt down   (remove every VM, network and "
              "filter Ferryman made on FERRY_LIBVIRT_URIS)", file=sys.stderr)
        return 2
    from shared.logging import configure_logging

    settings = Settings()
    configure_logging(settings)
    asyncio.run(teardown(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["LibvirtProvider", "teardown"]
