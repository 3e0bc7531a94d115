"""`raftkv logs review DIR`: merge every node's dump into one timeline and check the invariants.

    raftkv logs review collected/20261126T150102Z [--plot timeline.png] [--timeline]
    python -m raftkv_tools.logreview review cluster/data

DIR holds one folder per node, `node-<id>/` (what `fab gather-logs` makes) or `logs_node_<id>/`
(a data directory), each with `dump.txt` (and rotated `dump.txt.1`…), `logs.txt` and
`metadata.txt`; optionally `cluster.json` (the cluster size) and `faults.log` (the faults Fabric
injected, drawn on the plot).

It prints the terms, leaders, elections, lease waits, step-downs and restarts, then checks:

1. **One leader per term**: no two `Node N became the leader for term T.` lines for one T.
2. **No two leases at once.** A leader's lease is not in the dump, so the review bounds it from
   the lines the lease rules make the nodes write (L, ρ from each node's start-up line):
   * it *ends* no later than its step-down, shutdown or restart line, and no later than
     L/(1+ρ) after the (quorum−1)-th latest "accepted/rejected AppendEntries RPC from <it>" line
     of another node — a renewal needs a majority's answer to a round sent before those
     receipts, and runs L·(1−ρ)/(1+ρ) on the leader's clock, at most L/(1+ρ) of real time;
   * it *starts* no earlier than its election, and (in lease read mode, without the unsafe
     skip_lease_wait switch) no earlier than L after the last time the new leader or the
     (quorum−1)-th earliest of its voters heard from any leader (or restarted): rule 3's wait.
   Two leaders whose bounds overlap by more than --clock-uncertainty (default 10 ms: the
   hosts' wall clocks may disagree by that much) are reported with the lines behind both bounds.
   The bounds only ever err towards reporting an overlap, so a clean review means no overlap
   within the clock uncertainty; a report is a lead to investigate.
3. **Committed entries on a majority**: every entry below the highest commit point any node
   shows (its metadata.txt commitLength, or the entries its dump says it committed, matched to
   its own logs.txt) is in the logs.txt of a majority, at the same index with the same term.
4. **One committed prefix**: any two nodes agree on every entry both have committed, and what
   each dump says was committed is what that node's log holds there.

Exit status: 0 no violation, 1 violations (each printed with the lines that show it), 2 no
dump files found or bad arguments.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import json
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path

from raftkv.core import events
from raftkv.core.events import describe_command as describe
from raftkv.core.messages import Command, LogEntry
from raftkv.server.storage import StorageError, decode_entry

DEFAULT_UNCERTAINTY = 0.010
NODE_DIR = re.compile(r"^(?:node-|logs_node_)(\d+)$")
DUMP_FILE = re.compile(r"^dump\.txt(?:\.(\d+))?$")
# The index field of a logs.txt line (raftkv/server/storage.py).
FIRST_INDEX = re.compile(r" index=([1-9][0-9]{0,18}) crc=[0-9a-f]{8}$")


class ReviewError(ValueError):
    """The directory holds nothing to review; the message says what was expected."""


class Kind(Enum):
    START = "start"
    UNSAFE = "unsafe"
    SHUTDOWN = "shutdown"
    STOPPED = "stopped"
    RESTORED = "restored"
    # The node's state is a snapshot's (loaded at start, or installed from the leader).
    SNAPSHOT = "snapshot"
    LEADER = "leader"
    WAIT = "wait"
    LEASE_FAILED = "lease-failed"
    STEP_DOWN = "step-down"
    HEARTBEAT = "heartbeat"
    ELECTION = "election"
    VOTE_GRANTED = "vote-granted"
    VOTE_DENIED = "vote-denied"
    COMMIT = "commit"
    APPEND = "append"  # accepted or rejected AppendEntries: both answer the leader's round
    OTHER = "other"


# The core's sentences are parsed by its own event classes (raftkv/core/events.py); the kinds
# the review distinguishes among them:
CORE_KINDS: dict[type[events.Event], Kind] = {
    events.Restored: Kind.RESTORED,
    events.SnapshotLoaded: Kind.SNAPSHOT,
    events.SnapshotInstalled: Kind.SNAPSHOT,
    events.BecameLeader: Kind.LEADER,
    events.WaitingForOldLease: Kind.WAIT,
    events.LeaseRenewalFailed: Kind.LEASE_FAILED,
    events.SteppingDown: Kind.STEP_DOWN,
    events.SendingHeartbeat: Kind.HEARTBEAT,
    events.ElectionTimeout: Kind.ELECTION,
    events.VoteGranted: Kind.VOTE_GRANTED,
    events.VoteDenied: Kind.VOTE_DENIED,
    events.Committed: Kind.COMMIT,
    events.AppendAccepted: Kind.APPEND,
    events.AppendRejected: Kind.APPEND,
}

# The shell's own sentences (raftkv/server: main.py, replica.py), after the stamp. The start-up
# line's `, clock NAME` is optional: older dumps do not name the lease clock.
PATTERNS: list[tuple[Kind, re.Pattern[str]]] = [
    (
        Kind.START,
        re.compile(
            r"^Node (?P<node>\d+) starting at (?P<address>\S+): term (?P<term>\d+), "
            r"(?P<entries>\d+) log entries, read mode (?P<read_mode>\S+), election \S+s, "
            r"heartbeat (?P<heartbeat>[\d.]+)s, lease (?P<lease>[\d.]+)s, "
            r"max drift (?P<drift>[\d.]+)(?:, clock (?P<clock>\w+))?\.$"
        ),
    ),
    (Kind.UNSAFE, re.compile(r"^Node (?P<node>\d+) UNSAFE test switches on: (?P<names>.*)\.$")),
    (Kind.SHUTDOWN, re.compile(r"^Node (?P<node>\d+) shutting down\.$")),
    (Kind.STOPPED, re.compile(r"^Node (?P<node>\d+) stopped: (?P<reason>.*)$")),
]


@dataclass(frozen=True)
class Line:
    """One line of a dump (or faults.log), where it came from, and what it says."""

    node: int | None
    time: float  # seconds since the epoch, from the line's own ISO-8601 stamp
    text: str
    source: str  # "node-1/dump.txt:42"
    kind: Kind = Kind.OTHER
    fields: tuple[tuple[str, str], ...] = ()

    def get(self, name: str) -> str:
        return dict(self.fields)[name]

    def render(self, origin: float | None = None) -> str:
        stamp = datetime.fromtimestamp(self.time).astimezone().isoformat(timespec="milliseconds")
        if origin is not None:
            stamp = f"{self.time - origin:9.3f}s"
        who = "" if self.node is None else f"n{self.node}"  # journal lines say "fab ..."
        return f"{stamp}  {who:<4} {self.text}   [{self.source}]"


def classify(text: str) -> tuple[Kind, tuple[tuple[str, str], ...]]:
    event = events.parse(text)
    if event is not None:
        fields = tuple((f.name, str(getattr(event, f.name))) for f in dataclasses.fields(event))
        return CORE_KINDS.get(type(event), Kind.OTHER), fields
    for kind, pattern in PATTERNS:
        match = pattern.match(text)
        if match:
            return kind, tuple(match.groupdict("").items())
    return Kind.OTHER, ()


def parse_line(raw: str, node: int | None, source: str) -> Line | None:
    stamp, _, text = raw.rstrip("\n").partition(" ")
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    kind, fields = classify(text) if node is not None else (Kind.OTHER, ())
    return Line(node, moment.timestamp(), text, source, kind, fields)


# -- loading --------------------------------------------------------------------------------


@dataclass
class NodeFiles:
    node: int
    lines: list[Line]
    log: list[LogEntry] | None  # None: no logs.txt
    commit_hint: int | None  # metadata.txt's commitLength
    problems: list[str] = field(default_factory=list)
    # The index of log[0]: 1, or after a compaction the first line's (the entries before it
    # are in snapshot.txt, which the review does not read).
    log_first: int = 1

    @property
    def log_last(self) -> int:
        """The index of the last entry logs.txt holds (log_first − 1 when it holds none)."""
        return self.log_first + len(self.log or []) - 1

    def entry(self, index: int) -> LogEntry | None:
        """The entry at `index`, or None when logs.txt does not hold it (compacted, or beyond
        its end)."""
        log = self.log or []
        if self.log_first <= index < self.log_first + len(log):
            return log[index - self.log_first]
        return None


@dataclass
class Collection:
    directory: Path
    nodes: dict[int, NodeFiles]
    faults: list[Line]
    cluster_size: int

    @property
    def quorum(self) -> int:
        return self.cluster_size // 2 + 1


def _dump_files(directory: Path) -> list[Path]:
    """dump.txt and its rotations, oldest first (dump.txt.3, .2, .1, dump.txt)."""
    found = []
    for path in directory.iterdir():
        match = DUMP_FILE.match(path.name)
        if match:
            found.append((-(int(match.group(1) or 0)), path))
    return [path for _, path in sorted(found)]


def load_node(directory: Path, node: int, label: str) -> NodeFiles:
    lines: list[Line] = []
    problems: list[str] = []
    for path in _dump_files(directory):
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, raw in enumerate(handle, start=1):
                line = parse_line(raw, node, f"{label}/{path.name}:{number}")
                if line is not None:
                    lines.append(line)
                elif raw.strip():
                    problems.append(f"{label}/{path.name}:{number}: no timestamp: {raw[:80]!r}")
    log: list[LogEntry] | None = None
    log_path = directory / "logs.txt"
    first = 1
    if log_path.exists():
        log = []
        raw_lines = log_path.read_text(encoding="utf-8", errors="replace").split("\n")
        if raw_lines and raw_lines[-1] == "":
            raw_lines.pop()
        # A compacted log starts at a later index: its first line says which (and its checksum
        # covers that; decode_entry checks every line against first + n − 1).
        found = FIRST_INDEX.search(raw_lines[0]) if raw_lines else None
        if found is not None:
            first = int(found.group(1))
        for number, raw in enumerate(raw_lines, start=1):
            try:
                log.append(
                    decode_entry(
                        raw, path=f"{label}/logs.txt", line_no=number, index=first + number - 1
                    )
                )
            except StorageError as error:
                if number == len(raw_lines):
                    problems.append(f"{error} (a torn last line: ignored)")
                else:
                    problems.append(f"{error} (the log is read up to here)")
                break
    hint = None
    metadata = directory / "metadata.txt"
    if metadata.exists():
        for raw in metadata.read_text(errors="replace").splitlines():
            name, _, value = raw.partition(" ")
            if name == "commitLength" and value.isdigit():
                hint = int(value)
    return NodeFiles(node, lines, log, hint, problems, log_first=first)


def load_collection(directory: Path) -> Collection:
    if not directory.is_dir():
        raise ReviewError(f"{directory} is not a directory")
    nodes: dict[int, NodeFiles] = {}
    for child in sorted(directory.iterdir()):
        match = NODE_DIR.match(child.name)
        if match and child.is_dir():
            nodes[int(match.group(1))] = load_node(child, int(match.group(1)), child.name)
    if not any(files.lines for files in nodes.values()):
        raise ReviewError(
            f"no dump files under {directory}: expected node-<id>/dump.txt (fab gather-logs) "
            "or logs_node_<id>/dump.txt (a data directory)"
        )
    faults: list[Line] = []
    journal = directory / "faults.log"
    if journal.exists():
        for number, raw in enumerate(journal.read_text().splitlines(), start=1):
            line = parse_line(raw, None, f"faults.log:{number}")
            if line is not None:
                faults.append(line)
    size = len(nodes)
    description = directory / "cluster.json"
    if description.exists():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            size = max(size, len(json.loads(description.read_text())["nodes"]))
    return Collection(directory, nodes, faults, size)


# -- analysis -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    lease: float
    drift: float
    read_mode: str
    skip_lease_wait: bool


@dataclass
class Leadership:
    node: int
    term: int
    start: Line
    timing: Timing | None
    waited: Line | None = None
    end: Line | None = None  # the line that ended it; None: crashed or still leader at the end
    end_reason: str = "still leader at the end of the logs"
    end_time: float = 0.0
    heartbeats: int = 0
    # Lease bounds (see the module docstring); lease_end <= lease_start: never held one.
    lease_start: float = 0.0
    lease_end: float = 0.0
    lease_evidence: list[Line] = field(default_factory=list)
    lease_note: str = ""


@dataclass
class Span:
    node: int
    kind: str  # follower, candidate, leader, down, paused, lease, partition
    start: float
    end: float
    label: str = ""


@dataclass
class Violation:
    rule: str
    message: str
    lines: list[Line] = field(default_factory=list)


@dataclass
class Review:
    collection: Collection
    uncertainty: float
    timeline: list[Line]
    leaderships: list[Leadership]
    spans: list[Span]
    marks: list[tuple[int | None, float, str]]  # (node or None for all, time, label)
    violations: list[Violation]
    notes: list[str]
    commit_points: dict[int, int]

    @property
    def origin(self) -> float:
        return self.timeline[0].time if self.timeline else 0.0

    @property
    def finish(self) -> float:
        return self.timeline[-1].time if self.timeline else 0.0


def merge(collection: Collection) -> list[Line]:
    """Every line of every node (and the fault journal), by timestamp; ties keep file order."""
    lines = [line for files in collection.nodes.values() for line in files.lines]
    lines += collection.faults
    return sorted(lines, key=lambda line: line.time)


def _timings(lines: Sequence[Line]) -> list[tuple[float, Timing]]:
    """(time, timing) for each incarnation of one node, from its start-up and UNSAFE lines."""
    found: list[tuple[float, Timing]] = []
    for index, line in enumerate(lines):
        if line.kind is Kind.START:
            unsafe = ""
            if index + 1 < len(lines) and lines[index + 1].kind is Kind.UNSAFE:
                unsafe = lines[index + 1].get("names")
            found.append(
                (
                    line.time,
                    Timing(
                        float(line.get("lease")),
                        float(line.get("drift")),
                        line.get("read_mode"),
                        "skip_lease_wait" in unsafe,
                    ),
                )
            )
    return found


def _timing_at(timings: list[tuple[float, Timing]], moment: float) -> Timing | None:
    chosen = None
    for start, timing in timings:
        if start <= moment:
            chosen = timing
    return chosen or (timings[0][1] if timings else None)


class _RoleWalk:
    """Follows one node's role through its lines, recording each span it held."""

    def __init__(self, node: int, since: float, spans: list[Span]) -> None:
        self.node, self.spans = node, spans
        self.role, self.since, self.alive = "follower", since, True

    def switch(self, role: str, at: float) -> None:
        if self.alive and at > self.since:
            self.spans.append(Span(self.node, self.role, self.since, at))
        self.role, self.since = role, at

    def down(self, at: float, until: float, label: str) -> None:
        self.switch(self.role, at)
        self.spans.append(Span(self.node, "down", at, until, label))
        self.alive, self.since = False, until


