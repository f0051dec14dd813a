"""The OpenAPI document, generated from the route table and the pydantic models."""

from __future__ import annotations

import re

from pydantic.json_schema import models_json_schema

from services.gateway.api import Api
from shared.roles import ROLES

SECURITY = {
    "vm": [{"vmToken": []}],
    "operator": [{"operatorToken": []}],
    "vm-boot": [{"vmToken": []}, {"bootToken": []}],
    "none": [],
}


def openapi_document(api: Api, version: str = "0.1.0") -> dict:
    models = ({r.body or r.body_schema for r in api.routes if r.body or r.body_schema}
              | {r.response for r in api.routes if r.response})
    ordered = sorted(models, key=lambda model: model.__name__)
    refs, defs = models_json_schema([(model, "validation") for model in ordered],
                                    ref_template="#/components/schemas/{model}")
    paths: dict[str, dict] = {}
    for route in api.routes:
        operation = {
            "summary": route.summary,
            "tags": [route.tag],
            "operationId": route.handler.__name__,
            "security": SECURITY[route.auth],
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in re.findall(r"{(\w+)}", route.path)
            ] + [
                {"name": name, "in": "query", "required": False,
                 "description": schema.get("description", ""),
                 "schema": {k: v for k, v in schema.items() if k != "description"}}
                for name, schema in route.query.items()
            ],
            "responses": _responses(route, refs),
        }
        if route.role:
            # Which operator role the operation needs, for readers and for the tests that
            # walk every action (tests/integration/test_roles.py).
            operation["x-ferry-role"] = route.role
            operation["description"] = (f"Needs an operator token with the {route.role} role "
                                        f"(or higher: {' < '.join(ROLES)}).")
        if route.body or route.body_schema:
            operation["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": refs[(route.body or route.body_schema, "validation")]}}}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Ferryman gateway", "version": version},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "vmToken": {"type": "http", "scheme": "bearer",
                            "description": "the VM's own token, issued when it is booted"},
                "bootToken": {"type": "apiKey", "in": "query", "name": "token"},
                "operatorToken": {"type": "http", "scheme": "bearer",
                                  "description": "an operator token: the bootstrap (admin) "
                                  "token, or a named one with its role (x-ferry-role says "
                                  "which each operation needs)"},
            },
        },
    }


def _responses(route, refs) -> dict:
    ok = {"description": "Created" if route.status == 201 else "OK"}
    if route.response:
        ok["content"] = {"application/json": {"schema": refs[(route.response, "validation")]}}
    if route.links:
        ok["links"] = route.links
    answers = {str(route.status): ok}
    if route.auth != "none":  # the UI's files and the health checks ask for no token
        answers["401"] = {"description": "no or invalid token"}
        answers["403"] = {"description": f"the token's role is below {route.role}"
                          if route.role else "the token is not for this"}
    if route.body or route.body_schema:
        answers["415"] = {"description": "the body is encoded (Content-Encoding): send it as is"}
    for status, text in route.responses.items():
        answers[str(status)] = {"description": text}
    return answers
