"""How long a rolling restart leaves clients without service, node by node.

    python -m raftkv_tools.bench.rolling --nodes 3 [--rounds 3] [--order leader-last|inventory]
        [--json FILE] [--source DIR] [--transfer-first]
    make bench-rolling                          # --nodes 3 --rounds 3
    make bench-rolling BENCH_ARGS="--nodes 5"   # later options win

Starts N real nodes on loopback in a temp folder (fast profile, mutual TLS between peers with
certificates from raftkv_tools.certs), then, while one client alternates `SET rolling i` and
`GET rolling` against the leader, restarts every node once per round: SIGTERM, wait for the
process to exit, start it again on the same data, wait until it follows a serving leader and
its commit index has reached the leader's (as the leader reported it when the node was first
seen following it), pause, next node. `--order leader-last` (the default) restarts the
followers first and the node leading at that moment last; `--order inventory` goes 0..N-1.

The client is the client library (SyncClient: leader hints, `--per-try` per attempt, backoff,
`--op-timeout` per operation) with `--interval` between operations. Every success is timed.
Reported per node restarted and in total:

- stop s: SIGTERM until the process exited; rejoin s: from there until it had caught up;
  step s: both; total s: first SIGTERM to the last node caught up (pauses included);
- longest gap: the longest time between two successful operations;
- unavailable s: the sum of the gaps longer than `--gap-factor` (3) times the normal gap (the
  median gap of the warm-up before the first restart: one operation's latency plus
  `--interval`);
- terms: how much the cluster's term grew; leaders: the leaders seen (status polled every
  50 ms);
- errors: operations that failed after retrying for `--op-timeout`, and wrong reads (a GET
  that returned neither the last acknowledged SET nor one whose outcome was unknown).

A gap, an error, a leader or a term belongs to the restart in whose window it ends or is seen:
from that restart's start (its SIGTERM, or its `raftkv transfer-leader`) to the next one's.
The client stopping counts as a success, so that an outage lasting to the end is a gap too.

Handover, for the leader's restart: `transfer` when its dump says it transferred leadership
before it stopped (a node that hands over on SIGTERM), `election` when the others had to
elect a leader after it had gone. `--transfer-first` first runs `raftkv transfer-leader` (from
the nodes' source) and waits until another node leads, as the Ansible rolling restart does.

`--source DIR` runs the nodes from another checkout (DIR holds the `raftkv` package; e.g. a
`git worktree` of an older commit) while this tool runs from its own; its commit and whether
it has KeyValue.TransferLeader and `raftkv transfer-leader` are printed. Nodes always run with
PYTHONPATH=DIR and DIR as working directory (DIR defaults to the checkout this tool imports
raftkv from).

Exit status: 0 when the restart completed (failed operations are counted, not fatal), 1 when
a node did not stop, start or catch up in time, 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import grpc

import raftkv
from raftkv.client.errors import RaftKVError, UnknownOutcomeError
from raftkv.client.library import SyncClient
from raftkv.client.status import NodeStatusRow
from raftkv.cluster import PEER_PORT_OFFSET, ClusterDescription
from raftkv.core.config import PROFILES
from raftkv.server.launch import NodeLaunch
from raftkv_tools.bench.cli import positive
from raftkv_tools.certs import issue as issue_certificates
from raftkv_tools.certs import local_nodes
from raftkv_tools.launcher import spawn_node
from raftkv_tools.localcluster import StatusPoller, elected_leader, settled, tail
from raftkv_tools.ports import free_ports

ORDERS = ("leader-last", "inventory")
KEY = "rolling"
POLL_INTERVAL = 0.05
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0  # a node that transfers leadership on SIGTERM takes ≤ ~2 election timeouts
REJOIN_TIMEOUT = 30.0
TRANSFER_TIMEOUT = 10.0
TRANSFER_LINE = "transferring leadership to Node"
ERROR_SAMPLES = 20
MESSAGE_CHARS = 200


class RollingError(RuntimeError):
    """The restart could not go on; the message is for the user."""


# ---------------------------------------------------------------------------------------------
# The nodes' source


@dataclass(frozen=True)
class NodeSource:
    """The checkout the nodes import raftkv from."""

    path: Path
    commit: str | None
    # Whether its KeyValue service has TransferLeader, and its CLI `raftkv transfer-leader`.
    transfer_rpc: bool
    transfer_cli: bool

    def describe(self) -> str:
        commit = self.commit or "not a git checkout"
        has = [
            name
            for name, present in (
                ("KeyValue.TransferLeader", self.transfer_rpc),
                ("raftkv transfer-leader", self.transfer_cli),
            )
            if present
        ]
        return f"raftkv from {self.path} ({commit}; {', '.join(has) or 'no leadership transfer'})"


def inspect_source(path: Path | None) -> NodeSource:
    """`path` (default: the checkout this tool imports raftkv from), checked to hold raftkv."""
    root = (path or Path(raftkv.__file__).resolve().parents[1]).resolve()
    if not (root / "raftkv" / "server" / "main.py").is_file():
        raise RollingError(f"{root} holds no raftkv package (no raftkv/server/main.py)")
    stubs = root / "raftkv" / "rpc" / "raftkv_pb2_grpc.py"
    transfer_rpc = stubs.is_file() and "TransferLeader" in stubs.read_text()
    transfer_cli = _has_command(root, "transfer-leader")
    return NodeSource(root, _git_commit(root), transfer_rpc, transfer_cli)


def _has_command(root: Path, name: str) -> bool:
    """Whether the checkout `root` has `raftkv NAME`: its CLI lists the command. Read, not run:
    a checkout without a raftkv package of its own would run the installed one instead."""
    cli = root / "raftkv" / "client" / "cli.py"
    try:
        return f'"{name}"' in cli.read_text()
    except OSError:
        return False


def source_environment(root: Path) -> dict[str, str]:
    """This process's environment, with raftkv imported from `root`."""
    return {**os.environ, "PYTHONPATH": str(root)}


