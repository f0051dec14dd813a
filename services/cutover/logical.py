"""PostgreSQL's replication hand-off (cutover mode `replication`), by logical replication:
ahead of the window the new master subscribes to the legacy master (a publication of all
tables there, the schema copied first, then the tables by the subscription's initial copy);
in the window, the legacy master read-only, the new master confirms everything up to the
legacy master's last position, the sequences are brought forward, and the link is removed
from both sides. The same entry points as the MySQL family's (replication.py), so the runbook
does not care which engine it hands off.

The subscription reaches the legacy server through tunnel.py's tunnel (its own, beside a
MariaDB one on a master holding both). Its password exists in the subscription and the
legacy role only, from `ensure_replicating` to the end of `promote`, and travels on stdin.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from services.cutover import replication
from services.cutover.replication import (
    CATCH_UP_S, HandoffError, Link, close_tunnel, open_tunnel, server_on,
)
from services.cutover.tunnel import TUNNELS
from shared.databases import database_source, engine
from shared.databases import postgresql_logical as logical
from shared.ssh import Remote, pipe

SYNC_S = 3600  # the longest the initial copy of the tables may take
POSTGRESQL = engine("postgresql")


async def sql(machine: Remote, statements: str, *, what: str, database: str | None = None,
              timeout: float | None = None) -> str:
    """SQL on the machine's cluster, as its superuser; its answer as psql's unaligned rows."""
    return await replication.sql(POSTGRESQL, machine, statements, what=what, batch=True,
                                 timeout=timeout, database=database)


async def subscribed(link: Link) -> list[str]:
    """The link's databases that the new master holds Ferryman's subscription in."""
    out = await sql(link.new, logical.subscribed_sql(), what="reading the subscriptions")
    return [name for name in out.split() if name in link.names]


# --- ahead of the window ---------------------------------------------------------------------

async def ensure_replicating(link: Link) -> str:
    """The new master subscribes to the legacy master, every table copied (set up if not)."""
    await server_on(POSTGRESQL, link.new)
    if set(await subscribed(link)) == set(link.names) and await _all_synced(link):
        return f"{link.new.label} already subscribes to {link.legacy.label}"
    await server_on(POSTGRESQL, link.legacy)
    await _check_publisher(link)
    started = time.monotonic()
    await open_tunnel(link)
    # What a run cut off earlier left: its subscriptions first (they hold the slots), then
    # the slots. The databases are made again from the schema below.
    await _unsubscribe(link)
    await sql(link.legacy, logical.drop_slots_sql(link.names), what="removing stale slots")
    # The schema before anything is granted to the hand-off's role: the new master has no
    # such role, and its copy of the grants would stop the restore.
    for name in link.names:
        await _unpublish(link, name)
        await _copy_schema(link, name)
    password = secrets.token_urlsafe(24)
    await sql(link.legacy, logical.role_sql(password), what="creating the replication role")
    for name in link.names:
        await sql(link.legacy, logical.publish_sql(), database=name,
                  what=f"publishing {name}")
        await sql(link.new, logical.subscribe_sql(name, link.tunnel.port, password),
                  database=name, what=f"subscribing {name} to {link.legacy.label}")
    await _wait_synced(link)
    return (f"{link.new.label} copied {', '.join(link.names)} from {link.legacy.label} in "
            f"{time.monotonic() - started:.1f}s and subscribes to it through the tunnel")


async def _check_publisher(link: Link) -> None:
    """Everything the legacy master needs, asked before anything changes on either side."""
    out = await sql(link.legacy, logical.publisher_check_sql(),
                    what="reading the replication settings")
    problem = logical.publisher_problem(out, len(link.names))
    if problem:
        raise HandoffError(f"{link.legacy.label} {problem}")
    for name in link.names:
        tables = (await sql(link.legacy, logical.unreplicable_tables_sql(), database=name,
                            what=f"looking for tables without a key in {name}")).split()
        if tables:
            raise HandoffError(
                f"{link.legacy.label}: {len(tables)} table(s) of {name} have no primary key "
                f"nor replica identity, so logical replication cannot carry them (published, "
                f"their updates and deletes would fail on the legacy master): "
                f"{', '.join(tables[:10])}{' ...' if len(tables) > 10 else ''}; give each a "
                "primary key or `ALTER TABLE ... REPLICA IDENTITY FULL`, or use the "
                "dump-and-restore mode")


async def _copy_schema(link: Link, name: str) -> None:
    """The database made again on the new master from the legacy one's schema, empty: the
    subscription's initial copy fills it (rows already there would collide)."""
    spec = next(db for db in link.databases if db.name == name)
    source = database_source(spec, over_ssh=True)
    options = [*POSTGRESQL.dump_options(source), "--schema-only", "--no-publications",
               "--no-subscriptions"]
    script, secret = POSTGRESQL.remote_dump_script(source, options)
    await pipe(link.legacy, script, link.new, POSTGRESQL.restore_command(name),
               source_input=secret,
               what=f"schema of {name} from {link.legacy.label} into {link.new.label}")


