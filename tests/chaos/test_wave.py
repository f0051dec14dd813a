"""Chaos: a 200-VM wave on the sim provider while service processes are killed with SIGKILL at
random moments and started again, and RabbitMQ and PostgreSQL are each restarted once.

The wave must still end with every VM ready, every event published and handled by every service
bound to it (none lost), no fact announced twice and no VM created twice, and every queue (the
services', their retry queues and their dead letters) empty.

Everything runs on this machine's loopback, against a PostgreSQL cluster and a RabbitMQ node of
the test's own (tests/chaos/infra.py), never the machine's shared ones. Random choices come
from one seeded random.Random; the seed is printed, and FERRY_CHAOS_SEED replays a run.
Figures are printed and written to test-artifacts/chaos/figures.json; the processes' logs go
to test-artifacts/chaos/logs/.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

import aiohttp
import asyncpg
import pytest

from shared.bus import Bus
from shared.events import Envelope
from shared.providers.sim import CREATE_CALLS
from services.topology import topology
from shared.topology import Names, routing_key
from tests.limits_history import most_at_once
from tests.chaos.infra import PrivatePostgres, PrivateRabbit, free_port
from tests.chaos.supervisor import PROCESSES, REPO, Supervisor, kill_sim_vms, sim_vm_pids

pytestmark = [pytest.mark.chaos]

ARTIFACTS = REPO / "test-artifacts" / "chaos"
OPERATOR_TOKEN = "chaos-operator-token"
SCHEMA = "chaos"
PREFIX = "chaos"

# The wave: GROUPS groups of GROUP_SIZE VMs, each a database master, one replica of it and app
# servers (so the replica's hold on its master and db.master.complete are exercised too).
GROUPS = int(os.environ.get("FERRY_CHAOS_GROUPS", "10"))
GROUP_SIZE = int(os.environ.get("FERRY_CHAOS_GROUP_SIZE", "20"))
KILLS = int(os.environ.get("FERRY_CHAOS_KILLS", "24"))
MIN_KILLS = 20
# Seconds between two submissions: the wave is a stream of groups, as a migration team
# schedules it, and the kills land on groups in every phase.
SUBMIT_EVERY = float(os.environ.get("FERRY_CHAOS_SUBMIT_EVERY", "3"))
# Seconds between two faults (uniform).
GAP = (1.0, 3.0)
# Limits (docs/operations.md, "Limits"), set below the wave's 200 VMs so that they bind: the
# services run with these, and the audit checks from the store's history that no more VMs
# were ever in flight (or archiving per site) at once.
LIMIT_IN_FLIGHT = int(os.environ.get("FERRY_CHAOS_LIMIT_IN_FLIGHT", "40"))
LIMIT_ARCHIVES_PER_SITE = int(os.environ.get("FERRY_CHAOS_LIMIT_ARCHIVES_PER_SITE", "8"))
WAVE_TIMEOUT = 300.0
QUIET_TIMEOUT = 90.0

VM = """\
  - name: {name}
    role: {role}
{extra}    cpus: 1
    memory_mb: 512
    disks: [{{size_gb: 10}}]
    filesystems: [{{mount: /, size_gb: 8}}]
    network: {{address: 10.{g}.{hi}.{lo}/16, hostname: {name}.g{g}.example}}
