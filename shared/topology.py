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
    "provisioner": ("vm.configured", "vm.provisioned", "vm.state_changed", "db.master.complete",
                    "group.resumed"),
    "coordinator": ("vm.failed", "vm.state_changed"),
    "cutover": ("cutover.requested", "group.halted"),
    # The gateway's live feed (server-sent events) hears everything; it is bounded, so it
    # never grows while no gateway runs. It also makes pure notifications routable.
    "gateway": ("#",),
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
