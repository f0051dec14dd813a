"""Faults on the archive side, injected for real (docs/reliability.md, "Archive store and legacy
host faults"): the archive store's filesystem full mid-archive (a small tmpfs), a legacy host
that drops off the network mid-stream, one whose tar stops sending while its connection lives,
and one that accepts connections but never speaks SSH. Each runs the whole product (the fake
provider at the edge) and the archiver's real pipeline, and checks what the operator sees: the
VM failed at its archive step with the cause named, no partial file left, the group halted.

The legacy hosts are network namespaces running this machine's sshd (tests/integration/
legacy_netns.py); no lab image, no libvirt, no lab lock.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from services.archiver.dumps import dump_database
from shared import archive_store
from shared.databases import DatabaseSource, DumpError
from shared.providers.base import BootSource
from tests.conftest import eventually
from tests.integration import legacy_netns
from tests.integration.harness import Ferry, ferry_cli, start_ferry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]

MB = 1_000_000
PLAN = """
group: {group}
vms:
  - name: app1
    cpus: 1
    memory_mb: 512
    disks: [{{size_gb: 10}}]
    filesystems: [{{mount: /, size_gb: 8}}]
    archives: [{{path: {path}}}]
    source: {source}
    network: {{address: 10.20.0.11/24, hostname: app1.example}}
