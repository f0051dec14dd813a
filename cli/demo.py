"""`ferry demo`: the example group's whole journey on this machine, with every service as its
own process. Until the lab's QEMU provider exists the VMs are simulated, and it says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from cli.client import Gateway, GatewayError
from cli.status import group_table
from services.runtime import SERVICES
from shared.plan import load_plan_file

REPO = Path(__file__).resolve().parents[1]
console = Console()

DEMO_ENV = {
    "FERRY_DATABASE_SCHEMA": "ferry_demo",
    "FERRY_BUS_PREFIX": "ferry-demo",
    "FERRY_PROVIDER": "sim",
    "FERRY_LOG_FORMAT": "json",
}


@click.command("demo")
@click.option("--plan", type=click.Path(exists=True, path_type=Path),
              default=REPO / "examples" / "shop.yaml", show_default=True)
@click.option("--timeout", default=300.0, show_default=True)
def demo(plan: Path, timeout: float) -> None:
    """Migrate the example group end to end and show it progressing to ready."""
    # The demo's own schema, queue prefix and state folder, unless the environment says.
    env = {"FERRY_STATE_DIR": str(REPO / ".ferry" / "demo"), **DEMO_ENV, **os.environ}
    state_dir = Path(env["FERRY_STATE_DIR"])
    os.environ.update(env)
    from shared.settings import Settings

    settings = Settings()
    console.rule("[bold]Ferryman demo")
    console.print("[yellow]The VMs here are SIMULATED (provider 'sim'): each is a process that "
                  "speaks to the gateway exactly as a rebuilt VM would, but nothing is "
                  "partitioned, unpacked or booted. Archives and database dumps are real.[/yellow]")
    _reset(settings, state_dir)
    _seed_legacy_database()
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes = _start_services(env, logs)
    try:
        gateway = Gateway.from_settings(settings)
        _wait_gateway(gateway)
        parsed = load_plan_file(plan)
        answer = gateway.call("POST", "/v1/groups", parsed.model_dump(mode="json"))
        console.print(f"submitted {plan.name}: group {answer['name']} ({answer['id']})")
        status = _watch(gateway, answer["id"], timeout)
        _print_timeline(gateway, answer["id"])
        if status != "ready":
            console.print(f"[bold red]group ended {status}; service logs are in {logs}")
            sys.exit(1)
        console.print(f"[bold green]group {answer['name']} is ready[/bold green] "
                      f"(service logs: {logs})")
    finally:
        _stop_services(processes)


def _reset(settings, state_dir: Path) -> None:
    """Start from nothing: the demo's own schema, queues and state folder."""
    import asyncio

    import aio_pika
    import asyncpg

    from shared.topology import SUBSCRIPTIONS, Names

    async def reset():
        conn = await asyncpg.connect(settings.database_url)
        await conn.execute(f"DROP SCHEMA IF EXISTS {settings.database_schema} CASCADE")
        await conn.close()
        names = Names(settings.bus_prefix)
        async with await aio_pika.connect(settings.amqp_url) as connection:
            channel = await connection.channel()
            for service in SUBSCRIPTIONS:
                for n in range(1, len(settings.retry_delays) + 1):
                    await channel.queue_delete(names.retry(service, n))
                await channel.queue_delete(names.queue(service))
                await channel.queue_delete(names.dead_letters(service))

    asyncio.run(reset())
    subprocess.run(["rm", "-rf", str(state_dir)], check=True)


def _seed_legacy_database() -> None:
    """The example legacy master's database, in this machine's MariaDB."""
    seed = REPO / "examples" / "legacy" / "shop.sql"
    subprocess.run(["mysql", "-uroot", "-h127.0.0.1", "-e",
                    "DROP DATABASE IF EXISTS shop; CREATE DATABASE shop"], check=True)
    with seed.open("rb") as handle:
        subprocess.run(["mysql", "-uroot", "-h127.0.0.1", "shop"], stdin=handle, check=True)


def _start_services(env: dict, logs: Path) -> list[subprocess.Popen]:
    processes = []
    for service in (*SERVICES, "gateway"):
        with (logs / f"{service}.log").open("wb") as log:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", f"services.{service}"], env=env, cwd=REPO,
                stdout=log, stderr=log, stdin=subprocess.DEVNULL))
    console.print(f"started {len(processes)} processes: {', '.join((*SERVICES, 'gateway'))}")
    return processes


def _stop_services(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_gateway(gateway: Gateway, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            gateway.call("GET", "/v1/groups")
            return
        except GatewayError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def _watch(gateway: Gateway, group_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    detail = gateway.call("GET", f"/v1/groups/{group_id}")
    with Live(group_table(detail), console=console, refresh_per_second=4) as live:
        while detail["status"] not in ("ready", "halted") and time.monotonic() < deadline:
            time.sleep(0.5)
            detail = gateway.call("GET", f"/v1/groups/{group_id}")
            live.update(group_table(detail))
    console.print()
    if detail.get("halted_reason"):
        console.print(f"[bold red]HALTED:[/bold red] {detail['halted_reason']}")
    return detail["status"]


def _print_timeline(gateway: Gateway, group_id: str) -> None:
    timeline = gateway.call("GET", f"/v1/groups/{group_id}/timeline")
    table = Table(title="Timeline (seconds per phase)")
    states = ["archiving", "creating", "configuring", "provisioning", "provisioned",
              "loading", "replicating"]
    table.add_column("VM")
    for state in states:
        table.add_column(state)
    for vm in timeline["vms"]:
        spent: dict[str, float] = {}
        for phase in vm["phases"]:
            if phase["seconds"] is not None:
                spent[phase["state"]] = spent.get(phase["state"], 0) + phase["seconds"]
        table.add_row(vm["vm"], *(f"{spent[s]:.1f}" if s in spent else "-" for s in states))
    console.print(table)
