"""Retention: the store's housekeeping. Published outbox events, processed-event records (the
inbox) and the VM log lines of closed groups are deleted once older than the settings say, in
bounded batches (shared/store/retention.py). The coordinator's process runs it periodically
(`Pruner`, started by services/runtime.py); an operator may run it, or count it, at once
(`POST /v1/retention/prune`, `ferry prune`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from shared.logging import get_logger
from shared.settings import Settings
from shared.store.retention import KINDS
from shared.store.session import Store

log = get_logger(__name__)

# Between two batches of one kind: the others' statements get their turn at the table.
BATCH_PAUSE_S = 0.05


@dataclass(frozen=True)
class Pruned:
    outbox: int = 0
    inbox: int = 0
    vm_messages: int = 0


def cutoffs(settings: Settings, now: datetime) -> dict[str, datetime | None]:
    """Each kind's age limit as a moment: older rows go. None: that kind is kept forever."""
    days = {"outbox": settings.retention_outbox_days, "inbox": settings.retention_inbox_days,
            "vm_messages": settings.retention_messages_days}
    return {kind: now - timedelta(days=days[kind]) if days[kind] > 0 else None
            for kind in KINDS}


async def prune(store: Store, settings: Settings, *, dry_run: bool = False,
                now: datetime | None = None) -> Pruned:
    """Delete (or count, for a dry run) what the settings let go; how many of each."""
    found = {}
    for kind, before in cutoffs(settings, now or datetime.now(timezone.utc)).items():
        if before is None:
            found[kind] = 0
            continue
        async with store.session() as db:
            if dry_run:
                found[kind] = await db.retention.count(kind, before)
            else:
                found[kind] = await _in_batches(db, kind, before, settings.retention_batch)
    return Pruned(**found)


async def _in_batches(db, kind: str, before: datetime, batch: int) -> int:
    total = 0
    while True:
        deleted = await db.retention.prune(kind, before, batch)
        total += deleted
        if deleted < batch:
            return total
        await asyncio.sleep(BATCH_PAUSE_S)


class Pruner:
    """Prunes at start, then every `retention_interval_s`, until stopped. A failed pass (the
    database away) is logged and tried again at the next."""

    def __init__(self, store: Store, settings: Settings):
        self.store = store
        self.settings = settings
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="retention-pruner")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def abandon(self) -> None:
        """Stop at once (a kill): a batch cut off is rolled back by the database."""
        if self._task:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            try:
                found = await prune(self.store, self.settings)
                if any(vars(found).values()):
                    log.info("retention pruned", **vars(found))
            except Exception as exc:  # noqa: BLE001 - the next pass tries again
                log.warning("retention pass failed", error=str(exc))
            await asyncio.sleep(self.settings.retention_interval_s)
