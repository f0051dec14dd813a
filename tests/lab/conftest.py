"""Lab tests: real VMs under QEMU and legacy hosts in network namespaces. They need root, QEMU
and the lab images (`deploy/local/test.sh` builds them); without those they are skipped with
the reason, never passed, and under CI=true (`.ci/run`) they fail with it (tests/ci_skips.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from shared.settings import Settings


def lab_missing(settings: Settings, qemu: bool = True) -> str | None:
    """Why the lab (with its VMs, or only its legacy hosts) cannot run here, or None."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, taps, chroots)"
    if qemu and shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (deploy/local/lib.sh ensure_lab installs it)"
    if not (Path(settings.images_dir) / ".complete").exists():
        return f"no lab images in {settings.images_dir} (run deploy/lab/build-images.sh)"
    return None


@pytest.fixture
def lab_settings(settings: Settings) -> Settings:
    """The test's settings with the qemu provider; skips when the lab cannot run here."""
    lab = settings.model_copy(update={"provider": "qemu"})
    reason = lab_missing(lab)
    if reason:
        pytest.skip(reason)
    return lab
