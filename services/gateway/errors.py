"""JSON error answers that say what is wrong and where."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from shared.plan_errors import UNSTORABLE, storable


def problem(kind: type[web.HTTPException], error: str, problems: list[dict] | None = None,
            headers: dict[str, str] | None = None):
    body = {"error": error, "problems": problems or []}
    return kind(text=json.dumps(body), content_type="application/json", headers=headers)


def json_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(text=model.model_dump_json(), status=status, content_type="application/json")


def unstorable_fields(value: Any, location: tuple = ()) -> list[str]:
    """Where in a parsed body there is text that cannot be stored, as dotted paths."""
    if isinstance(value, str):
        return [] if storable(value) else [".".join(map(str, location)) or "(body)"]
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, dict):
        found = [".".join(map(str, (*location, k))) for k in value
                 if isinstance(k, str) and not storable(k)]
        return found + [f for k, v in value.items() for f in unstorable_fields(v, (*location, k))]
    if isinstance(value, (list, tuple)):
        return [f for i, v in enumerate(value) for f in unstorable_fields(v, (*location, i))]
    return []


def unreadable_body() -> web.HTTPException:
    """A body whose framing breaks: a chunked body that is not, a connection cut short."""
    return problem(web.HTTPBadRequest, "the request body cannot be read",
                   [{"location": "(body)", "message": "does not match its Transfer-Encoding "
                     "or Content-Length"}])


async def read_body(request: web.Request) -> bytes:
    """The body as sent, to be read only once the caller is authenticated. The gateway decodes
    no Content-Encoding (aiohttp's decoding is off, see app.py): none of its clients
    compresses, and a decoder run on a stranger's body is work done, and a failure risked,
    before anyone is authenticated. So a body that says it is encoded is refused as such."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        # The value is not repeated: it is the caller's text, whatever it holds.
        raise problem(web.HTTPUnsupportedMediaType, "the request body is encoded; send it as is",
                      [{"location": "Content-Encoding",
                        "message": "the gateway accepts no Content-Encoding but identity"}])
    try:
        return await request.read()
    except web.RequestPayloadError:
        raise unreadable_body() from None


async def parse_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    raw = await read_body(request)
    try:
        parsed = model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        problems = [
            {"location": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
            for e in exc.errors()
        ]
        raise problem(web.HTTPUnprocessableEntity, "the request body is not valid", problems) from None
    bad = unstorable_fields(parsed)
    if bad:
        raise problem(web.HTTPUnprocessableEntity, "the request body is not valid",
                      [{"location": where, "message": UNSTORABLE} for where in bad])
    return parsed
