"""The bus's names and routing: the exchange, each service's queue, and the routing key of an
event. Which service hears which keys is declared by each service's router (shared/service.py)
and gathered into a `Topology` by the composition root (services/topology.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

# vm.state_changed is the most frequent event, and its listeners act on one target state: its
# routing key carries that state (vm.state_changed.ready), so a queue is bound to the changes it
# acts on instead of receiving every one and ignoring most (docs/performance.md).
STATE_CHANGED = "vm.state_changed"
EVERYTHING = "#"


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


@dataclass(frozen=True)
class Topology:
    """Each service's binding keys, and arguments of its queue beyond the quorum type."""

    bindings: Mapping[str, tuple[str, ...]]
    queue_limits: Mapping[str, Mapping[str, int | str]] = field(default_factory=dict)

    @property
    def services(self) -> list[str]:
        return list(self.bindings)

    def hears(self, service: str, event_type: str) -> bool:
        keys = self.bindings[service]
        return EVERYTHING in keys or any(event_type_of(key) == event_type for key in keys)


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

    @property
    def unheard(self) -> str:
        """The queue bound to every event and kept empty (x-max-length 0): it makes every event
        routable, pure notifications included (cutover.completed, vm.message_logged ...), whether
        or not a gateway's live feed is listening, so mandatory publishing never refuses one."""
        return f"{self.prefix}.unheard"

    def live_feed(self, replica: str) -> str:
        """One gateway replica's own live-feed queue (exclusive, gone with its connection)."""
        return f"{self.prefix}.gateway.live.{replica}"


# Queues of earlier versions that nothing consumes any more, deleted when a process connects:
# the live feed used to be one shared queue, `<prefix>.gateway` (with retry holding queues and a
# DLQ, never used: it was consumed without acks), which two gateway replicas split between them.
RETIRED_SERVICES = ("gateway",)
