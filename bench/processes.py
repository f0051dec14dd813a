"""N VMs through the pipeline with every service in its own process, as deployed; then with two
replicas of every service.

Each service (the six and the gateway) runs as its own OS process (bench/fleet.py: what
`python -m services.<name>` runs, with the fleet provider handed in), started and stopped by
the chaos wave's supervisor (tests/chaos/supervisor.py); `--replicas 2` starts each twice
(the second gateway on a port of its own). The simulated VMs run in `--drivers` processes of
their own, each playing its share of the boots over HTTP (a driver talks to one gateway; with
two gateways the drivers are split between them). Groups are app-only, `--group-size` VMs each,
submitted at once; the run ends when every group is ready (or `--timeout`).

Measured per run, as bench.pipeline measures it (the same queries on the outbox and inbox
rows): wall time, events/s, deliveries/s, VMs/min, per-hop p50/p99. Also each process's CPU
seconds over the run (from /proc), PostgreSQL's and RabbitMQ's, the machine's busy core-seconds
and its load average at the start and the end: the machine is shared.

The ceiling, in the same run and the same way (separate processes): raw aio-pika, one process
publishing with confirms (persistent, in gathered batches, as the relay does) to a quorum queue,
another consuming with ack, for as many messages as the one-replica run's events; timed from
the publisher's first publish to the consumer's last ack.

    .venv/bin/python -m bench.processes --vms 1000 --replicas 1,2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika
import aiohttp
import asyncpg

from bench.common import (ROOT, append_row, bench_settings, clean_up, finish,
                          free_port, now_stamp, pyplot, plot_path)
from bench.fleet import feed_path
from bench.pipeline import flow_figures, plan_text, rates, submit_groups
from shared.settings import MIN_POOL, Settings
from shared.store.db import connect
from shared.topology import Names
from tests.chaos.supervisor import PROCESSES, Supervisor
from tests.service_process import settings_env

CLK_TCK = os.sysconf("SC_CLK_TCK")
# The shared servers' processes, by their command name (/proc/<pid>/comm).
SERVERS = {"postgres": "postgres", "beam.smp": "rabbitmq"}


# -- CPU and load, from /proc --------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def servers_cpu() -> dict[str, float]:
    """CPU seconds so far of every PostgreSQL and RabbitMQ process on the machine (whoever's
    work they did: other people's tests use the same servers)."""
    totals = {name: 0.0 for name in SERVERS.values()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm in SERVERS:
            totals[SERVERS[comm]] += cpu_seconds(int(entry.name))
    return totals


def machine_busy() -> float:
    """Core-seconds the whole machine has been busy (not idle, not waiting on I/O)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


class CpuMeter:
    """CPU seconds of the given processes, the servers and the machine between two points."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.start = self._read()

    def _read(self) -> dict:
        return {"procs": {name: cpu_seconds(pid) for name, pid in self.pids.items()},
                "servers": servers_cpu(), "machine": machine_busy(), "at": time.monotonic()}

    def stop(self) -> dict:
        end = self._read()
        procs = {n: round(end["procs"][n] - self.start["procs"][n], 2) for n in self.pids}
        return {"wall_s": end["at"] - self.start["at"], "processes": procs,
                "servers": {n: round(end["servers"][n] - self.start["servers"][n], 2)
                            for n in end["servers"]},
                "machine_busy_core_s": round(end["machine"] - self.start["machine"], 2)}


# -- the pipeline as processes ----------------------------------------------------------------

async def _until(check, timeout: float, what: str, failed=lambda: None) -> None:
    """Poll `check` until it is true; TimeoutError after `timeout`; `failed` names a reason to
    stop at once (a process that exited, a VM that failed)."""
    deadline = time.monotonic() + timeout
    while not await check():
        reason = failed()
        if reason:
            raise RuntimeError(f"while waiting for {what}: {reason}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout}s")
        await asyncio.sleep(0.05)


async def _consumers_ready(settings: Settings, replicas: int) -> bool:
    """Every service's queue has its `replicas` consumers (each process has started)."""
    from services.topology import topology
    names = Names(settings.bus_prefix)
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for service in topology().services:
            try:
                queue = await channel.declare_queue(names.queue(service), passive=True)
            except aio_pika.exceptions.ChannelClosed:
                return False  # not declared yet
            if queue.declaration_result.consumer_count < replicas:
                return False
    return True


async def _gateway_up(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(f"{url}/openapi.json") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


def _exited(sup: Supervisor, drivers: list[subprocess.Popen]) -> str | None:
    for name, managed in sup.procs.items():
        if managed.process is None or managed.process.poll() is not None:
            return f"process {name} exited (see {sup.log_dir / (name + '.log')})"
    for d in drivers:
        if d.poll() is not None:
            return f"a VM driver exited ({d.args})"
    return None


def _vm_errors(folder: Path) -> str | None:
    for path in folder.glob("errors-*.log"):
        text = path.read_text()
        if text:
            return "simulated VMs failed: " + " | ".join(text.splitlines()[:3])
    return None


def start_spies(pids: dict[str, int], names: list[str], folder: Path) -> list[subprocess.Popen]:
    """py-spy (raw collapsed stacks, for bench.spy_summary) on the named processes, from
    outside, without pausing them (--nonblocking): it barely slows what it samples."""
    folder.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).with_name("py-spy"))
    return [subprocess.Popen([spy, "record", "--pid", str(pids[n]), "-r", "100", "-f", "raw",
                              "--nonblocking", "-o", str(folder / f"{n}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for n in names]


def stop_spies(spies: list[subprocess.Popen]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its recording on SIGINT
    for spy in spies:
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(10)


# Connections each process's pool asks for by default (services/runtime.py): a service 6,
# the gateway 16.
POOL_NEED = {"gateway": 16}
POOL_NEED_SERVICE = 6


async def pool_cap(settings: Settings, replicas: int, headroom: int = 10) -> int:
    """FERRY_DATABASE_POOL_MAX for the run: 0 (the defaults) if every process's default pool fits
    under the server's max_connections beside the connections open now (other people's), else
    an even share of what is left (two replicas of everything need 104 of the default 100)."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        limit = int(await conn.fetchval("SHOW max_connections"))
        in_use = await conn.fetchval("SELECT count(*) FROM pg_stat_activity")
    finally:
        await conn.close()
    need = replicas * sum(POOL_NEED.get(p, POOL_NEED_SERVICE) for p in PROCESSES)
    free = limit - in_use - headroom
    if need <= free:
        return 0
    cap = free // (replicas * len(PROCESSES))
    if cap < MIN_POOL:
        raise RuntimeError(f"PostgreSQL has {free} connections to spare ({in_use} of {limit} "
                           f"in use): too few for {replicas * len(PROCESSES)} processes")
    return cap


async def run_processes(vms: int, group_size: int, replicas: int, drivers: int,
                        concurrency: int, timeout: float, in_flight: int,
                        spy: list[str] = (), spy_dir: Path | None = None) -> dict:
    settings = bench_settings("processes")
    settings = settings.model_copy(update={
        # Limits are an operator's choice (0: none); the bench measures the pipeline's flow.
        "limit_in_flight": in_flight, "limit_in_flight_per_host": in_flight,
        "database_pool_max": await pool_cap(settings, replicas)})
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-processes-"))
    sim = settings.state_dir / "sim"
    sim.mkdir(parents=True, exist_ok=True)
    gateways = [settings.gateway_url] + [f"http://127.0.0.1:{free_port()}"
                                         for _ in range(replicas - 1)]
    names = [p if r == 0 else f"{p}-{r + 1}" for r in range(replicas) for p in PROCESSES]

    def argv(name: str) -> list[str]:
        service, _, replica = name.partition("-")
        port = ["--port", gateways[int(replica) - 1].rsplit(":", 1)[1]] if replica else []
        return [sys.executable, "-m", "bench.fleet", "service", service,
                "--drivers", str(drivers), *port]

    env = settings_env(settings)
    sup = Supervisor(env, work / "logs", processes=tuple(names), argv=argv)
    players: list[subprocess.Popen] = []
    groups = [(f"bench-{i}", i, min(group_size, vms - i * group_size))
              for i in range((vms + group_size - 1) // group_size)]
    conn = None
    spies: list[subprocess.Popen] = []
    try:
        sup.start_all()
        for k in range(drivers):
            with open(work / "logs" / f"driver-{k}.log", "ab") as log:
                players.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.fleet", "driver",
                     "--feed", str(feed_path(sim, k)), "--gateway", gateways[k % replicas],
                     "--concurrency", str(max(1, concurrency // drivers)),
                     "--stats", str(work / f"stats-{k}.json"),
                     "--errors", str(sim / f"errors-{k}.log")],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL))
        exited = lambda: _exited(sup, players)  # noqa: E731
        # Fourteen Python processes starting at once on two shared cores take a while.
        for url in gateways:
            await _until(lambda: _gateway_up(url), 300, f"the gateway at {url}", exited)
        await _until(lambda: _consumers_ready(settings, replicas), 300,
                     "every service's consumers", exited)
        conn = await connect(settings)
        pids = {n: m.process.pid for n, m in sup.procs.items()}
        pids.update({f"vm-driver-{k}": p.pid for k, p in enumerate(players)})
        load_start = loadavg()
        spies = start_spies(pids, list(spy), spy_dir / f"{replicas}x") if spy else []
        meter = CpuMeter(pids)
        started, submitted = await submit_groups(settings.gateway_url, groups)

        async def all_ready() -> bool:
            ready = await conn.fetchval("SELECT count(*) FROM groups WHERE status = 'ready'")
            return ready == len(groups)

        await _until(all_ready, timeout, f"{len(groups)} groups ready",
                     lambda: _vm_errors(sim) or exited())
        elapsed = time.perf_counter() - started
        cpu = meter.stop()
        load_end = loadavg()
        stop_spies(spies)
        figures = await flow_figures(conn)
    finally:
        stop_spies(spies)
        if conn is not None:
            await conn.close()
        for p in players:
            p.terminate()
        for p in players:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        sup.stop_all()
        await clean_up(settings)
    stats = [json.loads(path.read_text()) for path in sorted(work.glob("stats-*.json"))]
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(settings.state_dir, ignore_errors=True)
    busiest = max(cpu["processes"], key=cpu["processes"].get)
    return {
        "vms": vms, "groups": len(groups), "group_size": group_size, "replicas": replicas,
        "drivers": drivers, "concurrency": concurrency, "in_flight_limit": in_flight,
        "database_pool_max": settings.database_pool_max,
        "seconds": elapsed, "submit_seconds": submitted,
        "http_requests": sum(s["requests"] for s in stats),
        "vm_boots": sum(s["boots"] for s in stats),
        **rates(figures, vms, elapsed),
        "cpu": cpu, "busiest_process": busiest,
        "ferry_cpu_s": round(sum(v for n, v in cpu["processes"].items()
                                 if not n.startswith("vm-driver")), 2),
        "loadavg_start": load_start, "loadavg_end": load_end,
    }


# -- the ceiling: raw aio-pika, publisher and consumer in separate processes -------------------

async def raw_consume(url: str, queue_name: str, count: int, prefetch: int) -> None:
    """Consume `count` messages with ack; print "ready" once consuming, then the last ack's time."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.declare_queue(queue_name, durable=True,
                                            arguments={"x-queue-type": "quorum"})
        got = 0
        done = asyncio.Event()

        async def on_message(message):
            nonlocal got
            await message.ack()
            got += 1
            if got >= count:
                done.set()

        await queue.consume(on_message)
        print("ready", flush=True)
        await asyncio.wait_for(done.wait(), 600)
        print(json.dumps({"last": time.time()}), flush=True)


async def raw_publish(url: str, queue_name: str, count: int, batch: int) -> None:
    """Publish `count` persistent messages with confirms, `batch` gathered at a time (as the
    relay does); print the first publish's time."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        body = json.dumps({"id": str(uuid.uuid4()), "type": "vm.state_changed",
                           "payload": {"state": "configuring", "step": "partition"}}).encode()
        first = time.time()
        for start in range(0, count, batch):
            await asyncio.gather(*(
                channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=queue_name, mandatory=True)
                for _ in range(min(batch, count - start))))
        print(json.dumps({"first": first}), flush=True)


async def raw_amqp_processes(settings: Settings, count: int, batch: int = 200,
                             prefetch: int = 64) -> dict:
    """The broker's ceiling with the publisher and the consumer each in a process of its own."""
    queue_name = f"{settings.bus_prefix}.raw-ceiling"
    common = ["--url", settings.amqp_url, "--queue", queue_name, "--count", str(count)]
    me = [sys.executable, "-m", "bench.processes"]
    consumer = subprocess.Popen([*me, "raw-consume", *common, "--prefetch", str(prefetch)],
                                cwd=ROOT, stdout=subprocess.PIPE, text=True)
    publisher = None
    try:
        # The consumer declares the queue and says so before anything is published.
        if consumer.stdout.readline().strip() != "ready":
            raise RuntimeError("the raw consumer did not start")
        cpu0 = servers_cpu()["rabbitmq"]
        publisher = subprocess.Popen([*me, "raw-publish", *common, "--batch", str(batch)],
                                     cwd=ROOT, stdout=subprocess.PIPE, text=True)
        pub_out, _ = publisher.communicate(timeout=600)
        con_out, _ = consumer.communicate(timeout=600)
        if publisher.returncode or consumer.returncode:
            raise RuntimeError(f"raw ceiling: publisher exit {publisher.returncode}, "
                               f"consumer exit {consumer.returncode}")
        first = json.loads(pub_out.strip().splitlines()[-1])["first"]
        last = json.loads(con_out.strip().splitlines()[-1])["last"]
        rabbit_cpu = servers_cpu()["rabbitmq"] - cpu0
    finally:
        for p in (consumer, publisher):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(queue_name)
    elapsed = last - first
    return {"messages": count, "seconds": elapsed, "per_s": count / elapsed,
            "rabbitmq_cpu_s": round(rabbit_cpu, 2)}


# -- the bench -------------------------------------------------------------------------------

async def measure(vms: int, group_size: int = 10, replicas: tuple[int, ...] = (1, 2),
                  drivers: int = 2, concurrency: int = 100, timeout: float = 900,
                  in_flight: int = 0, ceiling: bool = True, spy: list[str] = (),
                  spy_dir: Path | None = None) -> list[dict]:
    """One run per replica count, then the ceiling for the first run's event count."""
    runs = []
    for n in replicas:
        runs.append(await run_processes(vms, group_size, n, drivers, concurrency, timeout,
                                        in_flight, spy, spy_dir))
        brief = {k: v for k, v in runs[-1].items() if k not in ("hops", "cpu")}
        print(json.dumps(brief, default=str), flush=True)
    if ceiling:
        settings = bench_settings("processes-raw")
        try:
            raw = await raw_amqp_processes(settings, runs[0]["events"])
        finally:
            await clean_up(settings)
            shutil.rmtree(settings.state_dir, ignore_errors=True)
        for run in runs:
            run["raw_amqp"] = raw
            run["ratio_events_to_raw_amqp"] = run["events_per_s"] / raw["per_s"]
        print(json.dumps({"raw_amqp": raw}), flush=True)
    return runs


def report(runs: list[dict], started: str) -> None:
    header = ["date (UTC)", "VMs", "replicas", "s", "events/s", "VMs/min", "hop p50 ms",
              "hop p99 ms", "raw amqp msg/s (processes)", "ratio", "busiest process (CPU s)",
              "load avg start → end"]
    for r in runs:
        busiest = r["busiest_process"]
        append_row("processes", header, [
            started, r["vms"], r["replicas"], round(r["seconds"], 1), r["events_per_s"],
            r["vms_per_min"], r["hop_p50_ms"], r["hop_p99_ms"],
            r.get("raw_amqp", {}).get("per_s", "-"), r.get("ratio_events_to_raw_amqp", "-"),
            f"{busiest} ({r['cpu']['processes'][busiest]:.1f})",
            f"{r['loadavg_start'][0]:.2f} → {r['loadavg_end'][0]:.2f}",
        ])
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        procs = r["cpu"]["processes"]
        names = sorted(procs)
        a.barh([f"{n} ({r['replicas']}×)" for n in names], [procs[n] for n in names])
    a.set_xlabel("CPU s over the run"), a.set_title(f"CPU per process, {runs[-1]['vms']} VMs")
    a.tick_params(axis="y", labelsize=5)
    last = runs[-1]
    labels = [f"{h['event']}→{h['service']}" for h in last["hops"]]
    ys = range(len(labels))
    b.barh(ys, [h["p99_ms"] for h in last["hops"]], color="#f4a", label="p99")
    b.barh(ys, [h["p50_ms"] for h in last["hops"]], color="#48c", label="p50")
    b.set_yticks(list(ys), labels, fontsize=6), b.set_xlabel("ms, outbox created → inbox processed")
    b.set_xscale("log"), b.legend(fontsize=7)
    b.set_title(f"per-hop latency, {last['vms']} VMs, {last['replicas']} replica(s)")
    fig.tight_layout()
    fig.savefig(plot_path("processes"), dpi=110)


def main(argv: list[str] | None = None) -> dict | None:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in ("raw-consume", "raw-publish"):
        raw = argparse.ArgumentParser()
        raw.add_argument("what")
        raw.add_argument("--url", required=True)
        raw.add_argument("--queue", required=True)
        raw.add_argument("--count", type=int, required=True)
        raw.add_argument("--prefetch", type=int, default=64)
        raw.add_argument("--batch", type=int, default=200)
        a = raw.parse_args(argv)
        if a.what == "raw-consume":
            asyncio.run(raw_consume(a.url, a.queue, a.count, a.prefetch))
        else:
            asyncio.run(raw_publish(a.url, a.queue, a.count, a.batch))
        return None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", default="1000", help="comma-separated VM counts")
    parser.add_argument("--replicas", default="1,2", help="comma-separated replica counts")
    parser.add_argument("--group-size", type=int, default=10)
    parser.add_argument("--drivers", type=int, default=2, help="VM driver processes")
    parser.add_argument("--concurrency", type=int, default=100,
                        help="simulated VMs at once, over all drivers")
    parser.add_argument("--in-flight", type=int, default=0,
                        help="FERRY_LIMIT_IN_FLIGHT and _PER_HOST for the run (0: no limit)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--no-ceiling", action="store_true")
    parser.add_argument("--spy", default="", metavar="NAMES",
                        help="py-spy these processes (comma-separated: gateway,creator,...)")
    parser.add_argument("--spy-dir", type=Path, default=Path("/tmp/ferry-bench-spy"),
                        help="where the raw recordings go, <replicas>x/<process>.txt")
    parser.add_argument("--no-report", action="store_true",
                        help="no row, no plot (the JSON result is still written)")
    args = parser.parse_args(argv)
    started = now_stamp()
    replicas = tuple(int(v) for v in args.replicas.split(","))
    runs = []
    for n in (int(v) for v in args.vms.split(",")):
        runs += asyncio.run(measure(n, args.group_size, replicas, args.drivers, args.concurrency,
                                    args.timeout, args.in_flight, not args.no_ceiling,
                                    [n for n in args.spy.split(",") if n], args.spy_dir))
    return finish("processes", args, started, runs, lambda: report(runs, started))


if __name__ == "__main__":
    main()
