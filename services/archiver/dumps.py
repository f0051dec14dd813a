"""Database dumps of a legacy host: `mysqldump` or `pg_dump` piped into zstd, through the same
atomic, hashed pipeline as the path archives.

MariaDB dumps hold one database's contents *without* CREATE DATABASE / USE (no --databases),
so the loader chooses the target: `zstd -dc dump | mysql -B <name>` after `SET sql_log_bin=0`.
PostgreSQL dumps are plain SQL without ownership, loaded with `psql -d <name>`.

The MariaDB dump user needs SELECT, SHOW VIEW, TRIGGER and EVENT on the database, and SELECT
on mysql.proc for the routines; the PostgreSQL one needs to read every object of the database.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Mapping, Sequence

from services.archiver.archive import ArchiveResult, PipelineError, compress

# Connecting to a host that drops packets would otherwise wait for the OS's TCP timeout.
PG_CONNECT_TIMEOUT_S = "15"

# Inherited from the archiver's own environment these would silently change who connects
# where; each dump sets exactly the ones it means.
MARIADB_ENV = ("MYSQL_PWD", "MYSQL_HOST", "MYSQL_TCP_PORT")
PG_ENV = ("PGPASSWORD", "PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE")
# Where each client takes its password from; never argv.
PASSWORD_VARIABLE = {"mariadb": "MYSQL_PWD", "postgresql": "PGPASSWORD"}
CLEARED_ENV = {"mariadb": MARIADB_ENV, "postgresql": PG_ENV}


class DumpError(Exception):
    """A database could not be dumped; the message names it (never its password)."""


@dataclass(frozen=True)
class DatabaseSource:
    engine: Literal["mariadb", "postgresql"]
    name: str
    host: str
    port: int
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    # The server's local socket instead of TCP to host:port (a dump run on the legacy host
    # itself, where root may log in by socket without a password).
    socket: bool = False

    def __str__(self) -> str:
        where = "its local socket" if self.socket else f"{self.host}:{self.port}"
        return f"{self.engine} database {self.name!r} on {where}"


async def dump_database(db: DatabaseSource, dest: Path) -> ArchiveResult:
    """Dump `db` into `dest` as zstd-compressed SQL; `dest` is replaced atomically."""
    if db.engine == "mariadb":
        argv, env = mariadb_command(db)
    elif db.engine == "postgresql":
        argv, env = postgresql_command(db)
    else:
        raise DumpError(f"dump of {db} failed: unknown engine {db.engine!r}")
    return await run_dump(db, argv, dest, env=env)


async def run_dump(db: DatabaseSource, argv: Sequence[str], dest: Path, *,
                   env: Mapping[str, str] | None = None, stdin: bytes | None = None,
                   explain: Callable[[PipelineError], str] = str) -> ArchiveResult:
    """`argv | zstd > dest`, failures worded by `explain` and scrubbed of the password."""
    try:
        done = await compress(argv, dest, env=env, stdin=stdin)
    except PipelineError as exc:
        raise DumpError(_scrub(f"dump of {db} failed: {explain(exc)}",
                               db.password)) from None
    return ArchiveResult(file=dest, sha256=done.sha256, size=done.size, source_path=db.name,
                         kind="database", engine=db.engine)


def mariadb_command(db: DatabaseSource) -> tuple[list[str], dict[str, str]]:
    argv = [_mysqldump_program(), *mariadb_dump_options(db)]
    env = _child_env(MARIADB_ENV)
    env.update(dump_variables(db))
    return argv, env


def mariadb_dump_options(db: DatabaseSource) -> list[str]:
    """mariadb-dump's (or mysqldump's) arguments, the program name aside."""
    return [
        *_mariadb_connection(db),
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


def _mariadb_connection(db: DatabaseSource) -> list[str]:
    if db.socket:
        # The socket the server's own my.cnf names (the client reads the same files).
        return ["--protocol=SOCKET"]
    # TCP even for "localhost", where the client would otherwise take the local socket and
    # ignore the port.
    return ["--protocol=TCP", f"--host={db.host}", f"--port={db.port}"]


def postgresql_command(db: DatabaseSource) -> tuple[list[str], dict[str, str]]:
    argv = ["pg_dump", *postgresql_dump_options(db)]
    env = _child_env(PG_ENV)
    env.setdefault("PGCONNECT_TIMEOUT", PG_CONNECT_TIMEOUT_S)
    env.update(dump_variables(db))
    return argv, env


def postgresql_dump_options(db: DatabaseSource) -> list[str]:
    return [
        "--no-owner", "--format=plain",
        # Never prompt on a terminal: a service has nobody to answer.
        "--no-password",
        # No --host: libpq's default, the local socket (whose name still needs the port).
        *([] if db.socket else [f"--host={db.host}"]), f"--port={db.port}",
        *([f"--username={db.user}"] if db.user else []),
    ]


def dump_variables(db: DatabaseSource, *, with_password: bool = True) -> dict[str, str]:
    """The environment variables a dump of `db` sets (on top of a cleared environment)."""
    variables = {}
    if db.engine == "postgresql":
        # The name goes by environment: on the command line a name containing "=" would be
        # read as a connection string.
        variables["PGDATABASE"] = db.name
    if with_password and db.password is not None:
        # The child's environment only: argv is world-readable.
        variables[PASSWORD_VARIABLE[db.engine]] = db.password
    return variables


def _mysqldump_program() -> str:
    """MariaDB's own name where it exists: newer clients warn on, or no longer ship, the
    mysql* aliases."""
    return "mariadb-dump" if shutil.which("mariadb-dump") else "mysqldump"


def _child_env(dropped: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in dropped}


def _scrub(message: str, password: str | None) -> str:
    """Defence in depth: no client is known to echo the password, but none may reach a log."""
    return message.replace(password, "***") if password else message
