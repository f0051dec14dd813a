"""What the gateway accepts and answers, as pydantic models (they feed the OpenAPI document)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.cutover_names import WINDOW_STEPS
from shared.states import VM_REPORTABLE


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


ReportableState = Literal[tuple(sorted(s.value for s in VM_REPORTABLE))]  # type: ignore[valid-type]
CutoverStep = Literal[WINDOW_STEPS]  # type: ignore[valid-type]


class StateReport(StrictModel):
    state: ReportableState
    step: str | None = Field(default=None, max_length=200)
    message: str | None = Field(default=None, max_length=4000)
    detail: dict[str, Any] | None = None


class MessageReport(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    text: str = Field(max_length=8000)
    step: str | None = Field(default=None, max_length=200, description="what the VM is doing "
                             "now (`unpacking /data`), if the line starts a step of its own: "
                             "the last step a missed deadline names")


class Heartbeat(StrictModel):
    step: str | None = Field(default=None, max_length=200, description="what the VM is doing "
                             "now, if it names it: the last step a missed deadline names")


class HostKeysReport(StrictModel):
    keys: list[str] = Field(min_length=1, max_length=8, description="the VM's public SSH host "
                            "keys, one `TYPE BASE64 [COMMENT]` line each (its "
                            "/etc/ssh/ssh_host_*_key.pub), one per key type")


class HostKeysView(BaseModel):
    fingerprints: list[str] = Field(description="`TYPE SHA256:...` of each key stored")


class Accepted(BaseModel):
    ok: bool = True


class VmView(BaseModel):
    id: uuid.UUID
    name: str
    role: str
    state: str
    held_state: str | None
    failed_from: str | None
    step: str | None
    message: str | None
    state_changed_at: datetime
    seconds_in_state: float
    provider: str | None = Field(None, description="the provider that made the VM")
    simulated: bool = Field(False, description="a simulated VM (provider sim), not a machine")
    system: dict[str, Any] | None = Field(
        None, description="the legacy host's system as read from its root when archived "
        "(family, release, name, init, network, interface, renderer, initramfs); null before "
        "that and for a VM without a root archive")
    host: str | None = Field(None, description="the destination host the VM was admitted to "
                             "(the provider's name for it); null before its creation")
    waiting: str | None = Field(
        None, description="why the VM is not moving on while its group is: it waits for a "
        "slot (`waiting for a slot: 20 of 20 in flight on host X`, `waiting for an archive "
        "slot: 4 of 4 on site Y`); null otherwise")
    last_word_at: datetime | None = Field(
        None, description="when the VM last said anything to the gateway (or the archiver "
        "progressed on it): its phase's deadline counts from this or state_changed_at")
    last_step: str | None = Field(None, description="the last step it named")
    host_keys: list[str] = Field(
        default_factory=list, description="the SSH host keys the VM reported (`ssh-ed25519 "
        "SHA256:...`), which the cutover pins: compare with `ssh-keyscan ADDRESS | ssh-keygen "
        "-lf -`; empty until its configuration script reported them")


class MessageView(BaseModel):
    id: int
    vm_id: uuid.UUID
    level: str
    text: str
    at: datetime


class GroupSummary(BaseModel):
    id: uuid.UUID
    name: str
    status: str
    halted_reason: str | None
    created_at: datetime
    vm_count: int
    states: dict[str, int]
    simulated: bool = Field(False, description="some of its VMs are simulated (provider sim), "
                            "not machines")
    closed_at: datetime | None = Field(None, description="when it was cancelled or finalized")
    closing_error: str | None = Field(
        None, description="why its cancel or finalize stopped short; asking again retries it")
    legacy_forwarding: str | None = Field(
        None, description="a finalized group: what became of the forwarding of the old public "
        "addresses on the legacy hosts (kept, removed)")


class GroupDetail(GroupSummary):
    vms: list[VmView]
    messages: list[MessageView]


class Page(BaseModel):
    """What every paged listing says besides its items (groups, VMs, audit lines)."""

    limit: int = Field(description="the most items this page could hold")
    next_cursor: str | None = Field(
        description="pass as ?cursor= (with the same filter) for the next page; null on the "
        "last page")


class CountedPage(Page):
    total: int = Field(description="items that match the filter, over all pages")


class GroupList(CountedPage):
    """One page of groups, newest first."""

    groups: list[GroupSummary]


class VmListed(VmView):
    group_id: uuid.UUID
    group: str = Field(description="the group's name")


class VmList(CountedPage):
    """One page of VMs: newest group first, then by group and plan position."""

    vms: list[VmListed]


class Fleet(BaseModel):
    """Counts across all groups, for the overview."""

    groups: int = Field(description="groups in the store, whatever their status")
    vms: int
    group_statuses: dict[str, int] = Field(description="groups by status")
    vm_states: dict[str, int] = Field(description="VMs by state")


class Submitted(BaseModel):
    id: uuid.UUID
    name: str


class Problem(BaseModel):
    location: str
    message: str
    line: int | None = None
    column: int | None = None


class ErrorBody(BaseModel):
    error: str
    problems: list[Problem] = []


class MasterStatus(BaseModel):
    complete: bool
    master: str
    host: str | None = None
    port: int | None = None
    log_file: str | None = None
    log_pos: int | None = None
    lsn: str | None = None  # PostgreSQL's WAL position


class ReplicationCredentials(BaseModel):
    user: str
    password: str


class CutoverRequest(StrictModel):
    prepare: bool = False
    # Rehearse the rollback: this step fails after doing its work (names: GET .../cutover).
    rehearse_failure_at: CutoverStep | None = None
    # This run's database mode instead of the plan's (say, dump-and-restore when the
    # replication link broke): dump-and-restore or replication.
    database_mode: Literal["dump-and-restore", "replication"] | None = None


class CutoverAccepted(BaseModel):
    run_id: uuid.UUID


class FinalizeRequest(StrictModel):
    forwarding: Literal["keep", "remove"] = Field(
        description="the legacy hosts' forwarding of the old public addresses to the new VMs: "
        "keep it (clients that still use an old address reach the new site) or remove it; "
        "required, the operator says")


class GroupEnding(BaseModel):
    """A cancel or finalize accepted: the group as it is now (cancelling, finalizing); the end
    is announced by group.cancelled or group.finalized, or the group shows a closing_error."""

    id: uuid.UUID
    name: str
    status: str


class PruneRequest(StrictModel):
    dry_run: bool = Field(False, description="count what would be deleted, delete nothing")


class Pruned(BaseModel):
    """Rows deleted (or, in a dry run, that would be) by the retention settings."""

    dry_run: bool
    outbox: int = Field(description="published events older than FERRY_RETENTION_OUTBOX_DAYS")
    inbox: int = Field(description="processed-event records older than "
                       "FERRY_RETENTION_INBOX_DAYS")
    vm_messages: int = Field(description="VM log lines of groups closed longer than "
                             "FERRY_RETENTION_MESSAGES_DAYS")


class NeedsProvisioning(BaseModel):
    vms: list[VmView]


class MessageList(BaseModel):
    messages: list[MessageView]


class DeadLetter(BaseModel):
    message_id: str | None
    type: str | None
    error: str | None
    attempts: int | None
    replays: int = Field(0, description="times an operator replayed it before it failed again")
    failed_at: str | None
    body: Any


class DeadLetters(BaseModel):
    service: str
    messages: list[DeadLetter]


class Replayed(BaseModel):
    replayed: int


class Phase(BaseModel):
    state: str
    step: str | None
    entered_at: datetime
    seconds: float | None  # None while the VM is still in it


class VmTimeline(BaseModel):
    vm: str
    phases: list[Phase]


class Timeline(BaseModel):
    group: str
    vms: list[VmTimeline]


class CutoverStepView(BaseModel):
    position: int
    name: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    seconds: float | None
    error: str | None
    detail: str | None = None  # what the step did
    undone_at: datetime | None = None  # when a rollback undid it
    undo_error: str | None = None


class CutoverRunView(BaseModel):
    id: uuid.UUID
    prepare: bool
    status: str
    reason: str | None
    downtime_s: float | None
    created_at: datetime
    finished_at: datetime | None
    steps: list[CutoverStepView]


class CutoverRuns(BaseModel):
    group: str
    runs: list[CutoverRunView]


class UiSession(BaseModel):
    events: str
    services: list[str]


class SiteView(BaseModel):
    vm: str
    address: str
    names: list[str]
    hosts_line: str  # for /etc/hosts: the new address and the names it will serve
    curl: list[str]  # curl --resolve lines, one per name


class CheckView(BaseModel):
    vm: str
    url: str
    address: str
    ok: bool
    detail: str


class Verification(BaseModel):
    group: str
    status: str
    sites: list[SiteView]
    checks: list[CheckView]
    passed: bool  # every check passed (true when the plan has none)


# Operators with roles: named tokens, who a token is, and the audit trail.
TOKEN_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"  # shared.roles.NAME
RoleName = Literal["viewer", "operator", "admin"]  # shared.roles.ROLES


class TokenRequest(StrictModel):
    name: str = Field(pattern=TOKEN_NAME, description="the token's name, shown in the audit "
                      "trail: lowercase letters, digits, '.', '_' and '-', at most 63; a name "
                      "is never reused, even once revoked")
    role: RoleName = Field(description="viewer (reads), operator (and submit, retry, resume, "
                           "verify, cutover) or admin (and everything)")


class TokenView(BaseModel):
    name: str
    role: RoleName
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None
    last_used_at: datetime | None = Field(
        default=None, description="when it was last presented (noted at most once a minute)")


class TokenCreated(TokenView):
    token: str = Field(description="the bearer token itself: shown this once, stored only as "
                       "its hash")


class TokenList(BaseModel):
    tokens: list[TokenView]


class WhoAmI(BaseModel):
    name: str = Field(description="the token's name ('bootstrap' for the configured one)")
    role: RoleName


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str = Field(description="the name of the token that asked")
    role: RoleName = Field(description="the token's role when it asked")
    method: str
    route: str = Field(description="the route, e.g. /v1/groups/{group}/cutover")
    path: str = Field(description="the path as asked")
    status: int = Field(description="the HTTP status of the answer (403: refused by role)")
    group_id: uuid.UUID | None = None
    group: str | None = Field(default=None, description="the group's name")
    vm_id: uuid.UUID | None = None
    detail: str | None = None


class AuditPage(Page):
    """Audit lines, newest first."""

    lines: list[AuditEntry]
