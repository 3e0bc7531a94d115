"""Targeted lease scenarios on real processes, shared by the lease tests and the negative controls.

Each scenario drives a `Cluster` through one story, while `Probe` threads GET one key from chosen
nodes every few milliseconds (clients "still attached" to those nodes), and returns what
happened. One writer writes the key with values v0, v1, … one after another, so a read is
*stale* when it returns a value older than one whose SET had already completed when the read
was sent. Every scenario also hands its reads and writes to the linearizability checker.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from raftkv.rpc import raftkv_pb2 as pb
from tests.faults.controller import Cluster, ClusterError, OpResult, wait_until
from tests.support.linearizability import CheckResult, Operation, Outcome, check_history

KEY = "k"
PROBE_INTERVAL = 0.005


class Probe:
    """A thread that GETs `key` from one node until stopped, recording every answer."""

    def __init__(self, cluster: Cluster, node_id: int, key: str = KEY, timeout: float = 1.0):
        self.cluster = cluster
        self.node_id = node_id
        self.key = key
        self.timeout = timeout
        self.results: list[OpResult] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"probe-{node_id}", daemon=True)

    def start(self) -> Probe:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.results.append(self.cluster.get(self.node_id, self.key, self.timeout))
            # Read again a few ms later; the pace of a polling client, not synchronisation.
            self._stop.wait(PROBE_INTERVAL)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    def ok(self) -> list[OpResult]:
        return [r for r in list(self.results) if r.ok]


@dataclass(frozen=True)
class StaleRead:
    node: int
    read: OpResult
    newer: OpResult  # a completed write the read should have seen

    def describe(self) -> str:
        return (
            f"node {self.node} answered {self.read.value!r} to a GET sent at "
            f"{self.read.invoke:.3f}, but SET {self.newer.value!r} had completed at "
            f"{self.newer.complete:.3f}"
        )


@dataclass
class Story:
    """What a scenario saw."""

    writes: list[OpResult] = field(default_factory=list)
    reads: dict[int, list[OpResult]] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)
    leaders: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    initial: str | None = None

    def note(self, text: str) -> None:
        self.notes.append(text)

    def stale_reads(self) -> list[StaleRead]:
        order = {w.value: position for position, w in enumerate(self.writes)}
        stale = []
        for node, reads in self.reads.items():
            for read in reads:
                if not read.ok:
                    continue
                seen = order.get(read.value, -1)
                newer = [
                    w
                    for position, w in enumerate(self.writes)
                    if position > seen and w.complete < read.invoke
                ]
                if newer:
                    stale.append(StaleRead(node, read, newer[-1]))
        return stale

    def ok_reads(self, node: int) -> list[OpResult]:
        return [r for r in self.reads.get(node, []) if r.ok]

    def refusals(self, node: int) -> list[str]:
        return [r.details for r in self.reads.get(node, []) if not r.ok]

    def history(self) -> list[Operation]:
        ops = [
            Operation("writer", "set", KEY, w.value, w.invoke, w.complete, Outcome.OK)
            for w in self.writes
        ]
        for node, reads in self.reads.items():
            ops += [
                Operation(f"probe{node}", "get", KEY, r.value, r.invoke, r.complete, Outcome.OK)
                for r in reads
                if r.ok
            ]
        return ops

    def check(self) -> CheckResult:
        return check_history(self.history(), initial=self.initial)

    def summary(self) -> str:
        lines = [
            f"leaders {self.leaders}; marks "
            + ", ".join(f"{k}={v:.3f}" for k, v in sorted(self.marks.items(), key=lambda kv: kv[1]))
        ]
        lines += [f"write {w.value!r} [{w.invoke:.3f}, {w.complete:.3f}]" for w in self.writes]
        for node, reads in sorted(self.reads.items()):
            ok = [r for r in reads if r.ok]
            span = f"[{ok[0].invoke:.3f} … {ok[-1].complete:.3f}]" if ok else ""
            lines.append(f"node {node}: {len(reads)} GETs, {len(ok)} answered {span}")
        lines += self.notes
        lines += [s.describe() for s in self.stale_reads()[:5]]
        return "\n".join(lines)


@contextlib.contextmanager
def probing(cluster: Cluster, story: Story, nodes: Iterable[int]) -> Iterator[dict[int, Probe]]:
    """Probe threads reading KEY from each of `nodes`; their results land in story.reads."""
    probes = {n: Probe(cluster, n).start() for n in nodes}
    try:
        yield probes
    finally:
        for probe in probes.values():
            probe.stop()
            story.reads.setdefault(probe.node_id, []).extend(probe.results)


def _write(
    cluster: Cluster, story: Story, value: str, among: Sequence[int] | None = None
) -> OpResult:
    result = cluster.write(KEY, value, among=among, timeout=30.0)
    story.writes.append(result)
    return result


def _until_refusing(story: Story, probe: Probe, since: float, quiet: float, timeout: float) -> None:
    """Keep reading until `probe`'s node has refused every GET sent in the last `quiet`
    seconds (and at least one sent after `since`), or until `timeout`: a broken node may
    never stop answering. Records the time in story.marks[f"node {n} refusing"] if it did."""
    deadline = time.monotonic() + timeout

    def refusing() -> bool:
        now = time.monotonic()
        recent = [r for r in list(probe.results) if r.invoke >= max(since, now - quiet)]
        return now - since >= quiet and bool(recent) and not any(r.ok for r in recent)

    while time.monotonic() < deadline:
        if refusing():
            story.marks[f"node {probe.node_id} refusing"] = time.monotonic()
            return
        time.sleep(0.02)  # polling the probe's results, with a deadline


def _replicated(cluster: Cluster, leader: int, timeout: float = 20.0) -> None:
    """Wait until every running node has applied everything `leader` has committed."""

    def done() -> bool:
        statuses = cluster.statuses(cluster.live())
        if leader not in statuses or len(statuses) < len(cluster.live()):
            return False
        commit = statuses[leader].commit_length
        return all(s.applied_length >= commit for s in statuses.values())

    wait_until(done, timeout, f"every node to apply node {leader}'s commits")


def _patience(cluster: Cluster) -> float:
    """How long an old leader may keep answering after a newer write before we stop watching:
    far longer than any lease it could hold."""
    return 3 * cluster.config.lease_duration + 3


# ---------------------------------------------------------------------------------------------
# Scenario A: a partitioned old leader, a client still attached to it.


def partitioned_leader(
    cluster: Cluster, *, restart_followers: bool = False, leader: int | None = None
) -> Story:
    """Isolate the leader (kernel partition); the majority elects a new leader, which waits out
    the old lease and then commits a write; meanwhile every node is read continuously.

    restart_followers: kill -9 and restart every follower right after the cut, so that the
    new leader's voters are nodes that restarted (they must assume a full lease L is running).
    """
    story = Story()
    old = leader if leader is not None else cluster.wait_for_leader()
    story.leaders.append(old)
    others = [i for i in cluster.ids if i != old]
    _write(cluster, story, "v0", among=[old])
    # Every follower holds v0 before the cut, so any of them can win the next election.
    _replicated(cluster, old)
    with probing(cluster, story, cluster.ids) as probes:
        probe = probes[old]
        wait_until(lambda: bool(probe.ok()), 10, f"the leader {old} to answer a GET")
        story.marks["cut"] = time.monotonic()
        cluster.isolate(old)
        if restart_followers:
            for i in others:
                cluster.kill(i)
            story.marks["followers killed"] = time.monotonic()
            for i in others:
                cluster.start_node(i, wait=False)
            for i in others:
                cluster.wait_serving(i)
            story.marks["followers restarted"] = time.monotonic()
        new = cluster.wait_for_leader(among=others, timeout=30)
        story.leaders.append(new)
        story.marks["new leader serving"] = time.monotonic()
        _write(cluster, story, "v1", among=others)
        # Keep reading until the old leader has refused everything for a while.
        _until_refusing(story, probe, story.writes[-1].complete, 0.3, _patience(cluster))
    cluster.heal()
    return story


# ---------------------------------------------------------------------------------------------
# Scenario B: a leader paused past its lease, with GETs queued while it sleeps.


@dataclass
class PausedStory(Story):
    queued: list[OpResult] = field(default_factory=list)


def paused_leader(cluster: Cluster, *, isolate_on_wake: bool = True, gets: int = 10) -> PausedStory:
    story = PausedStory()
    old = cluster.wait_for_leader()
    story.leaders.append(old)
    others = [i for i in cluster.ids if i != old]
    _write(cluster, story, "v0", among=[old])
    cluster.pause(old)
    story.marks["paused"] = time.monotonic()
    sent = time.monotonic()
    futures = [cluster.get_future(old, KEY, timeout=30) for _ in range(gets)]
    story.leaders.append(cluster.wait_for_leader(among=others, timeout=30))
    _write(cluster, story, "v1", among=others)
    if isolate_on_wake:
        # So that nothing but its own clock can tell the old leader it was deposed.
        cluster.isolate(old)
    cluster.resume(old)
    story.marks["resumed"] = time.monotonic()
    for future in futures:
        try:
            response = future.result()
        except Exception as error:  # grpc.RpcError: refused, as it should be
            code = error.code().name if hasattr(error, "code") else "?"
            details = error.details() if hasattr(error, "details") else str(error)
            story.queued.append(OpResult(False, code=code, details=details, invoke=sent))
        else:
            value = response.value if response.found else None
            story.queued.append(OpResult(True, value, invoke=sent, complete=time.monotonic()))
    cluster.heal()
    story.reads[old] = story.queued
    return story


# ---------------------------------------------------------------------------------------------
# Scenario B': a leader whose disk stalls (fsync delayed by strace): its loop waits on the disk,
# so it neither ticks nor heartbeats nor steps down, but it still answers GETs.


def stalled_disk_leader(cluster: Cluster, stall: float = 4.0) -> Story:
    story = Story()
    old = cluster.wait_for_leader()
    story.leaders.append(old)
    others = [i for i in cluster.ids if i != old]
    _write(cluster, story, "v0", among=[old])
    pid = cluster.nodes[old].pid
    assert pid is not None
    trace = cluster.workdir / f"strace-node{old}.txt"
    micros = int(stall * 1_000_000)
    tracer = subprocess.Popen(
        [
            "strace",
            "-f",
            "-qq",
            "-p",
            str(pid),
            "-e",
            "trace=fdatasync,fsync",
            "-e",
            f"inject=fdatasync:delay_enter={micros}",
            "-e",
            f"inject=fsync:delay_enter={micros}",
            "-o",
            str(trace),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # strace attaches to every thread before tracing; then a write makes the leader fsync.
        with probing(cluster, story, [old]) as probes:
            wait_until(lambda: bool(probes[old].ok()), 10, "the leader to answer a GET")
            wait_for_tracer(pid)
            pending = cluster.stub(old).Set.future(
                pb.SetRequest(key="stall", value="stalled"), timeout=stall + 10
            )
            story.marks["write sent to stalled leader"] = time.monotonic()
            story.leaders.append(cluster.wait_for_leader(among=others, timeout=30))
            _write(cluster, story, "v1", among=others)
            _until_refusing(story, probes[old], story.writes[-1].complete, 0.3, stall + 20)
            with contextlib.suppress(Exception):
                pending.result()
    finally:
        tracer.send_signal(signal.SIGINT)
        try:
            tracer.wait(10)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait(5)
    story.note(f"strace: {trace.read_text().strip()[-300:] if trace.exists() else 'no output'}")
    cluster.heal()
    return story


def wait_for_tracer(pid: int) -> None:
    """Wait until every thread of `pid` is ptrace-stopped-capable, i.e. has a TracerPid."""

    def traced() -> bool:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        for task in tasks:
            with contextlib.suppress(OSError):
                status = (task / "status").read_text()
                tracer = next(x for x in status.splitlines() if x.startswith("TracerPid:"))
                if tracer.split()[1] == "0":
                    return False
        return bool(tasks)

    wait_until(traced, 10, f"strace to attach to pid {pid}")


# ---------------------------------------------------------------------------------------------
# Scenario C: acknowledgements delayed on their way to the leader.


@dataclass
class LateAckStory(Story):
    max_lease_remaining: float = 0.0
    bound: float = 0.0
    samples: int = 0


def late_acks(cluster: Cluster, delay: float = 0.25, observe: float = 2.0) -> LateAckStory:
    """Delay every byte followers send the leader by `delay` (proxied links), watch the
    leader's Status.lease_remaining, then isolate it and read it while a new leader writes."""
    story = LateAckStory()
    leader = cluster.wait_for_leader()
    story.leaders.append(leader)
    others = [i for i in cluster.ids if i != leader]
    for follower in others:
        cluster.set_delay(follower, leader, delay)
    story.bound = cluster.config.leader_lease_span - delay
    # Let the delayed acks flow before sampling (a full lease of them).
    story.marks["delayed"] = time.monotonic()
    end = time.monotonic() + observe
    wait_until(
        lambda: time.monotonic() > story.marks["delayed"] + cluster.config.lease_duration,
        cluster.config.lease_duration + 5,
        "the delayed acks to replace the undelayed lease",
    )
    end = time.monotonic() + observe
    while time.monotonic() < end:
        status = cluster.status(leader)
        if status is not None and status.role == "leader":
            story.samples += 1
            story.max_lease_remaining = max(story.max_lease_remaining, status.lease_remaining)
    _write(cluster, story, "v0", among=[leader])
    _replicated(cluster, leader)
    with probing(cluster, story, [leader]) as probes:
        wait_until(lambda: bool(probes[leader].ok()), 10, "the leader to answer a GET")
        story.marks["cut"] = time.monotonic()
        cluster.isolate(leader)
        story.leaders.append(cluster.wait_for_leader(among=others, timeout=30))
        _write(cluster, story, "v1", among=others)
        _until_refusing(story, probes[leader], story.writes[-1].complete, 0.3, _patience(cluster))
    cluster.heal()
    return story


