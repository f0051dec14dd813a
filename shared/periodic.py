"""A pass that a process runs at start and then every so many seconds until it stops: the
retention pruner and the deadline watchdog. A failed pass (the database away) is logged and
tried again at the next; a stop cancels the pass under way, which the database rolls back."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from shared.logging import get_logger

log = get_logger(__name__)


class Every:
    def __init__(self, name: str, interval_s: float, one_pass: Callable[[], Awaitable[object]]):
        self.name = name
        self.interval_s = interval_s
        self.one_pass = one_pass
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def abandon(self) -> None:
        """Stop at once (a kill): a pass cut off is rolled back by the database."""
        if self._task:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            try:
                await self.one_pass()
            except Exception as exc:  # noqa: BLE001 - the next pass tries again
                log.warning("periodic pass failed", task=self.name, error=str(exc))
            await asyncio.sleep(self.interval_s)
