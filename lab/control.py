"""Stopping the whole lab: every VM and group network the qemu provider made, and the legacy
hosts. Safe to run at any time, any number of times."""

from __future__ import annotations

from shared.settings import Settings


async def down(settings: Settings) -> None:
    from lab import legacy
    from shared.providers import qemu

    await qemu.teardown(settings)
    await legacy.down(settings)
