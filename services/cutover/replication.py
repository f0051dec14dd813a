"""The replication hand-off (cutover mode `replication`): until the window, the new master runs
as a replica of the legacy master over an SSH tunnel; in the window the link is broken once the
new master has caught up, and it is promoted.

The link runs through tunnel.py's SSH tunnel, opened by the legacy master to the new one (the
new master's 127.0.0.1:3307 is the legacy server). PostgreSQL hands off by logical replication
instead (logical.py), through a tunnel of its own.

The new master is loaded from one dump of all the master's databases taken with its position,
one snapshot, so replication starts exactly where the dump ends. Every secret (the replication
password) travels on stdin, never in an argv. The SQL is the engine's (shared/databases), bound
to the version each server answers (`server_on`: a legacy MySQL 5.7 and its rebuilt copy speak
CHANGE MASTER TO, an 8.4 CHANGE REPLICATION SOURCE TO); the order of the work and the tunnel are
the hand-off's own.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from shared.databases import Engine, ReplicaStatus, Unsupported, database_source, engine
from services.cutover.tunnel import LINK_UP_S, TUNNELS, Tunnel, TunnelError
from shared.ssh import Remote, pipe

REPLICATION_USER = "ferry_handoff"
# Over the tunnel the legacy server sees the connection come from its own loopback.
REPLICATION_HOSTS = ("127.0.0.1", "localhost")
CATCH_UP_S = 120  # the longest the window waits for the new master to catch up


class HandoffError(Exception):
    """The hand-off cannot go on; says on which machine and why."""


@dataclass(frozen=True)
class Link:
    """One master's pair: the legacy master, the new master, and the databases they share."""

    legacy: Remote
    new: Remote
    new_address: str  # where the legacy host reaches the new master
    databases: list  # the plan's DatabaseSpec entries, of an engine that hands off

    @property
    def names(self) -> list[str]:
        return [db.name for db in self.databases]

    @property
    def engine(self) -> Engine:
        """The plan's engine, bound to no version: `server_on` binds it to a machine's."""
        return engine(self.databases[0].engine)

    @property
    def tunnel(self) -> Tunnel:
        return TUNNELS[self.engine.family]


# --- ahead of the window ---------------------------------------------------------------------

async def ensure_replicating(link: Link) -> str:
    """The new master replicates from the legacy master (set up if it does not yet)."""
    new = await server_on(link.engine, link.new)
    status = await replica_status(new, link.new)
    if status.running and status.master_port == link.tunnel.port:
        return (f"{link.new.label} already replicates from {link.legacy.label} "
                f"({status.seconds_behind or '?'} s behind)")
    legacy = await server_on(link.engine, link.legacy)
    await _check_master(legacy, link.legacy)
    await open_tunnel(link)
    password = secrets.token_urlsafe(24)
    await sql(legacy, link.legacy,
              legacy.replication_user_sql(REPLICATION_USER, password, REPLICATION_HOSTS),
              what="creating the replication user")
    await sql(new, link.new, _point_at_tunnel_sql(new, link, password),
              what="pointing the new master at the tunnel")
    await _load_with_position(link, legacy, new)
    await sql(new, link.new, new.start_replica_sql(), what="starting replication")
    await _wait_running(new, link.new)
    return (f"{link.new.label} loaded {', '.join(link.names)} and replicates from "
            f"{link.legacy.label} through the tunnel")


async def _check_master(server: Engine, legacy: Remote) -> None:
    out = await sql(server, legacy, server.master_check_sql(), what="reading the binary log "
                    "settings", batch=True)
    problem = server.master_problem(out)
    if problem:
        raise HandoffError(f"{legacy.label} {problem}")


def _point_at_tunnel_sql(server: Engine, link: Link, password: str) -> str:
    return server.point_at_master_sql(host="127.0.0.1", port=link.tunnel.port,
                                      user=REPLICATION_USER, password=password,
                                      databases=link.names)


async def _load_with_position(link: Link, legacy: Engine, new: Engine) -> None:
    """One consistent dump of every database, with its position, into the new master: the
    dump sets where replication starts. The new master logs the load, so its own replicas get
    it too."""
    first = database_source(link.databases[0], over_ssh=True)
    script, secret = legacy.dump_with_position_script(first, link.names)
    await pipe(link.legacy, script, link.new, new.client(), source_input=secret,
               what=f"dump of {', '.join(link.names)} with its position from "
                    f"{link.legacy.label} into {link.new.label}")


