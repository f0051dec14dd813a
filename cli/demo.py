"""`ferry demo`: the example group's whole journey on this machine, with every service as its
own process.

With the `libvirt` provider (the default) it is the real thing: the example legacy hosts run in
network namespaces and are archived over SSH, the VMs are libvirt domains rebuilt by their scripts and
booted from their own disks, and at the end the demo looks at the VMs themselves. With `sim`
the VMs are processes that only speak the gateway's protocol (fast, for a machine without the
lab), and it says so.
"""

from __future__ import annotations

import asyncio
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
from cli.cutover import follow_cutover, print_verification
from cli.status import group_table
from services.runtime import SERVICES
from shared.plan import Plan, load_plan_file

REPO = Path(__file__).resolve().parents[1]
console = Console()

# The sim demo reads the example hosts' trees as local folders (its VMs are not real anyway).
PLANS = {"libvirt": REPO / "examples" / "shop.yaml",
         "sim": REPO / "tests" / "fixtures" / "shop-local.yaml"}
DEMO_ENV = {
    "FERRY_DATABASE_SCHEMA": "ferry_demo",
    "FERRY_BUS_PREFIX": "ferry-demo",
    "FERRY_LOG_FORMAT": "json",
}


@click.command("demo")
@click.option("--provider", type=click.Choice(["libvirt", "sim"]), default="libvirt",
              show_default=True, help="libvirt: real VMs (needs root and libvirtd); "
              "sim: simulated VMs")
@click.option("--plan", type=click.Path(exists=True, path_type=Path),
              help="default: examples/shop.yaml (libvirt) or tests/fixtures/shop-local.yaml (sim)")
@click.option("--timeout", type=float, help="seconds to reach ready [default: 3600 libvirt, 300 sim]")
@click.option("--keep", is_flag=True, help="leave the VMs and legacy hosts running "
              "(then `ferry lab down` stops them)")
def demo(provider: str, plan: Path | None, timeout: float | None, keep: bool) -> None:
    """Migrate the example group end to end and show it progressing to ready."""
    # The demo's own schema, queue prefix and state folder, unless the environment says.
    env = {"FERRY_STATE_DIR": str(REPO / ".ferry" / "demo"), **DEMO_ENV,
           "FERRY_PROVIDER": provider, **os.environ}
    os.environ.update(env)
    from shared.settings import Settings

    settings = Settings()
    if provider == "libvirt":  # the lab's networks (lab.control.lab_settings), unless set
        from lab.control import lab_settings

        lab = lab_settings(settings)
        for name in ("gateway_host", "libvirt_group_forward_dev"):
            env.setdefault(f"FERRY_{name.upper()}", str(getattr(lab, name)))
        os.environ.update(env)
        settings = Settings()
    state_dir = Path(env["FERRY_STATE_DIR"])
    plan = plan or PLANS[provider]
    timeout = timeout or (3600.0 if provider == "libvirt" else 300.0)
    console.rule(f"[bold]Ferryman demo ({provider})")
    if provider == "sim":
        console.print("[yellow]The VMs here are SIMULATED (provider 'sim'): each is a process "
                      "that speaks to the gateway exactly as a rebuilt VM would, but nothing is "
                      "partitioned, unpacked or booted. Archives and database dumps are real."
                      "[/yellow]")
    else:
        console.print("Real VMs through libvirt; the legacy hosts run in network namespaces and are "
                      "archived over SSH. Under TCG (no usable KVM) this takes a while.")
    if provider == "libvirt":
        _lab_down(settings, keep=False)  # whatever an earlier run left, before its folder goes
    _reset(settings, state_dir)
    _tls(settings)
    parsed = load_plan_file(plan)
    site = _legacy_up(settings) if provider == "libvirt" else _seed_legacy_database()
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes = _start_services(env, logs)
    try:
        gateway = Gateway.from_settings(settings)
        _wait_gateway(gateway)
        answer = gateway.call("POST", "/v1/groups", parsed.model_dump(mode="json"))
        console.print(f"submitted {plan.name}: group {answer['name']} ({answer['id']})")
        status = _watch(gateway, answer["id"], timeout)
        _print_timeline(gateway, answer["id"])
        if status != "ready":
            console.print(f"[bold red]group ended {status}; service logs are in {logs}")
            sys.exit(1)
        console.print(f"[bold green]group {answer['name']} is ready[/bold green] "
                      f"(service logs: {logs})")
        systems = {vm["name"]: vm.get("system")
                   for vm in gateway.call("GET", f"/v1/groups/{answer['id']}")["vms"]}
        if site is not None and not _check_vms(settings, parsed, site, systems):
            sys.exit(1)
        if site is not None and not _cut_over(gateway, answer["name"]):
            sys.exit(1)
    finally:
        _stop_services(processes)
        if provider == "libvirt":
            _lab_down(settings, keep)


