"""A network cut, not a restart: the services and the gateway, each its own OS process as
deployed, reach RabbitMQ and PostgreSQL through relays (tests/integration/tcp_proxy.py) that the
test cuts for 30 s each, the broker first, then the database, while a small wave of simulated
VMs (shared.providers.simvm, retrying as the scripts' curl does) keeps reporting.

Two kinds of cut: `reset` (connections reset, new ones refused: the server's host is down) and
`blackhole` (packets silently dropped: nothing is reset, open connections fall silent for good,
new ones hang; only heartbeats and time-outs can tell). One product run takes both, one after
the other, each on a wave of its own groups: the reset cuts while the first wave reports, then,
that wave done and checked, the blackhole cuts while a second wave reports.

Each wave must complete with nothing lost (every VM of it ready, every report stored, no VM
made twice); in the end the outbox is published and every queue, retry queue and dead-letter
queue empty, no process restarted (each came back by itself from both kinds of cut), and each
stops gracefully when asked (exit 0, its connections closed or dropped within their bounds).
How long each took after each cut ended is printed and written to
test-artifacts/network-cut/<kind>.json (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import collections
import json
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import asyncpg
import pytest

from services.topology import SERVICES, topology
from shared.providers.sim import CREATE_CALLS
from shared.topology import Names
from tests.conftest import OPERATOR_TOKEN, eventually, free_port
from tests.chaos.supervisor import kill_sim_vms
from tests.integration.tcp_proxy import TcpProxy
from tests.service_process import REPO, ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]

ARTIFACTS = REPO / "test-artifacts" / "network-cut"
CUT_S = 30.0
GROUPS = 3
# Seconds a simulated VM waits between two steps it reports: its 14 script steps then span
# ~30 s, so VMs are reporting while the broker is away, and the later ones while the database is.
SIM_PAUSE = "2.0"
WAVE_TIMEOUT = 300.0
BACK_TIMEOUT = 120.0
# A graceful stop: the in-flight handlers' 30 s at most, plus the bounded closes.
STOP_TIMEOUT = 60.0

VM = """\
  - name: {name}
    role: {role}
{extra}    cpus: 1
    memory_mb: 512
    disks: [{{size_gb: 10}}]
    filesystems: [{{mount: /, size_gb: 8}}]
    network: {{address: 10.{g}.0.{n}/24, hostname: {name}.cut{g}.example}}
