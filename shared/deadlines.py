"""Deadlines: a VM silent in a phase longer than that phase allows is failed, with the reason
(`no word for 600 s in configuring, last step: unpacking /data`), through the journey's
ordinary failure: the coordinator then halts its group as for any failure.

Silence is time since the VM's last word (any request it made with its token: a state, a log
line, a heartbeat, a download; the gateway records it with the token check) or since its last
change of state, whichever is later; in archiving, the archiver's progress counts as its word.
The deadlines come from the settings (FERRY_DEADLINE_<PHASE>_S), or from the group's plan
(`deadlines:`). The coordinator's process looks every `deadline_interval_s` (`Watchdog`,
started by services/runtime.py); each look is one transaction over at most `deadline_batch`
VMs, row-locked with SKIP LOCKED, so two replicas never fail one VM twice, and a VM that
reported meanwhile (its row then held, or its state moved on) is not failed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from shared import journey, rules
from shared.logging import get_logger
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


class Watchdog:
    """Looks at start, then every `deadline_interval_s`, until stopped. A failed look (the
    database away) is logged and tried again at the next."""

    def __init__(self, store: Store, settings: Settings):
        self.store = store
        self.settings = settings
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="deadline-watchdog")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def abandon(self) -> None:
        """Stop at once (a kill): a look cut off is rolled back by the database."""
        if self._task:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            try:
                await fail_the_silent(self.store, self.settings)
            except Exception as exc:  # noqa: BLE001 - the next look tries again
                log.warning("deadline look failed", error=str(exc))
            await asyncio.sleep(self.settings.deadline_interval_s)
