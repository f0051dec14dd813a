"""The web UI's lists of group statuses and VM states (its status filter, its fleet overview's
order) are shared/states.py's, so a status added there is not silently missing from the UI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.states import GroupStatus, VmState

APP_JS = Path(__file__).resolve().parents[2] / "services" / "gateway" / "ui" / "app.js"


def js_list(name: str) -> list[str]:
    found = re.search(rf"const {name} = \[(.*?)\];", APP_JS.read_text(), re.S)
    assert found, f"app.js has no {name}"
    return re.findall(r'"([a-z_]+)"', found.group(1))


@pytest.mark.parametrize("name, enum", [("GROUP_STATUSES", GroupStatus), ("VM_STATES", VmState)])
def test_the_ui_knows_every_status_and_only_those(name, enum):
    assert js_list(name) == [s.value for s in enum]
