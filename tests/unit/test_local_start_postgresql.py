"""local.start with PostgreSQL: a master makes its cluster with the major its dumps came from,
loads the globals and each database (pg_restore -j --create), creates the replication role and
reports its WAL position; a replica loads nothing, holds, then becomes a streaming standby
(pg_basebackup -R -C -S); a VM may run MariaDB and PostgreSQL. Run under bash with every
command stubbed (test_render.py); the same functions run against real clusters in
tests/integration/test_postgresql_rebuild.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.configurator.render import (ArchiveRef, RenderError, dump_file,
                                          render_local_start, render_script)
from shared.plan import DatabaseSpec, load_plan
from tests.unit.test_render import (EMPTY_SHA256, EXAMPLE_PLAN, REPLICATION, check_script,
                                    disks_of, MAC, run_local_start)

GLOBALS = "postgresql:globals"


def pg_plan(text_changes=(("engine: mariadb", "engine: postgresql"),)):
    text = EXAMPLE_PLAN.read_text()
    for old, new in text_changes:
        text = text.replace(old, new)
    return load_plan(text, base_dir=EXAMPLE_PLAN.parent)


def pg_refs(version: str | None = "150004") -> list[ArchiveRef]:
    return [ArchiveRef("g0", "database", GLOBALS, EMPTY_SHA256, 0, "postgresql", version),
            ArchiveRef("d0", "database", "shop", EMPTY_SHA256, 0, "postgresql", version)]


def with_binaries(tmp_path: Path, major: str = "15", debian: bool = False) -> None:
    """The VM's root has PostgreSQL `major`'s programs (as files: the stubs run instead)."""
    bin_dir = tmp_path / "root" / f"usr/lib/postgresql/{major}/bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "initdb").write_text("")
    if debian:
        (tmp_path / "root/usr/bin").mkdir(parents=True)
        (tmp_path / "root/usr/bin/pg_ctlcluster").write_text("")


def as_postgres(run, program: str) -> list[list[str]]:
    """The argv of each `program` run through runuser as postgres."""
    return [c["args"][3:] for c in run.of("runuser")
            if c["args"][:3] == ["-u", "postgres", "--"] and c["args"][3] == program]


def fed(run) -> str:
    return "".join(c.get("stdin", "") for c in run.of("psql"))


def run_pg(tmp_path: Path, vm_name: str, refs, plan=None, **kwargs):
    plan = plan or pg_plan()
    root = tmp_path / "root"
    vm = plan.vm(vm_name)
    for ref in refs:  # where the configuration script put them
        path = root / dump_file(ref, vm).lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"INSERT INTO t VALUES ('{ref.source}');\n")
    run = run_local_start(plan, vm, tmp_path, refs, write_dumps=False, **kwargs)
    return run, root


@pytest.mark.parametrize("name", ["db1", "db2"])
def test_postgresql_local_start_passes_bash_and_shellcheck(name: str, tmp_path: Path):
    plan = pg_plan()
    check_script(render_local_start(plan, plan.vm(name), pg_refs()), tmp_path, f"{name}.sh")


def test_a_postgresql_master_makes_its_cluster_loads_and_reports_its_wal_position(
        tmp_path: Path):
    with_binaries(tmp_path)
    run, root = run_pg(tmp_path, "db1", pg_refs())
    assert run.returncode == 0, run.stderr
    assert run.states() == [("provisioned", "first-boot"), ("loading", "load-dumps"),
                            ("ready", "loaded")]
    assert run.posted("state")[-1]["detail"] == {"lsn": "0/3000148"}
    assert run.posted("state")[-1]["message"] == "WAL at 0/3000148"
    datadir = str(root / "db/postgresql")
    [initdb] = as_postgres(run, "initdb")
    assert initdb[1:3] == ["-D", datadir] and "--auth-host=scram-sha-256" in initdb
    # No service of the packages and no systemd here: pg_ctl, and a warning about the boot.
    assert as_postgres(run, "pg_ctl")[-1][-1] == "start"
    assert "does not start at boot by itself" in run.texts()
    config = (root / "db/postgresql/ferryman.conf").read_text()
    assert "wal_level = logical" in config and "port = 5432" in config
    assert f"data_directory = '{datadir}'" in config
    assert (root / "db/postgresql/postgresql.conf").read_text().endswith(
        "\ninclude = 'ferryman.conf'\n")
    assert (root / "db/postgresql/pg_hba.conf").read_text() == (
        "host replication all 10.20.0.13/32 scram-sha-256\n")  # db2, its replica
    # The globals, then the database in parallel, as it was (--create), from a file.
    assert "INSERT INTO t VALUES ('postgresql:globals')" in fed(run)
    [restore] = as_postgres(run, "pg_restore")
    assert {"--create", "--clean", "--if-exists", "--jobs=2", "--exit-on-error"} <= set(restore)
    assert restore[-1] == str(root / "db/shop.dump")
    assert not (root / "db/shop.dump").exists()  # the unpacked copy removed after the load
    assert ("ALTER ROLE \"ferry_repl\" WITH REPLICATION LOGIN PASSWORD "
            f"'{REPLICATION['password']}';") in fed(run)
    assert not any(REPLICATION["password"] in " ".join(c["args"]) for c in run.calls)
    assert not run.of("mysql")


def test_a_debian_master_uses_its_cluster_configuration(tmp_path: Path):
    """postgresql-common: the cluster 15/main made by pg_createcluster (no legacy one came
    with the system), its configuration in /etc, started by pg_ctlcluster without systemd."""
    with_binaries(tmp_path, debian=True)
    run, root = run_pg(tmp_path, "db1", pg_refs())
    assert run.returncode == 0, run.stderr
    [create] = run.of("pg_createcluster")
    assert create["args"][:4] == ["--datadir=/db/postgresql", "--encoding=UTF8",
                                  "--locale=C", "15"]
    assert ["15", "main", "start"] in [c["args"] for c in run.of("pg_ctlcluster")]
    assert "include = 'ferryman.conf'" in \
        (root / "etc/postgresql/15/main/postgresql.conf").read_text()
    assert (root / "etc/postgresql/15/main/ferryman.conf").is_file()
    assert "10.20.0.13/32" in (root / "etc/postgresql/15/main/pg_hba.conf").read_text()


def test_a_legacy_debian_cluster_keeps_its_configuration(tmp_path: Path):
    """A legacy 15/main configuration from the archived root stays (its settings, its
    pg_hba.conf lines): Ferryman's file is included after it, data in the new data dir."""
    with_binaries(tmp_path, debian=True)
    conf = tmp_path / "root/etc/postgresql/15/main"
    conf.mkdir(parents=True)
    (conf / "postgresql.conf").write_text("data_directory = '/var/lib/postgresql/15/main'\n")
    (conf / "pg_hba.conf").write_text("host shop shop 10.20.0.0/24 scram-sha-256\n")
    run, root = run_pg(tmp_path, "db1", pg_refs())
    assert run.returncode == 0, run.stderr
    assert not run.of("pg_createcluster")
    assert as_postgres(run, "initdb")[0][1:3] == ["-D", str(root / "db/postgresql")]
    assert (conf / "postgresql.conf").read_text() == (
        "data_directory = '/var/lib/postgresql/15/main'\n\ninclude = 'ferryman.conf'\n")
    assert (conf / "pg_hba.conf").read_text() == (
        "host shop shop 10.20.0.0/24 scram-sha-256\n"
        "host replication all 10.20.0.13/32 scram-sha-256\n")


