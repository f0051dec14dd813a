"""The operator web UI in a real browser: Debian's chromium driven by Playwright, against a
running Ferryman (fake provider) whose VMs the test plays over HTTP.

Screenshots of each stage go to test-artifacts/ui/ in the repository."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import aio_pika
import aiohttp
import pytest
from playwright.async_api import Page, async_playwright, expect

from shared.cutover_names import WINDOW_STEPS
from services.cutover.runbook import Journal, Step, run_steps
from services.runtime import Host
from shared.events import CutoverRequested, Envelope, GroupHalted
from shared.providers.base import BootSource
from shared.store.session import Store
from shared.topology import Names
from tests.conftest import OPERATOR_TOKEN
from tests.integration.harness import THREE_VMS, Ferry, configure_vm, start_ferry

pytestmark = [pytest.mark.integration, pytest.mark.ui,
              pytest.mark.usefixtures("clean_broker_and_db")]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
WAIT_MS = 15_000  # every UI wait is an expect/wait_for with this timeout, never a sleep
expect.set_options(timeout=WAIT_MS)
HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


@pytest.fixture
async def ferry(settings, operator):
    ferry = await start_ferry(settings, operator)
    yield ferry
    await ferry.host.stop()


@pytest.fixture
async def page():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium); "
                    "deploy/local/test.sh installs it when run as root")
    errors: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            # Chromium's sandbox refuses to run as root (the test machines run as root).
            args=["--no-sandbox"] if os.geteuid() == 0 else [],
        )
        context = await browser.new_context(viewport={"width": 1400, "height": 1100})
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            yield page
        finally:
            await browser.close()
    assert not errors, f"the page raised: {errors}"


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def confirm(page: Page, button, expected_title: str) -> None:
    """Click an action and accept its confirmation dialog."""
    await button.click()
    dialog = page.locator("#confirm-dialog")
    await expect(dialog).to_be_visible()
    await expect(page.locator("#confirm-title")).to_have_text(expected_title)
    await page.locator("#confirm-ok").click()
    await expect(dialog).to_be_hidden()


async def boot_from_disk(ferry: Ferry, vm_id: uuid.UUID, *steps: tuple[str, str], **kw) -> None:
    await ferry.wait_booted(vm_id, BootSource.DISK)
    async with ferry.vm(vm_id) as vm:
        for state, step in steps:
            await vm.state(state, step, **(kw if state == "ready" else {}))


async def test_operator_follows_a_group_live_and_lifts_its_halt(ferry: Ferry, page: Page,
                                                                settings):
    """Sign in with the token; VM states, steps and messages arrive live; a failed VM halts
    the group and the UI puts it and its last messages first; retry and resume (each through
    its confirmation) let the group move on to ready; a prepared cutover shows as a run."""
    group_id = await ferry.submit(THREE_VMS.format(group="shop"))
    ids = await ferry.vm_ids(group_id)

    await page.goto(settings.gateway_url + "/")
    await expect(page.locator("#token-dialog")).to_be_visible()
    await page.locator("#token-input").fill("not-the-token")
    await page.locator("#token-submit").click()
    await expect(page.locator("#token-error")).to_have_text("That token was refused.")
    await page.locator("#token-input").fill(OPERATOR_TOKEN)
    await shot(page, "01-token")
    await page.locator("#token-submit").click()
    await expect(page.locator("#token-dialog")).to_be_hidden()
    await expect(page.locator("#live")).to_have_text("live")
    assert await page.evaluate("sessionStorage.getItem('ferry.operatorToken')") == OPERATOR_TOKEN
    await expect(page.locator('#groups [data-group="shop"]')).to_be_visible()
    await expect(page.locator("#group-name")).to_have_text("shop")

    app = page.locator('.vms [data-vm="app1"]')
    for name in ids:
        await ferry.wait_booted(ids[name], BootSource.NETWORK)
    await expect(app.locator(".state")).to_have_text("configuring")

    async with ferry.vm(ids["app1"]) as vm:
        await vm.state("configuring", "partition")
        await expect(app.locator(".step")).to_have_text("partition")
        await vm.message("partitioned /dev/vda")
        await vm.message(HOSTILE, level="warning")
        # Streamed (vm.message_logged over the event stream), well before the 15 s catch-up poll.
        await expect(app.locator(".log")).to_contain_text("partitioned /dev/vda", timeout=5000)
        await expect(app.locator(".log li").last).to_contain_text(HOSTILE)  # shown as text
        assert await page.evaluate("window.pwned") is None
        assert await page.locator("#detail script, #detail img").count() == 0
        ticking = app.locator(".since")
        await expect(ticking).not_to_have_text(await ticking.text_content())
        await shot(page, "02-live")
        await vm.state("configuring", "lvm")
        await vm.state("failed", "lvm", message="lvcreate: insufficient free space")

    # The events reached the page over the event stream (the cookie's doing): vm.failed and
    # group.halted happened after the page connected.
    await expect(page.locator("#live")).to_have_attribute("data-heard", re.compile(r"^[1-9]\d*$"))

    # Halted: the failing VM, why, and its last messages come first.
    halt = page.locator("#halt")
    await expect(halt).to_be_visible()
    await expect(page.locator("#detail > *").first).to_have_id("halt")
    await expect(page.locator("#group-status")).to_have_text("halted")
    await expect(halt.locator(".failing-vm")).to_have_text("app1")
    await expect(halt).to_contain_text("lvcreate: insufficient free space")
    await expect(halt.locator(".log")).to_contain_text("partitioned /dev/vda")
    await expect(app.locator(".state")).to_have_text("failed")
    for name in ("db1", "db2"):  # the siblings finish configuring and are held
        await configure_vm(ferry, ids[name])
        await expect(page.locator(f'.vms [data-vm="{name}"] .state')).to_have_text("halted")
    await shot(page, "03-halted")

    # Cancel leaves everything as it was.
    await halt.locator('[data-action="retry"]').click()
    await expect(page.locator("#confirm-title")).to_have_text("Retry app1?")
    await shot(page, "04-confirm-retry")
    await page.locator("#confirm-cancel").click()
    await expect(page.locator("#confirm-dialog")).to_be_hidden()
    assert await ferry.state(ids["app1"]) == "failed"

    # While app1 is still failed nothing offers to resume: the banner says to retry it first
    # (the gateway would refuse a resume, saying why).
    await expect(halt.locator("#retry-first")).to_have_text(
        "Retry app1 first: the group can be resumed once none of its VMs is failed.")
    await expect(page.locator('[data-action="resume"]')).to_have_count(0)
    async with ferry.operator.post("/v1/groups/shop/resume") as refused:
        assert refused.status == 409
        assert "app1 still failed" in (await refused.json())["error"]

    await confirm(page, halt.locator('[data-action="retry"]'), "Retry app1?")
    await expect(app.locator(".state")).to_have_text("halted")
    await expect(halt).to_contain_text("No VM is failed any more")
    await confirm(page, halt.locator('[data-action="resume"]'), "Resume shop?")
    await expect(page.locator("#group-status")).to_have_text("active")
    await expect(halt).to_have_count(0)
    await expect(page.locator("#error")).to_be_hidden()

    # The group moves on: app1 redoes its configuration, the databases carry on.
    await ferry.wait_booted(ids["app1"], BootSource.NETWORK, count=2)
    await expect(app.locator(".state")).to_have_text("configuring")
    await shot(page, "05-resumed")
    await configure_vm(ferry, ids["app1"])
    await boot_from_disk(ferry, ids["app1"], ("provisioned", "first-boot"))
    await boot_from_disk(ferry, ids["db1"], ("provisioned", "first-boot"),
                         ("loading", "load-dumps"), ("ready", "loaded"),
                         detail={"log_file": "bin.000003", "log_pos": 1234})
    await boot_from_disk(ferry, ids["db2"], ("provisioned", "first-boot"),
                         ("loading", "load-dumps"))
    async with ferry.vm(ids["db2"]) as replica:
        assert (await replica.master(wait=10))["complete"]  # held until its master is loaded
        await replica.state("replicating", "replication-started")
        await replica.state("ready", "replicating")
    await expect(page.locator("#group-status")).to_have_text("ready")
    for name in ids:
        await expect(page.locator(f'.vms [data-vm="{name}"] .state')).to_have_text("ready")

    # Timeline: each VM's phases, the failure included.
    await page.locator("#timeline summary").click()
    app_phases = page.locator('#timeline [data-vm="app1"] .phases')
    await expect(app_phases).to_contain_text("failed")
    await expect(app_phases).to_contain_text("ready")

    # A prepared cutover shows as a run, and here, with its reason, as one that could not
    # start: the fake provider gives the VMs no address the runbook could reach.
    await confirm(page, page.locator('[data-action="prepare-cutover"]'),
                  "Prepare the cutover of shop?")
    run = page.locator("#cutover .run").first
    await expect(run).to_contain_text("prepare")
    await expect(run.locator(".badge")).to_have_text("failed")
    await expect(run).to_contain_text("has no address this machine reaches")
    # Runs as the runbook engine itself records them (services/cutover/runbook.py), with the
    # real step names: each shows its steps, their statuses and timings, and the downtime.
    completed = await engine_run(ferry, group_id)
    await ferry.pool.execute("UPDATE cutover_steps SET seconds = 65 WHERE run_id = $1"
                             " AND name = 'rsync-before-window'", completed)
    await ferry.pool.execute("UPDATE cutover_runs SET status = 'completed', downtime_s = 2.4,"
                             " finished_at = now() WHERE id = $1", completed)
    rolled_back = await engine_run(ferry, group_id, fail_at="database",
                                   fail_undo="maintenance-page")
    cut_off = await engine_run(ferry, group_id, crash_in="switch-dns")
    failed_then_cut = await engine_run(ferry, group_id, crash_after_failing="http-checks")
    finished = page.locator(f'#cutover .run[data-run="{completed}"]')
    await expect(finished.locator(".downtime")).to_have_text("2.4s")
    window = list(WINDOW_STEPS)
    database = window.index("database")
    expected = {
        completed: [(n, "done") for n in window],
        rolled_back: [(n, "undo_failed" if n == "maintenance-page" else "undone")
                      for n in window[:database + 1]],
        cut_off: [(n, "done") for n in window[:window.index("switch-dns")]]
        + [("switch-dns", "running")],
        failed_then_cut: [(n, "done") for n in window[:window.index("http-checks")]]
        + [("http-checks", "failed")],
    }
    for run_id, steps in expected.items():
        rows = steps_of(page, run_id)
        await expect(rows).to_have_count(len(steps))
        shown = [(await row.locator("td").nth(1).text_content(),
                  await row.locator(".badge").text_content()) for row in await rows.all()]
        assert shown == steps, run_id
    rsync = steps_of(page, completed).nth(window.index("rsync-before-window"))
    await expect(rsync).to_contain_text("1m 05s")
    database_row = steps_of(page, rolled_back).nth(database)
    await expect(database_row.locator(".error")).to_have_text("database broke")
    maintenance = steps_of(page, rolled_back).nth(window.index("maintenance-page"))
    await expect(maintenance.locator(".error")).to_have_text(
        "undo: undo of maintenance-page broke")
    await shot(page, "06-ready-cutover")


def steps_of(page: Page, run_id: uuid.UUID):
    """The rows of one run's step table (the row after the run's own)."""
    run = page.locator(f'#cutover .run[data-run="{run_id}"]')
    return run.locator("xpath=following-sibling::tr[1]").locator(".steps tr:has(td)")


async def engine_run(ferry: Ferry, group_id: uuid.UUID, *, fail_at: str | None = None,
                     fail_undo: str | None = None, crash_in: str | None = None,
                     crash_after_failing: str | None = None) -> uuid.UUID:
    """A run of the window's steps (doing nothing) through the runbook engine, which records
    them: to the end, to a rollback (`fail_at`, `fail_undo`), or cut off as a crash would
    leave it: in the middle of `crash_in`, or after `crash_after_failing` failed and before
    its rollback."""
    run_id = uuid.uuid4()
    await ferry.pool.execute("INSERT INTO cutover_runs (id, group_id, prepare, status)"
                             " VALUES ($1, $2, false, 'running')", run_id, group_id)
    cause = Envelope.new(CutoverRequested(run_id=str(run_id)), group_id=group_id)
    journal = Journal(Store(ferry.pool), run_id, group_id, cause)

    def do(name):
        async def action():
            if name == fail_at:
                raise RuntimeError(f"{name} broke")
            return f"{name} done"
        return action

    def undo(name):
        async def action():
            if name == fail_undo:
                raise RuntimeError(f"undo of {name} broke")
        return action
    steps = [Step(name, do(name), undo(name)) for name in WINDOW_STEPS]
    cut = crash_in or crash_after_failing
    if cut is None:
        outcome = await run_steps(steps, journal)
        status = "completed" if outcome.completed else "rolled_back"
        await ferry.pool.execute("UPDATE cutover_runs SET status = $2, reason = $3,"
                                 " finished_at = now() WHERE id = $1", run_id, status,
                                 outcome.reason)
        return run_id
    for position, step in enumerate(steps[:WINDOW_STEPS.index(cut) + 1]):
        await journal.started(position, step)
        if step.name == crash_after_failing:
            await journal.failed(position, 0.2, f"{step.name} broke")
        elif step.name != crash_in:
            await journal.done(position, step, 0.1, await step.do())
    return run_id


async def sign_in(page: Page, url: str) -> None:
    await page.goto(url + "/")
    await page.locator("#token-input").fill(OPERATOR_TOKEN)
    await page.locator("#token-submit").click()
    await expect(page.locator("#live")).to_have_text("live")


async def test_dead_letters_are_listed_per_service_and_replayed(ferry: Ferry, page: Page,
                                                               settings):
    """A dead letter in the cutover service's DLQ shows with its error (as text) and goes
    back on the queue after a confirmed replay."""
    letter = Envelope.new(GroupHalted(vm_id=str(uuid.uuid4()), vm_name="app1", reason="test"),
                          group_id=uuid.uuid4())
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(aio_pika.Message(
            letter.model_dump_json().encode(), message_id=str(letter.id), type=letter.type,
            headers={"x-ferry-error": "RuntimeError: <b>boom</b>", "x-ferry-attempts": 3,
                     "x-ferry-failed-at": "2026-01-01T00:00:00Z"},
        ), routing_key=Names(settings.bus_prefix).dead_letters("cutover"))

    await sign_in(page, settings.gateway_url)
    await page.locator("#show-dead-letters").click()
    card = page.locator('#dead-letter-list [data-service="cutover"]')
    await expect(card.locator(".count")).to_have_text("1")
    await expect(card).to_contain_text("RuntimeError: <b>boom</b>")
    await expect(card).to_contain_text(str(letter.id))
    archiver = page.locator('#dead-letter-list [data-service="archiver"]')
    await expect(archiver.locator(".count")).to_have_text("0")
    await shot(page, "07-dead-letters")
    await confirm(page, card.get_by_role("button", name="Replay", exact=True),
                  "Replay one dead letter of cutover?")
    await expect(card.locator(".count")).to_have_text("0")
    async with ferry.operator.get("/v1/dead-letters/cutover") as response:
        assert (await response.json())["messages"] == []


async def test_event_stream_takes_the_ui_cookie_but_never_a_token_in_the_url(ferry: Ferry,
                                                                            operator):
    """The operator API keeps its bearer auth; /v1/events alone also takes the HttpOnly
    cookie that POST /v1/ui/session sets, and a token in the query string is not accepted."""
    url = ferry.settings.gateway_url
    async with operator.post("/v1/ui/session") as response:
        assert response.status == 200
        cookie = response.cookies["ferry_events"]
        assert cookie["httponly"] and cookie["path"] == "/v1/events"
        assert cookie["samesite"] == "Strict" and cookie.value != OPERATOR_TOKEN
        assert "archiver" in (await response.json())["services"]

    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(f"{url}/v1/events?token={OPERATOR_TOKEN}") as response:
            assert response.status == 401
        async with anonymous.post(f"{url}/v1/ui/session") as response:
            assert response.status == 401
        headers = {"Cookie": f"ferry_events={cookie.value}"}
        async with anonymous.get(f"{url}/v1/events", headers=headers) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
        async with anonymous.get(f"{url}/v1/groups", headers=headers) as response:
            assert response.status == 401  # the cookie opens the event stream only
        async with anonymous.get(f"{url}/v1/events",
                                 headers={"Cookie": "ferry_events=forged"}) as response:
            assert response.status == 403
        async with anonymous.get(f"{url}/") as response:
            assert response.status == 200
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
            assert '<script type="module" src="/ui/app.js">' in await response.text()
        async with anonymous.get(f"{url}/ui/__init__.py") as response:
            assert response.status == 404

    async with operator.get("/openapi.json") as response:
        paths = (await response.json())["paths"]
    assert "get" in paths["/v1/groups/{group}/cutover"]
    async with operator.get("/v1/groups/nope/cutover") as response:
        assert response.status == 404


async def test_a_cancelled_group_says_so_and_stays_apart_from_the_one_that_took_its_name(
        ferry: Ferry, page: Page, settings, operator):
    """A group cancelled while the page is open shows cancelled, live, with what a cancel
    did; once the same plan is submitted again, both are listed, and each opens its own
    page."""
    first = await ferry.submit(THREE_VMS.format(group="shop"))
    await sign_in(page, settings.gateway_url)
    await expect(page.locator("#group-status")).to_have_text("active")
    async with operator.post(f"/v1/groups/{first}/cancel") as response:
        assert response.status == 202
    await expect(page.locator("#group-status")).to_have_text("cancelled")
    await expect(page.locator("#ended")).to_contain_text(
        "its VMs were deleted and its archives removed")
    await shot(page, "20-cancelled")
    second = await ferry.submit(THREE_VMS.format(group="shop"))
    entries = page.locator("#groups [data-group=shop]")
    await expect(entries).to_have_count(2)
    await entries.nth(1).click()  # newest first: the older, cancelled one
    await expect(page.locator("#group-status")).to_have_text("cancelled")
    assert page.url.endswith(f"#group={first}")
    await entries.nth(0).click()
    await expect(page.locator("#group-status")).to_have_text("active")
    await expect(page.locator("#ended")).to_have_count(0)
    assert page.url.endswith(f"#group={second}")


@pytest.fixture
async def gateway_alone(settings):
    """A gateway without the services: nothing moves unless the test moves it. (Asked for
    before `page`, so that the browser has gone before it stops.)"""
    host = Host(settings, [], gateway=True)
    await host.start()
    yield host
    await host.stop()


async def test_the_first_page_shows_the_fleet_and_pages_through_its_groups(
        settings, operator, gateway_alone: Host, page: Page):
    """53 groups (a gateway alone: nothing moves), two of them halted: the overview counts
    groups by status and VMs by state; the list shows 50, then the 3 older ones; a status in
    the overview filters the list, and so does a name; a group submitted meanwhile is counted
    live."""
    for i in range(53):
        async with operator.post("/v1/groups",
                                 data=THREE_VMS.format(group=f"g{i:02d}")) as answer:
            assert answer.status == 201, await answer.text()
    await gateway_alone.pool.execute(
        f"UPDATE {settings.database_schema}.groups SET status = 'halted'"
        " WHERE name IN ('g07', 'g41')")
    await sign_in(page, settings.gateway_url)
    groups, vms = page.locator("#fleet-groups"), page.locator("#fleet-vms")
    await expect(groups).to_contain_text("53 groups")
    await expect(groups.locator('[data-status="active"]')).to_have_text("active 51")
    await expect(groups.locator('[data-status="halted"]')).to_have_text("halted 2")
    await expect(vms).to_contain_text("159 VMs")
    await expect(vms.locator('[data-state="planned"]')).to_have_text("planned 159")
    listed = page.locator("#groups li")
    await expect(listed).to_have_count(50)
    await expect(listed.first).to_contain_text("g52")
    await expect(page.locator("#groups-count")).to_have_text("1–50 of 53")
    await expect(page.locator("#groups-newer")).to_be_disabled()
    await shot(page, "08-fleet")

    await page.locator("#groups-older").click()
    await expect(page.locator("#groups-count")).to_have_text("51–53 of 53")
    await expect(listed).to_have_count(3)
    assert await listed.all_text_contents() == ["g02active", "g01active", "g00active"]
    await expect(page.locator("#groups-older")).to_be_disabled()
    await page.locator("#groups-newer").click()
    await expect(page.locator("#groups-count")).to_have_text("1–50 of 53")

    await groups.locator('[data-status="halted"]').click()
    await expect(page.locator("#groups-count")).to_have_text("1–2 of 2")
    assert await listed.all_text_contents() == ["g41halted", "g07halted"]
    await expect(page.locator("#filter-status")).to_have_value("halted")
    await page.locator("#filter-name").fill("G4")
    await expect(page.locator("#groups-count")).to_have_text("1–1 of 1")
    await page.locator("#filter-name").fill("nothing-like-it")
    await expect(page.locator("#no-match")).to_be_visible()
    await page.locator("#filter-name").fill("")
    await page.locator("#filter-status").select_option("")
    await expect(page.locator("#groups-count")).to_have_text("1–50 of 53")

    async with operator.post("/v1/groups", data=THREE_VMS.format(group="late")) as answer:
        assert answer.status == 201
    # Over the event stream, well before the 15 s catch-up poll.
    await expect(groups).to_contain_text("54 groups", timeout=5000)
    await expect(listed.first).to_contain_text("late")


async def test_a_vm_waiting_for_a_slot_says_why_until_it_goes_on(settings, operator,
                                                                 page: Page):
    """With two VMs in flight at most, the third VM's card says why it waits; once a VM is
    provisioned and frees its slot, the reason goes and the VM moves on."""
    limited = settings.model_copy(update={"limit_in_flight": 2, "limit_in_flight_per_host": 0})
    ferry = await start_ferry(limited, operator)
    try:
        group_id = await ferry.submit(THREE_VMS.format(group="shop"))
        ids = await ferry.vm_ids(group_id)
        await page.goto(settings.gateway_url + "/")
        await page.locator("#token-input").fill(OPERATOR_TOKEN)
        await page.locator("#token-submit").click()
        await expect(page.locator("#group-name")).to_have_text("shop")
        db2 = page.locator('.vms [data-vm="db2"]')
        await expect(db2.locator(".waiting")).to_have_text(
            "waiting for a slot: 2 of 2 in flight overall")
        await expect(db2.locator(".state")).to_have_text("archived")
        await shot(page, "10-waiting-for-a-slot")
        await configure_vm(ferry, ids["app1"])
        await boot_from_disk(ferry, ids["app1"], ("provisioned", "first-boot"))
        await expect(db2.locator(".state")).not_to_have_text("archived")
        await expect(db2.locator(".waiting")).to_have_count(0)
    finally:
        await ferry.host.stop()


async def test_a_viewer_sees_the_group_and_its_audit_but_no_action(ferry: Ferry, page: Page,
                                                                   settings):
    """A viewer token signs in (its name and role shown): a halted group with a failed VM
    offers it no retry, no resume and no cutover; the group's audit lines show who submitted
    it. The admin (bootstrap) token on the same page gets the retry button back."""
    group_id = await ferry.submit(THREE_VMS.format(group="shop"))
    ids = await ferry.vm_ids(group_id)
    async with ferry.operator.post("/v1/tokens", json={"name": "wall", "role": "viewer"}) as made:
        viewer = (await made.json())["token"]
    for name in ids:
        await ferry.wait_booted(ids[name], BootSource.NETWORK)
    async with ferry.vm(ids["app1"]) as vm:
        await vm.state("failed", "lvm", message="lvcreate: insufficient free space")
    await ferry.wait_group(group_id, "halted")

    await page.goto(settings.gateway_url + "/")
    await page.locator("#token-input").fill(viewer)
    await page.locator("#token-submit").click()
    await expect(page.locator("#whoami")).to_have_text("wall (viewer)")
    await expect(page.locator("#halt")).to_be_visible()
    await expect(page.locator('.vms [data-vm="app1"] .state')).to_have_text("failed")
    await page.locator("#audit summary").click()
    first = page.locator("#audit .audit-line").first
    await expect(first).to_contain_text("bootstrap")
    await expect(first).to_contain_text("POST /v1/groups")
    await shot(page, "20-viewer")
    assert await page.locator("[data-action]").count() == 0

    await page.locator("#sign-out").click()
    await page.locator("#token-input").fill(OPERATOR_TOKEN)
    await page.locator("#token-submit").click()
    await expect(page.locator("#whoami")).to_have_text("bootstrap (admin)")
    await expect(page.locator('#halt [data-action="retry"]')).to_be_visible()
