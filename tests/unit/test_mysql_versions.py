"""The statements a MySQL or MariaDB server gets, chosen by what it answers to SELECT VERSION()
(shared/databases/mysql_versions.py), per version, through the engines that use them."""

from __future__ import annotations

import pytest

from shared.databases import Position, UnsupportedVersion, engine
from shared.databases.mysql_versions import MARIADB, MYSQL, flavour, parse_version

POINT = dict(host="10.0.0.1", port=3307, user="ferry", password="pw", databases=["shop"])


def forms(name: str, version: str) -> dict[str, str]:
    """What the engine `name` bound to `version` says, statement by statement."""
    server = engine(name).at_version(version)
    return {
        "point": server.point_at_master_sql(**POINT).splitlines()[-1],
        "stop": server.promote_sql().splitlines()[0],
        "start": server.start_replica_sql(),
        "status": server.replica_status_sql(),
        "position": server.master_position_sql(),
        "wait": server.wait_for_position_sql(Position("b.1", 4), 9),
        "user": server.replication_user_sql("ferry", "pw", ["h"]).splitlines()[1],
        "read_only": server.read_only_sql(True),
    }


MYSQL_57 = {
    "point": "CHANGE MASTER TO MASTER_HOST = '10.0.0.1', MASTER_PORT = 3307, "
             "MASTER_USER = 'ferry', MASTER_PASSWORD = 'pw', MASTER_CONNECT_RETRY = 5;",
    "stop": "STOP SLAVE;", "start": "START SLAVE;", "status": "SHOW SLAVE STATUS\\G",
    "position": "SHOW MASTER STATUS;", "wait": "SELECT MASTER_POS_WAIT('b.1', 4, 9);",
    "user": "CREATE USER IF NOT EXISTS 'ferry'@'h' IDENTIFIED BY 'pw';",
    "read_only": "SET GLOBAL read_only = ON; SET GLOBAL super_read_only = ON;",
}
MYSQL_8021 = {**MYSQL_57, "point": MYSQL_57["point"][:-1] + ", GET_MASTER_PUBLIC_KEY = 1;"}
MYSQL_8023 = {
    **MYSQL_8021,
    "point": "CHANGE REPLICATION SOURCE TO SOURCE_HOST = '10.0.0.1', SOURCE_PORT = 3307, "
             "SOURCE_USER = 'ferry', SOURCE_PASSWORD = 'pw', SOURCE_CONNECT_RETRY = 5, "
             "GET_SOURCE_PUBLIC_KEY = 1;",
    "stop": "STOP REPLICA;", "start": "START REPLICA;", "status": "SHOW REPLICA STATUS\\G",
}
MYSQL_8026 = {**MYSQL_8023, "wait": "SELECT SOURCE_POS_WAIT('b.1', 4, 9);"}
MYSQL_84 = {**MYSQL_8026, "position": "SHOW BINARY LOG STATUS;"}
MARIADB_103 = {
    **MYSQL_57, "user": "CREATE OR REPLACE USER 'ferry'@'h' IDENTIFIED BY 'pw';",
    "read_only": "SET GLOBAL read_only = ON;",
}
MARIADB_105 = {**MARIADB_103, "stop": "STOP REPLICA;", "start": "START REPLICA;",
               "status": "SHOW REPLICA STATUS\\G", "position": "SHOW BINLOG STATUS;"}


@pytest.mark.parametrize("name, version, expected", [
    ("mysql", "5.7.44-log", MYSQL_57),
    ("mysql", "8.0.21", MYSQL_8021),
    ("mysql", "8.0.22", {**MYSQL_8021, "stop": "STOP REPLICA;", "start": "START REPLICA;",
                         "status": "SHOW REPLICA STATUS\\G"}),
    ("mysql", "8.0.23", MYSQL_8023),
    ("mysql", "8.0.26", MYSQL_8026),
    ("mysql", "8.0.36-0ubuntu0.22.04.1", MYSQL_8026),
    ("mysql", "8.4.3", MYSQL_84),
    ("mysql", "9.1.0", MYSQL_84),
    ("mariadb", "10.3.39-MariaDB-0+deb10u1", MARIADB_103),
    ("mariadb", "5.5.5-10.3.39-MariaDB", MARIADB_103),
    ("mariadb", "10.5.1-MariaDB", {**MARIADB_105, "position": "SHOW MASTER STATUS;"}),
    ("mariadb", "10.5.2-MariaDB", MARIADB_105),
    ("mariadb", "10.11.6-MariaDB-0+deb12u1", MARIADB_105),
    ("mariadb", "11.4.2-MariaDB", MARIADB_105),
])
def test_each_version_gets_its_own_statements(name: str, version: str, expected: dict):
    assert forms(name, version) == expected


