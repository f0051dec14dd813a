"""A TCP relay the test can cut and restore: the gateway reaches PostgreSQL or RabbitMQ through
it, and a cut is what the gateway sees when that server goes away (connections reset, new ones
refused), without touching the machine's shared servers.

`blackhole()` is the other network fault: packets silently dropped. Nothing is reset; open
connections fall silent (what is sent into them is dropped, nothing comes back), and new ones
are accepted but never reach the server. After `restore()` new connections go through again,
but the silenced ones stay silent for good, as a connection does whose state a firewall or NAT
forgot: only the client's own heartbeat or time-out can tell it is dead. (Their server side is
closed at restore, as the server's own keepalive would close it in the end, so that a
PostgreSQL backend does not hold its locks for the rest of the test.)"""

from __future__ import annotations

import asyncio
import contextlib


class _Link:
    """One client connection and, once opened, its connection to the server."""

    def __init__(self, client: asyncio.StreamWriter):
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.silent = False


class TcpProxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._links: set[_Link] = set()
        self._dropping = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port or 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, original: str) -> str:
        """`original` (a postgresql:// or amqp:// URL) pointed at this relay."""
        host_port = f"{self.target[0]}:{self.target[1]}"
        assert host_port in original, (host_port, original)
        return original.replace(host_port, f"127.0.0.1:{self.port}")

    async def cut(self) -> None:
        """The server is gone: open connections reset, new ones refused."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    def blackhole(self) -> None:
        """Packets dropped: every open connection falls silent, new ones are accepted and
        then never answered (see the module's docstring)."""
        self._dropping = True
        for link in self._links:
            link.silent = True

    async def restore(self) -> None:
        """The server is back (a no-op if it was neither cut nor blackholed)."""
        self._dropping = False
        for link in list(self._links):
            if link.silent and link.server is not None:
                with contextlib.suppress(Exception):
                    link.server.transport.abort()
                link.server = None
        if self._server is None:
            await self.start()

    @property
    def silenced(self) -> int:
        """How many client connections were silenced by a blackhole and are still open."""
        return sum(1 for link in self._links if link.silent and not link.client.is_closing())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        self._links.add(link)
        if self._dropping:
            link.silent = True
            self._spawn(self._swallow(reader, link))
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._links.discard(link)
            writer.transport.abort()
            return
        link.server = up_writer
        self._writers |= {writer, up_writer}
        self._spawn(self._pipe(reader, up_writer, link))
        self._spawn(self._pipe(up_reader, writer, link))

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._pipes.add(task)
        task.add_done_callback(self._pipes.discard)

    async def _swallow(self, reader: asyncio.StreamReader, link: _Link) -> None:
        """A connection made during a blackhole: read and drop until the client gives up."""
        try:
            while await reader.read(65536):
                pass
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            link.client.transport.abort()
            self._links.discard(link)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    link: _Link) -> None:
        try:
            while data := await source.read(65536):
                if link.silent:
                    continue  # dropped on the floor, as a blackholed network drops packets
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if not link.silent or sink is not link.client:
                # A silenced link's client side closes only when its client closes it, never
                # because its server side went.
                sink.transport.abort()
            self._writers.discard(sink)
            if link.client.is_closing():
                self._links.discard(link)
