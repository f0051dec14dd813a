"""Operator tokens: named, each with a role, stored only as a hash, revoked at once."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

import asyncpg

# last_used_at is written at most this often per token: a scraper every 15 s must not turn
# each read into a write.
LAST_USED_EVERY_S = 60


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Holder:
    """Who a presented token belongs to."""
    name: str
    role: str
    token_hash: bytes


class NameTaken(Exception):
    pass


class OperatorTokens:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def create(self, name: str, role: str, created_by: str) -> str:
        """A new token (returned once, stored as its hash); NameTaken if the name was ever used."""
        token = secrets.token_urlsafe(32)
        try:
            await self.conn.execute(
                "INSERT INTO operator_tokens (id, name, role, token_hash, created_by)"
                " VALUES ($1, $2, $3, $4, $5)",
                uuid.uuid4(), name, role, token_hash(token), created_by)
        except asyncpg.UniqueViolationError:
            raise NameTaken(name) from None
        return token

    async def holder(self, token: str) -> Holder | None:
        """The current (unrevoked) token's name and role: one lookup by the unique hash, which
        also notes its use (no more than once a minute) in the same statement."""
        row = await self.conn.fetchrow(
            "WITH t AS (SELECT id, name, role, token_hash, last_used_at FROM operator_tokens"
            "  WHERE token_hash = $1 AND revoked_at IS NULL),"
            " used AS (UPDATE operator_tokens o SET last_used_at = now() FROM t"
            "  WHERE o.id = t.id AND (t.last_used_at IS NULL"
            f"  OR t.last_used_at < now() - interval '{LAST_USED_EVERY_S} seconds'))"
            " SELECT name, role, token_hash FROM t", token_hash(token))
        return Holder(row["name"], row["role"], bytes(row["token_hash"])) if row else None

    async def current(self, name: str) -> Holder | None:
        """The named token, unless revoked (the web UI's event-stream cookie names it)."""
        row = await self.conn.fetchrow(
            "SELECT name, role, token_hash FROM operator_tokens"
            " WHERE name = $1 AND revoked_at IS NULL", name)
        return Holder(row["name"], row["role"], bytes(row["token_hash"])) if row else None

    async def listed(self) -> list[asyncpg.Record]:
        return await self.conn.fetch(
            "SELECT name, role, created_at, created_by, revoked_at, last_used_at"
            " FROM operator_tokens ORDER BY created_at, name")

    async def revoke(self, name: str) -> asyncpg.Record | None:
        """Revoke the named token (again: no change); None when there is no such token."""
        return await self.conn.fetchrow(
            "UPDATE operator_tokens SET revoked_at = coalesce(revoked_at, now())"
            " WHERE name = $1 RETURNING name, role, created_at, created_by, revoked_at,"
            " last_used_at", name)
