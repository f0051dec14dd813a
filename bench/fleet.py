"""The processes of bench.processes: a service as its own process with the fleet provider, and
the VM drivers that play the simulated VMs.

The sim provider (shared/providers/sim.py) keeps its VM records on disk, so the creator, the
configurator and the provisioner, each in its own process, see the same VMs; but it starts a
Python process per boot, which at a thousand VMs would measure process start-up, not the
pipeline. The fleet provider is the sim provider whose boots go instead to a few long-lived
driver processes: each boot is one line appended to the feed of driver crc32(vm) % drivers
(so both boots of a VM go to one driver, in order), and the driver plays that boot over HTTP
to the gateway with shared.vmclient, as bench.pipeline's in-process players do.

    python -m bench.fleet service creator --drivers 4 [--port P]   # FERRY_* settings from env
    python -m bench.fleet driver --feed F --gateway URL --concurrency 25 --stats S
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import zlib
from pathlib import Path

import aiohttp

from bench.pipeline import play_vm
from shared.providers.base import BootSource
from shared.providers.sim import SimProvider


def feed_path(folder: Path, driver: int) -> Path:
    return folder / f"boots-{driver}.log"


def driver_of(vm_id: str, drivers: int) -> int:
    return zlib.crc32(vm_id.encode()) % drivers


class FleetProvider(SimProvider):
    """The sim provider, its boots handed to the bench's VM drivers instead of a process each."""

    def __init__(self, folder: Path, drivers: int):
        super().__init__(folder)
        self.drivers = drivers

    async def boot(self, ref: str, source: BootSource, *,
                   kernel_args: dict[str, str] | None = None) -> None:
        record = self._load(ref)
        if kernel_args:
            # As the sim provider: a disk boot keeps the network boot's token (gateway.env).
            record["kernel_args"] = kernel_args
            self._save(ref, record)
        args = record["kernel_args"]
        vm_id = args["ferry.vm"]
        line = json.dumps({"vm": vm_id, "token": args["ferry.token"], "source": str(source)})
        # O_APPEND and one write per line: the service processes sharing a feed add whole lines.
        fd = os.open(feed_path(self.folder, driver_of(vm_id, self.drivers)),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def serve_service(name: str, drivers: int, port: int | None) -> None:
    """One service (or the gateway) as `python -m services.<name>` runs it, with the fleet
    provider handed in; a second gateway replica gets a port of its own."""
    from services.runtime import serve
    from shared.logging import configure_logging
    from shared.settings import Settings

    settings = Settings()
    if port:
        settings = settings.model_copy(update={"gateway_port": port})
    configure_logging(settings)
    provider = FleetProvider(settings.state_dir / "sim", drivers)
    gateway = name == "gateway"
    asyncio.run(serve(settings, [] if gateway else [name], gateway=gateway, provider=provider))


async def drive(feed: Path, gateway: str, concurrency: int, stats_path: Path,
                errors_path: Path) -> None:
    """Play every boot appended to `feed` until SIGTERM; then write the counts to `stats_path`.
    Failures go to `errors_path` as they happen, so the bench stops at the first."""
    stats = {"boots": 0, "requests": 0, "errors": 0}
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    slots = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task] = set()
    feed.touch()

    async def play(boot: dict, session: aiohttp.ClientSession) -> None:
        async with slots:
            try:
                # Awaited first, added after: `+=` would read the count before the await.
                made = await play_vm(session, gateway, boot["vm"], BootSource(boot["source"]),
                                     boot["token"])
                stats["requests"] += made
            except Exception as exc:  # noqa: BLE001 - reported to the bench, which fails the run
                stats["errors"] += 1
                with open(errors_path, "a") as out:
                    out.write(f"{boot['vm']} {boot['source']}: {exc}"[:300] + "\n")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        with open(feed) as lines:
            partial = ""
            while not stopping.is_set():
                chunk = lines.read()
                if not chunk:
                    # Nothing new: look again shortly (a file has no readiness to wait on, and
                    # 5 ms is short beside a boot's own round trips).
                    try:
                        await asyncio.wait_for(stopping.wait(), 0.005)
                    except asyncio.TimeoutError:
                        pass
                    continue
                partial += chunk
                *whole, partial = partial.split("\n")
                for text in whole:
                    stats["boots"] += 1
                    task = asyncio.create_task(play(json.loads(text), session))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    stats_path.write_text(json.dumps(stats))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    service = sub.add_parser("service")
    service.add_argument("name")
    service.add_argument("--drivers", type=int, required=True)
    service.add_argument("--port", type=int)
    driver = sub.add_parser("driver")
    driver.add_argument("--feed", type=Path, required=True)
    driver.add_argument("--gateway", required=True)
    driver.add_argument("--concurrency", type=int, default=25)
    driver.add_argument("--stats", type=Path, required=True)
    driver.add_argument("--errors", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.what == "service":
        serve_service(args.name, args.drivers, args.port)
    else:
        asyncio.run(drive(args.feed, args.gateway, args.concurrency, args.stats, args.errors))


if __name__ == "__main__":
    main()
