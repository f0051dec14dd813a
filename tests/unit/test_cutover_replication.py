"""The replication hand-off's order of work and its secrets, against machines played by a
recording double (the lab test runs it on the real ones)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from services.cutover import replication
from services.cutover.tunnel import TUNNELS, Tunnel
from shared.databases import engine
from shared.host_keys import HostKey
from shared.plan import DatabaseSpec, load_plan_file
from shared.ssh import Remote
from tests.unit.test_plan import EXAMPLE
from tests.unit.test_render import shellcheck_binary

RUNNING = ("*** 1. row ***\n  Slave_IO_Running: Yes\n  Slave_SQL_Running: Yes\n"
           "  Master_Port: 3307\n  Seconds_Behind_Master: 0\n")
MARIADB_CLIENT = engine("mariadb").client()
# What both servers answer to SELECT VERSION(): the lab's MariaDB.
VERSION = {"SELECT VERSION()": "10.11.6-MariaDB-0+deb12u1\n"}


class Machine(Remote):
    """A machine that records each script and its stdin, and answers from `answers`
    (the first pattern found in the script or its stdin wins)."""

    def __init__(self, label: str, answers: dict[str, str | list[str]], version: bool = True):
        super().__init__(label, "192.0.2.1", 22, "root", Path("/nonexistent"), Path("/nonexistent"))
        object.__setattr__(self, "answers", {**(VERSION if version else {}), **answers})
        object.__setattr__(self, "calls", [])

    async def run(self, script: str, *, what: str, timeout: float = 0,
                  stdin: bytes | None = None) -> str:
        text = (stdin or b"").decode()
        self.calls.append((what, script, text))
        for pattern, answer in self.answers.items():
            if pattern in script or pattern in text:
                if isinstance(answer, list):
                    return answer.pop(0) if len(answer) > 1 else answer[0]
                return answer
        return ""


def link(legacy: Machine, new: Machine) -> replication.Link:
    """The example master's MariaDB link (its PostgreSQL database is not handed off this way)."""
    db1 = load_plan_file(EXAMPLE).vm("db1")
    return replication.Link(legacy, new, "10.20.0.12",
                            [db for db in db1.databases if db.engine == "mariadb"])


async def test_a_master_already_replicating_is_left_alone():
    legacy, new = Machine("legacy db1", {}), Machine("new db1", {"SHOW REPLICA STATUS": RUNNING})
    said = await replication.ensure_replicating(link(legacy, new))
    assert "already replicates" in said
    assert legacy.calls == [] and [c[0] for c in new.calls] == [
        "asking the server its version", "reading the replication status"]


async def test_no_binary_log_on_the_legacy_master_is_refused_before_anything_changes():
    legacy = Machine("legacy db1", {"@@log_bin": "0\t1\n"})
    new = Machine("new db1", {})
    with pytest.raises(replication.HandoffError, match="legacy db1 has no binary log"):
        await replication.ensure_replicating(link(legacy, new))
    assert [c[0] for c in legacy.calls] == ["asking the server its version",
                                            "reading the binary log settings"]
    assert [c[0] for c in new.calls] == ["asking the server its version",
                                         "reading the replication status"]


