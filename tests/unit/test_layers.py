"""The layer rules in pyproject.toml's [tool.importlinter], checked by import-linter on the
code as it is in this checkout (lint-imports puts its working directory first on sys.path)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

CONTRACTS = [
    "services-independent",
    "handlers-without-drivers",
    "shared-below-services",
]


@pytest.mark.parametrize("contract", CONTRACTS)
def test_layer_contract_is_kept(contract: str):
    """No import in shared, services, cli or lab breaks this import-linter contract."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the test extra (pip install -e '.[test]')")
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", "--contract", contract],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"lint-imports --contract {contract}:\n{result.stdout}{result.stderr}"
