"""The libvirt provider against this machine's libvirtd: several hosts (one reached over SSH),
and the faults a user can cause (an unreachable host, a pool without room, a domain name taken
by something Ferryman did not make): each a clear error, nothing of anyone else's touched.
The provider's contract (create, networks, boots, delete) is tests/providers' suite."""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from services.runtime import SERVICES, Host
from shared.providers.base import ProviderError, VmSpec
from shared.providers.libvirt import LibvirtProvider, teardown
from shared.settings import Settings
from tests.conftest import eventually, free_port
from tests.integration.harness import THREE_VMS, Ferry
from tests.lab.conftest import libvirt_test_settings

pytestmark = [pytest.mark.lab]

LOCAL = "qemu:///system"


@pytest.fixture
async def settings(settings: Settings):
    settings = libvirt_test_settings(settings)
    yield settings
    await teardown(settings)


def spec(group: str, name: str = "a") -> VmSpec:
    return VmSpec(vm_id=uuid.uuid4(), group=group, name=name, role="app", cpus=1, memory_mb=256,
                  disks_gb=[1])


def a_group() -> str:
    return f"lvt-{uuid.uuid4().hex[:8]}"


def virsh(*args: str, check: bool = True) -> str:
    return subprocess.run(["virsh", "-c", LOCAL, *args], capture_output=True, text=True,
                          check=check).stdout


@pytest.fixture
def foreign_domain():
    """A domain Ferryman did not make, named as Ferryman would name a VM (<vm>.<group>)."""
    made = []

    def define(name: str) -> str:
        xml = (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
               "<os><type arch='x86_64'>hvm</type></os></domain>")
        subprocess.run(["virsh", "-c", LOCAL, "define", "/dev/stdin"], input=xml, text=True,
                       capture_output=True, check=True)
        made.append(name)
        return name

    yield define
    for name in made:
        virsh("undefine", name, check=False)


@pytest.fixture
def ssh_host(tmp_path: Path):
    """This machine's libvirtd again, as a second host reached over SSH: a private sshd on
    loopback that lets in one key, and the qemu+ssh:// URI that uses it."""
    key = tmp_path / "id_ed25519"
    host_key = tmp_path / "host_ed25519"
    for path in (key, host_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                       check=True)
    port = free_port()
    config = tmp_path / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {key}.pub\nPermitRootLogin prohibit-password\n"
        f"PasswordAuthentication no\nPidFile {tmp_path / 'sshd.pid'}\nUsePAM no\n"
        # The key lives under the test's tmp folder, below world-writable /tmp.
        "StrictModes no\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                            stderr=(tmp_path / "sshd.log").open("w"))
    # no_verify: the host key is this test's own, made a moment ago (libvirt's known_hosts
    # parameter is for its libssh transports, not for the ssh program this URI runs).
    uri = f"qemu+ssh://root@127.0.0.1:{port}/system?keyfile={key}&no_verify=1&no_tty=1"
    try:
        yield uri
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)


async def test_a_vm_is_found_on_whichever_host_holds_it(settings, ssh_host):
    """A VM made on the SSH host is found there by a provider that knows both hosts (its
    reference names the host), and is driven and deleted through it. Both URIs reach this
    machine's one libvirtd, so the SSH host is listed first: hosts are asked in their order."""
    await eventually(lambda: subprocess.run(["virsh", "-c", ssh_host, "version"],
                                            capture_output=True).returncode == 0,
                     timeout=20, interval=0.2, what="libvirt over SSH")
    group, vm = a_group(), None
    remote = LibvirtProvider(settings.model_copy(update={"libvirt_uris": ssh_host}))
    both = LibvirtProvider(settings.model_copy(update={"libvirt_uris": f"{ssh_host},{LOCAL}"}))
    try:
        vm = spec(group)
        made = await remote.create_vm(vm, idempotency_key="k")
        assert made.ref == f"{vm.vm_id}@{ssh_host}"
        assert await both.create_vm(vm, idempotency_key="k") == made
        assert [d.serial for d in await both.disks(made.ref)] == \
            [d.serial for d in await remote.disks(made.ref)]
        assert f"a.{group}" in virsh("list", "--all", "--name")
        await both.delete(made.ref)
        assert f"a.{group}" not in virsh("list", "--all", "--name")
    finally:
        await remote.close()
        await both.close()