async def test_the_link_is_set_up_in_order_with_the_password_only_on_stdin(monkeypatch):
    piped = []

    async def pipe(source, produce, sink, consume, *, what, source_input=None, timeout=0):
        piped.append((source.label, produce, sink.label, consume))
    monkeypatch.setattr(replication, "pipe", pipe)
    legacy = Machine("legacy db1", {"@@log_bin": "1\t1\n", "ssh-keygen": "ssh-ed25519 AAAAkey\n"})
    new = Machine("new db1", {"SHOW REPLICA STATUS": ["", RUNNING]})
    said = await replication.ensure_replicating(link(legacy, new))
    assert "replicates from legacy db1 through the tunnel" in said
    assert [c[0] for c in legacy.calls] == [
        "asking the server its version",
        "reading the binary log settings", "making the tunnel's key", "starting the tunnel",
        "creating the replication user"]
    assert [c[0] for c in new.calls] == [
        "asking the server its version",
        "reading the replication status", "allowing the tunnel's key", "waiting for the tunnel",
        "pointing the new master at the tunnel", "starting replication",
        "reading the replication status"]
    # One dump of the master's databases with its position, into the new master.
    [(source, produce, sink, consume)] = piped
    assert (source, sink, consume) == ("legacy db1", "new db1", MARIADB_CLIENT)
    assert "--master-data=1 --databases -- shop" in produce
    # The same fresh password for the user and the link, never in a script (an argv).
    password = re.search(r"IDENTIFIED BY '([^']+)'", legacy.calls[-1][2])[1]
    assert f"MASTER_PASSWORD = '{password}'" in new.calls[4][2]
    assert all(password not in script for _, script, _ in legacy.calls + new.calls)
    assert "replicate_do_db = 'shop'" in new.calls[4][2]
    # The new master lets the legacy host's key do the one forward and nothing else.
    assert 'restrict,port-forwarding,permitlisten="127.0.0.1:3307"' in new.calls[2][1]


async def test_promotion_waits_for_the_old_masters_last_position_then_breaks_the_link():
    legacy = Machine("legacy db1", {"SHOW BINLOG STATUS": "mysql-bin.000002\t4242\t\t\n"})
    new = Machine("new db1", {"SHOW REPLICA STATUS": RUNNING, "MASTER_POS_WAIT": "3\n"})
    said = await replication.promote(link(legacy, new))
    assert said == "new db1 caught up at mysql-bin.000002:4242 and was promoted"
    statements = [c[2] for c in new.calls]
    assert "SELECT MASTER_POS_WAIT('mysql-bin.000002', 4242, 120);\n" in statements
    promoted = next(s for s in statements if "RESET REPLICA ALL" in s)
    assert promoted.index("STOP REPLICA") < promoted.index("RESET REPLICA ALL")
    assert [c[0] for c in legacy.calls][-2:] == ["closing the tunnel",
                                                 "removing the replication user"]


async def test_promotion_refuses_a_master_that_never_replicated():
    legacy, new = Machine("legacy db1", {}), Machine("new db1", {"SHOW REPLICA STATUS": ""})
    with pytest.raises(replication.HandoffError, match="run `ferry cutover GROUP --prepare`"):
        await replication.promote(link(legacy, new))
    assert legacy.calls == []


async def test_a_new_master_that_does_not_catch_up_fails_the_window_before_promotion():
    legacy = Machine("legacy db1", {"SHOW BINLOG STATUS": "mysql-bin.000002\t4242\t\t\n"})
    new = Machine("new db1", {"SHOW REPLICA STATUS": RUNNING, "MASTER_POS_WAIT": "-1\n"})
    with pytest.raises(replication.HandoffError, match="did not catch up"):
        await replication.promote(link(legacy, new))
    assert not any("RESET REPLICA" in c[2] for c in new.calls)


async def test_each_server_speaks_its_own_versions_statements(monkeypatch):
    """A legacy MySQL 5.7 master and a new master that answers 8.0.26: each gets its own
    forms (the legacy one's dump option, the new one's CHANGE REPLICATION SOURCE TO)."""
    piped = []

    async def pipe(source, produce, sink, consume, *, what, source_input=None, timeout=0):
        piped.append(produce)
    monkeypatch.setattr(replication, "pipe", pipe)
    legacy = Machine("legacy db1", {"VERSION()": "5.7.44-log\n", "@@log_bin": "1\t1\n",
                                    "ssh-keygen": "ssh-ed25519 AAAAkey\n"}, version=False)
    running = RUNNING.replace("Slave_", "Replica_").replace("Master_", "Source_")
    new = Machine("new db1", {"VERSION()": "8.0.26\n", "SHOW REPLICA STATUS": ["", running]},
                  version=False)
    mysql_link = replication.Link(legacy, new, "10.20.0.12", [
        DatabaseSpec(engine="mysql", name=db.name) for db in link(legacy, new).databases])
    await replication.ensure_replicating(mysql_link)
    assert "--master-data=1 --databases -- shop" in piped[0]
    user = next(c[2] for c in legacy.calls if c[0] == "creating the replication user")
    assert "CREATE USER IF NOT EXISTS 'ferry_handoff'@'127.0.0.1'" in user
    point = next(c[2] for c in new.calls if c[0] == "pointing the new master at the tunnel")
    assert "STOP REPLICA;" in point and "CHANGE REPLICATION SOURCE TO SOURCE_HOST" in point
    assert "CHANGE REPLICATION FILTER REPLICATE_DO_DB = (`shop`);" in point


