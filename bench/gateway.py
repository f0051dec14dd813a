"""Concurrent simulated VMs posting states and messages to the gateway.

The gateway runs as `python -m services.gateway` runs it: a Host with no services, gateway on
(so its pool is the Host's smallest, 4 connections), over its own schema. The VMs are stored
in `configuring` with their tokens issued; each client then alternates state_update
(`configuring`, a new step: a row lock, a step update, the VM's view back) and message_update
(a log row), over its own keep-alive connection. In the same process and run, the baseline: a
bare aiohttp handler (parse the JSON body, answer JSON) under exactly the same load.

    .venv/bin/python -m bench.gateway --clients 1000 --rounds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
from aiohttp import web

from bench.common import (OPERATOR_TOKEN, SocketWrites, append_row, bench_settings, clean_up,
                          finish, free_port, now_stamp, peak_rss_mb, percentile, plot_path, profiled,
                          pyplot)
from bench.pipeline import plan_text
from services.runtime import Host
from shared.logging import configure_logging
from shared.store.session import Session


async def load(url: str, vms: list[tuple[str, str]], rounds: int, connections: int) -> dict:
    """Every VM at once: `rounds` times a state_update then a message_update."""
    latencies: list[float] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one_vm(vm_id: str, token: str):
            headers = {"Authorization": f"Bearer {token}"}
            for k in range(rounds):
                for path, body in ((f"/v1/vms/{vm_id}/state", {"state": "configuring", "step": f"step-{k}"}),
                                   (f"/v1/vms/{vm_id}/messages", {"level": "info", "text": f"step {k} done"})):
                    t0 = time.perf_counter()
                    try:
                        async with session.post(url + path, json=body, headers=headers) as r:
                            await r.read()
                            if r.status >= 400:
                                errors.append(f"{r.status}")
                    except aiohttp.ClientError as exc:
                        errors.append(type(exc).__name__)
                    latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        cpu0 = time.process_time()
        with SocketWrites() as writes:
            await asyncio.gather(*(one_vm(v, t) for v, t in vms))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
    n = len(latencies)
    return {"requests": n, "errors": len(errors), "error_kinds": sorted(set(errors))[:5],
            "seconds": elapsed, "rps": n / elapsed,
            # This process's CPU (server and load generator) per request: less disturbed by
            # other people's load than wall time.
            "process_cpu_s": cpu, "cpu_ms_per_request": cpu / max(n, 1) * 1000,
            # Database round trips and broker writes per request (counted, not timed).
            "pg_writes_per_request": writes.counts.get("pg", 0) / max(n, 1),
            "amqp_writes_per_request": writes.counts.get("amqp", 0) / max(n, 1),
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "max_ms": max(latencies) * 1000}


async def bare_server() -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"id": request.match_info["vm_id"], "seen": body})

    app = web.Application()
    app.router.add_post("/v1/vms/{vm_id}/state", handler)
    app.router.add_post("/v1/vms/{vm_id}/messages", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def measure(clients: int, rounds: int, group_size: int = 100, quiet: bool = True) -> dict:
    settings = bench_settings("gateway")
    if quiet:
        configure_logging(settings)
    host = Host(settings, [], gateway=True)
    try:
        await host.start()
        async with aiohttp.ClientSession(
            base_url=settings.gateway_url, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
        ) as operator:
            for i in range((clients + group_size - 1) // group_size):
                size = min(group_size, clients - i * group_size)
                async with operator.post("/v1/groups", data=plan_text(f"gw-{i}", i, size)) as r:
                    assert r.status == 201, await r.text()
        vms = []
        async with host.pool.acquire() as conn:
            await conn.execute("UPDATE vms SET state = 'configuring', step = 'pxe-boot'")
            for row in await conn.fetch("SELECT id FROM vms ORDER BY id"):
                vms.append((str(row["id"]), await Session(conn).tokens.issue(row["id"])))
        # Warm both servers a little (connections, first queries), then measure each in turn.
        runner, bare_url = await bare_server()
        try:
            await load(bare_url, vms[:50], 1, clients)
            await load(settings.gateway_url, vms[:50], 1, clients)
            bare = await load(bare_url, vms, rounds, clients)
            gateway = await load(settings.gateway_url, vms, rounds, clients)
        finally:
            await runner.cleanup()
        pool_size = host.pool.get_max_size()
    finally:
        await host.stop(timeout=5)
        await clean_up(settings)
    return {"clients": clients, "rounds": rounds, "pool_max_size": pool_size,
            "gateway": gateway, "bare": bare, "ratio_rps": gateway["rps"] / bare["rps"],
            "ratio_p99": gateway["p99_ms"] / bare["p99_ms"],
            "ratio_cpu_per_request": gateway["cpu_ms_per_request"] / bare["cpu_ms_per_request"],
            "peak_rss_mb": peak_rss_mb()}


def report(run: dict, started: str) -> None:
    g, b = run["gateway"], run["bare"]
    append_row("gateway", ["date (UTC)", "clients", "requests", "req/s", "p50 ms", "p99 ms",
                           "bare req/s", "bare p99 ms", "ratio req/s", "errors"],
               [started, run["clients"], g["requests"], g["rps"], g["p50_ms"], g["p99_ms"],
                b["rps"], b["p99_ms"], run["ratio_rps"], g["errors"]])
    plt = pyplot()
    fig, (a, c) = plt.subplots(1, 2, figsize=(10, 4))
    a.bar(["gateway", "bare aiohttp"], [g["rps"], b["rps"]], color=["#48c", "#aaa"])
    a.axhline(5000, color="grey", ls=":", lw=0.8, label="target 5,000 req/s")
    a.set_ylabel("requests/s"), a.legend(fontsize=7)
    a.set_title(f"{run['clients']} VMs, same run (ratio {run['ratio_rps']:.2f})")
    xs = range(2)
    c.bar([x - 0.2 for x in xs], [g["p50_ms"], b["p50_ms"]], 0.4, label="p50")
    c.bar([x + 0.2 for x in xs], [g["p99_ms"], b["p99_ms"]], 0.4, label="p99")
    c.axhline(25, color="grey", ls=":", lw=0.8, label="target p99 25 ms")
    c.set_xticks(list(xs), ["gateway", "bare aiohttp"]), c.set_ylabel("ms"), c.set_yscale("log")
    c.legend(fontsize=7), c.set_title("latency")
    fig.tight_layout()
    fig.savefig(plot_path("gateway"), dpi=110)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="simulated VMs at once")
    parser.add_argument("--rounds", type=int, default=10,
                        help="state+message pairs per VM (requests = clients x rounds x 2)")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--profile", metavar="FILE", help="pyinstrument the run, text to FILE")
    args = parser.parse_args(argv)
    started = now_stamp()
    with profiled(args.profile):
        run = asyncio.run(measure(args.clients, args.rounds))
    print(json.dumps(run, default=str), flush=True)
    return finish("gateway", args, started, [run], lambda: report(run, started))

if __name__ == "__main__":
    main()
