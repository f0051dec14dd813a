"""FERRY_GATEWAY_WORKERS=N: N gateway processes on one port, and the small supervisor that runs
them.

Each worker is a whole gateway (`python -m services.gateway --worker`): its own database pool,
broker connection, outbox relay and live feed; the kernel spreads new connections among them
(SO_REUSEPORT). What a worker keeps in memory is its own: the token-failure rate limit and the
request metrics count per worker.

A worker that dies takes the whole gateway down: the others are stopped and the supervisor
exits non-zero, so that what runs the gateway (systemd's Restart=on-failure, compose's restart
policy) starts it again whole, and sees that it happened. Restarting one worker in place would
hide a crash loop behind a gateway that still answers.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

# How long the workers get to stop after SIGTERM (a Host's own stop waits up to 30 s for
# in-flight work) before they are killed.
STOP_GRACE_S = 40.0


def worker_argv() -> list[str]:
    return [sys.executable, "-m", "services.gateway", "--worker"]


def check(settings: Settings) -> str | None:
    """What is wrong with running N workers under these settings, or None."""
    if settings.gateway_workers > 1 and settings.gateway_port == 0:
        return (f"FERRY_GATEWAY_WORKERS={settings.gateway_workers} needs a fixed "
                "FERRY_GATEWAY_PORT: with port 0 every worker would listen on a port of its own")
    return None


async def supervise(workers: int) -> int:
    """Start the workers, wait for SIGTERM/SIGINT or for one of them to exit, then stop the
    rest. Returns the exit code: 0 after a requested stop that every worker ended cleanly."""
    procs = [await asyncio.create_subprocess_exec(*worker_argv(), stdin=asyncio.subprocess.DEVNULL)
             for _ in range(workers)]
    log.info("gateway workers started", workers=workers, pids=[p.pid for p in procs])
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    asked = asyncio.create_task(stopping.wait())
    exits = {asyncio.create_task(p.wait()): p for p in procs}
    done, _ = await asyncio.wait({asked, *exits}, return_when=asyncio.FIRST_COMPLETED)
    # A stop asked of the whole process group (systemd's SIGTERM to the unit's cgroup, a
    # Ctrl-C) reaches the workers too: one that ends first is stopping, not dying.
    died = [] if stopping.is_set() else [exits[task] for task in done if task is not asked]
    for proc in died:
        log.error("a gateway worker exited: stopping the gateway", pid=proc.pid,
                  exit_code=proc.returncode)
    asked.cancel()
    await stop(procs)
    if died:
        return 1
    codes = [p.returncode for p in procs]
    if any(codes):
        log.error("gateway workers did not stop cleanly", exit_codes=codes)
        return 1
    log.info("gateway workers stopped", workers=workers)
    return 0


async def stop(procs: list[asyncio.subprocess.Process]) -> None:
    """SIGTERM to every worker still running, wait for all together, SIGKILL the late."""
    running = [p for p in procs if p.returncode is None]
    for proc in running:
        proc.terminate()
    if not running:
        return
    _, late = await asyncio.wait([asyncio.create_task(p.wait()) for p in running],
                                 timeout=STOP_GRACE_S)
    for proc in running:
        if proc.returncode is None:
            log.error("a gateway worker did not stop in time: killed", pid=proc.pid)
            proc.kill()
    if late:
        await asyncio.wait(late)
