"""The VM and group state machines."""

import pytest

from shared.states import (RESTING, RETRY_FROM, GroupStatus, IllegalTransition, VmState, check,
                           check_group)

S = VmState

JOURNEY = [S.PLANNED, S.ARCHIVING, S.ARCHIVED, S.CREATING, S.CREATED, S.CONFIGURING,
           S.CONFIGURED, S.PROVISIONING, S.PROVISIONED, S.LOADING, S.REPLICATING, S.READY,
           S.CUTTING_OVER, S.LIVE]


def test_the_whole_journey_is_legal_step_by_step():
    """Each state of a replica's journey may follow the one before it."""
    for current, target in zip(JOURNEY, JOURNEY[1:]):
        check(current, target)


@pytest.mark.parametrize("current,target", [
    (S.PLANNED, S.CREATED), (S.ARCHIVED, S.CONFIGURED), (S.CONFIGURED, S.READY),
    (S.READY, S.PLANNED), (S.LIVE, S.FAILED), (S.FAILED, S.FAILED), (S.CONFIGURING, S.HALTED),
])
def test_skips_and_backward_moves_are_refused(current, target):
    """Skipping a phase, going back, failing a live VM or holding a busy one is refused."""
    with pytest.raises(IllegalTransition):
        check(current, target)


def test_any_unfinished_state_may_fail():
    """A VM may fail from anywhere before it is live."""
    for state in JOURNEY[:-1]:
        check(state, S.FAILED)


def test_only_resting_states_may_be_held():
    """A halt parks VMs that wait for a service, never one in the middle of a phase."""
    for state in S:
        if state in RESTING:
            check(state, S.HALTED)
        elif state != S.HALTED:
            with pytest.raises(IllegalTransition):
                check(state, S.HALTED)


def test_retry_goes_back_to_a_resting_state_before_the_failed_phase():
    """Retrying sends a failed VM to the resting state that starts the phase it failed in."""
    assert RETRY_FROM[S.CONFIGURING] == S.CREATED
    assert RETRY_FROM[S.ARCHIVING] == S.PLANNED
    assert RETRY_FROM[S.LOADING] == S.CONFIGURED
    assert set(RETRY_FROM.values()) <= RESTING


G = GroupStatus


@pytest.mark.parametrize("current,target", [
    (G.ACTIVE, G.HALTED), (G.HALTED, G.ACTIVE), (G.ACTIVE, G.READY), (G.READY, G.CUTTING_OVER),
    (G.CUTTING_OVER, G.LIVE), (G.CUTTING_OVER, G.READY), (G.READY, G.HALTED),
    (G.CUTTING_OVER, G.HALTED),
])
def test_a_group_moves_along_its_journey(current, target):
    """A group halts and resumes, becomes ready, cuts over, and ends live or ready again."""
    check_group(current, target)


@pytest.mark.parametrize("current,target", [
    (G.ACTIVE, G.LIVE), (G.ACTIVE, G.CUTTING_OVER), (G.HALTED, G.READY), (G.HALTED, G.LIVE),
    (G.LIVE, G.READY), (G.LIVE, G.HALTED), (G.READY, G.ACTIVE), (G.READY, G.LIVE),
])
def test_a_group_cannot_skip_or_leave_live(current, target):
    """A group cannot cut over before it is ready, leave a halt other than by resuming, or
    leave live other than by finalizing."""
    with pytest.raises(IllegalTransition):
        check_group(current, target)


def test_a_vm_is_cancelled_from_anywhere_the_cutover_has_not_reached():
    """Every state before the cutover (failed, held and rolled back included) may end
    cancelled; cutting over and live may not, and a cancelled VM goes nowhere, not even to
    failed."""
    for state in S:
        if state in (S.CUTTING_OVER, S.LIVE, S.CANCELLED):
            with pytest.raises(IllegalTransition):
                check(state, S.CANCELLED)
        else:
            check(state, S.CANCELLED)
    for target in S:
        if target != S.CANCELLED:
            with pytest.raises(IllegalTransition):
                check(S.CANCELLED, target)


@pytest.mark.parametrize("current,target", [
    (G.ACTIVE, G.CANCELLING), (G.HALTED, G.CANCELLING), (G.READY, G.CANCELLING),
    (G.CANCELLING, G.CANCELLED), (G.LIVE, G.FINALIZING), (G.FINALIZING, G.FINALIZED),
])
def test_a_group_ends_cancelled_before_its_cutover_or_finalized_after_it(current, target):
    check_group(current, target)


@pytest.mark.parametrize("current,target", [
    (G.CUTTING_OVER, G.CANCELLING), (G.LIVE, G.CANCELLING), (G.READY, G.FINALIZING),
    (G.CANCELLING, G.ACTIVE), (G.CANCELLING, G.HALTED), (G.CANCELLED, G.ACTIVE),
    (G.FINALIZING, G.LIVE), (G.FINALIZED, G.HALTED), (G.ACTIVE, G.CANCELLED),
])
def test_an_ended_group_stays_ended_and_a_cut_over_one_is_never_cancelled(current, target):
    with pytest.raises(IllegalTransition):
        check_group(current, target)

