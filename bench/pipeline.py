"""N VMs through the whole event pipeline, against the real RabbitMQ and PostgreSQL.

All six services and the gateway run in one Host with the fake provider (in-memory VMs). The
VMs are simulated over HTTP with shared.vmclient, doing what tests/integration/harness.py's
configure_vm and an app VM's first boot do: fetch the script, report configuring twice and a
message, report configured; once booted from disk, report provisioned. Groups are app-only
(no databases), `--group-size` VMs each.

Measured: wall time from the first submission to the last group ready, events/s (outbox rows
per second), deliveries/s (inbox rows), VMs/min, and per hop (event type -> service) the
latency from the outbox row's created_at (the publishing transaction's start) to the inbox
row's processed_at (the handling transaction's start), p50/p99, plus the relay hop
(created_at -> published_at). In the same process and run, the ceilings: raw aio-pika
(publish with confirms to a quorum queue, persistent, and consume with ack) and raw asyncpg
single-row autocommit inserts, each for the same message count as the pipeline's events.

    .venv/bin/python -m bench.pipeline --vms 100,1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

import aio_pika
import aiohttp
import asyncpg

from bench.common import (OPERATOR_TOKEN, SocketWrites, append_row, bench_settings, clean_up, finish,
                          now_stamp, peak_rss_mb, plot_path, profiled, pyplot)
from services.runtime import SERVICES, Host
from shared.logging import configure_logging
from shared.providers.base import BootSource
from shared.providers.fake import FakeProvider
from shared.settings import Settings
from shared.vmclient import GatewayRefused, VmClient

VM_TEMPLATE = """\
  - name: app{j}
    role: app
    cpus: 1
    memory_mb: 512
    disks: [{{size_gb: 10}}]
    filesystems: [{{mount: /, size_gb: 8}}]
    network: {{address: 10.20.{hi}.{lo}/16, hostname: app{j}.g{i}.example}}
