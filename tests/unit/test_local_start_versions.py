"""local.start on a rebuilt MySQL or MariaDB server: the statements it sends follow the version
its own server answers (the rows of shared/databases/mysql_versions.py rendered into it), its
service and option file follow the VM's packages. Run under bash with the commands stubbed, as
in test_render.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.plan import load_plan
from tests.unit.test_render import (EXAMPLE_PLAN, MASTER_LOG, archive_refs, mariadb_only,
                                    run_local_start)


def mysql_plan():
    return mariadb_only(load_plan(EXAMPLE_PLAN.read_text().replace("engine: mariadb",
                                                                   "engine: mysql"),
                                  base_dir=EXAMPLE_PLAN.parent))


def run(tmp_path: Path, vm_name: str, version: str, *, fields: str = "Slave",
        rhel: bool = False, plan=None):
    """local.start of `vm_name` against a server that answers `version`; `rhel`: the VM has
    /etc/my.cnf and a mysqld unit, as RHEL-likes do."""
    plan = plan or mysql_plan()
    vm = plan.vm(vm_name)
    if rhel:
        root = tmp_path / "root"
        (root / "usr/lib/systemd/system").mkdir(parents=True)
        (root / "usr/lib/systemd/system/mysqld.service").write_text("[Unit]\n")
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "etc/my.cnf").write_text("[mysqld]\n")
    dumps = [a for a in archive_refs(vm) if a.kind == "database"]
    return run_local_start(plan, vm, tmp_path, dumps, env={
        "FERRY_STUB_SERVER_VERSION": version, "FERRY_STUB_STATUS_FIELDS": fields})


def fed(result) -> str:
    return "".join(call.get("stdin", "") for call in result.of("mysql"))


def test_a_mysql_84_replica_on_a_rhel_like_speaks_84(tmp_path: Path):
    """8.4: CHANGE REPLICATION SOURCE TO with the source's public key, START REPLICA, the
    Replica_ fields; the mysqld unit, /etc/my.cnf, a data dir made by mysqld itself."""
    result = run(tmp_path, "db2", "8.4.3", fields="Replica", rhel=True)
    assert result.returncode == 0, result.stderr
    assert result.states()[-1] == ("ready", "replicating")
    assert ("STOP REPLICA;\nCHANGE REPLICATION SOURCE TO SOURCE_HOST='10.20.0.12', "
            "SOURCE_PORT=3306, SOURCE_USER='ferry_repl', SOURCE_PASSWORD='Zm9vYmFy-x_1', "
            f"SOURCE_LOG_FILE='{MASTER_LOG[0]}', SOURCE_LOG_POS={MASTER_LOG[1]}, "
            "GET_SOURCE_PUBLIC_KEY=1;\nSTART REPLICA;\n") in fed(result)
    assert ["mysqld", "start"] in [c["args"] for c in result.of("service")]
    assert "!include /etc/mysql/ferryman-import.cnf" in \
        (tmp_path / "root/etc/my.cnf").read_text()
    assert not (tmp_path / "root/etc/mysql/my.cnf").exists()
    [initialize] = result.of("mysqld")
    assert initialize["args"][:2] == ["--initialize-insecure", "--user=mysql"]


def test_a_mysql_57_replica_on_debian_speaks_57(tmp_path: Path):
    result = run(tmp_path, "db2", "5.7.44-log")
    assert result.returncode == 0, result.stderr
    assert "STOP SLAVE;\nCHANGE MASTER TO MASTER_HOST='10.20.0.12'" in fed(result)
    assert "PUBLIC_KEY" not in fed(result) and "START SLAVE;\n" in fed(result)
    assert ["mysqld", "start"] in [c["args"] for c in result.of("service")]  # none found
    assert "!include" in (tmp_path / "root/etc/mysql/my.cnf").read_text()


@pytest.mark.parametrize("version, binlog_status", [
    ("5.7.44-log", "SHOW MASTER STATUS"), ("8.0.36-0ubuntu0.22.04.1", "SHOW MASTER STATUS"),
    ("8.4.3", "SHOW BINARY LOG STATUS"),
])
def test_a_mysql_master_keeps_its_users_password_fresh(tmp_path: Path, version: str,
                                                        binlog_status: str):
    """CREATE USER IF NOT EXISTS then ALTER USER (a user from an earlier boot gets this
    password too); the binary log's position asked in the version's words."""
    result = run(tmp_path, "db1", version)
    assert result.returncode == 0, result.stderr
    assert ("CREATE USER IF NOT EXISTS 'ferry_repl'@'%' IDENTIFIED BY 'Zm9vYmFy-x_1';\n"
            "ALTER USER 'ferry_repl'@'%' IDENTIFIED BY 'Zm9vYmFy-x_1';\n") in fed(result)
    asked = [c["args"] for c in result.of("mysql") if "-BN" in c["args"]]
    assert asked == [["-BN", "-e", binlog_status]]
    assert result.posted("state")[-1]["detail"]["log_pos"] == MASTER_LOG[1]


@pytest.mark.parametrize("version, message", [
    ("10.11.6-MariaDB-0+deb12u1", "answers version '10.11.6-MariaDB-0+deb12u1', which is "
                                  "MariaDB, not MySQL"),
    ("5.6.51-log", "version '5.6.51-log' is older than MySQL 5.7.9"),
    ("oops", "version 'oops' is not a MySQL or MariaDB version"),
])
def test_a_server_local_start_cannot_speak_to_fails_the_load_naming_it(
        tmp_path: Path, version: str, message: str):
    result = run(tmp_path, "db1", version)
    assert result.returncode != 0
    assert [b["step"] for b in result.posted("state") if b["state"] == "failed"] == [
        "load-dumps"]
    assert message in result.texts()
    assert not [c for c in result.of("mysql") if "stdin" in c]  # nothing loaded


def test_a_mariadb_103_replica_speaks_slave(tmp_path: Path):
    from tests.unit.test_render import EXAMPLE_PLAN as shop
    plan = mariadb_only(load_plan(shop.read_text(), base_dir=shop.parent))
    result = run(tmp_path, "db2", "10.3.39-MariaDB-0+deb10u1", plan=plan)
    assert result.returncode == 0, result.stderr
    assert "STOP SLAVE;\nCHANGE MASTER TO MASTER_HOST=" in fed(result)
    assert ["mariadb", "start"] in [c["args"] for c in result.of("service")]