def _leaderships_and_spans(
    collection: Collection, finish: float
) -> tuple[list[Leadership], list[Span], list[tuple[int | None, float, str]]]:
    leaderships: list[Leadership] = []
    spans: list[Span] = []
    marks: list[tuple[int | None, float, str]] = []
    for node, files in sorted(collection.nodes.items()):
        if not files.lines:
            continue
        timings = _timings(files.lines)
        walk = _RoleWalk(node, files.lines[0].time, spans)
        current: Leadership | None = None
        stopped_at: float | None = None
        last_time = files.lines[0].time
        for line in files.lines:
            if line.kind is Kind.START:
                if stopped_at is not None:
                    walk.down(stopped_at, line.time, "stopped")
                elif line is not files.lines[0]:
                    # A start without a shutdown line: the previous process died (crash/kill).
                    walk.down(last_time, line.time, "crashed")
                    marks.append((node, last_time, "crash"))
                    if current is not None:
                        current.end_reason = "crashed (no further lines; restarted later)"
                        current.end_time = line.time
                        current = None
                marks.append((node, line.time, "start"))
                walk.alive, walk.role, walk.since = True, "follower", line.time
                stopped_at = None
            elif line.kind in (Kind.SHUTDOWN, Kind.STOPPED):
                if current is not None:
                    current.end, current.end_reason = line, "shut down"
                    current.end_time = line.time
                    current = None
                marks.append((node, line.time, "stop"))
                stopped_at = line.time
            elif line.kind is Kind.ELECTION:
                walk.switch("candidate", line.time)
            elif line.kind is Kind.LEADER:
                walk.switch("leader", line.time)
                current = Leadership(
                    node, int(line.get("term")), line, _timing_at(timings, line.time)
                )
                leaderships.append(current)
            elif line.kind is Kind.WAIT and current is not None:
                current.waited = line
            elif line.kind is Kind.HEARTBEAT and current is not None:
                current.heartbeats += 1
            elif line.kind in (Kind.LEASE_FAILED, Kind.STEP_DOWN):
                if current is not None:
                    current.end = line
                    current.end_reason = (
                        "lease renewal failed"
                        if line.kind is Kind.LEASE_FAILED
                        else f"saw term {line.get('term')}"
                    )
                    current.end_time = line.time
                    current = None
                if walk.role == "leader":
                    walk.switch("follower", line.time)
            elif line.kind in (Kind.APPEND, Kind.VOTE_GRANTED) and walk.role == "candidate":
                walk.switch("follower", line.time)
            last_time = line.time
        if stopped_at is not None:
            walk.down(stopped_at, finish, "stopped")
        else:
            walk.switch(walk.role, finish)
        if current is not None:
            current.end_time = finish
    return leaderships, spans, marks


