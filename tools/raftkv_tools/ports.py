"""Free TCP ports for local clusters, proxies and tests: the one place that picks them.

    free_ports(3)        # three consecutive ports on 127.0.0.1 that nobody holds
    free_ports(3, offsets=(0, PEER_PORT_OFFSET))   # ... and the three peer ports 1000 above
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
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "LOOPBACK",
    "describe_listener",
    "free_port",
    "free_ports",
    "pids_listening_on",
    "port_in_use",
]

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


def free_ports(count: int, host: str = LOOPBACK, *, offsets: Sequence[int] = (0,)) -> list[int]:
    """`count` consecutive ports on `host` that were free a moment ago, below the ephemeral
    range (see the module's docstring), and free at each of `offsets` above them too (a local
    cluster's peer ports sit PEER_PORT_OFFSET above its client ports)."""
    first = FIRST_PORT
    last = max(FIRST_PORT + 1000 + max(offsets), _ephemeral_low()) - count - max(offsets)
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(ATTEMPTS):
        base = rng.randrange(first, last)
        ports = list(range(base, base + count))
        wanted = [port + offset for offset in offsets for port in ports]
        if not any(port_in_use(host, port) for port in wanted):
            return ports
    raise RuntimeError(f"no {count} consecutive free ports in {first}..{last}")


def free_port(host: str = LOOPBACK) -> int:
    """One port on `host` that was free a moment ago."""
    return free_ports(1, host)[0]


def _listening_inodes(ports: set[int]) -> dict[int, int]:
    """inode → port for TCP sockets in LISTEN state on one of `ports`."""
    found: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != "0A":  # 0A = LISTEN
                continue
            port = int(parts[1].rsplit(":", 1)[1], 16)
            if port in ports:
                found[int(parts[9])] = port
    return found


def pids_listening_on(ports: Iterable[int]) -> dict[int, int]:
    """port → pid of the local process listening on it (for a cluster we did not start)."""
    inodes = _listening_inodes(set(ports))
    result: dict[int, int] = {}
    if not inodes:
        return result
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            descriptors = list((entry / "fd").iterdir())
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                link = os.readlink(descriptor)
            except OSError:
                continue
            if link.startswith("socket:["):
                inode = int(link[8:-1])
                if inode in inodes:
                    result[inodes[inode]] = int(entry.name)
    return result


def describe_listener(port: int) -> str | None:
    """'pid 123 (python -m http.server)' for the process listening on `port`, when /proc says."""
    pid = pids_listening_on([port]).get(port)
    if pid is None:
        return None
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"pid {pid} (?)"
    cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return f"pid {pid} ({cmdline or '?'})"
