"""Lab tests: real VMs through libvirt (QEMU under it, TCG here) and legacy hosts in network
namespaces. They need root, libvirtd answering, libvirt-python and the lab images
(`deploy/local/test.sh` provides them); without those they are skipped with the reason, never
passed, and under CI=true (`.ci/run`) they fail with it (tests/ci_skips.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lab.control import lab_settings as lab_settings_of
from shared.settings import Settings


def libvirt_missing(settings: Settings) -> str | None:
    """Why the libvirt provider cannot make VMs here, or None."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, libvirt's system instance)"
    if shutil.which("qemu-system-x86_64") is None or shutil.which("virsh") is None:
        return "QEMU or libvirt is not installed (deploy/local/lib.sh ensure_libvirt installs them)"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed (deploy/local/lib.sh installs the libvirt extra)"
    for uri in settings.libvirt_hosts:
        done = subprocess.run(["virsh", "-c", uri, "version"], capture_output=True, text=True)
        if done.returncode != 0:
            return f"libvirt at {uri} does not answer: {done.stderr.strip()[-200:]}"
    return None


def libvirt_test_settings(settings: Settings) -> Settings:
    """`settings` for the libvirt provider with TCG domains (a test gains nothing from a KVM
    probe); skips when libvirt cannot make VMs here."""
    settings = settings.model_copy(update={"provider": "libvirt", "libvirt_domain_type": "qemu"})
    reason = libvirt_missing(settings)
    if reason:
        pytest.skip(reason)
    return settings


def lab_missing(settings: Settings, vms: bool = True) -> str | None:
    """Why the lab (with its VMs, or only its legacy hosts) cannot run here, or None."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, chroots)"
    if vms and (reason := libvirt_missing(settings)):
        return reason
    if not (Path(settings.images_dir) / ".complete").exists():
        return f"no lab images in {settings.images_dir} (run deploy/lab/build-images.sh)"
    return None


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The lab runs as the product does: HTTPS with the installation's CA (made in the test's
    state dir), and the boot listener for iPXE."""
    from tests.conftest import free_port

    return settings.model_copy(update={
        "gateway_plain_http": False, "gateway_boot_port": free_port(),
        "gateway_url": f"https://127.0.0.1:{settings.gateway_port}"})


@pytest.fixture
def lab_settings(settings: Settings) -> Settings:
    """The test's settings for the lab (libvirt); skips when the lab cannot run here."""
    lab = lab_settings_of(settings)
    reason = lab_missing(lab)
    if reason:
        pytest.skip(reason)
    return lab
