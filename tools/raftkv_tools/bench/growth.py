"""`raftkv bench growth`: what a long stream of SETs over a fixed key space leaves (issue 15).

    raftkv bench growth [--sets 1000000] [--catchup-sets 500000] [--against etcd] [--json FILE]
    make bench-growth                      # GROWTH_ARGS in the Makefile
    raftkv bench growth --sets 300 --catchup-sets 200 --snapshot-entries 50 --trailing-entries 20

On a fresh local 3-node cluster (the benchmark's own start-up: fast profile, fsync on, mutual
TLS between peers, a temp folder):

1. Footprint: SET each of the --keys keys once (1,000 SETs over 1,000 keys by default, values of
   --value-bytes), then the RSS of every node and the size of its directory (du: allocated
   blocks, every file; and the same without the diagnostic dump.txt files, i.e. the state:
   logs.txt, snapshot.txt, metadata.txt). Then --sets SETs over the same keys from the load
   generator (closed loop, C clients, KeyValue.Pipeline), every SET's completion time and
   latency kept; then, once the cluster is idle (below), the same figures again, and their
   ratios to the first (the issue's target: ≤ 2×).
2. Snapshots during the load: a snapshot at index I is being written from the node's dump line
   "began writing a snapshot at index I" (the core captured the image as its commit index
   reached I) until its line "saved a snapshot at index I". (A node too old for the first line:
   from when its commit index reached I, polled every 50 ms and interpolated.) Each
   second of the load (--bucket) in which any node was writing a snapshot is marked; the report
   gives the mean ops/s of marked and unmarked seconds and their ratio (target ≥ 0.9), the same
   for the leader's snapshots alone, and the p99.9 latency of all SETs and of the SETs whose
   time in flight overlapped a snapshot. (The log compaction after a snapshot runs in a thread
   of its own and is not in the window; its start is the "compacted its log" line, its end is
   not logged.)
3. Idle: after the load, the benchmark waits until every node has applied the leader's commit
   index and has no snapshot due (commit index − snapshot index < --snapshot-entries) and is at
   rest (--snapshot-idle s after the last commit a node snapshots what is left and empties its
   log: snapshot index = commit index, log empty), at most --settle s, then 1 s more, and
   measures. What it found is printed. The target's "data dir" is the state files
   (snapshot.txt, logs.txt, metadata.txt); the whole directory, with dump.txt and its rotated
   copies (the diagnostic log, bounded by its rotation), is reported beside it.
4. Restart: SIGKILL a follower that has applied every SET, start it again and time, from the
   moment its process is spawned: its dump's "started from its snapshot" line (written once the
   snapshot and the log after it are loaded), its first Status answer, and "serving": its
   Status names the leader and reports commit and applied index ≥ the leader's commit index at
   the kill (it holds every acknowledged SET and follows the leader; a follower answers a
   client's GET with the leader's address, and reads are served by the leader). Target ≤ 1 s.
   For scale, the time a fresh interpreter takes to import the node's code alone is measured.
5. Catch-up: SIGTERM the other follower, drive --catchup-sets SETs, start it again; the leader's
   dump lines give the InstallSnapshot transfer (bytes, chunks, seconds, MB/s); "caught up" is
   the first Status poll (10 ms apart) in which its applied index reached the leader's commit
   index at its start. Then the state check: the leader's whole key space (List, paged), leadership
   transferred to the caught-up node (KeyValue.TransferLeader), its whole key space read from it
   as leader, compared (count and CRC-32).
6. `--against etcd`: a 3-member etcd 3.4 (the benchmark's etcd cluster, default flags: no
   automatic compaction of its MVCC history, so every revision stays in its bbolt file) takes
   the same 1,000 and --sets SETs from the same generator (etcd's KV Put, one unary call per
   request); its members' RSS and data dirs (du) after each, --etcd-settle s after the load.
   `--etcd-auto-compaction` adds one more etcd run with --auto-compaction-mode revision
   --auto-compaction-retention 1000 (etcd compacts every 5 minutes in that mode; the freed
   pages stay in the file until a defragmentation, which nothing runs here).

Exit status: 0 when every phase completed, 1 when a cluster, the load generator or a phase
failed, 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import grpc

from raftkv.client.status import NodeStatusRow
from raftkv.core.config import DEFAULT_SNAPSHOTS, SnapshotPolicy
from raftkv.rpc import raftkv_pb2 as pb
from raftkv.server.dump import DUMP_BACKUPS, DUMP_FILE, DUMP_MAX_BYTES
from raftkv_tools.bench.backends import kv_stub
from raftkv_tools.bench.cli import positive
from raftkv_tools.bench.clusters import Cluster, ClusterError, EtcdCluster, RaftKVCluster
from raftkv_tools.bench.etcdstubs import StubsError
from raftkv_tools.bench.loadgen import LoadError, Progress, RunResult, latency_summary, run_load
from raftkv_tools.bench.procstats import ProcessMonitor, dir_size, rss_bytes
from raftkv_tools.bench.suite import machine_info
from raftkv_tools.bench.workload import KEY_COUNT, Workload
from raftkv_tools.localcluster import StatusPoller

STATUS_INTERVAL = 0.05
SLOW_INTERVAL = 0.5  # RSS samples and dump reads during a load
PROBE_INTERVAL = 0.01
RESTART_TIMEOUT = 60.0
CATCHUP_TIMEOUT = 600.0
TRANSFER_TIMEOUT = 15.0
AFTER_IDLE = 1.0
MB = 1024 * 1024
ETCD_COMPACTION_ARGS = ("--auto-compaction-mode", "revision", "--auto-compaction-retention", "1000")
# A probe channel that retries a refused connection every 10 ms (gRPC's default backoff would
# add up to seconds to a restart's measured time).
PROBE_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 10),
    ("grpc.min_reconnect_backoff_ms", 10),
    ("grpc.max_reconnect_backoff_ms", 10),
)

BEGAN = re.compile(r"Node (\d+) began writing a snapshot at index (\d+)")
SAVED = re.compile(r"Node (\d+) saved a snapshot at index (\d+)")
LOADED = re.compile(
    r"Node (\d+) started from its snapshot at index (\d+) \(term \d+\), (\d+) log entries"
)
INSTALLED = re.compile(r"Node (\d+) installed the leader's snapshot at index (\d+)")
SENDING = re.compile(r"Leader (\d+) sending its snapshot at index (\d+) \(term \d+\) to Node (\d+)")
SENT = re.compile(
    r"Leader (\d+) sent its snapshot at index (\d+) to Node (\d+): (\d+) bytes in (\d+) "
    r"chunks, ([\d.]+) s"
)
SEND_STOPPED = re.compile(r"Leader (\d+) stopped sending its snapshot to Node (\d+)")
# dump.txt and its rotated copies at most.
DUMP_CAP_MB = (1 + DUMP_BACKUPS) * DUMP_MAX_BYTES // 10**6
# Control windows start no sooner than this after a snapshot window ends (`control_windows`).
CONTROL_SETTLE = 0.2
# The dump lines kept by a DumpTail (every line above has one of these).
MARKERS = (b"snapshot", b"compacted its log")


class GrowthError(RuntimeError):
    """A phase could not go on; the message is for the user."""


@dataclass
class GrowthOptions:
    sets: int = 1_000_000
    catchup_sets: int = 500_000  # 0: no catch-up phase
    restart: bool = True
    keys: int = KEY_COUNT
    value_bytes: int = 100
    clients: int = 64
    procs: int = 0  # 0: 2 processes at C ≥ 16, else 1
    snapshots: SnapshotPolicy = DEFAULT_SNAPSHOTS
    against: tuple[str, ...] = ()
    etcd_auto_compaction: bool = False
    settle: float = 10.0
    etcd_settle: float = 3.0
    bucket: float = 1.0
    workdir: Path | None = None
    keep: bool = False

    def processes(self) -> int:
        if self.procs > 0:
            return self.procs
        return 2 if self.clients >= 16 else 1

    def to_json(self) -> dict[str, Any]:
        return {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in asdict(self).items()
        }


# ---------------------------------------------------------------------------------------------
# Dump lines and status samples


def wall_offset() -> float:
    """time.time() − time.monotonic(): turns a dump line's UTC timestamp into monotonic time."""
    return time.time() - time.monotonic()