async def test_a_server_of_another_engine_or_too_old_is_refused_naming_it():
    """The plan says mysql, the legacy server answers MariaDB (or a MySQL older than 5.7):
    refused, naming the machine and the version, before anything changes."""
    for answer, words in [("10.11.6-MariaDB\n", "which is MariaDB, not MySQL"),
                          ("5.6.51-log\n", "older than MySQL 5.7.9")]:
        legacy = Machine("legacy db1", {"VERSION()": answer}, version=False)
        new = Machine("new db1", {"VERSION()": answer}, version=False)
        mysql_link = replication.Link(legacy, new, "10.20.0.12", [
            DatabaseSpec(engine="mysql", name="shop")])
        with pytest.raises(replication.HandoffError, match=f"new db1: .*{words}"):
            await replication.promote(mysql_link)
        assert [c[0] for c in new.calls] == ["asking the server its version"]


@pytest.mark.parametrize("tunnel", list(TUNNELS.values()), ids=list(TUNNELS))
def test_the_tunnel_scripts_pass_shellcheck(tmp_path, tunnel):
    scripts = {"key": tunnel.key_script(), "stop": tunnel.stop_script(),
               "tunnel": tunnel.start_script("10.20.0.12", 3306),
               "allow": tunnel.allow_key_script("ssh-ed25519 AAAA"),
               "forget": tunnel.forget_key_script()}
    for name, script in scripts.items():
        path = tmp_path / f"{name}.sh"
        path.write_text("#!/bin/bash\nset -o errexit -o nounset -o pipefail\n" + script)
        done = subprocess.run([shellcheck_binary(), "-s", "bash", "-S", "warning", str(path)],
                              capture_output=True, text=True)
        assert done.returncode == 0, (name, done.stdout)


def known_hosts_written(script: str) -> str:
    """The command of a tunnel's start script that writes its known_hosts."""
    return re.search(r"^printf %s .*?> \S+/known_hosts$", script, re.S | re.M).group(0)


def test_the_tunnel_is_held_to_the_new_masters_pinned_keys(tmp_path):
    """With the new master's reported keys, the tunnel's known_hosts holds exactly them (the
    line OpenSSH finds for its address) and ssh checks strictly; without, it starts empty and
    trusts the first key (as before keys were reported)."""
    key = HostKey("ssh-ed25519",
                  "AAAAC3NzaC1lZDI1NTE5AAAAIJTpXPEob9HRsjB7UvtG91q7bWgXik5v/hOF6KllZrNT")
    folder = tmp_path / "tunnel"
    folder.mkdir()
    tunnel = Tunnel(port=3307, folder=str(folder), mark="ferry-handoff")
    pinned = tunnel.start_script("10.20.0.12", 3306, [key])
    assert "StrictHostKeyChecking=yes" in pinned and "accept-new" not in pinned
    subprocess.run(["bash", "-c", known_hosts_written(pinned)], check=True)
    assert (folder / "known_hosts").read_text() == f"10.20.0.12 {key.line}\n"
    trusting = tunnel.start_script("10.20.0.12", 3306)
    assert "StrictHostKeyChecking=accept-new" in trusting
    subprocess.run(["bash", "-c", known_hosts_written(trusting)], check=True)
    assert (folder / "known_hosts").read_text() == ""
