"""Three-member clusters the benchmark starts and stops itself, on loopback, in a temp folder:
our nodes, etcd 3.4 and PySyncObj (behind our gRPC front door), optionally with a delaying
proxy (raftkv_tools.delayproxy, in its own process) on every node↔node link.

WAN layout: one proxy per member, in front of its *peer* port, adding the one-way delay in each
direction. Every member reaches member j only through proxy j, so every node↔node link (both
directions of every TCP connection) carries the delay. Our nodes get per-node cluster
descriptions that list the other nodes' peer addresses at their proxies (mutual TLS passes
through: a node checks the certificate's node name, not the address); etcd members advertise
their proxy as peer URL. Clients always use the real client
addresses, so the client sits beside the leader with no delay.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from raftkv.cluster import PEER_PORT_OFFSET, ClusterDescription, NodeAddress
from raftkv.core.config import SnapshotPolicy
from raftkv.server.launch import NodeLaunch
from raftkv_tools.bench.backends import Target, kv_stub
from raftkv_tools.bench.procstats import DirSize, dir_size, rss_bytes
from raftkv_tools.bench.workload import VALUE_BYTES, keys, values
from raftkv_tools.certs import issue as issue_certificates
from raftkv_tools.certs import local_nodes
from raftkv_tools.launcher import spawn
from raftkv_tools.ports import free_ports

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
_T = TypeVar("_T")


class ClusterError(RuntimeError):
    pass


def _wait_for(what: str, check: Callable[[], _T | None], timeout: float, logs: str = "") -> _T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result is not None:
            return result
        time.sleep(0.05)
    raise ClusterError(f"{what} not ready after {timeout:.0f} s{logs}")


class ManagedProcess:
    """One child process, its output in a log file; never outlives the benchmark."""

    def __init__(self, name: str, command: list[str], log: Path, env: dict[str, str] | None = None):
        """`env` is laid over this process's environment."""
        self.name = name
        self.command = command
        self.log = log
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        # A session of its own: Ctrl-C on the benchmark does not hit the servers first.
        self.process = spawn(self.command, output=self.log, env=self.env, new_session=True)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(f"    {line}" for line in text)


class ProxyProcess(ManagedProcess):
    """`python -m raftkv_tools.delayproxy` with one mapping per member."""

    def __init__(self, mappings: list[tuple[str, str]], delay: float, log: Path) -> None:
        command = [sys.executable, "-m", "raftkv_tools.delayproxy", "--delay", f"{delay}s"]
        for listen, target in mappings:
            command += ["--map", f"{listen}={target}"]
        super().__init__("delayproxy", command, log)
        self.mappings = mappings

    def start(self) -> None:
        super().start()
        ports = [int(listen.rsplit(":", 1)[1]) for listen, _ in self.mappings]

        def listening() -> bool | None:
            if not self.alive():
                raise ClusterError(f"the delay proxy exited:\n{self.tail()}")
            for port in ports:
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", port)) != 0:
                        return None
            return True

        _wait_for("delay proxy", listening, 10.0)


@dataclass
class Footprint:
    rss: dict[str, int | None]
    data: dict[str, DirSize]

    def to_json(self) -> dict[str, Any]:
        return {
            "rss_bytes": self.rss,
            "data_dir": {k: v.to_json() for k, v in self.data.items()},
        }