"""


def plan_text(group: str, i: int, size: int) -> str:
    vms = "".join(VM_TEMPLATE.format(j=j, i=i, hi=(j + 1) // 250, lo=(j + 1) % 250 + 1)
                  for j in range(size))
    return f"group: {group}\nvms:\n{vms}"


class BenchProvider(FakeProvider):
    """The fake provider, which also hands every boot to the simulated VMs."""

    def __init__(self) -> None:
        super().__init__()
        self.boots: asyncio.Queue = asyncio.Queue()

    async def boot(self, ref, source, *, kernel_args=None):
        await super().boot(ref, source, kernel_args=kernel_args)
        vm = self._vm(ref)
        token = (kernel_args or {}).get("ferry.token") or next(
            a["ferry.token"] for _, a in reversed(vm.boots) if a.get("ferry.token"))
        self.boots.put_nowait((str(vm.spec.vm_id), source, token))


async def _retrying(call, attempts: int = 200, delay: float = 0.02):
    """A VM may call before the transaction that booted it committed (its token unknown yet:
    401; its state not moved yet: 409; no script yet: 503): retry, as the real VM would."""
    for n in range(attempts):
        try:
            return await call()
        except GatewayRefused as exc:
            if exc.status not in (401, 409, 503) or n == attempts - 1:
                raise
            await asyncio.sleep(delay)


async def play_vm(session: aiohttp.ClientSession, url: str, vm_id: str, source, token: str) -> int:
    """One boot of one simulated VM; returns how many HTTP requests it made."""
    vm = VmClient(url, vm_id, token, session=session)
    if source == BootSource.NETWORK:
        script = await _retrying(vm.script)
        assert script.startswith("#!/bin/bash")
        await _retrying(lambda: vm.state("configuring", "partition"))
        await vm.message("partitioned /dev/vda")
        await vm.state("configuring", "unpack-archives")
        await vm.state("configured", "done")
        return 5
    await _retrying(lambda: vm.state("provisioned", "first-boot"))
    return 1


async def vm_players(provider: BenchProvider, url: str, concurrency: int, stats: dict) -> None:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker():
            while True:
                vm_id, source, token = await provider.boots.get()
                try:
                    made = await play_vm(session, url, vm_id, source, token)
                    stats["requests"] += made
                except Exception as exc:  # noqa: BLE001 - counted, the run reports it
                    stats["errors"].append(f"{vm_id}: {exc}"[:300])
                finally:
                    provider.boots.task_done()
        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        try:
            await asyncio.Event().wait()
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)


async def run_pipeline(settings: Settings, vms: int, group_size: int, concurrency: int,
                       timeout: float) -> dict:
    provider = BenchProvider()
    host = Host(settings, SERVICES, provider=provider, gateway=True)
    await host.start()
    stats = {"requests": 0, "errors": []}
    players = asyncio.create_task(vm_players(provider, settings.gateway_url, concurrency, stats))
    groups = [(f"bench-{i}", i, min(group_size, vms - i * group_size))
              for i in range((vms + group_size - 1) // group_size)]
    try:
        started, submitted = await submit_groups(settings.gateway_url, groups)
        pool = host.pool
        deadline = started + timeout
        while True:
            ready = await pool.fetchval("SELECT count(*) FROM groups WHERE status = 'ready'")
            if ready == len(groups):
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"only {ready}/{len(groups)} groups ready after {timeout}s")
            if stats["errors"]:
                raise RuntimeError(f"simulated VMs failed: {stats['errors'][:3]}")
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        figures = await flow_figures(pool)
    finally:
        players.cancel()
        await asyncio.gather(players, return_exceptions=True)
        await host.stop(timeout=5)
    return {
        "vms": vms, "groups": len(groups), "group_size": group_size, "concurrency": concurrency,
        "seconds": elapsed, "submit_seconds": submitted, "http_requests": stats["requests"],
        **rates(figures, vms, elapsed),
    }


async def submit_groups(gateway_url: str,
                        groups: list[tuple[str, int, int]]) -> tuple[float, float]:
    """Every group's plan (name, index, size) posted at once, as an operator would; when the
    submissions began (perf_counter) and how long they took."""
    async with aiohttp.ClientSession(
        base_url=gateway_url, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
        connector=aiohttp.TCPConnector(limit=8),
    ) as operator:
        started = time.perf_counter()

        async def submit(name, i, size):
            async with operator.post("/v1/groups", data=plan_text(name, i, size)) as r:
                assert r.status == 201, await r.text()

        await asyncio.gather(*(submit(*g) for g in groups))
    return started, time.perf_counter() - started


async def flow_figures(pool) -> dict:
    """What the run's outbox and inbox rows say: events, deliveries, and per hop (event type ->
    service) the latency p50/p99 from the outbox row's created_at to the inbox row's
    processed_at, all hops together, and the relay's (created_at -> published_at)."""
    # Let the relay publish the last events (group.ready) before counting.
    for _ in range(100):
        if not await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"):
            break
        await asyncio.sleep(0.05)
    events = await pool.fetchval("SELECT count(*) FROM outbox")
    deliveries = await pool.fetchval("SELECT count(*) FROM inbox")
    hops = await pool.fetch(
        "SELECT o.routing_key AS event, i.service, count(*) AS n,"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM i.processed_at - o.created_at)) * 1000 AS p50_ms,"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM i.processed_at - o.created_at)) * 1000 AS p99_ms"
        " FROM outbox o JOIN inbox i ON i.event_id = o.event_id"
        " GROUP BY 1, 2 ORDER BY 1, 2")
    relay = await pool.fetchrow(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM published_at - created_at)) * 1000 AS p50_ms,"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM published_at - created_at)) * 1000 AS p99_ms"
        " FROM outbox WHERE published_at IS NOT NULL")
    all_hops = await pool.fetchrow(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM i.processed_at - o.created_at)) * 1000 AS p50_ms,"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM i.processed_at - o.created_at)) * 1000 AS p99_ms"
        " FROM outbox o JOIN inbox i ON i.event_id = o.event_id")
    return {"events": events, "deliveries": deliveries,
            "hop_p50_ms": all_hops["p50_ms"], "hop_p99_ms": all_hops["p99_ms"],
            "relay_p50_ms": relay["p50_ms"], "relay_p99_ms": relay["p99_ms"],
            "hops": [dict(h) for h in hops]}