def test_a_postgresql_replica_copies_its_master_and_streams(tmp_path: Path):
    with_binaries(tmp_path)
    run, root = run_pg(tmp_path, "db2", pg_refs())
    assert run.returncode == 0, run.stderr
    assert run.states() == [("provisioned", "first-boot"), ("loading", "load-dumps"),
                            ("replicating", "replication-started"), ("ready", "replicating")]
    assert not as_postgres(run, "pg_restore") and not as_postgres(run, "initdb")
    [backup] = run.of("pg_basebackup")
    args = backup["args"]
    assert args[:4] == ["-h", "10.20.0.12", "-p", "5432"]
    assert {"-R", "-C"} <= set(args) and args[args.index("-S") + 1] == "ferry_db2"
    # The master's checkpoint at once, not spread over minutes before the copy begins.
    assert "--checkpoint=fast" in args
    assert args[args.index("-D") + 1] == str(root / "db/postgresql")
    # The password by environment only.
    assert backup["PGPASSWORD"] == REPLICATION["password"]
    assert not any(REPLICATION["password"] in " ".join(c["args"]) for c in run.calls)
    assert "port = 5432" in (root / "db/postgresql/ferryman.conf").read_text()
    assert "as a PostgreSQL standby (slot ferry_db2)" in \
        run.posted("state")[-2]["message"]


