"""PostgreSQL's hand-off (logical replication) against recording machines: what it refuses
before changing anything, the order of its work, and its password on stdin only. The
integration test runs it on real clusters; the lab on real VMs through the tunnel."""

from __future__ import annotations

import re

import pytest

from services.cutover import logical, replication
from shared.plan import DatabaseSpec
from tests.unit.test_cutover_replication import Machine

VERSION = {"SHOW server_version_num": "150008\n"}
READY = {"wal_level": "logical|10|10\n"}


def link(legacy: Machine, new: Machine) -> replication.Link:
    return replication.Link(legacy, new, "10.20.0.12",
                            [DatabaseSpec(engine="postgresql", name="stock")])


def changed(machine: Machine) -> list[str]:
    """What the machine was asked that is not a question."""
    return [what for what, _, _ in machine.calls
            if not what.startswith(("asking", "reading", "looking", "waiting"))]


@pytest.mark.parametrize("answer, refusal", [
    ("replica|10|10\n", "legacy db1 has wal_level = replica: the replication hand-off of "
                        "PostgreSQL needs wal_level = logical"),
    ("logical|1|10\n", "legacy db1 has 1 replication slots free (max_replication_slots): the "
                       "hand-off of 1 database(s) needs 2"),
    ("logical|10|1\n", "legacy db1 has max_wal_senders = 1"),
])
async def test_a_legacy_master_that_cannot_publish_is_refused_before_anything_changes(
        answer, refusal):
    legacy = Machine("legacy db1", {**VERSION, "wal_level": answer}, version=False)
    new = Machine("new db1", dict(VERSION), version=False)
    with pytest.raises(replication.HandoffError, match=re.escape(refusal)):
        await logical.ensure_replicating(link(legacy, new))
    assert changed(legacy) == [] and changed(new) == []


async def test_the_link_is_set_up_schema_first_with_the_password_only_on_stdin(monkeypatch):
    piped, opened = [], []

    async def pipe(source, produce, sink, consume, *, what, source_input=None, timeout=0):
        piped.append(what)

    async def open_tunnel(found):
        opened.append(found.tunnel.port)
    monkeypatch.setattr(logical, "pipe", pipe)
    monkeypatch.setattr(logical, "open_tunnel", open_tunnel)
    legacy = Machine("legacy db1", {**VERSION, **READY}, version=False)
    new = Machine("new db1", {**VERSION, "pg_subscription_rel": "0|3|t\n",
                              "FROM pg_subscription s JOIN": ""}, version=False)
    said = await logical.ensure_replicating(link(legacy, new))
    assert "copied stock from legacy db1" in said and opened == [5433]
    assert piped == ["schema of stock from legacy db1 into new db1"]
    assert changed(legacy) == ["removing stale slots", "removing the publication of stock",
                               "creating the replication role", "publishing stock"]
    assert changed(new) == ["subscribing stock to legacy db1"]
    role = next(stdin for what, _, stdin in legacy.calls
                if what == "creating the replication role")
    password = re.search(r"PASSWORD '([^']+)'", role)[1]
    subscribe = next(stdin for what, _, stdin in new.calls if what.startswith("subscribing"))
    assert f"password='{password}'" in subscribe.replace("''", "'")
    for machine in (legacy, new):
        assert not any(password in script for _, script, _ in machine.calls)


async def test_the_window_refuses_a_master_that_never_subscribed():
    legacy = Machine("legacy db1", dict(VERSION), version=False)
    new = Machine("new db1", dict(VERSION), version=False)
    with pytest.raises(replication.HandoffError, match="run `ferry cutover GROUP --prepare`"):
        await logical.promote(link(legacy, new))
    assert changed(legacy) == [] and changed(new) == []


async def test_the_window_waits_for_the_last_position_then_unlinks(monkeypatch):
    closed = []

    async def close_tunnel(found):
        closed.append(found.tunnel.port)
    monkeypatch.setattr(logical, "close_tunnel", close_tunnel)
    legacy = Machine("legacy db1", {**VERSION, "pg_current_wal_lsn": "0/3000148\n",
                                    "confirmed_flush_lsn >=": "t\n",
                                    "pg_sequences": "SELECT pg_catalog.setval(...);\n"},
                     version=False)
    new = Machine("new db1", {**VERSION, "FROM pg_subscription s JOIN": "stock\n"},
                  version=False)
    said = await logical.promote(link(legacy, new))
    assert said == ("new db1 confirmed 0/3000148; 1 sequence(s) brought forward; the "
                    "subscription removed")
    wait = next(stdin for what, _, stdin in legacy.calls
                if what == "waiting for the new master to catch up")
    assert "confirmed_flush_lsn >= '0/3000148'::pg_lsn" in wait
    assert changed(new) == ["bringing the sequences of stock forward, unsubscribing"]
    assert changed(legacy) == ["removing the slots, publications and role"]
    assert closed == [5433]
    release = legacy.calls[-1][2]
    assert release.index("pg_drop_replication_slot") < release.index("\\connect stock") < \
        release.index("DROP PUBLICATION") < release.index("\\connect postgres") < \
        release.index("DROP ROLE")