# ---------------------------------------------------------------------------------------------
# Scenario E: the first read after a full-cluster restart.


@dataclass
class RestartStory(Story):
    hint: int = 0
    index: int = 0


def full_restart(cluster: Cluster, delay: float = 0.15, attempts: int = 4) -> RestartStory:
    """A write is acknowledged, then every node is killed before the leader's lazily written
    commit hint covers it. A lagging follower and the leader restart; the leader's NO-OP
    needs a second, delayed round to reach the follower, while the follower's first (log
    mismatch) answer already grants the lease. Reads sent to the leader all along must return
    the acknowledged value or be refused."""
    story = RestartStory()
    leader = cluster.wait_for_leader()
    lagging = next(i for i in cluster.ids if i != leader)
    third = [i for i in cluster.ids if i not in (leader, lagging)]
    cluster.kill(lagging)
    for attempt in range(attempts):
        write = _write(cluster, story, f"v{attempt}", among=[leader])
        cluster.kill(leader)
        for i in third:
            cluster.kill(i)
        story.hint = _commit_hint(cluster, leader)
        story.index = write.index
        story.note(f"attempt {attempt}: SET at index {write.index}, commit hint {story.hint}")
        if story.hint < write.index:
            break
        # The hint happened to be written just then: bring the two back and write again.
        for i in [leader, *third]:
            cluster.start_node(i, wait=False)
        leader = cluster.wait_for_leader(among=[leader, *third], timeout=30)
    else:
        raise ClusterError("the commit hint always covered the last write")
    story.leaders.append(leader)
    cluster.set_delay(leader, lagging, delay)
    cluster.start_node(lagging)
    story.marks["restart"] = time.monotonic()
    cluster.start_node(leader, wait=False)
    with probing(cluster, story, [leader]) as probes:
        cluster.wait_serving(leader)
        wait_until(lambda: bool(probes[leader].ok()), 30, f"node {leader} to answer a GET")
        first_ok = probes[leader].ok()[0].complete
        wait_until(lambda: time.monotonic() > first_ok + 0.3, 5, "a few more reads")
    cluster.heal()
    return story


