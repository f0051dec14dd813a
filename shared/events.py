"""The event envelope and the typed payload of every event type: the only wire format.

Events are facts (past tense). `archive.requested`, `cutover.requested`,
`group.cancel_requested` and `group.finalize_requested` are commands.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: ClassVar[str]


class GroupSubmitted(Payload):
    type: ClassVar[str] = "group.submitted"
    group_name: str
    vm_count: int


class ArchiveRequested(Payload):
    type: ClassVar[str] = "archive.requested"


class ArchiveItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    kind: str  # "path" | "database"
    source: str
    sha256: str
    size: int
    # Complete archives with something to look at (tar: files changed while read).
    warnings: list[str] = []


class ArchiveReady(Payload):
    type: ClassVar[str] = "archive.ready"
    archives: list[ArchiveItem]


class GroupArchived(Payload):
    type: ClassVar[str] = "group.archived"


class VmCreated(Payload):
    type: ClassVar[str] = "vm.created"
    provider: str
    provider_ref: str


class VmStateChanged(Payload):
    type: ClassVar[str] = "vm.state_changed"
    from_state: str
    to_state: str
    step: str | None = None


class VmFailed(Payload):
    type: ClassVar[str] = "vm.failed"
    failed_from: str
    step: str | None = None
    message: str | None = None


class VmMessageLogged(Payload):
    """A log line of a VM (message_update, a state report's message, an archive warning),
    stored; announced so that the live feed streams it."""

    type: ClassVar[str] = "vm.message_logged"
    message_id: int
    level: str
    text: str


class VmConfigured(Payload):
    type: ClassVar[str] = "vm.configured"


class VmProvisioned(Payload):
    type: ClassVar[str] = "vm.provisioned"


class DbMasterComplete(Payload):
    type: ClassVar[str] = "db.master.complete"
    log_file: str | None = None
    log_pos: int | None = None
    lsn: str | None = None  # PostgreSQL's WAL position (a master may run both engines)


class GroupReady(Payload):
    type: ClassVar[str] = "group.ready"


class GroupHalted(Payload):
    type: ClassVar[str] = "group.halted"
    vm_id: str
    vm_name: str
    step: str | None = None
    reason: str


class GroupResumed(Payload):
    type: ClassVar[str] = "group.resumed"


class CutoverRequested(Payload):
    type: ClassVar[str] = "cutover.requested"
    run_id: str
    prepare: bool = False
    # A rehearsal: this step fails after doing its work, so the rollback is exercised for real.
    rehearse_failure_at: str | None = None
    database_mode: str | None = None  # None: the plan's cutover.mode


class CutoverStepCompleted(Payload):
    type: ClassVar[str] = "cutover.step_completed"
    run_id: str
    step: str
    seconds: float


class CutoverCompleted(Payload):
    type: ClassVar[str] = "cutover.completed"
    run_id: str
    # Measured from outside by the prober (None: nothing to probe, or a prepared run).
    downtime_s: float | None = None
    prepare: bool = False
    probe: str | None = None  # the prober's summary: last old answer, first new, failures


class CutoverFailed(Payload):
    type: ClassVar[str] = "cutover.failed"
    run_id: str
    reason: str


class GroupCancelRequested(Payload):
    """An operator's command: delete the group's new VMs, remove its archives, close it."""

    type: ClassVar[str] = "group.cancel_requested"


class GroupCancelled(Payload):
    type: ClassVar[str] = "group.cancelled"
    vms_deleted: list[str]  # the VMs the provider had made, by name
    archives_removed: int


class GroupCancelFailed(Payload):
    """The cancel stopped short (the provider refused a deletion): the group stays cancelling
    until the operator asks again."""

    type: ClassVar[str] = "group.cancel_failed"
    reason: str


class GroupFinalizeRequested(Payload):
    """An operator's command, after a cutover: close the group, keeping or removing the
    forwarding of the old public addresses on the legacy hosts."""

    type: ClassVar[str] = "group.finalize_requested"
    forwarding: Literal["keep", "remove"]


class GroupFinalized(Payload):
    type: ClassVar[str] = "group.finalized"
    forwarding: Literal["kept", "removed"]
    archives_removed: int


class GroupFinalizeFailed(Payload):
    """The finalize stopped short (a legacy host could not be reached): the group stays
    finalizing until the operator asks again."""

    type: ClassVar[str] = "group.finalize_failed"
    reason: str


PAYLOADS: dict[str, type[Payload]] = {
    cls.type: cls
    for cls in (
        GroupSubmitted, ArchiveRequested, ArchiveReady, GroupArchived, VmCreated,
        VmStateChanged, VmFailed, VmMessageLogged, VmConfigured, VmProvisioned, DbMasterComplete,
        GroupReady, GroupHalted, GroupResumed, CutoverRequested, CutoverStepCompleted,
        CutoverCompleted, CutoverFailed, GroupCancelRequested, GroupCancelled,
        GroupCancelFailed, GroupFinalizeRequested, GroupFinalized, GroupFinalizeFailed,
    )
}


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    version: int = 1
    occurred_at: datetime = Field(default_factory=_now)
    group_id: uuid.UUID
    vm_id: uuid.UUID | None = None
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None = None
    payload: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def new(
        cls,
        payload: Payload,
        *,
        group_id: uuid.UUID,
        vm_id: uuid.UUID | None = None,
        cause: Envelope | None = None,
    ) -> Envelope:
        """A new event; when caused by another, it carries on that event's correlation id."""
        return cls(
            type=payload.type,
            group_id=group_id,
            vm_id=vm_id,
            correlation_id=cause.correlation_id if cause else group_id,
            causation_id=cause.id if cause else None,
            payload=payload.model_dump(mode="json"),
        )

    def typed(self) -> Payload:
        """The payload validated against its type's model (raises on unknown types)."""
        return PAYLOADS[self.type].model_validate(self.payload)
