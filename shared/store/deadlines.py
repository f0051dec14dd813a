"""What the deadline watchdog reads (shared/deadlines.py): VMs silent past their phase's
deadline, row-locked for the transaction that fails them."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from shared.model import Vm
from shared.states import DEADLINE_PHASES, ENDING
from shared.store.vms import vm_of_row

# A VM's deadline: its group's plan's for its state, else the settings' ($1, by state).
_DEADLINE = ("COALESCE((g.plan->'deadlines'->>v.state)::float8, ($1::jsonb->>v.state)::float8)")
# Silence counts from the VM's last word or its last change of state, whichever is later.
_SINCE = "greatest(v.state_changed_at, v.last_word_at)"

# SKIP LOCKED: a VM whose row a report (or the other replica's watchdog) holds is left for
# the next look; it is then either moved on or still silent. Oldest silence first, so a batch
# cut off by the limit takes the longest overdue.
_PAST = (
    f"SELECT v.*, g.status AS group_status, {_DEADLINE} AS deadline_s,"
    f" extract(epoch FROM now() - {_SINCE})::float8 AS silent_s"
    " FROM vms v JOIN groups g ON g.id = v.group_id"
    " WHERE v.state = ANY($2::text[]) AND g.status <> ALL($3::text[])"
    f" AND {_DEADLINE} > 0 AND {_SINCE} < now() - {_DEADLINE} * interval '1 second'"
    f" ORDER BY {_SINCE} LIMIT $4 FOR UPDATE OF v SKIP LOCKED"
)


@dataclass(frozen=True)
class Overdue:
    """A VM silent past its deadline: the VM (row-locked), its deadline and how long it has
    been silent, in seconds."""

    vm: Vm
    deadline_s: float
    silent_s: float


class Deadlines:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def overdue(self, defaults: dict[str, float], limit: int) -> list[Overdue]:
        """At most `limit` VMs in a phase with a deadline, of groups not ending, silent longer
        than their deadline (`defaults` by state, or their plan's), locked for this transaction.
        Call it in a transaction."""
        rows = await self.conn.fetch(_PAST, defaults, [str(s) for s in DEADLINE_PHASES],
                                     [str(s) for s in ENDING], limit)
        return [Overdue(vm_of_row(r), r["deadline_s"], r["silent_s"]) for r in rows]
