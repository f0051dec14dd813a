"""Legacy hosts' systems: which one a root is (probe), and what a rebuilt root of that system
needs written for its network and first boot (root_files)."""

from shared.systems.model import (
    BASE_IMAGE_SYSTEM, Family, HostSystem, Init, Initramfs, NetworkStack, UnknownSystem,
)
from shared.systems.probe import SCRIPT as PROBE_SCRIPT
from shared.systems.probe import read_system
from shared.systems.root_files import NetworkSettings, RootChanges, root_changes

__all__ = [
    "BASE_IMAGE_SYSTEM", "Family", "HostSystem", "Init", "Initramfs", "NetworkSettings",
    "NetworkStack", "PROBE_SCRIPT", "RootChanges", "UnknownSystem", "read_system",
    "root_changes",
]
