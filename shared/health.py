"""/healthz and /readyz, for whatever supervises a process (systemd, compose, an orchestrator).

- /healthz: the process lives and serves HTTP: 200 for as long as it answers at all. A failure
  means "restart it".
- /readyz: its dependencies answer now (the database, the broker): 200, or 503 naming those
  that did not. A failure means "do not send it work yet"; restarting would not help, the
  pool and the broker connection come back by themselves.

Both without a token: they say only whether each dependency answered, never an address, a
user or an error's text (those go to the process's log).
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from aiohttp import web
from pydantic import BaseModel, Field

from shared.logging import get_logger

log = get_logger(__name__)

# Longer than a healthy round trip on a loaded machine, well under a probe's own time-out.
CHECK_TIMEOUT_S = 2.0

Probe = Callable[[], Awaitable[None]]


class Liveness(BaseModel):
    alive: bool = Field(True, description="always true: an answer at all is the news")


class DependencyStatus(BaseModel):
    ok: bool
    detail: str = Field(description="how long it took to answer, or why it is counted as "
                                    "unavailable (no address or error text)")


class Readiness(BaseModel):
    ready: bool = Field(description="every dependency answered")
    failed: list[str] = Field(description="the dependencies that did not answer")
    dependencies: dict[str, DependencyStatus] = Field(
        description="each dependency (database, broker) and how its check went")


async def readiness(probes: dict[str, Probe], timeout_s: float = CHECK_TIMEOUT_S) -> Readiness:
    """Run every probe at once, each bounded by `timeout_s`."""
    names = list(probes)
    results = await asyncio.gather(*(_check(name, probes[name], timeout_s) for name in names))
    statuses = dict(zip(names, results))
    failed = [name for name, status in statuses.items() if not status.ok]
    return Readiness(ready=not failed, failed=failed, dependencies=statuses)


async def _check(name: str, probe: Probe, timeout_s: float) -> DependencyStatus:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            await probe()
    except TimeoutError:
        log.warning("readiness: no answer in time", dependency=name, timeout_s=timeout_s)
        return DependencyStatus(ok=False, detail=f"did not answer within {timeout_s:g} s")
    except Exception as exc:  # noqa: BLE001 - any failure of a dependency is "not ready"
        log.warning("readiness: unavailable", dependency=name,
                    error=f"{type(exc).__name__}: {exc}")
        return DependencyStatus(ok=False, detail=f"unavailable ({type(exc).__name__})")
    return DependencyStatus(ok=True, detail=f"answered in "
                                            f"{(time.perf_counter() - started) * 1000:.0f} ms")


def dependency_probes(store, bus) -> dict[str, Probe]:
    """A process's dependencies: its store (shared.store.session.Store) and, when it has one,
    its bus (shared.bus.Bus)."""
    probes: dict[str, Probe] = {"database": store.ping}
    if bus is not None:
        probes["broker"] = bus.ping
    return probes


def add_routes(app: web.Application, probes: dict[str, Probe]) -> None:
    """/healthz and /readyz on a process's own HTTP server (its metrics port); the gateway
    registers its own (services/gateway/health_routes.py) to have them in its OpenAPI."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response(Liveness().model_dump(mode="json"))

    async def readyz(request: web.Request) -> web.Response:
        answer = await readiness(probes)
        return web.json_response(answer.model_dump(mode="json"),
                                 status=200 if answer.ready else 503)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
