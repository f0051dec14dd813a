"""The interface every database engine implements, and the database a dump reads.

An engine is pure: it makes command lines, scripts and SQL, and reads its servers' answers; the
archiver, the cutover and the configurator run them (locally, over SSH, in a rendered script).
What an engine cannot do yet raises Unsupported, whose message says so to an operator;
`restores` and `hands_off` let a caller refuse before it changes anything.
"""

from __future__ import annotations

import os
import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from shared.plan import DatabaseSpec

# Exit status of a remote dump script when no dump program is installed (the shell's own).
NOT_FOUND = 127
# A database "on the host itself" (the plan's default host and no port): over SSH it is dumped
# through the server's local socket, as the host's own admin would (root often may log in that
# way only, without a password).
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def has_control_characters(text: str) -> bool:
    """Whether `text` holds a character no server's configuration file line can (C0 or DEL)."""
    return any(ord(c) < 0x20 or c == "\x7f" for c in text)


class DumpError(Exception):
    """A database could not be dumped; the message names it (never its password)."""


class Unsupported(Exception):
    """The engine cannot do this (yet); the message says what."""


class VersionUnknown(RuntimeError):
    """A statement that depends on the server's version was asked of an engine not bound to
    one (Engine.at_version): a mistake in Ferryman, not in the plan."""


@dataclass(frozen=True)
class DatabaseSource:
    """A database to dump, and how to reach its server."""

    engine: str  # an engine's name, as plans write it
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


def database_source(db: DatabaseSpec, over_ssh: bool) -> DatabaseSource:
    """The plan's database as a dump reads it: the password from the environment variable the
    plan names, the local socket for a database on the host itself reached over SSH."""
    return DatabaseSource(
        engine=db.engine, name=db.name, host=db.host, port=db.effective_port, user=db.user,
        password=os.environ.get(db.password_env) if db.password_env else None,
        socket=over_ssh and db.port is None and db.host in _LOCAL_HOSTS,
    )


@dataclass(frozen=True)
class Position:
    """A point in a master's log of changes, from which a replica applies them."""

    file: str
    offset: int

    def __str__(self) -> str:
        return f"{self.file}:{self.offset}"


@dataclass(frozen=True)
class ReplicaStatus:
    """A server's replication, as its engine reports it (all empty: not a replica)."""

    master_port: int | None = None
    running: bool = False  # receiving and applying
    # The applier stopped on an error: it does not start again by itself.
    stopped_on_error: bool = False
    receiver: str | None = None  # each thread's state, in the engine's words
    applier: str | None = None
    seconds_behind: str | None = None
    receiver_error: str = ""
    applier_error: str = ""


