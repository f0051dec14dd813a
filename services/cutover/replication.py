"""The replication hand-off (cutover mode `replication`): until the window, the new master runs
as a replica of the legacy master over an SSH tunnel; in the window the link is broken once the
new master has caught up, and it is promoted.

The tunnel is opened by the legacy master to the new one (`ssh -R`): the new VMs may not reach
out before the cutover, but they may be reached. It carries the new master's 127.0.0.1:3307 to
the legacy server's 127.0.0.1:3306. Its key is the legacy host's own (made there, never leaving
it), and the new master lets that key do nothing but this one forward. The tunnel runs on the
legacy host in a loop of its own (a pid file in TUNNEL_DIR), so it outlives the run that opened
it, the cutover service and a dropped connection, until the window closes it.

The new master is loaded from one dump of all the master's databases taken with its binary log
position (`--master-data`), one snapshot, so replication starts exactly where the dump ends.
Every secret (the replication password) travels on stdin, never in an argv.
"""

from __future__ import annotations

import asyncio
import secrets
import shlex
from dataclasses import dataclass

from services.archiver.dumps import mariadb_dump_options
from services.archiver.handlers import database_source
from services.archiver.ssh import remote_dump_script
from services.cutover.remote import Remote, RemoteError, pipe

TUNNEL_PORT = 3307  # on the new master's loopback: the legacy master, through the tunnel
TUNNEL_DIR = "/var/lib/ferryman/tunnel"
REPLICATION_USER = "ferry_handoff"
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
    databases: list  # the plan's DatabaseSpec entries (MariaDB)

    @property
    def names(self) -> list[str]:
        return [db.name for db in self.databases]


# --- ahead of the window ---------------------------------------------------------------------

async def ensure_replicating(link: Link) -> str:
    """The new master replicates from the legacy master (set up if it does not yet)."""
    status = await replica_status(link.new)
    if _running(status) and status.get("Master_Port") == str(TUNNEL_PORT):
        return (f"{link.new.label} already replicates from {link.legacy.label} "
                f"({status.get('Seconds_Behind_Master', '?')} s behind)")
    await _check_binary_log(link.legacy)
    await open_tunnel(link)
    password = secrets.token_urlsafe(24)
    await sql(link.legacy, _replication_user_sql(password), what="creating the replication user")
    await sql(link.new, _point_at_tunnel_sql(link.names, password),
              what="pointing the new master at the tunnel")
    await _load_with_position(link)
    await sql(link.new, "START SLAVE;", what="starting replication")
    await _wait_running(link.new)
    return (f"{link.new.label} loaded {', '.join(link.names)} and replicates from "
            f"{link.legacy.label} through the tunnel")


async def _check_binary_log(legacy: Remote) -> None:
    out = await sql(legacy, "SELECT @@log_bin, @@server_id;", what="reading the binary log "
                    "settings", batch=True)
    log_bin, server_id = (out.split() + ["", ""])[:2]
    if log_bin != "1":
        raise HandoffError(f"{legacy.label} has no binary log (log_bin is off): the "
                           "replication hand-off needs one; use mode dump-and-restore")
    if server_id in ("", "0"):
        raise HandoffError(f"{legacy.label} has server_id 0: a master needs its own id")


def _replication_user_sql(password: str) -> str:
    # Over the tunnel the legacy server sees the connection come from its own loopback.
    # sql_log_bin=0: the legacy master's own replicas need not learn of this user.
    lines = ["SET sql_log_bin = 0;"]
    for host in ("127.0.0.1", "localhost"):
        user = f"{_sql_text(REPLICATION_USER)}@{_sql_text(host)}"
        lines += [f"CREATE OR REPLACE USER {user} IDENTIFIED BY {_sql_text(password)};",
                  f"GRANT REPLICATION SLAVE ON *.* TO {user};"]
    return "\n".join(lines)


def _point_at_tunnel_sql(databases: list[str], password: str) -> str:
    # Only the migrated databases: the legacy master's others (and its system tables) are not
    # on the new one. Row-based events are filtered by their table's database.
    return "\n".join([
        "STOP SLAVE;", "RESET SLAVE ALL;",
        f"SET GLOBAL replicate_do_db = {_sql_text(','.join(databases))};",
        f"CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {TUNNEL_PORT}, "
        f"MASTER_USER = {_sql_text(REPLICATION_USER)}, MASTER_PASSWORD = {_sql_text(password)}, "
        "MASTER_CONNECT_RETRY = 5;",
    ])