def _nth(values: Sequence[float], n: int, *, largest: bool) -> float | None:
    """The n-th largest (or smallest) value, 1-based; None when there are fewer than n."""
    if n <= 0:
        return None
    if len(values) < n:
        return None
    ordered = sorted(values, reverse=largest)
    return ordered[n - 1]


class _HeardIndex:
    """When each node last heard from a leader (or restarted): its rule-2 old-lease base."""

    def __init__(self, collection: Collection) -> None:
        self.times: dict[int, list[float]] = {}
        self.lines: dict[int, list[Line]] = {}
        for node, files in collection.nodes.items():
            chosen = [line for line in files.lines if line.kind in (Kind.APPEND, Kind.START)]
            self.lines[node] = chosen
            self.times[node] = [line.time for line in chosen]

    def last_before(self, node: int, moment: float) -> Line | None:
        times = self.times.get(node, [])
        index = bisect.bisect_right(times, moment)
        return self.lines[node][index - 1] if index else None


def _bound_leases(
    collection: Collection, leaderships: list[Leadership], heard: _HeardIndex
) -> None:
    quorum = collection.quorum
    complete = len(collection.nodes) >= collection.cluster_size
    for leadership in leaderships:
        timing = leadership.timing
        leader = leadership.node
        start_time = leadership.start.time
        if timing is None:
            leadership.lease_note = "no start-up line: lease length unknown"
            leadership.lease_start = leadership.lease_end = start_time
            continue
        # End: the (quorum-1)-th latest answer from another node to this leader, + L/(1+rho).
        acks: list[Line] = []
        for node, files in collection.nodes.items():
            if node == leader:
                continue
            answers = [
                line
                for line in files.lines
                if line.kind is Kind.APPEND
                and int(line.get("leader")) == leader
                and start_time <= line.time <= leadership.end_time
            ]
            if answers:
                acks.append(answers[-1])
        renewal = _nth([a.time for a in acks], quorum - 1, largest=True)
        if renewal is None and quorum > 1:
            if complete:
                end = start_time  # no majority ever answered: it never held a lease
                leadership.lease_note = "no majority answered it: never held a lease"
            else:
                end = leadership.end_time
                leadership.lease_note = "dumps missing: lease end bounded by its end only"
        else:
            end = min(
                leadership.end_time, (renewal or start_time) + timing.lease / (1 + timing.drift)
            )
        evidence = sorted(acks, key=lambda line: line.time)[-(quorum - 1) :] if acks else []
        # Start: rule 3's wait, bounded below by own and voters' last contact with a leader.
        begin = start_time
        if timing.read_mode == "lease" and not timing.skip_lease_wait:
            own = heard.last_before(leader, start_time)
            bases: list[float] = []
            if own is not None:
                begin = max(begin, own.time + timing.lease)
                evidence.append(own)
            voters: list[tuple[float, Line]] = []
            for node, files in collection.nodes.items():
                if node == leader:
                    continue
                for line in files.lines:
                    if (
                        line.kind is Kind.VOTE_GRANTED
                        and int(line.get("candidate")) == leader
                        and int(line.get("term")) == leadership.term
                    ):
                        base = heard.last_before(node, line.time)
                        if base is not None:
                            bases.append(base.time + timing.lease)
                            voters.append((base.time + timing.lease, base))
            bound = _nth(bases, quorum - 1, largest=False)
            if bound is not None:
                begin = max(begin, bound)
                evidence += [line for value, line in voters if value <= bound]
        elif timing.read_mode != "lease":
            leadership.lease_note = f"read mode {timing.read_mode}: no lease reads"
            end = begin
        leadership.lease_start, leadership.lease_end = begin, end
        leadership.lease_evidence = evidence


