"""PostgreSQL: dumped only, so far. Its dumps are plain SQL without ownership, for `psql -d
<name>`; the dump user needs to read every object of the database. The cutover and the rebuilt
VM refuse it (`restores` and `hands_off` are off), and say so.
"""

from __future__ import annotations

import shlex
from typing import Sequence

from shared.databases.base import DatabaseSource, Engine

# Connecting to a host that drops packets would otherwise wait for the OS's TCP timeout.
CONNECT_TIMEOUT_S = "15"


class PostgreSQL(Engine):
    name = "postgresql"
    title = "PostgreSQL"
    default_port = 5432
    service = "postgresql"
    dump_program = "pg_dump"
    password_variable = "PGPASSWORD"
    client_environment = ("PGPASSWORD", "PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER",
                          "PGDATABASE", "PGSERVICE")

    def dump_options(self, db: DatabaseSource) -> list[str]:
        return [
            "--no-owner", "--format=plain",
            # Never prompt on a terminal: a service has nobody to answer.
            "--no-password",
            # No --host: libpq's default, the local socket (whose name still needs the port).
            *([] if db.socket else [f"--host={db.host}"]), f"--port={db.port}",
            *([f"--username={db.user}"] if db.user else []),
        ]

    def _database_variables(self, db: DatabaseSource) -> dict[str, str]:
        # The name goes by environment: on the command line a name containing "=" would be
        # read as a connection string.
        return {"PGDATABASE": db.name}

    def _local_dump_program(self) -> str:
        return "pg_dump"

    def _local_defaults(self) -> dict[str, str]:
        return {"PGCONNECT_TIMEOUT": CONNECT_TIMEOUT_S}

    def _remote_dump(self, db: DatabaseSource, options: Sequence[str] | None) -> list[str]:
        arguments = shlex.join(self.dump_options(db) if options is None else options)
        return [f"PGCONNECT_TIMEOUT={CONNECT_TIMEOUT_S}; export PGCONNECT_TIMEOUT",
                f"exec pg_dump {arguments}"]
