"""PostgreSQL from the legacy server to a rebuilt master and its standby, with the real
PostgreSQL 15 of this machine: the archiver's probe, globals and custom-format dumps of a seeded
database on 127.0.0.1:5432 (and through the local socket as the postgres OS user, as over SSH
as root); then the rendered local.start itself, its commands real but for the gateway (curl,
stubbed), run for a master on one scratch cluster and for its replica on another, each in a
scratch root (FERRY_ROOT) and on a free port. Both clusters are stopped, even on failure."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from services.archiver.dumps import DumpError, dump_database, dump_globals, probe_server
from services.archiver.archive import ArchiveResult
from services.configurator.render import ArchiveRef, dump_file, render_local_start
from shared.databases import DatabaseSource, engine
from shared.plan import load_plan
from tests.chaos.infra import PG_BIN
from tests.conftest import free_port
from tests.unit.test_render import (BOOT_UUID, EXAMPLE_PLAN, GATEWAY, HOST_KEY, KERNEL,
                                    MASTER_LOG, REPLICATION, STUB)

pytestmark = pytest.mark.integration

PSQL = ["psql", "-X", "-q", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres",
        "-v", "ON_ERROR_STOP=1", "-A", "-t"]
# What local.start runs for real here (curl aside, which stands for the gateway).
REAL = ("runuser", "zstd", "mktemp", "grep", "tail", "rm", "mkdir", "chown", "chmod", "sleep",
        "nproc", "date", "cat", "mv", "id", "env")


def psql(sql: str, database: str = "postgres") -> str:
    done = subprocess.run([*PSQL, "-d", database, "-c", sql], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def as_postgres(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(["runuser", "-u", "postgres", "--", *argv], input=stdin,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout


def local_psql(port: int, sql: str, database: str = "postgres") -> str:
    """SQL on a scratch cluster through its socket, as its superuser (peer)."""
    return as_postgres(str(PG_BIN / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                       "-p", str(port), "-d", database, "-c", sql)


@pytest.fixture
def legacy():
    """A database and its owner (a role with a password) on the machine's server, seeded;
    dropped afterwards."""
    if PG_BIN is None or os.geteuid() != 0:
        pytest.skip("needs root and the PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
    name, owner = f"ferry_pg_{uuid.uuid4().hex[:8]}", f"ferry_owner_{uuid.uuid4().hex[:8]}"
    psql(f"CREATE ROLE {owner} LOGIN PASSWORD 'Pw-{uuid.uuid4().hex}' CREATEDB")
    psql(f"CREATE DATABASE {name} OWNER {owner}")
    try:
        psql(f"SET ROLE {owner};"
             " CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, data bytea);"
             " INSERT INTO items SELECT g, 'item ' || g || ' \U0001F375', '\\x00ff'::bytea"
             " FROM generate_series(1, 500) g;"
             " CREATE VIEW item_names AS SELECT name FROM items;", name)
        yield name, owner
    finally:
        psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        psql(f"DROP ROLE IF EXISTS {owner}")


@pytest.fixture
def scratch():
    """Folders the postgres OS user can reach (pytest's tmp_path is root's own, 0700), and
    every cluster started under them stopped at the end, whatever happened."""
    folder = Path(tempfile.mkdtemp(prefix="ferry-pg-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    for pid_file in folder.rglob("postmaster.pid"):
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D",
                        str(pid_file.parent), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
    shutil.rmtree(folder, ignore_errors=True)


async def archive(name: str, folder: Path) -> tuple[ArchiveResult, ArchiveResult, str]:
    """What the archiver does for a VM with this database: probe, globals, custom dump."""
    db = DatabaseSource("postgresql", name, "127.0.0.1", 5432, "postgres", None)
    version = await probe_server(db, [name])
    globals_ = await dump_globals(db, folder / "globals.sql.zst", version)
    dump = await dump_database(db, folder / "db.dump.zst")
    return globals_, dump, version


async def test_the_probe_names_a_database_the_server_does_not_have(legacy):
    name, _ = legacy
    db = DatabaseSource("postgresql", name, "127.0.0.1", 5432, "postgres", None)
    with pytest.raises(DumpError) as caught:
        await probe_server(db, [name, "ferry_not_there"])
    assert "the server has no database 'ferry_not_there'" in str(caught.value)
    version = await probe_server(db, [name])
    assert version.startswith("15") and len(version) == 6


async def test_globals_and_a_custom_dump_restore_the_same_rows_and_roles(legacy, scratch):
    """Into a new cluster (initdb as postgres, its own port): the globals with psql, the dump
    with pg_restore -j --create: the same rows, the database owned by the same role, whose
    password came along."""
    name, owner = legacy
    globals_, dump, version = await archive(name, scratch)
    assert (globals_.source_path, globals_.engine, globals_.server_version) == (
        "postgresql:globals", "postgresql", version)
    plain = subprocess.run(["zstd", "-dc", str(globals_.file)], capture_output=True,
                           check=True).stdout
    assert f"CREATE ROLE {owner};".encode() in plain
    data, port = scratch / "data", free_port()
    data.mkdir(mode=0o700)
    entry = pwd.getpwnam("postgres")
    os.chown(data, entry.pw_uid, entry.pw_gid)
    as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "--auth-local=peer",
                "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(data / "log"), "-w",
                "-o", f"-p {port} -c listen_addresses=''", "start")
    subprocess.run(f"zstd -dc {globals_.file} | runuser -u postgres -- {PG_BIN}/psql -X -q "
                   f"-p {port} -d postgres", shell=True, check=True, capture_output=True)
    unpacked = scratch / "db.dump"
    subprocess.run(["zstd", "-dq", str(dump.file), "-o", str(unpacked)], check=True)
    unpacked.chmod(0o644)
    as_postgres(str(PG_BIN / "pg_restore"), "--exit-on-error", "--create", "--jobs=2",
                "-p", str(port), "-d", "postgres", str(unpacked))
    rows = "SELECT count(*), md5(string_agg(id || name || encode(data, 'hex'), ',' ORDER BY id)) FROM items"
    assert local_psql(port, rows, name) == psql(rows, name)
    assert local_psql(port, f"SELECT pg_get_userbyid(datdba) FROM pg_database "
                            f"WHERE datname = '{name}'").strip() == owner
    password = f"SELECT rolpassword FROM pg_authid WHERE rolname = '{owner}'"
    assert local_psql(port, password) == psql(password)
    assert local_psql(port, "SELECT count(*) FROM item_names", name).strip() == "500"


async def test_through_the_socket_as_root_the_dump_runs_as_postgres(legacy, tmp_path):
    """The remote script for a database on the host itself, run here by root's shell as the
    archiver's SSH session would: runuser to postgres, peer authentication, no password."""
    name, _ = legacy
    db = DatabaseSource("postgresql", name, "127.0.0.1", 5432, None, None, socket=True)
    script, stdin = engine("postgresql").remote_dump_script(db)
    assert stdin is None and "runuser -u postgres" in script
    done = subprocess.run(["sh", "-c", script], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout[:5] == b"PGDMP"  # pg_dump's custom format


# --- the rendered local.start, for real -------------------------------------------------------

def gateway_stub(bin_dir: Path, master_host: str) -> None:
    """curl answering as the gateway (test_render.py's recorder), the master at master_host."""
    source = STUB.format(python=sys.executable, replication=REPLICATION, log_file=MASTER_LOG[0],
                         log_pos=MASTER_LOG[1], kernel=KERNEL, boot_uuid=BOOT_UUID,
                         host_key=HOST_KEY)
    source = source.replace('"host": "10.20.0.12"', f'"host": "{master_host}"')
    (bin_dir / "curl").write_text(source)
    (bin_dir / "curl").chmod(0o755)


def run_local_start(plan, vm_name: str, refs: list[ArchiveRef], root: Path, port: int,
                    master_port: int | None = None) -> list[dict]:
    """The VM's rendered local.start with FERRY_ROOT=root; returns what it reported."""
    bin_dir = root.parent / f"{vm_name}-bin"
    bin_dir.mkdir()
    gateway_stub(bin_dir, "127.0.0.1")
    for name in REAL:
        (bin_dir / name).symlink_to(shutil.which(name))
    (root / "etc/ferryman").mkdir(parents=True)
    (root / "etc/ferryman/gateway.env").write_text(
        f"FERRY_GATEWAY={GATEWAY}\nFERRY_VM_ID=vm-1\nFERRY_TOKEN=token-1\n")
    (root / "usr/lib/postgresql").mkdir(parents=True)
    (root / f"usr/lib/postgresql/{PG_BIN.parent.name}").symlink_to(PG_BIN.parent)
    script = root.parent / f"{vm_name}-local.start"
    script.write_text(render_local_start(plan, plan.vm(vm_name), refs))
    log = root.parent / f"{vm_name}-calls.jsonl"
    env = {"PATH": str(bin_dir), "FERRY_ROOT": str(root), "FERRY_STUB_LOG": str(log),
           "FERRY_PG_PORT": str(port), "HOME": str(root), "TMPDIR": "/tmp",
           **({"FERRY_PG_MASTER_PORT": str(master_port)} if master_port else {})}
    done = subprocess.run([shutil.which("bash"), str(script)], env=env, capture_output=True,
                          text=True, timeout=600)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    assert done.returncode == 0, done.stderr
    return [json.loads(c["body"]) for c in calls
            if "body" in c and c["url"].endswith("/state")]


async def test_local_start_rebuilds_a_master_and_a_streaming_standby(legacy, scratch):
    """The master's local.start makes its cluster with initdb, loads the legacy globals and
    database (pg_restore -j --create), reports its WAL position; the replica's makes a standby
    with pg_basebackup -R -C -S and reports once it streams; a row written on the new master
    afterwards shows on the standby."""
    name, owner = legacy
    major = PG_BIN.parent.name
    globals_, dump, version = await archive(name, scratch)
    plan = load_plan(EXAMPLE_PLAN.read_text().replace("engine: mariadb", "engine: postgresql"),
                     base_dir=EXAMPLE_PLAN.parent)
    refs = [ArchiveRef("g0", "database", "postgresql:globals", "0" * 64, 0, "postgresql",
                       version),
            ArchiveRef("d0", "database", "shop", "0" * 64, 0, "postgresql", version)]
    master_root, replica_root = scratch / "db1", scratch / "db2"
    for root in (master_root, replica_root):
        root.mkdir()
        root.chmod(0o755)
    # Where the configuration script would have put the dumps ("shop" stands for the legacy
    # database, restored under its own name by --create).
    vm = plan.vm("db1")
    (master_root / "db").mkdir()
    shutil.copy(globals_.file, master_root / dump_file(refs[0], vm).lstrip("/"))
    shutil.copy(dump.file, master_root / dump_file(refs[1], vm).lstrip("/"))
    master_port, replica_port = free_port(), free_port()

    states = run_local_start(plan, "db1", refs, master_root, master_port)
    assert [(s["state"], s["step"]) for s in states][-1] == ("ready", "loaded")
    lsn = states[-1]["detail"]["lsn"]
    assert engine("postgresql").parse_master_position(lsn) is not None
    rows = "SELECT count(*) FROM items"
    assert local_psql(master_port, rows, name).strip() == "500"
    assert local_psql(master_port, "SELECT rolreplication FROM pg_roles "
                                   "WHERE rolname = 'ferry_repl'").strip() == "t"
    assert local_psql(master_port, "SHOW wal_level").strip() == "logical"
    assert f"PostgreSQL {major}" in local_psql(master_port, "SELECT version()")

    states = run_local_start(plan, "db2", refs, replica_root, replica_port, master_port)
    assert [(s["state"], s["step"]) for s in states][-2:] == [
        ("replicating", "replication-started"), ("ready", "replicating")]
    assert local_psql(master_port, "SELECT slot_name, active FROM pg_replication_slots"
                      ).strip() == "ferry_db2|t"
    assert local_psql(replica_port, "SELECT status FROM pg_stat_wal_receiver").strip() == \
        "streaming"
    local_psql(master_port, "INSERT INTO items VALUES (501, 'written after', NULL)", name)
    for _ in range(100):
        if local_psql(replica_port, rows, name).strip() == "501":
            break
        subprocess.run(["sleep", "0.2"])
    assert local_psql(replica_port, "SELECT name FROM items WHERE id = 501",
                      name).strip() == "written after"
    # The standby's own settings: its port, its data directory.
    config = (replica_root / "db/postgresql/ferryman.conf").read_text()
    assert f"port = {replica_port}" in config
    assert f"data_directory = '{replica_root}/db/postgresql'" in config
