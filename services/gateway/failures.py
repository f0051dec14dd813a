"""Token failures counted per client address, so a guessing client is slowed down (429)."""

from __future__ import annotations

import math
import time
from collections import deque


class FailureLimiter:
    """Token failures per client address in a sliding window: past `limit` failures within
    `window` seconds the address is refused (429) until its oldest failure leaves the window.

    Counted in the gateway process's memory: each gateway replica counts on its own and a
    restart forgets; behind a proxy or a shared relay every client has the proxy's address."""

    def __init__(self, limit: int, window: float, clock=time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        cutoff = self.clock() - self.window
        while failures and failures[0] <= cutoff:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures

    def retry_after(self, address: str) -> int:
        """Seconds the address must wait (0: it may try)."""
        failures = self._recent(address)
        if failures is None or len(failures) < self.limit:
            return 0
        return max(1, math.ceil(failures[-self.limit] + self.window - self.clock()))

    def failed(self, address: str) -> None:
        if len(self._failures) > 100_000:  # a flood from many addresses: forget the idle ones
            for known in list(self._failures):
                self._recent(known)
        failures = self._failures.setdefault(address, deque())
        failures.append(self.clock())
        while len(failures) > self.limit:
            failures.popleft()
