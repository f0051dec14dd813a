"""The lab's checks read what the VMs answer correctly: sha256sum listings with awkward names,
the plan's excludes anchored at the archived path, ssh run inside the group's namespace, a
replica's state as each engine shows it; and the example group gets each engine's checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lab import checks
from lab.checks import (CheckFailed, MariaDbReader, PostgreSqlReader, VmShell, _excluded,
                        _listing, check_group, filesystems, planned_disks, psql)
from shared.plan import load_plan_file

REPO = Path(__file__).resolve().parents[2]


def test_a_sha256sum_listing_keeps_names_with_spaces():
    """Names with spaces survive the parse; the leading ./ of find's output is dropped."""
    text = "aa  ./shared/images/red mug.png\nbb  ./top.txt\n"
    assert _listing(text) == {"shared/images/red mug.png": "aa", "top.txt": "bb"}


def test_excludes_are_anchored_at_the_archived_path():
    """'shared/tmp/*' drops everything below shared/tmp, at any depth, but not a tmp
    elsewhere; a bare directory pattern drops its contents too."""
    patterns = ["shared/tmp/*", "sessions"]
    assert _excluded("shared/tmp/a", patterns)
    assert _excluded("shared/tmp/deep/b", patterns)
    assert _excluded("sessions/s1", patterns)
    assert not _excluded("tmp/x", patterns)
    assert not _excluded("shared/images/tmp.png", patterns)


def test_commands_reach_the_vm_at_its_planned_address():
    """ssh to the VM's address, with the given key, never prompting."""
    argv = VmShell("10.20.0.11", Path("/k/id")).argv("lvs")
    assert argv[0] == "ssh"
    assert argv[argv.index("-i") + 1] == "/k/id"
    assert "BatchMode=yes" in argv and argv[-2:] == ["root@10.20.0.11", "lvs"]


class AnsweringShell:
    """A VM that answers every command with the same text."""

    def __init__(self, answer: str):
        self.answer = answer

    async def run(self, command: str, timeout: float = 0) -> str:
        return self.answer


async def test_boot_may_be_on_a_virtio_scsi_or_sata_disk():
    """/boot is the first partition of the first planned disk, vdX1 or sdX1 by its bus; the
    LVs are checked by name; anything else for /boot is refused, naming what was found."""
    vm = load_plan_file(REPO / "examples" / "shop.yaml").vm("app1")
    lvs = ("/ /dev/mapper/local-root xfs\n/data /dev/mapper/local-data xfs\n---\n"
           "/dev/dm-2\n---\n/dev/dm-2\n")
    for device in ("/dev/vda1", "/dev/sda1", "/dev/sdb1"):
        found = await filesystems(AnsweringShell(f"/boot {device} ext3\n" + lvs), vm)
        assert found == "/boot ext3, / xfs, /data xfs, swap"
    for device in ("/dev/vda2", "/dev/local/boot", "/dev/nvme0n1p1"):
        with pytest.raises(CheckFailed, match=f"/boot: {device} ext3, planned /dev/vdX1 or "):
            await filesystems(AnsweringShell(f"/boot {device} ext3\n" + lvs), vm)


async def test_the_planned_disks_are_found_by_serial_named_by_their_bus():
    """app1's disks as lsblk shows them on the rebuilt VM (its second disk on SATA, so sda),
    then the same with the SATA disk showing up as virtio, and with one disk missing."""
    vm = load_plan_file(REPO / "examples" / "shop.yaml").vm("app1")
    lsblk = "sda  21474836480 fma7d4936f609fd1\nvda  10737418240 fma7d4936f609fd0\nsr0 1 QM1\n"
    assert await planned_disks(AnsweringShell(lsblk), vm) == "vda (virtio, 10G), sda (sata, 20G)"
    with pytest.raises(CheckFailed, match="disk 1 is vdb of 21474836480 bytes, planned 20 GiB "
                                          "on sata"):
        await planned_disks(AnsweringShell(lsblk.replace("sda ", "vdb ")), vm)
    with pytest.raises(CheckFailed, match=r"Ferryman's serials: \[0\], planned 2"):
        await planned_disks(AnsweringShell(lsblk.splitlines()[1]), vm)


