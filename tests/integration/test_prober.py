"""The outside prober measures a cutover as a visitor sees it: by name through a real BIND,
old site to maintenance to new site, and reports the last good old answer, the first good new
one and every failure between."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from lab.dns_server import AuthoritativeServer, named_missing
from shared.prober import SITE_HEADER, Probe, ProbeReport, Prober
from shared.dns import Rfc2136Driver
from tests.conftest import eventually, free_port

pytestmark = pytest.mark.integration


class Site:
    """A web server on one loopback address, answering as `side`, or 503 in maintenance."""

    def __init__(self, address: str, side: str):
        self.address, self.side, self.maintenance = address, side, False
        self.runner: web.AppRunner | None = None

    async def page(self, request: web.Request) -> web.Response:
        if self.maintenance:
            return web.Response(status=503, text="maintenance")
        return web.Response(text=f"shop ({self.side})", headers={SITE_HEADER: self.side})

    async def start(self, port: int) -> None:
        app = web.Application()
        app.router.add_get("/", self.page)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.address, port).start()


def test_the_report_spans_the_last_old_and_first_new_answer():
    """Failures before the old site's last good answer or after the new one's first do not
    count; the ones between do."""
    probes = [Probe(0.0, "a", None, None, "early blip"), Probe(1.0, "a", 200, "old"),
              Probe(2.0, "a", 503, None), Probe(3.0, None, None, None, "refused"),
              Probe(4.0, "b", 200, "new"), Probe(5.0, "b", 500, None)]
    report = ProbeReport.of(probes)
    assert (report.last_old.at, report.first_new.at, report.downtime_s) == (1.0, 4.0, 3.0)
    assert [p.at for p in report.failures] == [2.0, 3.0]
    assert ProbeReport.of(probes[:3]).downtime_s is None


async def test_a_cutover_seen_from_outside(tmp_path):
    """Old site, then maintenance (503), then DNS points at the new site: the prober's report
    has its last good old answer before maintenance, its first good new answer after the DNS
    change, and the 503s between."""
    if named_missing():
        pytest.skip(named_missing())
    port = free_port()
    old, new = Site("127.0.0.1", "old"), Site("127.0.0.2", "new")
    await old.start(port)
    await new.start(port)
    async with AuthoritativeServer(tmp_path / "named", "shop.example", {"@": "127.0.0.1"},
                                   port=free_port(), ttl=1) as server:
        prober = Prober("shop.example", "127.0.0.1", server.port, port=port, interval=0.05)
        running = asyncio.create_task(prober.run())
        try:
            def seen(side: str | None, status: int | None = 200, n: int = 3) -> bool:
                return sum(p.side == side and p.status == status for p in prober.probes) >= n
            await eventually(lambda: seen("old"), what="good answers from the old site")
            old.maintenance = True
            await eventually(lambda: seen(None, 503), what="the maintenance page")
            await Rfc2136Driver("127.0.0.1", "shop.example", server.key,
                                port=server.port).replace("shop.example", "A", ["127.0.0.2"], 1)
            await eventually(lambda: seen("new"), what="good answers from the new site")
        finally:
            prober.stop()
            report = await running
            await old.runner.cleanup()
            await new.runner.cleanup()
    assert report.last_old.side == "old" and report.first_new.side == "new"
    assert report.failures and all(p.status == 503 for p in report.failures)
    assert report.first_new.address == "127.0.0.2"
    assert 0 < report.downtime_s == report.first_new.at - report.last_old.at
    assert "downtime" in report.summary()