def _commit_hint(cluster: Cluster, node_id: int) -> int:
    for line in (cluster.node_dir(node_id) / "metadata.txt").read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == "commitLength":
            return int(value)
    raise ClusterError("no commitLength in metadata.txt")


# ---------------------------------------------------------------------------------------------
# Scenario F: two leader changes in quick succession.


def two_leader_changes(cluster: Cluster) -> Story:
    """L1 isolated → L2 serves and commits → L2 isolated at once → L3 commits. Every node is
    read all along; serving must hand over L1 → L2 → L3 without overlap."""
    story = Story()
    first = cluster.wait_for_leader()
    story.leaders.append(first)
    _write(cluster, story, "v0", among=[first])
    _replicated(cluster, first)
    with probing(cluster, story, cluster.ids) as probes:
        wait_until(lambda: bool(probes[first].ok()), 10, "the leader to answer a GET")
        rest = [i for i in cluster.ids if i != first]
        story.marks["cut 1"] = time.monotonic()
        cluster.isolate(first)
        second = cluster.wait_for_leader(among=rest, timeout=30)
        story.leaders.append(second)
        _write(cluster, story, "v1", among=[second])
        rest = [i for i in rest if i != second]
        story.marks["cut 2"] = time.monotonic()
        cluster.split([[first], [second], rest])
        third = cluster.wait_for_leader(among=rest, timeout=30)
        story.leaders.append(third)
        _write(cluster, story, "v2", among=rest)
        _until_refusing(story, probes[second], story.writes[-1].complete, 0.3, _patience(cluster))
        _until_refusing(story, probes[first], story.writes[-1].complete, 0.3, _patience(cluster))
    cluster.heal()
    return story


