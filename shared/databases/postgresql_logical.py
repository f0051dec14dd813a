"""The SQL of PostgreSQL's replication hand-off, by logical replication (pure: the cutover's
logical.py runs it, on the legacy master, "the publisher", and on the new master, "the
subscriber").

Logical rather than streaming replication: the new master is a cluster of its own (its own
system identifier, its standbys already streaming from it), and logical replication works
across major versions, so a legacy 12 hands off to a new 16 as well as to a 12. What it does not
carry: DDL (the schema is copied once, first), sequences (brought forward in the window),
large objects and unlogged tables. Tables it cannot replicate (no primary key nor replica
identity: their updates and deletes would fail on the legacy master once published) are
refused before anything changes.

Every name here is Ferryman's own (`ferry_handoff`, slots `ferry_<database>_<hash>`), so a
later run, a rollback or the window's clean-up finds exactly what an earlier one made.
"""

from __future__ import annotations

import hashlib
import re
from typing import Sequence

from shared.databases.postgresql import conninfo, identifier, text

PUBLICATION = "ferry_handoff"
SUBSCRIPTION = "ferry_handoff"
ROLE = "ferry_handoff"
# A session on the legacy master after the window made it read-only writes again (for
# itself only): the hand-off's own clean-up there.
WRITABLE_SESSION = "SET default_transaction_read_only = off;"
_USER_SCHEMAS = ("nspname NOT IN ('pg_catalog', 'information_schema') "
                 "AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp\\_%'")


def slot_name(database: str) -> str:
    """The database's replication slot on the legacy master: lowercase letters, digits and '_'
    as slot names must be, unique per database name (two names differing by case only get
    different hashes)."""
    readable = re.sub(r"[^a-z0-9_]", "_", database.lower())[:40]
    return f"ferry_{readable}_{hashlib.sha256(database.encode()).hexdigest()[:8]}"


def _slots(databases: Sequence[str]) -> str:
    names = ", ".join(text(slot_name(name)) for name in databases)
    return f"ARRAY[{names}]::name[]"


# --- the publisher's readiness, asked before anything changes -------------------------------------

def publisher_check_sql() -> str:
    """wal_level, the replication slots free (Ferryman's own count as free: a later run drops
    and makes them again) and max_wal_senders, in one row."""
    return ("SELECT current_setting('wal_level'), "
            "current_setting('max_replication_slots')::int - (SELECT count(*) FROM "
            "pg_replication_slots WHERE slot_name NOT LIKE 'ferry\\_%'), "
            "current_setting('max_wal_senders');")


def publisher_problem(answer: str, databases: int) -> str | None:
    """Why the legacy master cannot publish `databases` databases (worded after its label)."""
    fields = answer.strip().split("|")
    if len(fields) != 3:
        return f"answered {answer.strip()[:200]!r} about its replication settings"
    level, free, senders = fields
    if level != "logical":
        return (f"has wal_level = {level}: the replication hand-off of PostgreSQL needs "
                "wal_level = logical (set it in postgresql.conf and restart the server), or "
                "use the dump-and-restore mode")
    # One slot per database, and one more for an initial copy's table sync at a time.
    needed = databases + 1
    if int(free) < needed:
        return (f"has {free} replication slots free (max_replication_slots): the hand-off of "
                f"{databases} database(s) needs {needed}")
    if int(senders) < needed:
        return (f"has max_wal_senders = {senders}: the hand-off of {databases} database(s) "
                f"needs {needed}")
    return None


def unreplicable_tables_sql() -> str:
    """The database's tables that logical replication cannot carry: no primary key and no
    replica identity (nothing would say which row an UPDATE or DELETE meant). One per line."""
    return ("SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND {_USER_SCHEMAS} "
            "AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS ("
            "SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))) "
            "ORDER BY 1;")


# --- the publisher: a role, a publication per database --------------------------------------------

def role_sql(password: str) -> str:
    """The role the subscriptions log in as: replication, and (per database: read_grant_sql)
    reading the tables for the initial copy. Its password set again on a later run."""
    return "\n".join([
        WRITABLE_SESSION,
        "SET password_encryption = 'scram-sha-256';",
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {text(ROLE)}) "
        f"THEN CREATE ROLE {identifier(ROLE)}; END IF; END $$;",
        f"ALTER ROLE {identifier(ROLE)} WITH REPLICATION LOGIN PASSWORD {text(password)};",
    ])


def publish_sql() -> str:
    """In one database: the role may read every table, and the publication of all of them."""
    return "\n".join([
        WRITABLE_SESSION,
        "DO $$ DECLARE s name; BEGIN "
        f"FOR s IN SELECT nspname FROM pg_namespace WHERE {_USER_SCHEMAS} LOOP "
        f"EXECUTE format('GRANT USAGE ON SCHEMA %I TO {identifier(ROLE)}', s); "
        f"EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {identifier(ROLE)}', s); "
        "END LOOP; "
        f"IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = {text(PUBLICATION)}) THEN "
        f"CREATE PUBLICATION {identifier(PUBLICATION)} FOR ALL TABLES; END IF; END $$;",
    ])


def drop_slots_sql(databases: Sequence[str]) -> str:
    """The databases' slots gone from the publisher: a slot nobody reads keeps every WAL file
    from then on, until the legacy master's disk fills. A walsender still on one is ended
    first; its slot is free a moment later."""
    slots = _slots(databases)
    return "\n".join([
        WRITABLE_SESSION,
        "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots "
        f"WHERE slot_name = ANY({slots}) AND active_pid IS NOT NULL;",
        "DO $$ DECLARE s name; BEGIN FOR i IN 1..100 LOOP "
        f"FOR s IN SELECT slot_name FROM pg_replication_slots WHERE slot_name = ANY({slots}) "
        "AND NOT active LOOP PERFORM pg_drop_replication_slot(s); END LOOP; "
        f"EXIT WHEN NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = ANY({slots})); "
        "PERFORM pg_sleep(0.1); END LOOP; END $$;",
        f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = ANY({slots});",
    ])


