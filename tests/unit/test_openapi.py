"""The gateway's OpenAPI document."""

from services.gateway.api import api
from services.gateway.app import build_app  # noqa: F401 - registers every route
from services.gateway.openapi import openapi_document


def test_every_route_is_documented_with_its_models_and_security():
    """Each route of the gateway appears with its method, security and schema references that
    resolve to components."""
    doc = openapi_document(api)
    assert doc["openapi"].startswith("3.")
    for route in api.routes:
        operation = doc["paths"][route.path][route.method.lower()]
        assert operation["summary"] and operation["security"] is not None
    schemas = doc["components"]["schemas"]
    for name in ("StateReport", "MessageReport", "GroupDetail", "MasterStatus"):
        assert name in schemas
    text = str(doc)
    for ref in set(part.split("'")[0] for part in text.split("#/components/schemas/")[1:]):
        assert ref in schemas, ref


def test_vm_state_report_only_allows_states_a_vm_may_report():
    """The documented state enum is the set a VM may report, not the whole state machine."""
    schema = openapi_document(api)["components"]["schemas"]["StateReport"]
    states = set(schema["properties"]["state"]["enum"])
    assert states == {"configuring", "configured", "provisioned", "loading", "replicating",
                      "ready", "failed"}
