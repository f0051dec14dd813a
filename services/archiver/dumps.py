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
from typing import Literal

from services.archiver.archive import ArchiveResult, PipelineError, compress_to_file

# Connecting to a host that drops packets would otherwise wait for the OS's TCP timeout.
PG_CONNECT_TIMEOUT_S = "15"

# Inherited from the archiver's own environment these would silently change who connects
# where; each dump sets exactly the ones it means.
_MARIADB_ENV = ("MYSQL_PWD", "MYSQL_HOST", "MYSQL_TCP_PORT")
_PG_ENV = ("PGPASSWORD", "PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE")


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

    def __str__(self) -> str:
        return f"{self.engine} database {self.name!r} on {self.host}:{self.port}"


async def dump_database(db: DatabaseSource, dest: Path) -> ArchiveResult:
    """Dump `db` into `dest` as zstd-compressed SQL; `dest` is replaced atomically."""
    if db.engine == "mariadb":
        argv, env = mariadb_command(db)
    elif db.engine == "postgresql":
        argv, env = postgresql_command(db)
    else:
        raise DumpError(f"dump of {db} failed: unknown engine {db.engine!r}")
    try:
        sha256, size = await compress_to_file(argv, dest, env=env)
    except PipelineError as exc:
        raise DumpError(_scrub(f"dump of {db} failed: {exc}", db.password)) from None
    return ArchiveResult(file=dest, sha256=sha256, size=size, source_path=db.name,
                         kind="database", engine=db.engine)


def mariadb_command(db: DatabaseSource) -> tuple[list[str], dict[str, str]]:
    argv = [
        _mysqldump_program(),
        # TCP even for "localhost", where the client would otherwise take the local socket
        # and ignore the port.
        "--protocol=TCP", f"--host={db.host}", f"--port={db.port}",
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
    env = _child_env(_MARIADB_ENV)
    if db.password is not None:
        env["MYSQL_PWD"] = db.password  # the child's environment only: argv is world-readable
    return argv, env


def postgresql_command(db: DatabaseSource) -> tuple[list[str], dict[str, str]]:
    argv = [
        "pg_dump", "--no-owner", "--format=plain",
        # Never prompt on a terminal: a service has nobody to answer.
        "--no-password",
        f"--host={db.host}", f"--port={db.port}",
        *([f"--username={db.user}"] if db.user else []),
    ]
    env = _child_env(_PG_ENV)
    # The name goes by environment: on the command line a name containing "=" would be read
    # as a connection string.
    env["PGDATABASE"] = db.name
    env.setdefault("PGCONNECT_TIMEOUT", PG_CONNECT_TIMEOUT_S)
    if db.password is not None:
        env["PGPASSWORD"] = db.password
    return argv, env


def _mysqldump_program() -> str:
    """MariaDB's own name where it exists: newer clients warn on, or no longer ship, the
    mysql* aliases."""
    return "mariadb-dump" if shutil.which("mariadb-dump") else "mysqldump"


def _child_env(dropped: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in dropped}


def _scrub(message: str, password: str | None) -> str:
    """Defence in depth: no client is known to echo the password, but none may reach a log."""
    return message.replace(password, "***") if password else message