"""


def incompressible(folder: Path, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    blob = folder / "blob.bin"
    with blob.open("wb") as handle:
        for _ in range(size // MB):
            handle.write(os.urandom(MB))
    return blob


async def failed_at_archive(ferry: Ferry, group_id: uuid.UUID, timeout: float = 30) -> dict:
    """Wait for the group to halt on its VM's failure; the VM's row."""
    await ferry.wait_group(group_id, "halted", timeout=timeout)
    vm = await ferry.pool.fetchrow("SELECT * FROM vms WHERE group_id = $1", group_id)
    assert (vm["state"], vm["step"]) == ("failed", "archive"), dict(vm)
    assert "Traceback" not in vm["message"]
    return dict(vm)


def partials(folder: Path) -> list[Path]:
    return list(folder.glob("*.partial-*")) if folder.exists() else []


# --- the archive store full -------------------------------------------------------------------

@pytest.fixture
def small_store(tmp_path: Path):
    """The archive store on a 20 MB tmpfs of its own."""
    store = tmp_path / "store"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "ferry-test-store", str(store)],
                   check=True)
    yield store
    subprocess.run(["umount", "--lazy", str(store)], check=True)


async def test_a_full_archive_store_fails_the_vm_clearly_and_a_retry_completes_once_freed(
        settings, operator, tmp_path, small_store):
    """A 32 MB incompressible source into a 20 MB store: the VM fails at its archive step with
    "archive store full", where, how much was written and how much is free (not a traceback,
    not the producer's broken pipe), the partial file is gone and the group halted; once the
    store is made bigger, the operator's `ferry retry` and `ferry resume` archive it whole."""
    settings = settings.model_copy(update={"archive_dir": small_store})
    root = tmp_path / "legacy"
    blob = incompressible(root / "srv", 32 * MB)
    ferry = await start_ferry(settings, operator)
    try:
        group_id = await ferry.submit(PLAN.format(
            group="full", path="/srv", source=f"{{kind: local, root: {root}}}"))
        [vm_id] = (await ferry.vm_ids(group_id)).values()
        vm = await failed_at_archive(ferry, group_id)
        message = vm["message"]
        print(f"\nstore full: {message}")
        assert message.startswith("app1: archive of /srv from local tree"), message
        assert "archive store full: no space left in " + str(small_store) in message, message
        assert re.search(r"after writing \d+\.\d MB of \S+\.tar\.zst", message), message
        free = float(re.search(r"; (\d+\.\d) MB free now", message).group(1))
        assert free > 15, message  # the partial file's space is back
        assert "No space left on device" in message and "Broken pipe" not in message
        folder = archive_store.vm_folder(small_store, group_id, "app1")
        assert partials(folder) == [] and list(folder.glob("*.tar.zst")) == []
        assert ferry.provider.created == 0
        assert await ferry.pool.fetchval("SELECT count(*) FROM archives") == 0

        subprocess.run(["mount", "-o", "remount,size=100m", str(small_store)], check=True)
        # The operator's way back: the VM redoes its archive once the halt is lifted.
        assert "app1 will redo from planned" in await ferry_cli(settings, "retry", "full/app1")
        await ferry_cli(settings, "resume", "full")
        await ferry.wait_booted(vm_id, BootSource.NETWORK)  # archived, and on its way
        row = await ferry.pool.fetchrow("SELECT * FROM archives WHERE vm_id = $1", vm_id)
        archive = Path(row["file"])
        assert hashlib.sha256(archive.read_bytes()).hexdigest() == row["sha256"]
        unpacked = subprocess.run(f"zstd -dc '{archive}' | tar -xO ./blob.bin | sha256sum",
                                  shell=True, check=True, capture_output=True, text=True)
        assert unpacked.stdout.split()[0] == hashlib.sha256(blob.read_bytes()).hexdigest()
        assert partials(folder) == []
    finally:
        await ferry.host.stop()


async def test_a_dump_into_a_full_store_fails_naming_the_store_and_leaves_nothing(tmp_path):
    """A MariaDB dump bigger than the store fails with "archive store full" (not mysqldump's
    broken pipe) and no partial file is left."""
    store = tmp_path / "store"
    store.mkdir()
    name = f"ferry_t_{uuid.uuid4().hex[:10]}"
    mariadb = ["mysql", "-uroot", "-h127.0.0.1"]
    subprocess.run([*mariadb, "-e", f"CREATE DATABASE {name}; CREATE TABLE {name}.noise"
                    f" (id INT PRIMARY KEY, data BLOB);"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "ferry-test-store", str(store)],
                   check=True)
    try:
        rows = ",".join(f"({i}, RANDOM_BYTES(1024))" for i in range(3000))
        subprocess.run([*mariadb, name, "-e", f"INSERT INTO noise VALUES {rows}"], check=True)
        with pytest.raises(DumpError) as failure:
            await dump_database(DatabaseSource("mariadb", name, "127.0.0.1", 3306, "root", None),
                                store / "shop.sql.zst")
        message = str(failure.value)
        assert message.startswith(f"dump of mariadb database '{name}'"), message
        assert f"archive store full: no space left in {store}" in message, message
        assert list(store.iterdir()) == []
    finally:
        subprocess.run(["umount", "--lazy", str(store)], check=True)
        subprocess.run([*mariadb, "-e", f"DROP DATABASE IF EXISTS {name}"], check=True)


# --- legacy hosts that stop answering -----------------------------------------------------------

@pytest.fixture
def legacy_host(tmp_path: Path):
    host = legacy_netns.start(tmp_path / "legacy-host")
    try:
        yield host
    finally:
        legacy_netns.stop(host)


def ssh_plan(host: legacy_netns.LegacyHost, path: Path) -> str:
    return PLAN.format(group="far", path=path,
                       source=f"{{kind: ssh, host: {host.address}, key_file: {host.key_file}}}")


async def streaming(host: legacy_netns.LegacyHost, at_least: int) -> int:
    """Wait until the archive stream has brought `at_least` bytes here; its tar's pid."""
    await eventually(lambda: host.received_here() >= at_least, timeout=30,
                     what=f"{at_least} bytes from {host.address}")
    [tar] = host.processes("tar")
    return tar


async def test_a_full_store_is_named_as_such_when_the_source_is_a_legacy_host(
        settings, operator, tmp_path, small_store, legacy_host):
    """Over SSH, the store filling up kills the stream from this end: the failure names the
    full store, not the host's tar or ssh (which only saw their pipe close)."""
    settings = settings.model_copy(update={"archive_dir": small_store})
    source = tmp_path / "srv"
    incompressible(source, 32 * MB)
    await eventually(legacy_host.answers, what="the host's sshd")
    ferry = await start_ferry(settings, operator)
    try:
        group_id = await ferry.submit(ssh_plan(legacy_host, source))
        message = (await failed_at_archive(ferry, group_id))["message"]
        assert message.startswith(f"app1: archive of {source} from root@{legacy_host.address}"),\
            message
        assert f"archive store full: no space left in {small_store}" in message, message
        assert f"on {legacy_host.address} exited" not in message, message
        assert partials(archive_store.vm_folder(small_store, group_id, "app1")) == []
    finally:
        await ferry.host.stop()


async def test_a_host_that_drops_off_mid_archive_fails_the_vm_within_the_keepalive_bound(
        settings, operator, tmp_path, legacy_host):
    """The host's link goes down mid-stream (no reset, no packet): the archiver notices after
    its keepalives go unanswered (here 2 × 1 s), fails the VM naming the host, the path and
    how much had arrived, removes the partial file and the group halts."""
    settings = settings.model_copy(update={
        "ssh_alive_interval_s": 1, "ssh_alive_count_max": 2, "archive_no_data_timeout_s": 60})
    source = tmp_path / "srv"
    incompressible(source, 48 * MB)
    legacy_host.shape("16mbit")
    await eventually(legacy_host.answers, what="the host's sshd")
    ferry = await start_ferry(settings, operator)
    try:
        group_id = await ferry.submit(ssh_plan(legacy_host, source))
        await streaming(legacy_host, 2 * MB)
        legacy_host.vanish()
        cut = time.monotonic()
        vm = await failed_at_archive(ferry, group_id)
        detected = time.monotonic() - cut
        message = vm["message"]
        assert message.startswith(f"app1: archive of {source} from root@{legacy_host.address}"),\
            message
        assert re.search(r"failed after \d+\.\d MB received: ", message), message
        assert (f"{legacy_host.address} port 22 stopped answering (2 SSH keepalives 1 s apart "
                "went unanswered)") in message, message
        assert partials(archive_store.vm_folder(settings.archive_root, group_id, "app1")) == []
        assert ferry.provider.created == 0
        print(f"\nhost dropped off: VM failed {detected:.1f} s after the cut: {message}")

    finally:
        await ferry.host.stop()


async def test_a_host_whose_tar_stops_sending_fails_the_vm_after_the_no_data_bound(
        settings, operator, tmp_path, legacy_host):
    """The host's tar stops (as on a hung mount) while its SSH connection lives and answers
    keepalives: after the no-data bound (here 3 s) the archiver kills the stream, fails the VM
    saying no data came from the host, removes the partial file and the group halts."""
    settings = settings.model_copy(update={
        "ssh_alive_interval_s": 1, "ssh_alive_count_max": 2, "archive_no_data_timeout_s": 3})
    source = tmp_path / "srv"
    incompressible(source, 48 * MB)
    legacy_host.shape("16mbit")
    await eventually(legacy_host.answers, what="the host's sshd")
    ferry = await start_ferry(settings, operator)
    try:
        group_id = await ferry.submit(ssh_plan(legacy_host, source))
        tar = await streaming(legacy_host, 2 * MB)
        os.kill(tar, signal.SIGSTOP)  # the tar hangs; its sshd and the connection do not
        stopped = time.monotonic()
        vm = await failed_at_archive(ferry, group_id)
        detected = time.monotonic() - stopped
        message = vm["message"]
        assert message.startswith(f"app1: archive of {source} from root@{legacy_host.address}"),\
            message
        assert re.search(r"failed after \d+\.\d MB received: ", message), message
        assert f"no data from {legacy_host.address} for 3 s while its tar ran" in message, \
            message
        assert "keepalive" not in message  # the connection was alive: this bound caught it
        assert partials(archive_store.vm_folder(settings.archive_root, group_id, "app1")) == []
        assert ferry.provider.created == 0
        print(f"\ntar stopped: VM failed {detected:.1f} s after: {message}")

    finally:
        await ferry.host.stop()


async def test_a_host_that_never_sends_its_ssh_banner_fails_at_connect(settings, operator,
                                                                      tmp_path):
    """A listener that accepts the connection and never speaks (a hung sshd, or not an SSH
    server): the VM fails within the connect bound (here 2 s), saying so."""
    held: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(reader, writer):
        held.append(writer)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = settings.model_copy(update={"ssh_connect_timeout_s": 2})
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    ferry = await start_ferry(settings, operator)
    try:
        started = time.monotonic()
        group_id = await ferry.submit(PLAN.format(
            group="mute", path="/srv",
            source=f"{{kind: ssh, host: 127.0.0.1, port: {port}, key_file: {key}}}"))
        vm = await failed_at_archive(ferry, group_id)
        took = time.monotonic() - started
        assert held, "the listener was never reached"
        assert (f"127.0.0.1 port {port} accepted the connection but sent no SSH banner within "
                "2 s") in vm["message"], vm["message"]
        print(f"\nno banner: VM failed {took:.1f} s after submission: {vm['message']}")

    finally:
        await ferry.host.stop()
        server.close()
        for writer in held:
            writer.close()
