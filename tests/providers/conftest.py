"""The providers under contract: fake and sim in every run, qemu with the lab (root, images).

Where the VMs look for the gateway, a silent one notes their requests and never answers: the
suite checks what a provider itself promises (a VM booted from the network with its kernel
arguments runs and asks for the gateway), not what the VMs go on to do (the journeys do)."""

from __future__ import annotations

import os
import signal

import pytest

from shared.providers import registration
from shared.settings import Settings
from tests.lab.conftest import lab_missing
from tests.lab.test_qemu_provider import provider as qemu_provider  # noqa: F401 (a fixture)
from tests.providers.infra import (
    FakeInfra, Infra, QemuInfra, SilentGateway, SimInfra, live_processes,
)

PROVIDERS = ["fake", "sim", pytest.param("qemu", marks=pytest.mark.lab)]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test's settings; for qemu TCG, as the suite has nothing to gain from a KVM probe."""
    return settings.model_copy(update={"qemu_accel": "tcg"})


@pytest.fixture
async def gateway(settings: Settings):
    """The silent gateway at the settings' gateway address (where qemu's guestfwd and relay go)."""
    silent = SilentGateway("127.0.0.1", settings.gateway_port)
    await silent.start()
    yield silent
    await silent.stop()


@pytest.fixture(params=PROVIDERS)
def infra(request: pytest.FixtureRequest) -> Infra:
    """A provider under contract, with a view of its infrastructure (fake and sim built from
    their registrations, qemu by tests/lab's fixture)."""
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
def qemu_infra(settings: Settings, request: pytest.FixtureRequest):
    reason = lab_missing(settings)
    if reason:
        pytest.skip(reason)
    # tests/lab's fixture: QemuProvider(settings), closed and torn down (every QEMU, relay and
    # namespace under the test's lab_dir) afterwards.
    return QemuInfra(registration("qemu"), request.getfixturevalue("qemu_provider"), settings)
