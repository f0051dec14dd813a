"""The provider registry: which names a setting may choose, and what importing it costs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.providers import choosable, make_provider, registration, registrations
from shared.providers.fake import FakeProvider
from shared.providers.sim import SimProvider
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state")


def test_a_setting_chooses_the_real_providers_by_name(settings):
    """FERRY_PROVIDER=sim and =libvirt build those providers, and only real ones are choosable."""
    assert choosable() == ["sim", "libvirt"]
    sim = make_provider(settings.model_copy(update={"provider": "sim"}))
    assert isinstance(sim, SimProvider) and sim.folder == settings.state_dir / "sim"
    libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed")
    assert libvirt and make_provider(settings).name == "libvirt"  # the default


def test_the_fake_is_refused_by_a_setting(settings):
    """FERRY_PROVIDER=fake is refused with a message naming the providers that can be chosen."""
    with pytest.raises(ValueError, match=r"'fake': a test double .*\(available: sim, libvirt\)"):
        make_provider(settings.model_copy(update={"provider": "fake"}))


def test_an_unknown_provider_names_the_available_ones(settings):
    """An unknown FERRY_PROVIDER says which providers exist."""
    with pytest.raises(ValueError, match=r"'libvirtt': unknown provider \(available: sim, libvirt\)"):
        make_provider(settings.model_copy(update={"provider": "libvirtt"}))


def test_tests_build_the_fake_through_its_registration(settings):
    """The fake is registered (as a test double), so tests can build it by name."""
    fake = registration("fake")
    assert fake.test_double and isinstance(fake.build(settings), FakeProvider)
    assert {r.name for r in registrations()} == {"fake", "sim", "libvirt"}
    with pytest.raises(ValueError, match="registered: sim, libvirt, fake"):
        registration("nope")


def test_names_are_registered_once():
    """Registering a second factory under a taken name is an error, not a silent replacement."""
    from shared.providers import register

    with pytest.raises(ValueError, match="'sim' is registered twice"):
        register("sim")(lambda settings: FakeProvider())
    assert not registration("sim").test_double


def test_importing_the_registry_imports_no_provider_and_no_pydantic():
    """`import shared.providers` stays light: guestfwd, run once per guest connection, pays it."""
    code = ("import sys, shared.providers; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'shared')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['shared', 'shared.providers']"