@dataclass(frozen=True)
class DumpLine:
    at: float  # monotonic seconds
    text: str


class DumpTail:
    """The lines a node writes to its dump.txt from now on, across rotations, keeping only
    those that contain one of MARKERS.

    dump.py rotates by renaming dump.txt to dump.txt.1 and opening a new dump.txt: the open
    descriptor is read to its end, then the new file from its start. A missing file is opened
    (from its start) at the next read."""

    def __init__(self, path: Path, offset: float) -> None:
        self.path = path
        self.offset = offset
        self.lines: list[DumpLine] = []
        self._file: BinaryIO | None = None
        self._partial = b""
        with contextlib.suppress(FileNotFoundError):
            self._file = path.open("rb")
            self._file.seek(0, os.SEEK_END)

    def read(self) -> list[DumpLine]:
        """Read what was written since the last call; returns every line kept so far."""
        if self._file is None:
            try:
                self._file = self.path.open("rb")
            except FileNotFoundError:
                return self.lines
        while True:
            self._take(self._file.read())
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                break
            if current == os.fstat(self._file.fileno()).st_ino:
                break
            self._take(self._file.read())  # the rest of the renamed file
            self._file.close()
            self._file = self.path.open("rb")
            self._partial = b""
        return self.lines

    def _take(self, data: bytes) -> None:
        if not data:
            return
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        for raw in data[:cut].splitlines():
            if any(marker in raw for marker in MARKERS):
                line = self._parse(raw.decode("utf-8", "replace"))
                if line is not None:
                    self.lines.append(line)

    def _parse(self, text: str) -> DumpLine | None:
        stamp, _, rest = text.partition(" ")
        try:
            at = datetime.fromisoformat(stamp).timestamp() - self.offset
        except ValueError:
            return None
        return DumpLine(at, rest)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(frozen=True)
class StatusSample:
    at: float
    node: int
    role: str
    term: int
    commit: int
    applied: int
    snapshot_index: int
    first_index: int


def _samples(at: float, rows: Sequence[NodeStatusRow]) -> list[StatusSample]:
    return [
        StatusSample(
            at,
            row.node_id,
            row.role or "?",
            row.term or 0,
            row.commit_length or 0,
            row.applied_length or 0,
            row.snapshot_index or 0,
            row.first_index or 0,
        )
        for row in rows
        if row.reachable
    ]


class Sampler(threading.Thread):
    """During a load: every node's Status every STATUS_INTERVAL (raftkv), and every SLOW_INTERVAL
    the RSS of every member and the new lines of every dump."""

    def __init__(
        self,
        pids: Mapping[str, int],
        poller: StatusPoller | None = None,
        tails: Sequence[DumpTail] = (),
    ) -> None:
        super().__init__(name="growth-sampler", daemon=True)
        self.pids = dict(pids)
        self.poller = poller
        self.tails = list(tails)
        self.status: list[StatusSample] = []
        self.rss: dict[str, list[tuple[float, int]]] = {name: [] for name in self.pids}
        self.failure: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            next_slow = 0.0
            while not self._halt.is_set():
                before = time.monotonic()
                if self.poller is not None:
                    rows = self.poller.poll()
                    self.status += _samples((before + time.monotonic()) / 2, rows)
                if before >= next_slow:
                    next_slow = before + SLOW_INTERVAL
                    self._slow()
                self._halt.wait(max(0.0, STATUS_INTERVAL - (time.monotonic() - before)))
        except BaseException as error:  # reported by stop()
            self.failure = error

    def _slow(self) -> None:
        now = time.monotonic()
        for name, pid in self.pids.items():
            value = rss_bytes(pid)
            if value is not None:
                self.rss[name].append((now, value))
        for tail in self.tails:
            tail.read()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
        self._slow()
        if self.failure is not None:
            raise GrowthError(f"the status sampler failed: {self.failure!r}")

    def peak_rss(self) -> dict[str, int | None]:
        return {name: max((v for _, v in s), default=None) for name, s in self.rss.items()}