async def _wait_running(server: Engine, new: Remote) -> None:
    """Both replication threads running; an SQL thread that stopped on an error fails at once
    (it will not start again by itself)."""
    status = ReplicaStatus()
    for _ in range(LINK_UP_S):
        status = await replica_status(server, new)
        if status.running or status.stopped_on_error:
            break
        await asyncio.sleep(1)
    if not status.running:
        errors = " ".join(filter(None, (status.receiver_error, status.applier_error)))
        raise HandoffError(f"replication on {new.label} did not start: IO thread "
                           f"{status.receiver}, SQL thread "
                           f"{status.applier}" + (f": {errors}" if errors else ""))


# --- the tunnel --------------------------------------------------------------------------------

async def open_tunnel(link: Link) -> None:
    try:
        await link.tunnel.open(link.legacy, link.new, link.new_address,
                               link.engine.default_port)
    except TunnelError as exc:
        raise HandoffError(str(exc)) from None


async def close_tunnel(link: Link) -> None:
    await link.tunnel.close(link.legacy, link.new)


# --- in the window -------------------------------------------------------------------------

async def promote(link: Link) -> str:
    """The legacy master is read-only already: wait until the new master has applied all it
    wrote, then break the link and make the new master a master of its own."""
    new = await server_on(link.engine, link.new)
    status = await replica_status(new, link.new)
    if status.master_port != link.tunnel.port:
        raise HandoffError(f"{link.new.label} does not replicate from {link.legacy.label}: "
                           "run `ferry cutover GROUP --prepare` first (it sets the link up)")
    legacy = await server_on(link.engine, link.legacy)
    out = await sql(legacy, link.legacy, legacy.master_position_sql(),
                    what="reading the old master's position", batch=True)
    position = legacy.parse_master_position(out)
    if position is None:
        raise HandoffError(f"{link.legacy.label} gave no binary log position: {out.strip()!r}")
    waited = (await sql(new, link.new, new.wait_for_position_sql(position, CATCH_UP_S),
                        what="waiting for the new master to catch up",
                        batch=True, timeout=CATCH_UP_S + 30)).strip()
    if not new.caught_up(waited):
        status = await replica_status(new, link.new)
        raise HandoffError(f"{link.new.label} did not catch up with {position} "
                           f"within {CATCH_UP_S}s ({waited or 'no answer'}): "
                           f"{status.receiver_error or status.applier_error or ''}".strip())
    await sql(new, link.new, new.promote_sql(), what="promoting the new master")
    await close_tunnel(link)
    await sql(legacy, link.legacy,
              legacy.drop_replication_user_sql(REPLICATION_USER, REPLICATION_HOSTS),
              what="removing the replication user")
    return f"{link.new.label} caught up at {position} and was promoted"


async def release_on_legacy(legacy: Remote, server: Engine) -> None:
    """What a hand-off set up on the legacy master removed, its new master gone (a cancelled
    group): the tunnel's loop and the replication user."""
    await legacy.run(TUNNELS[server.family].stop_script(), what="closing the tunnel")
    bound = await server_on(server, legacy)
    await sql(bound, legacy, bound.drop_replication_user_sql(REPLICATION_USER, REPLICATION_HOSTS),
              what="removing the replication user")


# --- SQL on a machine ---------------------------------------------------------------------------

async def sql(server: Engine, machine: Remote, statements: str, *, what: str,
              batch: bool = False, timeout: float | None = None,
              database: str | None = None) -> str:
    """Run SQL with the machine's client of `server` (in `database`), the statements on stdin
    (never in argv: they may hold a password)."""
    kwargs = {} if timeout is None else {"timeout": timeout}
    return await machine.run(server.client(database, batch=batch), what=what,
                             stdin=statements.encode() + b"\n", **kwargs)


async def server_on(server: Engine, machine: Remote) -> Engine:
    """`server` bound to the version of the server on `machine` (each server is asked: the
    statements it speaks depend on it); HandoffError for a version it cannot speak to."""
    answer = await sql(server, machine, server.version_sql(),
                       what="asking the server its version", batch=True)
    try:
        return server.at_version(answer.strip())
    except Unsupported as exc:
        raise HandoffError(f"{machine.label}: {exc}") from None


async def replica_status(server: Engine, machine: Remote) -> ReplicaStatus:
    out = await sql(server, machine, server.replica_status_sql(),
                    what="reading the replication status")
    return server.parse_replica_status(out)
