"""A cluster of real `raftkv-node` processes, and every fault the fault tests inject.

    with Cluster(tmp_path, size=3, lease=2.0, allow_unsafe=True) as cluster:
        leader = cluster.wait_for_leader()
        cluster.isolate(leader)            # kernel partition; the test still reaches `leader`
        cluster.pause(2); cluster.resume(2)
        cluster.kill(1); cluster.restart(1, env={"RAFTKV_CLOCK_RATE": "1.005"})
        cluster.heal()

Test seams (`--unsafe-*` in `node_args`, RAFTKV_CLOCK_RATE other than 1 or RAFTKV_FAILPOINT in
a node's `env`) need `allow_unsafe=True`, which starts every node with --allow-unsafe; without
it, starting a node with one raises ValueError (as the node would refuse it).

Networks (`network=`):

- ``"netns"``: node i in its own network namespace at 10.231.0.(10+i):50050 on a bridge; cuts
  are nftables rules in the kernel (netns.py). Needs root.
- ``"loopback"``: nodes on 127.0.0.1 and every link through a proxy (LinkProxies, in
  raftkv_tools.delayproxy); cuts are proxy black holes. The fallback where namespaces cannot
  be made.
- ``"auto"`` (default): netns when possible, else loopback, saying so.

``proxied=True`` (always on in loopback) routes every node-to-node link through the proxy, which
adds per-flow delay (`set_delay`, `set_wan`) and message-level one-way loss (`drop_messages`).
In netns mode the proxy opens its outbound connection inside the sending node's namespace, so
kernel cuts apply to proxied links too.

Every node gets its own cluster description (``cluster-node<i>.json``) whose peer entries'
`peer_address` are the addresses *that node* must dial (its proxies, when proxied) and whose own
entry holds its real listen addresses (raftkv.server.main binds the node's own entry unless
--listen/--peer-listen are given). Peers talk mutual TLS with certificates made in the work
folder (tls/); a proxy passes TLS through, since a node checks the certificate's node name.

Also a command: ``python -m tests.faults.controller --nodes 3`` starts a cluster and reads
commands (one per line, `help` lists them) from stdin, e.g.::

    printf 'isolate leader\\nwrite k v\\nstatus\\nheal\\n' | python -m tests.faults.controller
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc

from raftkv.client.status import NodeStatusRow, format_status_table, row_from_call, unreachable_row
from raftkv.cluster import PEER_PORT_OFFSET, default_peer_address
from raftkv.core import events
from raftkv.core.config import TimingConfig, profile
from raftkv.rpc import raftkv_pb2 as pb
from raftkv.rpc import raftkv_pb2_grpc
from raftkv.server.launch import NodeLaunch
from raftkv_tools.certs import issue as issue_certificates
from raftkv_tools.certs import local_nodes
from raftkv_tools.delayproxy import Flow, LinkProxies
from raftkv_tools.launcher import spawn_node
from raftkv_tools.ports import free_ports
from tests.faults import netns
from tests.support import dumps

T = TypeVar("T")

NODE_PORT = 50050
START_TIMEOUT = 20.0
POLL = 0.02
REPO_ROOT = Path(__file__).resolve().parents[2]
FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
)


class ClusterError(RuntimeError):
    pass


def wait_until(
    condition: Callable[[], T | None], timeout: float, what: str, interval: float = POLL
) -> T:
    """Poll `condition` until it returns neither None nor False; raise ClusterError at the
    deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise ClusterError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)  # polling a condition with a deadline, not synchronisation


def faketime_library() -> str | None:
    for path in FAKETIME_LIBS:
        if Path(path).is_file():
            return path
    return None


@dataclass
class NodeProcess:
    node_id: int
    popen: subprocess.Popen[bytes] | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    paused: bool = False
    starts: int = 0

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None


@dataclass(frozen=True)
class OpResult:
    """One client call: ok, or the gRPC code and details (and the leader hint) of the failure."""

    ok: bool
    value: str | None = None
    index: int = 0
    code: str = ""
    details: str = ""
    leader_hint: int | None = None
    invoke: float = 0.0
    complete: float = 0.0


