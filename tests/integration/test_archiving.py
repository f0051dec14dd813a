"""Archiving inside the journey: real archives and dumps, served only to their own VM."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from shared.providers.base import BootSource
from tests.integration.harness import start_ferry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]

LEGACY = Path(__file__).resolve().parents[2] / "examples" / "legacy"

PLAN = """
group: archived
vms:
  - name: app1
    cpus: 1
    memory_mb: 512
    disks: [{{size_gb: 10}}]
    filesystems: [{{mount: /, size_gb: 8}}]
    archives: [{{path: /}}, {{path: /data, excludes: ["sessions/*"]}}]
    source: {{kind: local, root: {app_root}{app_system}}}
    network: {{address: 10.20.0.11/24, hostname: app1.example}}
  - name: db1
    role: db-master
    cpus: 1
    memory_mb: 512
    disks: [{{size_gb: 10}}]
    filesystems: [{{mount: /, size_gb: 8}}]
    databases: [{{engine: mariadb, name: {database}}}]
    source: {{kind: local, root: {db_root}}}
    network: {{address: 10.20.0.12/24, hostname: db1.example}}
  - name: db2
    role: db-replica
    replica_of: db1
    cpus: 1
    memory_mb: 512
    disks: [{{size_gb: 10}}]
    filesystems: [{{mount: /, size_gb: 8}}]
    network: {{address: 10.20.0.13/24, hostname: db2.example}}
"""
# examples/legacy/app1 is an overlay on the lab's base image, not a whole root: it does not show
# its system, so the plan names it.
NAMED_SYSTEM = ", system: {family: debian, release: '12', init: systemd, network: ifupdown}"


def mysql(sql: str) -> None:
    subprocess.run(["mysql", "-uroot", "-h127.0.0.1", "-e", sql], check=True)


@pytest.fixture
def legacy_database():
    name = f"ferry_t_{uuid.uuid4().hex[:8]}"
    mysql(f"CREATE DATABASE {name}; CREATE TABLE {name}.products (id int primary key, name text);"
          f" INSERT INTO {name}.products VALUES (1, 'kettle'), (2, 'teapot');")
    yield name
    mysql(f"DROP DATABASE IF EXISTS {name}")


async def test_archives_are_taken_recorded_and_served_only_to_their_vm(settings, operator,
                                                                        legacy_database):
    """The archiver really archives the source tree and dumps the database; the VM downloads
    its own archives with matching sha256 and cannot download another VM's."""
    ferry = await start_ferry(settings, operator)
    try:
        plan = PLAN.format(app_root=LEGACY / "app1", app_system=NAMED_SYSTEM,
                           db_root=LEGACY / "db1", database=legacy_database)
        group_id = await ferry.submit(plan)
        ids = await ferry.vm_ids(group_id)
        for vm_id in ids.values():
            await ferry.wait_booted(vm_id, BootSource.NETWORK)
        rows = await ferry.pool.fetch(
            "SELECT a.*, v.name FROM archives a JOIN vms v ON v.id = a.vm_id ORDER BY v.name, a.source")
        assert [(r["name"], r["kind"], r["source"]) for r in rows] == [
            ("app1", "path", "/"), ("app1", "path", "/data"), ("db1", "database", legacy_database)]
        async with ferry.vm(ids["app1"]) as app:
            for row in rows[:2]:
                body = await app.download(f"/v1/archives/{ids['app1']}/{row['id']}")
                assert hashlib.sha256(body).hexdigest() == row["sha256"] and len(body) == row["size"]
            script = await app.script()
            assert "70-ferryman-net.rules" in script  # the NIC named by its MAC
            for row in rows[:2]:
                assert row["id"] in script  # the script downloads what was archived
        data = subprocess.run(f"zstd -dc {rows[1]['file']} | tar -t", shell=True, check=True,
                              capture_output=True, text=True).stdout.split()
        assert "./shared/images/" in data or any(n.startswith("./shared/") for n in data)
        assert not any(n.startswith("./sessions/") and n != "./sessions/" for n in data)
        dump = subprocess.run(["zstd", "-dc", rows[2]["file"]], check=True, capture_output=True,
                              text=True).stdout
        assert "teapot" in dump
        async with operator.get(f"{settings.gateway_url}/v1/archives/{ids['db1']}/{rows[0]['id']}",
                                headers={"Authorization": f"Bearer {ferry.token(ids['db1'])}"}) as r:
            assert r.status == 404  # db1's token, app1's archive
        dump_id = rows[2]["id"]
        async with ferry.vm(ids["db2"]) as replica:
            # The replica loads its master's dump, since the master loads without binlog.
            assert dump_id in await replica.script()
            body = await replica.download(f"/v1/archives/{ids['db2']}/{dump_id}")
            assert hashlib.sha256(body).hexdigest() == rows[2]["sha256"]
        async with operator.get(f"{settings.gateway_url}/v1/archives/{ids['app1']}/{dump_id}",
                                headers={"Authorization": f"Bearer {ferry.token(ids['app1'])}"}) as r:
            assert r.status == 404  # an app server gets no database dump
        manifest = Path(rows[0]["file"]).parent / "MANIFEST.sha256"
        assert subprocess.run(["sha256sum", "-c", "--quiet", manifest.name],
                              cwd=manifest.parent).returncode == 0
    finally:
        await ferry.host.stop()