def _git_commit(root: Path) -> str | None:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    if commit is None:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "raftkv")
    return f"{commit}+changes" if dirty else commit


# ---------------------------------------------------------------------------------------------
# The cluster


class LocalNodes:
    """N nodes of one description in `root`, started and stopped one at a time."""

    def __init__(self, root: Path, size: int, profile: str, source: NodeSource) -> None:
        self.root = root
        self.source = source
        self.profile = profile
        base = free_ports(size, offsets=(0, PEER_PORT_OFFSET))[0]
        root.mkdir(parents=True, exist_ok=True)
        issue_certificates(root / "tls", local_nodes(size), cluster_name="rolling")
        self.description = replace(
            ClusterDescription.local(
                size, base_port=base, data_dir=str(root / "data"), profile=profile
            ),
            name="rolling",
            cluster_id=f"rolling-{secrets.token_hex(4)}",
            peer_certs="tls",
        )
        self.description_file = root / "cluster.json"
        self.description.save(self.description_file)
        self.ids = [node.id for node in self.description.nodes]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.poller = StatusPoller(self.description)

    def out_file(self, node_id: int) -> Path:
        return self.root / f"node-{node_id}.out"

    def dump_file(self, node_id: int) -> Path:
        return self.root / "data" / f"logs_node_{node_id}" / "dump.txt"

    def start(self, node_id: int) -> None:
        launch = NodeLaunch(
            node_id,
            cluster=self.description_file,
            data_dir=self.root / "data",
            profile=self.profile,
            quiet=True,
            env={"PYTHONPATH": str(self.source.path)},
        )
        self.processes[node_id] = spawn_node(
            launch, output=self.out_file(node_id), cwd=self.source.path, new_session=True
        )

    def poll(self) -> list[NodeStatusRow]:
        for node_id, process in self.processes.items():
            if process.poll() is not None:
                raise RollingError(
                    f"node {node_id} exited with status {process.returncode}:\n"
                    + self.logs(node_id)
                )
        return self.poller.poll()

    def stop(self, node_id: int, timeout: float, watch: Callable[[], object]) -> bool:
        """SIGTERM, then wait for the exit, calling `watch` every poll; True when it exited by
        itself, False when it had to be killed after `timeout`."""
        process = self.processes.pop(node_id)
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                return False
            watch()
            time.sleep(POLL_INTERVAL)
        return True

    def logs(self, node_id: int) -> str:
        lines = [f"  {line}" for line in tail(self.out_file(node_id))]
        lines += [f"  {line}" for line in tail(self.dump_file(node_id), 10)]
        return "\n".join(lines)

    def transferred_on_stop(self, node_id: int) -> bool:
        """Whether the node's last run wrote that it transferred leadership."""
        try:
            lines = self.dump_file(node_id).read_text(errors="replace").splitlines()
        except OSError:
            return False
        starts = [i for i, line in enumerate(lines) if f"Node {node_id} starting at" in line]
        return any(TRANSFER_LINE in line for line in lines[starts[-1] if starts else 0 :])

    def close(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        self.poller.close()


def leader_of(rows: Sequence[NodeStatusRow]) -> tuple[int, int] | None:
    """(term, node) of the reachable leader with the highest term, if any."""
    leaders = [r for r in rows if r.reachable and r.role == "leader" and r.term is not None]
    if not leaders:
        return None
    top = max(leaders, key=lambda r: r.term or 0)
    return (top.term or 0, top.node_id)


def max_term(rows: Sequence[NodeStatusRow]) -> int:
    return max((r.term or 0 for r in rows if r.reachable), default=0)


# ---------------------------------------------------------------------------------------------
# The client


@dataclass(frozen=True)
class OpError:
    at: float
    op: str
    message: str


class ClientLoop(threading.Thread):
    """SET rolling i, GET rolling, SET rolling i+1, ... until stopped; times every success."""

    def __init__(
        self,
        description: ClusterDescription,
        *,
        interval: float,
        op_timeout: float,
        per_try: float,
    ) -> None:
        super().__init__(name="rolling-client", daemon=True)
        self.description = description
        self.interval = interval
        self.op_timeout = op_timeout
        self.per_try = per_try
        self.successes: list[float] = []
        self.errors: list[OpError] = []
        self.wrong_reads: list[OpError] = []
        self.crash: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            with SyncClient(
                self.description,
                timeout=self.op_timeout,
                per_try_timeout=self.per_try,
                client_id="rolling-bench",
                first_node=0,
            ) as client:
                self._loop(client)
        except BaseException as error:  # reported by the caller
            self.crash = error

    def _loop(self, client: SyncClient) -> None:
        acknowledged: int | None = None
        unknown: set[int] = set()  # SETs since the last acknowledged one that may have applied
        for number in itertools.count(1):
            if self.halt.is_set():
                return
            try:
                client.set(KEY, str(number))
            except UnknownOutcomeError as error:
                unknown.add(number)
                self._failed("SET", error)
            except (RaftKVError, grpc.RpcError) as error:
                self._failed("SET", error)
            else:
                self.successes.append(time.monotonic())
                acknowledged, unknown = number, set()
            self.halt.wait(self.interval)
            try:
                value = client.get(KEY)
            except (RaftKVError, grpc.RpcError) as error:
                self._failed("GET", error)
            else:
                now = time.monotonic()
                self.successes.append(now)
                seen = int(value) if value is not None and value.isdecimal() else None
                if seen is not None and seen in unknown:
                    acknowledged, unknown = seen, {u for u in unknown if u > seen}
                elif seen != acknowledged:
                    expected = "nothing" if acknowledged is None else str(acknowledged)
                    self.wrong_reads.append(
                        OpError(now, "GET", f"read {value!r}, expected {expected}")
                    )
            self.halt.wait(self.interval)

    def _failed(self, op: str, error: BaseException) -> None:
        said = str(error).splitlines()[0] if str(error) else ""
        message = f"{type(error).__name__}: {said}"
        self.errors.append(OpError(time.monotonic(), op, message[:MESSAGE_CHARS]))


# ---------------------------------------------------------------------------------------------
# The restart


@dataclass
class Step:
    """One node's restart, with the times (time.monotonic()) it was measured by: it began at
    `started_at` (with `raftkv transfer-leader` under --transfer-first, else with the SIGTERM
    at `stopping_at`)."""

    round: int
    node: int
    role: str
    started_at: float
    stopping_at: float = 0.0
    exited_at: float = 0.0
    caught_up_at: float = 0.0
    handover: str = "-"
    killed: bool = False


@dataclass
class Observations:
    """What the status polls saw, each when it changed: the leader (node id) and the highest
    term any node reported."""

    leaders: list[tuple[float, int]] = field(default_factory=list)
    terms: list[tuple[float, int]] = field(default_factory=list)

    def add(self, rows: Sequence[NodeStatusRow], at: float) -> None:
        seen = leader_of(rows)
        if seen is not None and (not self.leaders or self.leaders[-1][1] != seen[1]):
            self.leaders.append((at, seen[1]))
        term = max_term(rows)
        if not self.terms or term > self.terms[-1][1]:
            self.terms.append((at, term))


def _last_before(series: Sequence[tuple[float, int]], at: float) -> int | None:
    before = [value for when, value in series if when < at]
    return before[-1] if before else None


@dataclass(frozen=True)
class Options:
    nodes: int = 3
    rounds: int = 1
    order: str = "leader-last"
    profile: str = "fast"
    source: Path | None = None
    interval: float = 0.01
    per_try: float = 0.2
    op_timeout: float = 1.0
    gap_factor: float = 3.0
    warmup: float = 2.0
    pause: float = 1.0
    transfer_first: bool = False
    workdir: Path | None = None
    keep: bool = False


class RollingRestart:
    def __init__(self, options: Options, nodes: LocalNodes, out: TextIO) -> None:
        self.options = options
        self.nodes = nodes
        self.out = out
        self.steps: list[Step] = []
        self.seen = Observations()

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _watch(self) -> list[NodeStatusRow]:
        rows = self.nodes.poll()
        self.seen.add(rows, time.monotonic())
        return rows

    def _wait(self, what: str, timeout: float, done: Callable[[list[NodeStatusRow]], bool]) -> None:
        deadline = time.monotonic() + timeout
        while True:
            rows = self._watch()
            if done(rows):
                return
            if time.monotonic() > deadline:
                table = "\n".join(
                    f"  node {r.node_id}: {r.role or r.error}, term {r.term}, leader "
                    f"{r.leader_id}, commit {r.commit_length}"
                    for r in rows
                )
                raise RollingError(f"no {what} within {timeout:.0f} s:\n{table}")
            time.sleep(POLL_INTERVAL)

    def watch_for(self, seconds: float) -> None:
        """Keep polling (leader changes are seen) for `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._watch()
            time.sleep(POLL_INTERVAL)

    def start_cluster(self) -> None:
        for node_id in self.nodes.ids:
            self.nodes.start(node_id)
        self._wait("leader that every node follows", START_TIMEOUT, settled)

    def next_node(self, done: set[int]) -> int:
        """The next node of this round to restart."""
        remaining = [n for n in self.nodes.ids if n not in done]
        if self.options.order == "inventory":
            return remaining[0]
        seen = leader_of(self._watch())
        followers = [n for n in remaining if seen is None or n != seen[1]]
        return followers[0] if followers else remaining[0]

    def restart(self, round_number: int, node_id: int) -> Step:
        seen = leader_of(self._watch())
        is_leader = seen is not None and seen[1] == node_id
        role = "leader" if is_leader else "follower"
        step = Step(round_number, node_id, role, time.monotonic())
        self.say(f"round {round_number}: restarting node {node_id} ({role})")
        if is_leader and self.options.transfer_first:
            self._transfer_away(node_id)
        step.stopping_at = time.monotonic()
        step.killed = not self.nodes.stop(node_id, STOP_TIMEOUT, self._watch)
        step.exited_at = time.monotonic()
        if is_leader and self.options.transfer_first:
            step.handover = "transfer-leader"
        elif is_leader:
            transferred = self.nodes.transferred_on_stop(node_id)
            step.handover = "transfer" if transferred else "election"
        self.nodes.start(node_id)
        target: list[int] = []

        def caught_up(rows: list[NodeStatusRow]) -> bool:
            leader = elected_leader(rows)
            if leader is None:
                return False
            by_id = {r.node_id: r for r in rows}
            if not target:
                target.append(by_id[leader].commit_length or 0)
            return (by_id[node_id].commit_length or 0) >= target[0]

        self._wait(f"serving leader that node {node_id} follows", REJOIN_TIMEOUT, caught_up)
        step.caught_up_at = time.monotonic()
        return step

    def _transfer_away(self, node_id: int) -> None:
        """`raftkv transfer-leader` from the nodes' source, then wait for another leader."""
        source = self.nodes.source
        command = [
            sys.executable, "-m", "raftkv",
            "--cluster", str(self.nodes.description_file),
            "transfer-leader",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=TRANSFER_TIMEOUT,
                check=False,
                cwd=source.path,
                env=source_environment(source.path),
            )
        except subprocess.TimeoutExpired:
            raise RollingError(
                f"`raftkv transfer-leader` did not finish within {TRANSFER_TIMEOUT:.0f} s"
            ) from None
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise RollingError(
                f"`raftkv transfer-leader` exited {done.returncode}: {said[0]} "
                f"({source.describe()})"
            )

        def moved(rows: list[NodeStatusRow]) -> bool:
            leader = elected_leader(rows)
            return leader is not None and leader != node_id

        self._wait(f"leader other than node {node_id}", TRANSFER_TIMEOUT, moved)

    def run(self) -> None:
        for round_number in range(1, self.options.rounds + 1):
            done: set[int] = set()
            while len(done) < len(self.nodes.ids):
                node_id = self.next_node(done)
                self.steps.append(self.restart(round_number, node_id))
                done.add(node_id)
                self.watch_for(self.options.pause)


# ---------------------------------------------------------------------------------------------
# The numbers


def gaps_ending_in(times: Sequence[float], start: float, end: float) -> list[float]:
    """The gaps between consecutive `times` (sorted) whose later time lies in [start, end)."""
    return [b - a for a, b in itertools.pairwise(times) if start <= b < end]


def summarise(
    successes: Sequence[float],
    errors: Sequence[OpError],
    steps: Sequence[Step],
    seen: Observations,
    *,
    warmup_start: float,
    end: float,
    gap_factor: float,
) -> dict[str, Any]:
    """The report's numbers (JSON-ready): the warm-up's normal gap, one row per step, the total.

    `successes` are the times of successful operations, `end` the moment the client stopped
    (counted as one more success, so that an outage lasting to the end is a gap too). Step i's
    window runs from its start to step i+1's (the last one's to `end`); a gap, an error, a
    leader or a term belongs to the window in which it ends (is seen)."""
    times = sorted(successes)
    first = steps[0].started_at if steps else end
    normal = statistics.median(gaps_ending_in(times, warmup_start, first) or [0.0])
    threshold = gap_factor * normal
    before = [t for t in times if t < first]
    measured = [*before[-1:], *(t for t in times if t >= first), end]
    bounds = [s.started_at for s in steps] + [math.nextafter(end, math.inf)]
    rows = []
    for index, step in enumerate(steps):
        start, stop = bounds[index], bounds[index + 1]
        gaps = gaps_ending_in(measured, start, stop)
        leaders = [node for when, node in seen.leaders if start <= when < stop]
        leader_at_start = _last_before(seen.leaders, start)
        if leader_at_start is not None:
            leaders.insert(0, leader_at_start)
        terms = [term for when, term in seen.terms if when < stop]
        rows.append(
            {
                "round": step.round,
                "node": step.node,
                "role": step.role,
                "handover": step.handover,
                "killed": step.killed,
                "stop_s": round(step.exited_at - step.stopping_at, 3),
                "rejoin_s": round(step.caught_up_at - step.exited_at, 3),
                "step_s": round(step.caught_up_at - step.started_at, 3),
                "ops": sum(1 for t in times if start <= t < stop),
                "longest_gap_s": round(max(gaps, default=0.0), 3),
                "unavailable_s": round(sum((g for g in gaps if g > threshold), 0.0), 3),
                "terms": (terms[-1] if terms else 0) - (_last_before(seen.terms, start) or 0),
                "leaders": leaders,
                "leader_changes": max(len(leaders) - 1, 0),
                "errors": sum(1 for e in errors if start <= e.at < stop),
            }
        )
    gaps = gaps_ending_in(measured, first, bounds[-1])
    return {
        "warmup": {
            "ops": sum(1 for t in times if warmup_start <= t < first),
            "normal_gap_ms": round(normal * 1000, 2),
            "threshold_ms": round(threshold * 1000, 2),
        },
        "steps": rows,
        "total": {
            "total_s": round(steps[-1].caught_up_at - first, 3) if steps else 0.0,
            "ops": sum(1 for t in times if t >= first),
            "longest_gap_s": round(max(gaps, default=0.0), 3),
            "unavailable_s": round(sum((g for g in gaps if g > threshold), 0.0), 3),
            "terms": sum(row["terms"] for row in rows),
            "leader_changes": sum(row["leader_changes"] for row in rows),
            "errors": sum(1 for e in errors if e.at >= first),
        },
    }


COLUMNS = (
    ("round", "ROUND"),
    ("node", "NODE"),
    ("role", "ROLE"),
    ("handover", "HANDOVER"),
    ("stop_s", "STOP s"),
    ("rejoin_s", "REJOIN s"),
    ("step_s", "STEP s"),
    ("ops", "OPS"),
    ("longest_gap_s", "LONGEST GAP s"),
    ("unavailable_s", "UNAVAILABLE s"),
    ("terms", "TERMS"),
    ("leaders", "LEADERS"),
    ("errors", "ERRORS"),
)


def _cell(key: str, value: Any) -> str:
    if key == "leaders":
        return "→".join(str(n) for n in value) or "-"
    if isinstance(value, float):
        return f"{value:.3f}" if key in ("longest_gap_s", "unavailable_s") else f"{value:.2f}"
    return str(value)


def render(report: dict[str, Any]) -> str:
    """The plain-text table of a report made by `main`."""
    options, warmup, total = report["options"], report["warmup"], report["total"]
    order = "leader last" if options["order"] == "leader-last" else "inventory order"
    lines = [
        f"Rolling restart of {options['nodes']} nodes, {options['rounds']} round"
        f"{'s' if options['rounds'] != 1 else ''}, {order}, profile {options['profile']}",
        f"nodes: {report['source']['describe']}",
        f"client: SET/GET with {options['interval'] * 1000:.0f} ms between operations, "
        f"{options['per_try']} s per try, {options['op_timeout']} s per operation; normal gap "
        f"{warmup['normal_gap_ms']:.1f} ms (warm-up median, {warmup['ops']} ops), unavailable "
        f"when a gap exceeds {warmup['threshold_ms']:.1f} ms",
        "",
    ]
    table = [[title for _, title in COLUMNS]]
    table += [[_cell(key, row[key]) for key, _ in COLUMNS] for row in report["steps"]]
    total_row = {
        **{key: "" for key, _ in COLUMNS},
        "round": "total",
        "step_s": total["total_s"],
        "ops": total["ops"],
        "longest_gap_s": total["longest_gap_s"],
        "unavailable_s": total["unavailable_s"],
        "terms": total["terms"],
        "leaders": f"{total['leader_changes']} change{'' if total['leader_changes'] == 1 else 's'}",
        "errors": total["errors"],
    }
    table.append([v if isinstance(v, str) else _cell(k, v) for k, v in total_row.items()])
    right = {i for i, (key, _) in enumerate(COLUMNS) if key not in ("role", "handover", "leaders")}
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    for line in table:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    lines.append(
        f"total s: first SIGTERM to the last node caught up ({options['pause']} s pause after "
        "each); errors: operations failed after retrying; "
        f"wrong reads: {report['wrong_reads']}"
    )
    if any(row["killed"] for row in report["steps"]):
        killed = [str(row["node"]) for row in report["steps"] if row["killed"]]
        lines.append(
            f"killed after {STOP_TIMEOUT:.0f} s without exiting: nodes {', '.join(killed)}"
        )
    for sample in report["error_samples"][:5]:
        lines.append(f"  {sample['at_s']:8.3f}s {sample['op']}: {sample['message']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line


def _not_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raftkv_tools.bench.rolling",
        description="Measure the unavailability of a rolling restart of a local cluster.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = Options()
    parser.add_argument("--nodes", type=int, choices=[3, 5], default=defaults.nodes)
    parser.add_argument(
        "--rounds", type=positive(int), default=defaults.rounds, help="restarts of every node"
    )
    parser.add_argument("--order", choices=ORDERS, default=defaults.order)
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report here")
    parser.add_argument(
        "--source",
        type=Path,
        metavar="DIR",
        help="run the nodes from this checkout (default: the one this tool imports)",
    )
    parser.add_argument(
        "--transfer-first",
        action="store_true",
        help="run `raftkv transfer-leader` before stopping the leader",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default=defaults.profile)
    parser.add_argument(
        "--interval", type=_not_negative, default=defaults.interval, help="s between operations"
    )
    parser.add_argument(
        "--per-try", type=positive(float), default=defaults.per_try, help="s per attempt"
    )
    parser.add_argument(
        "--op-timeout", type=positive(float), default=defaults.op_timeout, help="s per operation"
    )
    parser.add_argument(
        "--gap-factor", type=positive(float), default=defaults.gap_factor, help="× normal gap"
    )
    parser.add_argument(
        "--warmup", type=positive(float), default=defaults.warmup, help="s before the first stop"
    )
    parser.add_argument(
        "--pause", type=_not_negative, default=defaults.pause, help="s after each node caught up"
    )
    parser.add_argument("--workdir", type=Path, help="folder for the cluster (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the folder afterwards")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def run(options: Options, source: NodeSource, progress: TextIO) -> dict[str, Any]:
    """Start the cluster, measure, stop it; the report (see `summarise`)."""
    made = options.workdir is None
    root = (
        Path(tempfile.mkdtemp(prefix="raftkv-rolling-"))
        if options.workdir is None
        else (options.workdir)
    )
    nodes = LocalNodes(root / "cluster", options.nodes, options.profile, source)
    restart = RollingRestart(options, nodes, progress)
    client = ClientLoop(
        nodes.description,
        interval=options.interval,
        op_timeout=options.op_timeout,
        per_try=options.per_try,
    )
    failed = True
    try:
        restart.say(f"starting {options.nodes} nodes in {root}: {source.describe()}")
        restart.start_cluster()
        client.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not client.successes and client.is_alive() and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
        if not client.successes:
            raise RollingError(f"the client had no success within {START_TIMEOUT:.0f} s")
        warmup_start = time.monotonic()
        restart.watch_for(options.warmup)
        restart.run()
        client.halt.set()
        client.join(timeout=options.op_timeout * 2 + 5)
        end = time.monotonic()
        if client.crash is not None or client.is_alive():
            raise RollingError(f"the client loop failed: {client.crash!r}")
        failed = False
    finally:
        client.halt.set()
        nodes.close()
        if failed:
            restart.say(f"node files kept in {root}")
        elif made and not options.keep:
            shutil.rmtree(root, ignore_errors=True)
    report = summarise(
        client.successes,
        [*client.errors, *client.wrong_reads],
        restart.steps,
        restart.seen,
        warmup_start=warmup_start,
        end=end,
        gap_factor=options.gap_factor,
    )
    origin = restart.steps[0].started_at if restart.steps else warmup_start
    samples = sorted([*client.errors, *client.wrong_reads], key=lambda e: e.at)
    return {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "source": {
            "path": str(source.path),
            "commit": source.commit,
            "transfer_rpc": source.transfer_rpc,
            "transfer_cli": source.transfer_cli,
            "describe": source.describe(),
        },
        **report,
        "wrong_reads": len(client.wrong_reads),
        "error_samples": [
            {"at_s": round(e.at - origin, 3), "op": e.op, "message": e.message}
            for e in samples[:ERROR_SAMPLES]
        ],
    }


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = Options(
        nodes=args.nodes,
        rounds=args.rounds,
        order=args.order,
        profile=args.profile,
        source=args.source,
        interval=args.interval,
        per_try=args.per_try,
        op_timeout=args.op_timeout,
        gap_factor=args.gap_factor,
        warmup=args.warmup,
        pause=args.pause,
        transfer_first=args.transfer_first,
        workdir=args.workdir,
        keep=args.keep,
    )
    try:
        source = inspect_source(args.source)
        if args.transfer_first and not source.transfer_cli:
            raise RollingError(
                f"--transfer-first needs `raftkv transfer-leader`: {source.describe()}"
            )
    except RollingError as error:
        print(f"rolling: {error}", file=sys.stderr)
        return 2
    try:
        report = run(options, source, io.StringIO() if args.quiet else sys.stderr)
    except RollingError as error:
        print(f"rolling: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(render(report), file=out or sys.stdout)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
