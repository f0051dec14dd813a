"""The whole journey on real VMs: two groups at once, each archived over SSH from legacy hosts
in network namespaces, created as libvirt domains, PXE-booted into the migration image, rebuilt
by its rendered script, booted from its own disks on the group's network, loaded and
replicating. The example shop (app, db-master, db-replica) runs on copies of the base image;
the ledger's hosts differ from it and from each other (Debian 11 with sysvinit, Debian 12 with
systemd-networkd, Debian 12 with netplan), and each is rebuilt the way its own system expects.
Then the VMs themselves are checked over SSH, and the shop is verified and cut over: a rehearsed failure at every step rolls back, the cutover service's process is
killed in the middle of a run and rolls it back when started again, a rehearsed failure in the
replication mode rolls back and the link is set up again, then the real cutover moves the site
while a prober outside measures the downtime. A third group of one VM, made to hang while it is
configured (its domain suspended), fails its deadline and halts alone."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from lab import legacy
from lab.checks import VmShell, check_group
from lab.control import down, vm_gateway_url
from services.runtime import SERVICES, Host
from shared.plan import load_plan_file
from shared.providers.libvirt import LibvirtProvider
from tests.conftest import eventually
from tests.lab import cutover_lab
from tests.service_process import ServiceProcess

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("clean_broker_and_db")]

REPO = Path(__file__).resolve().parents[2]
PLAN = REPO / "examples" / "shop.yaml"
# Legacy hosts of other kinds (docs/legacy-hosts.md), migrated in the same run.
OTHER_KINDS = REPO / "examples" / "ledger.yaml"
# One VM whose domain is suspended once it names this step (tests/lab/silent.yaml): its short
# configuring deadline (the plan's) fails it while the others are on their way.
SILENT = REPO / "tests" / "lab" / "silent.yaml"
SILENT_STEP = "unpacking the base image"
JOURNEY_TIMEOUT_S = 2400  # under TCG on 2 cores the whole group takes minutes per phase


@pytest.fixture
async def site(lab_settings):
    """The legacy site up, Ferryman running in this process with the libvirt provider (all but
    the cutover, see `cutover_process`); after the test nothing of the lab is left: libvirt
    lists none of the group's domains."""
    site = await legacy.up(lab_settings)
    host = Host(lab_settings, [s for s in SERVICES if s != "cutover"],
                provider=LibvirtProvider(lab_settings), gateway=True)
    try:
        await host.start()
        yield site
    finally:
        await host.stop()
        await down(lab_settings)
    assert not [d for d in virsh_domains("--all") if d.endswith((".shop", ".ledger", ".silent"))]


def virsh_domains(*flags: str) -> list[str]:
    """What an operator sees: `virsh list --all --name` (or with other flags)."""
    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--name", *flags],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


@pytest.fixture
def cutover_process(site, lab_settings):
    """The cutover service as its own process (`python -m services.cutover`, the libvirt
    provider, the test's settings), as it runs in production: the test kills it for real.
    Its log: test-artifacts/lab/cutover.log."""
    log = REPO / "test-artifacts" / "lab" / "cutover.log"
    log.unlink(missing_ok=True)
    process = ServiceProcess("cutover", lab_settings, log, log_level="info")
    process.start()
    yield process
    process.stop()


async def group_status(operator, group_id: str) -> dict:
    async with operator.get(f"/v1/groups/{group_id}") as response:
        return await response.json()


def phase_seconds(timeline: dict) -> dict[str, dict[str, float]]:
    spent: dict[str, dict[str, float]] = {}
    for vm in timeline["vms"]:
        per_vm = spent.setdefault(vm["vm"], {})
        for phase in vm["phases"]:
            if phase["seconds"] is not None:
                per_vm[phase["state"]] = per_vm.get(phase["state"], 0) + phase["seconds"]
    return spent


async def slowest_steps(operator, detail: dict, timeline: dict, count: int = 3) -> dict[str, str]:
    """Per VM, the `count` longest stretches between two of its log lines or state changes,
    each named by the one that began it: where a slow phase spends its time. The script logs
    every step, and a step is no transition, so the timeline alone cannot tell this."""
    entered = {vm["vm"]: [(p["entered_at"], f"entered {p['state']}") for p in vm["phases"]]
               for vm in timeline["vms"]}
    slowest = {}
    for vm in detail["vms"]:
        async with operator.get(f"/v1/vms/{vm['id']}/messages") as response:
            messages = (await response.json())["messages"]
        lines = [(line["at"], line["text"][:60]) for line in messages]
        marks = sorted((datetime.fromisoformat(at), text)
                       for at, text in lines + entered.get(vm["name"], []))
        gaps = sorted(((b - a).total_seconds(), text)
                      for (a, text), (b, _) in zip(marks, marks[1:]))[::-1][:count]
        slowest[vm["name"]] = ", ".join(f"{text!r} {seconds:.0f}s" for seconds, text in gaps)
    return slowest