async def test_an_unreachable_host_fails_the_create_and_makes_nothing(settings):
    """Every host must answer a create (the VM may already be on any of them): one that does
    not is named in the error, and no domain was made on the others."""
    dead = f"qemu+ssh://root@127.0.0.1:{free_port()}/system?no_tty=1&no_verify=1"
    provider = LibvirtProvider(settings.model_copy(update={"libvirt_uris": f"{LOCAL},{dead}"}))
    group = a_group()
    try:
        with pytest.raises(ProviderError, match=re.escape(f"libvirt host {dead} is unreachable")):
            await provider.create_vm(spec(group), idempotency_key="k")
        assert group not in virsh("list", "--all", "--name")
    finally:
        await provider.close()


async def test_a_domain_name_taken_by_someone_else_is_refused_and_left_alone(settings,
                                                                            foreign_domain):
    group = a_group()
    name = foreign_domain(f"a.{group}")
    provider = LibvirtProvider(settings)
    try:
        with pytest.raises(ProviderError, match=rf"domain {name} on {LOCAL} is taken by a domain "
                                                "Ferryman did not make"):
            await provider.create_vm(spec(group), idempotency_key="k")
        await teardown(settings)  # takes what Ferryman made, never this one
        assert name in virsh("list", "--all", "--name")
    finally:
        await provider.close()


async def test_a_pool_without_room_is_refused_before_anything_is_made(settings, tmp_path):
    """A pool on a 16 MiB filesystem cannot hold a new disk: the error names the pool and the
    room it has, and no volume or domain was made."""
    folder = tmp_path / "small-pool"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "ferry-test-pool", str(folder)],
                   check=True)
    pool = f"ferry-test-{uuid.uuid4().hex[:6]}"
    provider = LibvirtProvider(settings.model_copy(update={"libvirt_pool": pool,
                                                           "libvirt_pool_path": folder}))
    group = a_group()
    try:
        with pytest.raises(ProviderError, match=rf"storage pool {pool} on {LOCAL} has \d+ MiB "
                                                "free; 1 new disk\\(s\\) need at least 1024 MiB"):
            await provider.create_vm(spec(group), idempotency_key="k")
        assert virsh("vol-list", pool).count(".qcow2") == 0
        assert group not in virsh("list", "--all", "--name")
    finally:
        await provider.close()
        virsh("pool-destroy", pool, check=False)
        virsh("pool-undefine", pool, check=False)
        subprocess.run(["umount", str(folder)], check=False)


async def test_a_provider_error_fails_the_vm_and_halts_its_group(settings, operator,
                                                                clean_broker_and_db,
                                                                foreign_domain):
    """Through the services: the creator's error is the VM's message (what `ferry status`
    shows), the group halts, and the domain that was in the way is untouched."""
    group = a_group()
    name = foreign_domain(f"app1.{group}")
    host = Host(settings, SERVICES, provider=LibvirtProvider(settings), gateway=True)
    await host.start()
    try:
        ferry = Ferry(settings, host, None, operator)  # type: ignore[arg-type]
        group_id = await ferry.submit(THREE_VMS.format(group=group))
        ids = await ferry.vm_ids(group_id)
        await ferry.wait_group(group_id, "halted", timeout=120)
        assert await ferry.state(ids["app1"]) == "failed"
        async with operator.get(f"/v1/groups/{group_id}") as response:
            detail = await response.json()
        app1 = next(vm for vm in detail["vms"] if vm["name"] == "app1")
        assert f"domain {name} on {LOCAL} is taken" in (app1.get("message") or
                                                        detail.get("halted_reason") or "")
    finally:
        await host.stop()
    await teardown(settings)
    assert name in virsh("list", "--all", "--name")


async def test_the_kvm_probe_says_why_and_decides_once_per_host(settings, tmp_path):
    """FERRY_LIBVIRT_DOMAIN_TYPE=auto: the probe asks the host for KVM and boots the migration
    kernel under it; whichever way it goes it says why, leaves no domain behind, and its
    verdict is cached (a probe costs seconds)."""
    import libvirt

    from shared.providers.kvm_probe import PROBE_DOMAIN, kvm_verdict

    vmlinuz = settings.images_dir / "migration-vmlinuz"
    if not vmlinuz.is_file():
        pytest.skip(f"no migration kernel in {settings.images_dir} (deploy/lab/build-images.sh)")
    conn = libvirt.open(LOCAL)
    try:
        cache = tmp_path / "kvm.json"
        kind, why = await asyncio.to_thread(kvm_verdict, conn, LOCAL, vmlinuz, cache)
        assert kind in ("kvm", "qemu") and why.startswith("probe: ") and len(why) > 10
        assert PROBE_DOMAIN not in virsh("list", "--name")
        again = await asyncio.to_thread(kvm_verdict, conn, LOCAL, vmlinuz, cache)
        assert again == (kind, "cached probe: " + why.removeprefix("probe: "))
    finally:
        conn.close()
