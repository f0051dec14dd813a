"""The checked-in API documents (docs/api/openapi.json, docs/api/asyncapi.json,
docs/plan.schema.json) are what the code generates now."""

import json

import pytest

from services import apidocs
from services.topology import PUBLISHERS, topology
from shared.events import PAYLOADS
from shared.topology import routing_key


@pytest.mark.parametrize("path", list(apidocs.documents()), ids=str)
def test_checked_in_document_is_up_to_date(path):
    """A document that differs from its generation fails, naming the command that regenerates."""
    generated = apidocs.documents()[path]
    target = apidocs.REPO / path
    assert target.exists(), f"{path} is missing: run {apidocs.REGENERATE}"
    assert target.read_text(encoding="utf-8") == generated, (
        f"{path} is stale (the models or routes changed): run {apidocs.REGENERATE}")


def test_the_check_command_names_a_stale_document(tmp_path, monkeypatch, capsys):
    """`--check` exits 1 and names the stale document and the command."""
    for path, text in apidocs.documents().items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    (tmp_path / "docs/api/asyncapi.json").write_text("{}\n")
    monkeypatch.setattr(apidocs, "REPO", tmp_path)
    assert apidocs.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "docs/api/asyncapi.json is stale" in err and apidocs.REGENERATE in err
    assert "openapi" not in err


def test_asyncapi_has_one_channel_and_message_per_event_type_with_its_payload():
    """Each event type is a channel (routing key on ferry.events) whose message is the envelope
    with that type's payload model; publishers send and subscribed queues receive it."""
    doc = apidocs.asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    assert {c["address"] for c in doc["channels"].values()} == \
        {routing_key(t, {"to_state": "{to_state}"}) for t in PAYLOADS}
    assert "ready" in doc["channels"]["VmStateChanged"]["parameters"]["to_state"]["enum"]
    schemas = doc["components"]["schemas"]
    for event_type, cls in PAYLOADS.items():
        channel = doc["channels"][cls.__name__]
        assert channel["bindings"]["amqp"]["exchange"]["name"] == "ferry.events"
        message = doc["components"]["messages"][cls.__name__]
        envelope = schemas[message["payload"]["$ref"].rsplit("/", 1)[1]]
        assert envelope["properties"]["type"] == {"const": event_type, "title": "Type"}
        assert envelope["properties"]["payload"] == {"$ref": f"#/components/schemas/{cls.__name__}"}
        assert set(envelope["properties"]) >= {"id", "occurred_at", "group_id", "vm_id",
                                               "correlation_id", "causation_id"}
        for service in PUBLISHERS[event_type]:
            assert doc["operations"][f"{service}Sends{cls.__name__}"]["action"] == "send"
        bus = topology()
        for service in bus.services:
            if bus.hears(service, event_type):
                assert doc["operations"][f"{service}Receives{cls.__name__}"]["action"] == "receive"
    text = json.dumps(doc)
    for ref in set(part.split('"')[0] for part in text.split('"#/components/schemas/')[1:]):
        assert ref in schemas, ref
    assert "ArchiveItem" in schemas  # nested models are components too


def test_every_event_type_has_a_publisher():
    assert set(PUBLISHERS) == set(PAYLOADS)


def test_plan_schema_describes_the_fields_for_editors():
    """The plan's JSON Schema forbids unknown keys and carries a description for each field."""
    schema = apidocs.plan_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"group", "vms"}
    for name, model in schema["$defs"].items():
        if "properties" not in model:
            continue  # an enum
        assert model["additionalProperties"] is False, name
        for field, spec in model["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no description"
    vm = schema["$defs"]["VM"]
    assert vm["properties"]["cpus"]["maximum"] == 64