def serving_overlaps(story: Story) -> list[str]:
    """Pairs of leaders whose answered GETs cannot be ordered one before the other: leader A's
    GET was sent after leader B (a later leader) had already answered one."""
    problems = []
    for earlier, later in zip(story.leaders, story.leaders[1:], strict=False):
        a, b = story.ok_reads(earlier), story.ok_reads(later)
        if a and b and max(r.invoke for r in a) >= min(r.complete for r in b):
            problems.append(
                f"node {earlier} answered a GET sent at {max(r.invoke for r in a):.3f}, after "
                f"node {later} had answered one at {min(r.complete for r in b):.3f}"
            )
    return problems


# ---------------------------------------------------------------------------------------------
# A leader whose clock runs at another rate than its followers'.


def skewed_leader(cluster: Cluster, rate: float, attempts: int = 10) -> int:
    """Make a node whose clock runs at `rate` lead followers whose clocks run at 1.0.

    The cluster must start with RAFTKV_CLOCK_RATE=`rate` on every node (and should use
    hold_while_down, so that a restarted follower hears its leader before its election timer
    fires). Each follower is restarted at rate 1, one at a time; if leadership moves meanwhile
    (to a node already at rate 1, it is restarted with `rate`), the round starts again.
    Returns the leader.
    """
    skewed, real = {"RAFTKV_CLOCK_RATE": str(rate)}, {"RAFTKV_CLOCK_RATE": "1.0"}
    for _ in range(attempts):
        leader = cluster.wait_for_leader(timeout=30)
        if cluster.nodes[leader].env != skewed:
            cluster.restart(leader, env=skewed)
            continue
        followers = [i for i in cluster.ids if i != leader]
        for follower in followers:
            if cluster.nodes[follower].env != real:
                cluster.restart(follower, env=real)

        def settled(leader: int = leader, followers: list[int] = followers) -> bool:
            return cluster.serving_leader() == leader and all(
                _caught_up(cluster, f, leader) for f in followers
            )

        with contextlib.suppress(ClusterError):
            wait_until(settled, 10, f"node {leader} to lead every follower")
            return leader
    raise ClusterError(f"no node with clock rate {rate} kept the lead in {attempts} attempts")


def _caught_up(cluster: Cluster, follower: int, leader: int) -> bool:
    statuses = cluster.statuses([follower, leader])
    if len(statuses) < 2:
        return False
    return statuses[follower].applied_length >= statuses[leader].commit_length