class Engine(ABC):
    """One database engine: what Ferryman does with its servers, in its own commands and SQL.

    Command lines (`client`, `restore_command`) are for a POSIX shell on the machine and read
    SQL or a dump on stdin; SQL that holds a secret goes there, never into a command line."""

    name: str  # as plans write it
    title: str  # as messages write it
    # Engines of one family share a server (MariaDB and MySQL): a rebuilt VM runs one server
    # of each family its databases need.
    family: str
    default_port: int
    service: str  # the server's service (systemd unit, init script)
    dump_program: str  # named in messages about a failed dump
    password_variable: str  # where its clients take a password from; never argv
    # Variables its clients read: inherited, they would silently change who connects where, so
    # a dump clears them and sets exactly the ones it means.
    client_environment: tuple[str, ...]
    # A rebuilt VM's server is made and loads its dumps at first boot (local.start).
    rebuilds = False
    restores = False  # loads a dump in the cutover's window
    hands_off = False  # the cutover's replication hand-off
    # The hand-off subscribes the new master by logical replication (the cutover's logical.py)
    # instead of making it a replica through the binary log (replication.py).
    hands_off_logically = False
    dump_suffix = ".sql.zst"  # a dump's file name on the rebuilt VM: <name><dump_suffix>
    # The archive item holding the server's globals (roles...), dumped once per VM; None: the
    # engine has none.
    globals_source: str | None = None
    # A replica loads its master's dumps before it replicates (else it copies its master).
    replica_loads_dumps = True

    # --- dumps ----------------------------------------------------------------------------------

    @abstractmethod
    def dump_options(self, db: DatabaseSource) -> list[str]:
        """The dump program's arguments, its name aside."""

    @abstractmethod
    def _local_dump_program(self) -> str:
        """The dump program on this machine."""

    @abstractmethod
    def _remote_dump(self, db: DatabaseSource, options: Sequence[str] | None) -> list[str]:
        """The remote dump script's last lines: the dump program's exec."""

    def _database_variables(self, db: DatabaseSource) -> dict[str, str]:
        return {}

    def _local_defaults(self) -> dict[str, str]:
        """Variables a local dump sets unless this process has them already."""
        return {}

    def dump_variables(self, db: DatabaseSource, *,
                       with_password: bool = True) -> dict[str, str]:
        """The environment variables a dump of `db` sets (on top of a cleared environment)."""
        variables = self._database_variables(db)
        if with_password and db.password is not None:
            # The child's environment only: argv is world-readable.
            variables[self.password_variable] = db.password
        return variables

    def dump_command(self, db: DatabaseSource) -> tuple[list[str], dict[str, str]]:
        """A dump of `db` run here: its argv and its whole environment."""
        env = {k: v for k, v in os.environ.items() if k not in self.client_environment}
        for name, value in self._local_defaults().items():
            env.setdefault(name, value)
        env.update(self.dump_variables(db))
        return [self._local_dump_program(), *self.dump_options(db)], env

    def remote_dump_script(self, db: DatabaseSource, options: Sequence[str] | None = None,
                           ) -> tuple[str, bytes | None]:
        """A POSIX shell script dumping `db` to stdout, and the stdin it needs (the password).
        `options`: the dump program's arguments instead of the usual ones.

        The password travels on stdin: `read` is a shell builtin, so it never appears in any
        argv, on either machine; `export` hands it to the dump program's environment only. The
        script itself holds no secret, so it may be logged."""
        return self.remote_script(db, self._remote_dump(db, options))

    def remote_script(self, db: DatabaseSource, last_lines: Sequence[str], *,
                      database: str | None = None) -> tuple[str, bytes | None]:
        """A POSIX shell script for one of the engine's programs on `db`'s server (its
        `last_lines`), with the password on stdin and the engine's variables set; `database`:
        the one to connect to instead of `db`'s."""
        lines = [f"unset {' '.join(self.client_environment)}"]
        stdin = None
        if db.password is not None:
            if "\n" in db.password or "\0" in db.password:
                raise DumpError(f"dump of {db}: a password with a newline or NUL cannot be sent")
            variable = self.password_variable
            # `|| [ -n ... ]`: a last line without its newline still counts.
            lines += [f"IFS= read -r {variable} || [ -n \"${variable}\" ] || "
                      f"{{ echo 'no password on stdin' >&2; exit 2; }}",
                      f"export {variable}"]
            stdin = db.password.encode() + b"\n"
        target = db if database is None else replace(db, name=database)
        variables = self.dump_variables(target, with_password=False)
        lines += [f"{name}={shlex.quote(value)}; export {name}"
                  for name, value in variables.items()]
        lines += last_lines
        return "\n".join(lines), stdin

    # --- the server's version --------------------------------------------------------------------

    def version_sql(self) -> str:
        """Asks the server its version; `at_version` reads the answer."""
        raise self._unsupported("asking a server's version")

    def at_version(self, version: str) -> Engine:
        """This engine bound to a server that answered `version` to `version_sql`: its
        statements are the ones that server speaks. Unsupported (naming the version) for a
        server it cannot speak to."""
        raise self._unsupported("asking a server's version")

    # --- SQL on a machine -----------------------------------------------------------------------

    def client(self, database: str | None = None, *, batch: bool = False) -> str:
        """The command line that runs the SQL on its stdin (in `database`); `batch`: answers
        as tab-separated rows without a header."""
        raise self._unsupported("running SQL")

    def restore_command(self, database: str) -> str:
        """The command line that loads a dump, on its stdin, into `database`."""
        raise self._unsupported("loading a dump")

    def read_only_sql(self, on: bool) -> str:
        """Makes the server refuse writes (or take them again)."""
        raise self._unsupported("making a server read-only")

    def create_database_sql(self, name: str) -> str:
        raise self._unsupported("creating a database")

    def use_database_sql(self, name: str) -> str:
        raise self._unsupported("choosing a database")

    # --- the server of a rebuilt VM -------------------------------------------------------------

    config_file: str = ""  # where the rebuilt VM's server configuration is written
    services: tuple[str, ...] = ()  # the server's service names: the first the VM has is used
    option_files: tuple[str, ...] = ()  # the server's own option files, the first found used

    def flavours(self) -> tuple:
        """Every mysql_versions.Flavour its servers may speak, oldest first: the rebuilt VM
        picks its own by its server's version when it first boots."""
        raise self._unsupported("rebuilding a server")

    def data_dir(self, database_data_dir: str) -> str:
        """Where the server keeps its data, below the plan's database_data_dir."""
        raise self._unsupported("rebuilding a server")

    def server_config(self, *, data_dir: str, address: str, memory_mb: int,
                      replica: bool) -> str:
        """The rebuilt server's configuration: good enough to load and replicate."""
        raise self._unsupported("rebuilding a server")

    # --- replication: a master, its position, a replica -----------------------------------------

    def master_check_sql(self) -> str:
        """Asks what a server needs to be a master; `master_problem` reads the answer."""
        raise self._unsupported("the replication hand-off")

    def master_problem(self, answer: str) -> str | None:
        """Why the server cannot be a master (worded after its label), or None."""
        raise self._unsupported("the replication hand-off")

    def master_position_sql(self) -> str:
        raise self._unsupported("reading a master's position")

    def parse_master_position(self, answer: str) -> Position | None:
        raise self._unsupported("reading a master's position")

    def wait_for_position_sql(self, position: Position, timeout_s: int) -> str:
        """Waits until a replica has applied everything up to `position`; `caught_up` reads
        the answer."""
        raise self._unsupported("waiting for a position")

    def caught_up(self, answer: str) -> bool:
        raise self._unsupported("waiting for a position")

    def replica_status_sql(self) -> str:
        raise self._unsupported("reading a replica's status")

    def parse_replica_status(self, answer: str) -> ReplicaStatus:
        raise self._unsupported("reading a replica's status")

    def replication_user_sql(self, user: str, password: str, hosts: Sequence[str]) -> str:
        """A user that replicas log in as from `hosts`, kept out of the master's own log."""
        raise self._unsupported("the replication hand-off")

    def drop_replication_user_sql(self, user: str, hosts: Sequence[str]) -> str:
        raise self._unsupported("the replication hand-off")

    def point_at_master_sql(self, *, host: str, port: int, user: str, password: str,
                            databases: Sequence[str]) -> str:
        """The server becomes a replica of host:port for `databases` only, its position set
        later (by a dump that carries it)."""
        raise self._unsupported("setting up a replica")

    def start_replica_sql(self) -> str:
        raise self._unsupported("setting up a replica")

    def promote_sql(self) -> str:
        """A replica stops replicating for good and takes writes: a master of its own."""
        raise self._unsupported("promoting a replica")

    def dump_with_position_script(self, db: DatabaseSource, databases: Sequence[str],
                                  ) -> tuple[str, bytes | None]:
        """One consistent dump of `databases` on `db`'s server that, loaded into a replica,
        also sets where its replication starts; the remote script and its stdin."""
        raise self._unsupported("a dump with its position")

    def _unsupported(self, what: str) -> Unsupported:
        return Unsupported(f"{what} is not done for {self.title} databases yet")
