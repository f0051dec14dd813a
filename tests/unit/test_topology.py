"""The wiring between services: who handles what."""

import pytest

from services.runtime import SERVICES, router_of
from shared.events import PAYLOADS, Envelope, GroupHalted
from shared.topology import SUBSCRIPTIONS, handled_types, routing_key

COMMANDS_AND_FACTS_WITHOUT_A_SERVICE_HANDLER = {
    # Pure notifications: the gateway's live feed shows them to operators.
    "group.ready", "cutover.step_completed", "cutover.completed", "cutover.failed",
    "vm.message_logged",
}


@pytest.mark.parametrize("service", SERVICES)
def test_each_router_handles_exactly_its_subscriptions(service):
    """A service's router and its queue bindings list the same event types."""
    assert set(router_of(service).handlers) == handled_types(service)


def test_every_event_type_has_a_handling_service_or_is_a_notification():
    """No event type is published into the void: a service acts on it, or it is a notification."""
    handled = {kind for service in SERVICES for kind in handled_types(service)}
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
    assert "vm.state_changed.ready" in SUBSCRIPTIONS["coordinator"]
