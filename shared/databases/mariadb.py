"""MariaDB (and MySQL): dumps, SQL for the cutover and the replication hand-off, and the
rebuilt VM's server.

Dumps hold one database's contents *without* CREATE DATABASE / USE (no --databases), so the
loader chooses the target: `zstd -dc dump | mysql -B <name>` after `SET sql_log_bin=0`. The dump
user needs SELECT, SHOW VIEW, TRIGGER and EVENT on the database, and SELECT on mysql.proc for
the routines.
"""

from __future__ import annotations

import ipaddress
import shlex
import shutil
from typing import Sequence

from shared.databases.base import NOT_FOUND, DatabaseSource, Engine, Position, ReplicaStatus


class MariaDB(Engine):
    name = "mariadb"
    title = "MariaDB"
    default_port = 3306
    service = "mariadb"
    dump_program = "mariadb-dump"
    password_variable = "MYSQL_PWD"
    client_environment = ("MYSQL_PWD", "MYSQL_HOST", "MYSQL_TCP_PORT")
    restores = True
    hands_off = True
    config_file = "/etc/mysql/ferryman-import.cnf"

    # --- dumps ----------------------------------------------------------------------------------

    def dump_options(self, db: DatabaseSource) -> list[str]:
        return [
            *_connection(db),
            *([f"--user={db.user}"] if db.user else []),
            # A consistent InnoDB snapshot without locking the live master's tables.
            "--single-transaction", "--quick",
            "--routines", "--triggers", "--events",
            # Binary columns as hex: survives any client character set on the way back in.
            "--hex-blob", "--default-character-set=utf8mb4",
            # No timestamp trailer: an unchanged database dumps to the same bytes.
            "--skip-dump-date",
            # Big rows must not fail the dump (the client's default is 24 MiB).
            "--max-allowed-packet=1G",
            "--", db.name,
        ]

    def _local_dump_program(self) -> str:
        # MariaDB's own name where it exists: newer clients warn on, or no longer ship, the
        # mysql* aliases.
        return "mariadb-dump" if shutil.which("mariadb-dump") else "mysqldump"

    def _remote_dump(self, db: DatabaseSource, options: Sequence[str] | None) -> list[str]:
        arguments = shlex.join(self.dump_options(db) if options is None else options)
        # MariaDB's own name where it exists: newer clients warn on, or drop, the mysql* names.
        return ["for program in mariadb-dump mysqldump; do",
                "  if command -v \"$program\" >/dev/null 2>&1; then",
                f"    exec \"$program\" {arguments}",
                "  fi",
                "done",
                "echo 'neither mariadb-dump nor mysqldump is installed' >&2",
                f"exit {NOT_FOUND}"]

    def dump_with_position_script(self, db: DatabaseSource, databases: Sequence[str],
                                  ) -> tuple[str, bytes | None]:
        # --master-data=1: the dump starts with the CHANGE MASTER that sets the replica's
        # position, taken in the same snapshot as the data. --databases: several, each with
        # its CREATE DATABASE and USE.
        options = [*self.dump_options(db)[:-2], "--master-data=1", "--databases", "--",
                   *databases]
        return self.remote_dump_script(db, options=options)

    # --- SQL on a machine -----------------------------------------------------------------------

    def client(self, database: str | None = None, *, batch: bool = False) -> str:
        words = ["mariadb", *(["-N", "-B"] if batch else []),
                 *([f"--database={database}"] if database is not None else [])]
        return shlex.join(words)

    def restore_command(self, database: str) -> str:
        return self.client(database)

    def read_only_sql(self, on: bool) -> str:
        return f"SET GLOBAL read_only = {'ON' if on else 'OFF'};"

    def create_database_sql(self, name: str) -> str:
        return f"CREATE DATABASE IF NOT EXISTS {identifier(name)}"

    def use_database_sql(self, name: str) -> str:
        return f"USE {identifier(name)};"

    # --- the server of a rebuilt VM -------------------------------------------------------------

    def data_dir(self, database_data_dir: str) -> str:
        """<database_data_dir>/mysql: the volume planned for databases."""
        # The plan's validation asks this too (shared/plan.py): one rule, so a plan that
        # validates always renders.
        if any(c in database_data_dir for c in '"\\') or any(
                ord(c) < 0x20 or c == "\x7f" for c in database_data_dir):
            raise ValueError("cannot be written into my.cnf: it must not hold '\"', '\\' or "
                             "control characters")
        return f"{database_data_dir.rstrip('/')}/mysql"

    def server_config(self, *, data_dir: str, address: str, memory_mb: int,
                      replica: bool) -> str:
        """Good enough to load and replicate, not tuned (config management tailors it after
        cutover). The server id is the VM's address: unique in the group."""
        server_id = int(ipaddress.ip_address(address)) or 1
        buffer_pool_mb = max(128, memory_mb // 4)
        lines = [
            "# Written by Ferryman (local.start) to load the databases of this VM; not tuned "
            "for it.",
            "[mysqld]",
            f'datadir                        = "{data_dir}"',
            f"server_id                      = {server_id}",
            "log_bin                        = mysql-bin",
            "binlog_format                  = ROW",
            "bind_address                   = 0.0.0.0",
            "max_allowed_packet             = 256M",
            f"innodb_buffer_pool_size        = {buffer_pool_mb}M",
            "# The first load is redone from the dumps if it fails: no need to flush every "
            "commit.",
            "innodb_flush_log_at_trx_commit = 2",
        ]
        # A replica replicates from its master; a master may from its legacy master until the
        # cutover (mode replication), and passes what it applies on to its own replicas.
        lines.append("relay_log                      = relay-bin")
        if not replica:
            lines.append("log_slave_updates              = ON")
        return "\n".join(lines)

    # --- replication ----------------------------------------------------------------------------

    def master_check_sql(self) -> str:
        return "SELECT @@log_bin, @@server_id;"

    def master_problem(self, answer: str) -> str | None:
        log_bin, server_id = (answer.split() + ["", ""])[:2]
        if log_bin != "1":
            return ("has no binary log (log_bin is off): the replication hand-off needs one; "
                    "use mode dump-and-restore")
        if server_id in ("", "0"):
            return "has server_id 0: a master needs its own id"
        return None

    def master_position_sql(self) -> str:
        return "SHOW MASTER STATUS;"

    def parse_master_position(self, answer: str) -> Position | None:
        fields = answer.split()
        if len(fields) < 2 or not fields[1].isdigit():
            return None
        return Position(fields[0], int(fields[1]))

    def wait_for_position_sql(self, position: Position, timeout_s: int) -> str:
        return (f"SELECT MASTER_POS_WAIT({text(position.file)}, {position.offset}, "
                f"{timeout_s});")

    def caught_up(self, answer: str) -> bool:
        # NULL: the replica's threads are not running; -1: the wait timed out.
        return answer.strip() not in ("", "NULL", "-1")

    def replica_status_sql(self) -> str:
        return "SHOW SLAVE STATUS\\G"

    def parse_replica_status(self, answer: str) -> ReplicaStatus:
        found = {}
        for line in answer.splitlines():
            key, sep, value = line.strip().partition(": ")
            if sep:
                found[key] = value
        port = found.get("Master_Port", "")
        receiver, applier = found.get("Slave_IO_Running"), found.get("Slave_SQL_Running")
        return ReplicaStatus(
            master_port=int(port) if port.isdigit() else None,
            running=receiver == "Yes" and applier == "Yes",
            stopped_on_error=applier == "No" and bool(found.get("Last_SQL_Error")),
            receiver=receiver, applier=applier,
            seconds_behind=found.get("Seconds_Behind_Master"),
            receiver_error=found.get("Last_IO_Error", ""),
            applier_error=found.get("Last_SQL_Error", ""),
        )

    def replication_user_sql(self, user: str, password: str, hosts: Sequence[str]) -> str:
        # sql_log_bin=0: the master's own replicas need not learn of this user.
        lines = ["SET sql_log_bin = 0;"]
        for host in hosts:
            account = f"{text(user)}@{text(host)}"
            lines += [f"CREATE OR REPLACE USER {account} IDENTIFIED BY {text(password)};",
                      f"GRANT REPLICATION SLAVE ON *.* TO {account};"]
        return "\n".join(lines)

    def drop_replication_user_sql(self, user: str, hosts: Sequence[str]) -> str:
        return "SET sql_log_bin = 0;\n" + "\n".join(
            f"DROP USER IF EXISTS {text(user)}@{text(host)};" for host in hosts)

    def point_at_master_sql(self, *, host: str, port: int, user: str, password: str,
                            databases: Sequence[str]) -> str:
        # Only the migrated databases: the master's others (and its system tables) are not on
        # the replica. Row-based events are filtered by their table's database.
        return "\n".join([
            "STOP SLAVE;", "RESET SLAVE ALL;",
            f"SET GLOBAL replicate_do_db = {text(','.join(databases))};",
            f"CHANGE MASTER TO MASTER_HOST = {text(host)}, MASTER_PORT = {port}, "
            f"MASTER_USER = {text(user)}, MASTER_PASSWORD = {text(password)}, "
            "MASTER_CONNECT_RETRY = 5;",
        ])

    def start_replica_sql(self) -> str:
        return "START SLAVE;"

    def promote_sql(self) -> str:
        return ("STOP SLAVE;\nRESET SLAVE ALL;\nSET GLOBAL replicate_do_db = '';\n"
                + self.read_only_sql(False))


def _connection(db: DatabaseSource) -> list[str]:
    if db.socket:
        # The socket the server's own my.cnf names (the client reads the same files).
        return ["--protocol=SOCKET"]
    # TCP even for "localhost", where the client would otherwise take the local socket and
    # ignore the port.
    return ["--protocol=TCP", f"--host={db.host}", f"--port={db.port}"]


def text(value: str) -> str:
    """A MariaDB string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def identifier(name: str) -> str:
    """A MariaDB identifier in backticks (a backtick inside is doubled)."""
    if "\0" in name:
        raise ValueError(f"identifier {name!r} holds a NUL")
    return "`" + name.replace("`", "``") + "`"