# ---------------------------------------------------------------------------------------------
# Snapshot windows and throughput by second


@dataclass(frozen=True)
class Window:
    node: int
    index: int
    start: float
    end: float


def snapshot_windows(
    lines: Mapping[int, Sequence[DumpLine]], samples: Sequence[StatusSample]
) -> list[Window]:
    """One window per "saved a snapshot at index I" line, ending at the line's time. It starts
    at the node's "began writing a snapshot at index I" line; a node whose dump has none (older
    than that line) from when its commit index reached I, interpolated between the two Status
    samples around it."""
    by_node: dict[int, list[StatusSample]] = {}
    for sample in sorted(samples, key=lambda s: s.at):
        by_node.setdefault(sample.node, []).append(sample)
    windows = []
    for node, node_lines in lines.items():
        seen = by_node.get(node, [])
        began: dict[int, float] = {}
        for line in node_lines:
            if (match := BEGAN.search(line.text)) is not None:
                began[int(match.group(2))] = line.at
                continue
            if (match := SAVED.search(line.text)) is None:
                continue
            index = int(match.group(2))
            start = began.pop(index, None)
            if start is None:
                start = _reached(seen, index, line.at)
            windows.append(Window(node, index, min(start, line.at), line.at))
    return sorted(windows, key=lambda w: w.start)


def _reached(samples: Sequence[StatusSample], index: int, end: float) -> float:
    """When the commit index reached `index`, by linear interpolation between the last sample
    below it and the first at or above it (`end` bounds both)."""
    below = None
    for sample in samples:
        if sample.at > end:
            break
        if sample.commit < index:
            below = sample
        elif below is not None:
            span = sample.commit - below.commit
            fraction = (index - below.commit) / span if span > 0 else 1.0
            return below.at + fraction * (sample.at - below.at)
        else:
            return sample.at  # already there at the first sample
    return below.at if below is not None else end


def control_windows(
    windows: Sequence[Window], start: float, end: float, *, settle: float, seed: int = 15
) -> list[tuple[Window, Window]]:
    """For each window, one of the same length at a random place in [start, end] that neither
    meets a window nor starts within `settle` s after one ends (the SETs a snapshot delayed
    complete just after it: the seconds after a window are faster than the load's usual rate).
    Throughput inside these is the same run's throughput without a snapshot, measured the same
    way: the same lengths, the same machine at the same time. Fixed seed: the same input gives
    the same windows. Returns (window, its control) pairs; a window for which no place was
    found in 1,000 tries is left out."""
    chooser = random.Random(seed)
    blocked = [(a, b + settle) for a, b in union(windows)]
    starts = [a for a, _ in blocked]
    pairs: list[tuple[Window, Window]] = []
    for window in windows:
        length = window.end - window.start
        for _ in range(1000):
            at = chooser.uniform(start, max(start, end - length))
            if not _overlaps(blocked, starts, at, at + length) and not any(
                at <= c.end and c.start <= at + length for _, c in pairs
            ):
                pairs.append((window, Window(-1, window.index, at, at + length)))
                break
    return pairs


def rate_inside(finished: Sequence[float], windows: Sequence[Window]) -> float | None:
    """Operations completed inside the windows per second of window (overlaps merged)."""
    intervals = union(windows)
    starts = [a for a, _ in intervals]
    seconds = sum(b - a for a, b in intervals)
    if seconds <= 0:
        return None
    return sum(1 for done in finished if _overlaps(intervals, starts, done, done)) / seconds


def union(windows: Sequence[Window]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for window in sorted(windows, key=lambda w: w.start):
        if merged and window.start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], window.end))
        else:
            merged.append((window.start, window.end))
    return merged


def _overlaps(
    intervals: Sequence[tuple[float, float]], starts: list[float], a: float, b: float
) -> bool:
    """Whether [a, b] meets one of the sorted, disjoint `intervals`."""
    at = bisect.bisect_right(starts, b) - 1
    return at >= 0 and intervals[at][1] >= a


