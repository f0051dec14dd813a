"""MySQL (Oracle's, 5.7 and 8.x, and the builds that answer its versions): its names and
programs; the rest is what it shares with MariaDB (mysql_family.py).

Dumps are mysqldump's, without GTIDs: each database is loaded on its own, and replication
starts from a binary log file and position, never from GTIDs.
"""

from __future__ import annotations

from shared.databases.mysql_family import MySQLFamily
from shared.databases.mysql_versions import MYSQL


class MySQL(MySQLFamily):
    name = "mysql"
    title = "MySQL"
    product = MYSQL
    # Oracle's packages and RHEL-likes call it mysqld, Debian and Ubuntu mysql: local.start
    # takes the one the VM has, this first one otherwise.
    service = "mysqld"
    services = ("mysqld", "mysql")
    dump_programs = ("mysqldump",)

    def _dump_options(self) -> list[str]:
        # Without it, a dump from a server with GTIDs on sets gtid_purged (which a server with
        # GTIDs of its own refuses) and turns the binary log off for the whole load.
        return ["--set-gtid-purged=OFF"]

    def _client_program(self) -> str:
        return "mysql"
