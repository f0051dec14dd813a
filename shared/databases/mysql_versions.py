"""Which statements a MySQL or MariaDB server speaks, chosen by its own version string: what
`SELECT VERSION()` answers ("5.7.44-log", "8.0.36-0ubuntu0.22.04.1", "10.11.6-MariaDB-0+deb12u1").

Oracle renamed master and slave over 8.0.22 to 8.2 and removed the old forms in 8.4; MariaDB
kept CHANGE MASTER TO and MASTER_POS_WAIT and added aliases of its own. Each row of the tables
below is what a server speaks *from* a version on, until the next row: the engines read it in
Python, and local.start gets the same rows rendered, so one table decides both
(services/configurator/templates/local-start.sh.mustache, `server_flavour`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from shared.databases.base import Unsupported

MYSQL = "MySQL"
MARIADB = "MariaDB"

# "8.0.36-0ubuntu0.22.04.1": three numbers, then the build's own words.
_VERSION = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})(\S*)$")
# MariaDB 10+ put "5.5.5-" ahead of its version where old MySQL clients would read it.
_MARIADB_PREFIX = "5.5.5-"


class UnsupportedVersion(Unsupported):
    """A server whose version Ferryman does not speak; the message names the version."""


@dataclass(frozen=True)
class ServerVersion:
    product: str  # MYSQL or MARIADB
    number: tuple[int, int, int]
    text: str  # as the server said it

    def __str__(self) -> str:
        return f"{self.product} {'.'.join(map(str, self.number))} ({self.text!r})"


def parse_version(text: str) -> ServerVersion:
    """The product and number of a server's version string; UnsupportedVersion for one that is
    neither MySQL's nor MariaDB's."""
    said = text.strip()
    mariadb = "mariadb" in said.lower()
    bare = said[len(_MARIADB_PREFIX):] if mariadb and said.startswith(_MARIADB_PREFIX) else said
    found = _VERSION.match(bare)
    if not found:
        raise UnsupportedVersion(f"the server's version {said!r} is not a MySQL or MariaDB "
                                 "version (SELECT VERSION() answers like 8.0.36 or "
                                 "10.11.6-MariaDB)")
    number = (int(found[1]), int(found[2]), int(found[3]))
    return ServerVersion(MARIADB if mariadb else MYSQL, number, said)


@dataclass(frozen=True)
class Flavour:
    """The statement forms and names one server speaks. Words, not statements: the engine
    (mysql_family.py) and local.start build their statements from them."""

    product: str
    since: tuple[int, int, int]  # the first version of this row
    # STOP/START/RESET <replica>, SHOW <replica> STATUS
    replica: str
    change_source: str  # the statement that points a replica at its source
    source_option: str  # its options' prefix: <source_option>_HOST = ...
    # SHOW <replica> STATUS's fields
    receiver_field: str
    applier_field: str
    source_port_field: str
    behind_field: str
    # A replica's option (= 1) to fetch the source's RSA key: caching_sha2_password users
    # cannot log in over a plain connection without it. Empty: not needed.
    public_key: str
    binlog_status: str  # answers the binary log's file and position
    pos_wait: str  # SELECT <pos_wait>(file, position, timeout)
    dump_position_option: str  # the dump program's option that writes the position (=1)
    # The replication user: `create_user ... IDENTIFIED BY`; with `alter_password`, an
    # ALTER USER sets the password of a user that existed already.
    create_user: str
    alter_password: bool
    read_only: tuple[str, ...]  # the variables that make the server refuse writes
    # The replica applies these databases only: CHANGE REPLICATION FILTER (MySQL) or the
    # dynamic replicate_do_db variable (MariaDB).
    filter_statement: bool

    @property
    def title(self) -> str:
        return f"{self.product} {'.'.join(map(str, self.since))}"


_MYSQL_57 = Flavour(
    MYSQL, (5, 7, 9), replica="SLAVE", change_source="CHANGE MASTER TO", source_option="MASTER",
    receiver_field="Slave_IO_Running", applier_field="Slave_SQL_Running",
    source_port_field="Master_Port", behind_field="Seconds_Behind_Master", public_key="",
    binlog_status="SHOW MASTER STATUS", pos_wait="MASTER_POS_WAIT",
    dump_position_option="--master-data", create_user="CREATE USER IF NOT EXISTS",
    alter_password=True, read_only=("read_only", "super_read_only"), filter_statement=True)
# Each row the changes from the one before it (the MySQL 8.0 release notes).
# caching_sha2_password, the default from 8.0.4 on.
_MYSQL_804 = replace(_MYSQL_57, since=(8, 0, 4), public_key="GET_MASTER_PUBLIC_KEY")
_MYSQL_8022 = replace(_MYSQL_804, since=(8, 0, 22), replica="REPLICA",
                      receiver_field="Replica_IO_Running", applier_field="Replica_SQL_Running",
                      source_port_field="Source_Port", behind_field="Seconds_Behind_Source")
_MYSQL_8023 = replace(_MYSQL_8022, since=(8, 0, 23),
                      change_source="CHANGE REPLICATION SOURCE TO", source_option="SOURCE",
                      public_key="GET_SOURCE_PUBLIC_KEY")
_MYSQL_8026 = replace(_MYSQL_8023, since=(8, 0, 26), pos_wait="SOURCE_POS_WAIT",
                      dump_position_option="--source-data")
# SHOW MASTER STATUS: deprecated in 8.2, removed in 8.4 with the other old forms above.
_MYSQL_82 = replace(_MYSQL_8026, since=(8, 2, 0), binlog_status="SHOW BINARY LOG STATUS")
MYSQL_FLAVOURS: tuple[Flavour, ...] = (
    _MYSQL_57, _MYSQL_804, _MYSQL_8022, _MYSQL_8023, _MYSQL_8026, _MYSQL_82)  # oldest first

_MARIADB_103 = Flavour(
    MARIADB, (10, 3, 0), replica="SLAVE", change_source="CHANGE MASTER TO",
    source_option="MASTER", receiver_field="Slave_IO_Running",
    applier_field="Slave_SQL_Running", source_port_field="Master_Port",
    behind_field="Seconds_Behind_Master", public_key="", binlog_status="SHOW MASTER STATUS",
    pos_wait="MASTER_POS_WAIT", dump_position_option="--master-data",
    create_user="CREATE OR REPLACE USER", alter_password=False, read_only=("read_only",),
    filter_statement=False)
# The REPLICA aliases; SHOW REPLICA STATUS keeps the Slave_/Master_ field names.
_MARIADB_1051 = replace(_MARIADB_103, since=(10, 5, 1), replica="REPLICA")
_MARIADB_1052 = replace(_MARIADB_1051, since=(10, 5, 2), binlog_status="SHOW BINLOG STATUS")
MARIADB_FLAVOURS: tuple[Flavour, ...] = (_MARIADB_103, _MARIADB_1051, _MARIADB_1052)

FLAVOURS = {MYSQL: MYSQL_FLAVOURS, MARIADB: MARIADB_FLAVOURS}


def flavour(version: str) -> Flavour:
    """The forms the server that answered `version` to SELECT VERSION() speaks;
    UnsupportedVersion for a version that is not MySQL 5.7+ or MariaDB 10.3+."""
    server = parse_version(version)
    rows = FLAVOURS[server.product]
    fitting = [row for row in rows if row.since <= server.number]
    if not fitting:
        raise UnsupportedVersion(f"{server} is older than {rows[0].title}, the oldest "
                                 f"{server.product} Ferryman migrates")
    return fitting[-1]


def version_number(number: tuple[int, int, int]) -> int:
    """A version as one integer that orders like it (8.0.23 is 8000023), as local.start
    compares them."""
    major, minor, patch = number
    return major * 1_000_000 + minor * 1_000 + patch
