"""The lab's cutover checks: rehearsed rollbacks at every step, then the real cutover, looked at
from outside (by name through the site's DNS, at the old public address) and on both sides.

Used by test_lab_journey once the example group is ready on real VMs."""

from __future__ import annotations

import asyncio
import shlex
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import aiohttp
import dns.asyncquery
import dns.message

from lab.checks import VmShell
from lab.legacy.site import Site
from shared.cutover_names import WINDOW_STEPS
from shared.plan import Plan
from tests.conftest import eventually

SIDE_FILE = "/var/www/shop/ferry-side.txt"  # "old" on the legacy host, "new" on the new VM
STAMPS = "/data/shared/live"  # where a writer on the legacy host keeps writing in the window
EXCLUDED = "/data/shared/tmp/ferry-excluded.txt"
RUN_TIMEOUT_S = 900


@dataclass
class Lab:
    operator: aiohttp.ClientSession
    group_id: str
    plan: Plan
    site: Site
    shells: dict[str, VmShell]

    # --- asking from outside ------------------------------------------------------------------

    async def resolve(self, name: str) -> str:
        query = dns.message.make_query(name, "A")
        answer = await dns.asyncquery.udp(query, "127.0.0.1", port=self.site.dns.port, timeout=3)
        return next(iter(answer.answer[0])).to_text()

    async def get(self, address: str, path: str = "/") -> tuple[int, str]:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"http://{address}{path}",
                                   headers={"Host": "shop.example"}) as response:
                return response.status, await response.text()

    async def side_by_name(self) -> str:
        """Which side serves shop.example by name, as a visitor resolves it now."""
        status, body = await self.get(await self.resolve("shop.example"), "/ferry-side.txt")
        assert status == 200, (status, body)
        return body.strip()

    # --- the runs -----------------------------------------------------------------------------

    async def cutover(self, **body) -> dict:
        async with self.operator.post(f"/v1/groups/{self.group_id}/cutover",
                                      json=body) as response:
            answer = await response.json()
            assert response.status == 202, answer
        run_id = answer["run_id"]

        async def ended():
            async with self.operator.get(f"/v1/groups/{self.group_id}/cutover") as response:
                runs = (await response.json())["runs"]
            run = next(r for r in runs if r["id"] == run_id)
            return run if run["status"] not in ("requested", "accepted", "running") else None
        return await eventually(ended, RUN_TIMEOUT_S, interval=0.5,
                                what=f"cutover run {run_id} to end")

    # --- the legacy side ----------------------------------------------------------------------

    async def legacy_sql(self, statement: str) -> str:
        return await self.site.run("db1", "mariadb", "-N", "-B", "-e", statement)

    async def write_order(self) -> str:
        tag = f"ferry-window-{uuid.uuid4().hex[:8]}"
        await self.legacy_sql("INSERT INTO shop.orders (product_id, quantity, customer, placed_at)"
                              f" VALUES (1, 1, '{tag}', NOW())")
        return tag

    async def start_writer(self) -> asyncio.subprocess.Process:
        """Something on the legacy host that keeps writing a shared file (uploads, a cache
        being refreshed) all through the window: each line is the time it was written."""
        script = (f"mkdir -p {STAMPS}; for i in $(seq 1 6000); do "
                  f"date +%s.%N > {STAMPS}/stamp.tmp && mv {STAMPS}/stamp.tmp {STAMPS}/stamp; "
                  "sleep 0.1; done")
        return await self.site.spawn("app1", "sh", "-c", script)

    # --- the new VMs --------------------------------------------------------------------------

    async def new(self, vm: str, command: str) -> str:
        return await self.shells[vm].run(command)

    async def reaches_legacy(self, vm: str) -> str:
        """"open", "refused" or "timeout": a TCP connection from a new VM to legacy sshd."""
        target = self.site.address("app1")
        probe = (f"out=$(timeout 3 bash -c 'exec 3<>/dev/tcp/{target}/22' 2>&1) && echo open "
                 "|| { case $out in *refused*) echo refused;; *) echo timeout;; esac; }")
        return (await self.new(vm, probe)).strip()

    async def marker_on(self, vm: str) -> bool:
        return (await self.new(vm, "test -e /etc/ferryman/migrating && echo yes || echo no"
                               )).strip() == "yes"


async def old_site_serves(lab: Lab) -> list[str]:
    """After a rollback: what is not as it was before the cutover (empty when all is back)."""
    wrong = []
    if (address := await lab.resolve("shop.example")) != "203.0.113.11":
        wrong.append(f"shop.example resolves to {address}")
    status, body = await lab.get("203.0.113.11", "/ferry-side.txt")
    if (status, body.strip()) != (200, "old"):
        wrong.append(f"the old address answers {status} {body.strip()[:60]!r}")
    try:
        await lab.write_order()
    except Exception as exc:  # noqa: BLE001 - any failure to write is what we report
        wrong.append(f"the legacy master refuses writes: {exc}")
    if (outbound := await lab.reaches_legacy("app1")) != "refused":
        wrong.append(f"a new VM's connection to a legacy host is {outbound}, not refused")
    for vm in lab.plan.vms:
        if not await lab.marker_on(vm.name):
            wrong.append(f"{vm.name} lost its migrating marker")
    nat = await lab.site.run("app1", "iptables", "-t", "nat", "-S")
    if "FERRY" in nat:
        wrong.append(f"forwarding rules left on app1: {nat}")
    return wrong


