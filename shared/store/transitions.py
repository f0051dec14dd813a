"""A VM's history: every state it passed through (written with the state, by `vms.write`)."""

from __future__ import annotations

import uuid

import asyncpg

from shared.states import VmState


class Transitions:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def reached(self, vm_id: uuid.UUID, state: VmState, step: str | None) -> bool:
        """Whether the VM went to `state` with `step` before."""
        return bool(await self.conn.fetchval(
            "SELECT true FROM vm_transitions WHERE vm_id = $1 AND to_state = $2"
            " AND step IS NOT DISTINCT FROM $3 LIMIT 1", vm_id, state, step))
