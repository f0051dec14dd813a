"""Shared fixtures. Integration tests use the real RabbitMQ and PostgreSQL on this machine,
each test isolated by its own database schema and its own exchange/queue name prefix."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
import uuid
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp
import pytest

from shared.settings import Settings
from services.reset import remove_everything
from tests.ci_skips import pytest_runtest_makereport  # noqa: F401 - CI=true: no skip passes

OPERATOR_TOKEN = "test-operator-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def eventually(check: Callable[[], Awaitable[object] | object], timeout: float = 20.0,
                     interval: float = 0.05, what: str = "condition") -> object:
    """Poll `check` (plain or async) until it returns something truthy, or fail after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last saw {last!r}")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    tag = uuid.uuid4().hex[:10]
    port = free_port()
    return Settings(
        database_schema=f"t_{tag}",
        bus_prefix=f"t{tag}",
        retry_delays=(0.2, 0.4),
        gateway_port=port,
        gateway_boot_port=0,
        # Plain HTTP for the tests that are not about TLS (the product's default is HTTPS):
        # test_tls_default.py and the demo's and the lab's tests run the gateway over TLS.
        gateway_plain_http=True,
        gateway_url=f"http://127.0.0.1:{port}",
        operator_token=OPERATOR_TOKEN,
        state_dir=tmp_path / "state",
        log_format="json",
        log_level="warning",
    )


@pytest.fixture
async def clean_broker_and_db(settings: Settings):
    """Remove the test's schema and queues afterwards."""
    yield
    await remove_everything(settings)


@pytest.fixture
async def operator(settings: Settings):
    """The operator's session: over HTTPS (the lab's, test_tls_default's) it trusts the
    installation's CA alone, made here before the gateway starts."""
    from shared import tls

    context = None
    if settings.gateway_url.startswith("https://"):
        tls.ensure_installation_tls(settings)
        context = tls.client_context(settings)
    async with aiohttp.ClientSession(
        base_url=settings.gateway_url,
        headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
        connector=aiohttp.TCPConnector(ssl=context) if context else None,
    ) as session:
        yield session


@pytest.fixture(autouse=True, scope="session")
def quiet_logs():
    """Tests log JSON at warning and above (pytest shows it for failing tests)."""
    from shared.logging import configure_logging

    configure_logging(Settings(log_format="json", log_level="warning"))