"""


def plan_text(g: int, size: int) -> str:
    vms = []
    for j in range(size):
        if j == 0:
            name, role, extra = "db1", "db-master", ""
        elif j == 1:
            name, role, extra = "db2", "db-replica", "    replica_of: db1\n"
        else:
            name, role, extra = f"app{j - 1}", "app", ""
        vms.append(VM.format(name=name, role=role, extra=extra, g=g + 20, hi=(j + 1) // 250,
                             lo=(j + 1) % 250 + 1))
    return f"group: chaos-{g}\nvms:\n" + "".join(vms)


async def _query(url: str, fn):
    """Run `fn(conn)` on a fresh connection; None when the database is away (restarting)."""
    try:
        conn = await asyncpg.connect(url, timeout=5, server_settings={"search_path": SCHEMA})
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError,
            asyncpg.exceptions.CannotConnectNowError):
        return None
    try:
        return await fn(conn)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError):
        return None
    finally:
        try:
            await conn.close(timeout=5)
        except Exception:  # noqa: BLE001 - the server went away under us
            pass


class Wave:
    """The operator's side: submits the groups (again, if the gateway died before answering)
    and watches the store until every group is ready."""

    def __init__(self, db_url: str, gateway_url: str):
        self.db_url = db_url
        self.gateway_url = gateway_url
        self.submitted: dict[str, float] = {}
        self.submit_attempts = 0
        self.started: float | None = None
        self.finished: float | None = None

    async def submit_all(self, session: aiohttp.ClientSession,
                         faults_fired: Callable[[], float] = lambda: 1.0) -> None:
        """Submit the groups SUBMIT_EVERY apart, and group g not before g/GROUPS of the
        faults have fired (`faults_fired`: the fraction so far): however fast this machine
        moves a group, the wave cannot end before its faults have landed in it. (A RabbitMQ
        restart alone once took 70 s, and a 124 s wave ended before five kills.)"""
        for g in range(GROUPS):
            if g:
                await asyncio.sleep(SUBMIT_EVERY)
                while faults_fired() < g / GROUPS:
                    await asyncio.sleep(0.2)
            await self._submit(session, g)

    async def _submit(self, session: aiohttp.ClientSession, g: int) -> None:
        name = f"chaos-{g}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            self.submit_attempts += 1
            try:
                async with session.post("/v1/groups", data=plan_text(g, GROUP_SIZE)) as r:
                    if r.status == 201:
                        break
                    if r.status == 409:  # an earlier attempt was stored, its answer lost
                        break
                    text = await r.text()
                    assert r.status >= 500, f"submit {name}: {r.status} {text}"
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass  # the gateway is down (killed, restarting): as an operator, try again
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"could not submit {name} within 120 s")
        if self.started is None:
            self.started = time.monotonic()
        self.submitted[name] = time.monotonic()

    async def progress(self) -> dict | None:
        async def read(conn):
            vms = await conn.fetch("SELECT state, count(*) AS n FROM vms GROUP BY 1")
            groups = await conn.fetch("SELECT status, count(*) AS n FROM groups GROUP BY 1")
            return {"vms": {r["state"]: r["n"] for r in vms},
                    "groups": {r["status"]: r["n"] for r in groups}}
        return await _query(self.db_url, read)

    async def done(self) -> bool:
        seen = await self.progress()
        ok = bool(seen) and len(self.submitted) == GROUPS \
            and seen["groups"].get("ready", 0) == GROUPS
        if ok and self.finished is None:
            self.finished = time.monotonic()
        return ok


class Chaos:
    """The faults, from one seeded generator: a shuffled schedule of kills that hits every
    process at least three times, with RabbitMQ's and PostgreSQL's restarts at random places
    in it, each fault after a random gap."""

    def __init__(self, rng: random.Random, sup: Supervisor, pg: PrivatePostgres,
                 rabbit: PrivateRabbit, wave: Wave, t0: float):
        self.rng = rng
        self.sup = sup
        self.pg = pg
        self.rabbit = rabbit
        self.wave = wave
        self.t0 = t0
        schedule = list(PROCESSES) * 3
        schedule += rng.choices(PROCESSES, k=max(0, KILLS - len(schedule)))
        rng.shuffle(schedule)
        self.schedule: list[str] = schedule
        places = rng.sample(range(2, len(schedule) - 2), 2)
        self.infra_at = {places[0]: "rabbitmq", places[1]: "postgres"}
        self.timeline: list[dict] = []
        self.fired = 0  # entries of the schedule done

    def fraction_fired(self) -> float:
        return self.fired / len(self.schedule)

    async def _note(self, what: str, **extra) -> None:
        t = round(time.monotonic() - self.t0, 2)
        # Where the wave stood (VMs by state), read afterwards: a fault counts as during the
        # wave if not every group was ready yet.
        seen = await self.wave.progress()
        if seen is not None:
            await self.wave.done()
        during = self.wave.started is not None and self.wave.finished is None
        self.timeline.append({"t": t, "fault": what, "during_wave": during, **extra,
                              "vms": seen["vms"] if seen else None})

    async def run(self) -> None:
        for i, name in enumerate(self.schedule):
            await asyncio.sleep(self.rng.uniform(*GAP))
            server = self.infra_at.get(i)
            if server:
                started = time.monotonic()
                target = self.rabbit if server == "rabbitmq" else self.pg
                await asyncio.to_thread(target.restart)
                await self._note(f"restart {server}", seconds=round(time.monotonic() - started, 2),
                                 stop_seconds=round(getattr(target, "last_stop_seconds", 0), 2))
                await asyncio.sleep(self.rng.uniform(*GAP))
            pid = self.sup.kill(name)
            if pid is None:
                # Not running just now (restarting after an exit): kill it once it is back.
                for _ in range(100):
                    await asyncio.sleep(0.1)
                    self.sup.tend()
                    pid = self.sup.kill(name)
                    if pid:
                        break
            if pid is None:  # never running long enough to be killed: no kill happened
                await self._note(f"no kill of {name}: not running")
            else:
                await self._note(f"kill -9 {name}", pid=pid)
            self.fired += 1

    async def tend(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sup.tend()
            await asyncio.sleep(0.1)


async def _wait(check, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last saw {last!r}")


def _service_queues() -> list[str]:
    names = []
    for service in topology().services:
        names += [f"{PREFIX}.{service}", f"{PREFIX}.{service}.dlq"]
    return names


async def _audit(db_url: str, sim_folder: Path) -> dict:
    """Lost, duplicated and processed events, from the store and the provider's records."""
    async def read(conn):
        outbox = await conn.fetch(
            "SELECT event_id, routing_key, body->'payload' AS payload, published_at IS NOT NULL"
            " AS published, group_id, body->>'vm_id' AS vm_id, error FROM outbox")
        inbox = await conn.fetch("SELECT service, event_id FROM inbox")
        transitions = await conn.fetch(
            "SELECT vm_id, from_state, to_state, count(*) AS n FROM vm_transitions"
            " GROUP BY 1, 2, 3 HAVING count(*) > 1")
        vms = await conn.fetch("SELECT id, name, role, state, provider_ref FROM vms")
        groups = await conn.fetch("SELECT id, name, status FROM groups")
        return outbox, inbox, transitions, vms, groups
    found = await _query(db_url, read)
    assert found, "the database did not answer the audit"
    outbox, inbox, transitions, vms, groups = found

    handled = collections.defaultdict(set)
    for row in inbox:
        handled[row["service"]].add(row["event_id"])
    lost = []
    for row in outbox:
        payload = row["payload"] if isinstance(row["payload"], dict) else json.loads(row["payload"])
        key = routing_key(row["routing_key"], payload)
        for service, keys in topology().bindings.items():
            # The gateway's live feed (bound to "#") is a bounded notification stream, no inbox.
            if service != "gateway" and key in keys and row["event_id"] not in handled[service]:
                lost.append({"event": key, "event_id": str(row["event_id"]), "service": service,
                             "published": row["published"]})
    unpublished = [str(r["event_id"]) for r in outbox if not r["published"]]
    unroutable = [str(r["event_id"]) for r in outbox if r["error"]]

    # One announcement per fact: per VM, per group, per master.
    facts = collections.Counter()
    for row in outbox:
        if row["routing_key"] in ("archive.ready", "vm.created", "vm.configured",
                                  "vm.provisioned", "db.master.complete", "archive.requested"):
            facts[(row["routing_key"], row["vm_id"])] += 1
        elif row["routing_key"] in ("group.submitted", "group.archived", "group.ready"):
            facts[(row["routing_key"], str(row["group_id"]))] += 1
    duplicate_facts = {f"{k[0]} {k[1]}": n for k, n in facts.items() if n > 1}

    calls = [json.loads(line) for line in
             (sim_folder / CREATE_CALLS).read_text().splitlines() if line.strip()]
    made = collections.Counter(c["key"] for c in calls if c["made"])
    records = sorted(p.name for p in sim_folder.glob("sim-*.json"))
    refs = {r["provider_ref"] for r in vms if r["provider_ref"]}

    most = await _query(db_url, most_at_once)
    assert most, "the database did not answer the audit of the limits"

    return {
        **most,
        "vms": len(vms),
        "vm_states": dict(collections.Counter(r["state"] for r in vms)),
        "groups": len(groups),
        "group_statuses": dict(collections.Counter(r["status"] for r in groups)),
        "events_published": sum(1 for r in outbox if r["published"]),
        "events_in_outbox": len(outbox),
        "events_by_type": dict(collections.Counter(r["routing_key"] for r in outbox)),
        "events_processed": {s: len(ids) for s, ids in sorted(handled.items())},
        "events_processed_total": len(inbox),
        "lost": len(lost) + len(unpublished),
        "lost_detail": lost[:20],
        "unpublished": len(unpublished),
        "unroutable": len(unroutable),
        "duplicates": len(duplicate_facts) + len(transitions)
        + sum(n - 1 for n in made.values() if n > 1),
        "duplicate_facts": duplicate_facts,
        "repeated_transitions": len(transitions),
        "provider_create_calls": len(calls),
        "provider_vms_made": sum(made.values()),
        "provider_vms_made_twice": sum(1 for n in made.values() if n > 1),
        "provider_records": len(records),
        "provider_refs_in_store": len(refs),
    }


