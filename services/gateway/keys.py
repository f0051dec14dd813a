"""Typed application state keys."""

from __future__ import annotations

from aiohttp import web

from services.gateway.broadcast import Broadcaster
from services.gateway.failures import FailureLimiter
from shared.bus import Bus
from shared.service import Deps

DEPS = web.AppKey("deps", Deps)
BUS = web.AppKey("bus", Bus)
OPERATOR_TOKEN = web.AppKey("operator_token", str)
LIVE = web.AppKey("live", Broadcaster)
LIMITER = web.AppKey("limiter", FailureLimiter)