def _check_one_leader_per_term(leaderships: list[Leadership]) -> list[Violation]:
    by_term: dict[int, list[Leadership]] = defaultdict(list)
    for leadership in leaderships:
        by_term[leadership.term].append(leadership)
    violations = []
    for term, claims in sorted(by_term.items()):
        nodes = sorted({c.node for c in claims})
        if len(nodes) > 1:
            violations.append(
                Violation(
                    "one leader per term",
                    f"term {term} has {len(nodes)} leaders: nodes {', '.join(map(str, nodes))}",
                    [c.start for c in claims],
                )
            )
    return violations


def _check_leases(leaderships: list[Leadership], uncertainty: float) -> list[Violation]:
    held = [ls for ls in leaderships if ls.lease_end > ls.lease_start]
    violations = []
    for index, first in enumerate(held):
        for second in held[index + 1 :]:
            if first.node == second.node:
                continue
            overlap = min(first.lease_end, second.lease_end) - max(
                first.lease_start, second.lease_start
            )
            if overlap > uncertainty:
                older, newer = sorted((first, second), key=lambda ls: ls.term)
                violations.append(
                    Violation(
                        "no two leases at once",
                        f"leader {older.node} (term {older.term}) may hold its lease until "
                        f"{_clock(older.lease_end)} while leader {newer.node} (term {newer.term}) "
                        f"may hold one from {_clock(newer.lease_start)}: {overlap * 1000:.0f} ms "
                        f"of overlap (> {uncertainty * 1000:.0f} ms clock uncertainty)",
                        [older.start, *older.lease_evidence, newer.start, *newer.lease_evidence],
                    )
                )
    return violations


