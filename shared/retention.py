"""Retention: the store's housekeeping. Published outbox events, processed-event records (the
inbox) and the VM log lines of closed groups are deleted once older than the settings say, in
bounded batches (shared/store/retention.py). The coordinator's process runs it periodically
(`pruner`, started by services/runtime.py); an operator may run it, or count it, at once
(`POST /v1/retention/prune`, `ferry prune`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from shared.logging import get_logger
from shared.periodic import Every
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


def pruner(store: Store, settings: Settings) -> Every:
    """Prunes at start, then every `retention_interval_s`, until stopped."""
    async def one_pass() -> None:
        found = await prune(store, settings)
        if any(vars(found).values()):
            log.info("retention pruned", **vars(found))
    return Every("retention-pruner", settings.retention_interval_s, one_pass)