class Cluster:
    """What the benchmark needs from any of the three systems."""

    system = "?"
    size = 3

    def __init__(self, root: Path, *, wan_delay: float = 0.0) -> None:
        self.root = root
        self.wan_delay = wan_delay
        self.members: list[ManagedProcess] = []
        self.proxy: ProxyProcess | None = None
        self.notes: list[str] = []

    # -- to implement --------------------------------------------------------------------------
    @property
    def label(self) -> str:
        raise NotImplementedError

    def _leader_index(self) -> int | None:
        """The index of the member every live member agrees leads (None: not yet)."""
        raise NotImplementedError

    def target(self, serializable: bool = False) -> Target:
        raise NotImplementedError

    def _term_of(self, index: int) -> int:
        """Member `index`'s current Raft term (raises grpc.RpcError when it does not answer)."""
        raise NotImplementedError

    def term(self) -> int | None:
        """The highest term any live member reports (None if none answers)."""
        terms = []
        for index, member in enumerate(self.members):
            if member.alive():
                with contextlib.suppress(grpc.RpcError):
                    terms.append(self._term_of(index))
        return max(terms, default=None)

    def data_dir(self, index: int) -> Path:
        raise NotImplementedError

    def _preload_one(self, stub: Any, key: str, value: str, number: int) -> None:
        raise NotImplementedError

    def _stub_for_preload(self, address: str) -> Any:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------
    def _logs(self) -> str:
        parts = [
            f"\n  {m.name} ({'alive' if m.alive() else 'dead'}):\n{m.tail()}" for m in self.members
        ]
        return "".join(parts)

    def start(self) -> None:
        if self.proxy is not None:
            self.proxy.start()
        for member in self.members:
            member.start()
        self.wait_ready()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> int:
        """Wait until every live member agrees on a leader that can serve; returns its index."""

        def check() -> int | None:
            for member in self.members:
                if member.process is not None and not member.alive():
                    raise ClusterError(f"{member.name} exited:{self._logs()}")
            return self._leader_index()

        return _wait_for(f"{self.label}", check, timeout, self._logs())

    def leader(self) -> int:
        return self.wait_ready()

    def pids(self) -> dict[str, int]:
        return {m.name: m.pid for m in self.members if m.alive()}

    def kill(self, index: int) -> None:
        self.members[index].kill()

    def restart(self, index: int) -> None:
        self.members[index].start()

    def stop(self) -> None:
        for member in self.members:
            with contextlib.suppress(Exception):
                member.stop()
        if self.proxy is not None:
            self.proxy.stop()

    def footprint(self) -> Footprint:
        return Footprint(
            rss={m.name: rss_bytes(m.pid) if m.alive() else None for m in self.members},
            data={m.name: dir_size(self.data_dir(i)) for i, m in enumerate(self.members)},
        )

    def preload(
        self, key_count: int, timeout: float = 60.0, value_bytes: int = VALUE_BYTES
    ) -> None:
        """SET every key once (so that GETs find values), 16 requests at a time, following
        leader changes."""
        value_list = values(size=value_bytes)
        key_list = keys(key_count)
        deadline = time.monotonic() + timeout
        current: dict[str, Any] = {}

        def stub() -> Any:
            if "stub" not in current:
                target = self.target()
                current["stub"] = self._stub_for_preload(target.addresses[target.leader])
            return current["stub"]

        def one(number: int) -> None:
            while True:
                try:
                    self._preload_one(
                        stub(), key_list[number], value_list[number % len(value_list)], number
                    )
                    return
                except grpc.RpcError as error:
                    if time.monotonic() > deadline:
                        raise ClusterError(f"{self.label}: preload failed: {error}") from None
                    current.pop("stub", None)
                    time.sleep(0.05)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(key_count)))


# ---------------------------------------------------------------------------------------------
# raftkv


class _KeyValueFrontDoor(Cluster):
    """A cluster served through our own `service KeyValue` (raftkv itself, or the PySyncObj
    front door): the same load-generator target, status term, preload and channels."""

    _pb: Any
    _channels: list[grpc.Channel]
    _status: list[Any]
    addresses: list[str]

    def target(self, serializable: bool = False) -> Target:
        return Target(
            kind="raftkv",
            label=self.label,
            addresses=tuple(self.addresses),
            node_ids=tuple(range(self.size)),
            leader=self.leader(),
            pipeline=True,
        )

    def _term_of(self, index: int) -> int:
        return int(self._status[index](self._pb.StatusRequest(), timeout=0.5).term)

    def _stub_for_preload(self, address: str) -> Any:
        return kv_stub(self._channels[self.addresses.index(address)])

    def _preload_one(self, stub: Any, key: str, value: str, number: int) -> None:
        stub.Set(self._pb.SetRequest(key=key, value=value), timeout=10)

    def stop(self) -> None:
        for channel in self._channels:
            channel.close()
        super().stop()