def _legacy_up(settings):
    from lab import legacy

    console.print("starting the example legacy hosts (network namespaces, sshd, MariaDB, "
                  "PostgreSQL, nginx)")
    return asyncio.run(legacy.up(settings))


def _lab_down(settings, keep: bool) -> None:
    if keep:
        console.print("VMs and legacy hosts left running; `ferry lab down` stops them")
        return
    from lab.control import down

    asyncio.run(down(settings))
    console.print("VMs, their networks and the legacy hosts removed")


def _cut_over(gateway: Gateway, group: str) -> bool:
    """Verify, prepare and cut over, as an operator would; False if the cutover rolled back."""
    def say(line: str) -> None:
        console.print(line, highlight=False, markup=False)

    console.rule("[bold]Verify (ferry verify)")
    verification = gateway.call("GET", f"/v1/groups/{group}/verify")
    print_verification(verification, say)
    if not verification["passed"]:
        return False
    for prepare in (True, False):
        console.rule("[bold]" + ("Prepare the cutover (ferry cutover --prepare)" if prepare
                                 else "Cut over (ferry cutover)"))
        run_id = gateway.call("POST", f"/v1/groups/{group}/cutover",
                              {"prepare": prepare})["run_id"]
        run = follow_cutover(lambda: gateway.call("GET", f"/v1/groups/{group}/cutover"),
                             run_id, say)
        if run["status"] != "completed":
            return False
    return True


def _check_vms(settings, plan: Plan, site, systems: dict[str, dict | None]) -> bool:
    """What the VMs themselves hold, printed; False if any check failed."""
    from lab.checks import check_group
    from lab.control import vm_gateway_url

    async def legacy_run(host: str, argv: list[str]) -> str:
        return await site.run(host, *argv)

    outside = [f"{site.address(host)}:22" for host in site.hosts]
    checks = asyncio.run(check_group(plan, settings.ssh_identity, legacy_run,
                                     vm_gateway_url(settings), outside, systems))
    table = Table(title="Checked on the VMs themselves (over SSH in the group's network)")
    for column in ("VM", "check", "", "found"):
        table.add_column(column)
    for check in checks:
        mark = "[green]ok[/green]" if check.ok else "[bold red]FAILED[/bold red]"
        table.add_row(check.vm, check.what, mark, check.detail)
    console.print(table)
    return all(check.ok for check in checks)


def _tls(settings) -> None:
    """The installation's CA and the gateway's certificate, made before anyone needs them; or,
    when plain HTTP is allowed, a warning that cannot be missed."""
    from shared import tls

    if tls.served_files(settings) is None:
        console.print("[bold yellow]WARNING: FERRY_GATEWAY_PLAIN_HTTP is set: the gateway "
                      "serves plain HTTP, and each VM's token crosses the migration network in "
                      "clear. Unset it to use TLS (the default).[/bold yellow]")
    else:
        console.print(f"TLS: the gateway serves HTTPS; its CA is {tls.trusted_ca(settings)}")


def _reset(settings, state_dir: Path) -> None:
    """Start from nothing: the demo's own schema, queues and state folder."""
    import asyncio

    from services.reset import remove_everything

    asyncio.run(remove_everything(settings))
    # --one-file-system: never follow a mount the lab may have left below it.
    subprocess.run(["rm", "-rf", "--one-file-system", str(state_dir)], check=True)


def _seed_legacy_database() -> None:
    """The sim demo's legacy master database: this machine's MariaDB."""
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
    states = ["archiving", "archived", "creating", "configuring", "configured", "provisioning",
              "provisioned", "loading", "replicating"]
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