def test_a_replica_whose_slot_an_earlier_boot_made_uses_it(tmp_path: Path):
    """pg_basebackup -C finds the slot there (the master kept it from an attempt of an earlier
    boot): the copy is made again through it, without -C, the data dir emptied first."""
    with_binaries(tmp_path)
    run, root = run_pg(tmp_path, "db2", pg_refs(), env={"FERRY_STUB_SLOT_EXISTS": "1"})
    assert run.returncode == 0, run.stderr
    first, second = (c["args"] for c in run.of("pg_basebackup"))
    assert "-C" in first and "-C" not in second
    for args in (first, second):
        assert args[args.index("-S") + 1] == "ferry_db2" and "--checkpoint=fast" in args
    assert "replication slot ferry_db2 exists on 10.20.0.12 already: using it" in run.texts()
    assert run.states()[-1] == ("ready", "replicating")


def test_a_major_the_vm_does_not_have_fails_the_load_saying_so(tmp_path: Path):
    with_binaries(tmp_path, major="13")
    run, root = run_pg(tmp_path, "db1", pg_refs())
    assert run.returncode != 0
    assert [b["step"] for b in run.posted("state") if b["state"] == "failed"] == ["load-dumps"]
    assert "PostgreSQL 15 is not installed on this VM" in run.texts()
    assert not run.of("runuser")


def test_the_plans_version_wins_over_the_legacy_servers(tmp_path: Path):
    with_binaries(tmp_path, major="16")
    plan = pg_plan((("engine: mariadb", "engine: postgresql\n        version: \"16\""),))
    run, _ = run_pg(tmp_path, "db1", pg_refs(), plan=plan)
    assert run.returncode == 0, run.stderr


def test_a_vm_with_both_engines_loads_both_and_reports_both_positions(tmp_path: Path):
    with_binaries(tmp_path)
    plan = pg_plan(())
    db1 = plan.vm("db1")
    both = db1.model_copy(update={"databases": [
        *db1.databases, DatabaseSpec(engine="postgresql", name="ledger")]})
    plan = plan.model_copy(update={"vms": [both if vm.name == "db1" else vm
                                          for vm in plan.vms]})
    refs = [ArchiveRef("m0", "database", "shop", EMPTY_SHA256, 0, "mariadb"),
            ArchiveRef("g0", "database", GLOBALS, EMPTY_SHA256, 0, "postgresql", "150004"),
            ArchiveRef("d0", "database", "ledger", EMPTY_SHA256, 0, "postgresql", "150004")]
    run, _ = run_pg(tmp_path, "db1", refs, plan=plan)
    assert run.returncode == 0, run.stderr
    detail = run.posted("state")[-1]["detail"]
    assert set(detail) == {"log_file", "log_pos", "lsn"} and detail["lsn"] == "0/3000148"
    assert any("USE `shop`" in c.get("stdin", "") for c in run.of("mysql"))
    assert as_postgres(run, "pg_restore")[0][-1].endswith("/db/ledger.dump")


def test_the_version_must_be_known_to_render():
    plan = pg_plan()
    with pytest.raises(RenderError, match="version to rebuild is unknown"):
        render_local_start(plan, plan.vm("db1"), pg_refs(version=None))


def test_a_postgresql_replica_downloads_none_of_its_masters_dumps():
    plan = pg_plan()
    replica, master = plan.vm("db2"), plan.vm("db1")
    script = render_script(plan, replica, pg_refs(), disks=disks_of(replica), mac=MAC)
    assert "download_dump d0" not in script and "download_dump g0" not in script
    script = render_script(plan, master, pg_refs(), disks=disks_of(master), mac=MAC)
    assert "download_dump d0 " + EMPTY_SHA256 + " /db/shop.dump.zst" in script
    assert "download_dump g0 " + EMPTY_SHA256 + " /db/postgresql-globals.sql.zst" in script