class RaftKVCluster(_KeyValueFrontDoor):
    system = "raftkv"

    def __init__(
        self,
        root: Path,
        *,
        read_mode: str = "lease",
        profile: str = "fast",
        wan_delay: float = 0.0,
        fsync: bool = True,
        snapshots: SnapshotPolicy | None = None,
    ) -> None:
        """`snapshots`: the nodes' --snapshot-entries, --snapshot-bytes and --trailing-entries
        (None: the nodes' defaults)."""
        super().__init__(root, wan_delay=wan_delay)
        from raftkv.rpc import raftkv_pb2

        self._pb = raftkv_pb2
        self.read_mode = read_mode
        self.profile = profile
        ports = free_ports(self.size * (2 if wan_delay else 1), offsets=(0, PEER_PORT_OFFSET))
        real = [f"127.0.0.1:{p}" for p in ports[: self.size]]
        peer = [f"127.0.0.1:{p + PEER_PORT_OFFSET}" for p in ports[: self.size]]
        data = root / "data"
        certs = root / "tls"
        issue_certificates(certs, local_nodes(self.size), cluster_name="bench")

        def description(peer_addresses: list[str]) -> ClusterDescription:
            return ClusterDescription(
                tuple(
                    NodeAddress(i, real[i], "localhost", str(data), peer_addresses[i])
                    for i in range(self.size)
                ),
                name="bench",
                profile=profile,
                peer_certs=str(certs),
            )

        self.description = description(peer)
        root.mkdir(parents=True, exist_ok=True)
        self.description.save(root / "cluster.json")
        if wan_delay:
            via = [f"127.0.0.1:{p}" for p in ports[self.size :]]
            self.proxy = ProxyProcess(
                list(zip(via, peer, strict=True)), wan_delay, root / "logs" / "delayproxy.log"
            )
        for i in range(self.size):
            description_file = root / "cluster.json"
            if wan_delay:
                own = description([peer[j] if j == i else via[j] for j in range(self.size)])
                description_file = root / f"cluster-node{i}.json"
                own.save(description_file)
            command = NodeLaunch(
                i,
                cluster=description_file,
                data_dir=data,
                profile=profile,
                quiet=True,
                read_mode=read_mode if read_mode != "lease" else None,
                fsync=fsync,
                snapshots=snapshots,
                # fsync=False only from `raftkv bench --no-fsync`, a negative control.
                allow_unsafe=not fsync,
            ).command()
            self.members.append(ManagedProcess(f"node{i}", command, root / "logs" / f"node{i}.log"))
        self._channels = [grpc.insecure_channel(a) for a in real]
        self._status = [kv_stub(c).Status for c in self._channels]
        self.addresses = real

    @property
    def label(self) -> str:
        return f"raftkv ({self.read_mode} reads)"

    def data_dir(self, index: int) -> Path:
        return self.root / "data" / f"logs_node_{index}"

    def _leader_index(self) -> int | None:
        leaders = set()
        leader_row = None
        for i, member in enumerate(self.members):
            if not member.alive():
                continue
            try:
                row = self._status[i](self._pb.StatusRequest(), timeout=0.5)
            except grpc.RpcError:
                return None
            if not row.HasField("leader_id"):
                return None
            leaders.add(row.leader_id)
            if row.role == "leader":
                leader_row = row
        if len(leaders) != 1 or leader_row is None:
            return None
        if leader_row.waiting_for_old_lease > 0 or leader_row.commit_length < 1:
            return None
        if self.read_mode == "lease" and leader_row.lease_remaining <= 0:
            return None
        return int(leader_row.node_id)


# ---------------------------------------------------------------------------------------------
# etcd


def etcd_binary() -> str:
    path = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if path is None:
        raise ClusterError(
            "etcd is not installed: `make bench-deps` (Debian packages etcd-server, etcd-client)"
        )
    return path


