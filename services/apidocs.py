"""The checked-in API documents, generated from the code:

- docs/api/openapi.json     the gateway's HTTP API (services.gateway.openapi, the route table)
- docs/api/asyncapi.json    the events on the bus (AsyncAPI 3.0: shared.events, shared.topology)
- docs/plan.schema.json     the plan format (JSON Schema of shared.plan.Plan, for editors)

    python -m services.apidocs --write    regenerate all three
    python -m services.apidocs --check    exit 1 naming the stale ones

tests/unit/test_api_documents.py fails when a checked-in document differs from its generation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic.json_schema import models_json_schema

from services.gateway import live
from services.topology import PUBLISHERS, topology
from shared.events import PAYLOADS, Envelope
from shared.plan import Plan
from shared.states import VmState
from shared.topology import Names, routing_key

REPO = Path(__file__).resolve().parents[1]
REGENERATE = "python -m services.apidocs --write"
VERSION = "0.1.0"


def openapi() -> dict:
    from services.gateway.api import api
    from services.gateway.app import build_app  # noqa: F401 - registers every route
    from services.gateway.openapi import openapi_document

    return openapi_document(api, VERSION)


def _channel_id(event_type: str) -> str:
    return PAYLOADS[event_type].__name__


def asyncapi() -> dict:
    """AsyncAPI 3.0: one channel (routing key on the topic exchange) and one message per event
    type, the message being the Envelope whose payload is that type's model; an operation per
    publishing service (send) and per subscribed service queue (receive)."""
    names = Names()
    bus = topology()
    refs, defs = models_json_schema(
        [(cls, "validation") for cls in PAYLOADS.values()],
        ref_template="#/components/schemas/{model}")
    schemas: dict = dict(defs.get("$defs", {}))
    envelope = Envelope.model_json_schema(ref_template="#/components/schemas/{model}")
    channels: dict = {}
    messages: dict = {}
    operations: dict = {}
    exchange = {"name": names.exchange, "type": "topic", "durable": True, "autoDelete": False,
                "vhost": "/"}
    for event_type, cls in PAYLOADS.items():
        channel = _channel_id(event_type)
        schema = json.loads(json.dumps(envelope))
        schema["title"] = f"{cls.__name__}Event"
        schema["description"] = f"The envelope of every {event_type} event."
        schema["properties"]["type"] = {"const": event_type, "title": "Type"}
        schema["properties"]["payload"] = refs[(cls, "validation")]
        schema["required"] = sorted(set(schema.get("required", [])) | {"payload"})
        schemas[f"{cls.__name__}Event"] = schema
        messages[channel] = {
            "name": event_type,
            "title": cls.__name__,
            "summary": (cls.__doc__ or "").strip() or f"The {event_type} event.",
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{cls.__name__}Event"},
        }
        address = routing_key(event_type, {"to_state": "{to_state}"})
        channels[channel] = {
            "address": address,
            "description": f"Routing key {address!r} on the topic exchange {names.exchange!r}.",
            "messages": {channel: {"$ref": f"#/components/messages/{channel}"}},
            "bindings": {"amqp": {"is": "routingKey", "exchange": exchange,
                                  "bindingVersion": "0.3.0"}},
        }
        if "{to_state}" in address:
            channels[channel]["parameters"] = {"to_state": {
                "description": "The state the VM moved to (the payload's to_state).",
                "enum": [state.value for state in VmState]}}
        message_ref = [{"$ref": f"#/channels/{channel}/messages/{channel}"}]
        for service in PUBLISHERS[event_type]:
            operations[f"{service}Sends{channel}"] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{channel}"},
                "summary": f"{service} publishes {event_type} (through its outbox; persistent, "
                           "publisher confirms, mandatory).",
                "messages": message_ref,
                "bindings": {"amqp": {"deliveryMode": 2, "mandatory": True,
                                      "bindingVersion": "0.3.0"}},
            }
        for service in bus.services:
            if not bus.hears(service, event_type):
                continue
            queue = names.queue(service)
            limits = dict(bus.queue_limits.get(service, {}))
            operations[f"{service}Receives{channel}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{channel}"},
                "summary": f"{service} consumes {event_type} from its quorum queue {queue!r} "
                           f"(retried with back-off, then dead-lettered to "
                           f"{names.dead_letters(service)!r})"
                           + (f"; queue limits {limits}" if limits else "") + ".",
                "messages": message_ref,
                "bindings": {"amqp": {"ack": True, "bindingVersion": "0.3.0"}},
            }
        operations[f"gatewayReceives{channel}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"every gateway replica hears {event_type} on its own live-feed queue "
                       f"({names.live_feed('<replica>')!r}: exclusive, auto-delete, limits "
                       f"{dict(live.QUEUE_LIMITS)}), without acks, and streams it to the "
                       "operators' screens it serves (/v1/events).",
            "messages": message_ref,
            "bindings": {"amqp": {"ack": False, "bindingVersion": "0.3.0"}},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Ferryman events",
            "version": VERSION,
            "description": "Every event on Ferryman's bus: one durable topic exchange "
                           f"({names.exchange!r} with the default prefix, FERRY_BUS_PREFIX), "
                           "the routing key being the event type (for vm.state_changed followed "
                           "by the target state), one durable quorum queue "
                           "per service, one exclusive live-feed queue per gateway replica, and "
                           f"{names.unheard!r}, bound to every event and kept empty, so that an "
                           "event no service handles is still routable. Delivery is at least once; handlers are idempotent.",
        },
        "defaultContentType": "application/json",
        "servers": {"rabbitmq": {"host": "127.0.0.1:5672", "protocol": "amqp",
                                 "protocolVersion": "0.9.1"}},
        "channels": channels,
        "operations": dict(sorted(operations.items())),
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }


_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _standard_bounds(node):
    """Pydantic writes a bound that follows a validator (WholeNumber's) as `ge`/`le`/...; JSON
    Schema (and so an editor) knows them as minimum/maximum/..."""
    if isinstance(node, dict):
        return {_BOUNDS.get(key, key) if key in _BOUNDS and "type" in node else key:
                _standard_bounds(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_standard_bounds(item) for item in node]
    return node


def plan_schema() -> dict:
    schema = _standard_bounds(Plan.model_json_schema(mode="validation"))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "Ferryman plan",
        "description": "One group of VMs migrating together (docs/plan.md). Check a plan with "
                       "`ferry validate PLAN`.",
    }


def documents() -> dict[Path, str]:
    """Each checked-in document's path (relative to the repository) and its generated text."""
    def text(document: dict) -> str:
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    return {
        Path("docs/api/openapi.json"): text(openapi()),
        Path("docs/api/asyncapi.json"): text(asyncapi()),
        Path("docs/plan.schema.json"): text(plan_schema()),
    }


def stale(root: Path | None = None) -> list[Path]:
    root = root or REPO
    out = []
    for path, text in documents().items():
        target = root / path
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="regenerate the documents")
    action.add_argument("--check", action="store_true", help="exit 1 if any is stale")
    args = parser.parse_args(argv)
    if args.write:
        for path, text in documents().items():
            (REPO / path).parent.mkdir(parents=True, exist_ok=True)
            (REPO / path).write_text(text, encoding="utf-8")
            print(f"wrote {path}")
        return 0
    old = stale()
    for path in old:
        print(f"{path} is stale: run {REGENERATE}", file=sys.stderr)
    return 1 if old else 0


if __name__ == "__main__":
    sys.exit(main())