async def _sync_states(link: Link) -> dict[str, tuple[int, int, bool] | None]:
    return {name: logical.parse_sync_state(await sql(
        link.new, logical.sync_state_sql(), database=name,
        what=f"reading the copy of {name}")) for name in link.names}


async def _all_synced(link: Link) -> bool:
    states = await _sync_states(link)
    return all(state is not None and state[0] == 0 and state[2] for state in states.values())


async def _wait_synced(link: Link) -> None:
    deadline = time.monotonic() + SYNC_S
    while not await _all_synced(link):
        if time.monotonic() > deadline:
            states = await _sync_states(link)
            said = "; ".join(
                f"{name}: " + ("no subscription" if state is None else
                               f"{state[0]} of {state[1]} tables still copying, apply worker "
                               f"{'running' if state[2] else 'not running'}")
                for name, state in states.items())
            raise HandoffError(f"{link.new.label} did not finish copying from "
                               f"{link.legacy.label} within {SYNC_S}s ({said}); its "
                               "PostgreSQL log says why")
        await asyncio.sleep(1)


# --- in the window -------------------------------------------------------------------------

async def promote(link: Link) -> str:
    """The legacy master is read-only already: wait until the new master has confirmed all it
    wrote, bring the sequences forward, and unlink the two. Every round trip here is
    downtime: the new master is asked once per database, the legacy master's clean-up is one
    session."""
    linked = await subscribed(link)
    missing = [name for name in link.names if name not in linked]
    if missing:
        raise HandoffError(f"{link.new.label} does not subscribe to {link.legacy.label} for "
                           f"{', '.join(missing)}: run `ferry cutover GROUP --prepare` first "
                           "(it sets the link up)")
    out = await sql(link.legacy, POSTGRESQL.master_position_sql(),
                    what="reading the old master's position")
    position = POSTGRESQL.parse_master_position(out)
    if position is None:
        raise HandoffError(f"{link.legacy.label} gave no WAL position: {out.strip()!r}")
    waited = await sql(link.legacy, logical.caught_up_sql(link.names, position.file, CATCH_UP_S),
                       what="waiting for the new master to catch up", timeout=CATCH_UP_S + 30)
    if waited.strip() != "t":
        raise HandoffError(f"{link.new.label} did not confirm {position.file} of "
                           f"{link.legacy.label} within {CATCH_UP_S}s; its PostgreSQL log "
                           "says why")
    moved = 0
    for name in link.names:
        statements = await sql(link.legacy, logical.sequences_sql(), database=name,
                               what=f"reading the sequences of {name}")
        moved += len(statements.strip().splitlines())
        await sql(link.new, statements + logical.unsubscribe_sql(), database=name,
                  what=f"bringing the sequences of {name} forward, unsubscribing")
    await _release_legacy(link)
    return (f"{link.new.label} confirmed {position.file}; {moved} sequence(s) brought forward; "
            "the subscription removed")


async def unlink(link: Link) -> None:
    """No subscription on the new master, no tunnel, and nothing of the hand-off left on the
    legacy master (slots, publications, the role): safe to repeat, and after a half-done
    set-up."""
    await _unsubscribe(link)
    await _release_legacy(link)


async def _release_legacy(link: Link) -> None:
    await close_tunnel(link)
    await sql(link.legacy, logical.release_sql(link.names),
              what="removing the slots, publications and role")


async def release_on_legacy(legacy: Remote, names: list[str]) -> None:
    """What a hand-off set up on the legacy master removed, its new master gone (a cancelled
    group): the tunnel, and the slots, which would otherwise keep every WAL file from then on."""
    await legacy.run(TUNNELS[POSTGRESQL.family].stop_script(), what="closing the tunnel")
    await sql(legacy, logical.release_sql(names), what="removing the slots, publications and role")


async def _unpublish(link: Link, name: str) -> None:
    await sql(link.legacy, logical.unpublish_sql(), database=name,
              what=f"removing the publication of {name}")


async def _unsubscribe(link: Link) -> None:
    for name in await subscribed(link):
        await sql(link.new, logical.unsubscribe_sql(), database=name,
                  what=f"removing the subscription of {name}")
