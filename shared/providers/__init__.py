"""Providers: the infrastructure VMs are created on."""

from __future__ import annotations

from shared.providers.base import Provider
from shared.settings import Settings


def make_provider(settings: Settings) -> Provider:
    """The provider a setting names. The fake is a test double and cannot be chosen here."""
    if settings.provider == "sim":
        from shared.providers.sim import SimProvider

        return SimProvider(settings.state_dir / "sim")
    raise ValueError(
        f"FERRY_PROVIDER={settings.provider!r}: unknown provider (available: sim)"
    )
