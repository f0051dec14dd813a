"""Who hears what, gathered from where it is declared: each service's router (its handlers'
event types). Every process declares all of it at start-up. The gateway's live feed is not
here: each gateway replica declares its own queue (services/gateway/live.py)."""

from __future__ import annotations

import importlib

from shared.service import Router
from shared.topology import Topology

SERVICES = ("archiver", "creator", "configurator", "provisioner", "coordinator", "cutover")

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
    "group.cancel_requested": ("gateway",),
    "group.cancelled": ("creator",),
    "group.cancel_failed": ("creator",),
    "group.finalize_requested": ("gateway",),
    "group.finalized": ("cutover",),
    "group.finalize_failed": ("cutover",),
}


def router_of(service: str) -> Router:
    return importlib.import_module(f"services.{service}.handlers").router


def topology() -> Topology:
    return Topology({service: router_of(service).binding_keys for service in SERVICES})