async def _load_with_position(link: Link) -> None:
    """One consistent dump of every database, with its position, into the new master: the
    dump's CHANGE MASTER sets where replication starts. The new master logs the load, so its
    own replicas get it too."""
    first = database_source(link.databases[0], over_ssh=True)
    options = [*mariadb_dump_options(first)[:-2], "--master-data=1", "--databases", "--",
               *link.names]
    script, secret = remote_dump_script(first, options=options)
    await pipe(link.legacy, script, link.new, "mariadb", source_input=secret,
               what=f"dump of {', '.join(link.names)} with its position from "
                    f"{link.legacy.label} into {link.new.label}")


async def _wait_running(new: Remote) -> None:
    """Both replication threads running; an SQL thread that stopped on an error fails at once
    (it will not start again by itself)."""
    status: dict[str, str] = {}
    for _ in range(LINK_UP_S):
        status = await replica_status(new)
        if _running(status) or (status.get("Slave_SQL_Running") == "No"
                                and status.get("Last_SQL_Error")):
            break
        await asyncio.sleep(1)
    if not _running(status):
        errors = " ".join(filter(None, (status.get("Last_IO_Error"),
                                        status.get("Last_SQL_Error"))))
        raise HandoffError(f"replication on {new.label} did not start: IO thread "
                           f"{status.get('Slave_IO_Running')}, SQL thread "
                           f"{status.get('Slave_SQL_Running')}" + (f": {errors}" if errors else ""))


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
    await link.legacy.run(_tunnel_script(link.new_address), what="starting the tunnel")
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


def _tunnel_script(new_address: str) -> str:
    """Restart the loop that keeps `ssh -R` up (a VM rebuilt since has a new host key, so the
    tunnel's known_hosts starts empty and is held to the first key for this loop's life)."""
    ssh = shlex.join([
        "ssh", "-N", "-i", f"{TUNNEL_DIR}/key", "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes", "-o", "ExitOnForwardFailure=yes",
        "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={TUNNEL_DIR}/known_hosts",
        "-R", f"127.0.0.1:{TUNNEL_PORT}:127.0.0.1:3306", f"root@{new_address}"])
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
    status = await replica_status(link.new)
    if not status or status.get("Master_Port") != str(TUNNEL_PORT):
        raise HandoffError(f"{link.new.label} does not replicate from {link.legacy.label}: "
                           "run `ferry cutover GROUP --prepare` first (it sets the link up)")
    out = await sql(link.legacy, "SHOW MASTER STATUS;", what="reading the old master's "
                    "position", batch=True)
    fields = out.split()
    if len(fields) < 2 or not fields[1].isdigit():
        raise HandoffError(f"{link.legacy.label} gave no binary log position: {out.strip()!r}")
    log_file, log_pos = fields[0], int(fields[1])
    waited = (await sql(link.new, f"SELECT MASTER_POS_WAIT({_sql_text(log_file)}, {log_pos}, "
                        f"{CATCH_UP_S});", what="waiting for the new master to catch up",
                        batch=True, timeout=CATCH_UP_S + 30)).strip()
    if waited in ("", "NULL", "-1"):
        status = await replica_status(link.new)
        raise HandoffError(f"{link.new.label} did not catch up with {log_file}:{log_pos} "
                           f"within {CATCH_UP_S}s ({waited or 'no answer'}): "
                           f"{status.get('Last_IO_Error') or status.get('Last_SQL_Error') or ''}"
                           .strip())
    await sql(link.new, "STOP SLAVE;\nRESET SLAVE ALL;\nSET GLOBAL replicate_do_db = '';\n"
              "SET GLOBAL read_only = OFF;", what="promoting the new master")
    await close_tunnel(link)
    await sql(link.legacy, "SET sql_log_bin = 0;\n" + "\n".join(
        f"DROP USER IF EXISTS {_sql_text(REPLICATION_USER)}@{_sql_text(h)};"
        for h in ("127.0.0.1", "localhost")), what="removing the replication user")
    return f"{link.new.label} caught up at {log_file}:{log_pos} and was promoted"


# --- MariaDB on a machine ----------------------------------------------------------------------

async def sql(machine: Remote, statements: str, *, what: str, batch: bool = False,
              timeout: float | None = None) -> str:
    """Run SQL with the machine's `mariadb` client, the statements on stdin (never in argv)."""
    kwargs = {} if timeout is None else {"timeout": timeout}
    return await machine.run("mariadb -N -B" if batch else "mariadb", what=what,
                             stdin=statements.encode() + b"\n", **kwargs)


async def replica_status(machine: Remote) -> dict[str, str]:
    out = await sql(machine, "SHOW SLAVE STATUS\\G", what="reading the replication status")
    status = {}
    for line in out.splitlines():
        key, sep, value = line.strip().partition(": ")
        if sep:
            status[key] = value
    return status


def _running(status: dict[str, str]) -> bool:
    return status.get("Slave_IO_Running") == "Yes" and status.get("Slave_SQL_Running") == "Yes"


def _sql_text(value: str) -> str:
    """A MariaDB string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
