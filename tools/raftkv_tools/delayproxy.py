"""A TCP proxy that delays, black-holes or holds traffic: the one used by `raftkv bench --wan`
(its own process, `raftkv-delayproxy`) and by the fault tests (LinkProxies, in a thread).

    async with DelayProxy("127.0.0.1:50050", delay=0.05) as proxy:   # listens on a free port
        ...connect to proxy.address: each direction arrives 50 ms late (RTT + 100 ms)

    python -m raftkv_tools.delayproxy --delay 50ms --map 127.0.0.1:6001=127.0.0.1:5001 \
                                             --map 127.0.0.1:6002=127.0.0.1:5002

Used to put a WAN between nodes on one machine (the kernel here has no `tc netem`). Bytes that
arrive at time t are written out at t + delay (never earlier: asyncio timers fire at or after
their deadline, so the added delay is ≥ the configured one, a fraction of a millisecond more on
an idle machine); order is kept, EOF and resets are passed on after the same delay. Both delays
can be changed while running (`set_delay`). Back-pressure: when the far side stops reading, or
more than `max_buffered` bytes wait in the delay line, the proxy stops reading from the sender.

Black-holing (`set_blocked`) discards the bytes of a direction while the connections stay open:
calls hang until their deadline. A TCP stream with a hole in it is garbage (HTTP/2 framing,
HPACK state), so when a direction is healed every connection that lost bytes on it is reset,
and gRPC reconnects.

`hold_while_down=True` makes a target that is down look like a crashed *host* rather than a
crashed process: a connection to it is accepted and held (the proxy retries the target every
20 ms for up to 10 s) instead of being refused. gRPC then waits in CONNECTING rather than
entering its reconnect back-off (1 s, ×1.6), so a restarted node hears its leader at once.

`LinkProxies` runs one DelayProxy per directed link between numbered nodes, in an event loop of
its own (a daemon thread), and sets delay and black holes per *flow* (src, dst): every byte
node `src` sends to node `dst`, whichever of them opened the TCP connection. Flow (a, b) is the
client→target direction of link (a, b) (a's requests) and the target→client direction of link
(b, a) (a's replies to b's requests). So `set_delay(f, l, 0.1)` delays every acknowledgement a
follower f sends its leader l, and a one-way black hole (a, b) loses exactly a's messages to b.

The proxy forwards raw TCP, so it works for gRPC/HTTP2, etcd's peer protocol, anything.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = ["DelayProxy", "Flow", "LinkProxies", "Pipe", "ProxyGroup", "main", "parse_delay"]

T = TypeVar("T")
DEFAULT_MAX_BUFFERED = 16 * 1024 * 1024
CONNECT_TIMEOUT = 10.0
HOLD_RETRY = 0.02

Flow = tuple[int, int]


@dataclass(eq=False)  # compared and hashed by identity: connections remember theirs
class Pipe:
    """One direction of a proxy: its delay, whether it is black-holed, and byte counters.

    LinkProxies shares one Pipe between the two proxies that carry a flow."""

    delay: float = 0.0
    blocked: bool = False
    forwarded: int = 0
    discarded: int = 0


def parse_delay(text: str) -> float:
    """'50ms', '0.05s', '0.05', '200us' → seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(us|µs|ms|s)?\s*", text)
    if not match:
        raise ValueError(f"not a delay: {text!r} (examples: 50ms, 0.05s)")
    value = float(match.group(1))
    unit = match.group(2) or "s"
    return value * {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not host:port: {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class _Connection:
    """Both sockets of one proxied connection, and the pipes on which it lost bytes."""

    def __init__(self) -> None:
        self.transports: list[asyncio.Transport] = []
        self.lost: set[Pipe] = set()

    def abort(self) -> None:
        for transport in self.transports:
            transport.abort()


class _Direction:
    """One direction of one connection: bytes from `source` reach `sink` after a delay."""

    def __init__(self, proxy: DelayProxy, pipe: Pipe, connection: _Connection) -> None:
        self._proxy = proxy
        self.pipe = pipe
        self._connection = connection
        self._loop = asyncio.get_running_loop()
        self._line: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self._buffered = 0
        self._timer: asyncio.TimerHandle | None = None
        self.source: asyncio.Transport | None = None
        self.sink: asyncio.Transport | None = None
        self._sink_paused = False
        self._held = False
        self._source_paused = False
        self.closed = False

    @property
    def delay(self) -> float:
        return self.pipe.delay

    def feed(self, data: bytes | None) -> None:
        """Bytes from the source (None for EOF) to write out after the delay, or to discard
        while the pipe is black-holed."""
        if self.closed:
            return
        if data:
            if self.pipe.blocked:
                self.pipe.discarded += len(data)
                self._connection.lost.add(self.pipe)
                return
            self.pipe.forwarded += len(data)
        due = self._loop.time() + self.delay
        self._line.append((due, data))
        if data:
            self._buffered += len(data)
        self._throttle()
        if self._timer is None:
            self._timer = self._loop.call_at(due, self._flush)

    def _flush(self) -> None:
        self._timer = None
        now = self._loop.time()
        sink = self.sink
        while self._line and self._line[0][0] <= now:
            _, data = self._line.popleft()
            if sink is None or sink.is_closing():
                self._line.clear()
                self._buffered = 0
                break
            if data is None:
                if sink.can_write_eof():
                    sink.write_eof()
                else:
                    sink.close()
            else:
                self._buffered -= len(data)
                sink.write(data)
        if self._line:
            self._timer = self._loop.call_at(self._line[0][0], self._flush)
        self._throttle()

    def sink_paused(self, paused: bool) -> None:
        self._sink_paused = paused
        self._throttle()

    def hold(self, held: bool) -> None:
        """Stop (or resume) reading the source, e.g. until the sink is connected."""
        self._held = held
        self._throttle()

    def _throttle(self) -> None:
        want_pause = self._held or self._sink_paused or self._buffered > self._proxy.max_buffered
        source = self.source
        if source is None or source.is_closing() or want_pause == self._source_paused:
            return
        self._source_paused = want_pause
        if want_pause:
            source.pause_reading()
        else:
            source.resume_reading()

    def close_after_delay(self) -> None:
        """The source broke (reset): close the sink once what it already sent is delivered."""
        if self.closed:
            return
        self.closed = True
        due = self._loop.time() + self.delay

        def close() -> None:
            self._flush_all()
            if self.sink is not None:
                self.sink.close()

        self._loop.call_at(due, close)

    def _flush_all(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sink = self.sink
        while self._line:
            _, data = self._line.popleft()
            if sink is not None and not sink.is_closing() and data:
                sink.write(data)
        self._buffered = 0

    def cancel(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._line.clear()
        self._buffered = 0


class _Side(asyncio.Protocol):
    """The protocol of one socket of a proxied connection.

    `inbound` carries what this socket receives, `outbound` what is written to it.
    """

    def __init__(self, proxy: DelayProxy, inbound: _Direction, outbound: _Direction) -> None:
        self.proxy = proxy
        self.inbound = inbound
        self.outbound = outbound
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.inbound.source = transport
        self.outbound.sink = transport
        self.proxy._transports.add(transport)
        self.connection.transports.append(transport)

    @property
    def connection(self) -> _Connection:
        return self.inbound._connection

    def data_received(self, data: bytes) -> None:
        self.inbound.feed(data)

    def eof_received(self) -> bool:
        self.inbound.feed(None)
        return True  # keep our half open: the other direction may still carry bytes

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.proxy._transports.discard(self.transport)
        # Nothing more can be written to this socket; what it sent still arrives, late.
        self.outbound.cancel()
        self.inbound.close_after_delay()

    def pause_writing(self) -> None:
        self.outbound.sink_paused(True)

    def resume_writing(self) -> None:
        self.outbound.sink_paused(False)


class _ClientSide(_Side):
    """The accepted socket: connects to the target, holding the client's bytes until then."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.proxy.connections += 1
        self.proxy._connections.add(self.connection)
        self.inbound.hold(True)
        task = asyncio.get_running_loop().create_task(self._connect())
        self.proxy._tasks.add(task)
        task.add_done_callback(self.proxy._tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy._connections.discard(self.connection)
        super().connection_lost(exc)

    async def _connect(self) -> None:
        proxy = self.proxy
        target_side = _Side(proxy, inbound=self.outbound, outbound=self.inbound)
        try:
            await asyncio.wait_for(self._dial(target_side), proxy.connect_timeout)
        except (OSError, TimeoutError):
            if self.transport is not None:
                self.transport.abort()
            return
        if self.transport is None or self.transport.is_closing():
            if target_side.transport is not None:
                target_side.transport.close()
            return
        self.inbound.hold(False)

    async def _dial(self, target_side: _Side) -> None:
        """Connect to the target; while it refuses, and the proxy holds, try again shortly."""
        proxy = self.proxy
        while True:
            try:
                await proxy._open(target_side)
                return
            except ConnectionRefusedError:
                if not proxy.hold_while_down:
                    raise
            if self.transport is None or self.transport.is_closing():
                return
            await asyncio.sleep(HOLD_RETRY)  # the target is down: try again shortly


class DelayProxy:
    """Listens on `listen` (default: a free loopback port) and forwards to `target`.

    `delay` is the one-way delay added in each direction; `delay_back` (default: `delay`) sets
    the target→client direction separately. `up` and `down` (default: new ones) are the Pipes
    of the two directions, for a caller that shares them between proxies. `socket_factory`
    (optional) makes the socket of each outbound connection, e.g. in a network namespace.
    """

    def __init__(
        self,
        target: str,
        *,
        delay: float = 0.0,
        delay_back: float | None = None,
        listen: str = "127.0.0.1:0",
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        hold_while_down: bool = False,
        connect_timeout: float = CONNECT_TIMEOUT,
        socket_factory: Callable[[], socket.socket] | None = None,
        up: Pipe | None = None,
        down: Pipe | None = None,
    ) -> None:
        self.target = target
        self._target_host, self._target_port = _split(target)
        self._listen_host, self._listen_port = _split(listen)
        if (up is not None or down is not None) and (delay or delay_back is not None):
            raise ValueError("with shared pipes, set the delays on the pipes")
        self.up = up if up is not None else Pipe()
        self.down = down if down is not None else Pipe()
        if up is None and down is None:
            self.set_delay(delay, delay_back)
        self.max_buffered = max_buffered
        self.hold_while_down = hold_while_down
        self.connect_timeout = connect_timeout
        self._socket_factory = socket_factory
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.Transport] = set()
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0

    @property
    def delay_up(self) -> float:
        return self.up.delay

    @property
    def delay_down(self) -> float:
        return self.down.delay

    def set_delay(self, delay: float, delay_back: float | None = None) -> None:
        """Change the delays; applies to bytes that arrive from now on."""
        back = delay if delay_back is None else delay_back
        if delay < 0 or back < 0:
            raise ValueError("delays must be ≥ 0")
        self.up.delay = delay
        self.down.delay = back

    def set_blocked(self, up: bool, down: bool | None = None) -> None:
        """Black-hole the client→target (`up`) and target→client (`down`, default: `up`)
        directions; connections that lost bytes on a direction healed now are reset."""
        self.up.blocked = up
        self.down.blocked = up if down is None else down
        self.reset_healed()

    def reset_healed(self) -> None:
        """Reset every connection that lost bytes on a pipe that is no longer blocked."""
        for connection in list(self._connections):
            if any(not pipe.blocked for pipe in connection.lost):
                connection.abort()

    async def _open(self, target_side: _Side) -> None:
        loop = asyncio.get_running_loop()
        if self._socket_factory is None:
            await loop.create_connection(lambda: target_side, self._target_host, self._target_port)
            return
        sock = self._socket_factory()
        try:
            await loop.sock_connect(sock, (self._target_host, self._target_port))
            await loop.create_connection(lambda: target_side, sock=sock)
        except BaseException:
            sock.close()
            raise

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def address(self) -> str:
        return f"{self._listen_host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._accept, self._listen_host, self._listen_port, reuse_address=True
        )

    def _accept(self) -> asyncio.Protocol:
        connection = _Connection()
        up = _Direction(self, self.up, connection)
        down = _Direction(self, self.down, connection)
        return _ClientSide(self, inbound=up, outbound=down)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for transport in list(self._transports):
                transport.abort()
            self._transports.clear()
            self._connections.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class ProxyGroup:
    """Several proxies with one delay setting, started and closed together."""

    def __init__(self, mappings: Sequence[tuple[str, str]], delay: float, delay_back: float | None):
        self.proxies = [
            DelayProxy(target, delay=delay, delay_back=delay_back, listen=listen)
            for listen, target in mappings
        ]

    async def start(self) -> None:
        for proxy in self.proxies:
            await proxy.start()

    async def close(self) -> None:
        for proxy in self.proxies:
            await proxy.close()


class LinkProxies:
    """A DelayProxy per directed link (a, b) between numbered nodes, set per flow (src, dst);
    see the module's docstring. `socket_factory(a)` (optional) makes the outbound socket of
    link (a, ·), e.g. inside node a's network namespace so that kernel cuts apply.

    The proxies run in an event loop of their own, in a daemon thread; every public method is
    thread-safe and returns once the change is in force.
    """

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
        self._proxies: dict[Flow, DelayProxy] = {}
        self._blocked: frozenset[Flow] = frozenset()
        # Every flow's Pipe: its delay, black hole and byte counters (forwarded, discarded).
        self.stats: dict[Flow, Pipe] = {}
        self._closed = False

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- public API (any thread) ----------------------------------------------------------------

    def add_link(self, a: int, b: int, target: tuple[str, int]) -> int:
        """Listen for node a's connections to node b; returns the listening port."""
        return self._call(self._add_link(a, b, target))

    def set_delay(self, src: int, dst: int, seconds: float) -> None:
        self._call(self._set(lambda: setattr(self._pipe((src, dst)), "delay", max(0.0, seconds))))

    def set_delays(self, delays: dict[Flow, float]) -> None:
        """Replace every delay at once (flows not named get none)."""
        self._call(self._set(lambda: self._replace_delays(delays)))

    def set_blocked(self, flows: Iterable[Flow]) -> None:
        """Black-hole exactly these flows; connections that lost bytes on a healed flow reset."""
        wanted = frozenset(flows)
        self._call(self._set(lambda: self._replace_blocked(wanted)))

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

    def _pipe(self, flow: Flow) -> Pipe:
        if flow not in self.stats:
            self.stats[flow] = Pipe(blocked=flow in self._blocked)
        return self.stats[flow]

    def _replace_delays(self, delays: dict[Flow, float]) -> None:
        for pipe in self.stats.values():
            pipe.delay = 0.0
        for flow, seconds in delays.items():
            self._pipe(flow).delay = max(0.0, seconds)

    def _replace_blocked(self, wanted: frozenset[Flow]) -> None:
        self._blocked = wanted
        for flow in wanted:
            self._pipe(flow)
        for flow, pipe in self.stats.items():
            pipe.blocked = flow in wanted
        for proxy in self._proxies.values():
            proxy.reset_healed()

    async def _add_link(self, a: int, b: int, target: tuple[str, int]) -> int:
        factory = self._socket_factory
        host, port = target
        proxy = DelayProxy(
            f"{host}:{port}",
            listen=f"{self.listen_host}:0",
            hold_while_down=self.hold_while_down,
            socket_factory=(lambda: factory(a)) if factory is not None else None,
            up=self._pipe((a, b)),
            down=self._pipe((b, a)),
        )
        await proxy.start()
        self._proxies[(a, b)] = proxy
        return proxy.port

    async def _close(self) -> None:
        await asyncio.gather(*(proxy.close() for proxy in self._proxies.values()))


async def _serve(group: ProxyGroup, quiet: bool) -> None:
    await group.start()
    if not quiet:
        for proxy in group.proxies:
            print(
                f"delayproxy: {proxy.address} -> {proxy.target} "
                f"(+{proxy.delay_up * 1e3:g} ms up, +{proxy.delay_down * 1e3:g} ms back)",
                flush=True,
            )
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await group.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m raftkv_tools.delayproxy", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--map",
        action="append",
        required=True,
        metavar="LISTEN=TARGET",
        help="host:port to listen on = host:port to forward to (repeatable)",
    )
    parser.add_argument("--delay", required=True, help="one-way delay per direction, e.g. 50ms")
    parser.add_argument("--delay-back", help="target→client delay (default: --delay)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        delay = parse_delay(args.delay)
        back = parse_delay(args.delay_back) if args.delay_back else None
        mappings = []
        for item in args.map:
            listen, sep, target = item.partition("=")
            if not sep:
                raise ValueError(f"--map wants LISTEN=TARGET, got {item!r}")
            _split(listen)
            _split(target)
            mappings.append((listen, target))
    except ValueError as error:
        print(f"delayproxy: {error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(ProxyGroup(mappings, delay, back), args.quiet))
    except OSError as error:
        print(f"delayproxy: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