def _clock(moment: float) -> str:
    return datetime.fromtimestamp(moment).astimezone().strftime("%H:%M:%S.%f")[:-3]


def _escape(text: str) -> str:
    return text.replace("\n", "\\n").replace("\r", "\\r")


def _commit_points(collection: Collection) -> tuple[dict[int, int], list[Violation]]:
    """How far each node has provably committed, and mismatches between dump and log."""
    points: dict[int, int] = {}
    violations: list[Violation] = []
    for node, files in sorted(collection.nodes.items()):
        last = files.log_last
        point = min(files.commit_hint or 0, last)
        position = 0  # index (1-based) of the last log entry matched to an announced commit
        trusted = bool(files.lines) and files.lines[0].kind is Kind.START
        for line in files.lines:
            if line.kind is Kind.START:
                position, trusted = 0, True
            elif line.kind in (Kind.RESTORED, Kind.SNAPSHOT):
                position = int(line.get("applied" if line.kind is Kind.RESTORED else "index"))
                # Commits announced from there on can be matched only if the log still holds
                # the entries after it (a node compacts what it committed long ago).
                trusted = position >= files.log_first - 1
            elif line.kind is Kind.COMMIT and trusted and files.log is not None:
                announced = line.get("command")
                position += 1
                if position < files.log_first:
                    # Compacted since: the snapshot holds it, the review cannot check it.
                    trusted = False
                    continue
                while position <= last and describe(_held(files, position)) == "NO-OP":
                    position += 1
                if position > last:
                    held_up_to = (
                        f"has only {last} entries"
                        if files.log_first == 1
                        else f"ends at entry {last}"
                    )
                    violations.append(
                        Violation(
                            "one committed prefix",
                            f"node {node}'s dump says it committed {announced} but its logs.txt "
                            f"{held_up_to}",
                            [line],
                        )
                    )
                    trusted = False
                    continue
                held = _escape(describe(_held(files, position)))
                if held != announced:
                    violations.append(
                        Violation(
                            "one committed prefix",
                            f"node {node}'s dump says it committed {announced} but entry "
                            f"{position} of its logs.txt is {held}",
                            [line],
                        )
                    )
                    trusted = False
                    continue
                point = max(point, position)
        points[node] = point
    return points, violations


