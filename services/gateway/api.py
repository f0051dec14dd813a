"""A tiny route table that aiohttp serves and the OpenAPI document is generated from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable, Literal

from aiohttp import web
from pydantic import BaseModel

from shared.roles import ROLES, Role

Auth = Literal["vm", "operator", "vm-boot", "none"]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    auth: Auth
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    tag: str = "operator"
    responses: dict[int, str] = field(default_factory=dict)
    # Query parameters: name -> JSON Schema (with a "description"), for the OpenAPI document.
    query: dict[str, dict] = field(default_factory=dict)
    # A body documented by its schema though the handler reads it itself (a plan, YAML or JSON).
    body_schema: type[BaseModel] | None = None
    # The status of a success (201 for what creates), and its OpenAPI links: which operations
    # take a value of its answer (name -> {"operationId", "parameters"}), what a stateful fuzz
    # follows (tests/integration/test_gateway_fuzz.py).
    status: int = 200
    links: dict[str, dict] = field(default_factory=dict)
    # The role an operator token needs (auth "operator" only): the gateway checks it before
    # the handler runs, and the OpenAPI document states it (x-ferry-role).
    role: Role | None = None


class Api:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def route(self, method: str, path: str, summary: str, *, auth: Auth, tag: str,
              body: type[BaseModel] | None = None, response: type[BaseModel] | None = None,
              responses: dict[int, str] | None = None, query: dict[str, dict] | None = None,
              body_schema: type[BaseModel] | None = None, status: int = 200,
              links: dict[str, dict] | None = None, role: Role | None = None):
        # Every operator route says which role it needs, so none is left to a default.
        if (auth == "operator") != (role in ROLES):
            raise ValueError(f"{method} {path}: an operator route names its role (one of "
                             f"{', '.join(ROLES)}), and only an operator route does")

        def register(fn):
            self.routes.append(Route(method, path, fn, summary, auth, body, response, tag,
                                     responses or {}, query or {}, body_schema, status,
                                     links or {}, role))
            return fn

        return register

    def add_to(self, app: web.Application) -> None:
        for r in self.routes:
            app.router.add_route(r.method, r.path, r.handler)


api = Api()
