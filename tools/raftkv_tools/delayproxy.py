"""An asyncio TCP proxy that delays every byte by a fixed one-way time, per direction.

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

The proxy forwards raw TCP, so it works for gRPC/HTTP2, etcd's peer protocol, anything.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import re
import signal
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import Self

__all__ = ["DelayProxy", "ProxyGroup", "main", "parse_delay"]

DEFAULT_MAX_BUFFERED = 16 * 1024 * 1024


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


class _Direction:
    """One direction of one connection: bytes from `source` reach `sink` after a delay."""

    def __init__(self, proxy: DelayProxy, upstream: bool) -> None:
        self._proxy = proxy
        self._upstream = upstream
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
        return self._proxy.delay_up if self._upstream else self._proxy.delay_down

    def feed(self, data: bytes | None) -> None:
        """Bytes from the source (None for EOF) to write out after the delay."""
        if self.closed:
            return
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
        self.inbound.hold(True)
        task = asyncio.get_running_loop().create_task(self._connect())
        self.proxy._tasks.add(task)
        task.add_done_callback(self.proxy._tasks.discard)

    async def _connect(self) -> None:
        proxy = self.proxy
        target_side = _Side(proxy, inbound=self.outbound, outbound=self.inbound)
        try:
            await asyncio.get_running_loop().create_connection(
                lambda: target_side, proxy._target_host, proxy._target_port
            )
        except OSError:
            if self.transport is not None:
                self.transport.abort()
            return
        if self.transport is None or self.transport.is_closing():
            if target_side.transport is not None:
                target_side.transport.close()
            return
        self.inbound.hold(False)


class DelayProxy:
    """Listens on `listen` (default: a free loopback port) and forwards to `target`.

    `delay` is the one-way delay added in each direction; `delay_back` (default: `delay`) sets
    the target→client direction separately.
    """

    def __init__(
        self,
        target: str,
        *,
        delay: float,
        delay_back: float | None = None,
        listen: str = "127.0.0.1:0",
        max_buffered: int = DEFAULT_MAX_BUFFERED,
    ) -> None:
        self.target = target
        self._target_host, self._target_port = _split(target)
        self._listen_host, self._listen_port = _split(listen)
        self.delay_up = 0.0
        self.delay_down = 0.0
        self.set_delay(delay, delay_back)
        self.max_buffered = max_buffered
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.Transport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0

    def set_delay(self, delay: float, delay_back: float | None = None) -> None:
        """Change the delays; applies to bytes that arrive from now on."""
        back = delay if delay_back is None else delay_back
        if delay < 0 or back < 0:
            raise ValueError("delays must be ≥ 0")
        self.delay_up = delay
        self.delay_down = back

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
        up = _Direction(self, upstream=True)
        down = _Direction(self, upstream=False)
        return _ClientSide(self, inbound=up, outbound=down)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for transport in list(self._transports):
                transport.abort()
            self._transports.clear()
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