def _held(files: NodeFiles, index: int) -> Command:
    entry = files.entry(index)
    if entry is None:  # pragma: no cover - callers stay within log_first..log_last
        raise IndexError(index)
    return entry.command


def _check_logs(collection: Collection, points: dict[int, int]) -> list[Violation]:
    """Compares the entries the nodes' logs.txt hold (entries compacted into a snapshot are
    not compared: the review reads no snapshot.txt)."""
    logs = {node: files for node, files in collection.nodes.items() if files.log is not None}
    if not logs:
        return []
    violations = []
    # Any two nodes agree on what both have committed.
    nodes = sorted(points)
    for number, first in enumerate(nodes):
        for second in nodes[number + 1 :]:
            if first not in logs or second not in logs:
                continue
            shared = min(points[first], points[second])
            start = max(logs[first].log_first, logs[second].log_first)
            for index in range(start, shared + 1):
                a, b = logs[first].entry(index), logs[second].entry(index)
                if a is not None and b is not None and a != b:
                    violations.append(
                        Violation(
                            "one committed prefix",
                            f"entry {index} is committed on nodes {first} and {second} but "
                            f"differs: {describe(a.command)} (term {a.term}) vs "
                            f"{describe(b.command)} (term {b.term})",
                        )
                    )
                    break
    # Every committed entry is on a majority (of the logs that still hold its index).
    best = max(points, key=lambda node: points[node])
    reference = logs.get(best)
    if reference is None:
        return violations
    for index in range(reference.log_first, points[best] + 1):
        entry = reference.entry(index)
        if entry is None:
            continue
        # A node that compacted the index holds it in its snapshot: it counts as holding it.
        holders = [
            n for n, files in logs.items() if files.entry(index) == entry or index < files.log_first
        ]
        if len(holders) < collection.quorum:
            violations.append(
                Violation(
                    "committed entries on a majority",
                    f"entry {index} ({describe(entry.command)}, term {entry.term}) is "
                    f"committed (node {best} shows it) but only nodes {holders} hold it; "
                    f"a majority is {collection.quorum} of {collection.cluster_size}",
                )
            )
    return violations


