"""Providers: the infrastructure VMs are created on, chosen by name from a registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

# Imported for annotations only, and every provider is imported by its factory when built: the
# sim's VM processes import this package, and importing pydantic here would slow each of them.
if TYPE_CHECKING:
    from shared.providers.base import Provider
    from shared.settings import Settings

Factory = Callable[["Settings"], "Provider"]


class Registration(NamedTuple):  # not a dataclass: `dataclasses` imports `inspect` (~8 ms)
    """A provider as the registry knows it, without importing it."""

    name: str
    build: Factory
    # What it does beyond the Protocol's promises (tests/providers checks both ways):
    # addresses() gives a VM on its group's network its planned address; else always [].
    reports_addresses: bool = False
    # set_outbound() keeps each group's outbound open or blocked (libvirt: a network filter
    # on its VMs' interfaces; the fake: in memory); else it is accepted and ignored.
    blocks_outbound: bool = False
    # Built by tests only; no setting can choose it.
    test_double: bool = False


_REGISTRY: dict[str, Registration] = {}


def register(name: str, *, reports_addresses: bool = False, blocks_outbound: bool = False,
             test_double: bool = False) -> Callable[[Factory], Factory]:
    """Register the decorated factory (Settings -> provider) under `name`."""

    def add(build: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"provider {name!r} is registered twice")
        _REGISTRY[name] = Registration(name, build, reports_addresses, blocks_outbound,
                                       test_double)
        return build

    return add


def registration(name: str) -> Registration:
    """Any registered provider, the test double included (tests build the fake this way)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown provider {name!r} (registered: {', '.join(_REGISTRY)})") from None


def registrations() -> list[Registration]:
    return list(_REGISTRY.values())


def choosable() -> list[str]:
    """The providers a setting (FERRY_PROVIDER) may name."""
    return [r.name for r in _REGISTRY.values() if not r.test_double]


def make_provider(settings: Settings) -> Provider:
    """The provider a setting names. The fake is a test double and cannot be chosen here."""
    found = _REGISTRY.get(settings.provider)
    available = ", ".join(choosable())
    if found is None:
        raise ValueError(f"FERRY_PROVIDER={settings.provider!r}: unknown provider "
                         f"(available: {available})")
    if found.test_double:
        raise ValueError(f"FERRY_PROVIDER={settings.provider!r}: a test double for unit tests, "
                         f"never chosen by a setting (available: {available})")
    return found.build(settings)


@register("sim")
def _sim(settings: Settings) -> Provider:
    from shared.providers.sim import SimProvider

    from shared.tls import trusted_ca

    return SimProvider(settings.state_dir / "sim", trusted_ca(settings))


@register("libvirt", reports_addresses=True, blocks_outbound=True)
def _libvirt(settings: Settings) -> Provider:
    from shared.providers.libvirt import LibvirtProvider

    return LibvirtProvider(settings)


@register("fake", blocks_outbound=True, test_double=True)
def _fake(settings: Settings) -> Provider:
    from shared.providers.fake import FakeProvider

    return FakeProvider()
