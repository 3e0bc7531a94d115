"""raftkv_tools.delayproxy beyond delay (tests/tools/test_bench.py checks that): black holes and
the reset on heal, hold-while-down, and LinkProxies' flows over the two links they cross."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from raftkv_tools.delayproxy import LinkProxies
from raftkv_tools.ports import free_port

TIMEOUT = 10.0


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


@contextmanager
def echo_server(port: int = 0) -> Iterator[tuple[str, int]]:
    server = _Server(("127.0.0.1", port), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def link_proxies(*, hold_while_down: bool = False) -> Iterator[LinkProxies]:
    proxies = LinkProxies("127.0.0.1", hold_while_down=hold_while_down)
    try:
        yield proxies
    finally:
        proxies.close()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


def echo(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(65536)
        assert chunk, "the connection closed"
        received += chunk
    return received


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # polling a condition against a deadline


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_black_hole_discards_keeps_the_connection_then_heal_resets_it() -> None:
    with echo_server() as target, link_proxies() as proxies:
        port = proxies.add_link(0, 1, target)
        with connect(port) as sock:
            assert echo(sock, b"before") == b"before"
            proxies.set_blocked({(0, 1)})
            sock.sendall(b"lost")
            until(lambda: proxies.stats[(0, 1)].discarded == 4, "the bytes to be discarded")
            assert proxies.stats[(0, 1)].forwarded == len(b"before")
            proxies.set_blocked(())
            assert closed(sock), "a connection with a hole in its stream must be reset"
        with connect(port) as fresh:
            assert echo(fresh, b"after") == b"after"


def test_a_flow_is_one_direction_of_each_link_it_crosses() -> None:
    """Flow (0, 1) is what 0 sends 1: 0's requests on link (0, 1), 0's replies on (1, 0)."""
    with echo_server() as node0, echo_server() as node1, link_proxies() as proxies:
        to_1 = proxies.add_link(0, 1, node1)
        to_0 = proxies.add_link(1, 0, node0)
        proxies.set_delay(0, 1, 0.2)
        with connect(to_1) as sock:
            started = time.monotonic()
            echo(sock, b"x")
            assert time.monotonic() - started >= 0.2
        with connect(to_0) as sock:
            started = time.monotonic()
            echo(sock, b"y")
            assert time.monotonic() - started >= 0.2
        assert proxies.stats[(0, 1)].forwarded == 2
        assert proxies.stats[(1, 0)].forwarded == 2
        proxies.set_delays({})
        proxies.set_blocked({(0, 1)})
        with connect(to_0) as sock:
            sock.sendall(b"request")  # 1's request reaches 0; 0's echo (flow 0→1) is lost
            until(lambda: proxies.stats[(0, 1)].discarded == 7, "0's reply to be discarded")
            assert proxies.stats[(1, 0)].forwarded == 2 + 7


@pytest.mark.parametrize("hold", [True, False])
def test_hold_while_down_holds_a_connection_until_the_target_listens(hold: bool) -> None:
    port = free_port()
    with link_proxies(hold_while_down=hold) as proxies:
        listen = proxies.add_link(0, 1, ("127.0.0.1", port))
        with connect(listen) as sock:
            if not hold:
                assert closed(sock), "a refused connection is passed on without hold"
                return
            sock.sendall(b"early")
            with echo_server(port):
                received = b""
                while len(received) < 5:
                    chunk = sock.recv(5)
                    assert chunk
                    received += chunk
                assert received == b"early"
