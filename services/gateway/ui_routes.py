"""The operator's web UI: static files from `ui/` (plain HTML, CSS and ES modules, no build
step), and the session call that lets the browser's EventSource reach the event stream."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.gateway import models as m
from services.gateway.api import api
from services.gateway.auth import EVENTS_COOKIE, EVENTS_PATH, actor, events_cookie_value
from services.gateway.errors import json_response, problem
from services.gateway.keys import DEPS, OPERATOR_TOKEN

UI_DIR = Path(__file__).parent / "ui"
TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript",
         ".svg": "image/svg+xml"}
# Everything the page needs comes from the gateway itself; no inline script can run, so a
# message that slipped into the page as markup still could not execute.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> web.FileResponse:
    path = UI_DIR / name
    if "/" in name or name.startswith(".") or path.suffix not in TYPES or not path.is_file():
        raise problem(web.HTTPNotFound, f"no UI file {name!r}")
    response = web.FileResponse(path, headers=HEADERS)
    response.content_type = TYPES[path.suffix]
    return response


@api.route("GET", "/", "The operator web UI", auth="none", tag="ui")
async def index(request: web.Request) -> web.StreamResponse:
    return _file("index.html")


@api.route("GET", "/ui/{name}", "The web UI's scripts and styles", auth="none", tag="ui")
async def asset(request: web.Request) -> web.StreamResponse:
    return _file(request.match_info["name"])


@api.route("POST", "/v1/ui/session", "Open a web UI session: checks the operator token and sets "
           "the HttpOnly cookie that lets the browser's EventSource read /v1/events",
           auth="operator", role="viewer", tag="ui", response=m.UiSession)
async def session(request: web.Request) -> web.Response:
    response = json_response(m.UiSession(events=EVENTS_PATH, services=request.app[DEPS].topology.services))
    response.set_cookie(EVENTS_COOKIE, events_cookie_value(request.app[OPERATOR_TOKEN],
                                                         actor(request)),
                        path=EVENTS_PATH, httponly=True, samesite="Strict",
                        secure=request.secure)
    return response


@api.route("DELETE", "/v1/ui/session", "Close the web UI session (drops the event-stream "
           "cookie)", auth="none", tag="ui")
async def close_session(request: web.Request) -> web.Response:
    response = web.json_response({"ok": True})
    response.del_cookie(EVENTS_COOKIE, path=EVENTS_PATH)
    return response