async def test_a_postgresql_standby_must_be_in_recovery_and_streaming():
    """db2's cluster as pg_is_in_recovery() and pg_stat_wal_receiver show it: a streaming
    standby passes, naming its master; a primary, or a standby not streaming, fails."""
    reader = PostgreSqlReader()
    found = await reader.replica_state(AnsweringShell("true streaming 10.20.0.12\n").run)
    assert found == "a standby (in recovery), its WAL receiver streaming from 10.20.0.12"
    for answer, says in [("false no-receiver\n", "pg_is_in_recovery() false, WAL receiver "
                                                 "no-receiver"),
                         ("true waiting 10.20.0.12\n", "pg_is_in_recovery() true, WAL "
                                                       "receiver waiting 10.20.0.12")]:
        with pytest.raises(CheckFailed, match=re.escape(f"not a streaming standby: {says}")):
            await reader.replica_state(AnsweringShell(answer).run)


async def test_a_mariadb_replica_must_run_both_threads():
    status = ("*************************** 1. row ***************************\n"
              "                Master_Host: 10.20.0.12\n"
              "           Slave_IO_Running: Yes\n"
              "          Slave_SQL_Running: {sql}\n"
              "                 Last_Error: {error}\n")
    reader = MariaDbReader()
    found = await reader.replica_state(AnsweringShell(status.format(sql="Yes", error="")).run)
    assert found == "replica of 10.20.0.12, both threads running"
    with pytest.raises(CheckFailed, match="Slave_SQL_Running No, last error 'Duplicate entry'"):
        await reader.replica_state(AnsweringShell(
            status.format(sql="No", error="Duplicate entry")).run)


def test_psql_runs_as_postgres_with_each_statement_quoted():
    """psql as the cluster's OS user, rows only; each statement one -c, quoted for the shell."""
    command = psql("stock", "SET TimeZone = 'UTC'", "SELECT 1")
    assert command == ("runuser -u postgres -- psql -X -q -A -t -v ON_ERROR_STOP=1 -d stock "
                       "-c 'SET TimeZone = '\"'\"'UTC'\"'\"'' -c 'SELECT 1'")


class UnreachableShell:
    """A VM that never answers: every check on it fails (with CheckFailed, reported)."""

    def __init__(self, address: str, identity: Path):
        self.address = address

    async def run(self, command: str, timeout: float = 0) -> str:
        raise CheckFailed(f"{self.address}: no answer")


async def test_the_checks_of_the_example_group_cover_both_engines_of_its_master(monkeypatch):
    """db1 holds MariaDB and PostgreSQL: each engine's rows are checked on db1 and db2,
    PostgreSQL's roles too, and db2 replicates by each engine (on VMs that never answer every
    check fails: what matters here is which checks there are)."""
    plan = load_plan_file(REPO / "examples" / "shop.yaml")
    monkeypatch.setattr(checks, "VmShell", UnreachableShell)

    async def legacy_run(host: str, argv: list[str]) -> str:
        return ""
    results = await check_group(plan, Path("/k/id"), legacy_run, "http://10.215.0.1:8470")
    assert not [c for c in results if c.ok and c.what != "data tree"]  # db1, db2: only /
    database_checks = [(c.vm, c.what) for c in results
                       if c.what.startswith(("database rows", "roles", "replication"))]
    assert database_checks == [
        ("db1", "database rows (MariaDB)"), ("db1", "database rows (PostgreSQL)"),
        ("db1", "roles (PostgreSQL)"),
        ("db2", "database rows (MariaDB)"), ("db2", "database rows (PostgreSQL)"),
        ("db2", "roles (PostgreSQL)"),
        ("db2", "replication (MariaDB)"), ("db2", "replication (PostgreSQL)")]
