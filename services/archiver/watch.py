"""Watching an archive stream that no byte of crosses Python (producer | zstd | tee file): how
much of it has arrived, and whether it has stopped.

ssh's keepalives end a connection whose host is gone, but not one whose host answers them
while its tar sends nothing (a read stuck on a hung mount, a dump waiting on a lock): only the
stream itself shows that, so it is watched here.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from pathlib import Path

# What zstd (or any writer) says when the archive store's filesystem is full or over quota.
OUT_OF_SPACE = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))
# How often the stream is looked at: a /proc read, cheap; what a failure reports as received
# is at most this old.
LOOK_EVERY_S = 0.25


class Progress:
    """Bytes of the stream that reached zstd: what zstd has read (its `rchar` in
    /proc/<pid>/io, exact and at once), or, where that cannot be read, the size of the file tee
    writes from its output (which grows only by whole compressed blocks)."""

    def __init__(self, zstd_pid: int, partial: Path):
        self._io = Path(f"/proc/{zstd_pid}/io")
        self._partial = partial
        self.last = 0

    def received(self) -> int:
        try:
            for line in self._io.read_text().splitlines():
                if line.startswith("rchar:"):
                    self.last = max(self.last, int(line.split()[1]))
                    return self.last
        except (OSError, ValueError):
            pass
        try:
            self.last = max(self.last, self._partial.stat().st_size)
        except OSError:
            pass
        return self.last


async def quiet_for(progress: Progress, seconds: float | None) -> None:
    """Return once no byte of the stream has arrived for `seconds` (never, while bytes come,
    nor with None: then it only keeps `progress` current)."""
    last, since = progress.received(), time.monotonic()
    step = LOOK_EVERY_S if seconds is None else min(LOOK_EVERY_S, seconds / 4)
    while True:
        await asyncio.sleep(step)
        now = progress.received()
        if now != last:
            last, since = now, time.monotonic()
        elif seconds is not None and time.monotonic() - since >= seconds:
            return


def out_of_space(message: str) -> bool:
    return any(mark in message for mark in OUT_OF_SPACE)


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"
