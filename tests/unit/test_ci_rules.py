"""What CI allows: no skipped test (tests/ci_skips.py), and the chaos suite's PostgreSQL found
where Debian installs it, whatever its version."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.infra import installed_postgres

pytest_plugins = ["pytester"]

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
SKIPPING = """
import pytest

def test_needs_a_browser():
    pytest.skip("Debian's chromium is not installed")

@pytest.mark.skipif(True, reason="no QEMU here")
def test_needs_qemu():
    pass

@pytest.fixture
def lab():
    pytest.skip("no lab images")

def test_needs_the_lab(lab):
    pass

def test_runs():
    pass
"""


def test_under_ci_every_skip_fails_with_its_reason(pytester, monkeypatch):
    """With CI=true a skip in a test, a skipif marker and a skip in a fixture each fail the
    run, and the failure says what was missing."""
    monkeypatch.setenv("CI", "true")
    pytester.makeini(INI)
    pytester.makepyfile(test_skipping=SKIPPING)
    result = pytester.runpytest("-p", "tests.ci_skips")
    outcomes = result.parseoutcomes()
    assert outcomes.get("skipped", 0) == 0 and outcomes["passed"] == 1
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) == 3, outcomes
    for reason in ("Debian's chromium is not installed", "no QEMU here", "no lab images"):
        result.stdout.fnmatch_lines([f"*CI=true allows no skip: {reason}*"])


def test_outside_ci_a_skip_stays_a_skip(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pytester.makeini(INI)
    pytester.makepyfile(test_skipping=SKIPPING)
    result = pytester.runpytest("-p", "tests.ci_skips")
    result.assert_outcomes(passed=1, skipped=3)


def test_the_newest_installed_postgresql_is_found(tmp_path: Path):
    """/usr/lib/postgresql/<major>/bin with an initdb: the highest major wins (numerically,
    not as text), a folder without initdb (the client only) does not count."""
    for major, server in (("9", True), ("13", True), ("16", True), ("17", False)):
        (tmp_path / major / "bin").mkdir(parents=True)
        if server:
            (tmp_path / major / "bin" / "initdb").touch()
    assert installed_postgres(tmp_path) == tmp_path / "16" / "bin"
    assert installed_postgres(tmp_path / "none") is None
