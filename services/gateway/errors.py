"""JSON error answers that say what is wrong and where."""

from __future__ import annotations

import json

from aiohttp import web
from pydantic import BaseModel, ValidationError


def problem(kind: type[web.HTTPException], error: str, problems: list[dict] | None = None):
    body = {"error": error, "problems": problems or []}
    return kind(text=json.dumps(body), content_type="application/json")


def json_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(text=model.model_dump_json(), status=status, content_type="application/json")


async def parse_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        problems = [
            {"location": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
            for e in exc.errors()
        ]
        raise problem(web.HTTPUnprocessableEntity, "the request body is not valid", problems) from None
