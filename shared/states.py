"""The VM and group state machines: every transition is checked here and nowhere else."""

from __future__ import annotations

from enum import StrEnum


class VmState(StrEnum):
    PLANNED = "planned"
    ARCHIVING = "archiving"
    ARCHIVED = "archived"
    CREATING = "creating"
    CREATED = "created"
    CONFIGURING = "configuring"
    CONFIGURED = "configured"
    PROVISIONING = "provisioning"
    PROVISIONED = "provisioned"
    LOADING = "loading"
    REPLICATING = "replicating"
    READY = "ready"
    CUTTING_OVER = "cutting_over"
    LIVE = "live"
    FAILED = "failed"
    HALTED = "halted"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"  # its group was cancelled: the VM was deleted, if it had been made


class GroupStatus(StrEnum):
    ACTIVE = "active"
    HALTED = "halted"
    READY = "ready"
    CUTTING_OVER = "cutting_over"
    LIVE = "live"
    # The end of a migration: cancelled before its cutover, finalized after it. The -ing states
    # last while a service does the work (deleting VMs, removing the forwarding); a failure
    # there leaves the group in them, with the reason, until the operator asks again.
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    FINALIZING = "finalizing"
    FINALIZED = "finalized"


S = VmState

# The forward journey. FAILED, HALTED and CANCELLED are reached from elsewhere and are handled
# separately below.
_FORWARD: dict[VmState, frozenset[VmState]] = {
    S.PLANNED: frozenset({S.ARCHIVING}),
    S.ARCHIVING: frozenset({S.ARCHIVED}),
    S.ARCHIVED: frozenset({S.CREATING}),
    S.CREATING: frozenset({S.CREATED}),
    S.CREATED: frozenset({S.CONFIGURING}),
    S.CONFIGURING: frozenset({S.CONFIGURED}),
    S.CONFIGURED: frozenset({S.PROVISIONING}),
    S.PROVISIONING: frozenset({S.PROVISIONED}),
    S.PROVISIONED: frozenset({S.LOADING, S.READY}),
    S.LOADING: frozenset({S.REPLICATING, S.READY}),
    S.REPLICATING: frozenset({S.READY}),
    S.READY: frozenset({S.CUTTING_OVER}),
    S.CUTTING_OVER: frozenset({S.LIVE, S.ROLLED_BACK}),
    S.ROLLED_BACK: frozenset({S.CUTTING_OVER}),
}

TERMINAL = frozenset({S.LIVE, S.CANCELLED})

# A cancel ends every VM of its group except those the cutover has reached: a cut-over group is
# finalized, never cancelled.
NOT_CANCELLABLE = frozenset({S.CUTTING_OVER, S.LIVE, S.CANCELLED})

# States where a VM waits for a service to move it on (a provisioned database VM goes on by
# itself, so PROVISIONED is not one). A halted group holds its VMs here:
# a VM arriving at one of these while its group is halted is parked as HALTED instead.
RESTING = frozenset({S.PLANNED, S.ARCHIVED, S.CREATED, S.CONFIGURED})

# The phases with a deadline (shared/deadlines.py): where Ferryman waits for the VM to speak,
# or for its own work on it. Configuring starts when the VM is booted from the network (step
# pxe-boot), so its deadline covers the wait for the VM's first word. The resting states wait
# for a service (or, with the external provider, a person) and ready for the operator.
DEADLINE_PHASES = (S.ARCHIVING, S.CREATING, S.CONFIGURING, S.PROVISIONING, S.PROVISIONED,
                   S.LOADING, S.REPLICATING)

# Where an operator's retry sends a failed VM: the resting state before the phase that failed,
# so that phase runs again.
RETRY_FROM: dict[VmState, VmState] = {
    S.PLANNED: S.PLANNED,
    S.ARCHIVING: S.PLANNED,
    S.ARCHIVED: S.ARCHIVED,
    S.CREATING: S.ARCHIVED,
    S.CREATED: S.CREATED,
    S.CONFIGURING: S.CREATED,
    S.CONFIGURED: S.CONFIGURED,
    S.PROVISIONING: S.CONFIGURED,
    S.PROVISIONED: S.CONFIGURED,
    S.LOADING: S.CONFIGURED,
    S.REPLICATING: S.CONFIGURED,
}

# States a VM may report itself through the gateway (the script and local.start).
VM_REPORTABLE = frozenset(
    {S.CONFIGURING, S.CONFIGURED, S.PROVISIONED, S.LOADING, S.REPLICATING, S.READY, S.FAILED}
)


class IllegalTransition(Exception):
    def __init__(self, current: VmState | GroupStatus, target: VmState | GroupStatus):
        super().__init__(f"illegal transition {current} -> {target}")
        self.current = current
        self.target = target


def check(current: VmState, target: VmState) -> None:
    """Raise IllegalTransition unless `current -> target` is a step of the journey."""
    if target == S.FAILED:
        if current in TERMINAL or current == S.FAILED:
            raise IllegalTransition(current, target)
        return
    if target == S.HALTED:
        if current not in RESTING:
            raise IllegalTransition(current, target)
        return
    if target == S.CANCELLED:
        if current in NOT_CANCELLABLE:
            raise IllegalTransition(current, target)
        return
    if target not in _FORWARD.get(current, frozenset()):
        raise IllegalTransition(current, target)


G = GroupStatus

# A group is active while its VMs travel; halted when one failed (until an operator resumes);
# ready when all are; cutting over during a cutover, which ends live or back at ready (rolled
# back). A VM may fail while its group is ready or cutting over, which halts it there too.
# Before its cutover a group may be cancelled; once live it is finalized. Both end it for good.
_GROUP_MOVES: dict[GroupStatus, frozenset[GroupStatus]] = {
    G.ACTIVE: frozenset({G.HALTED, G.READY, G.CANCELLING}),
    G.HALTED: frozenset({G.ACTIVE, G.CANCELLING}),
    G.READY: frozenset({G.HALTED, G.CUTTING_OVER, G.CANCELLING}),
    G.CUTTING_OVER: frozenset({G.HALTED, G.LIVE, G.READY}),
    G.LIVE: frozenset({G.FINALIZING}),
    G.CANCELLING: frozenset({G.CANCELLED}),
    G.CANCELLED: frozenset(),
    G.FINALIZING: frozenset({G.FINALIZED}),
    G.FINALIZED: frozenset(),
}

# A group on its way to its end, or there: nothing moves its VMs on any more.
ENDING = frozenset({G.CANCELLING, G.CANCELLED, G.FINALIZING, G.FINALIZED})

# Groups whose name a new submission may take: their migration is over (the partial unique
# index groups_active_name in the store's migrations says the same).
NAME_RELEASED = frozenset({G.LIVE, G.FINALIZING, G.FINALIZED, G.CANCELLED})


def group_may(current: GroupStatus, target: GroupStatus) -> bool:
    return target in _GROUP_MOVES[current]


def check_group(current: GroupStatus, target: GroupStatus) -> None:
    """Raise IllegalTransition unless a group may go from `current` to `target`."""
    if not group_may(current, target):
        raise IllegalTransition(current, target)
