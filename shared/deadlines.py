"""Deadlines: a VM silent in a phase longer than that phase allows is failed, with the reason
(`no word for 600 s in configuring, last step: unpacking /data`), through the journey's
ordinary failure: the coordinator then halts its group as for any failure.

Silence is time since the VM's last word (any request it made with its token: a state, a log
line, a heartbeat, a download; the gateway records it with the token check) or since its last
change of state, whichever is later; in archiving, the archiver's progress counts as its word.
The deadlines come from the settings (FERRY_DEADLINE_<PHASE>_S), or from the group's plan
(`deadlines:`). The coordinator's process looks every `deadline_interval_s` (`watchdog`,
started by services/runtime.py); each look is one transaction over at most `deadline_batch`
VMs, row-locked with SKIP LOCKED, so two replicas never fail one VM twice, and a VM that
reported meanwhile (its row then held, or its state moved on) is not failed.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared import journey, rules
from shared.logging import get_logger
from shared.periodic import Every
from shared.settings import Settings
from shared.states import VmState
from shared.store.session import Store

log = get_logger(__name__)


@dataclass(frozen=True)
class Failed:
    vm: str
    group_id: str
    reason: str
    silent_s: float


async def fail_the_silent(store: Store, settings: Settings) -> list[Failed]:
    """One look: fail every VM silent past its deadline (at most deadline_batch); which."""
    failed = []
    async with store.transaction() as tx:
        for overdue in await tx.deadlines.overdue(settings.deadlines, settings.deadline_batch):
            vm = overdue.vm
            reason = rules.silence_reason(overdue.deadline_s, vm.state,
                                          vm.last_step or vm.step)
            await journey.transition(tx, vm, VmState.FAILED, step=vm.step, message=reason)
            await journey.add_message(tx, vm.id, "error", reason)
            failed.append(Failed(vm.name, str(vm.group_id), reason, overdue.silent_s))
    for one in failed:
        log.warning("vm failed its deadline", vm=one.vm, group_id=one.group_id,
                    reason=one.reason, silent_s=round(one.silent_s, 1))
    return failed


def watchdog(store: Store, settings: Settings) -> Every:
    """Looks at start, then every `deadline_interval_s`, until stopped."""
    return Every("deadline-watchdog", settings.deadline_interval_s,
                 lambda: fail_the_silent(store, settings))