async def test_an_unreadable_source_fails_the_vm_and_halts_the_group(settings, operator):
    """A source path that is not there fails that VM at the archive step, with the path in the
    message, and the group halts before any VM is created."""
    ferry = await start_ferry(settings, operator)
    try:
        plan = PLAN.format(app_root="/nonexistent/legacy", app_system=NAMED_SYSTEM,
                           db_root=LEGACY / "db1", database="ferry_no_such_db")
        group_id = await ferry.submit(plan)
        ids = await ferry.vm_ids(group_id)
        await ferry.wait_group(group_id, "halted")
        failed = await ferry.pool.fetchrow("SELECT * FROM vms WHERE id = $1", ids["app1"])
        assert failed["state"] == "failed" and failed["step"] == "archive"
        assert "/nonexistent/legacy" in failed["message"], failed["message"]
        assert ferry.provider.created == 0
    finally:
        await ferry.host.stop()


async def test_a_root_that_shows_no_system_fails_the_vm_before_any_vm_is_made(settings,
                                                                           operator):
    """A root archive whose root does not tell which system it is (no os-release) fails that
    VM at the archive step, saying so, and the group halts before any VM is created."""
    ferry = await start_ferry(settings, operator)
    try:
        plan = PLAN.format(app_root=LEGACY / "app1", app_system="", db_root=LEGACY / "db1",
                           database="ferry_no_such_db")
        group_id = await ferry.submit(plan)
        ids = await ferry.vm_ids(group_id)
        await ferry.wait_group(group_id, "halted")
        failed = await ferry.pool.fetchrow("SELECT * FROM vms WHERE id = $1", ids["app1"])
        assert failed["state"] == "failed" and failed["step"] == "archive"
        assert "no /etc/os-release or /usr/lib/os-release" in failed["message"], failed["message"]
        assert ferry.provider.created == 0
    finally:
        await ferry.host.stop()


async def test_files_changing_while_archived_are_recorded_as_warnings(settings, operator,
                                                                      tmp_path):
    """A file appended to while the archiver reads it (GNU tar exit 1) does not fail the VM:
    it is archived, and tar's warning reaches the VM's messages and the archive.ready event."""
    root = tmp_path / "live-host"
    (root / "var" / "log").mkdir(parents=True)
    log = root / "var" / "log" / "app.log"
    log.write_bytes(os.urandom(32 << 20))  # long enough to read that it grows meanwhile
    writer = subprocess.Popen(["sh", "-c", f"while :; do echo line >> '{log}'; done"])
    ferry = await start_ferry(settings, operator)
    try:
        plan = f"""
group: live
vms:
  - name: app1
    cpus: 1
    memory_mb: 512
    disks: [{{size_gb: 10}}]
    filesystems: [{{mount: /, size_gb: 8}}]
    archives: [{{path: /var/log}}]
    source: {{kind: local, root: {root}}}
    network: {{address: 10.20.0.11/24, hostname: app1.example}}
"""
        group_id = await ferry.submit(plan)
        ids = await ferry.vm_ids(group_id)
        await ferry.wait_booted(ids["app1"], BootSource.NETWORK)  # archived, and on its way
        writer.kill()
        messages = await ferry.pool.fetch(
            "SELECT level, text FROM vm_messages WHERE vm_id = $1", ids["app1"])
        body = await ferry.pool.fetchval(
            "SELECT body FROM outbox WHERE routing_key = 'archive.ready' AND group_id = $1",
            group_id)
    finally:
        writer.kill()
        writer.wait()
        await ferry.host.stop()
    warnings = [m["text"] for m in messages if m["level"] == "warning"]
    assert len(warnings) == 1 and warnings[0].startswith("archive of /var/log: tar: files changed")
    assert "file changed as we read it" in warnings[0]
    body = json.loads(body) if isinstance(body, str) else body  # jsonb, with or without a codec
    [item] = body["payload"]["archives"]
    assert item["source"] == "/var/log" and "file changed as we read it" in item["warnings"][0]


