"""The cutover runbook engine: steps in order, each with a do and an undo, each timed, stored
and announced; a failure undoes the steps already done, in reverse, so the old site keeps
serving.

A step's `do` returns a line saying what it did (stored with the step). Its `undo` must be safe
to run after a `do` that failed halfway, and more than once: rollback may run again after a
crash (see `undo_recorded`). What a step does is built elsewhere (DNS, rsync, databases,
forwarding); this module only orders, times, records and rolls back.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from shared import events as ev
from shared.events import Envelope
from shared.logging import get_logger
from shared.store.session import Store

log = get_logger(__name__)

Action = Callable[[], Awaitable[str | None]]
Undo = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Step:
    name: str
    do: Action
    undo: Undo | None = None  # None: the step changes nothing that must be put back


@dataclass
class Outcome:
    completed: bool
    seconds: dict[str, float] = field(default_factory=dict)
    failed_step: str | None = None
    reason: str | None = None
    undone: list[str] = field(default_factory=list)
    undo_errors: dict[str, str] = field(default_factory=dict)


class Journal:
    """Records one run's steps in `cutover_steps` and announces each completed one as
    `cutover.step_completed`, in the same transaction (through the outbox)."""

    def __init__(self, store: Store, run_id: uuid.UUID, group_id: uuid.UUID, cause: Envelope):
        self.store, self.run_id, self.group_id, self.cause = store, run_id, group_id, cause

    async def started(self, position: int, step: Step) -> None:
        async with self.store.transaction(cause=self.cause) as tx:
            await tx.cutover_steps.started(self.run_id, position, step.name)

    async def done(self, position: int, step: Step, seconds: float, detail: str | None) -> None:
        async with self.store.transaction(cause=self.cause) as tx:
            await tx.cutover_steps.finished(self.run_id, position, "done", seconds,
                                            detail=detail)
            await tx.publish(ev.CutoverStepCompleted(run_id=str(self.run_id), step=step.name,
                                                     seconds=seconds), group_id=self.group_id)

    async def failed(self, position: int, seconds: float, error: str) -> None:
        async with self.store.transaction(cause=self.cause) as tx:
            await tx.cutover_steps.finished(self.run_id, position, "failed", seconds,
                                            error=error)

    async def undone(self, position: int, error: str | None) -> None:
        async with self.store.transaction(cause=self.cause) as tx:
            await tx.cutover_steps.undone(self.run_id, position, error)

    async def positions_to_undo(self) -> list[int]:
        """Steps a run got to (done, failed or cut off while running) and did not undo yet,
        last first: what a rollback after a crash must still put back."""
        async with self.store.session() as db:
            return await db.cutover_steps.to_undo(self.run_id)


async def run_steps(steps: list[Step], journal: Journal) -> Outcome:
    """Do each step in order; on the first failure undo what was started, last first."""
    outcome = Outcome(completed=False)
    for position, step in enumerate(steps):
        await journal.started(position, step)
        started = time.monotonic()
        try:
            detail = await step.do()
        except Exception as exc:  # any failure of a step is the run's failure: roll back
            seconds = time.monotonic() - started
            outcome.failed_step, outcome.reason = step.name, f"{step.name}: {exc}"
            log.warning("cutover step failed; rolling back", step=step.name, error=str(exc))
            await journal.failed(position, seconds, str(exc))
            # The failed step is undone too: it may have done part of its work.
            await _undo(steps, list(range(position, -1, -1)), journal, outcome)
            return outcome
        seconds = time.monotonic() - started
        outcome.seconds[step.name] = seconds
        await journal.done(position, step, seconds, detail)
        log.info("cutover step done", step=step.name, seconds=round(seconds, 3), detail=detail)
    outcome.completed = True
    return outcome


async def undo_recorded(steps: list[Step], journal: Journal) -> Outcome:
    """Roll back a run that was cut off (the cutover service died mid-run): undo every step
    the journal shows as reached and not yet undone."""
    outcome = Outcome(completed=False, reason="the cutover was interrupted")
    await _undo(steps, await journal.positions_to_undo(), journal, outcome)
    return outcome


async def _undo(steps: list[Step], positions: list[int], journal: Journal,
                outcome: Outcome) -> None:
    for position in positions:
        step = steps[position]
        error = None
        if step.undo is not None:
            try:
                await step.undo()
            except Exception as exc:  # keep undoing the rest: the old site must come back
                error = str(exc)
                outcome.undo_errors[step.name] = error
                log.error("cutover undo failed", step=step.name, error=error)
        await journal.undone(position, error)
        if error is None:
            outcome.undone.append(step.name)