PROBE_PER_TYPE = 3  # handled events of each consumed type published again after the wave


async def _redeliver_handled_events(amqp_url: str, db_url: str, log_dir: Path) -> dict:
    """Publish again (same ids, on the private broker) a few events of each type some service
    consumes, all handled during the wave; wait until each process's log shows them ignored
    as duplicates. Returns the figures before and after, and what was expected."""
    async def read(conn):
        return await conn.fetch(
            "SELECT body FROM outbox WHERE published_at IS NOT NULL ORDER BY id")
    rows = await _query(db_url, read)
    assert rows is not None, "the database did not answer"
    chosen: dict[str, list[Envelope]] = collections.defaultdict(list)
    for row in rows:
        body = row["body"] if isinstance(row["body"], dict) else json.loads(row["body"])
        event = Envelope.model_validate(body)
        key = routing_key(event.type, event.payload)
        if len(chosen[key]) < PROBE_PER_TYPE and any(
                key in keys for service, keys in topology().bindings.items() if service != "gateway"):
            chosen[key].append(event)
    expected: collections.Counter[str] = collections.Counter()
    for key, events in chosen.items():
        for service, keys in topology().bindings.items():
            if service != "gateway" and key in keys:
                expected[service] += len(events)
    before = _count_log_lines(log_dir, "duplicate event ignored")
    bus = Bus(amqp_url, Names(PREFIX), (), topology())
    await bus.connect()
    try:
        for events in chosen.values():
            for event in events:
                await bus.publish(event)
    finally:
        await bus.close()

    def increase() -> dict[str, int]:
        now = _count_log_lines(log_dir, "duplicate event ignored")
        return {k: n - before.get(k, 0) for k, n in now.items() if n != before.get(k, 0)}

    async def all_ignored():
        return sum(increase().values()) >= sum(expected.values())
    try:
        await _wait(all_ignored, 60, "the events published again to be ignored", interval=0.5)
    except AssertionError:
        pass  # reported below, with what was seen
    return {"published": sum(len(e) for e in chosen.values()),
            "types": sorted(k for k, events in chosen.items() if events),
            "expected": dict(expected), "ignored": increase(),
            "ignored_before": before}


