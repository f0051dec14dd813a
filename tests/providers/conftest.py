"""The providers under contract: fake and sim in every run, libvirt with the lab (root, libvirtd).

Where the VMs look for the gateway, a silent one notes their requests and never answers: the
suite checks what a provider itself promises (a VM booted from the network with its kernel
arguments runs and asks for the gateway), not what the VMs go on to do (the journeys do)."""

from __future__ import annotations

import os
import signal

import pytest

from shared.providers import registration
from shared.settings import Settings
from tests.lab.conftest import libvirt_test_settings
from tests.providers.infra import (
    FakeInfra, Infra, LibvirtInfra, SilentGateway, SimInfra, live_processes,
)

PROVIDERS = ["fake", "sim", pytest.param("libvirt", marks=pytest.mark.lab)]


@pytest.fixture
async def gateway(settings: Settings):
    """The silent gateway at the settings' gateway port, on every address: the sim's VMs call
    it on loopback, libvirt's at the migration network's host address."""
    silent = SilentGateway("0.0.0.0", settings.gateway_port)
    await silent.start()
    yield silent
    await silent.stop()


@pytest.fixture(params=PROVIDERS)
def infra(request: pytest.FixtureRequest) -> Infra:
    """A provider under contract, with a view of its infrastructure (fake and sim built from
    their registrations, libvirt with TCG domains)."""
    return request.getfixturevalue(f"{request.param}_infra")


@pytest.fixture
async def fake_infra(settings: Settings):
    made = registration("fake").build(settings)
    yield FakeInfra(registration("fake"), made)
    await made.close()


@pytest.fixture
async def sim_infra(settings: Settings):
    made = registration("sim").build(settings)
    yield SimInfra(registration("sim"), made)
    await made.close()
    # A failed test may leave simulated VMs retrying the silent gateway for minutes.
    for pid in live_processes("shared.providers.simvm", str(made.folder)):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def libvirt_infra(settings: Settings):
    from shared.providers.libvirt import teardown

    settings = libvirt_test_settings(settings)
    made = registration("libvirt").build(settings)
    yield LibvirtInfra(registration("libvirt"), made, settings)
    await made.close()
    await teardown(settings)  # what a failed test left: domains, volumes, networks, filters