def _fault_spans(
    collection: Collection, finish: float
) -> tuple[list[Span], list[tuple[int | None, float, str]]]:
    spans: list[Span] = []
    marks: list[tuple[int | None, float, str]] = []
    paused: dict[int, float] = {}
    partitioned: tuple[float, str] | None = None
    for line in collection.faults:
        words = line.text.split()
        if len(words) < 2 or words[0] != "fab":
            continue
        action = words[1]
        node = int(words[2]) if len(words) > 2 and words[2].isdigit() else None
        if action == "pause-node" and node is not None:
            paused[node] = line.time
        elif action == "resume-node" and node is not None and node in paused:
            spans.append(Span(node, "paused", paused.pop(node), line.time))
        elif action == "partition":
            partitioned = (line.time, " ".join(words[2:]))
        elif action == "heal" and partitioned is not None:
            spans.append(Span(-1, "partition", partitioned[0], line.time, partitioned[1]))
            partitioned = None
        if action in ("kill-node", "stop-node", "start-node", "restart-node") and node is not None:
            marks.append((node, line.time, action))
    for node, since in paused.items():
        spans.append(Span(node, "paused", since, finish))
    if partitioned is not None:
        spans.append(Span(-1, "partition", partitioned[0], finish, partitioned[1]))
    return spans, marks


def review(collection: Collection, uncertainty: float = DEFAULT_UNCERTAINTY) -> Review:
    timeline = merge(collection)
    finish = timeline[-1].time if timeline else 0.0
    leaderships, spans, marks = _leaderships_and_spans(collection, finish)
    _bound_leases(collection, leaderships, _HeardIndex(collection))
    for leadership in leaderships:
        if leadership.lease_end > leadership.lease_start:
            spans.append(
                Span(
                    leadership.node,
                    "lease",
                    leadership.lease_start,
                    leadership.lease_end,
                    f"term {leadership.term}",
                )
            )
    fault_spans, fault_marks = _fault_spans(collection, finish)
    spans += fault_spans
    marks += fault_marks
    points, violations = _commit_points(collection)
    violations = (
        _check_one_leader_per_term(leaderships)
        + _check_leases(leaderships, uncertainty)
        + violations
        + _check_logs(collection, points)
    )
    notes = [problem for files in collection.nodes.values() for problem in files.problems]
    missing = collection.cluster_size - len(collection.nodes)
    if missing > 0:
        notes.append(
            f"{missing} of {collection.cluster_size} nodes have no files here: "
            "lease and majority checks are weaker"
        )
    return Review(
        collection, uncertainty, timeline, leaderships, spans, marks, violations, notes, points
    )


# -- report ---------------------------------------------------------------------------------

QUIET_KINDS = (Kind.HEARTBEAT, Kind.APPEND, Kind.COMMIT, Kind.OTHER)


