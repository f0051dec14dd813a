"""The inbox: which service processed which event, so a redelivery is recognised."""

from __future__ import annotations

import uuid

import asyncpg


class AlreadyProcessed(Exception):
    """The event was handled before (the inbox has it); nothing is to be done again."""


class Inbox:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def claim(self, service: str, event_id: uuid.UUID) -> None:
        """Record the event as processed by `service`; AlreadyProcessed if it was."""
        inserted = await self.conn.fetchval(
            "INSERT INTO inbox (service, event_id) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING RETURNING true", service, event_id)
        if not inserted:
            raise AlreadyProcessed(f"{service} already processed {event_id}")

    async def processed(self, service: str, event_id: uuid.UUID) -> bool:
        return bool(await self.conn.fetchval(
            "SELECT true FROM inbox WHERE service = $1 AND event_id = $2", service, event_id))
