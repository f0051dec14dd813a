"""What /readyz says of each dependency (shared/health.py), and where the health check of
systemd and compose looks for a process (services/healthcheck.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.healthcheck import readyz_url
from shared.health import readiness
from shared.settings import Settings


async def test_readiness_names_what_did_not_answer_and_says_nothing_of_where():
    async def answers():
        pass

    async def refuses():
        raise ConnectionRefusedError("connect to 10.1.2.3:5432 as ferry:s3cret failed")

    async def hangs():
        await asyncio.Event().wait()

    found = await readiness({"database": refuses, "broker": answers, "other": hangs},
                            timeout_s=0.05)
    assert found.ready is False
    assert found.failed == ["database", "other"]
    assert found.dependencies["broker"].ok and "answered in" in found.dependencies["broker"].detail
    assert found.dependencies["database"].detail == "unavailable (ConnectionRefusedError)"
    assert found.dependencies["other"].detail == "did not answer within 0.05 s"
    assert "10.1.2.3" not in found.model_dump_json() and "s3cret" not in found.model_dump_json()
    assert (await readiness({"broker": answers})).ready is True


def test_the_healthcheck_asks_the_process_where_its_settings_put_it():
    settings = Settings(gateway_host="0.0.0.0", gateway_port=8470, metrics_host="::",
                        metrics_port=9471)
    assert readyz_url("gateway", settings) == "https://127.0.0.1:8470/readyz"
    assert readyz_url("archiver", settings) == "http://[::1]:9471/readyz"
    tls = settings.model_copy(update={"gateway_tls_cert": Path("/etc/ferryman/gw.pem"),
                                      "gateway_host": "gw.example"})
    assert readyz_url("gateway", tls) == "https://gw.example:8470/readyz"
    assert readyz_url("archiver", settings.model_copy(update={"metrics_port": 0})) is None
