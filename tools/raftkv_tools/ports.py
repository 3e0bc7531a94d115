"""Free TCP ports for local clusters, proxies and tests: the one place that picks them.

    free_ports(3)        # three consecutive ports on 127.0.0.1 that nobody holds
    free_port()          # one
    port_in_use(host, port)

Ports are chosen *below* the kernel's ephemeral range. Ports handed out by bind(0) come from
that range, where the kernel also picks the local port of every outgoing connection; a node
restarted on such a port could find it taken by some client's connection. Ports below the range
are only ever taken on purpose.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
import time
from pathlib import Path

__all__ = ["LOOPBACK", "free_port", "free_ports", "port_in_use"]

LOOPBACK = "127.0.0.1"
FIRST_PORT = 20000
ATTEMPTS = 500


def port_in_use(host: str, port: int) -> bool:
    """Whether binding host:port fails (someone listens there, or it is otherwise taken)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR as gRPC sets it: connections in TIME_WAIT do not make a port busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def _ephemeral_low() -> int:
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return low


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` consecutive ports on `host` that were free a moment ago, below the ephemeral
    range (see the module's docstring)."""
    first, last = FIRST_PORT, max(FIRST_PORT + 1000, _ephemeral_low()) - count
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(ATTEMPTS):
        base = rng.randrange(first, last)
        ports = list(range(base, base + count))
        if not any(port_in_use(host, port) for port in ports):
            return ports
    raise RuntimeError(f"no {count} consecutive free ports in {first}..{last}")


def free_port(host: str = LOOPBACK) -> int:
    """One port on `host` that was free a moment ago."""
    return free_ports(1, host)[0]