class Cluster:
    def __init__(
        self,
        workdir: Path,
        size: int = 3,
        *,
        network: str = "auto",
        proxied: bool = False,
        hold_while_down: bool = False,
        lease: float | None = None,
        max_drift: float | None = None,
        read_mode: str | None = None,
        node_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        allow_unsafe: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if network not in ("auto", "netns", "loopback"):
            raise ValueError(f"network must be auto, netns or loopback, not {network!r}")
        self.workdir = Path(workdir)
        self.size = size
        self.ids = list(range(size))
        self.lease = lease
        self.max_drift = max_drift
        self.read_mode = read_mode
        self.node_args = list(node_args)
        self.allow_unsafe = allow_unsafe
        self.log = log or (lambda line: print(f"[faults] {line}", flush=True))
        self.config = _timing(lease, max_drift)

        reason = netns.unavailable_reason() if network != "loopback" else "loopback requested"
        if network == "netns" and reason is not None:
            raise ClusterError(f"network namespaces unavailable: {reason}")
        self.kernel = reason is None
        self.proxied = proxied or not self.kernel
        self.hold_while_down = hold_while_down
        self.mode_note = (
            "kernel network: one namespace per node, nftables cuts"
            + (", links through delay proxies" if self.proxied else "")
            if self.kernel
            else f"fallback network: TCP proxies on 127.0.0.1 for every link ({reason})"
        )
        self.fabric: netns.Fabric | None = None
        self.proxies: LinkProxies | None = None
        self.addresses: dict[int, str] = {}
        self.nodes = {i: NodeProcess(i, env=dict(env or {})) for i in self.ids}
        self._partition: frozenset[Flow] = frozenset()
        self._lost: frozenset[Flow] = frozenset()
        self._channels: dict[int, grpc.Channel] = {}
        self._stubs: dict[int, Any] = {}
        self._client_ids = itertools.count(1)

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def data_root(self) -> Path:
        return self.workdir / "data"

    def node_dir(self, node_id: int) -> Path:
        return self.data_root / f"logs_node_{node_id}"

    def description_path(self, node_id: int) -> Path:
        return self.workdir / f"cluster-node{node_id}.json"

    def start(self, *, wait: bool = True) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(exist_ok=True)
        self.log(f"{self.size} nodes, {self.mode_note}; files in {self.workdir}")
        try:
            if self.kernel:
                self.fabric = netns.Fabric(self.size)
                self.fabric.setup()
                self.addresses = {i: f"{netns.node_ip(i)}:{NODE_PORT}" for i in self.ids}
            else:
                ports = free_ports(self.size, offsets=(0, PEER_PORT_OFFSET))
                self.addresses = {i: f"127.0.0.1:{ports[i]}" for i in self.ids}
            issue_certificates(self.certs, local_nodes(self.size), cluster_name="faults")
            if self.proxied:
                listen = netns.BRIDGE_ADDRESS if self.kernel else "127.0.0.1"
                fabric = self.fabric
                factory = fabric.socket_in if fabric is not None else None
                self.proxies = LinkProxies(listen, factory, hold_while_down=self.hold_while_down)
            self._write_descriptions()
            for i in self.ids:
                self.start_node(i, wait=False)
            if wait:
                for i in self.ids:
                    self.wait_serving(i)
        except BaseException:
            self.close()
            raise

    @property
    def certs(self) -> Path:
        return self.workdir / "tls"

    def _write_descriptions(self) -> None:
        real_peer = {i: default_peer_address(self.addresses[i]) for i in self.ids}
        peer_addresses: dict[tuple[int, int], str] = {}
        if self.proxies is not None:
            for a, b in itertools.permutations(self.ids, 2):
                host, port = real_peer[b].rsplit(":", 1)
                listen_port = self.proxies.add_link(a, b, (host, int(port)))
                peer_addresses[(a, b)] = f"{self.proxies.listen_host}:{listen_port}"
        for i in self.ids:
            nodes = [
                {
                    "id": j,
                    "address": self.addresses[j],
                    "peer_address": real_peer[j]
                    if j == i
                    else peer_addresses.get((i, j), real_peer[j]),
                    "host": "localhost",
                    "data_dir": str(self.data_root),
                }
                for j in self.ids
            ]
            body = {
                "name": "faults",
                "profile": "fast",
                "peer_certs": str(self.certs),
                "nodes": nodes,
            }
            self.description_path(i).write_text(json.dumps(body, indent=2) + "\n")

    def close(self) -> None:
        """Kill every node, stop the proxies, remove namespaces, bridge and nft table."""
        for node in self.nodes.values():
            self._kill_process(node)
        for channel in self._channels.values():
            with contextlib.suppress(Exception):
                channel.close()
        self._channels.clear()
        self._stubs.clear()
        if self.proxies is not None:
            self.proxies.close()
            self.proxies = None
        if self.fabric is not None:
            self.fabric.teardown()
            self.fabric = None

    # -- processes ------------------------------------------------------------------------------

    def launch(self, node_id: int) -> NodeLaunch:
        node = self.nodes[node_id]
        return NodeLaunch(
            node_id,
            cluster=self.description_path(node_id),
            data_dir=self.data_root,
            quiet=True,
            lease=self.lease,
            max_drift=self.max_drift,
            read_mode=self.read_mode,
            extra_args=[*self.node_args, *node.args],
            allow_unsafe=self.allow_unsafe,
            env={
                **node.env,
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
                ),
            },
        )

    def command_prefix(self, node_id: int) -> list[str]:
        """The wrappers a node runs under: its network namespace, and setpriv."""
        prefix: list[str] = []
        if self.fabric is not None:
            prefix += self.fabric.exec_prefix(node_id)
        # Nodes must not outlive a test process that was killed: setpriv makes the kernel
        # SIGKILL them when the thread that started them dies (so only from the main thread).
        # Not a preexec_fn: that makes Python fork() instead of vfork(), and gRPC's fork
        # handlers in the test process then abort the child (grpc/grpc#43055).
        setpriv = netns.find_binary("setpriv")
        if setpriv is not None and threading.current_thread() is threading.main_thread():
            prefix += [setpriv, "--pdeathsig", "KILL", "--"]
        return prefix

    def start_node(
        self,
        node_id: int,
        *,
        args: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> None:
        """Start (or restart) a node. `args`/`env` replace that node's extra arguments and
        environment (e.g. RAFTKV_CLOCK_RATE) and stick for later restarts."""
        node = self.nodes[node_id]
        if node.running:
            raise ClusterError(f"node {node_id} is already running (pid {node.pid})")
        if args is not None:
            node.args = list(args)
        if env is not None:
            node.env = dict(env)
        node.popen = spawn_node(
            self.launch(node_id),
            output=self.workdir / f"node{node_id}.out",
            cwd=self.workdir,
            new_session=True,
            prefix=self.command_prefix(node_id),
        )
        node.paused = False
        node.starts += 1
        if wait:
            self.wait_serving(node_id)

    def restart(
        self,
        node_id: int,
        *,
        args: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> None:
        """kill -9 (if running) and start again."""
        self.kill(node_id)
        self.start_node(node_id, args=args, env=env, wait=wait)

    def wait_serving(self, node_id: int, timeout: float = START_TIMEOUT) -> None:
        node = self.nodes[node_id]

        def up() -> bool | None:
            if not node.running:
                raise ClusterError(
                    f"node {node_id} exited with {node.popen and node.popen.returncode}: "
                    + self.tail(node_id)
                )
            return self.status(node_id) is not None

        wait_until(up, timeout, f"node {node_id} to serve")

    def tail(self, node_id: int, lines: int = 15) -> str:
        parts = []
        for path in (self.workdir / f"node{node_id}.out", self.node_dir(node_id) / "dump.txt"):
            with contextlib.suppress(OSError):
                parts.append(f"{path.name}: " + "\n".join(path.read_text().splitlines()[-lines:]))
        return "\n".join(parts)

    def kill(self, node_id: int) -> None:
        """kill -9 (a paused node too)."""
        self._kill_process(self.nodes[node_id])
        self._drop_channel(node_id)

    def _kill_process(self, node: NodeProcess) -> None:
        if node.popen is not None and node.popen.poll() is None:
            node.popen.send_signal(signal.SIGKILL)
            node.popen.wait(10)
        node.paused = False

    def stop(self, node_id: int, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait: a clean shutdown. Returns the exit status."""
        node = self.nodes[node_id]
        if node.popen is None or node.popen.poll() is not None:
            return node.popen.returncode if node.popen else None
        if node.paused:
            self.resume(node_id)
        node.popen.send_signal(signal.SIGTERM)
        try:
            return node.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_process(node)
            return None

    def pause(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.popen is None or not node.running:
            raise ClusterError(f"node {node_id} is not running")
        node.popen.send_signal(signal.SIGSTOP)
        node.paused = True

    def resume(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.popen is not None and node.running:
            node.popen.send_signal(signal.SIGCONT)
        node.paused = False

    def live(self) -> list[int]:
        """Running and not paused."""
        return [i for i in self.ids if self.nodes[i].running and not self.nodes[i].paused]

    # -- network --------------------------------------------------------------------------------

    @property
    def partition(self) -> frozenset[Flow]:
        return self._partition

    def set_partition(self, flows: Iterable[Flow]) -> None:
        """Cut exactly these directed links (src, dst), all others connected.

        Kernel mode: nftables drops every packet src → dst (so TCP between them fails both
        ways). Loopback mode: the proxy black-holes src's bytes to dst.
        """
        wanted = frozenset((a, b) for a, b in flows if a != b)
        if self.fabric is not None:
            self.fabric.set_blocked(wanted, self.fabric.closed_ports)
        else:
            self._apply_proxy_blocks(wanted, self._lost)
        self._partition = wanted

    def drop_messages(self, flows: Iterable[Flow]) -> None:
        """Message-level one-way loss through the proxy: src's messages to dst vanish, dst's
        to src arrive. Needs proxied links."""
        if self.proxies is None:
            raise ClusterError("message-level loss needs proxied=True")
        wanted = frozenset((a, b) for a, b in flows if a != b)
        self._apply_proxy_blocks(self._partition if self.fabric is None else frozenset(), wanted)
        self._lost = wanted

    def _apply_proxy_blocks(self, partition: frozenset[Flow], lost: frozenset[Flow]) -> None:
        assert self.proxies is not None
        self.proxies.set_blocked(partition | lost)

    def heal(self) -> None:
        """Reconnect everything (closed ports included) and remove every delay."""
        self._lost = frozenset()
        if self.fabric is not None:
            self.fabric.set_blocked((), ())
        self.set_partition(())
        if self.proxies is not None:
            self.proxies.set_blocked(())
            self.proxies.set_delays({})

    def isolate(self, node_id: int) -> None:
        self.split([[node_id], [i for i in self.ids if i != node_id]])

    def split(self, groups: Sequence[Iterable[int]]) -> None:
        """Partition into groups that only talk within themselves (nodes in no group are cut
        off from everyone)."""
        side = {i: g for g, members in enumerate(groups) for i in members}
        self.set_partition(
            (a, b)
            for a, b in itertools.permutations(self.ids, 2)
            if side.get(a, -1 - a) != side.get(b, -1 - b)
        )

    def ring(self) -> None:
        """Each node reaches only its neighbours in a ring: every node sees a majority (for
        5 nodes: itself and two), but no two nodes see the same one."""
        n = self.size
        reach = -(-(n // 2) // 2)  # 1 + 2·reach ≥ a majority
        self.set_partition(
            (a, b)
            for a, b in itertools.permutations(self.ids, 2)
            if min((a - b) % n, (b - a) % n) > reach
        )

    def bridge(self, middle: int) -> None:
        """Two halves that cannot talk, except through `middle`, which reaches both."""
        others = [i for i in self.ids if i != middle]
        half = len(others) // 2
        left, right = set(others[:half]), set(others[half:])
        self.set_partition(
            (a, b)
            for a, b in itertools.permutations(self.ids, 2)
            if (a in left and b in right) or (a in right and b in left)
        )

    def cut_one_way(self, src: int, dst: int) -> None:
        self.set_partition(self._partition | {(src, dst)})

    def close_peer_port(self, node_id: int) -> None:
        """Nobody can connect to `node_id`'s peer port, while its own connections to the other
        nodes work both ways (kernel mode only): it sends requests and gets their replies, but
        receives no request — it hears no leader. Partitions leave it closed; `heal` opens it."""
        if self.fabric is None:
            raise ClusterError("closing a port needs the kernel network (netns)")
        port = int(default_peer_address(self.addresses[node_id]).rpartition(":")[2])
        closed = self.fabric.closed_ports | {(node_id, port)}
        self.fabric.set_blocked(self.fabric.blocked, closed)

    def set_delay(self, src: int, dst: int, seconds: float) -> None:
        """Add `seconds` to every byte src sends dst (proxied links only)."""
        if self.proxies is None:
            raise ClusterError("delay needs proxied=True")
        self.proxies.set_delay(src, dst, seconds)

    def set_wan(
        self, regions: Sequence[Sequence[int]], one_way: Callable[[int, int], float]
    ) -> None:
        """Delay every flow between nodes of different regions by one_way(region_a, region_b)
        seconds (same region: none)."""
        if self.proxies is None:
            raise ClusterError("delay needs proxied=True")
        region = {i: r for r, members in enumerate(regions) for i in members}
        self.proxies.set_delays(
            {
                (a, b): one_way(region[a], region[b])
                for a, b in itertools.permutations(self.ids, 2)
                if region.get(a) != region.get(b)
            }
        )

    # -- clients --------------------------------------------------------------------------------

    def stub(self, node_id: int) -> Any:
        if node_id not in self._stubs:
            channel = grpc.insecure_channel(self.addresses[node_id])
            self._channels[node_id] = channel
            self._stubs[node_id] = raftkv_pb2_grpc.KeyValueStub(channel)
        return self._stubs[node_id]

    def _drop_channel(self, node_id: int) -> None:
        channel = self._channels.pop(node_id, None)
        self._stubs.pop(node_id, None)
        if channel is not None:
            channel.close()

    def status(self, node_id: int, timeout: float = 0.5) -> pb.StatusResponse | None:
        if not self.nodes[node_id].running or self.nodes[node_id].paused:
            return None
        try:
            response: pb.StatusResponse = self.stub(node_id).Status(
                pb.StatusRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return None
        return response

    def rows(self, timeout: float = 0.5) -> list[NodeStatusRow]:
        """Every node's status row; a node that is down or paused is shown as such."""
        rows = []
        for i in self.ids:
            node, address = self.nodes[i], self.addresses[i]
            if not node.running or node.paused:
                rows.append(unreachable_row(i, address, "paused" if node.running else "down"))
                continue
            call = partial(self.stub(i).Status, pb.StatusRequest(), timeout=timeout)
            rows.append(row_from_call(i, address, call))
        return rows

    def statuses(self, among: Iterable[int] | None = None) -> dict[int, pb.StatusResponse]:
        found = {}
        for i in among if among is not None else self.ids:
            status = self.status(i)
            if status is not None:
                found[i] = status
        return found

    def serving_leader(self, among: Iterable[int] | None = None) -> int | None:
        """The node of the highest term among `among` that is leader, holds a lease and has
        finished waiting for an old one; None if there is none right now."""
        statuses = self.statuses(among)
        if not statuses:
            return None
        top = max(s.term for s in statuses.values())
        for i, s in statuses.items():
            if (
                s.term == top
                and s.role == "leader"
                and s.lease_remaining > 0
                and s.waiting_for_old_lease == 0
            ):
                return i
        return None

    def wait_for_leader(self, among: Iterable[int] | None = None, timeout: float = 20.0) -> int:
        group = list(among) if among is not None else None
        return wait_until(
            lambda: self.serving_leader(group), timeout, f"a serving leader among {group}"
        )

    def wait_converged(self, timeout: float = 20.0) -> int:
        """A serving leader and every running node applied up to its commit; returns it."""

        def converged() -> int | None:
            leader = self.serving_leader()
            if leader is None:
                return None
            statuses = self.statuses(self.live())
            commit = statuses[leader].commit_length if leader in statuses else None
            if commit is None or len(statuses) < len(self.live()):
                return None
            if all(s.applied_length >= commit for s in statuses.values()):
                return leader
            return None

        return wait_until(converged, timeout, "the cluster to converge")

    def get(self, node_id: int, key: str, timeout: float = 1.0) -> OpResult:
        invoke = time.monotonic()
        try:
            response = self.stub(node_id).Get(pb.GetRequest(key=key), timeout=timeout)
        except grpc.RpcError as error:
            return _failure(error, invoke)
        value = response.value if response.found else None
        return OpResult(True, value, invoke=invoke, complete=time.monotonic())

    def read(self, key: str, timeout: float = 20.0) -> str | None:
        """GET through whichever node serves as leader, retrying until one answers."""

        def answered() -> OpResult | None:
            leader = self.serving_leader()
            result = self.get(leader, key) if leader is not None else None
            return result if result is not None and result.ok else None

        return wait_until(answered, timeout, f"a leader to answer GET {key}").value

    def get_future(self, node_id: int, key: str, timeout: float) -> Any:
        """Send a GET now and return its grpc future (e.g. to a paused node)."""
        return self.stub(node_id).Get.future(pb.GetRequest(key=key), timeout=timeout)

    def set(
        self,
        node_id: int,
        key: str,
        value: str,
        *,
        client_id: str = "",
        seq: int = 0,
        timeout: float = 1.0,
    ) -> OpResult:
        invoke = time.monotonic()
        try:
            response = self.stub(node_id).Set(
                pb.SetRequest(key=key, value=value, client_id=client_id, seq=seq), timeout=timeout
            )
        except grpc.RpcError as error:
            return _failure(error, invoke)
        return OpResult(True, value, index=response.index, invoke=invoke, complete=time.monotonic())

    def write(
        self, key: str, value: str, *, among: Iterable[int] | None = None, timeout: float = 20.0
    ) -> OpResult:
        """SET through whichever of `among` leads, retrying (same client id/seq) until OK."""
        group = list(among) if among is not None else self.ids
        client_id, seq = f"controller-{next(self._client_ids)}", 1
        invoke = time.monotonic()
        deadline = invoke + timeout
        target = group[0]
        while True:
            leader = self.serving_leader(group)
            target = leader if leader is not None else target
            result = self.set(target, key, value, client_id=client_id, seq=seq)
            if result.ok:
                return OpResult(True, value, result.index, invoke=invoke, complete=result.complete)
            if time.monotonic() > deadline:
                raise ClusterError(f"could not write {key}={value} via {group}: {result}")
            if result.leader_hint is not None and result.leader_hint in group:
                target = result.leader_hint
            time.sleep(POLL)  # back off before retrying a refused write

    # -- files ----------------------------------------------------------------------------------

    def collect(self, destination: Path) -> Path:
        """Copy every node's logs.txt, metadata.txt, dump.txt (and stdout) to destination."""
        destination.mkdir(parents=True, exist_ok=True)
        for i in self.ids:
            target = destination / f"node{i}"
            target.mkdir(exist_ok=True)
            for name in ("logs.txt", "metadata.txt", "dump.txt"):
                with contextlib.suppress(OSError):
                    shutil.copy2(self.node_dir(i) / name, target / name)
            with contextlib.suppress(OSError):
                shutil.copy2(self.workdir / f"node{i}.out", target / "node.out")
            with contextlib.suppress(OSError):
                shutil.copy2(self.description_path(i), target / "cluster.json")
        return destination

    def dump_lines(self, node_id: int) -> list[str]:
        return dumps.dump_lines(self.node_dir(node_id) / "dump.txt")

    def core_events(self, node_id: int) -> list[events.Event]:
        return dumps.core_events(self.node_dir(node_id) / "dump.txt")


def _timing(lease: float | None, max_drift: float | None) -> TimingConfig:
    config = profile("fast")
    if lease is not None:
        config = replace(config, lease_duration=lease)
    if max_drift is not None:
        config = replace(config, max_clock_drift=max_drift)
    return config


def _failure(error: grpc.RpcError, invoke: float) -> OpResult:
    code = error.code().name if hasattr(error, "code") else "UNKNOWN"
    details = error.details() if hasattr(error, "details") else str(error)
    hint = None
    with contextlib.suppress(Exception):
        for key, value in error.trailing_metadata() or ():
            if key == "leader-id":
                hint = int(value)
    return OpResult(
        False,
        code=code,
        details=details or "",
        leader_hint=hint,
        invoke=invoke,
        complete=time.monotonic(),
    )


# ---------------------------------------------------------------------------------------------
# The command: a cluster driven by lines on stdin.

HELP = """commands (node ids, or `leader` for the current serving leader):
  status                      every node's role, term, lease, commit
  leader                      wait for a serving leader and print it
  get N KEY | set N KEY VALUE one call to node N
  write KEY VALUE             SET through the leader, retried until it commits
  kill N | restart N | pause N | resume N | stop N
  skew N RATE                 restart N with RAFTKV_CLOCK_RATE=RATE (needs --allow-unsafe)
  isolate N | split A,B C,D,E | ring | bridge N | oneway A B | drop A B | heal
  delay A B SECONDS           one-way added delay A→B (proxied clusters)
  wan SECONDS                 nodes in two regions {0..n/2}, {rest}; SECONDS one way between
  wait SECONDS                let time pass
  files DIR                   copy every node's files to DIR
  quit"""


def run_command(cluster: Cluster, line: str) -> str:
    words = shlex.split(line)
    if not words:
        return ""
    verb, rest = words[0], words[1:]

    def node(word: str) -> int:
        return cluster.wait_for_leader() if word == "leader" else int(word)

    if verb == "help":
        return HELP
    if verb == "status":
        return format_status_table(cluster.rows())
    if verb == "leader":
        return f"leader: node {cluster.wait_for_leader()}"
    if verb == "get":
        return str(cluster.get(node(rest[0]), rest[1]))
    if verb == "set":
        return str(cluster.set(node(rest[0]), rest[1], " ".join(rest[2:])))
    if verb == "write":
        return str(cluster.write(rest[0], " ".join(rest[1:])))
    actions: dict[str, Callable[[int], None]] = {
        "kill": cluster.kill,
        "restart": cluster.restart,
        "pause": cluster.pause,
        "resume": cluster.resume,
        "isolate": cluster.isolate,
        "bridge": cluster.bridge,
        "stop": lambda i: print(f"exit status {cluster.stop(i)}"),
    }
    if verb in actions:
        target = node(rest[0])
        actions[verb](target)
        return f"{verb} node {target}"
    if verb == "skew":
        target = node(rest[0])
        cluster.restart(target, env={"RAFTKV_CLOCK_RATE": rest[1]})
        return f"node {target} restarted with clock rate {rest[1]}"
    if verb == "split":
        groups = [[int(x) for x in group.split(",")] for group in rest]
        cluster.split(groups)
        return f"split {groups}"
    if verb == "ring":
        cluster.ring()
        return f"ring: cut {sorted(cluster.partition)}"
    if verb == "oneway":
        cluster.cut_one_way(node(rest[0]), node(rest[1]))
        return f"cut {sorted(cluster.partition)}"
    if verb == "drop":
        cluster.drop_messages({(node(rest[0]), node(rest[1]))})
        return "dropping messages"
    if verb == "heal":
        cluster.heal()
        return "healed"
    if verb == "delay":
        cluster.set_delay(node(rest[0]), node(rest[1]), float(rest[2]))
        return "delay set"
    if verb == "wan":
        half = cluster.size // 2 + 1
        seconds = float(rest[0])
        cluster.set_wan([cluster.ids[:half], cluster.ids[half:]], lambda a, b: seconds)
        return f"two regions, {seconds}s one way between them"
    if verb == "wait":
        time.sleep(float(rest[0]))
        return ""
    if verb == "files":
        return f"files in {cluster.collect(Path(rest[0]))}"
    raise ValueError(f"unknown command {verb!r} (try `help`)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.controller",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--network", choices=["auto", "netns", "loopback"], default="auto")
    parser.add_argument("--proxied", action="store_true", help="links through delay proxies")
    parser.add_argument("--lease", type=float)
    parser.add_argument("--max-drift", type=float)
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument(
        "--allow-unsafe",
        action="store_true",
        help="start nodes with --allow-unsafe: needed for `skew` and --unsafe-* node arguments",
    )
    parser.add_argument("node_args", nargs="*", help="extra node arguments (after --)")
    args = parser.parse_args(argv)
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="raftkv-faults-"))
    with Cluster(
        workdir,
        args.nodes,
        network=args.network,
        proxied=args.proxied,
        lease=args.lease,
        max_drift=args.max_drift,
        node_args=args.node_args,
        allow_unsafe=args.allow_unsafe,
    ) as cluster:
        interactive = sys.stdin.isatty()
        if interactive:
            print(HELP)
        for line in sys.stdin:
            if line.strip() in ("quit", "exit"):
                break
            try:
                output = run_command(cluster, line)
            except (ClusterError, ValueError, IndexError) as error:
                output = f"error: {error}"
            if output:
                print(output, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
