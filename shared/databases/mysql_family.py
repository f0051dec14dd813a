"""What MariaDB and MySQL share: dumps, SQL for the cutover and the replication hand-off, and
the rebuilt VM's server. The two engines (mariadb.py, mysql.py) differ in names and programs;
the statements a server speaks depend on its version, so an engine that makes them is first
bound to the server's version (`at_version`, from what `version_sql` answers, read by
mysql_versions.py).

Dumps hold one database's contents *without* CREATE DATABASE / USE (no --databases), so the
loader chooses the target: `zstd -dc dump | mysql -B <name>` after `SET sql_log_bin=0`. The dump
user needs SELECT, SHOW VIEW, TRIGGER and EVENT on the database, and SELECT on mysql.proc for
the routines.
"""

from __future__ import annotations

import ipaddress
import shlex
import shutil
from abc import abstractmethod
from typing import Sequence

from shared.databases.base import (
    NOT_FOUND, DatabaseSource, Engine, Position, ReplicaStatus, VersionUnknown,
    has_control_characters,
)
from shared.databases.mysql_versions import FLAVOURS, Flavour, UnsupportedVersion, flavour


class MySQLFamily(Engine):
    """MariaDB or MySQL; unbound (`flavour` None) as the registry holds it, or bound to one
    server's version by `at_version`."""

    product: str  # whose versions its servers answer (mysql_versions.MYSQL or MARIADB)
    dump_programs: tuple[str, ...]  # the first one installed dumps
    family = "mysql"
    default_port = 3306
    rebuilds = True
    password_variable = "MYSQL_PWD"
    client_environment = ("MYSQL_PWD", "MYSQL_HOST", "MYSQL_TCP_PORT")
    restores = True
    hands_off = True
    config_file = "/etc/mysql/ferryman-import.cnf"
    # The server's own option files, most specific first: local.start adds its import
    # configuration to the first one the VM has (Debian and Ubuntu: /etc/mysql/my.cnf;
    # RHEL-likes: /etc/my.cnf).
    option_files = ("/etc/mysql/my.cnf", "/etc/my.cnf")

    def __init__(self, flavour: Flavour | None = None):
        self.flavour = flavour

    @property
    def dump_program(self) -> str:
        return self.dump_programs[0]

    # --- the server's version -------------------------------------------------------------------

    def version_sql(self) -> str:
        return "SELECT VERSION();"

    def at_version(self, version: str) -> MySQLFamily:
        found = flavour(version)
        if found.product != self.product:
            raise UnsupportedVersion(
                f"the server answers version {version.strip()!r}, which is {found.product}, "
                f"not {self.title}: the plan's engine must be the server's")
        return type(self)(found)

    def flavours(self) -> tuple[Flavour, ...]:
        return FLAVOURS[self.product]

    def _forms(self) -> Flavour:
        if self.flavour is None:
            raise VersionUnknown(f"{self.title}'s statements depend on the server's version: "
                                 "bind the engine to it first (at_version)")
        return self.flavour

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
            *self._dump_options(),
            "--", db.name,
        ]

    def _dump_options(self) -> list[str]:
        """The engine's own dump options."""
        return []

    def _local_dump_program(self) -> str:
        return next((p for p in self.dump_programs if shutil.which(p)), self.dump_programs[-1])

    def _remote_dump(self, db: DatabaseSource, options: Sequence[str] | None) -> list[str]:
        arguments = shlex.join(self.dump_options(db) if options is None else options)
        return [f"for program in {' '.join(self.dump_programs)}; do",
                "  if command -v \"$program\" >/dev/null 2>&1; then",
                f"    exec \"$program\" {arguments}",
                "  fi",
                "done",
                f"echo '{_none_installed(self.dump_programs)}' >&2",
                f"exit {NOT_FOUND}"]

    def dump_with_position_script(self, db: DatabaseSource, databases: Sequence[str],
                                  ) -> tuple[str, bytes | None]:
        # --master-data=1 (--source-data from MySQL 8.0.26): the dump starts with the
        # statement that sets the replica's position, taken in the same snapshot as the data.
        # The server's version stands for its dump program's: the same package installs both.
        # --databases: several, each with its CREATE DATABASE and USE.
        options = [*self.dump_options(db)[:-2], f"{self._forms().dump_position_option}=1",
                   "--databases", "--", *databases]
        return self.remote_dump_script(db, options=options)

    # --- SQL on a machine -----------------------------------------------------------------------

    def client(self, database: str | None = None, *, batch: bool = False) -> str:
        words = [*(["-N", "-B"] if batch else []),
                 *([f"--database={database}"] if database is not None else [])]
        return " ".join([self._client_program(), *map(shlex.quote, words)])

    @abstractmethod
    def _client_program(self) -> str:
        """The client, as a command line starts it."""

    def restore_command(self, database: str) -> str:
        return self.client(database)

    def read_only_sql(self, on: bool) -> str:
        # MySQL's super_read_only also refuses its SUPER users; it needs read_only on first
        # and off last.
        names = self._forms().read_only
        return " ".join(f"SET GLOBAL {name} = {'ON' if on else 'OFF'};"
                        for name in (names if on else reversed(names)))

    def create_database_sql(self, name: str) -> str:
        return f"CREATE DATABASE IF NOT EXISTS {identifier(name)}"

    def use_database_sql(self, name: str) -> str:
        return f"USE {identifier(name)};"

    # --- the server of a rebuilt VM -------------------------------------------------------------

    def data_dir(self, database_data_dir: str) -> str:
        """<database_data_dir>/mysql: the volume planned for databases."""
        # The plan's validation asks this too (shared/plan.py): one rule, so a plan that
        # validates always renders.
        if any(c in database_data_dir for c in '"\\') or has_control_characters(
                database_data_dir):
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
        return f"{self._forms().binlog_status};"

    def parse_master_position(self, answer: str) -> Position | None:
        fields = answer.split()
        if len(fields) < 2 or not fields[1].isdigit():
            return None
        return Position(fields[0], int(fields[1]))

    def wait_for_position_sql(self, position: Position, timeout_s: int) -> str:
        return (f"SELECT {self._forms().pos_wait}({text(position.file)}, {position.offset}, "
                f"{timeout_s});")

    def caught_up(self, answer: str) -> bool:
        # NULL: the replica's threads are not running; -1: the wait timed out.
        return answer.strip() not in ("", "NULL", "-1")

    def replica_status_sql(self) -> str:
        return f"SHOW {self._forms().replica} STATUS\\G"

    def parse_replica_status(self, answer: str) -> ReplicaStatus:
        forms = self._forms()
        found = {}
        for line in answer.splitlines():
            key, sep, value = line.strip().partition(": ")
            if sep:
                found[key] = value
        port = found.get(forms.source_port_field, "")
        receiver, applier = found.get(forms.receiver_field), found.get(forms.applier_field)
        return ReplicaStatus(
            master_port=int(port) if port.isdigit() else None,
            running=receiver == "Yes" and applier == "Yes",
            stopped_on_error=applier == "No" and bool(found.get("Last_SQL_Error")),
            receiver=receiver, applier=applier,
            seconds_behind=found.get(forms.behind_field),
            receiver_error=found.get("Last_IO_Error", ""),
            applier_error=found.get("Last_SQL_Error", ""),
        )

    def replication_user_sql(self, user: str, password: str, hosts: Sequence[str]) -> str:
        # sql_log_bin=0: the master's own replicas need not learn of this user.
        forms = self._forms()
        lines = ["SET sql_log_bin = 0;"]
        for host in hosts:
            account = f"{text(user)}@{text(host)}"
            lines.append(f"{forms.create_user} {account} IDENTIFIED BY {text(password)};")
            if forms.alter_password:  # the user may be left from an earlier run
                lines.append(f"ALTER USER {account} IDENTIFIED BY {text(password)};")
            lines.append(f"GRANT REPLICATION SLAVE ON *.* TO {account};")
        return "\n".join(lines)

    def drop_replication_user_sql(self, user: str, hosts: Sequence[str]) -> str:
        return "SET sql_log_bin = 0;\n" + "\n".join(
            f"DROP USER IF EXISTS {text(user)}@{text(host)};" for host in hosts)

    def point_at_master_sql(self, *, host: str, port: int, user: str, password: str,
                            databases: Sequence[str]) -> str:
        # Only the migrated databases: the master's others (and its system tables) are not on
        # the replica. Row-based events are filtered by their table's database.
        forms = self._forms()
        options = {"HOST": text(host), "PORT": str(port), "USER": text(user),
                   "PASSWORD": text(password), "CONNECT_RETRY": "5"}
        settings = [f"{forms.source_option}_{name} = {value}" for name, value in options.items()]
        if forms.public_key:
            settings.append(f"{forms.public_key} = 1")
        return "\n".join([
            *self._stop_and_forget(),
            self._replicate_only_sql(databases),
            f"{forms.change_source} {', '.join(settings)};",
        ])

    def start_replica_sql(self) -> str:
        return f"START {self._forms().replica};"

    def promote_sql(self) -> str:
        return "\n".join([*self._stop_and_forget(), self._replicate_only_sql([]),
                          self.read_only_sql(False)])

    def _stop_and_forget(self) -> list[str]:
        replica = self._forms().replica
        return [f"STOP {replica};", f"RESET {replica} ALL;"]

    def _replicate_only_sql(self, databases: Sequence[str]) -> str:
        """The replica applies `databases` only (none given: all of them again)."""
        if self._forms().filter_statement:
            # MySQL's replicate_do_db is no variable to set: a filter, set while the replica's
            # threads are stopped.
            return (f"CHANGE REPLICATION FILTER REPLICATE_DO_DB = "
                    f"({', '.join(identifier(name) for name in databases)});")
        return f"SET GLOBAL replicate_do_db = {text(','.join(databases))};"


def _none_installed(programs: Sequence[str]) -> str:
    if len(programs) == 1:
        return f"{programs[0]} is not installed"
    return f"neither {' nor '.join(programs)} is installed"


def _connection(db: DatabaseSource) -> list[str]:
    if db.socket:
        # The socket the server's own my.cnf names (the client reads the same files).
        return ["--protocol=SOCKET"]
    # TCP even for "localhost", where the client would otherwise take the local socket and
    # ignore the port.
    return ["--protocol=TCP", f"--host={db.host}", f"--port={db.port}"]


def text(value: str) -> str:
    """A MariaDB or MySQL string literal (the default sql_mode, without NO_BACKSLASH_ESCAPES)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def identifier(name: str) -> str:
    """A MariaDB or MySQL identifier in backticks (a backtick inside is doubled)."""
    if "\0" in name:
        raise ValueError(f"identifier {name!r} holds a NUL")
    return "`" + name.replace("`", "``") + "`"