async def submit(operator, plan: Path) -> str:
    async with operator.post("/v1/groups", data=plan.read_text()) as response:
        body = await response.json()
        assert response.status == 201, body
    return body["id"]


async def settle(operator, group_id: str) -> dict:
    async def settled():
        detail = await group_status(operator, group_id)
        return detail if detail["status"] in ("ready", "halted") else None
    return await eventually(settled, JOURNEY_TIMEOUT_S, interval=2, what="the group to settle")


async def checked_on_its_vms(operator, site, settings, plan, detail: dict, capsys,
                             engines: tuple[str, ...] = ("MariaDB",)) -> list:
    """Every lab check on the group's VMs (printed with the group's timeline); the failed.
    `engines`: the database servers whose rows and replication must have been checked."""
    async def legacy_run(host: str, argv: list[str]) -> str:
        return await site.run(host, *argv)

    outside = [f"{site.address(host)}:22" for host in site.hosts]
    systems = {vm["name"]: vm["system"] for vm in detail["vms"]}
    checks = await check_group(plan, settings.ssh_identity, legacy_run,
                               vm_gateway_url(settings), outside, systems)
    async with operator.get(f"/v1/groups/{detail['id']}/timeline") as response:
        timeline = await response.json()
    spent = phase_seconds(timeline)
    slowest = await slowest_steps(operator, detail, timeline)
    with capsys.disabled():
        print(f"\n{plan.group}:")
        for vm in detail["vms"]:
            system = vm["system"] or {}
            print(f"  {vm['name']}: legacy system {system.get('name')}, {system.get('init')}, "
                  f"{system.get('network')} ({system.get('interface') or 'eth0'})")
        for vm, phases in spent.items():
            print(f"  {vm}: " + ", ".join(f"{s} {t:.0f}s" for s, t in phases.items()))
        for vm, steps in slowest.items():
            print(f"  {vm} slowest: {steps}")
        for check in checks:
            print(f"  {'ok ' if check.ok else 'FAILED'} {check.vm} {check.what}: {check.detail}")
    expected = {"disks", "LVM layout", "filesystems", "migrating marker", "legacy system",
                "isolation", "data tree"}
    expected |= {f"{what} ({engine})" for engine in engines
                 for what in ("database rows", "replication")}
    if "PostgreSQL" in engines:
        expected.add("roles (PostgreSQL)")
    assert {c.what for c in checks} >= expected
    return [c for c in checks if not c.ok]


@pytest.mark.timeout(JOURNEY_TIMEOUT_S + 600)
async def test_example_group_is_rebuilt_on_real_vms(site, cutover_process, lab_settings,
                                                    operator, capsys):
    """Both groups reach ready on real VMs, and on the VMs: the planned disks, LVM layout and
    filesystem types, the legacy system's own init as PID 1 and its own network stack
    bringing up the NIC (found by MAC, with the legacy interface name) at its planned address,
    local.start run, archived paths identical to the legacy hosts' (checksums, excludes
    honoured), the master's rows on both database VMs (the shop's master holds MariaDB and
    PostgreSQL: both engines' rows, and PostgreSQL's roles and owners), a row written on the new
    master replicated by each engine (db2 a MariaDB replica and a streaming PostgreSQL standby),
    the migrating marker still there, and no legacy host reachable from the VMs. Then the shop
    is cut over."""
    plan, other_kinds = load_plan_file(PLAN), load_plan_file(OTHER_KINDS)
    started = time.monotonic()
    group_id = await submit(operator, PLAN)
    other_id = await submit(operator, OTHER_KINDS)
    silent_id = await submit(operator, SILENT)
    figures = await silenced_vm_fails_its_deadline(operator, silent_id)
    with capsys.disabled():
        print(f"\nsilent VM: {figures}")
    detail = await settle(operator, group_id)
    other = await settle(operator, other_id)
    wall = time.monotonic() - started
    assert detail["status"] == "ready", detail.get("halted_reason") or detail
    assert other["status"] == "ready", other.get("halted_reason") or other
    names = {f"{vm.name}.{p.group}" for p in (plan, other_kinds) for vm in p.vms}
    assert names <= set(virsh_domains("--state-running"))
    with capsys.disabled():
        print(f"\nlab journey: {len(names)} VMs of two groups submitted → ready in {wall:.0f}s")
    failed = await checked_on_its_vms(operator, site, lab_settings, plan, detail, capsys,
                                      engines=("MariaDB", "PostgreSQL"))
    failed += await checked_on_its_vms(operator, site, lab_settings, other_kinds, other, capsys)
    assert not failed, failed
    await cut_over(operator, group_id, plan, site, lab_settings, cutover_process, capsys)


