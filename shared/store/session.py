"""Sessions on the state store: every statement on Ferryman's tables is a method of one of the
repositories a session carries (`db.vms.get(...)`, `tx.groups.add(...)`).

The convention: a store function takes the session it runs in, never the pool. A `Session` is
one pooled connection, its statements committed one by one (reads, and single statements that
need no transaction); a `Tx` is a session inside a transaction, the unit of work, which also
writes the events it causes to the outbox and claims the event it handles in the inbox, so that
they commit (or not) with its changes. `Store` makes both.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import asynccontextmanager
from functools import cached_property
from typing import AsyncIterator

import asyncpg

from shared.events import Envelope, Payload
from shared.secrets_key import SecretsKey
from shared.store.archives import Archives
from shared.store.audit import Audit
from shared.store.cutover_runs import CutoverRuns
from shared.store.cutover_steps import CutoverSteps
from shared.store.deadlines import Deadlines
from shared.store.groups import Groups
from shared.store.host_keys import HostKeys
from shared.store.inbox import AlreadyProcessed, Inbox
from shared.store.limits import Limits
from shared.store.messages import Messages
from shared.store.operator_tokens import OperatorTokens
from shared.store.outbox import Outbox
from shared.store.retention import Retention
from shared.store.scripts import Scripts
from shared.store.tokens import Tokens
from shared.store.transitions import Transitions
from shared.store.views import Views
from shared.store.vms import Vms

__all__ = ["AlreadyProcessed", "Session", "Store", "Tx"]


class Session:
    """The repositories, on one connection. `secrets_key` seals and unseals the secrets the
    store keeps; only the gateway's process has one (shared/store/sealed.py)."""

    def __init__(self, conn: asyncpg.Connection, secrets_key: SecretsKey | None = None,
                 wake: str | None = None):
        self.conn = conn
        self.secrets_key = secrets_key
        self.wake = wake  # the relay its commits wake (shared/store/outbox.py)

    @cached_property
    def groups(self) -> Groups:
        return Groups(self.conn, self.secrets_key)

    @cached_property
    def vms(self) -> Vms:
        return Vms(self.conn)

    @cached_property
    def transitions(self) -> Transitions:
        return Transitions(self.conn)

    @cached_property
    def limits(self) -> Limits:
        return Limits(self.conn)

    @cached_property
    def messages(self) -> Messages:
        return Messages(self.conn)

    @cached_property
    def archives(self) -> Archives:
        return Archives(self.conn)

    @cached_property
    def scripts(self) -> Scripts:
        return Scripts(self.conn)

    @cached_property
    def host_keys(self) -> HostKeys:
        return HostKeys(self.conn)

    @cached_property
    def tokens(self) -> Tokens:
        return Tokens(self.conn)

    @cached_property
    def operator_tokens(self) -> OperatorTokens:
        return OperatorTokens(self.conn)

    @cached_property
    def audit(self) -> Audit:
        return Audit(self.conn)

    @cached_property
    def cutover_runs(self) -> CutoverRuns:
        return CutoverRuns(self.conn)

    @cached_property
    def cutover_steps(self) -> CutoverSteps:
        return CutoverSteps(self.conn)

    @cached_property
    def inbox(self) -> Inbox:
        return Inbox(self.conn)

    @cached_property
    def outbox(self) -> Outbox:
        return Outbox(self.conn, self.wake)

    @cached_property
    def retention(self) -> Retention:
        return Retention(self.conn)

    @cached_property
    def deadlines(self) -> Deadlines:
        return Deadlines(self.conn)

    @cached_property
    def views(self) -> Views:
        return Views(self.conn)

    @asynccontextmanager
    async def transaction(self, cause: Envelope | None = None) -> AsyncIterator[Tx]:
        """A transaction on this session's connection (a request that already holds one takes
        the pool once)."""
        async with self.conn.transaction():
            yield Tx(self.conn, cause, self.secrets_key, self.wake)


class Tx(Session):
    """A session inside a transaction: the unit of work."""

    def __init__(self, conn: asyncpg.Connection, cause: Envelope | None = None,
                 secrets_key: SecretsKey | None = None, wake: str | None = None):
        super().__init__(conn, secrets_key, wake)
        self.cause = cause
        self.published: list[Envelope] = []

    async def publish(
        self, payload: Payload, *, group_id: uuid.UUID, vm_id: uuid.UUID | None = None
    ) -> Envelope:
        """Write an event to the outbox; the relay sends it once this transaction commits."""
        event = Envelope.new(payload, group_id=group_id, vm_id=vm_id, cause=self.cause)
        # The relay's wake-up is delivered at commit, and one per transaction is enough.
        await self.outbox.add(event, notify=not self.published)
        self.published.append(event)
        return event

    async def claim(self, service: str, event_id: uuid.UUID) -> None:
        """Record the event as processed by `service`, in this transaction; a second claim of
        the same event (a redelivery) raises AlreadyProcessed."""
        await self.inbox.claim(service, event_id)


# A statement cut short (its command time-out, a cancelled request or probe) or a failed
# connection. Such a connection may still be waiting for its statement's answer, or be silent
# for good (a network that drops packets without a reset): asyncpg's release would wait for the
# cancellation for ever, and a reused one would hang the next statement. It is terminated; the
# pool opens a new one when it needs it (tests/integration/test_network_cut.py).
CUT_SHORT = (TimeoutError, asyncio.CancelledError, OSError, asyncpg.InterfaceError,
             asyncpg.PostgresConnectionError)
RELEASE_TIMEOUT_S = 10.0


class Store:
    """Sessions and transactions on the pool."""

    def __init__(self, pool: asyncpg.Pool, secrets_key: SecretsKey | None = None,
                 wake: str | None = None):
        self.pool = pool
        self.secrets_key = secrets_key
        # The NOTIFY channel of this process's relay, if it has one (services/runtime.py).
        self.wake = wake

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection, dropped instead of reused when a statement on it was cut
        short or the connection failed (see CUT_SHORT)."""
        conn = await self.pool.acquire()
        try:
            yield conn
        except CUT_SHORT:
            conn.terminate()
            raise
        finally:
            await self.pool.release(conn, timeout=RELEASE_TIMEOUT_S)

    @asynccontextmanager
    async def transaction(self, cause: Envelope | None = None) -> AsyncIterator[Tx]:
        async with self.connection() as conn, conn.transaction():
            yield Tx(conn, cause, self.secrets_key, self.wake)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        async with self.connection() as conn:
            yield Session(conn, self.secrets_key, self.wake)

    async def ping(self) -> None:
        """A round trip to the database on a pooled connection (/readyz); raises if none."""
        async with self.connection() as conn:
            await conn.fetchval("SELECT 1")

    async def claim(self, service: str, event_id: uuid.UUID) -> None:
        """Record the event as processed by `service` on its own (one statement, autocommit),
        for a handler that wrote nothing that had to commit with it."""
        async with self.session() as db:
            await db.inbox.claim(service, event_id)

    async def processed(self, service: str, event_id: uuid.UUID) -> bool:
        async with self.session() as db:
            return await db.inbox.processed(service, event_id)
