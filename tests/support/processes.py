"""Real-process test clusters: raftkv-node processes on loopback that tests start, stop, kill -9,
pause (SIGSTOP), resume and restart, with gRPC helpers and bounded waits.

    with LocalCluster(tmp_path, 3) as cluster:
        cluster.start()
        leader = cluster.leader()
        cluster.set(leader, "a", "1")
        cluster.kill_node(leader)
        cluster.wait_for(lambda: cluster.leader_or_none() not in (None, leader), 10, "a new leader")

Everything waits by polling a condition against a deadline (`wait_for`); on timeout it raises an
AssertionError that names what it waited for and shows every node's status, process state and the
tail of its dump.txt, so a failing test explains itself. `close()` (also on `__exit__`) SIGKILLs
every node, whatever state the test left it in.

Files, under `tmp_path/cluster/` (the layout `python -m raftkv_tools.localcluster` uses):
cluster.json, data/logs_node_<id>/{logs.txt,metadata.txt,dump.txt}, node-<id>.out.
"""

from __future__ import annotations

import atexit
import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import grpc

from raftkv.client.status import (
    NodeStatusRow,
    format_status_table,
    row_from_status,
    unreachable_row,
)
from raftkv.cluster import PEER_PORT_OFFSET, ClusterDescription
from raftkv.core import events
from raftkv.core.config import ReadMode, TimingConfig, profile
from raftkv.core.messages import LogEntry
from raftkv.rpc import raftkv_pb2 as pb
from raftkv.rpc import raftkv_pb2_grpc
from raftkv.rpc.options import POLL_CHANNEL_OPTIONS
from raftkv.server.launch import NodeLaunch
from raftkv.server.storage import decode_entry
from raftkv_tools.certs import issue as issue_certificates
from raftkv_tools.certs import local_nodes
from raftkv_tools.launcher import spawn_node
from raftkv_tools.ports import free_ports
from tests.support import dumps
from tests.support.dumps import DumpEvent

T = TypeVar("T")

HOST = "127.0.0.1"
DUMP_TAIL_LINES = 25
OUT_TAIL_LINES = 15
STATUS_TIMEOUT = 0.5
RPC_TIMEOUT = 2.0
PROBE_KEY = "__probe__"

# Lines left out of a failing test's dump tail: one per heartbeat, they would hide the rest.
ROUTINE_EVENTS = (events.SendingHeartbeat, events.AppendAccepted)


class NotYet(Exception):  # noqa: N818 - a signal to poll again, not an error
    """Raised by a `wait_for` condition to say "not yet, poll again" (with a reason to report)."""


# Every cluster that is still open, so that even an interpreter exit does not leak nodes.
_OPEN_CLUSTERS: weakref.WeakSet[LocalCluster] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for cluster in list(_OPEN_CLUSTERS):
        cluster.close()


# ---------------------------------------------------------------------------------------------
# Nodes


@dataclass
class NodeProcess:
    node_id: int
    address: str
    out_path: Path
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    starts: int = 0
    exit_codes: list[int] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def state(self) -> str:
        if self.process is None:
            return "never started" if not self.starts else "stopped"
        code = self.process.poll()
        if code is not None:
            return f"exited with status {code}"
        return f"pid {self.process.pid}" + (" (paused)" if self.paused else "")