def test_mysql_sets_a_password_again_and_filters_by_statement():
    """CREATE USER IF NOT EXISTS keeps an old password, so MySQL's user SQL sets it again;
    MySQL's replicate_do_db is no variable, so a filter statement stands for it."""
    mysql = engine("mysql").at_version("8.0.36")
    assert "ALTER USER 'ferry'@'h' IDENTIFIED BY 'pw';" in mysql.replication_user_sql(
        "ferry", "pw", ["h"])
    assert "CHANGE REPLICATION FILTER REPLICATE_DO_DB = (`shop`, `it``s`);" in \
        mysql.point_at_master_sql(**{**POINT, "databases": ["shop", "it`s"]})
    assert "CHANGE REPLICATION FILTER REPLICATE_DO_DB = ();" in mysql.promote_sql()
    mariadb = engine("mariadb").at_version("10.11.6-MariaDB")
    assert "ALTER USER" not in mariadb.replication_user_sql("ferry", "pw", ["h"])
    assert "SET GLOBAL replicate_do_db = '';" in mariadb.promote_sql()


def test_a_replica_status_is_read_in_its_versions_field_names():
    answer = ("Replica_IO_Running: Yes\nReplica_SQL_Running: Yes\nSource_Port: 3307\n"
              "Seconds_Behind_Source: 2\n")
    status = engine("mysql").at_version("8.4.3").parse_replica_status(answer)
    assert (status.running, status.master_port, status.seconds_behind) == (True, 3307, "2")
    old = engine("mysql").at_version("8.0.21").parse_replica_status(answer)
    assert not old.running and old.master_port is None


@pytest.mark.parametrize("version, option", [
    ("5.7.44", "--master-data=1"), ("8.0.25", "--master-data=1"),
    ("8.0.26", "--source-data=1"), ("8.4.3", "--source-data=1"),
])
def test_the_dump_with_its_position_names_the_option_of_its_version(version, option):
    from shared.databases import DatabaseSource
    source = DatabaseSource(engine="mysql", name="shop", host="127.0.0.1", port=3306,
                            socket=True)
    script, _ = engine("mysql").at_version(version).dump_with_position_script(source, ["shop"])
    assert f"--set-gtid-purged=OFF {option} --databases -- shop" in script
    assert "for program in mysqldump; do" in script


@pytest.mark.parametrize("version, product, number", [
    ("5.7.44-log", MYSQL, (5, 7, 44)), ("8.0.36-0ubuntu0.22.04.1", MYSQL, (8, 0, 36)),
    ("10.11.6-MariaDB-0+deb12u1\n", MARIADB, (10, 11, 6)), ("5.5.5-10.3.39-MariaDB", MARIADB,
                                                            (10, 3, 39)),
])
def test_versions_are_read_as_their_product_and_number(version, product, number):
    parsed = parse_version(version)
    assert (parsed.product, parsed.number) == (product, number)


@pytest.mark.parametrize("version, message", [
    ("5.6.51-log", "MySQL 5.6.51 ('5.6.51-log') is older than MySQL 5.7.9, the oldest MySQL"),
    ("5.7.8-rc", "older than MySQL 5.7.9"),
    ("10.2.44-MariaDB", "MariaDB 10.2.44 ('10.2.44-MariaDB') is older than MariaDB 10.3.0"),
    ("5.5.68-MariaDB", "older than MariaDB 10.3.0"),
    ("", "the server's version '' is not a MySQL or MariaDB version"),
    ("PostgreSQL 15.4", "'PostgreSQL 15.4' is not a MySQL or MariaDB version"),
    ("8.0", "'8.0' is not a MySQL or MariaDB version"),
    ("ERROR 2002 (HY000): Can't connect", "is not a MySQL or MariaDB version"),
])
def test_unsupported_and_garbage_versions_are_refused_naming_them(version, message):
    with pytest.raises(UnsupportedVersion) as refused:
        flavour(version)
    assert message in str(refused.value)


def test_an_engine_refuses_the_other_products_server():
    with pytest.raises(UnsupportedVersion, match="'11.4.2-MariaDB', which is MariaDB, not MySQL"):
        engine("mysql").at_version("11.4.2-MariaDB")
    with pytest.raises(UnsupportedVersion, match="'8.0.36', which is MySQL, not MariaDB"):
        engine("mariadb").at_version("8.0.36")
