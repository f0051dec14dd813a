"""The composition root: one process hosting some services (and maybe the gateway) over one
database pool, one broker connection and one outbox relay.

Lifecycle, as nameko orders it: start opens connections and then takes work (what it opened is
closed again if a later step fails); stop first stops every consumer taking new messages, then
lets the in-flight handlers of all of them finish together (or time out), then closes the
broker and the pool; kill drops everything at once and never raises (what a crash looks like to
the others).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial

import asyncpg
from aiohttp import web

from services.topology import SERVICES, router_of, topology
from shared.bus import Bus, Consumer
from shared.cutover_adapters import CutoverAdapters
from shared.deadlines import watchdog
from shared.health import dependency_probes
from shared.logging import configure_logging, get_logger
from shared.metrics import start_metrics_server
from shared.periodic import Every
from shared.providers import make_provider
from shared.providers.base import Provider
from shared.relay import OutboxRelay
from shared.retention import pruner
from shared.service import Deps
from shared.settings import Settings
from shared.store.db import open_pool
from shared.store.outbox import own_channel
from shared.store.sealed import open_secrets_key
from shared.store.session import Store
from shared.topology import Names

log = get_logger(__name__)

__all__ = ["SERVICES", "Host", "main", "router_of", "serve"]

USES_PROVIDER = {"creator", "configurator", "provisioner", "cutover"}
# The process of the coordinator (one small service, whatever the deployment) prunes the store
# and watches the deadlines.
PRUNES = "coordinator"
GATEWAY_POOL = 12  # database connections added for a Host that runs the gateway
# Longest one step of a stop may wait for the broker or the database: a consumer's cancel, a
# channel's close, the pool's close. Each is a round trip that takes milliseconds on a live
# connection; on one the network silently dropped the answer never comes (asyncpg's pool close
# waits for the server to end each connection), and the stop would hang until the supervisor's
# SIGKILL (systemd's TimeoutStopSec). Past it the step's connection is dropped instead.
CLOSE_TIMEOUT_S = 5.0


def bounded(what: str, close: Callable[[], Awaitable[object]],
            dropped: Callable[[], object] | None = None,
            timeout: float | None = None) -> Callable[[], Awaitable[None]]:
    """`close`, given `timeout` seconds (CLOSE_TIMEOUT_S); past them it is cancelled, `dropped`
    runs (terminating what it closed) and the stop goes on."""

    async def run() -> None:
        limit = CLOSE_TIMEOUT_S if timeout is None else timeout
        try:
            await asyncio.wait_for(close(), limit)
        except asyncio.TimeoutError:
            log.warning("stop: no answer in time, connection dropped", what=what,
                        timeout_s=limit)
            if dropped is not None:
                dropped()
    return run


class Host:
    def __init__(self, settings: Settings, services: tuple[str, ...] | list[str], *,
                 provider: Provider | None = None, gateway: bool = False,
                 cutover: CutoverAdapters | None = None):
        self.settings = settings
        self.services = list(services)
        # A provider handed in belongs to the caller, who closes it; one the host makes is
        # closed by the host when it stops.
        self.provider = provider
        # The cutover's reach (SSH, DNS, prober): a test may hand in doubles at this edge.
        self.cutover = cutover or CutoverAdapters.from_settings(settings)
        self.with_gateway = gateway
        self.pool: asyncpg.Pool | None = None
        self.bus: Bus | None = None
        self.relay: OutboxRelay | None = None
        # The coordinator's process also runs the passes over the whole store.
        self.passes: list[Every] = []
        self.consumers: list = []  # the services' Consumers, and the gateway's LiveFeed
        self.gateway_app: web.Application | None = None
        self._site_runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._closing = AsyncExitStack()
        self._start_tasks: set[asyncio.Task] = set()
        self.port: int | None = None
        self.boot_port: int | None = None  # the boot listener's (services/gateway/boot.py)
        self.metrics_port: int | None = None  # this process's own /metrics, without a gateway

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self._closing.aclose()
            raise
        log.info("host started", services=self.services, gateway=self.with_gateway,
                 port=self.port, metrics_port=self.metrics_port)

    async def _start(self) -> None:
        s = self.settings
        close = self._closing
        # The gateway's VM endpoints take the pool once per request (token, transaction and
        # answer on one connection); with a thousand VMs reporting at once it gets its own
        # share (docs/performance.md).
        need = 4 + 2 * len(self.services) + (GATEWAY_POOL if self.with_gateway else 0)
        # An operator running many processes against one PostgreSQL caps each pool.
        self.pool = await open_pool(s, max_size=min(need, s.database_pool_max or need))
        close.push_async_callback(bounded("the database pool", self.pool.close,
                                           self.pool.terminate))
        # The secrets key is read where secrets are used: the gateway stores the group's
        # replication password and hands it to the database VMs; no service touches it.
        store = Store(self.pool, await open_secrets_key(s) if self.with_gateway else None,
                      wake=own_channel())
        self.bus = Bus(s.amqp_url, Names(s.bus_prefix), s.retry_delays, topology())
        close.push_async_callback(bounded("the broker connection", self.bus.close))
        await self.bus.connect()
        self.relay = OutboxRelay(store, self.bus, s.database_schema)
        await self.relay.start()
        close.push_async_callback(bounded("the outbox relay", self.relay.stop))
        if self.provider is None and set(self.services) & USES_PROVIDER:
            self.provider = make_provider(s)
            close.push_async_callback(self.provider.close)
        deps = Deps(store=store, settings=s, provider=self.provider, topology=self.bus.topology,
                    cutover=self.cutover)
        if self.with_gateway:
            await self._start_gateway(deps)
        elif s.metrics_port:
            self._metrics_runner, self.metrics_port = await start_metrics_server(
                s.metrics_host, s.metrics_port, dependency_probes(store, self.bus))
            close.push_async_callback(self._metrics_runner.cleanup)
        if PRUNES in self.services:
            for every in (pruner(store, s), watchdog(store, s)):
                every.start()
                # A pass may be mid-query on a connection the network dropped silently:
                # bounded like every other step that waits on the database.
                close.push_async_callback(bounded(f"the {every.name} pass", every.stop,
                                                  every.abandon))
                self.passes.append(every)
        for service in self.services:
            router = router_of(service)
            consumer = Consumer(self.bus, service, partial(router.dispatch, deps=deps), s.prefetch)
            await consumer.start()
            close.push_async_callback(bounded(f"{service}'s channel", consumer.close))
            self.consumers.append(consumer)
        for service in self.services:
            for hook in router_of(service).start_hooks:
                self._start_hook(service, hook, deps)

    async def _start_gateway(self, deps: Deps) -> None:
        from services.gateway.app import build_app, ssl_context
        from services.gateway.live import start_live_feed
        from services.gateway.protocol import GatewayRunner

        self.gateway_app = build_app(deps, self.bus)
        self._site_runner = GatewayRunner(self.gateway_app, access_log=None)
        await self._site_runner.setup()
        self._closing.push_async_callback(self._site_runner.cleanup)
        # The live feed hears events before the first request is taken, so a screen that
        # connects as soon as the gateway answers misses nothing.
        feed = await start_live_feed(self.gateway_app, self.bus)
        self._closing.push_async_callback(bounded("the live feed's channel", feed.close))
        self.consumers.append(feed)
        # Workers of one gateway (FERRY_GATEWAY_WORKERS) share its port: the kernel spreads
        # the connections among them (SO_REUSEPORT).
        site = web.TCPSite(self._site_runner, self.settings.gateway_host, self.settings.gateway_port,
                           ssl_context=ssl_context(self.settings),
                           reuse_port=self.settings.gateway_workers > 1 or None)
        await site.start()
        self.port = self._site_runner.addresses[0][1]
        await self._start_boot_listener()

    async def _start_boot_listener(self) -> None:
        """Plain HTTP for iPXE's boot chain alone (services/gateway/boot.py), where VMs boot
        through libvirt's migration network."""
        from services.gateway.boot import boot_app

        s = self.settings
        if not s.gateway_boot_port or s.provider != "libvirt":
            return
        runner = web.AppRunner(boot_app(s), access_log=None)
        await runner.setup()
        self._closing.push_async_callback(runner.cleanup)
        # Every worker of the gateway serves the boot port too, as it serves the main one.
        await web.TCPSite(runner, s.gateway_host, s.gateway_boot_port,
                          reuse_port=s.gateway_workers > 1 or None).start()
        self.boot_port = runner.addresses[0][1]

    def _start_hook(self, service: str, hook, deps: Deps) -> None:
        """Run a service's start-up work beside its consumers (it may take a while: admitting
        and creating VMs), cancelled if the host stops first; a failure is logged, and the
        next event does the same work."""

        async def run() -> None:
            try:
                await hook(deps)
            except Exception:  # noqa: BLE001 - logged; events retry the same work
                log.exception("start-up work failed", service=service, work=hook.__name__)

        task = asyncio.get_running_loop().create_task(run())
        self._start_tasks.add(task)
        task.add_done_callback(self._start_tasks.discard)

        async def cancel() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        self._closing.push_async_callback(cancel)

    async def stop(self, timeout: float = 30.0) -> None:
        consumers, self.consumers = self.consumers, []
        await asyncio.gather(*(bounded("a consumer's cancel", c.stop_taking_work)()
                               for c in consumers))
        in_flight = [task for c in consumers for task in c.in_flight()]
        if in_flight:
            await asyncio.wait(in_flight, timeout=timeout)
        # The rest in the reverse order of start: consumers' channels, the gateway, the
        # provider the host made, the relay, the broker, the pool.
        await self._closing.aclose()
        log.info("host stopped", services=self.services)

    async def kill(self) -> None:
        """Drop everything now: unacked messages go back to their queues, open transactions
        roll back. Never raises."""
        for consumer in self.consumers:
            consumer.abandon()
        for task in self._start_tasks:
            task.cancel()
        try:
            if self.relay:
                self.relay.abandon()
            for every in self.passes:
                every.abandon()
            if self.bus and self.bus.connection:
                await self.bus.connection.close()
            if self._site_runner:
                await self._site_runner.cleanup()
            if self._metrics_runner:
                await self._metrics_runner.cleanup()
            if self.pool:
                self.pool.terminate()
        except Exception as exc:  # noqa: BLE001 - a kill must not fail
            log.warning("kill: ignoring", error=str(exc))


async def serve(settings: Settings, services: list[str], *, gateway: bool,
                provider: Provider | None = None) -> None:
    """Run until SIGINT or SIGTERM, then stop gracefully. `provider`: one made by the caller
    (bench/fleet.py's), else the one the settings name."""
    host = Host(settings, services, gateway=gateway, provider=provider)
    await host.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await host.stop()


def main(services: list[str], *, gateway: bool = False) -> None:
    settings = Settings()
    configure_logging(settings)
    asyncio.run(serve(settings, services, gateway=gateway))
