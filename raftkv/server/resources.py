"""What clients may take of a node: connections, RPCs at once, and file descriptors.

`client_server` builds the gRPC server for the client port with its caps (CLIENT_SERVER_OPTIONS,
MAX_CONCURRENT_CLIENT_RPCS, and a connection cap below the descriptor limit). The rest is about
descriptors: as many as the system allows, and a few kept for storage.

Every client connection costs the node a descriptor, and gRPC accepts as many as it can: about
1,100 idle connections used up a soft limit of 1024, and the next `metadata.txt` write failed
with EMFILE, which stops the node (a storage error is fatal, docs/design.md §8). Two defences:

- `raise_descriptor_limit` lifts the soft RLIMIT_NOFILE to the hard limit at start. The soft
  default of 1024 only protects programs that use select(); asyncio and gRPC use epoll.
- `DescriptorReserve` holds a few descriptors open on /dev/null (the trick of nginx and libuv):
  when opening a file fails with EMFILE or ENFILE, it closes a spare and tries again, and takes
  the spare back once the borrowed descriptor is closed. New clients are refused (gRPC's
  listener logs "File descriptor limit reached. Retrying." and tries again a second later);
  the storage keeps working.

The reserve cannot be race-free: another thread (gRPC's listener) may take the slot a spare
frees before the retried open does. Holding several spares and trying each makes that unlikely
(gRPC retries accept only once a second), not impossible.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from collections.abc import Iterator

import grpc.aio

from raftkv.limits import MAX_CLIENT_CONNECTIONS, MAX_CONCURRENT_CLIENT_RPCS
from raftkv.rpc.options import CLIENT_SERVER_OPTIONS, Options

__all__ = [
    "RESERVED_DESCRIPTORS",
    "DescriptorReserve",
    "client_connection_cap",
    "client_server",
    "raise_descriptor_limit",
]

# Spares per reserve. The storage needs one extra descriptor at a time (a temporary file or the
# directory, each closed before the next is opened); the others are for retries that lose the
# freed slot to another thread.
RESERVED_DESCRIPTORS = 4

_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})

# Descriptors kept out of client connections' reach (half the limit when that is less): the
# node's files, the storage's spares, two connections per peer, and gRPC's and asyncio's own
# (epoll, eventfds, wake-up pipes). A one-node cluster holds 20 once started.
DESCRIPTORS_FOR_THE_NODE = 256


def client_connection_cap(descriptor_limit: int) -> int:
    """How many client connections a process allowed `descriptor_limit` descriptors keeps."""
    kept = min(DESCRIPTORS_FOR_THE_NODE, descriptor_limit // 2)
    return max(1, min(MAX_CLIENT_CONNECTIONS, descriptor_limit - kept))


def client_server(
    *,
    max_concurrent_rpcs: int = MAX_CONCURRENT_CLIENT_RPCS,
    max_connections: int | None = None,
    options: Options = CLIENT_SERVER_OPTIONS,
) -> grpc.aio.Server:
    """A gRPC server for a node's client port. RPCs beyond `max_concurrent_rpcs` are answered
    RESOURCE_EXHAUSTED "Concurrent RPC limit exceeded!" before any handler runs; connections
    beyond `max_connections` (default: `client_connection_cap` of the soft descriptor limit now
    in effect, so call `raise_descriptor_limit` first) are closed as soon as they are accepted,
    which the client sees as UNAVAILABLE "Socket closed".

    Not for the peer port: clients that take every slot would lock the node's peers out.
    """
    if max_connections is None:
        max_connections = client_connection_cap(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    return grpc.aio.server(
        options=(*options, ("grpc.max_allowed_incoming_connections", max_connections)),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit. Returns (before, after).

    A hard limit of "unlimited" (not on Linux, where it cannot exceed fs.nr_open) or a refused
    change leaves the soft limit as it was.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        return soft, soft
    return soft, hard


class DescriptorReserve:
    """`count` spare descriptors, given up one by one when an open finds none left.

    Not thread-safe: the owner serialises its calls (NodeStorage holds its lock).
    """

    def __init__(self, count: int = RESERVED_DESCRIPTORS) -> None:
        self._count = count
        self._spares: list[int] = []
        self.refill()

    @property
    def spares(self) -> int:
        """How many spares are held now (fewer than `count` while the process is out of
        descriptors and a borrowed one is open, or a refill failed)."""
        return len(self._spares)

    def open(self, path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> int:
        """`os.open`, giving up spares while it fails for want of descriptors. After closing
        the descriptor, call `refill`."""
        # Spares lost earlier (a borrowed slot taken by another thread before the refill) come
        # back as soon as the process has descriptors again.
        self.refill()
        while True:
            try:
                return os.open(path, flags, mode)
            except OSError as error:
                if error.errno not in _OUT_OF_DESCRIPTORS or not self._spares:
                    raise
            os.close(self._spares.pop())

    @contextlib.contextmanager
    def opened(self, path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> Iterator[int]:
        """`open` for the duration of a with block; closes and refills at its end."""
        fd = self.open(path, flags, mode)
        try:
            yield fd
        finally:
            os.close(fd)
            self.refill()

    def refill(self) -> None:
        """Take spares back up to `count`; while the process is still out of descriptors, keep
        fewer and try again at the next call."""
        while len(self._spares) < self._count:
            try:
                self._spares.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as error:
                if error.errno in _OUT_OF_DESCRIPTORS:
                    return
                raise

    def close(self) -> None:
        """Release every spare. Safe to call more than once."""
        while self._spares:
            os.close(self._spares.pop())
