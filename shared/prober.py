"""Downtime measured from outside: a prober asks for the site by name, again and again, all
through a cutover, as a visitor would, and reports what it saw.

Each probe resolves the name at the zone's server (so a DNS change is seen as soon as it is
made, like a visitor whose cache just expired) and requests the page from the address it got.
A good answer is a 2xx whose `X-Ferry-Site` header (or, failing that, the address it came
from) says which side served it: the old site or the new one. The report gives the last good
answer from the old site, the first good answer from the new one, and every failed request in
between; the downtime is the time between those two answers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import dns.rdatatype

SITE_HEADER = "X-Ferry-Site"


@dataclass(frozen=True)
class Probe:
    at: float  # seconds since the prober started
    address: str | None
    status: int | None
    side: str | None  # "old", "new", or None when the answer could not be placed
    error: str | None = None

    @property
    def good(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300 \
            and self.side is not None


@dataclass
class ProbeReport:
    probes: list[Probe]
    last_old: Probe | None = None
    first_new: Probe | None = None
    failures: list[Probe] = field(default_factory=list)

    @classmethod
    def of(cls, probes: list[Probe]) -> ProbeReport:
        report = cls(probes)
        report.first_new = next((p for p in probes if p.good and p.side == "new"), None)
        before = probes if report.first_new is None else \
            [p for p in probes if p.at < report.first_new.at]
        report.last_old = next((p for p in reversed(before) if p.good and p.side == "old"), None)
        start = report.last_old.at if report.last_old else float("-inf")
        end = report.first_new.at if report.first_new else float("inf")
        report.failures = [p for p in probes if start < p.at < end and not p.good]
        return report

    @property
    def downtime_s(self) -> float | None:
        """From the last good answer of the old site to the first of the new one; None if the
        new site never answered."""
        if self.first_new is None:
            return None
        return self.first_new.at - (self.last_old.at if self.last_old else 0.0)

    def summary(self) -> str:
        if self.first_new is None:
            return f"the new site never answered ({len(self.probes)} probes)"
        last_old = f"{self.last_old.at:.2f}s" if self.last_old else "never"
        return (f"downtime {self.downtime_s:.2f}s: last good answer from the old site at "
                f"{last_old}, first from the new site at {self.first_new.at:.2f}s, "
                f"{len(self.failures)} failed requests between ({len(self.probes)} probes)")


class Prober:
    """Probe `http://<name>:<port><path>` every `interval` seconds until stopped."""

    def __init__(self, name: str, dns_server: str, dns_port: int, *, port: int = 80,
                 path: str = "/", interval: float = 0.2, timeout: float = 2.0,
                 side_of_address: Callable[[str], str | None] = lambda address: None):
        self.name = name
        self.dns_server = dns_server
        self.dns_port = dns_port
        self.port = port
        self.path = path
        self.interval = interval
        self.timeout = timeout
        self.side_of_address = side_of_address
        self.probes: list[Probe] = []
        self._stop = asyncio.Event()
        self._started = 0.0

    async def resolve(self) -> str:
        query = dns.message.make_query(self.name, "A")
        response = await dns.asyncquery.udp(query, self.dns_server, port=self.dns_port,
                                            timeout=self.timeout)
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.A:
                return next(iter(rrset)).to_text()
        raise LookupError(f"{self.name} has no A record")

    async def probe_once(self, session: aiohttp.ClientSession) -> Probe:
        at = time.monotonic() - self._started
        address = None
        try:
            address = await self.resolve()
            url = f"http://{address}:{self.port}{self.path}"
            async with session.get(url, headers={"Host": self.name},
                                   allow_redirects=False) as response:
                await response.read()
                side = response.headers.get(SITE_HEADER) or self.side_of_address(address)
                return Probe(at, address, response.status, side)
        except (OSError, asyncio.TimeoutError, aiohttp.ClientError, LookupError,
                dns.exception.DNSException) as exc:
            return Probe(at, address, None, None, error=f"{type(exc).__name__}: {exc}"[:200])

    async def run(self) -> ProbeReport:
        """Probe until `stop()`; then the report."""
        self._started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        # A fresh connection per probe: a kept-alive one would hide a switch of address.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while not self._stop.is_set():
                self.probes.append(await self.probe_once(session))
                try:
                    await asyncio.wait_for(self._stop.wait(), self.interval)
                except asyncio.TimeoutError:
                    pass
        return ProbeReport.of(self.probes)

    def stop(self) -> None:
        self._stop.set()