def etcd_version() -> str:
    try:
        out = subprocess.run(
            [etcd_binary(), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    return "?"


class EtcdCluster(Cluster):
    system = "etcd"

    def __init__(
        self, root: Path, *, wan_delay: float = 0.0, extra_args: Sequence[str] = ()
    ) -> None:
        """`extra_args` go to every member's command line, after ours (e.g.
        --auto-compaction-mode)."""
        super().__init__(root, wan_delay=wan_delay)
        from raftkv_tools.bench import etcdstubs

        self._pb, self._pb_grpc = etcdstubs.load()
        binary = etcd_binary()
        self.version = etcd_version()
        ports = free_ports(self.size * (3 if wan_delay else 2))
        client = [f"127.0.0.1:{p}" for p in ports[: self.size]]
        peer = [f"127.0.0.1:{p}" for p in ports[self.size : 2 * self.size]]
        advertised = peer
        if wan_delay:
            advertised = [f"127.0.0.1:{p}" for p in ports[2 * self.size :]]
            self.proxy = ProxyProcess(
                list(zip(advertised, peer, strict=True)),
                wan_delay,
                root / "logs" / "delayproxy.log",
            )
        initial = ",".join(f"m{i}=http://{advertised[i]}" for i in range(self.size))
        token = f"bench-{uuid.uuid4().hex[:8]}"
        root.mkdir(parents=True, exist_ok=True)
        for i in range(self.size):
            command = [
                binary,
                "--name", f"m{i}",
                "--data-dir", str(self.data_dir(i)),
                "--listen-client-urls", f"http://{client[i]}",
                "--advertise-client-urls", f"http://{client[i]}",
                "--listen-peer-urls", f"http://{peer[i]}",
                "--initial-advertise-peer-urls", f"http://{advertised[i]}",
                "--initial-cluster", initial,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", token,
                "--logger", "zap",
                "--log-outputs", "stderr",
                "--log-level", "warn",
                *extra_args,
            ]  # fmt: skip
            env = {"GOMAXPROCS": os.environ.get("GOMAXPROCS", str(os.cpu_count()))}
            self.members.append(
                ManagedProcess(f"etcd{i}", command, root / "logs" / f"etcd{i}.log", env)
            )
        self.addresses = client
        self._channels = [grpc.insecure_channel(a) for a in client]
        self._status = [self._pb_grpc.MaintenanceStub(c).Status for c in self._channels]
        self._member_ids: dict[int, int] = {}

    @property
    def label(self) -> str:
        return f"etcd {self.version}"

    def data_dir(self, index: int) -> Path:
        return self.root / f"m{index}.etcd"

    def _leader_index(self) -> int | None:
        leaders = set()
        for i, member in enumerate(self.members):
            if not member.alive():
                continue
            try:
                reply = self._status[i](self._pb.StatusRequest(), timeout=0.5)
            except grpc.RpcError:
                return None
            self._member_ids[reply.header.member_id] = i
            if reply.leader == 0:
                return None
            leaders.add(reply.leader)
        if len(leaders) != 1:
            return None
        return self._member_ids.get(leaders.pop())

    def target(self, serializable: bool = False) -> Target:
        reads = "serializable" if serializable else "linearizable"
        return Target(
            kind="etcd",
            label=f"{self.label} ({reads} reads)",
            addresses=tuple(self.addresses),
            leader=self.leader(),
            serializable=serializable,
        )

    def _term_of(self, index: int) -> int:
        return int(self._status[index](self._pb.StatusRequest(), timeout=0.5).raftTerm)

    def _stub_for_preload(self, address: str) -> Any:
        return self._pb_grpc.KVStub(self._channels[self.addresses.index(address)])

    def _preload_one(self, stub: Any, key: str, value: str, number: int) -> None:
        stub.Put(self._pb.PutRequest(key=key.encode(), value=value.encode()), timeout=10)

    def stop(self) -> None:
        for channel in self._channels:
            channel.close()
        super().stop()


# ---------------------------------------------------------------------------------------------
# PySyncObj


def pysyncobj_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("pysyncobj")
    except importlib.metadata.PackageNotFoundError:
        raise ClusterError("PySyncObj is not installed: `make bench-deps`") from None


class SyncObjCluster(_KeyValueFrontDoor):
    system = "pysyncobj"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        from raftkv.rpc import raftkv_pb2

        self.version = pysyncobj_version()
        self._pb = raftkv_pb2
        ports = free_ports(2 * self.size)
        raft = [f"127.0.0.1:{p}" for p in ports[: self.size]]
        front = [f"127.0.0.1:{p}" for p in ports[self.size :]]
        root.mkdir(parents=True, exist_ok=True)
        for i in range(self.size):
            command = [
                sys.executable, "-m", "raftkv_tools.bench.syncobj_node",
                "--id", str(i),
                "--raft", ",".join(raft),
                "--grpc", ",".join(front),
                "--data-dir", str(self.data_dir(i)),
            ]  # fmt: skip
            self.members.append(
                ManagedProcess(f"syncobj{i}", command, root / "logs" / f"syncobj{i}.log")
            )
        self.addresses = front
        self._channels = [grpc.insecure_channel(a) for a in front]
        self._status = [kv_stub(c).Status for c in self._channels]

    @property
    def label(self) -> str:
        return f"PySyncObj {self.version} (no fsync, leader-local reads)"

    def data_dir(self, index: int) -> Path:
        return self.root / f"syncobj{index}"

    def _leader_index(self) -> int | None:
        leaders = set()
        for i, member in enumerate(self.members):
            if not member.alive():
                continue
            try:
                row = self._status[i](self._pb.StatusRequest(), timeout=0.5)
            except grpc.RpcError:
                return None
            if not row.HasField("leader_id") or row.read_mode != "ready":
                return None
            leaders.add(row.leader_id)
        return leaders.pop() if len(leaders) == 1 else None
