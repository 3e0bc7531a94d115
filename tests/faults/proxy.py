"""An asyncio TCP proxy per directed link, with added one-way delay and black-holing.

This kernel has no `tc netem`, so delay is added in user space. Node `a` reaches peer `b`
through the listener of link (a, b): the controller gives every node its own cluster description
whose peer entries point at that node's proxies (its own entry stays its real address).

Delay and black-holing are set per *flow* (src, dst): every byte node `src` sends to node `dst`,
whichever of them opened the TCP connection. Flow (a, b) is the client→server pipe of link
(a, b) (a's requests) and the server→client pipe of link (b, a) (a's replies to b's requests).
So `set_delay(f, l, 0.1)` delays every acknowledgement a follower f sends its leader l, and a
one-way black hole (a, b) loses exactly a's messages to b — the simulator's one-way link.

Delay keeps order: each pipe is a FIFO whose chunks leave at `arrival + delay`.

Black-holing discards bytes. A TCP stream with a hole in it is garbage (HTTP/2 framing, HPACK
state), so when a flow is healed every connection that lost bytes is reset, and gRPC reconnects.
While a flow is black-holed the connections stay open: calls hang until their deadline, which
is exactly what `test_black_holed_link_hangs_nothing` wants to see.

`hold_while_down=True` makes a node that is down look like a crashed *host* rather than a
crashed process: a connection to it is accepted and held (the proxy retries the node every
20 ms for up to 10 s) instead of being refused. gRPC then waits in CONNECTING rather than
entering its reconnect back-off (1 s, ×1.6), so a restarted node hears its leader at once.

The proxy runs its own event loop in a daemon thread; every public method is thread-safe and
returns once the change is in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
CONNECT_TIMEOUT = 10.0
CHUNK = 65536
HOLD_RETRY = 0.02

Flow = tuple[int, int]


@dataclass
class FlowStats:
    forwarded: int = 0
    discarded: int = 0


@dataclass(eq=False)
class _Connection:
    link: Flow
    transports: list[asyncio.WriteTransport] = field(default_factory=list)
    lost: set[Flow] = field(default_factory=set)  # flows whose bytes were discarded

    def abort(self) -> None:
        for transport in self.transports:
            transport.abort()


class LinkProxies:
    """Listeners for directed links; `socket_factory(a)` (optional) makes the outbound socket
    of link (a, ·) — e.g. inside node a's network namespace, so that kernel cuts apply."""

    def __init__(
        self,
        listen_host: str,
        socket_factory: Callable[[int], socket.socket] | None = None,
        *,
        hold_while_down: bool = False,
    ) -> None:
        self.listen_host = listen_host
        self.hold_while_down = hold_while_down
        self._socket_factory = socket_factory
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="link-proxies")
        self._thread.daemon = True
        self._thread.start()
        self._servers: dict[Flow, asyncio.Server] = {}
        self._targets: dict[Flow, tuple[str, int]] = {}
        self._delays: dict[Flow, float] = {}
        self._blocked: frozenset[Flow] = frozenset()
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats: dict[Flow, FlowStats] = {}
        self._closed = False

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- public API (any thread) ----------------------------------------------------------------

    def add_link(self, a: int, b: int, target: tuple[str, int]) -> int:
        """Listen for node a's connections to node b; returns the listening port."""
        return self._call(self._add_link(a, b, target))

    def set_delay(self, src: int, dst: int, seconds: float) -> None:
        self._call(self._set(lambda: self._delays.__setitem__((src, dst), max(0.0, seconds))))

    def set_delays(self, delays: dict[Flow, float]) -> None:
        """Replace every delay at once (flows not named get none)."""
        self._call(self._set(lambda: self._replace_delays(delays)))

    def set_blocked(self, flows: Iterable[Flow]) -> None:
        """Black-hole exactly these flows; connections that lost bytes on a healed flow reset."""
        wanted = frozenset(flows)
        self._call(self._set_blocked(wanted))

    @property
    def blocked(self) -> frozenset[Flow]:
        return self._blocked

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._call(self._close(), timeout=10.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
        if not self._thread.is_alive():
            self._loop.close()

    # -- event-loop side ------------------------------------------------------------------------

    async def _set(self, change: Callable[[], object]) -> None:
        change()

    def _replace_delays(self, delays: dict[Flow, float]) -> None:
        self._delays = {flow: max(0.0, d) for flow, d in delays.items()}

    async def _set_blocked(self, wanted: frozenset[Flow]) -> None:
        self._blocked = wanted
        for connection in list(self._connections):
            healed = {flow for flow in connection.lost if flow not in wanted}
            if healed:
                connection.abort()

    async def _add_link(self, a: int, b: int, target: tuple[str, int]) -> int:
        link = (a, b)
        self._targets[link] = target
        self.stats.setdefault((a, b), FlowStats())
        self.stats.setdefault((b, a), FlowStats())

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Cancelled at close: end quietly (asyncio logs a cancelled handler as an error).
            with contextlib.suppress(asyncio.CancelledError):
                await self._serve(link, reader, writer)

        server = await asyncio.start_server(accept, self.listen_host, 0)
        self._servers[link] = server
        port: int = server.sockets[0].getsockname()[1]
        return port

    async def _serve(
        self, link: Flow, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        a, b = link
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = _Connection(link)
        connection.transports.append(client_writer.transport)
        self._connections.add(connection)
        try:
            try:
                upstream = await asyncio.wait_for(self._dial(a, link), CONNECT_TIMEOUT)
            except (OSError, TimeoutError):
                return
            server_reader, server_writer = upstream
            connection.transports.append(server_writer.transport)
            pipes = [
                asyncio.create_task(self._pipe(connection, (a, b), client_reader, server_writer)),
                asyncio.create_task(self._pipe(connection, (b, a), server_reader, client_writer)),
            ]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._connections.discard(connection)
            connection.abort()
            self._tasks.discard(task)

    async def _dial(self, a: int, link: Flow) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while True:
            try:
                return await self._open(a, self._targets[link])
            except ConnectionRefusedError:
                if not self.hold_while_down:
                    raise
            await asyncio.sleep(HOLD_RETRY)  # the node is down: try again shortly

    async def _open(
        self, a: int, target: tuple[str, int]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._socket_factory is None:
            return await asyncio.open_connection(*target)
        sock = self._socket_factory(a)
        try:
            await self._loop.sock_connect(sock, target)
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    async def _pipe(
        self,
        connection: _Connection,
        flow: Flow,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Copy reader → writer, each chunk leaving `delay` after it arrived, in order."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        stats = self.stats[flow]

        async def send() -> None:
            while True:
                item = await queue.get()
                if item is None:
                    return
                due, data = item
                wait = due - self._loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while not sender.done():
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    break
                if not data:
                    break
                if flow in self._blocked:
                    connection.lost.add(flow)
                    stats.discarded += len(data)
                    continue
                stats.forwarded += len(data)
                queue.put_nowait((self._loop.time() + self._delays.get(flow, 0.0), data))
            queue.put_nowait(None)
            with contextlib.suppress(ConnectionError, OSError):
                await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await sender

    async def _close(self) -> None:
        for server in self._servers.values():
            server.close()
        for connection in list(self._connections):
            connection.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
