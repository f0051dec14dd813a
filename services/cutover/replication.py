"""The replication hand-off (cutover mode `replication`): until the window, the new master runs
as a replica of the legacy master over an SSH tunnel; in the window the link is broken once the
new master has caught up, and it is promoted.

The tunnel is opened by the legacy master to the new one (`ssh -R`): the new VMs may not reach
out before the cutover, but they may be reached. It carries the new master's 127.0.0.1:3307 to
the legacy server's own port on the legacy host's 127.0.0.1. Its key is the legacy host's own
(made there, never leaving it), and the new master lets that key do nothing but this one
forward. The tunnel runs on the legacy host in a loop of its own (a pid file in TUNNEL_DIR), so
it outlives the run that opened it, the cutover service and a dropped connection, until the
window closes it.

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
import shlex
from dataclasses import dataclass

from shared.databases import Engine, ReplicaStatus, Unsupported, database_source, engine
from shared.ssh import Remote, RemoteError, pipe

TUNNEL_PORT = 3307  # on the new master's loopback: the legacy master, through the tunnel
TUNNEL_DIR = "/var/lib/ferryman/tunnel"
REPLICATION_USER = "ferry_handoff"
# Over the tunnel the legacy server sees the connection come from its own loopback.
REPLICATION_HOSTS = ("127.0.0.1", "localhost")
CATCH_UP_S = 120  # the longest the window waits for the new master to catch up
LINK_UP_S = 60


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


# --- ahead of the window ---------------------------------------------------------------------

async def ensure_replicating(link: Link) -> str:
    """The new master replicates from the legacy master (set up if it does not yet)."""
    new = await server_on(link.engine, link.new)
    status = await replica_status(new, link.new)
    if status.running and status.master_port == TUNNEL_PORT:
        return (f"{link.new.label} already replicates from {link.legacy.label} "
                f"({status.seconds_behind or '?'} s behind)")
    legacy = await server_on(link.engine, link.legacy)
    await _check_master(legacy, link.legacy)
    await open_tunnel(link)
    password = secrets.token_urlsafe(24)
    await sql(legacy, link.legacy,
              legacy.replication_user_sql(REPLICATION_USER, password, REPLICATION_HOSTS),
              what="creating the replication user")
    await sql(new, link.new, _point_at_tunnel_sql(new, link.names, password),
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


def _point_at_tunnel_sql(server: Engine, databases: list[str], password: str) -> str:
    return server.point_at_master_sql(host="127.0.0.1", port=TUNNEL_PORT, user=REPLICATION_USER,
                                      password=password, databases=databases)


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
    """The legacy master's key allowed on the new master for this forward only, and the
    tunnel's loop running on the legacy host; then wait until the forward answers."""
    public = (await link.legacy.run(TUNNEL_KEY, what="making the tunnel's key")).strip()
    if not public.startswith("ssh-"):
        raise HandoffError(f"{link.legacy.label} gave no public key for the tunnel: {public!r}")
    entry = (f'restrict,port-forwarding,permitlisten="127.0.0.1:{TUNNEL_PORT}",'
             f'command="/bin/false" {public} ferry-handoff')
    await link.new.run(_allow_key_script(entry), what="allowing the tunnel's key")
    await link.legacy.run(_tunnel_script(link.new_address, link.engine.default_port),
                          what="starting the tunnel")
    probe = (f"for _ in $(seq 1 {LINK_UP_S}); do "
             f"if (exec 3<>/dev/tcp/127.0.0.1/{TUNNEL_PORT}) 2>/dev/null; then exit 0; fi; "
             "sleep 1; done; exit 1")
    try:
        await link.new.run(probe, what="waiting for the tunnel", timeout=LINK_UP_S + 30)
    except RemoteError:
        log = await link.legacy.run(f"tail -n 5 {TUNNEL_DIR}/log 2>/dev/null || true",
                                    what="reading the tunnel's log")
        raise HandoffError(f"the tunnel from {link.legacy.label} to {link.new.label} did not "
                           f"come up within {LINK_UP_S}s: {log.strip()[-300:]}") from None


async def close_tunnel(link: Link) -> None:
    await link.legacy.run(STOP_TUNNEL, what="closing the tunnel")
    await link.new.run("sed -i '/ ferry-handoff$/d' /root/.ssh/authorized_keys 2>/dev/null "
                       "|| true", what="removing the tunnel's key")


TUNNEL_KEY = f"""
mkdir -p {TUNNEL_DIR}
chmod 700 {TUNNEL_DIR}
test -f {TUNNEL_DIR}/key || ssh-keygen -q -t ed25519 -N '' -C ferry-handoff -f {TUNNEL_DIR}/key
cut -d' ' -f1,2 {TUNNEL_DIR}/key.pub
"""

STOP_TUNNEL = f"""
if [ -f {TUNNEL_DIR}/pid ]; then
    kill -TERM -- "-$(cat {TUNNEL_DIR}/pid)" 2>/dev/null || true
    rm -f {TUNNEL_DIR}/pid
fi
"""


def _allow_key_script(entry: str) -> str:
    return (f"mkdir -p /root/.ssh && chmod 700 /root/.ssh && "
            f"touch /root/.ssh/authorized_keys && "
            f"sed -i '/ ferry-handoff$/d' /root/.ssh/authorized_keys && "
            f"printf '%s\\n' {shlex.quote(entry)} >> /root/.ssh/authorized_keys")


def _tunnel_script(new_address: str, server_port: int) -> str:
    """Restart the loop that keeps `ssh -R` up (a VM rebuilt since has a new host key, so the
    tunnel's known_hosts starts empty and is held to the first key for this loop's life)."""
    ssh = shlex.join([
        "ssh", "-N", "-i", f"{TUNNEL_DIR}/key", "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes", "-o", "ExitOnForwardFailure=yes",
        "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={TUNNEL_DIR}/known_hosts",
        "-R", f"127.0.0.1:{TUNNEL_PORT}:127.0.0.1:{server_port}", f"root@{new_address}"])
    loop = f"echo $$ > {TUNNEL_DIR}/pid; while :; do {ssh}; sleep 2; done"
    return STOP_TUNNEL + (f"rm -f {TUNNEL_DIR}/known_hosts\n"
                          f"setsid nohup bash -c {shlex.quote(loop)} "
                          f"> {TUNNEL_DIR}/log 2>&1 < /dev/null &\n"
                          f"for _ in $(seq 1 50); do test -s {TUNNEL_DIR}/pid && exit 0; "
                          "sleep 0.1; done; echo 'the tunnel loop did not start' >&2; exit 1\n")


# --- in the window -------------------------------------------------------------------------

async def promote(link: Link) -> str:
    """The legacy master is read-only already: wait until the new master has applied all it
    wrote, then break the link and make the new master a master of its own."""
    new = await server_on(link.engine, link.new)
    status = await replica_status(new, link.new)
    if status.master_port != TUNNEL_PORT:
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


# --- SQL on a machine ---------------------------------------------------------------------------

async def sql(server: Engine, machine: Remote, statements: str, *, what: str,
              batch: bool = False, timeout: float | None = None) -> str:
    """Run SQL with the machine's client of `server`, the statements on stdin (never in
    argv: they may hold a password)."""
    kwargs = {} if timeout is None else {"timeout": timeout}
    return await machine.run(server.client(batch=batch), what=what,
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