def rates(figures: dict, vms: int, elapsed: float) -> dict:
    """The flow's figures with their rates over the run's wall time."""
    return {**figures, "events_per_s": figures["events"] / elapsed,
            "deliveries_per_s": figures["deliveries"] / elapsed, "vms_per_min": vms / elapsed * 60}


async def raw_amqp(settings: Settings, count: int, batch: int = 200, prefetch: int = 64) -> dict:
    """The broker's ceiling: persistent, confirmed publishes (in gathered batches, as the relay
    does) to a quorum queue, consumed and acked one by one."""
    queue_name = f"{settings.bus_prefix}.raw-ceiling"
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        pub = await connection.channel(publisher_confirms=True)
        con = await connection.channel()
        await con.set_qos(prefetch_count=prefetch)
        queue = await con.declare_queue(queue_name, durable=True,
                                        arguments={"x-queue-type": "quorum"})
        body = json.dumps({"id": str(uuid.uuid4()), "type": "vm.state_changed",
                           "payload": {"state": "configuring", "step": "partition"}}).encode()
        got = 0
        done = asyncio.Event()

        async def on_message(message):
            nonlocal got
            await message.ack()
            got += 1
            if got >= count:
                done.set()

        started = time.perf_counter()
        tag = await queue.consume(on_message)
        for start in range(0, count, batch):
            await asyncio.gather(*(
                pub.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=queue_name, mandatory=True)
                for _ in range(min(batch, count - start))))
        await asyncio.wait_for(done.wait(), 300)
        elapsed = time.perf_counter() - started
        await queue.cancel(tag)
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
    return {"messages": count, "seconds": elapsed, "per_s": count / elapsed}


async def raw_pg(settings: Settings, count: int, workers: int = 16) -> dict:
    """The database's ceiling: single-row inserts of an event-sized jsonb, each its own
    transaction (autocommit), from as many connections as the Host's pool."""
    pool = await asyncpg.create_pool(settings.database_url, min_size=workers, max_size=workers)
    table = f"{settings.database_schema}_raw"
    try:
        await pool.execute(f"CREATE TABLE public.{table} (id bigserial PRIMARY KEY,"
                           " event_id uuid, body jsonb, created_at timestamptz DEFAULT now())")
        body = json.dumps({"type": "vm.state_changed", "payload": {"state": "configuring"}})
        left = iter(range(count))

        async def worker():
            async with pool.acquire() as conn:
                for _ in left:
                    await conn.execute(f"INSERT INTO public.{table} (event_id, body)"
                                       " VALUES ($1, $2::jsonb)", uuid.uuid4(), body)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.perf_counter() - started
    finally:
        await pool.execute(f"DROP TABLE IF EXISTS public.{table}")
        await pool.close()
    return {"inserts": count, "seconds": elapsed, "per_s": count / elapsed}


