"""The cutover runbook engine against the real PostgreSQL: steps run in order, each timed,
stored and announced; a failure at any step undoes the steps started, last first; a run cut
off by a crash is rolled back from what the journal recorded."""

from __future__ import annotations

import uuid

import pytest

from services.cutover.runbook import Journal, Step, run_steps, undo_recorded
from shared import events as ev
from shared.events import Envelope
from shared.plan import load_plan
from shared import journey
from shared.store.db import open_pool
from shared.store.sealed import open_secrets_key
from shared.store.session import Store
from tests.integration.harness import THREE_VMS

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]

NAMES = ["lower-dns-ttl", "maintenance-page", "database", "change-dns", "remove-marker"]


@pytest.fixture
async def journal(settings):
    pool = await open_pool(settings)
    store = Store(pool, await open_secrets_key(settings))  # the gateway's, which submits
    async with store.transaction() as tx:
        group_id = await journey.submit(tx, load_plan(THREE_VMS.format(group="cut")))
        run_id = uuid.uuid4()
        await tx.cutover_runs.add(run_id, group_id, prepare=False)
        await tx.cutover_runs.set_running(run_id)
    cause = Envelope.new(ev.CutoverRequested(run_id=str(run_id)), group_id=group_id)
    yield Journal(store, run_id, group_id, cause)
    await pool.close()


class World:
    """What the steps change, so the test can see what was done and put back."""

    def __init__(self, fail_at: str | None = None, fail_undo: str | None = None):
        self.fail_at, self.fail_undo = fail_at, fail_undo
        self.changed: list[str] = []
        self.calls: list[str] = []

    def steps(self) -> list[Step]:
        return [Step(name, self._do(name), self._undo(name)) for name in NAMES]

    def _do(self, name):
        async def do():
            self.calls.append(f"do {name}")
            self.changed.append(name)  # a failing step may have done part of its work
            if name == self.fail_at:
                raise RuntimeError(f"{name} broke")
            return f"{name} done"
        return do

    def _undo(self, name):
        async def undo():
            self.calls.append(f"undo {name}")
            if name == self.fail_undo:
                raise RuntimeError(f"undo of {name} broke")
            if name in self.changed:
                self.changed.remove(name)
        return undo


async def rows(journal: Journal) -> list[dict]:
    return [dict(r) for r in await journal.store.pool.fetch(
        "SELECT position, name, status, seconds, detail, error, undo_error FROM cutover_steps"
        " WHERE run_id = $1 ORDER BY position", journal.run_id)]


async def announced(journal: Journal) -> list[str]:
    bodies = await journal.store.pool.fetch(
        "SELECT body FROM outbox WHERE routing_key = 'cutover.step_completed' ORDER BY id")
    return [Envelope.model_validate(b["body"]).payload["step"] for b in bodies]


async def test_every_step_runs_in_order_timed_stored_and_announced(journal):
    """A run without failure does each step once, in order, and records and announces each."""
    world = World()
    outcome = await run_steps(world.steps(), journal)
    assert outcome.completed and list(outcome.seconds) == NAMES
    assert world.calls == [f"do {n}" for n in NAMES]
    recorded = await rows(journal)
    assert [(r["name"], r["status"], r["detail"]) for r in recorded] == \
        [(n, "done", f"{n} done") for n in NAMES]
    assert all(r["seconds"] is not None and r["seconds"] >= 0 for r in recorded)
    assert await announced(journal) == NAMES


@pytest.mark.parametrize("fail_at", NAMES)
async def test_a_failure_at_any_step_undoes_what_was_done_last_first(journal, fail_at):
    """Failing at each step in turn: the failed step and every earlier one are undone in
    reverse order, nothing after it runs, and nothing stays changed."""
    world = World(fail_at=fail_at)
    outcome = await run_steps(world.steps(), journal)
    done = NAMES[:NAMES.index(fail_at) + 1]
    assert not outcome.completed and outcome.failed_step == fail_at
    assert outcome.reason == f"{fail_at}: {fail_at} broke"
    assert world.calls == [f"do {n}" for n in done] + [f"undo {n}" for n in reversed(done)]
    assert world.changed == []
    assert outcome.undone == list(reversed(done))
    statuses = {r["name"]: (r["status"], r["error"]) for r in await rows(journal)}
    assert statuses == {n: ("undone", f"{n} broke" if n == fail_at else None) for n in done}
    assert await announced(journal) == done[:-1]


async def test_an_undo_that_fails_is_recorded_and_the_rest_still_undone(journal):
    """When one undo fails the others still run; the failure is kept with its step."""
    world = World(fail_at="change-dns", fail_undo="maintenance-page")
    outcome = await run_steps(world.steps(), journal)
    assert outcome.undo_errors == {"maintenance-page": "undo of maintenance-page broke"}
    assert outcome.undone == ["change-dns", "database", "lower-dns-ttl"]
    by_name = {r["name"]: r for r in await rows(journal)}
    assert by_name["maintenance-page"]["status"] == "undo_failed"
    assert by_name["maintenance-page"]["undo_error"] == "undo of maintenance-page broke"
    assert by_name["lower-dns-ttl"]["status"] == "undone"


async def test_a_run_cut_off_by_a_crash_is_rolled_back_from_the_journal(journal):
    """After a crash in the middle of a step, the steps the journal shows as reached (the one
    running included) are undone, last first, by a fresh engine."""
    world = World()
    steps = world.steps()
    for position in range(3):  # what a run had recorded when its process died in step 3
        await journal.started(position, steps[position])
        await steps[position].do()
        if position < 2:
            await journal.done(position, steps[position], 0.1, None)
    fresh = World()
    fresh.changed = list(world.changed)
    outcome = await undo_recorded(fresh.steps(), journal)
    assert fresh.calls == ["undo database", "undo maintenance-page", "undo lower-dns-ttl"]
    assert fresh.changed == [] and outcome.undone == NAMES[:3][::-1]
    await undo_recorded(fresh.steps(), journal)
    assert fresh.calls[3:] == []  # a second rollback finds nothing left to undo
