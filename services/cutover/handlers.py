"""Cutover: takes an operator's `cutover.requested` for a ready group and records the run.
The runbook itself (DNS, rsync, databases, forwarding, rollback) is its own piece of work."""

from __future__ import annotations

import uuid

from shared import events as ev
from shared.events import Envelope
from shared.service import Context, Router
from shared.states import GroupStatus
from shared.store import groups

router = Router("cutover")


@router.on("cutover.requested")
async def accept_cutover(event: Envelope, ctx: Context) -> None:
    request = ev.CutoverRequested.model_validate(event.payload)
    run_id = uuid.UUID(request.run_id)
    async with ctx.transaction() as tx:
        group = await groups.get(tx.conn, event.group_id, lock=True)
        if group is None:
            return
        if group.status != GroupStatus.READY:
            reason = f"group {group.name} is {group.status}, not ready"
            await _finish(tx, run_id, "refused", reason)
            await tx.publish(ev.CutoverFailed(run_id=str(run_id), reason=reason),
                             group_id=group.id)
            return
        await tx.conn.execute(
            "UPDATE cutover_runs SET status = 'accepted' WHERE id = $1 AND status = 'requested'",
            run_id,
        )


@router.on("group.halted")
async def cancel_pending(event: Envelope, ctx: Context) -> None:
    """A halted group must not cut over: runs not started yet are refused."""
    async with ctx.transaction() as tx:
        await tx.conn.execute(
            "UPDATE cutover_runs SET status = 'refused', reason = 'group halted',"
            " finished_at = now() WHERE group_id = $1 AND status IN ('requested', 'accepted')",
            event.group_id,
        )


async def _finish(tx, run_id: uuid.UUID, status: str, reason: str) -> None:
    await tx.conn.execute(
        "UPDATE cutover_runs SET status = $2, reason = $3, finished_at = now() WHERE id = $1",
        run_id, status, reason,
    )
