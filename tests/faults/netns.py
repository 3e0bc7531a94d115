"""One network namespace per node on a bridge, and nftables rules that cut links between them.

Layout (root namespace):

    bridge rkvf-br 10.231.0.1/24 ── veth rkvf-h<i> ══ eth0 10.231.0.<10+i> in namespace rkvf-n<i>

The test process stays in the root namespace and reaches every node through the bridge, so it
is "a client still connected" to every node, an isolated leader included. Links between nodes
are cut in the kernel by one nftables table of our own (`bridge raftkv_faults`, hook forward):
one `ip saddr A ip daddr B drop` rule per cut direction. Traffic between the host and a
namespace does not cross the bridge's forward hook, so cuts never touch the test's clients.

Only one user at a time may own 10.231.0.0/24: `Fabric` takes an exclusive `flock` on
/run/lock/raftkv-faults.lock, and whoever holds it may delete leftovers of a previous owner
that died (everything named rkvf-*, processes inside those namespaces, the nft table).

A one-way cut (drop A→B only) is a real one-way packet filter, and TCP needs packets both ways:
no connection between A and B can be opened in either direction, and on connections that are
already open B still *receives* what A's peer sends it only if A's packets are not needed —
in practice both directions' RPCs fail. Message-level one-way links (A's messages lost, B's
delivered) are what the proxy gives (raftkv_tools/delayproxy.py), and `Fabric.socket_in` lets
the proxy open its outbound connection from inside a node's namespace so kernel cuts apply to
proxied links too.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

SUBNET_PREFIX = "10.231.0"
BRIDGE_ADDRESS = f"{SUBNET_PREFIX}.1"
PREFIX = "rkvf"
BRIDGE = f"{PREFIX}-br"
NFT_FAMILY = "bridge"
NFT_TABLE = "raftkv_faults"
LOCK_PATH = Path("/run/lock/raftkv-faults.lock")
LOCK_WAIT = 600.0
CLONE_NEWNET = 0x40000000


class FabricError(RuntimeError):
    pass


def node_ip(node_id: int) -> str:
    return f"{SUBNET_PREFIX}.{10 + node_id}"


def namespace_name(node_id: int) -> str:
    return f"{PREFIX}-n{node_id}"


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _run(
    *argv: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise FabricError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


_UNAVAILABLE: list[str | None] = []


def unavailable_reason() -> str | None:
    """Why namespaces + nftables cannot be used here, or None when they can (cached)."""
    if _UNAVAILABLE:
        return _UNAVAILABLE[0]
    reason = _probe()
    _UNAVAILABLE.append(reason)
    return reason


def _probe() -> str | None:
    if os.geteuid() != 0:
        return "not root: network namespaces and nftables need root"
    ip, nft = find_binary("ip"), find_binary("nft")
    if ip is None:
        return "no `ip` binary (Debian package iproute2; `make test-deps` installs it)"
    if nft is None:
        return "no `nft` binary (Debian package nftables; `make test-deps` installs it)"
    probe = f"{PREFIX}-probe{os.getpid() % 100000}"
    result = _run(ip, "netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create a network namespace: {result.stderr.strip()}"
    _run(ip, "netns", "del", probe, check=False)
    table = f"{NFT_TABLE}_probe{os.getpid() % 100000}"
    result = _run(nft, "add", "table", NFT_FAMILY, table, check=False)
    if result.returncode != 0:
        return f"nftables cannot create a {NFT_FAMILY} table: {result.stderr.strip()}"
    _run(nft, "delete", "table", NFT_FAMILY, table, check=False)
    return None


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


class Fabric:
    """Namespaces, bridge and link cuts for `size` nodes. Use as a context manager."""

    def __init__(self, size: int) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise FabricError(reason)
        self.size = size
        self.ip = find_binary("ip") or "ip"
        self.nft = find_binary("nft") or "nft"
        self._lock_fd: int | None = None
        self._blocked: frozenset[tuple[int, int]] = frozenset()
        self._closed_ports: frozenset[tuple[int, int]] = frozenset()
        self._up = False

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Fabric:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def setup(self) -> None:
        self._acquire_lock()
        try:
            self._remove_leftovers()
            self._up = True
            ip = self.ip
            _run(ip, "link", "add", BRIDGE, "type", "bridge")
            _run(ip, "addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", BRIDGE)
            _run(ip, "link", "set", BRIDGE, "up")
            for i in range(self.size):
                ns, host_end = namespace_name(i), f"{PREFIX}-h{i}"
                _run(ip, "netns", "add", ns)
                _run(
                    ip, "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns
                )
                _run(ip, "link", "set", host_end, "master", BRIDGE, "up")
                _run(ip, "-n", ns, "addr", "add", f"{node_ip(i)}/24", "dev", "eth0")
                _run(ip, "-n", ns, "link", "set", "eth0", "up")
                _run(ip, "-n", ns, "link", "set", "lo", "up")
            route = _run(ip, "route", "get", node_ip(0)).stdout
            if f"dev {BRIDGE}" not in route:
                raise FabricError(f"{node_ip(0)} is not routed via {BRIDGE}: {route.strip()}")
            self.set_blocked(())
        except BaseException:
            self.teardown()
            raise

    def teardown(self) -> None:
        """Remove everything (idempotent). Node processes must be stopped first."""
        if self._up:
            self._up = False
            self._remove_leftovers()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _acquire_lock(self) -> None:
        LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise FabricError(
                        f"another fault run holds {LOCK_PATH} (10.231.0.0/24) for over "
                        f"{LOCK_WAIT:.0f}s"
                    ) from None
                # Polling a lock another run holds: nothing to synchronise with but the lock.
                time.sleep(0.2)
        self._lock_fd = fd

    def _remove_leftovers(self) -> None:
        """Delete every rkvf-* object. Only called while holding the lock, so any that exist
        belong to this run or to a previous owner that is gone."""
        _run(self.nft, "delete", "table", NFT_FAMILY, NFT_TABLE, check=False)
        namespaces = _run(self.ip, "netns", "list", check=False).stdout.split("\n")
        for line in namespaces:
            name = line.split(" ")[0]
            if not name.startswith(f"{PREFIX}-n"):
                continue
            # Processes left in our namespaces by a run that died (their pids, not a name match).
            for pid in _run(self.ip, "netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            _run(self.ip, "netns", "del", name, check=False)
        links = _run(self.ip, "-o", "link", "show", check=False).stdout.split("\n")
        for line in links:
            parts = line.split(": ")
            if len(parts) > 1:
                name = parts[1].split("@")[0]
                if name.startswith(f"{PREFIX}-"):
                    _run(self.ip, "link", "del", name, check=False)

    # -- nodes ---------------------------------------------------------------------------------

    def exec_prefix(self, node_id: int) -> list[str]:
        return [self.ip, "netns", "exec", namespace_name(node_id)]

    @contextlib.contextmanager
    def _in_namespace(self, node_id: int) -> Iterator[None]:
        """Switch the calling thread into a node's namespace (setns is per thread)."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{namespace_name(node_id)}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(target)
            os.close(own)

    def socket_in(self, node_id: int) -> socket.socket:
        """A non-blocking TCP socket that lives in node `node_id`'s namespace: connections it
        opens leave from that node's address, so kernel cuts apply to them."""
        with self._in_namespace(node_id):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        return sock

    # -- cuts ----------------------------------------------------------------------------------

    @property
    def blocked(self) -> frozenset[tuple[int, int]]:
        return self._blocked

    @property
    def closed_ports(self) -> frozenset[tuple[int, int]]:
        return self._closed_ports

    def set_blocked(
        self, pairs: Iterable[tuple[int, int]], closed_ports: Iterable[tuple[int, int]] = ()
    ) -> None:
        """Drop every packet from node a to node b for each (a, b), and every packet another
        node sends to port p of node n for each (n, p) in `closed_ports`, and nothing else.

        A closed port is a one-way cut at the level of connections: nobody can open one to
        that port, while the node's own connections (to other nodes' ports) work both ways.
        On a node's peer port it makes a node that sends requests and gets their replies but
        receives no request: it hears no leader. The table is replaced in one nft
        transaction, so there is no instant with a partial rule set."""
        wanted = frozenset(pairs)
        closed = frozenset(closed_ports)
        rules = "\n".join(
            [f"    ip saddr {node_ip(a)} ip daddr {node_ip(b)} drop" for a, b in sorted(wanted)]
            + [f"    ip daddr {node_ip(n)} tcp dport {port} drop" for n, port in sorted(closed)]
        )
        script = (
            f"table {NFT_FAMILY} {NFT_TABLE}\n"
            f"delete table {NFT_FAMILY} {NFT_TABLE}\n"
            f"table {NFT_FAMILY} {NFT_TABLE} {{\n"
            "  chain links {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            f"{rules}\n"
            "  }\n"
            "}\n"
        )
        _run(self.nft, "-f", "-", stdin=script)
        self._blocked = wanted
        self._closed_ports = closed

    def ruleset(self) -> str:
        listing: str = _run(self.nft, "list", "table", NFT_FAMILY, NFT_TABLE, check=False).stdout
        return listing
