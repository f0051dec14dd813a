"""The replication hand-off's order of work and its secrets, against machines played by a
recording double (the lab test runs it on the real ones)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from services.cutover import replication
from shared.plan import load_plan_file
from shared.ssh import Remote
from tests.unit.test_plan import EXAMPLE
from tests.unit.test_render import shellcheck_binary

RUNNING = ("*** 1. row ***\n  Slave_IO_Running: Yes\n  Slave_SQL_Running: Yes\n"
           "  Master_Port: 3307\n  Seconds_Behind_Master: 0\n")


class Machine(Remote):
    """A machine that records each script and its stdin, and answers from `answers`
    (the first pattern found in the script or its stdin wins)."""

    def __init__(self, label: str, answers: dict[str, str | list[str]]):
        super().__init__(label, "192.0.2.1", 22, "root", Path("/nonexistent"), Path("/nonexistent"))
        object.__setattr__(self, "answers", answers)
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
    db1 = load_plan_file(EXAMPLE).vm("db1")
    return replication.Link(legacy, new, "10.20.0.12", list(db1.databases))


async def test_a_master_already_replicating_is_left_alone():
    legacy, new = Machine("legacy db1", {}), Machine("new db1", {"SHOW SLAVE STATUS": RUNNING})
    said = await replication.ensure_replicating(link(legacy, new))
    assert "already replicates" in said
    assert legacy.calls == [] and [c[0] for c in new.calls] == ["reading the replication status"]


async def test_no_binary_log_on_the_legacy_master_is_refused_before_anything_changes():
    legacy = Machine("legacy db1", {"@@log_bin": "0\t1\n"})
    new = Machine("new db1", {})
    with pytest.raises(replication.HandoffError, match="legacy db1 has no binary log"):
        await replication.ensure_replicating(link(legacy, new))
    assert [c[0] for c in legacy.calls] == ["reading the binary log settings"]
    assert [c[0] for c in new.calls] == ["reading the replication status"]


async def test_the_link_is_set_up_in_order_with_the_password_only_on_stdin(monkeypatch):
    piped = []

    async def pipe(source, produce, sink, consume, *, what, source_input=None, timeout=0):
        piped.append((source.label, produce, sink.label, consume))
    monkeypatch.setattr(replication, "pipe", pipe)
    legacy = Machine("legacy db1", {"@@log_bin": "1\t1\n", "ssh-keygen": "ssh-ed25519 AAAAkey\n"})
    new = Machine("new db1", {"SHOW SLAVE STATUS": ["", RUNNING]})
    said = await replication.ensure_replicating(link(legacy, new))
    assert "replicates from legacy db1 through the tunnel" in said
    assert [c[0] for c in legacy.calls] == [
        "reading the binary log settings", "making the tunnel's key", "starting the tunnel",
        "creating the replication user"]
    assert [c[0] for c in new.calls] == [
        "reading the replication status", "allowing the tunnel's key", "waiting for the tunnel",
        "pointing the new master at the tunnel", "starting replication",
        "reading the replication status"]
    # One dump of the master's databases with its position, into the new master.
    [(source, produce, sink, consume)] = piped
    assert (source, sink, consume) == ("legacy db1", "new db1", "mariadb")
    assert "--master-data=1 --databases -- shop" in produce
    # The same fresh password for the user and the link, never in a script (an argv).
    password = re.search(r"IDENTIFIED BY '([^']+)'", legacy.calls[-1][2])[1]
    assert f"MASTER_PASSWORD = '{password}'" in new.calls[3][2]
    assert all(password not in script for _, script, _ in legacy.calls + new.calls)
    assert "replicate_do_db = 'shop'" in new.calls[3][2]
    # The new master lets the legacy host's key do the one forward and nothing else.
    assert 'restrict,port-forwarding,permitlisten="127.0.0.1:3307"' in new.calls[1][1]


async def test_promotion_waits_for_the_old_masters_last_position_then_breaks_the_link():
    legacy = Machine("legacy db1", {"SHOW MASTER STATUS": "mysql-bin.000002\t4242\t\t\n"})
    new = Machine("new db1", {"SHOW SLAVE STATUS": RUNNING, "MASTER_POS_WAIT": "3\n"})
    said = await replication.promote(link(legacy, new))
    assert said == "new db1 caught up at mysql-bin.000002:4242 and was promoted"
    statements = [c[2] for c in new.calls]
    assert "SELECT MASTER_POS_WAIT('mysql-bin.000002', 4242, 120);\n" in statements
    promoted = next(s for s in statements if "RESET SLAVE ALL" in s)
    assert promoted.index("STOP SLAVE") < promoted.index("RESET SLAVE ALL")
    assert [c[0] for c in legacy.calls][-2:] == ["closing the tunnel",
                                                 "removing the replication user"]


async def test_promotion_refuses_a_master_that_never_replicated():
    legacy, new = Machine("legacy db1", {}), Machine("new db1", {"SHOW SLAVE STATUS": ""})
    with pytest.raises(replication.HandoffError, match="run `ferry cutover GROUP --prepare`"):
        await replication.promote(link(legacy, new))
    assert legacy.calls == []


async def test_a_new_master_that_does_not_catch_up_fails_the_window_before_promotion():
    legacy = Machine("legacy db1", {"SHOW MASTER STATUS": "mysql-bin.000002\t4242\t\t\n"})
    new = Machine("new db1", {"SHOW SLAVE STATUS": RUNNING, "MASTER_POS_WAIT": "-1\n"})
    with pytest.raises(replication.HandoffError, match="did not catch up"):
        await replication.promote(link(legacy, new))
    assert not any("RESET SLAVE" in c[2] for c in new.calls)


def test_the_tunnel_scripts_pass_shellcheck(tmp_path):
    scripts = {"key": replication.TUNNEL_KEY, "stop": replication.STOP_TUNNEL,
               "tunnel": replication._tunnel_script("10.20.0.12", 3306),
               "allow": replication._allow_key_script('restrict ssh-ed25519 AAAA ferry-handoff')}
    for name, script in scripts.items():
        path = tmp_path / f"{name}.sh"
        path.write_text("#!/bin/bash\nset -o errexit -o nounset -o pipefail\n" + script)
        done = subprocess.run([shellcheck_binary(), "-s", "bash", "-S", "warning", str(path)],
                              capture_output=True, text=True)
        assert done.returncode == 0, (name, done.stdout)
