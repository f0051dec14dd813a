"""The lab's cutover checks: rehearsed rollbacks at every step, then the real cutover, looked at
from outside (by name through the site's DNS, at the old public address) and on both sides.

Used by test_lab_journey once the example group is ready on real VMs."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp
import asyncpg
import dns.asyncquery
import dns.message

from lab.checks import VmShell, psql
from lab.legacy.site import PSQL, Site
from shared.cutover_names import WINDOW_STEPS
from shared.plan import Plan
from shared.settings import Settings
from tests.conftest import eventually
from tests.service_process import ServiceProcess

SIDE_FILE = "/var/www/shop/ferry-side.txt"  # "old" on the legacy host, "new" on the new VM
STAMPS = "/data/shared/live"  # where a writer on the legacy host keeps writing in the window
EXCLUDED = "/data/shared/tmp/ferry-excluded.txt"
RUN_TIMEOUT_S = 900
# The downtime of the real cutover must stay under this: not a speed target (it measured 3 s),
# a check that the window closed and the prober saw it close.
DOWNTIME_LIMIT_S = 60.0
# A config-management hook that holds the step until the test lets it go (see hold_step).
HOOK = "/etc/ferryman/config-management"
HELD = "/run/ferry-test-hook-held"
RELEASE = "/run/ferry-test-hook-release"
# db1's PostgreSQL database (examples/legacy/stock.sql) and the table the writers add to.
STOCK = "stock"
MOVEMENTS = "movements"
REPLICA_WAIT_S = 60


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
        return await self.wait_run(await self.request_run(**body))

    async def request_run(self, **body) -> str:
        async with self.operator.post(f"/v1/groups/{self.group_id}/cutover",
                                      json=body) as response:
            answer = await response.json()
            assert response.status == 202, answer
        return answer["run_id"]

    async def run(self, run_id: str) -> dict:
        async with self.operator.get(f"/v1/groups/{self.group_id}/cutover") as response:
            runs = (await response.json())["runs"]
        return next(r for r in runs if r["id"] == run_id)

    async def wait_run(self, run_id: str) -> dict:
        async def ended():
            run = await self.run(run_id)
            return run if run["status"] not in ("requested", "accepted", "running") else None
        return await eventually(ended, RUN_TIMEOUT_S, interval=0.5,
                                what=f"cutover run {run_id} to end")

    async def states(self) -> tuple[str, set[str]]:
        """The group's status and its VMs' states."""
        async with self.operator.get(f"/v1/groups/{self.group_id}") as response:
            detail = await response.json()
        return detail["status"], {vm["state"] for vm in detail["vms"]}

    # --- the legacy side ----------------------------------------------------------------------

    async def legacy_sql(self, statement: str) -> str:
        return await self.site.run("db1", "mariadb", "-N", "-B", "-e", statement)

    async def write_order(self) -> str:
        tag = f"ferry-window-{uuid.uuid4().hex[:8]}"
        await self.legacy_sql("INSERT INTO shop.orders (product_id, quantity, customer, placed_at)"
                              f" VALUES (1, 1, '{tag}', NOW())")
        return tag

    async def legacy_pg(self, statement: str, database: str = STOCK) -> str:
        """One statement on the legacy db1's PostgreSQL (psql as postgres), its rows."""
        return await self.site.run("db1", *PSQL, "-d", database, "-c", statement)

    async def new_pg(self, vm: str, statement: str, database: str = STOCK) -> str:
        """One statement on a new VM's PostgreSQL (psql as postgres), its rows."""
        return await self.new(vm, psql(database, statement))

    async def write_movement(self, note: str) -> None:
        """A row of stock's movements on the legacy master, its id from the table's sequence."""
        await self.legacy_pg(f"INSERT INTO {MOVEMENTS} (item_id, delta, note) "
                             f"VALUES (1, 1, '{note}')")

    async def start_writer(self) -> Writers:
        """What keeps writing on the legacy side all through the window: on app1 a shared file
        (uploads, a cache being refreshed), each line the time it was written; on db1 a row of
        PostgreSQL's stock every tick (its id from the sequence, as the application inserts),
        each refused once the old master is read-only and the writer carries on."""
        stamps = (f"mkdir -p {STAMPS}; for i in $(seq 1 6000); do "
                  f"date +%s.%N > {STAMPS}/stamp.tmp && mv {STAMPS}/stamp.tmp {STAMPS}/stamp; "
                  "sleep 0.1; done")
        insert = shlex.join([*PSQL, "-d", STOCK, "-c",
                             f"INSERT INTO {MOVEMENTS} (item_id, delta, note) "
                             "VALUES (1, -1, 'writer')"])
        rows = f"for i in $(seq 1 6000); do {insert} >/dev/null 2>&1; sleep 0.1; done"
        return Writers([await self.site.spawn("app1", "sh", "-c", stamps),
                        await self.site.spawn("db1", "sh", "-c", rows)])

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


