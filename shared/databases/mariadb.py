"""MariaDB: its names and programs; the rest is what it shares with MySQL (mysql_family.py).

Dumps hold one database's contents *without* CREATE DATABASE / USE (no --databases), so the
loader chooses the target: `zstd -dc dump | mysql -B <name>` after `SET sql_log_bin=0`. The dump
user needs SELECT, SHOW VIEW, TRIGGER and EVENT on the database, and SELECT on mysql.proc for
the routines.
"""

from __future__ import annotations

from shared.databases.mysql_family import MySQLFamily
from shared.databases.mysql_versions import MARIADB


class MariaDB(MySQLFamily):
    name = "mariadb"
    title = "MariaDB"
    product = MARIADB
    service = "mariadb"
    services = ("mariadb", "mysql")  # "mysql": older packages' name (an alias on newer ones)
    # MariaDB's own name where it exists: newer clients warn on, or no longer ship, the
    # mysql* names.
    dump_programs = ("mariadb-dump", "mysqldump")

    def _client_program(self) -> str:
        # `mariadb` from 10.4.6 on; 10.3 has only `mysql`.
        return "$(command -v mariadb || echo mysql)"