async def measure(vms: int, group_size: int, concurrency: int, timeout: float,
                  ceilings: bool = True, quiet: bool = True) -> dict:
    settings = bench_settings("pipeline")
    if quiet:
        configure_logging(settings)
    try:
        cpu0 = time.process_time()
        with SocketWrites() as writes:
            result = await run_pipeline(settings, vms, group_size, concurrency, timeout)
        # Database round trips and broker writes per VM (counted, not timed).
        result["pg_writes_per_vm"] = writes.counts.get("pg", 0) / max(vms, 1)
        result["amqp_writes_per_vm"] = writes.counts.get("amqp", 0) / max(vms, 1)
        # This process's CPU (services, gateway and simulated VMs; not PostgreSQL's or
        # RabbitMQ's): less disturbed by other people's load than wall time.
        result["process_cpu_s"] = time.process_time() - cpu0
        result["cpu_ms_per_vm"] = result["process_cpu_s"] / max(vms, 1) * 1000
        if ceilings:
            result["raw_amqp"] = await raw_amqp(settings, result["events"])
            result["raw_pg"] = await raw_pg(settings, result["events"])
            result["ratio_events_to_raw_amqp"] = result["events_per_s"] / result["raw_amqp"]["per_s"]
            result["ratio_events_to_raw_pg"] = result["events_per_s"] / result["raw_pg"]["per_s"]
    finally:
        await clean_up(settings)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def report(runs: list[dict], started: str) -> None:
    header = ["date (UTC)", "VMs", "groups", "s", "events/s", "VMs/min", "hop p50 ms",
              "hop p99 ms", "raw amqp msg/s", "ratio", "raw pg ins/s", "ratio"]
    for r in runs:
        append_row("pipeline", header, [
            started, r["vms"], r["groups"], round(r["seconds"], 1), r["events_per_s"],
            r["vms_per_min"], r["hop_p50_ms"], r["hop_p99_ms"],
            r.get("raw_amqp", {}).get("per_s", "-"), r.get("ratio_events_to_raw_amqp", "-"),
            r.get("raw_pg", {}).get("per_s", "-"), r.get("ratio_events_to_raw_pg", "-"),
        ])
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [r["vms"] for r in runs]
    a.plot(xs, [r["events_per_s"] for r in runs], "o-", label="pipeline events/s")
    a.plot(xs, [r.get("raw_amqp", {}).get("per_s", 0) for r in runs], "s--", label="raw aio-pika msg/s")
    a.plot(xs, [r.get("raw_pg", {}).get("per_s", 0) for r in runs], "^--", label="raw asyncpg inserts/s")
    a.axhline(2000, color="grey", lw=0.8, ls=":", label="target 2,000 events/s")
    a.set_xscale("log"), a.set_yscale("log"), a.set_xlabel("VMs"), a.set_ylabel("per second")
    a.legend(fontsize=7), a.set_title("throughput vs ceilings (same run)")
    last = runs[-1]
    labels = [f"{h['event']}→{h['service']}" for h in last["hops"]]
    ys = range(len(labels))
    b.barh(ys, [h["p99_ms"] for h in last["hops"]], color="#f4a", label="p99")
    b.barh(ys, [h["p50_ms"] for h in last["hops"]], color="#48c", label="p50")
    b.set_yticks(list(ys), labels, fontsize=6), b.set_xlabel("ms, outbox created → inbox processed")
    b.set_xscale("log"), b.legend(fontsize=7), b.set_title(f"per-hop latency, {last['vms']} VMs")
    fig.tight_layout()
    fig.savefig(plot_path("pipeline"), dpi=110)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", default="100,1000", help="comma-separated VM counts")
    parser.add_argument("--group-size", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=100, help="simulated VMs at once")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per point")
    parser.add_argument("--no-ceilings", action="store_true")
    parser.add_argument("--no-report", action="store_true",
                        help="no row, no plot (the JSON result is still written)")
    parser.add_argument("--profile", metavar="FILE", help="pyinstrument the run, text to FILE")
    args = parser.parse_args(argv)
    started = now_stamp()
    counts = [int(v) for v in args.vms.split(",")]
    runs = []
    with profiled(args.profile):
        for n in counts:
            run = asyncio.run(measure(n, args.group_size, args.concurrency, args.timeout,
                                      ceilings=not args.no_ceilings))
            runs.append(run)
            brief = {k: v for k, v in run.items() if k != "hops"}
            print(json.dumps(brief, default=str), flush=True)
    return finish("pipeline", args, started, runs, lambda: report(runs, started))

if __name__ == "__main__":
    main()