"""


KINDS = ("reset", "blackhole")


def group_name(kind: str, g: int) -> str:
    return f"cut-{kind}-{g}"


def plan(kind: str, g: int) -> str:
    net = 30 + KINDS.index(kind) * GROUPS + g  # a subnet of its own for each group
    vms = [VM.format(name="db1", role="db-master", extra="", g=net, n=11),
           VM.format(name="db2", role="db-replica", extra="    replica_of: db1\n", g=net, n=12),
           VM.format(name="app1", role="app", extra="", g=net, n=13)]
    return f"group: {group_name(kind, g)}\nvms:\n" + "".join(vms)


class Product:
    """The six services and the gateway, each `python -m services.<name>` with its own
    /readyz port (the gateway's is its own port)."""

    def __init__(self, settings, folder: Path):
        (folder / "images").mkdir(parents=True, exist_ok=True)
        common = {"provider": "sim", "sim_pause": SIM_PAUSE, "lab_images": str(folder / "images"),
                  # All simulated VMs call from loopback: the per-address limit on refused
                  # tokens is not under test here.
                  "gateway_auth_failures": "1000000", "log_level": "info"}
        self.ports: dict[str, int] = {}
        self.processes: dict[str, ServiceProcess] = {}
        for name in (*SERVICES, "gateway"):
            port = settings.gateway_port if name == "gateway" else free_port()
            extra = {} if name == "gateway" else {"metrics_port": str(port)}
            self.ports[name] = port
            self.processes[name] = ServiceProcess(name, settings, folder / "logs" / f"{name}.log",
                                                  **common, **extra)

    def start(self) -> None:
        for process in self.processes.values():
            process.start()

    async def stop(self, timeout: float) -> dict[str, float]:
        """SIGTERM to every process, as systemd's stop; seconds each took to exit. Polled, not
        waited for: the relays live on this event loop, and a blocked loop would silence every
        connection the processes are closing. Still running after `timeout`: SIGKILL."""
        began = time.monotonic()
        running = {name: p.process for name, p in self.processes.items()
                   if p.process is not None and p.process.poll() is None}
        for process in running.values():
            process.terminate()
        took: dict[str, float] = {}

        def exited() -> bool:
            for name, process in running.items():
                if name not in took and process.poll() is not None:
                    took[name] = round(time.monotonic() - began, 1)
            return len(took) == len(running)
        try:
            await eventually(exited, timeout, interval=0.2, what="every process stopped")
        finally:
            for process in running.values():
                if process.poll() is None:
                    process.kill()
                    process.wait(10)
        return took

    def exited(self) -> dict[str, int]:
        return {name: p.process.returncode for name, p in self.processes.items()
                if p.process is None or p.process.poll() is not None}

    async def ready(self, name: str) -> bool:
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
                async with http.get(f"http://127.0.0.1:{self.ports[name]}/readyz") as answer:
                    return answer.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False


async def consumers(amqp_url: str, queues: list[str]) -> dict[str, tuple[int, int]]:
    """(consumers, messages) of each queue, asked of the broker directly (not through a relay)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        found = {}
        for name in queues:
            queue = await channel.declare_queue(name, passive=True)
            result = queue.declaration_result
            found[name] = (result.consumer_count, result.message_count)
        return found
    finally:
        await connection.close()


def all_queues(prefix: str, retries: int) -> list[str]:
    names = Names(prefix)
    found = []
    for service in topology().services:
        found += [names.queue(service), names.dead_letters(service)]
        found += [names.retry(service, n) for n in range(1, retries + 1)]
    return found


async def measure_back(product: Product, check_queue, since: float) -> dict[str, float]:
    """Seconds after `since` at which each process was working again: its /readyz 200 (the
    database and the broker answer it) and, for a service, a consumer on its queue again."""
    back: dict[str, float] = {}

    async def everyone_back():
        for name in product.processes:
            if name in back:
                continue
            if await product.ready(name) and await check_queue(name):
                back[name] = round(time.monotonic() - since, 1)
        return len(back) == len(product.processes)
    await eventually(everyone_back, BACK_TIMEOUT, interval=0.5,
                     what=f"every process working again (back so far: {back})")
    return back


class Wave:
    """One kind of cut on its own groups: submitted, cut, measured, checked."""

    def __init__(self, kind: str, settings, relayed, product: Product, direct, relays):
        self.kind, self.settings, self.relayed = kind, settings, relayed
        self.product, self.direct = product, direct
        self.store_relay, self.broker_relay = relays
        self.groups = [group_name(kind, g) for g in range(GROUPS)]
        self.figures: dict = {"kind": kind, "cut_s": CUT_S}
        self.names = Names(settings.bus_prefix)

    async def consuming(self, name: str) -> bool:
        if name == "gateway":
            return True
        found = await consumers(self.settings.amqp_url, [self.names.queue(name)])
        return found[self.names.queue(name)][0] >= 1

    async def cut(self, relay: TcpProxy) -> None:
        if self.kind == "reset":
            await relay.cut()
        else:
            relay.blackhole()

    async def reports(self) -> int:
        return await self.direct.fetchval(
            "SELECT count(*) FROM vm_transitions t JOIN vms v ON v.id = t.vm_id"
            " JOIN groups g ON g.id = v.group_id WHERE g.name = ANY($1)", self.groups)

    async def vms(self) -> list:
        return await self.direct.fetch(
            "SELECT v.id, v.name, v.state, v.step, v.provider_ref FROM vms v"
            " JOIN groups g ON g.id = v.group_id WHERE g.name = ANY($1)", self.groups)

    async def ride_out(self) -> None:
        product, figures = self.product, self.figures
        async with aiohttp.ClientSession(
                base_url=self.settings.gateway_url, timeout=aiohttp.ClientTimeout(total=30),
                headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as operator:
            for g in range(GROUPS):
                async with operator.post("/v1/groups", data=plan(self.kind, g)) as answer:
                    assert answer.status == 201, await answer.text()

        async def vms_reporting():
            return any(r["state"] == "configuring" and r["step"] not in (None, "boot")
                       for r in await self.vms())
        await eventually(vms_reporting, 120, interval=0.5,
                         what=f"simulated VMs of the {self.kind} wave reporting")

        # The broker away for 30 s: the VMs' reports are still taken (the database is there).
        before = await self.reports()
        await self.cut(self.broker_relay)
        await asyncio.sleep(CUT_S)  # the fault's duration
        figures["reports_stored_during_broker_cut"] = await self.reports() - before
        figures["unpublished_at_broker_restore"] = await self.direct.fetchval(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL")
        await self.broker_relay.restore()
        restored = time.monotonic()
        figures["back_after_broker_s"] = await measure_back(product, self.consuming, restored)

        # The database away for 30 s: the gateway answers 503 and the VMs try again.
        assert not product.exited(), product.exited()
        await self.cut(self.store_relay)
        await asyncio.sleep(CUT_S)  # the fault's duration
        await self.store_relay.restore()
        restored = time.monotonic()
        figures["back_after_database_s"] = await measure_back(product, self.consuming, restored)

        async def wave_done():
            statuses = await self.direct.fetch(
                "SELECT status, count(*) AS n FROM groups WHERE name = ANY($1) GROUP BY 1",
                self.groups)
            return {r["status"]: r["n"] for r in statuses} == {"ready": GROUPS}
        await eventually(wave_done, WAVE_TIMEOUT, interval=1,
                         what=f"every group of the {self.kind} wave ready")
        figures["wave_done_after_last_cut_s"] = round(time.monotonic() - restored, 1)
        assert not product.exited(), product.exited()
        figures["silenced_connections_left"] = {"database": self.store_relay.silenced,
                                                "broker": self.broker_relay.silenced}

    async def check(self, made: collections.Counter) -> None:
        """Nothing of this wave lost, nothing twice."""
        vms = await self.vms()
        assert len(vms) == 3 * GROUPS and {r["state"] for r in vms} == {"ready"}, \
            [(r["name"], r["state"]) for r in vms]
        reached = collections.defaultdict(set)
        for row in await self.direct.fetch(
                "SELECT vm_id, to_state FROM vm_transitions WHERE vm_id = ANY($1)",
                [r["id"] for r in vms]):
            reached[row["vm_id"]].add(row["to_state"])
        for vm in vms:
            assert {"configuring", "configured", "provisioned", "ready"} <= reached[vm["id"]], \
                (vm["name"], reached[vm["id"]])
        said = await self.direct.fetch(
            "SELECT vm_id, count(*) AS n FROM vm_messages WHERE vm_id = ANY($1)"
            " AND text LIKE 'simulated VM: fetched%' GROUP BY 1", [r["id"] for r in vms])
        assert {r["vm_id"] for r in said} == {r["id"] for r in vms}
        self.figures["reports_stored_twice"] = sum(r["n"] - 1 for r in said)
        # Each of this wave's VMs made once, by one create call that made it.
        assert {made[r["provider_ref"]] for r in vms} == {1}, \
            {r["name"]: made[r["provider_ref"]] for r in vms}


@pytest.mark.timeout(900)
async def test_a_wave_rides_out_30_s_network_cuts_of_the_broker_and_the_database(
        settings, tmp_path):
    db, mq = urlsplit(settings.database_url), urlsplit(settings.amqp_url)
    store_relay, broker_relay = TcpProxy(db.hostname, db.port), TcpProxy(mq.hostname, mq.port)
    await store_relay.start()
    await broker_relay.start()
    # The product's own back-off for a failing handler (1 s, 5 s, 30 s), not the tests' short one.
    relayed = settings.model_copy(update={
        "database_url": store_relay.url(settings.database_url),
        "amqp_url": broker_relay.url(settings.amqp_url), "retry_delays": (1.0, 5.0, 30.0)})
    product = Product(relayed, tmp_path)
    direct = await asyncpg.connect(settings.database_url,
                                   server_settings={"search_path": settings.database_schema})
    waves = [Wave(kind, settings, relayed, product, direct, (store_relay, broker_relay))
             for kind in KINDS]
    product.start()
    try:
        for name in product.processes:
            await eventually(lambda: product.ready(name), 60, interval=0.2,
                             what=f"{name} ready")
        for wave in waves:
            await wave.ride_out()

        async def quiet():
            unpublished = await direct.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL")
            depths = await consumers(settings.amqp_url,
                                     all_queues(settings.bus_prefix, len(relayed.retry_delays)))
            busy = {q: n for q, (_, n) in depths.items() if n}
            return (unpublished, busy) if unpublished == 0 and not busy else None
        await eventually(quiet, 60, interval=1, what="the outbox published and every queue empty")
        errors = await direct.fetchval("SELECT count(*) FROM outbox WHERE error IS NOT NULL")
        assert errors == 0

        calls = [json.loads(line) for line in
                 (settings.state_dir / "sim" / CREATE_CALLS).read_text().splitlines()]
        made = collections.Counter(c["ref"] for c in calls if c["made"])
        assert len(made) == 3 * GROUPS * len(waves) and set(made.values()) == {1}, made
        for wave in waves:
            await wave.check(made)
        # Each came back by itself from both kinds of cut: no process exited, none was started
        # again; and each stops gracefully, its connections closed or dropped in bounded time.
        assert not product.exited(), product.exited()
        stopped = await product.stop(STOP_TIMEOUT)
        waves[-1].figures["stopped_after_s"] = stopped
        assert product.exited() == {name: 0 for name in product.processes}, product.exited()
    finally:
        await product.stop(STOP_TIMEOUT)
        kill_sim_vms(settings.state_dir / "sim")
        await direct.close()
        await store_relay.cut()
        await broker_relay.cut()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copytree(tmp_path / "logs", ARTIFACTS / "logs", dirs_exist_ok=True)
        for wave in waves:
            (ARTIFACTS / f"{wave.kind}.json").write_text(json.dumps(wave.figures, indent=2)
                                                         + "\n")
            print(json.dumps(wave.figures, indent=2))
