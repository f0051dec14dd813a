"""Deadlines without I/O: the phases that have one (the same in the states, the settings and
the plan), a plan's deadlines validated at the field, and the reason a silent VM fails with."""

from __future__ import annotations

import typing

import pytest

from shared import rules
from shared.plan import DeadlinePhase
from shared.settings import Settings
from shared.states import DEADLINE_PHASES, RESTING, TERMINAL, VmState
from tests.unit.test_plan import example, problems


def test_the_phases_with_a_deadline_are_the_same_in_states_settings_and_plan():
    """Every phase the watchdog watches has a setting and may be set by a plan; none is a
    resting, terminal or failed state (those wait for a service, a person, or nothing)."""
    names = [str(p) for p in DEADLINE_PHASES]
    assert list(typing.get_args(DeadlinePhase)) == names
    assert list(Settings().deadlines) == names
    assert not set(DEADLINE_PHASES) & (RESTING | TERMINAL | {VmState.FAILED, VmState.HALTED,
                                                              VmState.READY})


def test_each_deadline_is_a_setting_of_its_own(monkeypatch):
    """FERRY_DEADLINE_CONFIGURING_S sets the configuring one and no other."""
    monkeypatch.setenv("FERRY_DEADLINE_CONFIGURING_S", "120")
    deadlines = Settings().deadlines
    assert deadlines["configuring"] == 120
    assert deadlines["loading"] == Settings.model_fields["deadline_loading_s"].default


def test_a_plans_deadlines_load_and_round_trip():
    plan = example()
    plan["deadlines"] = {"configuring": 120, "loading": 0}
    assert problems(plan) == []


@pytest.mark.parametrize("deadlines, expected", [
    ({"configured": 60}, "deadlines.configured: this name must be one of: archiving, creating, "
                         "configuring, provisioning, provisioned, loading, replicating"),
    ({"configuring": -1}, "deadlines.configuring: must be at least 0"),
    ({"configuring": True}, "deadlines.configuring: must be a number, not true/false"),
    ({"configuring": "soon"}, "deadlines.configuring: "),
    ({"configuring": 8 * 24 * 3600}, "deadlines.configuring: must be at most 604800"),
])
def test_a_wrong_deadline_is_refused_at_its_field(deadlines, expected):
    plan = example()
    plan["deadlines"] = deadlines
    found = problems(plan)
    assert len(found) == 1 and expected in found[0], found


def test_the_reason_names_the_deadline_the_phase_and_the_last_step():
    assert rules.silence_reason(600.0, VmState.CONFIGURING, "unpacking /data") == \
        "no word for 600 s in configuring, last step: unpacking /data"
    assert rules.silence_reason(90.5, VmState.PROVISIONING, None) == \
        "no word for 90.5 s in provisioning, last step: none"