def postgres(sql: str) -> None:
    subprocess.run(["psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres",
                    "-v", "ON_ERROR_STOP=1", "-c", sql], check=True, capture_output=True)


@pytest.fixture
def legacy_postgres():
    name = f"ferry_t_{uuid.uuid4().hex[:8]}"
    postgres(f"CREATE DATABASE {name}")
    yield name
    postgres(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_postgresql_is_archived_with_its_globals_and_version(settings, operator,
                                                                   legacy_postgres):
    """A PostgreSQL master's archive: the cluster's globals once and the database, both
    recorded with the server's version; its replica's script downloads neither (it copies its
    master by pg_basebackup)."""
    ferry = await start_ferry(settings, operator)
    try:
        plan = PLAN.format(app_root=LEGACY / "app1", app_system=NAMED_SYSTEM,
                           db_root=LEGACY / "db1", database=legacy_postgres).replace(
            f"{{engine: mariadb, name: {legacy_postgres}}}",
            f"{{engine: postgresql, name: {legacy_postgres}, user: postgres}}")
        group_id = await ferry.submit(plan)
        ids = await ferry.vm_ids(group_id)
        try:
            for vm_id in ids.values():
                await ferry.wait_booted(vm_id, BootSource.NETWORK)
        except AssertionError:
            print(await ferry.pool.fetch("SELECT name, state, step, message FROM vms"))
            raise
        rows = await ferry.pool.fetch(
            "SELECT * FROM archives WHERE vm_id = $1 ORDER BY source", ids["db1"])
        assert [(r["source"], r["engine"]) for r in rows] == [
            (legacy_postgres, "postgresql"), ("postgresql:globals", "postgresql")]
        assert {r["server_version"][:2] for r in rows} == {"15"}
        assert rows[0]["file"].endswith(".dump.zst")
        async with ferry.vm(ids["db1"]) as master:
            script = await master.script()
            assert rows[0]["id"] in script and rows[1]["id"] in script
        async with ferry.vm(ids["db2"]) as replica:
            script = await replica.script()
            assert rows[0]["id"] not in script and rows[1]["id"] not in script
    finally:
        await ferry.host.stop()


async def test_a_postgresql_database_the_host_lacks_fails_the_archive(settings, operator):
    """A database the plan names and the server has not: the VM fails at its archive step,
    naming it, before anything is archived, and no VM of the group is created."""
    ferry = await start_ferry(settings, operator)
    try:
        plan = PLAN.format(app_root=LEGACY / "app1", app_system=NAMED_SYSTEM,
                           db_root=LEGACY / "db1", database="ferry_no_such_db").replace(
            "{engine: mariadb, name: ferry_no_such_db}",
            "{engine: postgresql, name: ferry_no_such_db, user: postgres}")
        group_id = await ferry.submit(plan)
        ids = await ferry.vm_ids(group_id)
        await ferry.wait_group(group_id, "halted")
        failed = await ferry.pool.fetchrow("SELECT * FROM vms WHERE id = $1", ids["db1"])
        assert failed["state"] == "failed" and failed["step"] == "archive"
        assert "the server has no database 'ferry_no_such_db'" in failed["message"], \
            failed["message"]
        assert ferry.provider.created == 0
    finally:
        await ferry.host.stop()
