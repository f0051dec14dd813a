"""Stopping the whole lab: every VM, network and filter the libvirt provider made, and the legacy
hosts. Safe to run at any time, any number of times."""

from __future__ import annotations

from shared.settings import Settings
from shared.tls import gateway_scheme


async def down(settings: Settings) -> None:
    from lab import legacy
    from shared.providers import libvirt

    await libvirt.teardown(settings)
    await legacy.down(settings)


def lab_settings(settings: Settings) -> Settings:
    """The lab's VMs on libvirt: the gateway listens on every address (the VMs reach it at the
    migration network's host address), and group networks route only to the legacy site."""
    from lab.legacy.config import UPLINK

    return settings.model_copy(update={"provider": "libvirt", "gateway_host": "0.0.0.0",
                                       "libvirt_group_forward_dev": UPLINK})


def vm_gateway_url(settings: Settings) -> str:
    """The migration service as the lab's VMs reach it, on both their networks."""
    from ipaddress import ip_network

    host = next(ip_network(settings.libvirt_migration_subnet).hosts())
    return f"{gateway_scheme(settings)}://{host}:{settings.gateway_port}"
