"""The cutover's pieces that need no machine: the plan's cutover settings, the runbook's
order, its rsync excludes, the forwarding script, the outbound firewall, the site checks."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from aiohttp import web

from services.cutover.scripts import forward_script
from services.cutover.steps import GroupRunbook, Machine
from shared import cutover_names as names
from shared.plan import load_plan_file
from shared.providers.fake import FakeProvider
from shared.site_checks import run_checks
from shared.ssh import Remote
from tests.unit.test_plan import EXAMPLE, example, problems


def runbook(tmp_path: Path) -> GroupRunbook:
    plan = load_plan_file(EXAMPLE)
    remote = Remote("x", "127.0.0.1", 22, "root", tmp_path / "key", tmp_path / "known")
    machines = [Machine(vm, uuid.uuid4(), str(vm.network.address.ip), remote, remote)
                for vm in plan.vms]
    return GroupRunbook(plan, machines, FakeProvider(), None, tmp_path)


def test_dns_records_must_name_vms_of_the_group_and_names_of_the_zone():
    plan = example()
    plan["cutover"]["dns"]["records"] = {"shop.example": "app9", "shop.other": "app1"}
    assert problems(plan) == [
        'cutover.dns.records["shop.example"]: no VM named \'app9\' in this group',
        'cutover.dns.records["shop.other"]: \'shop.other\' is not in the zone shop.example']


def test_a_check_may_name_only_a_vm_of_the_group():
    plan = example()
    plan["cutover"]["checks"][0]["vm"] = "nope"
    assert problems(plan) == ["cutover.checks[0].vm: no VM named 'nope' in this group"]


def test_dns_server_takes_a_port():
    dns = load_plan_file(EXAMPLE).cutover.dns
    assert (dns.host, dns.port) == ("127.0.0.1", 5354)
    plan = example()
    plan["cutover"]["dns"]["server"] = "ns1.shop.example:x"
    assert [p.split(":")[0] for p in problems(plan)] == ["cutover.dns.server"]


DOCS = Path(__file__).resolve().parents[2] / "docs" / "cutover.md"

# What each step does and undoes, by the runbook's own methods (None: no undo).
DOES = {
    "lower-dns-ttl": ("lower_dns_ttl", None),
    "rsync-before-window": ("rsync", None),
    "replicate-from-legacy": ("replicate_from_legacy", None),
    "maintenance-page": ("maintenance_on", "maintenance_off"),
    "rsync-in-window": ("rsync", None),
    "database": ("database", "database_undo"),
    "start-application": ("start_application", None),
    "http-checks": ("http_checks", None),
    "switch-dns": ("switch_dns", "switch_dns_back"),
    "forward-old-addresses": ("forward_on", "forward_off"),
    "remove-migrating-marker": ("remove_marker", "restore_marker"),
    "config-management": ("config_management", None),
    "lift-outbound-block": ("lift_block", "block_again"),
}


def documented_steps() -> list[str]:
    """The steps in the order of docs/cutover.md's runbook table (| `name` | does | undo |)."""
    text = DOCS.read_text()
    table = text[text.index("## The runbook"):text.index("### The database")]
    return [line.split("`")[1] for line in table.splitlines() if line.startswith("| `")]


def test_the_runbook_runs_the_documented_steps_in_the_documented_order(tmp_path):
    """The runbook's steps are those of docs/cutover.md's table, in its order: the window
    opens with the maintenance page, the databases move inside it, and DNS switches last in
    it; a prepared run is the first three. Each step does (and undoes) what its name says."""
    book = runbook(tmp_path)
    window = [s.name for s in book.steps(prepare=False)]
    assert window == documented_steps()
    assert [s.name for s in book.steps(prepare=True)] == window[:3]
    assert window.index("maintenance-page") < window.index("rsync-in-window") \
        < window.index("database") < window.index("switch-dns")
    for step in book.steps(prepare=False):
        do, undo = DOES[step.name]
        assert step.do.__func__ is getattr(GroupRunbook, do), step.name
        assert (step.undo.__func__ if step.undo else None) is \
            (getattr(GroupRunbook, undo) if undo else None), step.name


async def test_a_rehearsal_fails_its_step_after_doing_it(tmp_path):
    book = runbook(tmp_path)
    book.rehearse_failure_at = "lift-outbound-block"
    step = next(s for s in book.steps(prepare=False) if s.name == "lift-outbound-block")
    with pytest.raises(Exception, match="rehearsed failure"):
        await step.do()
    assert book.provider.outbound_open == {"shop": True}  # done, then failed
    await step.undo()
    assert book.provider.outbound_open == {"shop": False}


def test_excludes_are_anchored_at_each_shared_path(tmp_path):
    book = runbook(tmp_path)
    book.settings = book.settings.model_copy(
        update={"excludes": ["/data/shared/tmp", "*.swp", "/srv/other"]})
    assert book._excludes("/data/shared") == ["/tmp", "*.swp"]
    # Only VMs that archived the path (app1's /data) take part; db1's / would cover it too,
    # but its legacy host is asked first whether the path exists.
    assert book._shared_paths(book.machines[0]) == ["/data/shared"]


def test_forwarding_is_undone_before_it_is_done_again():
    script = forward_script("198.51.100.11", "10.20.0.11")
    assert script.index("-D PREROUTING -j FERRY-FORWARD") < script.index("-N FERRY-FORWARD")
    assert "-d 198.51.100.11 -j DNAT --to-destination 10.20.0.11" in script
    assert "-d 10.20.0.11 -j MASQUERADE" in script


async def test_site_checks_send_the_site_name_and_judge_status_and_body():
    seen = []

    async def page(request):
        seen.append(request.host)
        return web.Response(text="<h1>Shop</h1>" if request.path == "/" else "nope",
                            status=200 if request.path == "/" else 404)
    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        plan = load_plan_file(EXAMPLE)
        plan = plan.model_copy(update={"cutover": plan.cutover.model_copy(update={
            "checks": [c.model_copy(update={"path": p}) for c, p in
                       [(plan.cutover.checks[0], "/"), (plan.cutover.checks[0], "/missing")]]})})
        results = await run_checks(plan, {"app1": f"127.0.0.1:{port}"})
    finally:
        await runner.cleanup()
    assert [(r.vm, r.ok) for r in results] == [("app1", True), ("app1", False)]
    assert "status 404, expected 200" in results[1].detail
    assert seen == ["shop.example", "shop.example"]