async def rehearse_every_step(lab: Lab) -> dict[str, float]:
    """A failure injected at each step in turn: every run rolls back, undoing each step it
    started, and leaves the old site serving. Returns each rehearsal's seconds."""
    seconds = {}
    for step in WINDOW_STEPS:
        started = time.monotonic()
        run = await lab.cutover(rehearse_failure_at=step)
        seconds[step] = time.monotonic() - started
        assert run["status"] == "rolled_back", (step, run)
        assert "rehearsed failure" in (run["reason"] or ""), (step, run["reason"])
        reached = [s for s in run["steps"]]
        assert [s["name"] for s in reached] == list(WINDOW_STEPS[:WINDOW_STEPS.index(step) + 1])
        assert all(s["status"] == "undone" for s in reached), (step, reached)
        wrong = await old_site_serves(lab)
        assert not wrong, (step, wrong)
    return seconds


async def mark_sides(lab: Lab) -> None:
    """Tell the sides apart from outside: the same path answers "old" or "new"."""
    await lab.site.run("app1", "sh", "-c", f"echo old > {SIDE_FILE}")
    await lab.new("app1", f"echo new > {SIDE_FILE}")


async def replicates_before_window(lab: Lab) -> str:
    """After the prepared run (mode replication): a row written on the legacy master reaches
    the new master through the tunnel, and the new replica through the new master."""
    tag = await lab.write_order()
    count = "mariadb -N -B -e " + shlex.quote(
        f"SELECT COUNT(*) FROM shop.orders WHERE customer = '{tag}'")

    async def arrived():
        return all([(await lab.new(vm, count)).strip() == "1" for vm in ("db1", "db2")])
    await eventually(arrived, 60, interval=0.5, what=f"row {tag} to replicate to db1 and db2")
    return f"row {tag} written on the legacy master replicated to the new db1 and db2"


async def legacy_changes_before_window(lab: Lab) -> tuple[str, str]:
    """A row on the legacy master and an excluded file, just before the window."""
    tag = await lab.write_order()
    await lab.site.run("app1", "sh", "-c", f"echo cache > {EXCLUDED}")
    return tag, EXCLUDED


def first_pass_ended_at(run: dict) -> float:
    """When the rsync pass before the window ended, as seconds since the epoch: a file written
    later can only have come with the pass inside the window. (Not the window's opening: the
    pass in it can start within the writer's 0.1 s beat of the maintenance page, so the newest
    file it finds may be a few ms older than the window and still prove nothing is missed.)"""
    step = next(s for s in run["steps"] if s["name"] == "rsync-before-window")
    return datetime.fromisoformat(step["finished_at"]).timestamp()


async def after_cutover(lab: Lab, run: dict, tag: str) -> dict[str, str]:
    """What the cutover must have left; each finding, or AssertionError."""
    found = {}
    address = await lab.resolve("shop.example")
    assert address == "10.20.0.11", f"shop.example resolves to {address}"
    assert await lab.side_by_name() == "new"
    found["by name"] = f"shop.example → {address}, served by the new VM"
    status, body = await lab.get("203.0.113.11", "/ferry-side.txt")
    assert (status, body.strip()) == (200, "new"), (status, body)
    found["old address"] = "203.0.113.11 answers from the new VM (DNAT on the legacy side)"
    rows = await lab.new("db1", "mariadb -N -B -e " + shlex.quote(
        f"SELECT COUNT(*) FROM shop.orders WHERE customer = '{tag}'"))
    assert rows.strip() == "1", f"row {tag} written just before the window: {rows.strip()} on db1"
    replica = await lab.new("db2", "mariadb -N -B -e " + shlex.quote(
        f"SELECT COUNT(*) FROM shop.orders WHERE customer = '{tag}'"))
    assert replica.strip() == "1", f"row {tag}: {replica.strip()} on the new replica db2"
    found["rows"] = (f"row {tag} written on the legacy master before the window is on the new "
                     "master and its replica")
    stamp = float((await lab.new("app1", f"cat {STAMPS}/stamp")).strip())
    first_pass = first_pass_ended_at(run)
    assert stamp > first_pass, (f"the newest stamp {stamp} predates the end of the first rsync "
                                f"pass ({first_pass}): the pass in the window did not run")
    found["window files"] = (f"a file written {stamp - first_pass:.1f}s after the first rsync "
                             "pass arrived with the pass in the window")
    excluded = (await lab.new("app1", f"test -e {EXCLUDED} && echo yes || echo no")).strip()
    assert excluded == "no", f"{EXCLUDED} (excluded) arrived"
    found["excludes"] = f"{EXCLUDED} stayed behind"
    for vm in lab.plan.vms:
        assert not await lab.marker_on(vm.name), f"{vm.name} still has the migrating marker"
    found["marker"] = "gone on every VM"
    outbound = await lab.reaches_legacy("app1")
    assert outbound == "open", f"outbound from app1 is {outbound}"
    found["outbound"] = "open: a new VM reaches a legacy host"
    return found