def format_report(result: Review, *, timeline: bool = False) -> str:
    collection = result.collection
    origin = result.origin
    out: list[str] = []
    files = sum(1 for node in collection.nodes.values() if node.lines)
    out.append(
        f"Reviewed {len(result.timeline)} lines from {files} nodes' dumps in {collection.directory}"
        f" ({_clock(result.origin)} to {_clock(result.finish)}, "
        f"{result.finish - result.origin:.1f} s); cluster of {collection.cluster_size}, "
        f"majority {collection.quorum}."
    )
    if timeline:
        out.append("")
        out.append("Timeline (heartbeats, AppendEntries answers and commits left out):")
        for line in result.timeline:
            if line.kind not in QUIET_KINDS or line.node is None:
                out.append("  " + line.render(origin))
    counts: dict[Kind, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for line in result.timeline:
        if line.node is not None:
            counts[line.kind][line.node] += 1
    out.append("")
    out.append("Terms and leaders:")
    for ls in sorted(result.leaderships, key=lambda item: (item.term, item.start.time)):
        wait = " after waiting out the old lease" if ls.waited else ""
        lease = (
            f"lease {ls.lease_start - origin:.3f}-{ls.lease_end - origin:.3f}s"
            if ls.lease_end > ls.lease_start
            else (ls.lease_note or "no lease")
        )
        out.append(
            f"  term {ls.term:>3}: node {ls.node} from {ls.start.time - origin:8.3f}s{wait}, "
            f"{ls.end_time - ls.start.time:7.3f}s, {ls.heartbeats} heartbeats, {lease}; "
            f"ended: {ls.end_reason}"
        )
    out.append("")
    nodes = sorted(collection.nodes)

    def per_node(kind: Kind) -> str:
        return ", ".join(f"n{node} {counts[kind][node]}" for node in nodes)

    out.append(f"Elections started: {per_node(Kind.ELECTION)}")
    out.append(f"Elections won:     {per_node(Kind.LEADER)}")
    out.append(f"Old-lease waits:   {sum(1 for ls in result.leaderships if ls.waited)}")
    downs = [
        ls
        for ls in result.leaderships
        if ls.end is not None and ls.end.kind in (Kind.LEASE_FAILED, Kind.STEP_DOWN)
    ]
    out.append(
        f"Step-downs:        {len(downs)} ("
        f"{sum(1 for ls in downs if ls.end and ls.end.kind is Kind.LEASE_FAILED)} lease "
        "renewal failed)"
    )
    out.append(f"Starts:            {per_node(Kind.START)}")
    crashes = [mark for mark in result.marks if mark[2] == "crash"]
    out.append(
        f"Crashes (a start with no shutdown line before it): {len(crashes)}"
        + "".join(f"; n{node} after {moment - origin:.3f}s" for node, moment, _ in crashes)
    )
    out.append(
        "Committed (highest commit point shown per node): "
        + ", ".join(f"n{node} {point}" for node, point in sorted(result.commit_points.items()))
    )
    if collection.faults:
        out.append("")
        out.append("Faults injected (faults.log):")
        for line in collection.faults:
            out.append("  " + line.render(origin))
    if result.notes:
        out.append("")
        out.append("Notes:")
        out.extend(f"  {note}" for note in result.notes)
    out.append("")
    if not result.violations:
        out.append(
            "Invariants hold: one leader per term; no two leases at once (within "
            f"{result.uncertainty * 1000:.0f} ms); committed entries on a majority; "
            "one committed prefix."
        )
    else:
        out.append(f"VIOLATIONS: {len(result.violations)}")
        for violation in result.violations:
            out.append(f"- [{violation.rule}] {violation.message}")
            for line in sorted(set(violation.lines), key=lambda item: item.time):
                out.append("    " + line.render(origin))
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raftkv logs",
        description="Review the dump files of a raftkv cluster.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("review", help="merge the dumps and check the invariants")
    check.add_argument("directory", type=Path, help="collected/<timestamp>/ or a data directory")
    check.add_argument("--plot", type=Path, help="draw the timeline into this PNG (matplotlib)")
    check.add_argument("--timeline", action="store_true", help="print the merged timeline too")
    check.add_argument(
        "--clock-uncertainty",
        type=float,
        default=DEFAULT_UNCERTAINTY,
        help=f"seconds the hosts' clocks may disagree (default {DEFAULT_UNCERTAINTY})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.clock_uncertainty < 0:
            raise ReviewError("--clock-uncertainty must be ≥ 0")
        result = review(load_collection(args.directory), args.clock_uncertainty)
    except ReviewError as error:
        print(f"raftkv logs review: {error}", file=sys.stderr)
        return 2
    print(format_report(result, timeline=args.timeline))
    if args.plot is not None:
        try:
            from raftkv_tools.logreview_plot import plot
        except ImportError as error:
            print(
                f"raftkv logs review: --plot needs matplotlib ({error}); "
                "install the tools' deploy extra: pip install -e 'tools[deploy]'",
                file=sys.stderr,
            )
            return 2
        plot(result, args.plot)
        print(f"\nTimeline drawn in {args.plot}")
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
