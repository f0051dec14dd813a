"""The wiring between services: who handles what."""

import pytest

from services.topology import SERVICES, router_of, topology
from shared.events import PAYLOADS, Envelope, GroupHalted, GroupReady, VmStateChanged
from shared.service import Router
from shared.topology import event_type_of, routing_key

COMMANDS_AND_FACTS_WITHOUT_A_SERVICE_HANDLER = {
    # Pure notifications: the gateway's live feed shows them to operators.
    "group.ready", "cutover.step_completed", "cutover.completed", "cutover.failed",
    "vm.message_logged", "group.cancel_failed", "group.finalized", "group.finalize_failed",
}


@pytest.mark.parametrize("service", SERVICES)
def test_each_queue_is_bound_to_exactly_what_its_router_handles(service):
    """A service's queue bindings are derived from its router: one key per handled event type."""
    router = router_of(service)
    keys = topology().bindings[service]
    assert {event_type_of(key) for key in keys} == set(router.subscriptions)
    assert len(keys) == len(set(keys)) == len(router.subscriptions)


def test_every_event_type_has_a_handling_service_or_is_a_notification():
    """No event type is published into the void: a service acts on it, or it is a notification."""
    handled = {kind for service in SERVICES for kind in router_of(service).subscriptions}
    assert set(PAYLOADS) - handled == COMMANDS_AND_FACTS_WITHOUT_A_SERVICE_HANDLER
    assert handled <= set(PAYLOADS)


def test_an_envelope_round_trips_as_json_and_carries_its_cause():
    """An event serialises to JSON and back, and one caused by it keeps its correlation id."""
    import uuid

    group_id = uuid.uuid4()
    first = Envelope.new(GroupHalted(vm_id="x", vm_name="db1", reason="disk"), group_id=group_id)
    again = Envelope.model_validate_json(first.model_dump_json())
    assert again == first and again.typed() == GroupHalted(vm_id="x", vm_name="db1", reason="disk")
    caused = Envelope.new(GroupHalted(vm_id="y", vm_name="db2", reason="r"), group_id=group_id,
                          cause=first)
    assert caused.correlation_id == first.correlation_id and caused.causation_id == first.id


def test_state_changes_are_routed_by_their_target_state():
    """A state change's routing key names its target state; other events use their type."""
    assert routing_key("vm.state_changed", {"to_state": "ready"}) == "vm.state_changed.ready"
    assert routing_key("vm.failed", {"step": "x"}) == "vm.failed"
    assert "vm.state_changed.ready" in topology().bindings["coordinator"]


def test_a_router_takes_one_handler_per_event_type():
    """A second handler for the same event type in one service is refused at import."""
    router = Router("creator")

    @router.on(GroupReady)
    async def first(event, ctx):
        pass

    with pytest.raises(ValueError, match="handles group.ready already, in first"):
        @router.on(GroupReady)
        async def second(event, ctx):
            pass


def test_a_state_change_is_heard_for_one_target_state():
    """A vm.state_changed handler names the target state it acts on; other types may not."""
    router = Router("creator")
    with pytest.raises(ValueError, match="to_state"):
        router.on(VmStateChanged)
    with pytest.raises(ValueError, match="to_state"):
        router.on(GroupReady, to_state="ready")
