"""PostgreSQL in the cutover's window, with real PostgreSQL 15 clusters of this machine standing
for the legacy master and the new one: the replication hand-off by logical replication (set up,
caught up in the window with the legacy master read-only, sequences brought forward, unlinked
on both sides), its refusals before anything changes, and the dump-and-restore mode's restore.

The machines are local shells (a test double for SSH at the edge); the clusters, psql,
pg_dump and pg_restore and every statement are the product's own. The SSH tunnel is not here
(it needs sshd on both ends: the lab runs it); the subscription reaches the legacy cluster's
port directly, as it reaches the tunnel's on a VM."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.cutover import logical, replication
from services.cutover.replication import HandoffError, Link
from services.cutover.tunnel import Tunnel
from shared.databases import engine
from shared.databases import postgresql_logical as names
from shared.plan import DatabaseSpec
from shared.ssh import Remote, pipe
from tests.chaos.infra import PG_BIN, PrivatePostgres

pytestmark = pytest.mark.integration
POSTGRESQL = engine("postgresql")
ROWS = ("SELECT count(*) || ':' || md5(coalesce(string_agg(id || '/' || name, ',' ORDER BY id), "
        "'')) FROM items;")


@dataclass(frozen=True)
class Shell(Remote):
    """A "machine" that is this one, its psql pointed at one cluster (by PGHOST and PGPORT, as
    a VM's psql finds its own cluster's socket)."""

    cluster_socket: str = ""
    cluster_port: int = 0

    def argv(self, script: str) -> list[str]:
        env = (f"export PGHOST={shlex.quote(self.cluster_socket)} "
               f"PGPORT={self.cluster_port}\n")
        return ["bash", "-o", "errexit", "-o", "nounset", "-o", "pipefail", "-c", env + script]


def shell(label: str, cluster: PrivatePostgres) -> Shell:
    return Shell(label, "127.0.0.1", 22, "root", Path("/nonexistent"), Path("/nonexistent"),
                 cluster_socket=str(cluster.folder), cluster_port=cluster.port)


def psql(cluster: PrivatePostgres, sql: str, database: str = "postgres") -> str:
    done = subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "psql"), "-X", "-q",
                           "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(cluster.folder),
                           "-p", str(cluster.port), "-d", database, "-c", sql],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(done.stderr)
    return done.stdout.strip()


def cluster(folder: Path, *settings: str) -> PrivatePostgres:
    made = PrivatePostgres(folder)
    made.init()
    with (made.data / "postgresql.conf").open("a") as conf:
        conf.write("".join(f"{line}\n" for line in settings))
    made.start()
    return made


@pytest.fixture
def clusters():
    """The legacy master (wal_level logical, a seeded `stock` owned by `stock_app`) and the
    new one as its first boot leaves it (the role, the database as archived)."""
    if PG_BIN is None or os.geteuid() != 0:
        pytest.skip("needs root and the PostgreSQL server binaries")
    folder = Path(f"/tmp/ferry-handoff-{uuid.uuid4().hex[:8]}")
    made = []
    try:
        legacy = cluster(folder / "legacy", "wal_level = logical")
        made.append(legacy)
        new = cluster(folder / "new")
        made.append(new)
        for each in (legacy, new):
            psql(each, "CREATE ROLE stock_app LOGIN PASSWORD 'stock-pw'")
        psql(legacy, "CREATE DATABASE stock OWNER stock_app")
        psql(legacy, "SET ROLE stock_app; CREATE TABLE items (id serial PRIMARY KEY, "
                     "name text NOT NULL); INSERT INTO items (name) SELECT 'item ' || g "
                     "FROM generate_series(1, 500) g;", "stock")
        subprocess.run(f"runuser -u postgres -- {PG_BIN}/pg_dump -Fc -h {legacy.folder} "
                       f"-p {legacy.port} stock | runuser -u postgres -- {PG_BIN}/pg_restore "
                       f"--create -h {new.folder} -p {new.port} -d postgres",
                       shell=True, check=True, capture_output=True)
        yield legacy, new
    finally:
        for each in made:
            each.destroy()
        subprocess.run(["rm", "-rf", str(folder)])


def link_between(legacy: PrivatePostgres, new: PrivatePostgres) -> Link:
    spec = DatabaseSpec(engine="postgresql", name="stock", port=legacy.port, user="postgres")
    return Link(shell("legacy db1", legacy), shell("new db1", new), "127.0.0.1", [spec])


@pytest.fixture
def direct(monkeypatch, clusters):
    """No SSH tunnel here: the subscription's port is the legacy cluster's own."""
    legacy, _ = clusters
    monkeypatch.setitem(replication.TUNNELS, "postgresql",
                        Tunnel(port=legacy.port, folder="/nonexistent", mark="test"))

    async def nothing(link):
        pass
    monkeypatch.setattr(logical, "open_tunnel", nothing)
    monkeypatch.setattr(logical, "close_tunnel", nothing)
    return clusters


def left_on_the_legacy_master(legacy: PrivatePostgres) -> str:
    return psql(legacy, "SELECT (SELECT count(*) FROM pg_replication_slots) || ' slots, ' || "
                        "(SELECT count(*) FROM pg_roles WHERE rolname = 'ferry_handoff') || "
                        "' roles, ' || (SELECT count(*) FROM pg_publication) || ' publications'",
                "stock")


async def test_the_new_master_subscribes_then_takes_over_with_every_row_and_sequence(direct):
    legacy, new = direct
    link = link_between(legacy, new)
    psql(new, "INSERT INTO items (name) VALUES ('only on the new master')", "stock")

    said = await logical.ensure_replicating(link)
    assert "copied stock from legacy db1" in said, said
    assert psql(new, ROWS, "stock") == psql(legacy, ROWS, "stock")  # the stray row is gone
    assert "already subscribes" in await logical.ensure_replicating(link)

    # The legacy site keeps writing until the window.
    psql(legacy, "INSERT INTO items (name) SELECT 'late ' || g FROM generate_series(1, 200) g;"
                 "UPDATE items SET name = name || ' (changed)' WHERE id % 7 = 0;"
                 "DELETE FROM items WHERE id % 11 = 0;", "stock")
    legacy_shell = link.legacy
    await legacy_shell.run(POSTGRESQL.client(), what="read-only",
                           stdin=POSTGRESQL.read_only_sql(True).encode())
    with pytest.raises(AssertionError, match="read-only transaction"):
        psql(legacy, "INSERT INTO items (name) VALUES ('too late')", "stock")

    started = time.monotonic()
    said = await logical.promote(link)
    took = time.monotonic() - started
    assert "1 sequence(s) brought forward" in said, said
    assert psql(new, ROWS, "stock") == psql(legacy, ROWS, "stock")
    last = int(psql(legacy, "SELECT last_value FROM items_id_seq", "stock"))
    assert int(psql(new, "SELECT nextval('items_id_seq')", "stock")) == last + 1
    assert psql(new, "SELECT count(*) FROM pg_subscription") == "0"
    assert left_on_the_legacy_master(legacy) == "0 slots, 0 roles, 0 publications"
    print(f"\nPostgreSQL hand-off in the window: {took:.1f}s ({said})")

    # The rollback: the legacy master takes writes again; the next run links again.
    await legacy_shell.run(POSTGRESQL.client(), what="writable",
                           stdin=POSTGRESQL.read_only_sql(False).encode())
    psql(legacy, "INSERT INTO items (name) VALUES ('after the rollback')", "stock")
    assert "copied stock" in await logical.ensure_replicating(link)
    assert psql(new, ROWS, "stock") == psql(legacy, ROWS, "stock")
    await logical.unlink(link)
    assert left_on_the_legacy_master(legacy) == "0 slots, 0 roles, 0 publications"


async def test_a_table_without_a_key_is_refused_before_anything_changes(direct):
    legacy, new = direct
    psql(legacy, "CREATE TABLE notes (body text)", "stock")
    before = psql(new, ROWS, "stock")
    with pytest.raises(HandoffError, match=r"1 table\(s\) of stock have no primary key.*"
                                           r"public\.notes"):
        await logical.ensure_replicating(link_between(legacy, new))
    assert left_on_the_legacy_master(legacy) == "0 slots, 0 roles, 0 publications"
    assert psql(new, ROWS, "stock") == before


async def test_a_legacy_master_without_logical_wal_is_refused_before_anything_changes(direct):
    """The new cluster stands for a legacy master left at wal_level replica."""
    legacy, new = direct
    with pytest.raises(HandoffError, match="legacy db1 has wal_level = replica: the "
                                           "replication hand-off of PostgreSQL needs "
                                           "wal_level = logical"):
        await logical.ensure_replicating(link_between(new, legacy))
    assert left_on_the_legacy_master(new) == "0 slots, 0 roles, 0 publications"


async def test_the_window_restore_replaces_the_new_masters_database(clusters):
    """Mode dump-and-restore: the legacy database's dump replaces the new master's copy, with
    a session open on it (ended first)."""
    legacy, new = clusters
    psql(legacy, "INSERT INTO items (name) VALUES ('written after the archive')", "stock")
    session = subprocess.Popen(["runuser", "-u", "postgres", "--", str(PG_BIN / "psql"), "-X",
                                "-h", str(new.folder), "-p", str(new.port), "-d", "stock"],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        spec = DatabaseSpec(engine="postgresql", name="stock", port=legacy.port, user="postgres")
        from shared.databases import database_source
        script, secret = POSTGRESQL.remote_dump_script(database_source(spec, over_ssh=True))
        await pipe(shell("legacy db1", legacy), script, shell("new db1", new),
                   POSTGRESQL.restore_command("stock"), source_input=secret, what="restore")
    finally:
        session.kill()
        session.wait()
    assert psql(new, ROWS, "stock") == psql(legacy, ROWS, "stock")
    assert psql(new, "SELECT pg_get_userbyid(datdba) FROM pg_database "
                     "WHERE datname = 'stock'") == "stock_app"


def test_slot_names_are_valid_and_distinct():
    assert names.slot_name("Stock") != names.slot_name("stock")
    for name in ("stock", "Stock", "x" * 63):
        slot = names.slot_name(name)
        assert len(slot) <= 63 and slot.replace("_", "").isalnum() and slot == slot.lower()
