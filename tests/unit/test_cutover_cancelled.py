"""A group cancelled after a prepared cutover run: what the replication hand-off set up on its
legacy masters is removed (the cutover's `group.cancelled` handler), per engine family, against
recording machines; a master that cannot be reached is logged, never in the way of the
cancel."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from services.cutover import finalize
from services.cutover.tunnel import TUNNELS
from shared.plan import DatabaseSpec, load_plan_file
from tests.unit.test_cutover_replication import Machine
from tests.unit.test_plan import EXAMPLE


def context(machines: dict[str, Machine]) -> SimpleNamespace:
    def legacy(label: str, source, control: Path) -> Machine:
        return machines.setdefault(label, Machine(label, {
            "SHOW server_version_num": "150008\n"}))
    return SimpleNamespace(deps=SimpleNamespace(cutover=SimpleNamespace(legacy=legacy)))


def both_engines_on_db1():
    plan = load_plan_file(EXAMPLE)
    vms = [vm.model_copy(update={"databases": [DatabaseSpec(engine="mariadb", name="shop"),
                                               DatabaseSpec(engine="postgresql", name="stock")]})
           if vm.name == "db1" else vm for vm in plan.vms]
    return plan.model_copy(update={"vms": vms})


async def test_each_engines_link_is_released_on_the_legacy_master_only():
    machines: dict[str, Machine] = {}
    await finalize._release_handoffs(context(machines), both_engines_on_db1())
    assert list(machines) == ["legacy db1"]  # app1 holds no database, db2 is a replica
    calls = machines["legacy db1"].calls
    assert [what for what, _, _ in calls] == [
        "closing the tunnel", "asking the server its version", "removing the replication user",
        "closing the tunnel", "removing the slots, publications and role"]
    assert calls[0][1] == TUNNELS["mysql"].stop_script()
    assert calls[3][1] == TUNNELS["postgresql"].stop_script()
    assert "DROP USER IF EXISTS 'ferry_handoff'" in calls[2][2]
    assert "pg_drop_replication_slot" in calls[4][2] and "DROP ROLE" in calls[4][2]


async def test_a_legacy_master_out_of_reach_is_logged_and_the_rest_still_released():
    machines: dict[str, Machine] = {}
    ctx = context(machines)
    down = Machine("legacy db1", {})

    async def refuse(script, *, what, **_):
        from shared.ssh import RemoteError
        down.calls.append((what, script, ""))
        raise RemoteError(f"{what}: cannot reach legacy db1 over SSH: Connection refused")
    object.__setattr__(down, "run", refuse)
    machines["legacy db1"] = down
    await finalize._release_handoffs(ctx, both_engines_on_db1())
    assert [what for what, _, _ in down.calls] == ["closing the tunnel"]