@dataclass
class Writers:
    """The legacy side's writers (Lab.start_writer), stopped together."""
    processes: list[asyncio.subprocess.Process]

    def kill(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.kill()

    async def wait(self) -> None:
        for process in self.processes:
            await process.wait()


async def old_site_serves(lab: Lab) -> list[str]:
    """After a rollback: what is not as it was before the cutover (empty when all is back)."""
    wrong = []
    if (address := await lab.resolve("shop.example")) != "198.51.100.11":
        wrong.append(f"shop.example resolves to {address}")
    status, body = await lab.get("198.51.100.11", "/ferry-side.txt")
    if (status, body.strip()) != (200, "old"):
        wrong.append(f"the old address answers {status} {body.strip()[:60]!r}")
    try:
        await lab.write_order()
    except Exception as exc:  # noqa: BLE001 - any failure to write is what we report
        wrong.append(f"the legacy master refuses writes: {exc}")
    try:
        await lab.write_movement("ferry-rolled-back")
    except Exception as exc:  # noqa: BLE001 - any failure to write is what we report
        wrong.append(f"the legacy PostgreSQL master refuses writes: {exc}")
    if (outbound := await lab.reaches_legacy("app1")) != "refused":
        wrong.append(f"a new VM's connection to a legacy host is {outbound}, not refused")
    for vm in lab.plan.vms:
        if not await lab.marker_on(vm.name):
            wrong.append(f"{vm.name} lost its migrating marker")
    nat = await lab.site.run("app1", "iptables", "-t", "nat", "-S")
    if "FERRY" in nat:
        wrong.append(f"forwarding rules left on app1: {nat}")
    return wrong


async def rolled_back_to(lab: Lab, run: dict, step: str) -> None:
    """What a run that failed at `step` (or was cut off in it) must have left: every step up
    to it undone, the group ready again with its VMs rolled_back (docs/cutover.md), and the
    old site serving as before."""
    assert run["status"] == "rolled_back", (step, run)
    reached = run["steps"]
    assert [s["name"] for s in reached] == list(WINDOW_STEPS[:WINDOW_STEPS.index(step) + 1])
    assert all(s["status"] == "undone" for s in reached), (step, reached)
    states = await lab.states()
    assert states == ("ready", {"rolled_back"}), (step, states)
    wrong = await old_site_serves(lab)
    assert not wrong, (step, wrong)


async def rehearse_every_step(lab: Lab) -> dict[str, float]:
    """A failure injected at each step in turn: every run rolls back, undoing each step it
    started, and leaves the old site serving. Returns each rehearsal's seconds."""
    seconds = {}
    for step in WINDOW_STEPS:
        started = time.monotonic()
        run = await lab.cutover(rehearse_failure_at=step)
        seconds[step] = time.monotonic() - started
        assert "rehearsed failure" in (run["reason"] or ""), (step, run["reason"])
        await rolled_back_to(lab, run, step)
    return seconds


async def new_master_replicates(lab: Lab) -> bool:
    return bool((await lab.new("db1", "mariadb -N -B -e 'SHOW SLAVE STATUS'")).strip())


async def new_master_subscribes(lab: Lab) -> bool:
    """Whether the new db1's PostgreSQL holds the hand-off's subscription."""
    return (await lab.new_pg("db1", "SELECT count(*) FROM pg_subscription")).strip() != "0"


async def rehearse_database_in_replication_mode(lab: Lab) -> str:
    """After a prepared run linked the new master to the legacy one: a rehearsed failure at
    `database` in mode replication (the new master caught up and was promoted, its link
    broken; then the step failed) rolls back like any other, and the next prepared run links
    the new master again (replicate-from-legacy loads it and sets the link up)."""
    assert await new_master_replicates(lab), "the prepared run left db1 without its link"
    assert await new_master_subscribes(lab), "the prepared run left db1 without a subscription"
    run = await lab.cutover(rehearse_failure_at="database", database_mode="replication")
    assert "rehearsed failure" in (run["reason"] or ""), run["reason"]
    await rolled_back_to(lab, run, "database")
    assert not await new_master_replicates(lab), "db1 still replicates: it was not promoted"
    assert not await new_master_subscribes(lab), "db1 still subscribes: it was not unlinked"
    prepared = await lab.cutover(prepare=True, database_mode="replication")
    assert prepared["status"] == "completed", prepared
    relink = next(s for s in prepared["steps"] if s["name"] == "replicate-from-legacy")
    # MariaDB loaded again with its position, PostgreSQL's schema and tables copied again.
    assert "loaded" in (relink["detail"] or "") and "copied" in relink["detail"], relink
    assert await new_master_replicates(lab) and await new_master_subscribes(lab)
    return (f"rehearsed failure at database in mode replication rolled back; "
            f"the next prepared run: {relink['detail'].strip()}")


# --- the cutover service killed in the middle of a run -----------------------------------------

async def hold_step(lab: Lab, vm: str = "app1") -> None:
    """Make `vm`'s config-management hook (run by the step of that name, after the window)
    wait for a file the test writes: the runbook is then in that step for as long as the test
    wants. The real hook is kept aside."""
    await lab.new(vm, f"cp -p {HOOK} {HOOK}.real && rm -f {HELD} {RELEASE} && "
                      f"printf '%s\\n' '#!/bin/sh' 'touch {HELD}' "
                      f"'while [ ! -e {RELEASE} ]; do sleep 0.2; done' > {HOOK}")


async def release_step(lab: Lab, vm: str = "app1") -> None:
    await lab.new(vm, f"touch {RELEASE}")


async def restore_hook(lab: Lab, vm: str = "app1") -> None:
    await lab.new(vm, f"touch {RELEASE}; mv {HOOK}.real {HOOK}; rm -f {HELD} {RELEASE}")


def ssh_control_dirs() -> set[Path]:
    """The runbooks' shared-connection folders (services/cutover/handlers.py _runbook)."""
    return set(Path(tempfile.gettempdir()).glob("ferry-ssh-*"))


async def close_ssh_masters(folders: set[Path]) -> None:
    """End the shared SSH connections a killed cutover process left (its runbook never
    closed them), and remove their folders."""
    for folder in folders:
        for socket in folder.glob("*"):
            proc = await asyncio.create_subprocess_exec(
                "ssh", "-o", f"ControlPath={socket}", "-O", "exit", "x",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL)
            await asyncio.wait_for(proc.wait(), 30)
        shutil.rmtree(folder, ignore_errors=True)


async def killed_in_the_middle_of_a_run(lab: Lab, cutover: ServiceProcess) -> str:
    """The cutover service's process killed -9 while a full run is in config-management
    (after the window: maintenance page, database, DNS, forwarding and markers all done), and
    started again: the redelivered cutover.requested finds the run `running` and rolls it back
    from its journal, every step reached undone; the group is ready, its VMs rolled_back, and
    the old site serves as before."""
    step = "config-management"
    await hold_step(lab)
    before = ssh_control_dirs()
    try:
        run_id = await lab.request_run()
        await eventually(lambda: lab.new("app1", f"test -e {HELD} && echo held || true"),
                         RUN_TIMEOUT_S, interval=0.5, what=f"the run to reach {step}")
        run = await lab.run(run_id)
        assert run["status"] == "running", run
        assert [(s["name"], s["status"]) for s in run["steps"]] == \
            [(n, "done") for n in WINDOW_STEPS[:WINDOW_STEPS.index(step)]] + [(step, "running")]
        assert await lab.resolve("shop.example") == "10.20.0.11"  # the window is behind it
        killed = cutover.kill()
        assert (await lab.run(run_id))["status"] == "running"
    finally:
        await release_step(lab)
    await close_ssh_masters(ssh_control_dirs() - before)
    restarted = cutover.start()
    run = await lab.wait_run(run_id)
    await restore_hook(lab)
    assert run["reason"] == "the cutover was interrupted", run
    await rolled_back_to(lab, run, step)
    return (f"cutover process {killed} killed in {step}; process {restarted} rolled the run "
            f"back from its journal ({len(run['steps'])} steps undone)")


# --- the real cutover, from outside ----------------------------------------------------------

PROBED = re.compile(r"downtime ([\d.]+)s: last good answer from the old site at ([\d.]+)s, "
                    r"first from the new site at ([\d.]+)s")


async def probe_summary(settings: Settings, run_id: str) -> str:
    """The prober's summary, as cutover.completed carried it."""
    conn = await asyncpg.connect(settings.database_url,
                                 server_settings={"search_path": settings.database_schema})
    try:
        rows = await conn.fetch("SELECT body::text AS body FROM outbox"
                                " WHERE routing_key = 'cutover.completed'")
    finally:
        await conn.close()
    bodies = [json.loads(r["body"]) for r in rows]
    return next(b["payload"]["probe"] for b in bodies if b["payload"]["run_id"] == run_id)


def window_closed(run: dict, summary: str) -> str:
    """The prober saw the old site answer, then the new one, and the downtime between is
    bounded (DOWNTIME_LIMIT_S)."""
    found = PROBED.match(summary or "")
    assert found, f"the prober did not see the old site and then the new one: {summary!r}"
    downtime, last_old, first_new = (float(x) for x in found.groups())
    assert last_old < first_new, summary
    assert run["downtime_s"] is not None and abs(run["downtime_s"] - downtime) < 0.01, \
        (run["downtime_s"], summary)
    assert run["downtime_s"] < DOWNTIME_LIMIT_S, summary
    return summary


async def mark_sides(lab: Lab) -> None:
    """Tell the sides apart from outside: the same path answers "old" or "new"."""
    await lab.site.run("app1", "sh", "-c", f"echo old > {SIDE_FILE}")
    await lab.new("app1", f"echo new > {SIDE_FILE}")


async def replicates_before_window(lab: Lab) -> str:
    """After the prepared run (mode replication): a row written on the legacy master reaches
    the new master through the tunnel, and the new replica through the new master; in
    MariaDB's shop (the binary log) and PostgreSQL's stock (the subscription, then the
    standby's stream)."""
    tag = await lab.write_order()
    await lab.write_movement(tag)
    count = "mariadb -N -B -e " + shlex.quote(
        f"SELECT COUNT(*) FROM shop.orders WHERE customer = '{tag}'")
    movements = f"SELECT count(*) FROM {MOVEMENTS} WHERE note = '{tag}'"

    async def arrived():
        return all([(await lab.new(vm, count)).strip() == "1" for vm in ("db1", "db2")]
                   + [(await lab.new_pg(vm, movements)).strip() == "1" for vm in ("db1", "db2")])
    await eventually(arrived, 60, interval=0.5, what=f"row {tag} to replicate to db1 and db2")
    return (f"row {tag} written on the legacy master in shop (MariaDB) and stock (PostgreSQL) "
            "replicated to the new db1 and db2")


async def legacy_changes_before_window(lab: Lab) -> tuple[str, str]:
    """A row on the legacy master (MariaDB's shop and PostgreSQL's stock, tagged alike) and an
    excluded file, just before the window."""
    tag = await lab.write_order()
    await lab.write_movement(tag)
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
    status, body = await lab.get("198.51.100.11", "/ferry-side.txt")
    assert (status, body.strip()) == (200, "new"), (status, body)
    found["old address"] = "198.51.100.11 answers from the new VM (DNAT on the legacy side)"
    rows = await lab.new("db1", "mariadb -N -B -e " + shlex.quote(
        f"SELECT COUNT(*) FROM shop.orders WHERE customer = '{tag}'"))
    assert rows.strip() == "1", f"row {tag} written just before the window: {rows.strip()} on db1"
    replica = await lab.new("db2", "mariadb -N -B -e " + shlex.quote(
        f"SELECT COUNT(*) FROM shop.orders WHERE customer = '{tag}'"))
    assert replica.strip() == "1", f"row {tag}: {replica.strip()} on the new replica db2"
    found["rows"] = (f"row {tag} written on the legacy master before the window is on the new "
                     "master and its replica")
    found["stock"] = await stock_handed_over(
        lambda q: lab.legacy_pg(q), lambda q: lab.new_pg("db1", q),
        lambda q: lab.new_pg("db2", q), tag)
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


# --- PostgreSQL's stock after the cutover ------------------------------------------------------

Query = Callable[[str], Awaitable[str]]  # one statement in database stock, its rows


async def stock_handed_over(legacy: Query, new: Query, replica: Query, tag: str,
                            replica_wait_s: float = REPLICA_WAIT_S) -> str:
    """What the cutover must have made of PostgreSQL's stock (legacy: the legacy db1; new: the
    new db1; replica: db2, its standby): the row tagged `tag`, written on the legacy master
    just before the window, on the new master; every table with the legacy's final rows (the
    legacy stays read-only after the cutover, so its count is final), the writer's included;
    each sequence brought forward past the legacy's last value (the next id the application
    gets is new); nothing of a logical hand-off left (no subscription on the new master, no
    ferry publication or slot on the legacy); the standby with the new master's rows."""
    tagged = (await new(f"SELECT count(*) FROM {MOVEMENTS} WHERE note = '{tag}'")).strip()
    assert tagged == "1", (f"stock: row {tag} written on the legacy master before the window: "
                           f"{tagged} on the new db1")
    counts = await _table_counts(legacy)
    new_counts = await _table_counts(new)
    assert new_counts == counts, (f"stock: rows per table on the new db1 {new_counts}, on the "
                                  f"legacy db1 (read-only since the cutover) {counts}")
    sequences = dict(line.split() for line in (await legacy(
        "SELECT format('%I.%I', schemaname, sequencename), coalesce(last_value, 0) "
        "FROM pg_sequences ORDER BY 1")).replace("|", " ").splitlines())
    assert sequences, "stock: the legacy db1 has no sequence (stock.sql makes two)"
    behind = {}
    for name, last in sequences.items():
        following = int((await new(f"SELECT nextval('{name}')")).strip())
        if following <= int(last):
            behind[name] = f"nextval {following} on the new db1, last_value {last} on the legacy"
    assert not behind, f"stock: sequences not brought forward: {behind}"
    subscriptions = (await new("SELECT count(*) FROM pg_subscription")).strip()
    assert subscriptions == "0", f"stock: {subscriptions} subscriptions left on the new db1"
    left = (await legacy("SELECT 'publication ' || pubname FROM pg_publication WHERE pubname "
                         "LIKE 'ferry%' UNION ALL SELECT 'slot ' || slot_name FROM "
                         "pg_replication_slots WHERE slot_name LIKE 'ferry%'")).split("\n")
    left = [line for line in left if line.strip()]
    assert not left, f"stock: left on the legacy db1: {', '.join(left)}"
    deadline = time.monotonic() + replica_wait_s
    while (on_replica := await _table_counts(replica)) != counts:
        assert time.monotonic() < deadline, (
            f"stock: rows per table on db2 {on_replica} after {replica_wait_s:.0f}s, on the new "
            f"db1 {counts}")
        await asyncio.sleep(0.5)
    return (f"row {tag} on the new db1; rows per table as on the legacy db1 ("
            + ", ".join(f"{table} {count}" for table, count in counts.items())
            + ") and on db2; sequences past the legacy's ("
            + ", ".join(f"{name} > {last}" for name, last in sequences.items())
            + "); no subscription, no ferry publication or slot left")


async def _table_counts(query: Query) -> dict[str, int]:
    """Rows per table of the database's own schemas."""
    names = (await query("SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                         "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') "
                         "ORDER BY 1")).split()
    return {name: int((await query(f"SELECT count(*) FROM {name}")).strip()) for name in names}
