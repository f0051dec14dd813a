"""Simulated VMs posting states and messages to the gateway, every party its own process.

The gateway runs as it runs in production, `python -m services.gateway` over its own schema,
with one worker and then two (FERRY_GATEWAY_WORKERS=2: two processes on one port). The VMs are
stored in `configuring` with their tokens issued; the load comes from `--load-processes`
separate processes (bench/load.py), which alternate state_update (a row lock, a step update,
the VM's view back) and message_update (a log row) per VM over keep-alive connections. The
baseline, in the same run and measured the same way: a bare aiohttp handler (parse the JSON
body, answer JSON) as its own process, one and two of them on one port (bench/bare.py).

Two kinds of load, on each server:
- closed loop: `--clients` VMs at once, `--rounds` × (state + message) each: the most the
  server answers (req/s) and its latencies at that;
- open loop: `--rate` requests/s for `--seconds`, sent on schedule whatever the answers: the
  latency at a fixed offered load (pick one the bare handler serves with p99 under 10 ms).

    .venv/bin/python -m bench.gateway --clients 1000 --rounds 10 --rate 400 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

import aiohttp

from bench.common import (OPERATOR_TOKEN, ROOT, append_row, bench_settings, clean_up, finish,
                          free_port, now_stamp, percentile, plot_path, pyplot)
from bench.pipeline import plan_text
from shared.settings import Settings, environment_of
from shared.store.db import open_pool
from shared.store.session import Session

READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 45.0
WARM_VMS = 50


class Server:
    """One server under test: its processes (a gateway's supervisor, or bare handlers), its
    URL, and the CPU its processes (workers included) have used."""

    def __init__(self, name: str, url: str, procs: list[asyncio.subprocess.Process], log: Path):
        self.name, self.url, self.procs, self.log = name, url, procs, log

    def pids(self) -> list[int]:
        pids = [p.pid for p in self.procs]
        for pid in list(pids):
            children = Path(f"/proc/{pid}/task/{pid}/children")
            if children.exists():
                pids += [int(c) for c in children.read_text().split()]
        return pids

    def cpu_s(self) -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    async def ready(self) -> None:
        async def answered() -> bool:
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.get(f"{self.url}/readyz") as answer:
                        return answer.status == 200
            except aiohttp.ClientError:
                return False

        deadline = asyncio.get_running_loop().time() + READY_TIMEOUT_S
        while not await answered():
            if any(p.returncode is not None for p in self.procs):
                raise SystemExit(f"{self.name} exited while starting (its log, {self.log}):\n"
                                 + self.log.read_text()[-3000:])
            if asyncio.get_running_loop().time() > deadline:
                raise SystemExit(f"{self.name} not ready after {READY_TIMEOUT_S} s")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def spawn(argv: list[str], env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with open(log, "ab") as out:
        return await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out,
            stderr=asyncio.subprocess.STDOUT)


def child_env(settings: Settings, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    return {**env, **environment_of(settings, **overrides)}


async def start_gateway(settings: Settings, workers: int) -> Server:
    log = settings.state_dir / f"gateway-{workers}.log"
    proc = await spawn([sys.executable, "-m", "services.gateway"],
                       child_env(settings, gateway_workers=str(workers)), log)
    server = Server(f"gateway ({workers} worker{'s' * (workers > 1)})", settings.gateway_url,
                    [proc], log)
    await server.ready()
    return server


async def start_bare(settings: Settings, processes: int) -> Server:
    port = free_port()
    log = settings.state_dir / f"bare-{processes}.log"
    procs = [await spawn([sys.executable, "-m", "bench.bare", "--port", str(port)],
                         child_env(settings), log) for _ in range(processes)]
    server = Server(f"bare aiohttp ({processes} process{'es' * (processes > 1)})",
                    f"http://127.0.0.1:{port}", procs, log)
    await server.ready()
    return server


async def load(server: Server, vms: list[tuple[str, str]], job: dict, processes: int) -> dict:
    """Run one job split among `processes` load processes, started together; their merged
    figures, and the server's CPU per request."""
    shares = [vms[n::processes] for n in range(processes) if vms[n::processes]]
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.load", cwd=ROOT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE) for _ in shares]
    for proc, share in zip(procs, shares):
        part = {**job, "url": server.url, "vms": share}
        if job["mode"] == "open":
            part["rate"] = job["rate"] / len(shares)
        else:
            part["connections"] = max(1, len(share))
        proc.stdin.write(json.dumps(part).encode() + b"\n")
        await proc.stdin.drain()
    for proc in procs:
        assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == b"ready"
    cpu0 = server.cpu_s()
    for proc in procs:
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    lines = [await asyncio.wait_for(proc.stdout.readline(), 600) for proc in procs]
    if not all(lines):
        raise SystemExit(f"a load process against {server.name} ended without its figures "
                         "(its traceback is above)")
    parts = [json.loads(line) for line in lines]
    server_cpu = server.cpu_s() - cpu0
    for proc in procs:
        await proc.wait()
    latencies = [v for part in parts for v in part["latencies_ms"]]
    n = len(latencies)
    seconds = max(p["ended"] for p in parts) - min(p["started"] for p in parts)
    return {"requests": n, "errors": sum(p["errors"] for p in parts),
            "error_kinds": sorted({k for p in parts for k in p["error_kinds"]})[:5],
            "seconds": seconds, "rps": n / seconds,
            # The server's processes' CPU (workers included) per request: less disturbed by
            # other people's load than wall time, and without the load generators'.
            "server_cpu_s": server_cpu, "cpu_ms_per_request": server_cpu / max(n, 1) * 1000,
            "load_cpu_s": sum(p["cpu_s"] for p in parts),
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies) if latencies else None}