class LocalCluster:
    """A cluster of `size` raftkv-node processes on 127.0.0.1, ports chosen free.

    `profile`, `lease` and `read_mode` set every node's timing (the effective values are in
    `self.timing`); `extra_args` go to every node's command line, `node_args[i]` to node i's only;
    `prefix` runs every node under a wrapper (e.g. `prlimit --nofile=128:128 --`).
    `initial_cluster_state` ("new" or "existing", None: the node's default) is passed to every
    node; `start_node(i, initial_cluster_state=...)` sets it for node i (and its later starts).
    A test seam among them or in `env` (an `--unsafe-*` flag, RAFTKV_CLOCK_RATE, RAFTKV_FAILPOINT)
    needs `allow_unsafe=True` (or `cluster.allow_unsafe = True` before the start that uses it).
    """

    def __init__(
        self,
        tmp_path: Path,
        size: int,
        profile: str = "fast",
        extra_args: Sequence[str] = (),
        *,
        lease: float | None = None,
        read_mode: str | None = None,
        node_args: Mapping[int, Sequence[str]] | None = None,
        env: Mapping[str, str] | None = None,
        allow_unsafe: bool = False,
        prefix: Sequence[str] = (),
        initial_cluster_state: str | None = None,
    ) -> None:
        self.root = tmp_path / "cluster"
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_root = self.root / "data"
        self.description_path = self.root / "cluster.json"
        self.size = size
        self.profile = profile
        self.extra_args = list(extra_args)
        self.lease = lease
        self.read_mode = read_mode
        self.node_args = {i: list(a) for i, a in (node_args or {}).items()}
        self.env = dict(env or {})
        self.allow_unsafe = allow_unsafe
        self.prefix = list(prefix)
        self.initial_cluster_state = initial_cluster_state
        self.node_cluster_states: dict[int, str] = {}
        self.timing = _timing(profile, lease, read_mode)
        self.ports = free_ports(size, offsets=(0, PEER_PORT_OFFSET))
        self.certs = self.root / "tls"
        issue_certificates(self.certs, local_nodes(size), cluster_name="test")
        self.description = replace(
            ClusterDescription.local(
                size, base_port=self.ports[0], data_dir=str(self.data_root), profile=profile
            ),
            cluster_id=f"test-{uuid.uuid4().hex[:8]}",
            peer_certs=str(self.certs),
        )
        self.description.save(self.description_path)
        self.nodes = {
            n.id: NodeProcess(n.id, n.address, self.root / f"node-{n.id}.out")
            for n in self.description.nodes
        }
        # Tests call the helpers from several threads (writers while nodes restart).
        self._channel_lock = threading.Lock()
        self._channels: dict[int, grpc.Channel] = {}
        self._retired: list[grpc.Channel] = []
        self.client_id = f"test-{uuid.uuid4().hex[:12]}"
        self._seq = 0
        self._closed = False
        _OPEN_CLUSTERS.add(self)

    # -- context manager ------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def ids(self) -> list[int]:
        return list(self.nodes)

    # -- processes ------------------------------------------------------------------------------

    def launch(self, node_id: int) -> NodeLaunch:
        return NodeLaunch(
            node_id,
            cluster=self.description_path,
            data_dir=self.data_root,
            profile=self.profile,
            lease=self.lease,
            read_mode=self.read_mode,
            initial_cluster_state=self.node_cluster_states.get(node_id, self.initial_cluster_state),
            quiet=True,
            extra_args=[*self.extra_args, *self.node_args.get(node_id, ())],
            env=self.env,
            allow_unsafe=self.allow_unsafe,
        )

    def start(self, ids: Sequence[int] | None = None) -> LocalCluster:
        """Start the given nodes (default: every node that is not running)."""
        for node_id in self.ids if ids is None else ids:
            if not self.nodes[node_id].running:
                self.start_node(node_id)
        return self

    def start_node(self, node_id: int, *, initial_cluster_state: str | None = None) -> None:
        node = self.nodes[node_id]
        if node.running:
            raise RuntimeError(f"node {node_id} is already running ({node.state()})")
        if initial_cluster_state is not None:
            self.node_cluster_states[node_id] = initial_cluster_state
        node.starts += 1
        with node.out_path.open("ab") as output:
            output.write(f"--- start #{node.starts} at {datetime.now().isoformat()} ---\n".encode())
        node.process = spawn_node(self.launch(node_id), output=node.out_path, prefix=self.prefix)
        node.paused = False
        self._reset_channel(node_id)

    def stop_node(self, node_id: int, timeout: float = 10.0) -> int:
        """SIGTERM (a clean shutdown) and wait; returns the exit status."""
        node = self._live(node_id)
        assert node.process is not None
        if node.paused:
            self.resume_node(node_id)
        node.process.send_signal(signal.SIGTERM)
        try:
            code = node.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"node {node_id} did not exit within {timeout} s of SIGTERM\n" + self.describe()
            ) from None
        node.exit_codes.append(code)
        return code

    def kill_node(self, node_id: int) -> None:
        """kill -9: the process dies at once, losing whatever it had not written out."""
        node = self._live(node_id)
        assert node.process is not None
        node.process.kill()
        node.exit_codes.append(node.process.wait(10))
        node.paused = False

    def pause_node(self, node_id: int) -> None:
        """SIGSTOP: the process freezes (its sockets stay open), as in a long GC pause."""
        node = self._live(node_id)
        assert node.process is not None
        node.process.send_signal(signal.SIGSTOP)
        node.paused = True

    def resume_node(self, node_id: int) -> None:
        node = self._live(node_id)
        assert node.process is not None
        node.process.send_signal(signal.SIGCONT)
        node.paused = False

    def restart_node(self, node_id: int) -> None:
        """kill -9 the node if it runs, then start it again on the same port and data."""
        if self.nodes[node_id].running:
            self.kill_node(node_id)
        self.start_node(node_id)

    def running_ids(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.running]

    def active_ids(self) -> list[int]:
        """Running and not paused: the nodes that can answer."""
        return [i for i, n in self.nodes.items() if n.running and not n.paused]

    def close(self) -> None:
        """SIGKILL every node (resuming paused ones is not needed for SIGKILL) and wait."""
        if self._closed:
            return
        self._closed = True
        for node in self.nodes.values():
            if node.process is not None and node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.kill()
        for node in self.nodes.values():
            if node.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(10)
        with self._channel_lock:
            for channel in [*self._channels.values(), *self._retired]:
                channel.close()
            self._channels.clear()
            self._retired.clear()
        _OPEN_CLUSTERS.discard(self)

    def _live(self, node_id: int) -> NodeProcess:
        node = self.nodes[node_id]
        if not node.running:
            raise AssertionError(f"node {node_id} is not running ({node.state()})")
        return node

    # -- gRPC -----------------------------------------------------------------------------------

    def channel(self, node_id: int) -> grpc.Channel:
        with self._channel_lock:
            if self._closed:
                raise RuntimeError(f"the cluster in {self.root} is closed")
            if node_id not in self._channels:
                address = self.nodes[node_id].address
                self._channels[node_id] = grpc.insecure_channel(
                    address, options=POLL_CHANNEL_OPTIONS
                )
            return self._channels[node_id]

    def _reset_channel(self, node_id: int) -> None:
        # A fresh channel has no reconnect back-off left over from the node's previous life.
        # The old one stays open until close(): another thread may be calling through it (its
        # calls fail with a grpc.RpcError, as calls to a dead node do, not "channel closed").
        with self._channel_lock:
            old = self._channels.pop(node_id, None)
            if old is not None:
                self._retired.append(old)

    def kv(self, node_id: int) -> raftkv_pb2_grpc.KeyValueStub:
        return raftkv_pb2_grpc.KeyValueStub(self.channel(node_id))

    def raft(self, node_id: int) -> raftkv_pb2_grpc.RaftStub:
        return raftkv_pb2_grpc.RaftStub(self.channel(node_id))

    def status(self, node_id: int, timeout: float = STATUS_TIMEOUT) -> pb.StatusResponse | None:
        """The node's Status, or None when it is not running, paused or does not answer."""
        node = self.nodes[node_id]
        if not node.running or node.paused:
            return None
        try:
            response: pb.StatusResponse = self.kv(node_id).Status(
                pb.StatusRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return None
        return self._check_identity(node_id, response)

    def _check_identity(self, node_id: int, status: pb.StatusResponse) -> pb.StatusResponse:
        # gRPC servers bind with SO_REUSEPORT, so a process of another test run that landed on
        # our port would share it silently; fail loudly instead of testing a chimera.
        if status.node_id != node_id:
            raise AssertionError(
                f"{self.nodes[node_id].address} answered as node {status.node_id} "
                f"({status.address}), not node {node_id}: another process shares the port"
            )
        return status

    def statuses(self, timeout: float = STATUS_TIMEOUT) -> dict[int, pb.StatusResponse | None]:
        """Every node's Status (None for those that cannot answer), asked in parallel."""
        calls = {
            i: self.kv(i).Status.future(pb.StatusRequest(), timeout=timeout)
            for i in self.active_ids()
        }
        result: dict[int, pb.StatusResponse | None] = dict.fromkeys(self.ids)
        for node_id, call in calls.items():
            with contextlib.suppress(grpc.RpcError):
                result[node_id] = self._check_identity(node_id, call.result())
        return result

    def rows(self) -> list[NodeStatusRow]:
        rows = []
        for node_id, status in self.statuses().items():
            address = self.description.node(node_id).address
            if status is None:
                rows.append(unreachable_row(node_id, address, self.nodes[node_id].state()))
            else:
                rows.append(row_from_status(node_id, address, status))
        return rows

    def get(self, node_id: int, key: str, timeout: float = RPC_TIMEOUT) -> pb.GetResponse:
        """KeyValue.Get; raises grpc.RpcError as the node answers."""
        response: pb.GetResponse = self.kv(node_id).Get(pb.GetRequest(key=key), timeout=timeout)
        return response

    def set(
        self,
        node_id: int,
        key: str,
        value: str,
        timeout: float = RPC_TIMEOUT,
        *,
        client_id: str = "",
        seq: int = 0,
    ) -> pb.SetResponse:
        """KeyValue.Set; raises grpc.RpcError as the node answers."""
        request = pb.SetRequest(key=key, value=value, client_id=client_id, seq=seq)
        response: pb.SetResponse = self.kv(node_id).Set(request, timeout=timeout)
        return response

    def serve_client(
        self, node_id: int, request: str, timeout: float = RPC_TIMEOUT
    ) -> pb.ServeClientReply:
        """The assignment's RPC: "GET k" / "SET k v"."""
        reply: pb.ServeClientReply = self.raft(node_id).ServeClient(
            pb.ServeClientArgs(Request=request), timeout=timeout
        )
        return reply

    def write(self, key: str, value: str, timeout: float = 10.0) -> int:
        """SET at whichever node leads, retrying (exactly once: same client id and seq) until
        it is acknowledged. Returns the node that acknowledged it."""
        self._seq += 1
        seq = self._seq

        def attempt() -> int | None:
            leader = self.leader_or_none()
            if leader is None:
                return None
            self.set(leader, key, value, client_id=self.client_id, seq=seq)
            return leader

        return self.wait_for(attempt, timeout, f"SET {key!r} to be acknowledged")

    def read(self, key: str, timeout: float = 10.0) -> str | None:
        """GET at whichever node leads, retrying until one answers; None if the key is absent."""

        def attempt() -> tuple[str | None] | None:
            leader = self.leader_or_none()
            if leader is None:
                return None
            response = self.get(leader, key)
            return (response.value if response.found else None,)

        return self.wait_for(attempt, timeout, f"GET {key!r} to be answered")[0]

    # -- waiting ----------------------------------------------------------------------------------

    def wait_for(
        self,
        condition: Callable[[], T | None],
        timeout: float,
        what: str,
        interval: float = 0.02,
    ) -> T:
        """Poll `condition` until it returns anything but None or False (that value is
        returned; 0 counts, as node 0 may be the answer) or `timeout` passes.

        A grpc.RpcError or NotYet raised by the condition counts as "not yet". On timeout:
        AssertionError naming `what`, with the last such error and `describe()`.
        """
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while True:
            try:
                value = condition()
            except (grpc.RpcError, NotYet) as error:
                last_error = error
            else:
                if value is not None and value is not False:
                    return value
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        message = f"timed out after {timeout:g} s waiting for {what}"
        if last_error is not None:
            message += f"\nlast error: {_rpc_error_text(last_error)}"
        raise AssertionError(message + "\n" + self.describe())

    def leader_or_none(self, *, serving: bool = True) -> int | None:
        """The leader if, right now, exactly one node leads with a lease (and has stopped waiting
        for an old one), every other answering node is in its term and names it, and (serving)
        it answers a GET."""
        statuses = {i: s for i, s in self.statuses().items() if i in self.active_ids()}
        if any(s is None for s in statuses.values()):
            return None
        answered = {i: s for i, s in statuses.items() if s is not None}
        leaders = [i for i, s in answered.items() if s.role == "leader"]
        if len(leaders) != 1:
            return None
        leader = leaders[0]
        mine = answered[leader]
        if mine.lease_remaining <= 0 or mine.waiting_for_old_lease > 0:
            return None
        for status in answered.values():
            if status.term != mine.term or not status.HasField("leader_id"):
                return None
            if status.leader_id != leader:
                return None
        if serving:
            try:
                self.get(leader, PROBE_KEY, timeout=STATUS_TIMEOUT)
            except grpc.RpcError:
                return None
        return leader

    def at_leader(self, action: Callable[[int], T], timeout: float = 10.0, what: str = "") -> T:
        """`action(leader)` at the current leader, again at the next one if it raises
        grpc.RpcError or NotYet (say, leadership moved): tests that are not about failover stay
        deterministic on a machine so busy that a leader loses its lease."""

        def attempt() -> T | None:
            leader = self.leader_or_none()
            return None if leader is None else action(leader)

        return self.wait_for(attempt, timeout, what or "an action to succeed at the leader")

    def leader(self, timeout: float = 10.0, *, serving: bool = True) -> int:
        """Wait for a unique leader with a lease that every running node follows."""
        return self.wait_for(
            lambda: self.leader_or_none(serving=serving),
            timeout,
            "a unique leader with a lease, followed by every running node",
        )

    # -- files ------------------------------------------------------------------------------------

    def node_dir(self, node_id: int) -> Path:
        return self.data_root / f"logs_node_{node_id}"

    def restore_node(
        self, node_id: int, source: int, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`raftkv restore-node` of `node_id` from `source`'s files, as an operator runs it (the
        node stopped); the caller checks the exit status."""
        return run_module(
            "raftkv",
            "--cluster",
            str(self.description_path),
            "restore-node",
            "--from",
            str(self.node_dir(source)),
            "--into",
            str(self.data_root),
            "--id",
            str(node_id),
            cwd=cwd,
        )

    def dump_path(self, node_id: int) -> Path:
        return self.node_dir(node_id) / "dump.txt"

    def logs_path(self, node_id: int) -> Path:
        return self.node_dir(node_id) / "logs.txt"

    def metadata_path(self, node_id: int) -> Path:
        return self.node_dir(node_id) / "metadata.txt"

    def dump_lines(self, node_id: int) -> list[str]:
        return dumps.dump_lines(self.dump_path(node_id))

    def dump_events(self, node_id: int) -> list[DumpEvent]:
        """dump.txt parsed: wall-clock time, text, and the core event it reports."""
        return dumps.dump_events(self.dump_path(node_id))

    def core_events(self, node_id: int) -> list[events.Event]:
        return dumps.core_events(self.dump_path(node_id))

    def dump_has(self, node_id: int, text: str) -> bool:
        return any(text in line for line in self.dump_lines(node_id))

    def log_lines(self, node_id: int) -> list[str]:
        """logs.txt lines (only complete ones)."""
        try:
            text = self.logs_path(node_id).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return text.split("\n")[:-1]

    def log_first_index(self, node_id: int) -> int:
        """The index of logs.txt's first line: 1, or later once the log was compacted (the
        line's checksum covers its index= field, which decode_entry checks)."""
        lines = self.log_lines(node_id)
        found = re.search(r" index=([0-9]+) crc=", lines[0]) if lines else None
        return int(found.group(1)) if found is not None else 1

    def log_entries(self, node_id: int) -> list[LogEntry]:
        """Every line of logs.txt, from `log_first_index` on (after a compaction its first line
        is the sentinel: an entry the snapshot covers too)."""
        path = str(self.logs_path(node_id))
        first = self.log_first_index(node_id)
        return [
            decode_entry(line, path=path, line_no=number, index=first + number - 1)
            for number, line in enumerate(self.log_lines(node_id), start=1)
        ]

    # -- diagnostics ------------------------------------------------------------------------------

    def describe(self) -> str:
        """Every node's status and process state, and the tail of its dump.txt and output."""
        parts = [f"cluster in {self.root} (profile {self.profile}, {self.timing_text()})"]
        try:
            parts.append(format_status_table(self.rows()))
        except Exception as error:  # diagnostics must not hide the original failure
            parts.append(f"(status unavailable: {error!r})")
        for node_id, node in self.nodes.items():
            parts.append(
                f"--- node {node_id}: {node.state()}, started {node.starts}x, "
                f"exits {node.exit_codes}"
            )
            lines = self.dump_lines(node_id)
            # Heartbeats and their acceptances drown everything else: count them instead.
            routine = sum(1 for line in lines if _is_routine(line))
            dump = [line for line in lines if not _is_routine(line)]
            dump = dump[-DUMP_TAIL_LINES:]
            parts.append(
                f"  dump.txt (last {len(dump)} other lines of {len(lines)}; "
                f"{routine} heartbeat / accepted-AppendEntries lines not shown):"
            )
            parts.extend(f"    {line}" for line in dump)
            out = _tail(node.out_path, OUT_TAIL_LINES)
            meaningful = [line for line in out if not line.startswith("--- start #")]
            if meaningful:
                parts.append(f"  {node.out_path.name} (last {len(out)} lines):")
                parts.extend(f"    {line}" for line in out)
        return "\n".join(parts)

    def timing_text(self) -> str:
        t = self.timing
        return (
            f"election {t.election_timeout_min}-{t.election_timeout_max}s, heartbeat "
            f"{t.heartbeat_interval}s, lease {t.lease_duration}s, read mode {t.read_mode.value}"
        )


# What the `make_cluster` fixture (tests/process/conftest.py) hands a test.
ClusterFactory = Callable[..., LocalCluster]


def _is_routine(line: str) -> bool:
    return isinstance(events.parse(line.partition(" ")[2]), ROUTINE_EVENTS)


def _timing(name: str, lease: float | None, read_mode: str | None) -> TimingConfig:
    timing = profile(name)
    if lease is not None:
        timing = replace(timing, lease_duration=lease)
    if read_mode is not None:
        timing = timing.with_read_mode(ReadMode(read_mode))
    return timing


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _rpc_error_text(error: BaseException) -> str:
    if isinstance(error, NotYet):
        return str(error)
    if isinstance(error, grpc.Call):
        return f"{error.code().name}: {error.details()}"
    return repr(error)


def rpc_code(error: grpc.RpcError) -> grpc.StatusCode | None:
    return error.code() if isinstance(error, grpc.Call) else None


def run_module(
    module: str, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m module args…`, its output captured; the caller checks the exit status."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )
