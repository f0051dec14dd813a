"""Under CI (CI=true), a skip is a failure: a missing prerequisite (Chromium, QEMU, the lab
images, root, a PostgreSQL server) must fail the run with its reason, not shrink it silently.
Loaded by tests/conftest.py; outside CI, skips stay skips (and `-rs` prints their reasons)."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _reason(longrepr) -> str:
    # A skip's longrepr is (file, line, "Skipped: reason").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} would have been skipped, and CI=true allows no skip: "
                           f"{_reason(report.longrepr)}")