def by_snapshot(
    finished: Sequence[float],
    latency: Sequence[float],
    windows: Sequence[Window],
    start: float,
    bucket: float,
) -> dict[str, Any]:
    """Throughput per `bucket` s from `start` (the first bucket, the ramp-up, and the last,
    partial one left out), split by whether a window overlaps the bucket; the latency of the
    operations whose time in flight overlapped a window."""
    intervals = union(windows)
    starts = [a for a, _ in intervals]
    end = max(finished, default=start)
    count = int((end - start) // bucket)
    per_bucket = [0] * count
    for done in finished:
        slot = int((done - start) // bucket)
        if 0 <= slot < count:
            per_bucket[slot] += 1
    marked = [
        _overlaps(intervals, starts, start + k * bucket, start + (k + 1) * bucket)
        for k in range(count)
    ]
    used = range(1, count)
    with_snapshot = [per_bucket[k] / bucket for k in used if marked[k]]
    without = [per_bucket[k] / bucket for k in used if not marked[k]]
    during = [
        lat
        for done, lat in zip(finished, latency, strict=True)
        if _overlaps(intervals, starts, done - lat, done)
    ]
    inside = sum(max(0.0, min(b, end) - max(a, start)) for a, b in intervals)
    done_inside = sum(1 for done in finished if _overlaps(intervals, starts, done, done))

    def mean(values: Sequence[float]) -> float | None:
        return sum(values) / len(values) if values else None

    rate_with, rate_without = mean(with_snapshot), mean(without)
    outside = (end - start) - inside
    rate_inside = done_inside / inside if inside > 0 else None
    rate_outside = (len(finished) - done_inside) / outside if outside > 0 else None
    return {
        "snapshots": len(windows),
        "window_s": {
            "total": round(inside, 3),
            "median": round(_median([w.end - w.start for w in windows]), 4),
            "max": round(max((w.end - w.start for w in windows), default=0.0), 4),
        },
        "buckets_with": len(with_snapshot),
        "buckets_without": len(without),
        "ops_per_s_with": _round(rate_with, 1),
        "ops_per_s_without": _round(rate_without, 1),
        "ratio": _round(rate_with / rate_without if rate_with and rate_without else None, 3),
        # The same, exactly: operations completed inside the windows per second of window.
        "exact_ops_per_s_inside": _round(rate_inside, 1),
        "exact_ops_per_s_outside": _round(rate_outside, 1),
        "exact_ratio": _round(
            rate_inside / rate_outside if rate_inside is not None and rate_outside else None, 3
        ),
        "sets_during": len(during),
        "latency_ms_during": _latency(during),
        **_against_control(finished, windows, start + bucket, end),
    }


def _against_control(
    finished: Sequence[float], windows: Sequence[Window], start: float, end: float
) -> dict[str, Any]:
    pairs = control_windows(windows, start, end, settle=CONTROL_SETTLE)
    inside = rate_inside(finished, [window for window, _ in pairs])
    without = rate_inside(finished, [control for _, control in pairs])
    return {
        "control_windows": len(pairs),
        "control_settle_s": CONTROL_SETTLE,
        "ops_per_s_inside_paired": _round(inside, 1),
        "ops_per_s_control": _round(without, 1),
        "control_ratio": _round(inside / without if inside is not None and without else None, 3),
    }


def per_second(finished: Sequence[float], start: float, bucket: float) -> list[int]:
    end = max(finished, default=start)
    counts = [0] * int((end - start) // bucket + 1)
    for done in finished:
        slot = int((done - start) // bucket)
        if 0 <= slot < len(counts):
            counts[slot] += 1
    return counts


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _latency(latencies: Sequence[float]) -> dict[str, float | None]:
    summary = latency_summary(latencies)
    return {k: None if v != v else round(v, 3) for k, v in summary.items()}  # NaN → None


# ---------------------------------------------------------------------------------------------
# Footprint


def footprint(cluster: Cluster, state_only: bool) -> dict[str, dict[str, Any]]:
    """Per member: RSS, du of its directory (allocated and apparent), and, with `state_only`,
    du without the dump files."""
    base = cluster.footprint()
    result = {}
    for index, member in enumerate(cluster.members):
        data = base.data[member.name]
        row: dict[str, Any] = {
            "rss_bytes": base.rss[member.name],
            "du_bytes": data.allocated,
            "apparent_bytes": data.apparent,
            "largest_files": dict(dir_size(cluster.data_dir(index), keep=6).largest),
        }
        state = dir_size(cluster.data_dir(index), skip=(DUMP_FILE,)) if state_only else data
        row["state_du_bytes"] = state.allocated
        result[member.name] = row
    return result


def ratios(
    before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, float | None]]:
    result: dict[str, dict[str, float | None]] = {}
    for name, first in before.items():
        last = after.get(name, {})
        row: dict[str, float | None] = {}
        for key in ("rss_bytes", "du_bytes", "state_du_bytes"):
            a, b = first.get(key), last.get(key)
            row[key] = round(b / a, 2) if a and b is not None else None
        result[name] = row
    return result


# ---------------------------------------------------------------------------------------------
# The phases


class Growth:
    def __init__(self, options: GrowthOptions, progress: Progress) -> None:
        self.options = options
        self.progress = progress
        self.report: dict[str, Any] = {
            "meta": machine_info(),
            "options": options.to_json(),
            "systems": [],
            "notes": [],
        }
        self._clusters: list[Cluster] = []

    def say(self, text: str) -> None:
        self.progress.message(text)

    def _workload(self, sets: int, per_op: bool) -> Workload:
        return Workload(
            "set",
            clients=self.options.clients,
            duration=24 * 3600.0,
            warmup=0.0,
            key_count=self.options.keys,
            op_budget=sets,
            value_bytes=self.options.value_bytes,
            per_op=per_op,
        )

    def run(self) -> dict[str, Any]:
        options = self.options
        made = options.workdir is None
        root = Path(tempfile.mkdtemp(prefix="raftkv-growth-")) if made else options.workdir
        assert root is not None
        root.mkdir(parents=True, exist_ok=True)
        try:
            self._raftkv(root / "raftkv")
            if "etcd" in options.against:
                self._etcd(root / "etcd", "defaults", ())
                if options.etcd_auto_compaction:
                    self._etcd(
                        root / "etcd-compaction",
                        "auto-compaction: revision 1000",
                        ETCD_COMPACTION_ARGS,
                    )
        finally:
            for cluster in self._clusters:
                with contextlib.suppress(Exception):
                    cluster.stop()
            if made and not options.keep:
                shutil.rmtree(root, ignore_errors=True)
            elif made:
                self.say(f"kept the clusters' files in {root}")
        self.report["meta"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
        self.report["targets"] = targets(self.report)
        return self.report

    def _start(self, cluster: Cluster) -> Cluster:
        self._clusters.append(cluster)
        self.say(f"starting {cluster.label} ({cluster.root})")
        cluster.start()
        self.say(f"{self.options.keys:,} SETs, one per key")
        cluster.preload(self.options.keys, value_bytes=self.options.value_bytes)
        return cluster

    def _stop(self, cluster: Cluster) -> None:
        cluster.stop()
        self._clusters.remove(cluster)

    def _load(
        self,
        cluster: Cluster,
        sets: int,
        *,
        poller: StatusPoller | None = None,
        tails: Sequence[DumpTail] = (),
        per_op: bool = True,
        target: Any = None,
    ) -> tuple[RunResult, Sampler]:
        target = target if target is not None else cluster.target()
        sampler = Sampler(cluster.pids(), poller, tails)
        sampler.start()
        term_before = cluster.term()
        try:
            result = run_load(
                target,
                self._workload(sets, per_op),
                procs=self.options.processes(),
                monitor=ProcessMonitor(cluster.pids()),
                progress=self.progress,
                label=f"{cluster.label}: {sets:,} SETs",
            )
        finally:
            sampler.stop()
        result.leader = cluster.members[target.leader].name
        term_after = cluster.term()
        if term_before is not None and term_after is not None and term_after > term_before:
            result.elections = term_after - term_before
            result.notes.append(f"election(s) during the load: term {term_before} → {term_after}")
        return result, sampler

    # -- raftkv -----------------------------------------------------------------------------------
    def _raftkv(self, root: Path) -> None:
        options = self.options
        cluster = RaftKVCluster(root, snapshots=options.snapshots)
        assert isinstance(cluster, RaftKVCluster)
        self._start(cluster)
        system: dict[str, Any] = {"system": cluster.label, "kind": "raftkv"}
        self.report["systems"].append(system)
        poller = StatusPoller(cluster.description)
        try:
            system["idle_start"] = self._settle(poller)
            system["footprint_start"] = footprint(cluster, state_only=True)
            system["sets_start"] = options.keys
            offset = wall_offset()
            tails = {i: DumpTail(cluster.data_dir(i) / DUMP_FILE, offset) for i in range(3)}
            self.say(f"load: {options.sets:,} SETs over {options.keys:,} keys, C={options.clients}")
            result, sampler = self._load(
                cluster, options.sets, poller=poller, tails=list(tails.values())
            )
            system["load"] = self._load_json(result, sampler)
            windows = snapshot_windows({i: t.lines for i, t in tails.items()}, sampler.status)
            leader_id = int(result.leader.removeprefix("node")) if result.leader else -1
            system["snapshots"] = {
                "window_source": "the dump lines' timestamps: 'began writing a snapshot' to "
                "'saved a snapshot'",
                "per_node": {f"node{i}": sum(1 for w in windows if w.node == i) for i in range(3)},
                "any_node": by_snapshot(
                    result.op_finished,
                    result.op_latency,
                    windows,
                    result.started_at,
                    options.bucket,
                ),
                "leader": by_snapshot(
                    result.op_finished,
                    result.op_latency,
                    [w for w in windows if w.node == leader_id],
                    result.started_at,
                    options.bucket,
                ),
                "compactions": sum(
                    1
                    for t in tails.values()
                    for line in t.lines
                    if "compacted its log" in line.text
                ),
            }
            for tail in tails.values():
                tail.close()
            system["sets_end"] = options.keys + result.completed_total
            system["idle_end"] = self._settle(poller)
            system["footprint_end"] = footprint(cluster, state_only=True)
            system["ratios"] = ratios(system["footprint_start"], system["footprint_end"])
            if options.restart:
                self.report["restart"] = self._restart(cluster, poller)
            if options.catchup_sets > 0:
                self.report["catchup"] = self._catchup(cluster, poller)
        finally:
            poller.close()
            self._stop(cluster)

    def _settle(self, poller: StatusPoller) -> dict[str, Any]:
        """Wait until every node applied the leader's commit index with no snapshot due — and,
        when the nodes snapshot at rest (--snapshot-idle), until every node is at rest: its
        snapshot at the commit index, its log empty — at most --settle s, then AFTER_IDLE s
        more; what was found."""
        entries = self.options.snapshots.entries
        at_rest = self.options.snapshots.idle is not None
        began = time.monotonic()
        deadline = began + self.options.settle
        rows: list[NodeStatusRow] = []
        idle = False
        while True:
            rows = poller.poll()
            leader = [r for r in rows if r.reachable and r.role == "leader"]
            if leader and all(r.reachable for r in rows):
                commit = leader[0].commit_length or 0
                idle = all(
                    (r.applied_length or 0) >= commit
                    and commit - (r.snapshot_index or 0) < entries
                    and (
                        not at_rest
                        or ((r.snapshot_index or 0) >= commit and (r.first_index or 0) > commit)
                    )
                    for r in rows
                )
            if idle or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        waited = time.monotonic() - began
        time.sleep(AFTER_IDLE)
        rows = poller.poll()
        return {
            "idle": idle,
            "waited_s": round(waited, 2),
            "nodes": {
                f"node{r.node_id}": {
                    "role": r.role,
                    "commit": r.commit_length,
                    "applied": r.applied_length,
                    "snapshot_index": r.snapshot_index,
                    "first_index": r.first_index,
                }
                for r in rows
                if r.reachable
            },
        }

    def _load_json(self, result: RunResult, sampler: Sampler) -> dict[str, Any]:
        document = result.to_json()
        document["peak_rss_bytes"] = sampler.peak_rss()
        document["ops_per_second_series"] = per_second(
            result.op_finished, result.started_at, self.options.bucket
        )
        document["latency_ms"] = (
            _latency(result.op_latency) if result.op_latency else document["latency_ms"]
        )
        return document

    def _restart(self, cluster: RaftKVCluster, poller: StatusPoller) -> dict[str, Any]:
        leader = cluster.wait_ready()
        node = next(i for i in range(cluster.size) if i != leader)
        rows = {r.node_id: r for r in poller.poll()}
        target = rows[leader].commit_length or 0
        before = rows[node]
        self.say(
            f"restart: SIGKILL node{node} (follower, applied {before.applied_length:,}), start it"
        )
        tail = DumpTail(cluster.data_dir(node) / DUMP_FILE, wall_offset())
        cluster.kill(node)
        spawned, first_answer, serving = _restart_until(
            cluster,
            node,
            RESTART_TIMEOUT,
            lambda reply: (
                reply.HasField("leader_id")
                and reply.commit_length >= target
                and reply.applied_length >= target
            ),
            "was not serving",
        )
        lines = _read_until(tail, LOADED)
        tail.close()
        loaded = find_line(lines, LOADED)
        imports = _import_time()
        cluster.wait_ready()
        return {
            "node": f"node{node}",
            "how": "SIGKILL, then the same command again",
            "leader_commit_at_kill": target,
            "applied_before_kill": before.applied_length,
            "snapshot_index_before_kill": before.snapshot_index,
            "first_index_before_kill": before.first_index,
            "snapshot_loaded_s": _since(spawned, loaded[0].at if loaded else None),
            "snapshot_loaded_index": int(loaded[1].group(2)) if loaded else None,
            "log_entries_after_snapshot": int(loaded[1].group(3)) if loaded else None,
            "first_status_s": _since(spawned, first_answer),
            "interpreter_and_imports_s": round(imports, 3),
            "serving_s": _since(spawned, serving),
            "definition": "serving: its Status names the leader and reports commit and applied "
            "index ≥ the leader's commit index at the kill (every acknowledged SET applied)",
        }

    def _catchup(self, cluster: RaftKVCluster, poller: StatusPoller) -> dict[str, Any]:
        options = self.options
        leader = cluster.wait_ready()
        restarted = self.report.get("restart", {}).get("node")
        followers = [i for i in range(cluster.size) if i != leader]
        node = next((i for i in followers if f"node{i}" != restarted), followers[0])
        target_spec = cluster.target()
        before = {r.node_id: r for r in poller.poll()}[node]
        self.say(f"catch-up: SIGTERM node{node}, {options.catchup_sets:,} SETs, start it")
        cluster.members[node].stop()
        result, _ = self._load(cluster, options.catchup_sets, per_op=False, target=target_spec)
        rows = {r.node_id: r for r in poller.poll() if r.reachable}
        if rows.get(leader) is None or rows[leader].role != "leader":
            raise GrowthError("the leader changed during the catch-up load")
        target = rows[leader].commit_length or 0
        offset = wall_offset()
        leader_tail = DumpTail(cluster.data_dir(leader) / DUMP_FILE, offset)
        node_tail = DumpTail(cluster.data_dir(node) / DUMP_FILE, offset)
        spawned, _, caught = _restart_until(
            cluster,
            node,
            CATCHUP_TIMEOUT,
            lambda reply: reply.applied_length >= target,
            "had not caught up",
        )
        leader_lines = _read_until(leader_tail, SENT, peer=(3, node))
        sent = find_line(leader_lines, SENT, peer=(3, node))
        node_lines = node_tail.read()
        leader_tail.close()
        node_tail.close()
        sending = find_line(leader_lines, SENDING, peer=(3, node))
        installed = find_line(node_lines, INSTALLED)
        failures = sum(
            1
            for line in leader_lines
            if (m := SEND_STOPPED.search(line.text)) and int(m.group(2)) == node
        )
        transfer: dict[str, Any] | None = None
        if sent is not None:
            size, seconds = int(sent[1].group(4)), float(sent[1].group(6))
            transfer = {
                "snapshot_index": int(sent[1].group(2)),
                "bytes": size,
                "chunks": int(sent[1].group(5)),
                "seconds": seconds,
                "mb_per_s": round(size / MB / seconds, 2) if seconds > 0 else None,
            }
        document = {
            "node": f"node{node}",
            "how": "SIGTERM, SETs, then the same command again",
            "applied_before_stop": before.applied_length,
            "sets_while_down": result.ops,
            "load_ops_per_s": round(result.ops_per_second, 1),
            "leader": f"node{leader}",
            "leader_commit_at_start": target,
            "leader_first_index": rows[leader].first_index,
            "leader_snapshot_index": rows[leader].snapshot_index,
            "snapshot_sent": transfer,
            "failed_transfers": failures,
            "sending_line_s": _since(spawned, sending[0].at if sending else None),
            "installed_s": _since(spawned, installed[0].at if installed else None),
            "caught_up_s": _since(spawned, caught),
            "definition": "caught up: its Status reports an applied index ≥ the leader's commit "
            "index at its start (polled every 10 ms)",
        }
        document["state_check"] = self._compare_state(cluster, leader, node)
        return document

    def _compare_state(self, cluster: RaftKVCluster, leader: int, node: int) -> dict[str, Any]:
        """The leader's key space, then the caught-up node's, read from it as leader after a
        leadership transfer; the cluster takes no writes meanwhile."""
        channels = [grpc.insecure_channel(a) for a in cluster.addresses]
        try:
            stubs = [kv_stub(c) for c in channels]
            before = _listing(stubs[leader])
            stubs[leader].TransferLeader(
                pb.TransferLeaderRequest(to=node), timeout=TRANSFER_TIMEOUT
            )
            deadline = time.monotonic() + TRANSFER_TIMEOUT
            while cluster.wait_ready() != node:
                if time.monotonic() > deadline:
                    raise GrowthError(f"node{node} did not take the leadership")
                time.sleep(0.05)
            term = stubs[node].Status(pb.StatusRequest(), timeout=1).term
            after = _listing(stubs[node])
            reply = stubs[node].Status(pb.StatusRequest(), timeout=1)
            if reply.role != "leader" or reply.term != term:
                raise GrowthError(f"node{node} lost the leadership while its keys were read")
        finally:
            for channel in channels:
                channel.close()
        return {
            "equal": before == after,
            "keys": len(after),
            "crc32_leader": _crc(before),
            "crc32_caught_up": _crc(after),
            "how": f"List of every key on node{leader} (leader), then on node{node} after "
            f"KeyValue.TransferLeader to it; no writes in between",
        }

    # -- etcd -------------------------------------------------------------------------------------
    def _etcd(self, root: Path, name: str, extra: Sequence[str]) -> None:
        options = self.options
        cluster = EtcdCluster(root, extra_args=extra)
        self._start(cluster)
        system: dict[str, Any] = {
            "system": f"{cluster.label} ({name})",
            "kind": "etcd",
        }
        self.report["systems"].append(system)
        try:
            time.sleep(options.etcd_settle)
            system["idle_start"] = {"waited_s": options.etcd_settle}
            system["footprint_start"] = footprint(cluster, state_only=False)
            system["sets_start"] = options.keys
            self.say(f"load: {options.sets:,} SETs into {cluster.label}")
            result, sampler = self._load(cluster, options.sets)
            system["load"] = self._load_json(result, sampler)
            system["sets_end"] = options.keys + result.completed_total
            time.sleep(options.etcd_settle)
            system["idle_end"] = {"waited_s": options.etcd_settle}
            system["footprint_end"] = footprint(cluster, state_only=False)
            system["ratios"] = ratios(system["footprint_start"], system["footprint_end"])
            system["flags"] = list(extra) or ["(defaults: no --auto-compaction-*)"]
        finally:
            self._stop(cluster)


def _import_time() -> float:
    """Seconds a fresh interpreter takes to import the node's code, and nothing else."""
    began = time.monotonic()
    subprocess.run([sys.executable, "-c", "import raftkv.server.main"], check=True)
    return time.monotonic() - began


def find_line(
    lines: Sequence[DumpLine], pattern: re.Pattern[str], peer: tuple[int, int] | None = None
) -> tuple[DumpLine, re.Match[str]] | None:
    """The first line that matches `pattern` (and whose group peer[0] is peer[1])."""
    for line in lines:
        match = pattern.search(line.text)
        if match is not None and (peer is None or int(match.group(peer[0])) == peer[1]):
            return line, match
    return None


def _since(origin: float, moment: float | None) -> float | None:
    return None if moment is None else round(moment - origin, 3)


def _listing(stub: Any) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    start_after = ""
    deadline = time.monotonic() + TRANSFER_TIMEOUT
    while True:
        try:
            page = stub.List(pb.ListRequest(start_after=start_after, limit=1000), timeout=5)
        except grpc.RpcError as error:
            if time.monotonic() > deadline:
                raise GrowthError(f"List failed: {error}") from None
            time.sleep(0.05)
            continue
        items += [(item.key, item.value) for item in page.items]
        if not page.more or not page.items:
            return items
        start_after = page.items[-1].key


def _crc(items: Sequence[tuple[str, str]]) -> str:
    crc = 0
    for key, value in items:
        crc = zlib.crc32(f"{key}\0{value}\n".encode(), crc)
    return f"{crc:08x}"


# ---------------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class Target:
    text: str
    ok: bool | None  # None: reported, not checked

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "ok": self.ok}


def targets(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    found: list[Target] = []
    ours = next((s for s in report["systems"] if s["kind"] == "raftkv"), None)
    if ours is not None and "ratios" in ours:
        sets = ours.get("sets_end", 0)
        # The data: what the state needs on disk. dump.txt and its rotated copies are the
        # diagnostic log (the assignment's line for every SET received and committed), bounded
        # by its rotation (DUMP_CAP_MB), not by the data: reported beside it, not as it.
        for key, what in (
            ("rss_bytes", "RSS"),
            ("state_du_bytes", "data dir (du of snapshot.txt, logs.txt, metadata.txt)"),
        ):
            worst = max(
                (r[key] for r in ours["ratios"].values() if r[key] is not None), default=None
            )
            if worst is not None:
                found.append(
                    Target(
                        f"{what} per node after {sets:,} SETs ≤ 2× after {ours['sets_start']:,}: "
                        f"max {worst:.2f}×",
                        worst <= 2.0,
                    )
                )
        worst = max(
            (r["du_bytes"] for r in ours["ratios"].values() if r["du_bytes"] is not None),
            default=None,
        )
        if worst is not None:
            found.append(
                Target(
                    f"(the whole directory with the dump.txt diagnostic log, at most "
                    f"{DUMP_CAP_MB} MB by its rotation: max {worst:.2f}×)",
                    None,
                )
            )
        any_node = ours.get("snapshots", {}).get("any_node", {})
        ratio, exact = any_node.get("ratio"), any_node.get("exact_ratio")
        if ratio is not None:
            found.append(
                Target(
                    f"ops/s in {report['options']['bucket']:g}-s buckets with a snapshot ≥ 0.9× "
                    f"those without: {ratio:.3f}×",
                    ratio >= 0.9,
                )
            )
        elif any_node:
            found.append(
                Target("ops/s in buckets with vs without a snapshot: no bucket without", None)
            )
        control = any_node.get("control_ratio")
        if control is not None:
            found.append(
                Target(
                    "ops/s inside the snapshot windows ≥ 0.9× inside control windows of the "
                    f"same lengths without a snapshot: {control:.3f}× "
                    f"({any_node['control_windows']} pairs)",
                    control >= 0.9,
                )
            )
        if exact is not None:
            found.append(
                Target(
                    f"(ops/s inside the snapshot windows ÷ all the time outside them: "
                    f"{exact:.3f}×)",
                    None,
                )
            )
        p999 = any_node.get("latency_ms_during", {}).get("p99.9")
        overall = ours.get("load", {}).get("latency_ms", {}).get("p99.9")
        if any_node:
            found.append(
                Target(
                    f"p99.9 SET latency reported: {_fmt(overall)} ms overall, {_fmt(p999)} ms "
                    "during a snapshot",
                    None,
                )
            )
    restart = report.get("restart")
    if restart:
        serving = restart["serving_s"]
        found.append(
            Target(f"restart of a follower to serving ≤ 1 s: {serving:.3f} s", serving <= 1.0)
        )
    catchup = report.get("catchup")
    if catchup:
        sent = catchup.get("snapshot_sent")
        rate = (
            f"{sent['mb_per_s']} MB/s ({sent['bytes']:,} bytes in {sent['seconds']} s)"
            if sent
            else "no snapshot sent"
        )
        found.append(
            Target(
                f"catch-up reported: InstallSnapshot {rate}, caught up in "
                f"{_fmt(catchup['caught_up_s'], 3)} s",
                None,
            )
        )
        check = catchup.get("state_check", {})
        if check:
            found.append(
                Target(
                    f"caught-up state equals the leader's: {check['keys']:,} keys, CRC-32 "
                    f"{check['crc32_caught_up']} vs {check['crc32_leader']}",
                    bool(check["equal"]),
                )
            )
    return [t.to_json() for t in found]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raftkv bench growth",
        description="Memory, disk, snapshots, restart and catch-up after many SETs (issue 15).",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = GrowthOptions()
    policy = DEFAULT_SNAPSHOTS
    parser.add_argument(
        "--sets",
        type=positive(int),
        default=defaults.sets,
        help="SETs of the long load (default: %(default)s)",
    )
    parser.add_argument(
        "--catchup-sets",
        type=int,
        default=defaults.catchup_sets,
        help="SETs while a follower is down (0: no catch-up phase; default: %(default)s)",
    )
    parser.add_argument("--no-restart", action="store_true", help="skip the restart phase")
    parser.add_argument(
        "--keys",
        type=positive(int),
        default=defaults.keys,
        help="key space; also the first SETs, one per key (default: %(default)s)",
    )
    parser.add_argument(
        "--value-bytes",
        type=int,
        default=defaults.value_bytes,
        help="value size (default: %(default)s)",
    )
    parser.add_argument(
        "-c",
        "--clients",
        type=positive(int),
        default=defaults.clients,
        help="closed-loop clients (default: %(default)s)",
    )
    parser.add_argument(
        "--procs",
        type=int,
        default=0,
        help="load-generator processes (default: 2 when C ≥ 16, else 1)",
    )
    parser.add_argument(
        "--snapshot-entries",
        type=positive(int),
        default=policy.entries,
        help="our nodes' --snapshot-entries (default: %(default)s)",
    )
    parser.add_argument(
        "--snapshot-bytes",
        type=positive(int),
        default=policy.bytes,
        help="our nodes' --snapshot-bytes (default: %(default)s)",
    )
    parser.add_argument(
        "--trailing-entries",
        type=int,
        default=policy.trailing_entries,
        help="our nodes' --trailing-entries (default: %(default)s)",
    )
    parser.add_argument(
        "--against",
        choices=["etcd"],
        action="append",
        default=[],
        help="also measure etcd 3.4 (its default flags)",
    )
    parser.add_argument(
        "--etcd-auto-compaction",
        action="store_true",
        help="with --against etcd: one more etcd run with --auto-compaction-mode revision "
        "--auto-compaction-retention 1000",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=defaults.settle,
        help="at most this many s for our cluster to be idle before a measurement "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--etcd-settle",
        type=float,
        default=defaults.etcd_settle,
        help="s after etcd's loads before a measurement (default: %(default)s)",
    )
    parser.add_argument(
        "--bucket",
        type=positive(float),
        default=defaults.bucket,
        help="throughput bucket, s (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report here")
    parser.add_argument("--workdir", type=Path, help="keep the clusters here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="do not delete the temp dir")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def options_from(args: argparse.Namespace) -> GrowthOptions:
    return GrowthOptions(
        sets=args.sets,
        catchup_sets=max(0, args.catchup_sets),
        restart=not args.no_restart,
        keys=args.keys,
        value_bytes=args.value_bytes,
        clients=args.clients,
        procs=max(0, args.procs),
        snapshots=SnapshotPolicy(args.snapshot_entries, args.snapshot_bytes, args.trailing_entries),
        against=tuple(dict.fromkeys(args.against)),
        etcd_auto_compaction=args.etcd_auto_compaction,
        settle=max(0.0, args.settle),
        etcd_settle=max(0.0, args.etcd_settle),
        bucket=args.bucket,
        workdir=args.workdir,
        keep=args.keep,
    )


def main(argv: Sequence[str] | None = None, out: Any = None) -> int:
    from raftkv_tools.bench.report import render_growth

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as request:
        return request.code if isinstance(request.code, int) else 2
    if args.value_bytes < 6 or args.trailing_entries < 0:
        print(
            "raftkv bench growth: --value-bytes must be ≥ 6, --trailing-entries ≥ 0",
            file=sys.stderr,
        )
        return 2
    growth = Growth(options_from(args), Progress(enabled=not args.quiet))
    try:
        report = growth.run()
    except (GrowthError, ClusterError, LoadError, StubsError, OSError, grpc.RpcError) as error:
        print(f"raftkv bench growth: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("raftkv bench growth: interrupted", file=sys.stderr)
        return 130
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(render_growth(report), file=out or sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _restart_until(
    cluster: RaftKVCluster,
    node: int,
    timeout: float,
    done: Callable[[pb.StatusResponse], bool],
    failure: str,
) -> tuple[float, float, float]:
    """Start `node` again and poll its Status until `done` says so: (when it was spawned, its
    first Status answer, the answer `done` accepted), monotonic seconds. GrowthError if it exits
    or `timeout` passes ("node1 <failure> 30 s after its restart")."""
    probe = grpc.insecure_channel(cluster.addresses[node], options=PROBE_CHANNEL_OPTIONS)
    status = kv_stub(probe).Status
    first_answer: float | None = None
    try:
        spawned = time.monotonic()
        cluster.restart(node)
        deadline = spawned + timeout
        while time.monotonic() < deadline:
            if not cluster.members[node].alive():
                raise GrowthError(
                    f"node{node} exited after its restart:\n{cluster.members[node].tail()}"
                )
            try:
                reply = status(pb.StatusRequest(), timeout=0.5)
            except grpc.RpcError:
                time.sleep(PROBE_INTERVAL)
                continue
            now = time.monotonic()
            if first_answer is None:
                first_answer = now
            if done(reply):
                return spawned, first_answer, now
            time.sleep(PROBE_INTERVAL)
    finally:
        probe.close()
    raise GrowthError(f"node{node} {failure} {timeout:.0f} s after its restart")


def _read_until(
    tail: DumpTail,
    pattern: re.Pattern[str],
    peer: tuple[int, int] | None = None,
    timeout: float = 5.0,
) -> list[DumpLine]:
    """The dump lines kept so far, read again until one matches `pattern` (see find_line; it may
    not be written yet when the node answers) or `timeout` passes."""
    lines = tail.read()
    deadline = time.monotonic() + timeout
    while find_line(lines, pattern, peer) is None and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = tail.read()
    return lines