async def silenced_vm_fails_its_deadline(operator, group_id: str) -> str:
    """The silent group's VM is suspended (a hung VM, as it looks from outside) once it says it
    is unpacking; the watchdog fails it with the plan's deadline and its last step, its group
    halts alone, and a cancel deletes it. Figures for the report."""
    deadline = load_plan_file(SILENT).deadlines["configuring"]

    async def unpacking():
        vm = (await group_status(operator, group_id))["vms"][0]
        assert vm["state"] in ("planned", "archiving", "archived", "creating", "created",
                               "configuring"), vm
        return vm if vm["last_step"] == SILENT_STEP else None

    vm = await eventually(unpacking, JOURNEY_TIMEOUT_S, interval=1,
                          what=f"the silent VM to say {SILENT_STEP!r}")
    subprocess.run(["virsh", "-c", "qemu:///system", "suspend", f"{vm['name']}.silent"],
                   check=True, capture_output=True)
    suspended_at = datetime.now(timezone.utc)
    detail = await settle(operator, group_id)
    failed = detail["vms"][0]
    reason = f"no word for {deadline:g} s in configuring, last step: {SILENT_STEP}"
    assert detail["status"] == "halted", detail
    assert (failed["state"], failed["failed_from"]) == ("failed", "configuring"), failed
    assert failed["message"] == reason, failed
    assert reason in detail["halted_reason"], detail
    failed_at = datetime.fromisoformat(failed["state_changed_at"])
    last_word = datetime.fromisoformat(failed["last_word_at"])
    assert (failed_at - last_word).total_seconds() >= deadline, failed
    async with operator.post(f"/v1/groups/{group_id}/cancel") as response:
        assert response.status == 202, await response.text()

    async def cancelled():
        return (await group_status(operator, group_id))["status"] == "cancelled"
    await eventually(cancelled, 600, interval=2, what="the silent group to be cancelled")
    assert f"{vm['name']}.silent" not in virsh_domains("--all")
    return (f"suspended at {suspended_at:%H:%M:%S} (last word {last_word:%H:%M:%S}), failed at "
            f"{failed_at:%H:%M:%S}: {(failed_at - suspended_at).total_seconds():.0f} s later; "
            f"reason {failed['message']!r}; halted: {detail['halted_reason']!r}; cancelled")


async def cut_over(operator, group_id: str, plan, site, settings, cutover_process,
                   capsys) -> None:
    lab = cutover_lab.Lab(operator, group_id, plan, site, {
        vm.name: VmShell(str(vm.network.address.ip), settings.ssh_identity)
        for vm in plan.vms})
    async with operator.get(f"/v1/groups/{group_id}/verify") as response:
        verification = await response.json()
    assert verification["passed"], verification
    assert "10.20.0.11 shop.example www.shop.example app1.shop.example" in \
        [s["hosts_line"] for s in verification["sites"]]
    await cutover_lab.mark_sides(lab)
    assert await lab.side_by_name() == "old"
    assert await lab.reaches_legacy("app1") == "refused"  # isolated until the cutover

    # The rehearsals in the plan's mode (dump-and-restore), then a run cut off by a crash of
    # the cutover service; the cutover itself by the replication hand-off, which the prepared
    # run sets up, after one rehearsal in that mode (a rollback after the promotion).
    rehearsals = await cutover_lab.rehearse_every_step(lab)
    crashed = await cutover_lab.killed_in_the_middle_of_a_run(lab, cutover_process)
    prepared = await lab.cutover(prepare=True, database_mode="replication")
    assert prepared["status"] == "completed", prepared
    await cutover_lab.replicates_before_window(lab)
    relinked = await cutover_lab.rehearse_database_in_replication_mode(lab)
    linked = await cutover_lab.replicates_before_window(lab)

    tag, _ = await cutover_lab.legacy_changes_before_window(lab)
    writer = await lab.start_writer()
    try:
        run = await lab.cutover(database_mode="replication")
    finally:
        writer.kill()
        await writer.wait()
    assert run["status"] == "completed", run
    probed = cutover_lab.window_closed(run, await cutover_lab.probe_summary(settings, run["id"]))
    found = {"crash": crashed, "replication rehearsal": relinked, "link": linked,
             "prober": probed, **await cutover_lab.after_cutover(lab, run, tag)}
    detail = await group_status(operator, group_id)
    assert detail["status"] == "live"
    assert {vm["state"] for vm in detail["vms"]} == {"live"}
    with capsys.disabled():
        print("  cutover rehearsals, each rolled back: " + ", ".join(
            f"{step} {seconds:.0f}s" for step, seconds in rehearsals.items()))
        print(f"  cutover: downtime {run['downtime_s']:.1f}s measured by the prober; steps: "
              + ", ".join(f"{s['name']} {s['seconds']:.1f}s" for s in run["steps"]))
        for what, text in found.items():
            print(f"  ok {what}: {text}")