def unpublish_sql() -> str:
    """In one database: no publication, nothing granted to the role (so it can be dropped)."""
    return "\n".join([
        WRITABLE_SESSION,
        f"DROP PUBLICATION IF EXISTS {identifier(PUBLICATION)};",
        f"DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = {text(ROLE)}) THEN "
        f"EXECUTE 'DROP OWNED BY {identifier(ROLE)}'; END IF; END $$;",
    ])


def drop_role_sql() -> str:
    return f"{WRITABLE_SESSION}\nDROP ROLE IF EXISTS {identifier(ROLE)};"


def release_sql(databases: Sequence[str]) -> str:
    """The whole clean-up of the publisher in one psql session (each database reached by
    `\\connect`): the slots, each database's publication and grants, then the role. One
    round trip to the legacy host instead of two and one per database."""
    lines = [drop_slots_sql(databases)]
    for name in databases:
        lines += [connect(name), unpublish_sql()]
    lines += [connect("postgres"), drop_role_sql()]
    return "\n".join(lines)


def connect(database: str) -> str:
    """psql's meta-command that moves the session to `database` (a plan's name: letters,
    digits and '_', which psql takes as they are)."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", database):
        raise ValueError(f"database name {database!r} cannot follow psql's \\connect")
    return f"\\connect {database}"


# --- the subscriber -----------------------------------------------------------------------------

def subscribed_sql() -> str:
    """The databases of the new master that hold Ferryman's subscription, one per line."""
    return ("SELECT d.datname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid "
            f"WHERE s.subname = {text(SUBSCRIPTION)} ORDER BY 1;")


def subscribe_sql(database: str, port: int, password: str) -> str:
    """In `database` (its schema there, its tables empty): the subscription to the legacy
    master's publication through the tunnel on `port`, copying the tables first. It holds the
    password: stdin only, and dropped in the window."""
    connection = conninfo(host="127.0.0.1", port=str(port), dbname=database, user=ROLE,
                          password=password, connect_timeout="15")
    return (f"CREATE SUBSCRIPTION {identifier(SUBSCRIPTION)} CONNECTION {text(connection)} "
            f"PUBLICATION {identifier(PUBLICATION)} "
            f"WITH (slot_name = {text(slot_name(database))}, copy_data = true);")


def unsubscribe_sql() -> str:
    """In one database: Ferryman's subscription gone, its slot left alone (the publisher's
    side drops it: drop_slots_sql), so this works with the tunnel down too."""
    name = identifier(SUBSCRIPTION)
    return (f"DO $$ BEGIN IF EXISTS (SELECT FROM pg_subscription WHERE subname = "
            f"{text(SUBSCRIPTION)} AND subdbid = (SELECT oid FROM pg_database WHERE datname = "
            f"current_database())) THEN EXECUTE 'ALTER SUBSCRIPTION {name} DISABLE'; "
            f"EXECUTE 'ALTER SUBSCRIPTION {name} SET (slot_name = NONE)'; "
            f"EXECUTE 'DROP SUBSCRIPTION {name}'; END IF; END $$;")


def sync_state_sql() -> str:
    """In one database: its tables not yet copied, all its tables, and whether the
    subscription's apply worker runs ("2|5|t")."""
    return ("SELECT (SELECT count(*) FROM pg_subscription_rel WHERE srsubstate NOT IN ('r', 's'))"
            ", (SELECT count(*) FROM pg_subscription_rel), EXISTS (SELECT FROM "
            "pg_stat_subscription w JOIN pg_subscription s ON s.oid = w.subid "
            f"WHERE s.subname = {text(SUBSCRIPTION)} AND w.pid IS NOT NULL AND w.relid IS NULL "
            "AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()));")


def parse_sync_state(answer: str) -> tuple[int, int, bool] | None:
    fields = answer.strip().split("|")
    if len(fields) != 3 or not (fields[0].isdigit() and fields[1].isdigit()):
        return None
    return int(fields[0]), int(fields[1]), fields[2] == "t"


# --- in the window --------------------------------------------------------------------------------

def caught_up_sql(databases: Sequence[str], lsn: str, timeout_s: int) -> str:
    """On the publisher: waits until every database's subscriber has confirmed everything up
    to `lsn` (the legacy master's last position once read-only), then says whether they
    have ("t")."""
    slots, target = _slots(databases), f"{text(lsn)}::pg_lsn"
    done = (f"(SELECT count(*) FROM pg_replication_slots WHERE slot_name = ANY({slots}) "
            f"AND confirmed_flush_lsn >= {target}) = {len(databases)}")
    return (f"DO $$ BEGIN FOR i IN 1..{max(1, timeout_s) * 10} LOOP EXIT WHEN {done}; "
            f"PERFORM pg_sleep(0.1); END LOOP; END $$;\nSELECT {done};")


def sequences_sql() -> str:
    """On the publisher, in one database: the statements that set each sequence of the
    subscriber where the legacy master's stands (logical replication does not carry them),
    one per line."""
    return ("SELECT format('SELECT pg_catalog.setval(%L, %s, true);', "
            "format('%I.%I', schemaname, sequencename), last_value) "
            "FROM pg_sequences WHERE last_value IS NOT NULL ORDER BY 1;")
