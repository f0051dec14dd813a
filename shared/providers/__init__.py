"""Providers: the infrastructure VMs are created on."""

from __future__ import annotations

from typing import TYPE_CHECKING

# Imported for annotations only: QEMU runs `python -m shared.providers.guestfwd` once per guest
# connection, and importing pydantic here would add ~0.3 s to each of them.
if TYPE_CHECKING:
    from shared.providers.base import Provider
    from shared.settings import Settings


def make_provider(settings: Settings) -> Provider:
    """The provider a setting names. The fake is a test double and cannot be chosen here."""
    if settings.provider == "sim":
        from shared.providers.sim import SimProvider

        return SimProvider(settings.state_dir / "sim")
    if settings.provider == "qemu":
        from shared.providers.qemu import QemuProvider

        return QemuProvider(settings)
    raise ValueError(
        f"FERRY_PROVIDER={settings.provider!r}: unknown provider (available: sim, qemu)"
    )