async def stored_vms(settings: Settings, clients: int, group_size: int) -> list[tuple[str, str]]:
    """Submit the groups through the running gateway, put their VMs in `configuring` and issue
    their tokens."""
    async with aiohttp.ClientSession(
        base_url=settings.gateway_url, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
    ) as operator:
        for i in range((clients + group_size - 1) // group_size):
            size = min(group_size, clients - i * group_size)
            async with operator.post("/v1/groups", data=plan_text(f"gw-{i}", i, size)) as r:
                assert r.status == 201, await r.text()
    pool = await open_pool(settings, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("UPDATE vms SET state = 'configuring', step = 'pxe-boot'")
            return [(str(row["id"]), await Session(conn).tokens.issue(row["id"]))
                    for row in await conn.fetch("SELECT id FROM vms ORDER BY id")]
    finally:
        await pool.close()


async def measure_pair(gateway: Server, bare: Server, vms, args, label: str) -> dict:
    """Closed then open loop, the bare handler first each time, after a short warm-up."""
    warm = {"mode": "closed", "rounds": 1, "label": f"{label}-warm"}
    for server in (bare, gateway):
        await load(server, vms[:WARM_VMS], warm, 1)
    closed = {"mode": "closed", "rounds": args.rounds, "label": f"{label}-closed"}
    opened = {"mode": "open", "rate": args.rate, "seconds": args.seconds, "label": f"{label}-open"}
    run = {"bare": await load(bare, vms, closed, args.load_processes),
           "gateway": await load(gateway, vms, closed, args.load_processes),
           "open_bare": await load(bare, vms, opened, args.load_processes),
           "open_gateway": await load(gateway, vms, opened, args.load_processes)}
    run["ratio_rps"] = run["gateway"]["rps"] / run["bare"]["rps"]
    run["ratio_p99"] = run["gateway"]["p99_ms"] / run["bare"]["p99_ms"]
    run["ratio_cpu_per_request"] = (run["gateway"]["cpu_ms_per_request"]
                                    / max(run["bare"]["cpu_ms_per_request"], 1e-9))
    return run


async def measure(args: argparse.Namespace, quiet: bool = True) -> dict:
    settings = bench_settings("gateway")
    if not quiet:
        settings = settings.model_copy(update={"log_level": "warning"})
    loadavg = [os.getloadavg()]
    servers: list[Server] = []
    try:
        gateway = await start_gateway(settings, 1)
        servers.append(gateway)
        vms = await stored_vms(settings, args.clients, args.group_size)
        servers.append(bare := await start_bare(settings, 1))
        one = await measure_pair(gateway, bare, vms, args, "w1")
        for server in servers:
            await server.stop()
        servers = []
        servers.append(gateway := await start_gateway(settings, 2))
        servers.append(bare := await start_bare(settings, 2))
        two = await measure_pair(gateway, bare, vms, args, "w2")
    finally:
        for server in servers:
            await server.stop()
        await clean_up(settings)
    loadavg.append(os.getloadavg())
    # `gateway`, `bare` and `ratio_rps` at the top are the one-worker figures: what earlier
    # runs of this bench measured (bench.compare reads them).
    return {"clients": args.clients, "rounds": args.rounds, "rate": args.rate,
            "seconds": args.seconds, "load_processes": args.load_processes,
            **{k: one[k] for k in ("gateway", "bare", "ratio_rps", "ratio_p99",
                                   "ratio_cpu_per_request")},
            "one_worker": one, "two_workers": two,
            "ratio_rps_two_workers_to_bare": two["gateway"]["rps"] / one["bare"]["rps"],
            "loadavg_before_after": loadavg}


def report(run: dict, started: str) -> None:
    one, two = run["one_worker"], run["two_workers"]
    header = ["date (UTC)", "clients", "workers", "req/s", "p50 ms", "p99 ms", "bare req/s",
              "bare p99 ms", "ratio req/s", f"open loop {run['rate']:g}/s: p99 ms",
              "bare p99 ms", "errors", "load avg"]
    for workers, m in ((1, one), (2, two)):
        append_row("gateway-workers", header, [
            started, run["clients"], workers, m["gateway"]["rps"], m["gateway"]["p50_ms"],
            m["gateway"]["p99_ms"], m["bare"]["rps"], m["bare"]["p99_ms"], m["ratio_rps"],
            m["open_gateway"]["p99_ms"], m["open_bare"]["p99_ms"],
            m["gateway"]["errors"] + m["open_gateway"]["errors"],
            f"{run['loadavg_before_after'][0][0]:.2f}"])
    plt = pyplot()
    fig, (a, c) = plt.subplots(1, 2, figsize=(11, 4))
    labels = ["gateway\n1 worker", "bare\n1 process", "gateway\n2 workers", "bare\n2 processes"]
    closed = [one["gateway"], one["bare"], two["gateway"], two["bare"]]
    a.bar(labels, [m["rps"] for m in closed], color=["#48c", "#aaa", "#26a", "#888"])
    a.set_ylabel("requests/s (closed loop)")
    a.set_title(f"{run['clients']} VMs, same run (ratios {one['ratio_rps']:.2f}, "
                f"{two['ratio_rps']:.2f})")
    opened = [one["open_gateway"], one["open_bare"], two["open_gateway"], two["open_bare"]]
    xs = range(len(labels))
    c.bar([x - 0.2 for x in xs], [m["p50_ms"] for m in opened], 0.4, label="p50")
    c.bar([x + 0.2 for x in xs], [m["p99_ms"] for m in opened], 0.4, label="p99")
    c.axhline(25, color="grey", ls=":", lw=0.8, label="target p99 25 ms")
    c.axhline(10, color="grey", ls="--", lw=0.8, label="bare p99 10 ms")
    c.set_xticks(list(xs), labels), c.set_ylabel("ms"), c.set_yscale("log")
    c.legend(fontsize=7), c.set_title(f"open loop, {run['rate']:g} requests/s offered")
    fig.tight_layout()
    fig.savefig(plot_path("gateway"), dpi=110)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000, help="simulated VMs at once")
    p.add_argument("--rounds", type=int, default=10,
                   help="state+message pairs per VM (requests = clients x rounds x 2)")
    p.add_argument("--rate", type=float, default=400.0, help="open loop: requests/s offered")
    p.add_argument("--seconds", type=float, default=10.0, help="open loop: for how long")
    p.add_argument("--load-processes", type=int, default=2, help="load-generating processes")
    p.add_argument("--group-size", type=int, default=100, help="VMs per submitted group")
    p.add_argument("--no-report", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    started = now_stamp()
    run = asyncio.run(measure(args))
    print(json.dumps(run, default=str), flush=True)
    return finish("gateway", args, started, [run], lambda: report(run, started))


if __name__ == "__main__":
    main()
