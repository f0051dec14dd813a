"""Who hears what: the exchange, each service's queue and the event types it is bound to.

Every process declares the whole topology at start-up, so an event published before its
consumer first ran is still routed (durable queues keep it). A service's router must handle
exactly the keys listed for it here (a test checks), and every event type has a listener.
"""

from __future__ import annotations

from dataclasses import dataclass

SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    "archiver": ("group.submitted", "archive.requested", "group.resumed"),
    "creator": ("archive.ready", "group.archived", "group.resumed"),
    "configurator": ("vm.created", "group.resumed"),
    "provisioner": ("vm.configured", "vm.provisioned", "vm.state_changed.ready",
                    "db.master.complete", "group.resumed"),
    "coordinator": ("vm.failed", "vm.state_changed.ready"),
    "cutover": ("cutover.requested", "group.halted"),
    # The gateway's live feed (server-sent events) hears everything; it is bounded, so it
    # never grows while no gateway runs. It also makes pure notifications routable.
    "gateway": ("#",),
}

# vm.state_changed is the most frequent event, and its listeners act on one target state: its
# routing key carries that state (vm.state_changed.ready), so a queue is bound to the changes it
# acts on instead of receiving every one and ignoring most. Measured (bench/, 200-VM pipeline):
# 0.31 of the deliveries, 1.3x the events/s.
STATE_CHANGED = "vm.state_changed"


def routing_key(event_type: str, payload: dict) -> str:
    """The key an event is published with: its type, plus the target state for a state change."""
    if event_type == STATE_CHANGED:
        return f"{STATE_CHANGED}.{payload['to_state']}"
    return event_type


def event_type_of(binding_key: str) -> str:
    """The event type a binding key receives ("vm.state_changed.ready": vm.state_changed)."""
    if binding_key.startswith(STATE_CHANGED + "."):
        return STATE_CHANGED
    return binding_key


def handled_types(service: str) -> set[str]:
    return {event_type_of(key) for key in SUBSCRIPTIONS[service]}


# Who publishes each event type (through its outbox), for the AsyncAPI document
# (docs/api/asyncapi.json). A VM's state changes come from whichever service moves it, and from
# the gateway when the VM reports one itself.
_MOVES_VMS = ("archiver", "creator", "configurator", "provisioner", "coordinator", "cutover",
              "gateway")
PUBLISHERS: dict[str, tuple[str, ...]] = {
    "group.submitted": ("gateway",),
    "archive.requested": ("archiver",),
    "archive.ready": ("archiver",),
    "group.archived": ("creator",),
    "vm.created": ("creator",),
    "vm.state_changed": _MOVES_VMS,
    "vm.failed": _MOVES_VMS,
    "vm.message_logged": ("gateway", "archiver"),
    "vm.configured": ("gateway",),
    "vm.provisioned": ("gateway",),
    "db.master.complete": ("provisioner",),
    "group.ready": ("coordinator",),
    "group.halted": ("coordinator",),
    "group.resumed": ("gateway",),
    "cutover.requested": ("gateway",),
    "cutover.step_completed": ("cutover",),
    "cutover.completed": ("cutover",),
    "cutover.failed": ("cutover",),
}

# Queue arguments beyond the quorum type, per service.
QUEUE_LIMITS: dict[str, dict[str, int | str]] = {
    "gateway": {"x-max-length": 10_000, "x-overflow": "drop-head"},
}


@dataclass(frozen=True)
class Names:
    prefix: str = "ferry"

    @property
    def exchange(self) -> str:
        return f"{self.prefix}.events"

    def queue(self, service: str) -> str:
        return f"{self.prefix}.{service}"

    def dead_letters(self, service: str) -> str:
        return f"{self.prefix}.{service}.dlq"

    def retry(self, service: str, attempt: int) -> str:
        return f"{self.prefix}.{service}.retry.{attempt}"
