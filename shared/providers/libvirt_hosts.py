"""The libvirt provider's hypervisor hosts: one connection per URI, every blocking libvirt call
in a worker thread (never on the event loop), one call at a time per host; and where a new VM
goes (placement)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from shared.providers.base import ProviderError

T = TypeVar("T")


class HostUnreachable(ProviderError):
    pass


def _quiet(_ctx: object, _error: object) -> None:
    """libvirt prints every error to stderr by default; they become ProviderErrors instead."""


class Hypervisor:
    """A libvirt host by its URI (qemu:///system, qemu+ssh://host/system ...)."""

    def __init__(self, uri: str):
        self.uri = uri
        self._conn: Any = None
        self._lock = threading.Lock()

    def _connection(self) -> Any:
        import libvirt

        if self._conn is not None and self._conn.isAlive():
            return self._conn
        libvirt.registerErrorHandler(_quiet, None)
        try:
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            self._conn = None
            raise HostUnreachable(f"libvirt host {self.uri} is unreachable: "
                                  f"{exc.get_error_message()}") from None
        return self._conn

    async def call(self, fn: Callable[[Any], T]) -> T:
        """fn(connection) in a thread; libvirt errors become ProviderError naming the host."""

        def run() -> T:
            import libvirt

            with self._lock:
                conn = self._connection()
                try:
                    return fn(conn)
                except libvirt.libvirtError as exc:
                    if not conn.isAlive():
                        self._conn = None
                    raise ProviderError(f"libvirt ({self.uri}): {exc.get_error_message()}") from None

        return await asyncio.to_thread(run)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001 - a dead connection closes as well as it can
                    pass
                self._conn = None


def free_memory_mb(conn: Any) -> int:
    """Memory the host can give a new VM: free plus the page cache it would drop for it.
    (getFreeMemory() counts neither the cache nor, here, more than part of the free memory.)"""
    import libvirt

    stats = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)  # KiB
    return (stats["free"] + stats.get("buffers", 0) + stats.get("cached", 0)) // 1024


def rank(free_mb: dict[str, int], memory_mb: int) -> list[str]:
    """The hosts that fit the VM, most free memory first (ties: the first listed)."""
    fits = {uri: free for uri, free in free_mb.items() if free >= memory_mb}
    if not fits:
        seen = ", ".join(f"{uri}: {free} MiB free" for uri, free in free_mb.items())
        raise ProviderError(f"no libvirt host has {memory_mb} MiB of free memory for this VM "
                            f"({seen})")
    order = list(free_mb)
    return sorted(fits, key=lambda uri: (-fits[uri], order.index(uri)))


def choose(free_mb: dict[str, int], memory_mb: int) -> str:
    """The host with the most free memory that fits the VM (ties: the first listed)."""
    return rank(free_mb, memory_mb)[0]
