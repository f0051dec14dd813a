"""/healthz and /readyz on the real gateway and on a service process's metrics port, with the
database and the broker reached through relays the test cuts (a closed port, as when a server
goes away; the machine's own servers are never stopped), and `python -m services.healthcheck`,
what systemd and compose run, asking them."""

from __future__ import annotations

import asyncio
import sys
from urllib.parse import urlsplit

import aiohttp
import pytest

from services.runtime import Host
from tests.conftest import eventually, free_port
from tests.integration.tcp_proxy import TcpProxy
from tests.service_process import REPO, ServiceProcess, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_broker_and_db")]


async def ask(base: str, path: str) -> tuple[int, dict] | None:
    """(status, JSON) of an anonymous GET; None while nothing answers."""
    try:
        async with aiohttp.ClientSession(base, timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(path) as answer:
                return answer.status, await answer.json()
    except aiohttp.ClientError:
        return None


async def readyz_is(base: str, status: int) -> dict:
    """Poll /readyz until it answers `status`; its body."""
    async def answered():
        found = await ask(base, "/readyz")
        return found[1] if found and found[0] == status else None
    return await eventually(answered, timeout=30, what=f"/readyz answering {status}")


async def healthcheck(service: str, settings) -> tuple[int, str]:
    """`python -m services.healthcheck SERVICE` with the process's own settings."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.healthcheck", service, cwd=REPO,
        env=settings_env(settings), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode()


@pytest.fixture
async def relays(settings):
    """The database and the broker behind relays; the settings pointed at them."""
    db, mq = urlsplit(settings.database_url), urlsplit(settings.amqp_url)
    store, broker = TcpProxy(db.hostname, db.port), TcpProxy(mq.hostname, mq.port)
    await store.start()
    await broker.start()
    relayed = settings.model_copy(update={"database_url": store.url(settings.database_url),
                                          "amqp_url": broker.url(settings.amqp_url)})
    yield relayed, store, broker
    await store.cut()
    await broker.cut()


async def test_the_gateway_says_it_lives_and_which_dependency_is_away(relays):
    """Without a token: /healthz 200 all along; /readyz 200 with each dependency's status,
    503 naming the database when its port is closed (and saying nothing of where it is),
    naming the broker when that one is, and 200 again once they are back."""
    relayed, store, broker = relays
    host = Host(relayed, [], gateway=True)
    await host.start()
    base = relayed.gateway_url
    try:
        assert await ask(base, "/healthz") == (200, {"alive": True})
        ready = await readyz_is(base, 200)
        assert ready["ready"] is True and ready["failed"] == []
        assert {name: s["ok"] for name, s in ready["dependencies"].items()} == \
            {"database": True, "broker": True}
        assert (await healthcheck("gateway", relayed))[0] == 0

        await store.cut()
        away = await readyz_is(base, 503)
        assert away["ready"] is False and away["failed"] == ["database"]
        assert away["dependencies"]["broker"]["ok"] is True
        assert str(store.port) not in str(away) and "postgres" not in str(away)
        assert await ask(base, "/healthz") == (200, {"alive": True})
        code, said = await healthcheck("gateway", relayed)
        assert code == 1 and "gateway not ready" in said and "database NOT ok" in said
        await store.restore()
        await readyz_is(base, 200)

        await broker.cut()
        away = await readyz_is(base, 503)
        assert away["failed"] == ["broker"]
        await broker.restore()
        await readyz_is(base, 200)  # the broker connection comes back by itself
    finally:
        await host.stop()


async def test_a_service_process_answers_on_its_metrics_port(relays, tmp_path):
    """A service run as its own process (`python -m services.coordinator`) serves /healthz and
    /readyz beside /metrics on FERRY_METRICS_PORT, without a token; its /readyz is 503 naming
    the database while that is away, and `services.healthcheck` says so (exit 1)."""
    relayed, store, _ = relays
    port = free_port()
    relayed = relayed.model_copy(update={"metrics_port": port})
    process = ServiceProcess("coordinator", relayed, tmp_path / "coordinator.log")
    process.start()
    base = f"http://127.0.0.1:{port}"
    try:
        ready = await readyz_is(base, 200)
        assert set(ready["dependencies"]) == {"database", "broker"}
        assert await ask(base, "/healthz") == (200, {"alive": True})
        code, said = await healthcheck("coordinator", relayed)
        assert code == 0 and said.startswith("coordinator ready: database ok"), said

        await store.cut()
        away = await readyz_is(base, 503)
        assert away["failed"] == ["database"]
        assert await ask(base, "/healthz") == (200, {"alive": True})
        code, said = await healthcheck("coordinator", relayed)
        assert code == 1 and "database NOT ok" in said, said
        await store.restore()
        await readyz_is(base, 200)
    finally:
        # In a thread: the process's graceful stop talks to the database through the relay,
        # which this test's event loop runs.
        await asyncio.to_thread(process.stop)


async def test_the_healthcheck_of_a_service_without_a_metrics_port(settings):
    """FERRY_METRICS_PORT=0 (the default): nothing serves its health, nothing is checked."""
    code, said = await healthcheck("archiver", settings.model_copy(update={"metrics_port": 0}))
    assert code == 0 and "FERRY_METRICS_PORT is 0" in said
