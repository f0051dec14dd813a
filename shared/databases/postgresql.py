"""PostgreSQL: dumped, and rebuilt on a new VM as a master and its streaming standbys.

The archive of a VM with PostgreSQL databases holds the cluster's globals once (roles,
tablespaces: `pg_dumpall --globals-only`, plain SQL for psql) and each database in pg_dump's
custom format (`pg_dump -Fc`, owners and grants kept: the globals bring the roles), loaded with
`pg_restore -j <cpus> --create` into a new cluster. The server's version (`SHOW
server_version_num`) is asked before dumping and recorded with the globals: the rebuilt VM
creates its cluster with that major's binaries (or the one the plan names).

A replica loads nothing: once its master is complete it is made a streaming standby of it by
`pg_basebackup -R -X stream -C -S <its slot>`.

In the cutover's window the legacy master is made read-only (default_transaction_read_only,
its sessions ended); then either each database is dumped again and replaces the new master's
(`restore_command`), or the new master, subscribed ahead of the window by logical replication
(postgresql_logical.py), catches up and is unlinked.

On a machine reached as root, the cluster's programs run as its OS user (peer authentication
through the local socket, as its own administrator would).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import replace
from typing import Sequence

from shared.databases.base import (
    DatabaseSource, Engine, Position, has_control_characters,
)
from shared.databases.mysql_versions import UnsupportedVersion

# Connecting to a host that drops packets would otherwise wait for the OS's TCP timeout.
CONNECT_TIMEOUT_S = "15"
# The oldest major whose standbys Ferryman makes (standby.signal and `pg_basebackup -R`
# writing postgresql.auto.conf, pg_promote(): 12) and whose WAL functions it calls (10).
OLDEST_MAJOR = 12
# The OS user that owns the cluster on Debian, Ubuntu and RHEL-likes alike; over SSH as root a
# dump through the local socket runs as this user (peer authentication, no password).
OS_USER = "postgres"
# Where the archive of a VM keeps its cluster's globals (an archive item of kind database):
# no database name can be this (the plan allows letters, digits and '_' only).
GLOBALS_SOURCE = "postgresql:globals"
_VERSION_NUM = re.compile(r"^\d{5,6}$")


class PostgreSQL(Engine):
    name = "postgresql"
    title = "PostgreSQL"
    family = "postgresql"
    default_port = 5432
    service = "postgresql"
    dump_program = "pg_dump"
    password_variable = "PGPASSWORD"
    client_environment = ("PGPASSWORD", "PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER",
                          "PGDATABASE", "PGSERVICE", "PGSERVICEFILE", "PGPASSFILE",
                          "PGOPTIONS")
    rebuilds = True
    restores = True
    hands_off = True
    hands_off_logically = True
    dump_suffix = ".dump.zst"
    globals_source = GLOBALS_SOURCE
    replica_loads_dumps = False  # a standby is a copy of its master (pg_basebackup)
    config_file = "ferryman.conf"  # beside the cluster's postgresql.conf, included from it

    # --- dumps ----------------------------------------------------------------------------------

    def _connection_options(self, db: DatabaseSource) -> list[str]:
        return [
            # Never prompt on a terminal: a service has nobody to answer.
            "--no-password",
            # No --host: libpq's default, the local socket (whose name still needs the port).
            *([] if db.socket else [f"--host={db.host}"]), f"--port={db.port}",
            *([f"--username={db.user}"] if db.user else []),
        ]

    def dump_options(self, db: DatabaseSource) -> list[str]:
        # Custom format: pg_restore loads it in parallel (-j) and creates the database as it
        # was (--create: encoding, locale, owner, its grants and settings). Owners are kept:
        # the globals dump brings the roles first.
        return ["--format=custom", *self._connection_options(db)]

    def globals_options(self, db: DatabaseSource) -> list[str]:
        """pg_dumpall's arguments for the cluster's roles and tablespaces (plain SQL)."""
        return ["--globals-only", *self._connection_options(db)]

    def _database_variables(self, db: DatabaseSource) -> dict[str, str]:
        # The name goes by environment: on the command line a name containing "=" would be
        # read as a connection string.
        return {"PGDATABASE": db.name}

    def _local_dump_program(self) -> str:
        return "pg_dump"

    def _local_defaults(self) -> dict[str, str]:
        return {"PGCONNECT_TIMEOUT": CONNECT_TIMEOUT_S}

    def _remote_dump(self, db: DatabaseSource, options: Sequence[str] | None) -> list[str]:
        arguments = self.dump_options(db) if options is None else list(options)
        return self._remote_exec(db, ["pg_dump", *arguments])

    def _remote_exec(self, db: DatabaseSource, argv: Sequence[str]) -> list[str]:
        """The remote script's last lines: `argv` run as the cluster's OS user where the
        server's own administrator would be (root through the local socket), else as is."""
        lines = [f"PGCONNECT_TIMEOUT={CONNECT_TIMEOUT_S}; export PGCONNECT_TIMEOUT"]
        command = shlex.join(argv)
        if db.socket and db.user in (None, OS_USER):
            # Peer authentication lets the postgres OS user in without a password, as on any
            # Debian or RHEL host; root becomes it (runuser keeps this environment).
            lines += ["cd /",
                      'if [ "$(id -u)" = 0 ]; then',
                      f"  exec runuser -u {OS_USER} -- {command}",
                      "fi"]
        lines.append(f"exec {command}")
        return lines

    def globals_script(self, db: DatabaseSource) -> tuple[str, bytes | None]:
        """The remote script that writes the cluster's globals (pg_dumpall --globals-only) to
        stdout, and its stdin; `db`: any database of the cluster, for how to connect."""
        return self.remote_script(db, self._remote_exec(db, ["pg_dumpall",
                                                             *self.globals_options(db)]),
                                  database="postgres")

    def globals_command(self, db: DatabaseSource) -> tuple[list[str], dict[str, str]]:
        """The globals dump run here: its argv and whole environment."""
        _, env = self.dump_command(replace(db, name="postgres"))
        return ["pg_dumpall", *self.globals_options(db)], env

    def probe_sql(self, databases: Sequence[str]) -> str:
        """Asks the server, in one row, its version and which of `databases` it lacks
        (space-separated: plan names hold no space); `probe_problem` reads the answer."""
        names = ", ".join(text(name) for name in databases)
        wanted = f"ARRAY[{names}]::text[]" if names else "ARRAY[]::text[]"
        return ("SELECT current_setting('server_version_num'), array_to_string(ARRAY("
                f"SELECT unnest({wanted}) EXCEPT SELECT datname FROM pg_database), ' ');")

    def probe_script(self, db: DatabaseSource, databases: Sequence[str],
                     ) -> tuple[str, bytes | None]:
        """The remote script that runs `probe_sql` with psql, as the dump would connect."""
        argv = ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                *self._connection_options(db), "-c", self.probe_sql(databases)]
        return self.remote_script(db, self._remote_exec(db, argv), database="postgres")

    def probe_command(self, db: DatabaseSource, databases: Sequence[str],
                      ) -> tuple[list[str], dict[str, str]]:
        _, env = self.dump_command(replace(db, name="postgres"))
        return (["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                 *self._connection_options(db), "-c", self.probe_sql(databases)], env)

    def probe_problem(self, answer: str, databases: Sequence[str]) -> tuple[str, str | None]:
        """The server's version_num and why its databases cannot be migrated (or None)."""
        version, _, rest = answer.strip().partition("|")
        if not _VERSION_NUM.match(version):
            return "", f"the server answered {answer.strip()[:200]!r}, not its version"
        missing = rest.split()
        try:
            self.at_version(version)
        except UnsupportedVersion as exc:
            return version, str(exc)
        if missing:
            wanted = ", ".join(repr(name) for name in databases if name in missing)
            return version, (f"the server has no database {wanted}: the plan names "
                             f"{'it' if len(missing) == 1 else 'them'}, the host has not")
        return version, None

    # --- the server's version -------------------------------------------------------------------

    def version_sql(self) -> str:
        return "SHOW server_version_num;"

    def at_version(self, version: str) -> PostgreSQL:
        """PostgreSQL's statements here are the same from OLDEST_MAJOR on: this engine, once
        the version is one it rebuilds."""
        number = version.strip()
        if not _VERSION_NUM.match(number):
            raise UnsupportedVersion(f"the server's version {number!r} is not a PostgreSQL "
                                     "server_version_num (like 150004)")
        found = major(number)
        if int(found.split(".")[0]) < OLDEST_MAJOR:
            raise UnsupportedVersion(f"PostgreSQL {found} is older than {OLDEST_MAJOR}, the "
                                     "oldest Ferryman rebuilds")
        return self

    # --- SQL on a machine -----------------------------------------------------------------------

    def client(self, database: str | None = None, *, batch: bool = False) -> str:
        words = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *(["-A", "-t"] if batch else []),
                 *([f"--dbname={conninfo(dbname=database)}"] if database is not None else [])]
        return as_cluster_owner(words)

    def restore_command(self, database: str) -> str:
        """`database` replaced by the custom-format dump on stdin: its sessions ended, the
        database dropped, and pg_restore --create making it as the dump says (owner,
        encoding, settings). A standby of this server replays the same. From a pipe, so
        without -j (which needs a file)."""
        end_sessions = ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        f"WHERE datname = {text(database)} AND pid <> pg_backend_pid();")
        drop = as_cluster_owner(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-A", "-t",
                                 "--dbname=postgres", "-c", end_sessions,
                                 "-c", f"DROP DATABASE IF EXISTS {identifier(database)};"])
        restore = as_cluster_owner(["pg_restore", "--exit-on-error", "--no-password", "--create",
                                    "--dbname=postgres"])
        return f"{drop} >/dev/null && {restore}"

    def read_only_sql(self, on: bool) -> str:
        """New transactions read-only (or no longer). Sessions open before keep their setting,
        so they are ended once the server has the new one (pg_reload_conf signals every
        process; a moment later none is without it), twice for one that connected meanwhile;
        replication's own senders stay."""
        if on:
            end_sessions = ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid();")
            return "\n".join([
                "SET default_transaction_read_only = off;",
                "ALTER SYSTEM SET default_transaction_read_only = on;",
                "SELECT pg_reload_conf();", "SELECT pg_sleep(0.2);", end_sessions,
                "SELECT pg_sleep(0.2);", end_sessions])
        return ("SET default_transaction_read_only = off;\n"
                "ALTER SYSTEM RESET default_transaction_read_only;\n"
                "SELECT pg_reload_conf();")

    def create_database_sql(self, name: str) -> str:
        return f"CREATE DATABASE {identifier(name)};"

    def use_database_sql(self, name: str) -> str:
        return f"\\connect {identifier(name)}"

    # --- the server of a rebuilt VM -------------------------------------------------------------

    def data_dir(self, database_data_dir: str) -> str:
        """<database_data_dir>/postgresql: the cluster's data directory."""
        if "\\" in database_data_dir or has_control_characters(database_data_dir):
            raise ValueError("cannot be written into postgresql.conf: it must not hold '\\' "
                             "or control characters")
        return f"{database_data_dir.rstrip('/')}/postgresql"

    def server_config(self, *, data_dir: str, address: str, memory_mb: int,
                      replica: bool) -> str:
        """Included last from the cluster's postgresql.conf: good enough to load, to stream to
        standbys and (wal_level logical) to subscribe to the legacy master at cutover; not
        tuned (config management takes over after cutover). local.start adds data_directory
        (`data_dir`, checked here) and port."""
        self.data_dir(data_dir)
        shared_buffers_mb = max(128, memory_mb // 4)
        return "\n".join([
            "# Written by Ferryman (local.start) for the databases of this VM; not tuned for it.",
            "listen_addresses = '*'",
            "wal_level = logical",
            "max_wal_senders = 10",
            "max_replication_slots = 10",
            "hot_standby = on",
            "password_encryption = 'scram-sha-256'",
            f"shared_buffers = {shared_buffers_mb}MB",
        ])

    def hba_lines(self, hosts: Sequence[str]) -> list[str]:
        """pg_hba.conf lines that let a role with REPLICATION stream from `hosts` (IPv4
        addresses), with its password (scram)."""
        return [f"host replication all {host}/32 scram-sha-256" for host in hosts]

    # --- replication: the master's position (the hand-off waits for it), standbys' slots -----

    def master_position_sql(self) -> str:
        return "SELECT pg_current_wal_lsn();"

    def parse_master_position(self, answer: str) -> Position | None:
        """A WAL position (LSN, "0/3000148"): `file` is the LSN as PostgreSQL writes it,
        `offset` the same as a number."""
        lsn = answer.strip()
        number = lsn_number(lsn)
        return None if number is None else Position(lsn, number)

    def slot_name(self, vm_name: str) -> str:
        """A replica's replication slot on its master: from its VM's name (lowercase letters,
        digits and '-'), as slot names allow (lowercase letters, digits and '_')."""
        return "ferry_" + re.sub(r"[^a-z0-9_]", "_", vm_name.lower())[:57]


def as_cluster_owner(argv: Sequence[str]) -> str:
    """The command line that runs `argv` as the cluster's OS user when the machine was reached
    as root (whose own role the cluster does not have), as is otherwise; from /, where that
    user may read."""
    command = shlex.join(argv)
    return (f'{{ cd / && if [ "$(id -u)" = 0 ]; then runuser -u {OS_USER} -- {command}; '
            f'else {command}; fi; }}')


def major(version_num: str) -> str:
    """The major of a server_version_num: 150004 is 15, 90624 is 9.6."""
    number = int(version_num)
    if number >= 100000:
        return str(number // 10000)
    return f"{number // 10000}.{number // 100 % 100}"


def lsn_number(lsn: str) -> int | None:
    """A WAL position written "X/Y" (hexadecimal halves) as one number, or None."""
    found = re.fullmatch(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})", lsn)
    return (int(found[1], 16) << 32 | int(found[2], 16)) if found else None


def text(value: str) -> str:
    """A PostgreSQL string literal (standard_conforming_strings, on since 9.1)."""
    if "\0" in value:
        raise ValueError(f"text {value!r} holds a NUL")
    return "'" + value.replace("'", "''") + "'"


def identifier(name: str) -> str:
    """A PostgreSQL identifier in double quotes (a quote inside is doubled)."""
    if "\0" in name:
        raise ValueError(f"identifier {name!r} holds a NUL")
    return '"' + name.replace('"', '""') + '"'


def conninfo(**values: str) -> str:
    """A libpq connection string: each value single-quoted, backslash and quote escaped."""
    return " ".join(f"{key}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
                    for key, value in values.items())
