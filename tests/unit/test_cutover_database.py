"""The cutover's database step against recording machines: the engine's SQL on stdin, its
restore command at the end of the dump's pipe, and an engine that cannot do the run's mode
refused before the old master is touched."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from services.cutover import steps
from shared import databases
from services.cutover.steps import GroupRunbook, Machine, StepFailed
from shared.plan import DatabaseSpec, load_plan_file
from shared.providers.fake import FakeProvider
from tests.unit.test_cutover_replication import Machine as Recorder
from tests.unit.test_plan import EXAMPLE


def runbook(tmp_path: Path, mode: str, engine: str = "mariadb"):
    plan = load_plan_file(EXAMPLE)
    legacy, new = Recorder("legacy db1", {}), Recorder("new db1", {})
    db1 = plan.vm("db1")
    # The example master's MariaDB database, of `engine` (not its PostgreSQL one).
    db1 = db1.model_copy(update={"databases": [
        DatabaseSpec(engine=engine, name=db.name) for db in db1.databases
        if db.engine == "mariadb"]})
    machine = Machine(db1, uuid.uuid4(), str(db1.network.address.ip), new, legacy)
    book = GroupRunbook(plan, [machine], FakeProvider(), None, tmp_path, database_mode=mode)
    return book, legacy, new


async def test_dump_and_restore_makes_the_master_read_only_then_pipes_into_the_restore(
        tmp_path: Path, monkeypatch):
    """MariaDB: read-only on by SQL on the client's stdin, each database's dump piped into
    its restore command on the new master; the undo turns read-only off the same way."""
    piped = []

    async def pipe(source, produce, sink, consume, *, what, source_input=None, timeout=0):
        piped.append((source.label, sink.label, consume))
    monkeypatch.setattr(steps, "pipe", pipe)
    book, legacy, new = runbook(tmp_path, "dump-and-restore")
    await book.database()
    client = databases.engine("mariadb").client()
    assert [(what, script, stdin) for what, script, stdin in legacy.calls] == [
        ("asking the server its version", f"{client} -N -B", "SELECT VERSION();\n"),
        ("making the old master read-only", client, "SET GLOBAL read_only = ON;\n")]
    assert piped == [("legacy db1", "new db1", f"{client} --database=shop")]
    await book.database_undo()
    assert legacy.calls[-1] == ("making the old master writable again", client,
                                "SET GLOBAL read_only = OFF;\n")


async def test_a_mysql_master_is_made_read_only_for_its_super_users_too(tmp_path: Path,
                                                                        monkeypatch):
    """MySQL 8.0: super_read_only as well, set after read_only and cleared before it."""
    async def pipe(*args, **kwargs):
        pass
    monkeypatch.setattr(steps, "pipe", pipe)
    book, legacy, new = runbook(tmp_path, "dump-and-restore", engine="mysql")
    legacy.answers["SELECT VERSION()"] = "8.0.36-0ubuntu0.22.04.1\n"
    await book.database()
    assert legacy.calls[1][1:] == (
        "mysql", "SET GLOBAL read_only = ON; SET GLOBAL super_read_only = ON;\n")
    await book.database_undo()
    assert legacy.calls[-1][2] == "SET GLOBAL super_read_only = OFF; SET GLOBAL read_only = OFF;\n"


@pytest.mark.parametrize("mode, flag, message", [
    ("dump-and-restore", "restores", "shop: the window's dump-and-restore handles MariaDB and "
                                     "MySQL only so far, not postgresql"),
    ("replication", "hands_off", "shop: the replication hand-off handles MariaDB and MySQL "
                                 "only so far"),
])
async def test_an_engine_that_cannot_do_the_mode_is_refused_before_anything_changes(
        tmp_path: Path, monkeypatch, mode: str, flag: str, message: str):
    """An engine without the mode (PostgreSQL with the flag turned off here: every engine has
    both today): the step fails with the mode's message without a command on either machine,
    and its undo leaves the old master alone."""
    monkeypatch.setattr(type(databases.engine("postgresql")), flag, False)
    book, legacy, new = runbook(tmp_path, mode, engine="postgresql")
    with pytest.raises(StepFailed) as caught:
        await book.database()
    assert str(caught.value) == message
    await book.database_undo()
    assert legacy.calls == [] and new.calls == []


async def test_postgresql_in_the_window_is_read_only_then_each_database_replaced(
        tmp_path: Path, monkeypatch):
    """Dump-and-restore: read-only on (sessions ended), no subscription on the new master to
    unlink, then pg_dump's custom format piped into the restore that replaces the database."""
    piped = []

    async def pipe(source, produce, sink, consume, *, what, source_input=None, timeout=0):
        piped.append((produce, consume))
    monkeypatch.setattr(steps, "pipe", pipe)
    book, legacy, new = runbook(tmp_path, "dump-and-restore", engine="postgresql")
    legacy.answers["SHOW server_version_num"] = "150008\n"
    new.answers["SHOW server_version_num"] = "150008\n"
    await book.database()
    postgresql = databases.engine("postgresql")
    assert [what for what, _, _ in legacy.calls] == ["asking the server its version",
                                                     "making the old master read-only"]
    assert legacy.calls[1][2] == postgresql.read_only_sql(True) + "\n"
    assert [what for what, _, _ in new.calls] == ["reading the subscriptions"]
    assert len(piped) == 1 and "pg_dump --format=custom" in piped[0][0]
    assert piped[0][1] == postgresql.restore_command("shop")


async def test_a_master_holding_both_engines_hands_off_each_through_its_own_link(
        tmp_path: Path, monkeypatch):
    """MariaDB by the binary log, PostgreSQL by logical replication, in the plan's order."""
    calls = []

    def recorder(kind):
        async def record(link):
            calls.append((kind, link.engine.family, link.names, link.tunnel.port))
            return f"{kind} {link.names}"
        return record
    for module, kind in ((steps.replication, "binlog"), (steps.logical, "logical")):
        monkeypatch.setattr(module, "ensure_replicating", recorder(kind))
    book, _, _ = runbook(tmp_path, "replication")
    db1 = book.machines[0]
    both = db1.vm.model_copy(update={"databases": [
        DatabaseSpec(engine="mariadb", name="shop"),
        DatabaseSpec(engine="postgresql", name="stock"),
        DatabaseSpec(engine="postgresql", name="audit")]})
    book.machines[0] = Machine(both, db1.vm_id, db1.address, db1.new, db1.legacy)
    said = await book.replicate_from_legacy()
    assert calls == [("binlog", "mysql", ["shop"], 3307),
                     ("logical", "postgresql", ["stock", "audit"], 5433)]
    assert said == "binlog ['shop']; logical ['stock', 'audit']"
