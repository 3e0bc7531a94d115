"""The benchmark's sections, run in order, each on clusters it starts and stops itself.

1. throughput: set / get / mixed at C clients on our cluster and, with `against`, on etcd
   (linearizable and serializable reads) and PySyncObj — all three clusters up at once, the
   systems alternating run by run (round-robin inside each workload, `rounds` times);
2. latency: the same at C=1 (GET and SET);
3. profile: extra runs of our SET and GET load with py-spy on the leader;
4. footprint: resident memory and data-directory size of each system; with `fill`, measured on
   fresh clusters (those of 1–3 stopped first) after exactly N SETs;
5. wan: fresh clusters with a delay proxy on every node↔node link; bare RTT (Status RPC, or an
   etcd serializable Range), GET and SET latency at C=1 for our lease reads, our read_index and
   etcd linearizable reads, the client beside the leader;
6. failover: SIGKILL the leader under SET load, time until the first SET sent after the kill
   succeeds (necessarily through a survivor); the killed node restarts between trials.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from raftkv.cluster import ClusterDescription
from raftkv_tools.bench import pyspy
from raftkv_tools.bench.backends import Target, kv_stub
from raftkv_tools.bench.clusters import (
    Cluster,
    EtcdCluster,
    Footprint,
    RaftKVCluster,
    SyncObjCluster,
)
from raftkv_tools.bench.loadgen import Progress, RunResult, run_load
from raftkv_tools.bench.procstats import ProcessMonitor, dir_size, rss_bytes
from raftkv_tools.bench.workload import KEY_BYTES, KEY_COUNT, VALUE_BYTES, WORKLOADS, Workload
from raftkv_tools.ports import pids_listening_on

PEERS = ("etcd", "pysyncobj")
PROFILE_ATTEMPTS = 3


@dataclass
class Options:
    workloads: tuple[str, ...] = WORKLOADS
    clients: int = 64
    duration: float = 10.0
    warmup: float = 2.0
    procs: int = 0  # 0: auto (2 processes for C ≥ 16, else 1)
    rounds: int = 1
    read_mode: str = "lease"
    fsync: bool = True
    cluster_file: Path | None = None
    against: tuple[str, ...] = ()
    latency: bool = False
    wan: float = 0.0
    failover: int = 0
    failover_clients: int = 16
    fill: int = 0
    profile_dir: Path | None = None
    profile_native: bool = False
    workdir: Path | None = None
    keep: bool = False
    # One unary call per GET/SET for raftkv and the PySyncObj front door instead of the
    # KeyValue.Pipeline stream (etcd is always driven with unary calls).
    unary: bool = False

    @property
    def fill_fresh_clusters(self) -> bool:
        """--fill on clusters we start: each system gets a fresh one, filled with exactly N."""
        return self.fill > 0 and self.cluster_file is None

    def processes(self, clients: int) -> int:
        if self.procs > 0:
            return self.procs
        return 2 if clients >= 16 else 1


@dataclass
class FailoverResult:
    system: str
    trials: list[float | None]
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        done = [t for t in self.trials if t is not None]
        return statistics.median(done) if done and len(done) == len(self.trials) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "trials_s": [None if t is None else round(t, 3) for t in self.trials],
            "median_s": None if self.median is None else round(self.median, 3),
            "notes": self.notes,
        }


@dataclass
class FootprintRow:
    system: str
    sets: int
    footprint: Footprint
    fsync: str

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "sets_applied": self.sets,
            "fsync": self.fsync,
            **self.footprint.to_json(),
        }


@dataclass
class Report:
    options: Options
    meta: dict[str, Any] = field(default_factory=dict)
    throughput: list[RunResult] = field(default_factory=list)
    latency: list[RunResult] = field(default_factory=list)
    fill: list[RunResult] = field(default_factory=list)
    footprints: list[FootprintRow] = field(default_factory=list)
    wan: list[RunResult] = field(default_factory=list)
    failover: list[FailoverResult] = field(default_factory=list)
    profiles: dict[str, pyspy.Profile] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "throughput": [r.to_json() for r in self.throughput],
            "latency_c1": [r.to_json() for r in self.latency],
            "fill": [r.to_json() for r in self.fill],
            "footprint": [f.to_json() for f in self.footprints],
            "wan": [r.to_json() for r in self.wan],
            "failover": [f.to_json() for f in self.failover],
            "profiles": {k: p.to_json() for k, p in self.profiles.items()},
            "notes": self.notes,
        }


class ExternalCluster(Cluster):
    """A raftkv cluster someone else runs (`--cluster FILE`): we only read it."""

    system = "raftkv"

    def __init__(self, path: Path) -> None:
        super().__init__(path.parent)
        from raftkv.rpc import raftkv_pb2

        self._pb = raftkv_pb2
        self.description = ClusterDescription.load(path)
        self.addresses = [n.address for n in self.description.nodes]
        self.ids = [n.id for n in self.description.nodes]
        self._channels = [grpc.insecure_channel(a) for a in self.addresses]
        self._status = [kv_stub(c).Status for c in self._channels]

    @property
    def label(self) -> str:
        return f"raftkv ({self.description.name})"

    def start(self) -> None:
        self.wait_ready()

    def _leader_index(self) -> int | None:
        for stub in self._status:
            try:
                row = stub(self._pb.StatusRequest(), timeout=0.5)
            except grpc.RpcError:
                continue
            if row.role == "leader" and row.node_id in self.ids:
                return self.ids.index(row.node_id)
        return None

    def target(self, serializable: bool = False) -> Target:
        return Target(
            "raftkv",
            self.label,
            tuple(self.addresses),
            tuple(self.ids),
            leader=self.leader(),
            pipeline=True,
        )

    def pids(self) -> dict[str, int]:
        ports = {int(a.rsplit(":", 1)[1]): i for a, i in zip(self.addresses, self.ids, strict=True)}
        found = pids_listening_on(ports)
        return {f"node{ports[port]}": pid for port, pid in found.items()}

    def data_dir(self, index: int) -> Path:
        node = self.description.nodes[index]
        return Path(node.data_dir) / f"logs_node_{node.id}"

    def footprint(self) -> Footprint:
        pids = self.pids()
        return Footprint(
            rss={name: rss_bytes(pid) for name, pid in pids.items()},
            data={
                f"node{n.id}": dir_size(self.data_dir(i))
                for i, n in enumerate(self.description.nodes)
                if self.data_dir(i).is_dir()
            },
        )

    def _term_of(self, index: int) -> int:
        return int(self._status[index](self._pb.StatusRequest(), timeout=0.5).term)

    def term(self) -> int | None:
        terms = []
        for index in range(len(self.addresses)):
            with contextlib.suppress(grpc.RpcError):
                terms.append(self._term_of(index))
        return max(terms, default=None)

    def _stub_for_preload(self, address: str) -> Any:
        return kv_stub(self._channels[self.addresses.index(address)])

    def _preload_one(self, stub: Any, key: str, value: str, number: int) -> None:
        stub.Set(self._pb.SetRequest(key=key, value=value), timeout=10)

    def stop(self) -> None:
        for channel in self._channels:
            channel.close()


def machine_info() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cores": os.cpu_count(),
        "loadavg_1m_at_start": round(load[0], 2),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


class Suite:
    def __init__(self, options: Options, progress: Progress) -> None:
        self.options = options
        self.progress = progress
        self.report = Report(options)
        self._temp: Path | None = None
        self._clusters: list[Cluster] = []
        self._sets: dict[str, int] = {}

    # -- plumbing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _workdir(self) -> Iterator[Path]:
        if self.options.workdir is not None:
            self.options.workdir.mkdir(parents=True, exist_ok=True)
            yield self.options.workdir
            return
        path = Path(tempfile.mkdtemp(prefix="raftkv-bench-"))
        try:
            yield path
        finally:
            if self.options.keep:
                self.progress.message(f"kept the clusters' files in {path}")
            else:
                shutil.rmtree(path, ignore_errors=True)

    def _start(self, cluster: Cluster, preload: bool = True) -> Cluster:
        self._clusters.append(cluster)
        self.progress.message(f"starting {cluster.label} ({cluster.root})")
        cluster.start()
        if preload:
            cluster.preload(KEY_COUNT)
            self._sets[cluster.label] = self._sets.get(cluster.label, 0) + KEY_COUNT
        return cluster

    def _stop(self, cluster: Cluster) -> None:
        cluster.stop()
        if cluster in self._clusters:
            self._clusters.remove(cluster)

    def stop_all(self) -> None:
        for cluster in list(self._clusters):
            with contextlib.suppress(Exception):
                self._stop(cluster)

    def _workload(self, name: str, clients: int, **changes: Any) -> Workload:
        return Workload(
            name, clients=clients, duration=self.options.duration, warmup=self.options.warmup
        ).with_(**changes)

    def _run(
        self,
        cluster: Cluster,
        workload: Workload,
        *,
        serializable: bool = False,
        hooks: tuple[tuple[float, Callable[[], None]], ...] = (),
        label: str | None = None,
    ) -> RunResult:
        target = cluster.target(serializable)
        term_before = cluster.term()
        if label:
            target = replace(target, label=label)
        if self.options.unary:
            target = replace(target, pipeline=False)
        leader_name = cluster.members[target.leader].name if cluster.members else None
        result = run_load(
            target,
            workload,
            procs=self.options.processes(workload.clients),
            monitor=ProcessMonitor(cluster.pids()),
            progress=self.progress,
            hooks=hooks,
        )
        result.leader = leader_name
        term_after = cluster.term()
        if term_before is not None and term_after is not None and term_after > term_before:
            result.elections = term_after - term_before
            result.notes.append(
                f"election(s) during the run: term {term_before} → {term_after}"
                + ("" if hooks else " (no node was killed: a starved node timed out)")
            )
        if workload.name in ("set", "mixed"):
            share = 1.0 if workload.name == "set" else 1 - workload.get_fraction
            applied = int(result.completed_total * share)
            self._sets[cluster.label] = self._sets.get(cluster.label, 0) + applied
        return result

    # -- the sections -------------------------------------------------------------------------
    def run(self) -> Report:
        options = self.options
        self.report.meta = machine_info()
        self.report.meta["settings"] = {
            "clients": options.clients,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "keys": KEY_COUNT,
            "key_bytes": KEY_BYTES,
            "value_bytes": VALUE_BYTES,
            "generator_processes": options.processes(options.clients),
            "raftkv_transport": "unary calls" if options.unary else "KeyValue.Pipeline stream",
            "rounds": options.rounds,
            "fsync": options.fsync,
            "read_mode": options.read_mode,
        }
        try:
            with self._workdir() as root:
                self._lan(root)
                if options.wan and options.cluster_file is None:
                    self._wan(root)
                if options.failover and options.cluster_file is None:
                    self._failover(root)
        finally:
            self.stop_all()
        self.report.meta["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
        return self.report

    def _lan(self, root: Path) -> None:
        options = self.options
        systems: list[tuple[Cluster, bool]] = []
        if options.cluster_file is not None:
            ours: Cluster = self._start(ExternalCluster(options.cluster_file))
        else:
            ours = self._start(
                RaftKVCluster(root / "raftkv", read_mode=options.read_mode, fsync=options.fsync)
            )
        systems.append((ours, False))
        etcd = pysyncobj = None
        if "etcd" in options.against:
            etcd = self._start(EtcdCluster(root / "etcd"))
        if "pysyncobj" in options.against:
            pysyncobj = self._start(SyncObjCluster(root / "pysyncobj"))

        def lineup(workload: str) -> list[tuple[Cluster, bool]]:
            line: list[tuple[Cluster, bool]] = [(ours, False)]
            if etcd is not None:
                line.append((etcd, False))
                if workload != "set":
                    line.append((etcd, True))
            if pysyncobj is not None:
                line.append((pysyncobj, False))
            return line

        self.progress.message(f"throughput: C={options.clients}, {options.rounds} round(s)")
        for name in options.workloads:
            for _ in range(options.rounds):
                for cluster, serializable in lineup(name):
                    self.report.throughput.append(
                        self._run(
                            cluster,
                            self._workload(name, options.clients),
                            serializable=serializable,
                        )
                    )
        if options.latency:
            self.progress.message("latency: C=1")
            for name in ("get", "set"):
                for _ in range(options.rounds):
                    for cluster, serializable in lineup(name):
                        self.report.latency.append(
                            self._run(cluster, self._workload(name, 1), serializable=serializable)
                        )
        if options.profile_dir is not None:
            self._profile(ours)
        running: list[Cluster] = [c for c in (ours, etcd, pysyncobj) if c is not None]
        if options.fill_fresh_clusters:
            # Footprint after exactly --fill SETs: the runs above took a number of SETs that
            # depends on their speed (and on --rounds), so each system gets a fresh cluster.
            for cluster in running:
                self._stop(cluster)
            running = [
                RaftKVCluster(
                    root / "fill-raftkv", read_mode=options.read_mode, fsync=options.fsync
                )
            ]
            if etcd is not None:
                running.append(EtcdCluster(root / "fill-etcd"))
            if pysyncobj is not None:
                running.append(SyncObjCluster(root / "fill-pysyncobj"))
            self.progress.message(f"fill: {options.fill:,} SETs into a fresh cluster per system")
        elif options.fill:
            self.progress.message(f"fill: SETs until each system has taken {options.fill:,}")
        for cluster in running:
            if options.fill_fresh_clusters:
                self._sets[cluster.label] = 0
                self._start(cluster)
            self._fill(cluster)
            self._record_footprint(cluster)
            self._stop(cluster)

    def _fill(self, cluster: Cluster) -> None:
        """SET until `cluster` has taken --fill SETs in all (none without --fill)."""
        missing = self.options.fill - self._sets.get(cluster.label, 0)
        if missing > 0:
            workload = self._workload(
                "set", self.options.clients, warmup=0.0, duration=3600.0, op_budget=missing
            )
            self.report.fill.append(self._run(cluster, workload))

    def _record_footprint(self, cluster: Cluster) -> None:
        fsync = "yes"
        if cluster.system == "pysyncobj":
            fsync = "never (mmap journal)"
        elif cluster.system == "raftkv" and not self.options.fsync:
            fsync = "off (--unsafe-no-fsync)"
        elif isinstance(cluster, ExternalCluster):
            fsync = "? (not started by us)"
        self.report.footprints.append(
            FootprintRow(
                cluster.label, self._sets.get(cluster.label, 0), cluster.footprint(), fsync
            )
        )

    def _profile(self, ours: Cluster) -> None:
        options = self.options
        assert options.profile_dir is not None
        options.profile_dir.mkdir(parents=True, exist_ok=True)
        pyspy.binary()  # fail early with the install hint
        for name in ("set", "get"):
            for attempt in range(1, PROFILE_ATTEMPTS + 1):
                if self._profile_once(ours, name, attempt):
                    break

    def _profile_once(self, ours: Cluster, name: str, attempt: int) -> bool:
        """One profiled run; False when an election spoiled it and it is worth another try."""
        options = self.options
        assert options.profile_dir is not None
        self.progress.message(f"profile: py-spy on the leader under {name} load")
        target = ours.target()
        leader_name = f"node{target.node_ids[target.leader]}"
        pid = ours.pids().get(leader_name)
        if pid is None:
            self.report.notes.append(f"profile: no local process for {leader_name}")
            return True
        output = options.profile_dir / f"leader-{name}.raw.txt"
        seconds = max(1.0, round(options.duration))
        holder: dict[str, Any] = {}

        def start(
            pid: int = pid,
            output: Path = output,
            seconds: float = seconds,
            holder: dict[str, Any] = holder,
        ) -> None:
            holder["process"] = pyspy.record(pid, seconds, output, native=options.profile_native)

        result = self._run(
            ours,
            self._workload(name, options.clients),
            hooks=((0.0, start),),
            label=f"{ours.label} +py-spy",
        )
        process = holder.get("process")
        if process is None:
            return True
        _, stderr = process.communicate(timeout=seconds + 30)
        if process.returncode != 0 or not output.exists():
            self.report.notes.append(f"py-spy failed under {name} load: {stderr.strip()}")
            return True
        if result.elections:
            spoiled = (
                f"profile of {name} load, attempt {attempt}: {result.elections} election(s) "
                f"during the run, so {leader_name} was not leader throughout"
            )
            self.report.notes.append(spoiled)
            if attempt < PROFILE_ATTEMPTS:
                return False
        profile = pyspy.summarize(output, seconds)
        self.report.profiles[name] = profile
        self.report.notes.append(
            f"profiled {name} run: {result.ops_per_second:,.0f} ops/s with py-spy attached; "
            f"raw stacks in {output}"
        )
        return True

    def _wan(self, root: Path) -> None:
        delay = self.options.wan
        self.progress.message(
            f"WAN: +{delay * 1e3:g} ms one-way on every node↔node link, client beside the leader"
        )
        setups: list[tuple[Callable[[], Cluster], bool]] = [
            (lambda: RaftKVCluster(root / "wan-lease", wan_delay=delay), False),
            (
                lambda: RaftKVCluster(
                    root / "wan-readindex", read_mode="read_index", wan_delay=delay
                ),
                False,
            ),
        ]
        if "etcd" in self.options.against:
            setups.append((lambda: EtcdCluster(root / "wan-etcd", wan_delay=delay), False))
        for make, serializable in setups:
            try:
                cluster = self._start(make())
            except Exception as error:  # etcd missing, for example: report and go on
                self.report.notes.append(f"WAN: could not start a cluster: {error}")
                continue
            try:
                for name in ("status", "get", "set"):
                    result = self._run(
                        cluster,
                        self._workload(name, 1, per_try_timeout=5.0, op_timeout=10.0),
                        serializable=serializable,
                    )
                    result.notes.append(f"wan one-way delay {delay * 1e3:g} ms")
                    self.report.wan.append(result)
            finally:
                self._stop(cluster)

    def _failover(self, root: Path) -> None:
        options = self.options
        makers: list[Callable[[int], Cluster]] = [
            lambda n: RaftKVCluster(root / f"failover-raftkv-{n}", fsync=options.fsync)
        ]
        if "etcd" in options.against:
            makers.append(lambda n: EtcdCluster(root / f"failover-etcd-{n}"))
        for make in makers:
            cluster = self._start(make(0))
            result = FailoverResult(cluster.label, [])
            self.progress.message(f"failover: {options.failover} trials on {cluster.label}")
            try:
                for trial in range(options.failover):
                    result.trials.append(self._failover_trial(cluster, trial, result))
            finally:
                self._stop(cluster)
            self.report.failover.append(result)

    def _failover_trial(self, cluster: Cluster, trial: int, result: FailoverResult) -> float | None:
        leader = cluster.wait_ready()
        killed: dict[str, float] = {}

        def kill() -> None:
            killed["at"] = time.monotonic()
            cluster.kill(leader)

        window = 8.0
        workload = self._workload(
            "set",
            self.options.failover_clients,
            warmup=1.0,
            duration=window,
            per_try_timeout=0.25,
            op_timeout=window,
            timeline=True,
        )
        run = self._run(cluster, workload, hooks=((1.0, kill),))
        elapsed: float | None = None
        if "at" in killed:
            after = [done for sent, done in run.timeline if sent >= killed["at"]]
            if after:
                elapsed = min(after) - killed["at"]
            else:
                result.notes.append(
                    f"trial {trial + 1}: no SET succeeded within {window - 1:.0f} s of the kill"
                )
        cluster.restart(leader)
        cluster.wait_ready(60.0)
        # Every member must be back in the cluster before the next kill.
        time.sleep(1.0)
        return elapsed
