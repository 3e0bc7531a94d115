"""raftkv_tools.ports: the one free-port helper."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from raftkv_tools.ports import (
    LOOPBACK,
    describe_listener,
    free_port,
    free_ports,
    pids_listening_on,
    port_in_use,
)


def test_free_ports_are_consecutive_free_and_below_the_ephemeral_range() -> None:
    ports = free_ports(5)
    assert ports == list(range(ports[0], ports[0] + 5))
    assert not any(port_in_use("127.0.0.1", port) for port in ports)
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert ports[-1] < max(low, 21000)


def test_a_listening_port_is_in_use() -> None:
    port = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert port_in_use("127.0.0.1", port)
    assert not port_in_use("127.0.0.1", port)


def test_the_process_listening_on_a_port_is_named() -> None:
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert pids_listening_on([port]) == {port: os.getpid()}
        described = describe_listener(port)
        assert described is not None and described.startswith(f"pid {os.getpid()} (")
    assert pids_listening_on([port]) == {}
    assert describe_listener(port) is None
