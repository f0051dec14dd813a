"""VM bearer tokens: issued at boot, stored only as a hash, one VM each, dead once it is live
or cancelled (and revoked when its group ends)."""

from __future__ import annotations

import hashlib
import secrets
import uuid

import asyncpg


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Tokens:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def issue(self, vm_id: uuid.UUID) -> str:
        """A new token for the VM; its earlier tokens stop working."""
        await self.conn.execute(
            "UPDATE vm_tokens SET revoked_at = now() WHERE vm_id = $1 AND revoked_at IS NULL",
            vm_id)
        token = secrets.token_urlsafe(32)
        await self.conn.execute(
            "INSERT INTO vm_tokens (id, vm_id, token_hash) VALUES ($1, $2, $3)",
            uuid.uuid4(), vm_id, _hash(token))
        return token

    async def owner(self, token: str) -> uuid.UUID | None:
        """The VM a token belongs to, if the token is current and the VM is neither live nor
        cancelled. Every request a VM makes shows its token here first, so this is also where
        the VM is heard (its last word, which its deadline counts from): in the same statement,
        no round trip more."""
        return await self.conn.fetchval(
            "UPDATE vms v SET last_word_at = now() FROM vm_tokens t"
            " WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND v.id = t.vm_id"
            " AND v.state NOT IN ('live', 'cancelled') RETURNING v.id",
            _hash(token))

    async def revoke_group(self, group_id: uuid.UUID) -> None:
        """Revoke every current token of the group's VMs."""
        await self.conn.execute(
            "UPDATE vm_tokens SET revoked_at = now() WHERE revoked_at IS NULL"
            " AND vm_id IN (SELECT id FROM vms WHERE group_id = $1)", group_id)