def _count_log_lines(log_dir: Path, text: str) -> dict[str, int]:
    counts = {}
    for path in sorted(log_dir.glob("*.log")):
        with open(path, errors="replace") as handle:
            counts[path.stem] = sum(1 for line in handle if text in line)
    return counts


@pytest.mark.timeout(570)
async def test_a_200_vm_wave_survives_kills_and_server_restarts(
        private_postgres: PrivatePostgres, private_rabbit: PrivateRabbit, chaos_dir: Path):
    seed = int(os.environ.get("FERRY_CHAOS_SEED") or random.SystemRandom().randrange(1, 2**31))
    print(f"\nchaos seed: {seed} (replay with FERRY_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    t0 = time.monotonic()

    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    log_dir = ARTIFACTS / "logs"
    state_dir = chaos_dir / "state"
    (chaos_dir / "images").mkdir()
    port = free_port()
    gateway_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update({
        "FERRY_DATABASE_URL": private_postgres.url,
        "FERRY_AMQP_URL": private_rabbit.url,
        "FERRY_DATABASE_SCHEMA": SCHEMA,
        "FERRY_BUS_PREFIX": PREFIX,
        "FERRY_STATE_DIR": str(state_dir),
        "FERRY_PROVIDER": "sim",
        "FERRY_LIMIT_IN_FLIGHT": str(LIMIT_IN_FLIGHT),
        # The sim's one host: the per-host limit is the overall one.
        "FERRY_LIMIT_IN_FLIGHT_PER_HOST": str(LIMIT_IN_FLIGHT),
        "FERRY_LIMIT_ARCHIVES_PER_SITE": str(LIMIT_ARCHIVES_PER_SITE),
        "FERRY_LAB_IMAGES": str(chaos_dir / "images"),
        # The product's default back-off: a handler failing while the database restarts is
        # retried (1 s, 5 s, 30 s) before its message would be dead-lettered.
        "FERRY_RETRY_DELAYS": "[1.0, 5.0, 30.0]",
        "FERRY_GATEWAY_HOST": "127.0.0.1",
        "FERRY_GATEWAY_PORT": str(port),
        "FERRY_GATEWAY_URL": gateway_url,
        # Plain HTTP: the wave is about crashes, not TLS (tests/integration/test_tls_default.py).
        "FERRY_GATEWAY_PLAIN_HTTP": "true",
        "FERRY_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "FERRY_LOG_FORMAT": "json",
        "FERRY_LOG_LEVEL": "info",
        # All simulated VMs share one client address (loopback), where real VMs have one each:
        # the gateway's per-address limit on token failures would count a VM's stale twin
        # (booted by a configurator killed before its commit, its token never stored) against
        # every VM. The limit itself is not under test here.
        "FERRY_GATEWAY_AUTH_FAILURES": "1000000",
        # Seconds a simulated VM waits between the steps it reports.
        "FERRY_SIM_PAUSE": "0.05",
        "PYTHONUNBUFFERED": "1",
    })
    sup = Supervisor(env, log_dir)
    sim_folder = state_dir / "sim"
    wave = Wave(private_postgres.url, gateway_url)
    chaos = Chaos(rng, sup, private_postgres, private_rabbit, wave, t0)
    print("chaos schedule: " + ", ".join(
        f"{chaos.infra_at[i]}+{n}" if i in chaos.infra_at else n
        for i, n in enumerate(chaos.schedule)))
    stop_tending = asyncio.Event()
    tasks: list[asyncio.Task] = []
    figures: dict = {"seed": seed, "passed": False}
    try:
        sup.start_all()

        async def gateway_up():
            try:
                async with aiohttp.ClientSession() as s, s.get(f"{gateway_url}/openapi.json") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False
        await _wait(gateway_up, 60, "the gateway to answer")

        async with aiohttp.ClientSession(
                base_url=gateway_url, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
                timeout=aiohttp.ClientTimeout(total=30)) as operator:
            tasks.append(asyncio.create_task(chaos.tend(stop_tending)))
            submitting = asyncio.create_task(wave.submit_all(operator, chaos.fraction_fired))
            tasks.append(submitting)
            await _wait(lambda: _true(wave.started is not None), 60, "the first submission")
            faults = asyncio.create_task(chaos.run())
            tasks.append(faults)
            watch_deadline = time.monotonic() + WAVE_TIMEOUT

            async def finished():
                if submitting.done():
                    submitting.result()  # raise a submission's failure here
                if faults.done():
                    faults.result()
                done = await wave.done()  # always asked: it notes when the wave finished
                return faults.done() and done
            await _wait(finished, max(1, watch_deadline - time.monotonic()),
                        "the faults to end and every group to be ready", interval=1)

        # Quiet: every process back, every event published, every queue empty.
        await _wait(lambda: _true(sup.all_running()), 30, "every process running")

        async def quiet():
            unpublished = await _query(private_postgres.url, lambda c: c.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL"))
            depths = await asyncio.to_thread(private_rabbit.queue_depths)
            busy = {q: d for q, d in depths.items() if d["ready"] or d["unacked"]}
            return unpublished == 0 and not busy and (depths, unpublished)
        try:
            depths, _ = await _wait(quiet, QUIET_TIMEOUT, "every queue to drain", interval=1)
        finally:
            stop_tending.set()
        wave_seconds = (wave.finished or time.monotonic()) - (wave.started or t0)

        audit = await _audit(private_postgres.url, sim_folder)
        probe = await _redeliver_handled_events(private_rabbit.url, private_postgres.url, log_dir)
        kills = [f for f in chaos.timeline if f["fault"].startswith("kill")]
        restarts = [f for f in chaos.timeline if f["fault"].startswith("restart")]
        service_queues = {q: depths.get(q, {"ready": 0, "unacked": 0}) for q in _service_queues()}
        figures.update({
            "vms": GROUPS * GROUP_SIZE,
            "groups": GROUPS,
            "group_size": GROUP_SIZE,
            # From the supervisor's own record: kills of a running process, each with the
            # process started in its place.
            "kills": len(sup.killed),
            "kills_during_wave": sum(1 for f in kills if f["during_wave"]),
            "kills_by_process": dict(collections.Counter(k.name for k in sup.killed)),
            "kills_not_restarted": [k.name for k in sup.killed
                                    if k.restarted_pid in (None, k.pid)],
            "kills_noted": sorted(f["pid"] for f in kills),
            "kills_recorded": sorted(k.pid for k in sup.killed),
            "kill_attempts_missed": sum(1 for f in chaos.timeline
                                        if f["fault"].startswith("no kill")),
            "restarts": {"rabbitmq": private_rabbit.restarts, "postgres": private_postgres.restarts},
            "restarts_during_wave": sum(1 for f in restarts if f["during_wave"]),
            "processes": sup.figures(),
            "crash_restarts": sum(m.crashes for m in sup.procs.values()),
            "redeliveries_ignored_by_inbox": probe["ignored_before"],
            "redelivery_probe": probe,
            "handler_retries": _count_log_lines(log_dir, "handler failed, will retry"),
            "dead_lettered": _count_log_lines(log_dir, "dead-lettered"),
            **audit,
            "queue_depths": service_queues,
            "queues_not_empty": {q: d for q, d in depths.items() if d["ready"] or d["unacked"]},
            "submit_attempts": wave.submit_attempts,
            "wave_seconds": round(wave_seconds, 1),
            "limits": {"in_flight": LIMIT_IN_FLIGHT, "archives_per_site": LIMIT_ARCHIVES_PER_SITE},
            "timeline": chaos.timeline,
        })
    finally:
        if "vm_states" not in figures:
            # Failed before the audit: keep what the store says about the VMs that did not
            # get ready, for the report.
            figures["not_ready"] = await _query(private_postgres.url, lambda c: _not_ready(c))
        stop_tending.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sup.stop_all()
        figures.setdefault("processes", sup.figures())
        figures.setdefault("timeline", chaos.timeline)
        figures["sim_vms_left_running"] = len(sim_vm_pids(sim_folder))
        kill_sim_vms(sim_folder)
        shutil.copytree(private_rabbit.folder / "log", log_dir / "rabbitmq", dirs_exist_ok=True)
        if figures.get("vm_states") != {"ready": GROUPS * GROUP_SIZE}:
            # Failed: keep the simulated VMs' own logs and the broker's, for the report.
            for folder, pattern in ((sim_folder, "sim-*.log"),):
                for path in folder.glob(pattern):
                    if path.stat().st_size:
                        (log_dir / folder.name).mkdir(parents=True, exist_ok=True)
                        shutil.copy(path, log_dir / folder.name / path.name)
        figures["runtime_seconds"] = round(time.monotonic() - t0, 1)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "figures.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")

    print(json.dumps({k: v for k, v in figures.items() if k != "timeline"}, indent=2,
                     default=str))
    assert figures["vm_states"] == {"ready": GROUPS * GROUP_SIZE}, figures["vm_states"]
    assert figures["group_statuses"] == {"ready": GROUPS}
    assert figures["kills"] >= MIN_KILLS and figures["kills_during_wave"] >= MIN_KILLS
    assert figures["kills_noted"] == figures["kills_recorded"]
    assert figures["kills_not_restarted"] == []
    assert all(figures["kills_by_process"].get(p, 0) >= 2 for p in PROCESSES)
    # The "redeliveries ignored" figure counts every redelivery the inboxes recognised:
    # events handled in the wave, published again with their ids, each raised it by one per
    # service bound to them, no more and no less.
    assert figures["redelivery_probe"]["ignored"] == figures["redelivery_probe"]["expected"]
    assert figures["restarts"] == {"rabbitmq": 1, "postgres": 1}
    assert figures["restarts_during_wave"] == 2
    assert figures["lost"] == 0, figures["lost_detail"]
    assert figures["unroutable"] == 0
    assert figures["duplicates"] == 0, figures["duplicate_facts"]
    assert figures["provider_vms_made"] == GROUPS * GROUP_SIZE
    assert figures["provider_records"] == GROUPS * GROUP_SIZE
    assert figures["provider_vms_made_twice"] == 0
    assert not figures["queues_not_empty"]
    # The limits held, and bound: more VMs than the limit were ready to go.
    assert 0 < figures["most_in_flight"] <= LIMIT_IN_FLIGHT
    assert max(figures["most_in_flight_per_host"].values()) <= LIMIT_IN_FLIGHT
    assert 0 < max(figures["most_archiving_per_site"].values()) <= LIMIT_ARCHIVES_PER_SITE
    figures["passed"] = True
    (ARTIFACTS / "figures.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")


async def _true(value: bool) -> bool:
    return value


async def _not_ready(conn) -> list[dict]:
    rows = await conn.fetch(
        "SELECT g.name AS group_name, g.status, v.name, v.state, v.held_state, v.failed_from,"
        " v.step, v.message FROM vms v JOIN groups g ON g.id = v.group_id"
        " WHERE v.state <> 'ready' ORDER BY g.name, v.position LIMIT 200")
    return [dict(r) for r in rows]
