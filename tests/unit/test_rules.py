"""The journey's rules (shared/rules.py), called directly: no store, no bus."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from shared import rules
from shared.model import Group, Vm
from shared.rules import Move
from shared.states import GroupStatus, IllegalTransition, VmState

S, G = VmState, GroupStatus


def vm(state: VmState, group: GroupStatus = G.ACTIVE, *, held: VmState | None = None,
       failed_from: VmState | None = None, name: str = "app1") -> Vm:
    return Vm(id=uuid.uuid4(), group_id=uuid.uuid4(), name=name, role="app", position=0,
              state=state, held_state=held, failed_from=failed_from, step=None, message=None,
              provider_ref=None, group_status=group, state_changed_at=datetime.now(timezone.utc))


def group(status: GroupStatus) -> Group:
    return Group(id=uuid.uuid4(), name="shop", status=status, plan={}, halted_vm_id=None,
                 halted_reason=None, archived_at=None, ready_at=None,
                 created_at=datetime.now(timezone.utc))


def test_a_vm_arriving_at_a_resting_state_of_a_halted_group_is_parked_there():
    """While its group is halted, a VM that reaches a state where it would wait for a service
    is held there as HALTED; in an active group it simply moves."""
    assert rules.move(vm(S.CONFIGURING, G.HALTED), S.CONFIGURED) == Move(S.HALTED,
                                                                         held_state=S.CONFIGURED)
    assert rules.move(vm(S.CONFIGURING), S.CONFIGURED) == Move(S.CONFIGURED)
    # A state that is not a resting one goes on even in a halted group (the VM's own work).
    assert rules.move(vm(S.PROVISIONED, G.HALTED), S.LOADING) == Move(S.LOADING)


def test_a_failure_records_where_the_vm_was_or_where_it_was_held():
    """failed_from is the state the VM failed in; for a parked VM, where it was held."""
    assert rules.move(vm(S.CONFIGURING), S.FAILED) == Move(S.FAILED, failed_from=S.CONFIGURING)
    parked = vm(S.HALTED, G.HALTED, held=S.CREATED)
    assert rules.move(parked, S.FAILED) == Move(S.FAILED, failed_from=S.CREATED)


def test_an_illegal_move_is_refused():
    with pytest.raises(IllegalTransition):
        rules.move(vm(S.CREATED), S.READY)


def test_a_repeated_state_is_no_move():
    """The current state, or the state a parked VM is held at, repeats: no transition."""
    assert rules.repeats(vm(S.CONFIGURING), S.CONFIGURING)
    assert rules.repeats(vm(S.HALTED, G.HALTED, held=S.CONFIGURED), S.CONFIGURED)
    assert not rules.repeats(vm(S.CONFIGURING), S.CONFIGURED)


def test_a_halt_parks_only_resting_vms_and_a_resume_releases_them():
    """hold parks a VM waiting for a service; release puts a parked one back."""
    assert rules.hold(vm(S.CREATED)) == Move(S.HALTED, held_state=S.CREATED)
    assert rules.hold(vm(S.CONFIGURING)) is None
    assert rules.release(vm(S.HALTED, held=S.CREATED)) == Move(S.CREATED)
    assert rules.release(vm(S.CONFIGURING)) is None


@pytest.mark.parametrize("failed_from,back", [
    (S.ARCHIVING, S.PLANNED), (S.CREATING, S.ARCHIVED), (S.CONFIGURING, S.CREATED),
    (S.PROVISIONING, S.CONFIGURED), (S.LOADING, S.CONFIGURED), (None, S.PLANNED),
])
def test_a_retry_goes_back_to_the_resting_state_before_the_failed_phase(failed_from, back):
    """Retried, a failed VM returns to where the phase it failed in starts; held there while its
    group is halted."""
    assert rules.retry(vm(S.FAILED, failed_from=failed_from)) == Move(back)
    assert rules.retry(vm(S.FAILED, G.HALTED, failed_from=failed_from)) == \
        Move(S.HALTED, held_state=back)


def test_only_a_failed_vm_can_be_retried():
    with pytest.raises(IllegalTransition) as refused:
        rules.retry(vm(S.CONFIGURING))
    assert refused.value.current == S.CONFIGURING


def test_a_service_moves_a_vm_on_only_in_an_active_group():
    assert rules.may_move_on(vm(S.CREATED), S.CREATED)
    assert not rules.may_move_on(vm(S.CREATED, G.HALTED), S.CREATED)
    assert not rules.may_move_on(vm(S.CONFIGURING), S.CREATED)
    assert not rules.may_move_on(None, S.CREATED)


def test_resume_is_refused_unless_halted_and_no_vm_is_still_failed():
    """Resuming needs a halted group without a failed VM; the reason names what stops it."""
    assert rules.resume_refusal(group(G.ACTIVE), []) == "group shop is active, not halted"
    members = [vm(S.FAILED, G.HALTED, name="db1"), vm(S.HALTED, G.HALTED, held=S.CREATED)]
    assert rules.resume_refusal(group(G.HALTED), members) == \
        "group shop: VM db1 still failed; retry it first"
    assert rules.resume_refusal(group(G.HALTED), members[1:]) is None


def test_a_replica_cannot_report_replicating_before_its_master_is_complete():
    assert rules.replicating_too_early(S.REPLICATING, master_complete=False)
    assert not rules.replicating_too_early(S.REPLICATING, master_complete=True)
    assert not rules.replicating_too_early(S.LOADING, master_complete=False)


def test_a_repeated_report_is_answered_as_the_first_but_never_a_failure():
    assert rules.answered_as_before(S.CONFIGURED, reported_before=True)
    assert not rules.answered_as_before(S.CONFIGURED, reported_before=False)
    assert not rules.answered_as_before(S.FAILED, reported_before=True)


def test_the_group_waits_for_every_vm():
    assert rules.all_ready([vm(S.READY), vm(S.READY)])
    assert not rules.all_ready([vm(S.READY), vm(S.REPLICATING)])
    assert rules.all_archived([vm(S.ARCHIVED), vm(S.HALTED, held=S.ARCHIVED)])
    assert not rules.all_archived([vm(S.ARCHIVED), vm(S.ARCHIVING)])


def test_the_halt_reason_names_the_vm_the_step_and_the_message():
    assert rules.halt_reason("db1", "load-dumps", "disk full") == \
        "db1 failed at load-dumps: disk full"
    assert rules.halt_reason("db1", None, None) == "db1 failed: no message"


@pytest.mark.parametrize("status", [G.ACTIVE, G.HALTED, G.READY, G.CANCELLING])
def test_a_group_not_cut_over_may_be_cancelled(status):
    """Before its cutover a group may be cancelled, pre-ready, halted (its failed VMs too) or
    ready; one cancelling may be asked again."""
    members = [vm(S.FAILED, status), vm(S.ROLLED_BACK, status), vm(S.HALTED, status)]
    assert rules.cancel_refusal(group(status), members, cutover_running=False) is None


def test_a_cancel_is_refused_once_the_cutover_has_begun_with_what_to_do_instead():
    """Live (or a VM live in a group halted during its cutover): finalize instead; a run at
    work (a prepared one leaves the group ready): wait; ended: nothing to do."""
    live = rules.cancel_refusal(group(G.LIVE), [vm(S.LIVE, G.LIVE)], cutover_running=False)
    assert live.startswith("group shop is live (cut over)")
    assert "ferry finalize shop --forwarding keep|remove" in live
    assert rules.cancel_refusal(group(G.HALTED), [vm(S.LIVE, G.HALTED)], False) == live
    running = "group shop has a cutover run in progress: wait for it to end"
    assert rules.cancel_refusal(group(G.CUTTING_OVER), [], False).startswith(running)
    assert rules.cancel_refusal(group(G.READY), [vm(S.READY, G.READY)], True).startswith(running)
    assert rules.cancel_refusal(group(G.CANCELLED), [], False) == \
        "group shop is cancelled already: its VMs and archives are gone"
    assert "nothing to cancel" in rules.cancel_refusal(group(G.FINALIZED), [], False)


def test_only_a_live_group_may_be_finalized_and_the_refusal_says_what_instead():
    assert rules.finalize_refusal(group(G.LIVE)) is None
    assert rules.finalize_refusal(group(G.FINALIZING)) is None
    assert rules.finalize_refusal(group(G.READY)) == (
        "group shop is ready, not live: finalize closes a group after its cutover; cut it "
        "over first (`ferry cutover shop`), or cancel it (`ferry cancel shop`)")
    assert rules.finalize_refusal(group(G.CANCELLED)) == \
        "group shop is cancelled: it never went live, so there is nothing to finalize"
    assert rules.finalize_refusal(group(G.FINALIZED)) == \
        "group shop is finalized already: it is closed"
