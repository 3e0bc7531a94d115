"""One seeded simulated cluster: nodes, network, clients and a nemesis, judged at the end."""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum

from raftkv.core.config import FAST_PROFILE, SEED_PROFILE, ReadMode, SnapshotPolicy, TimingConfig
from raftkv.core.membership import (
    AddLearner,
    MembershipChange,
    Promote,
    Remove,
)
from raftkv.core.membership import describe_change as describe_membership_change
from raftkv.core.messages import (
    NO_OP,
    Accepted,
    AppendEntries,
    AppendEntriesReply,
    ClientReply,
    DeleteCommand,
    Envelope,
    InstallSnapshot,
    InstallSnapshotReply,
    LogEntry,
    Member,
    Membership,
    Message,
    ReadPending,
    ReadValue,
    Refusal,
    Refused,
    RequestVote,
    SetCommand,
    WriteDone,
)
from raftkv.core.node import SAFE, HardState, RaftNode, Ready, Role, UnsafeSwitches
from raftkv.core.state_machine import SessionRules, SnapshotImage
from raftkv.core.validation import MAX_INDEX, MAX_TERM
from tests.support.linearizability import Operation, Outcome, check_history

from .invariants import SafetyChecker
from .liveness import ServingMeter
from .rollout import describe_change, draw_change
from .world import (
    ClientRequest,
    ClientResponse,
    DriftingClock,
    Durable,
    InvariantViolationError,
    NetworkProfile,
    SimNode,
    World,
)


@dataclass(frozen=True)
class SnapshotChunk:
    """Chunk `number` of `total` of a snapshot on the wire (the shell's InstallSnapshotArgs):
    the receiving shell hands the core `message`, with the image once every chunk arrived in
    order (snapshot_transfer.py's receiver)."""

    message: InstallSnapshot
    number: int
    total: int
    image: SnapshotImage


@dataclass(frozen=True)
class ForgedConflict:
    """An AppendEntries to be rewritten when the receiver steps it, so that its one entry
    conflicts with the receiver's last committed entry (which its commit index proves): the
    receiver must refuse it and change nothing (RaftNode._append_problem). Built on arrival,
    not when sent, because the receiver's commit index is only known then."""

    base: AppendEntries

    def against(self, core: RaftNode) -> AppendEntries:
        commit = core.commit_index
        if commit == 0:
            return replace(self.base, term=MAX_TERM + 1)  # nothing committed to conflict with
        prev = commit - 1
        if prev < core.log.offset:
            # The committed entry is compacted: the receiver skips what its snapshot covers,
            # so forge a malformed message instead (refused all the same).
            return replace(self.base, term=MAX_TERM + 1)
        prev_term = core.log.term(prev) or 0
        # A term above the receiver's, so no earlier check answers for it, and above the term
        # of its committed entry, so the entry conflicts with it.
        term = core.term + 1
        return replace(
            self.base,
            term=term,
            prev_log_index=prev,
            prev_log_term=prev_term,
            entries=(LogEntry(term, NO_OP),),
            lease_duration=core.config.lease_duration,
        )


# Every scenario snapshots and compacts often (Scenario.snapshots); "snapshot" adds a
# follower cut off long enough to need an InstallSnapshot, and snapshot writes that fail.
ALL_FAULTS = frozenset(
    {"loss", "delay", "duplicate", "partition", "crash", "pause", "drift", "snapshot"}
)
# Faults run only when asked for (so that the default seeds stay what they were):
# "corrupt" turns some peer messages malformed or impossible in flight, as a buggy or hostile
# peer would send them; the core must refuse each one (raftkv/core/validation.py, and RaftNode's
# stateful checks: a conflict with a committed entry, another lease, impossible replies).
# The operational ("day-2") world of issue 14:
# "wipe" replaces a node's disk by an empty one (a VM recreated by Terraform) and, a while
#   later, restores it from a peer's files; at most a minority is wiped at a time.
# "oneway" cuts one node's links in one direction for tens of election timeouts: it can send
#   to its peers but hear none of them, or the reverse. The heal cycle leaves it alone.
# "lease_change" rolls a timing change out node by node (crash, restart with the new
#   configuration): another lease duration, drift bound or read mode.
# "clockstop" suspends a node's machine: nothing runs, and its monotonic clock stops too,
#   unless the scenario's clock keeps counting across suspend (SuspendClock.BOOTTIME).
# "transfer" asks the leader to hand leadership over, when the core can
#   (RaftNode.transfer_leadership).
DAY2_FAULTS = frozenset({"wipe", "oneway", "lease_change", "clockstop", "transfer"})
# "membership" (issue 16) changes the configuration while everything else goes on: adds a
#   learner (a new node started empty with the configuration that names it, as `raftkv-node
#   --join` is), promotes a learner, removes a member (the leader too); a removed node is
#   retired once its removal is committed, and its id may come back later as a new learner with
#   an empty disk (a replaced node).
# "client_pause": clients that go quiet for longer than a session lives (their sessions
# expire), and clients suspended between two tries of a write for as long, which then retry
# it (docs/design.md §11: the retry is refused, never applied twice).
EXTRA_FAULTS = frozenset({"corrupt", "client_pause", "membership"}) | DAY2_FAULTS
KNOWN_FAULTS = ALL_FAULTS | EXTRA_FAULTS
# A timer that fires this close to its deadline (seconds) counts as due: a local deadline
# converted to real time and back can land a few ulps short of itself.
TIMER_RESOLUTION = 1e-9
# A node id that is no member of any simulated cluster.
STRANGER = 99

# Timings the simulator draws from. Ratios matter, not absolute values: the long-lease profile
# makes leases outlive election timeouts, so that every failover has to wait one out.
SIM_PROFILES: dict[str, TimingConfig] = {
    "fast": FAST_PROFILE,
    "seed": SEED_PROFILE,
    "long-lease": TimingConfig(
        election_timeout_min=0.15,
        election_timeout_max=0.3,
        heartbeat_interval=0.03,
        lease_duration=0.6,
        max_clock_drift=0.05,
    ),
    "high-drift": TimingConfig(
        election_timeout_min=0.3,
        election_timeout_max=0.6,
        heartbeat_interval=0.04,
        lease_duration=0.5,
        max_clock_drift=0.2,
    ),
}


class SuspendClock(Enum):
    """What a node's monotonic clock does while its machine is suspended ("clockstop")."""

    # Stops, as CLOCK_MONOTONIC (Python's time.monotonic) does on Linux: on resume the node's
    # clock is short of the suspended time, and a lease it held looks as if it still ran.
    MONOTONIC = "monotonic"
    # Keeps counting, as CLOCK_BOOTTIME does: a suspend is an ordinary pause.
    BOOTTIME = "boottime"


@dataclass(frozen=True)
class Scenario:
    """Everything a seed decides up front (the rest is drawn while it runs)."""

    seed: int
    nodes: int
    profile: str
    timing: TimingConfig
    faults: frozenset[str]
    clients: int
    keys: int
    duration: float
    unsafe: UnsafeSwitches = SAFE
    suspend_clock: SuspendClock = SuspendClock.MONOTONIC
    # The liveness scenario of issue 14: a single send-only cut of a follower, from the first
    # nemesis step that finds a leader to the end of the faults (see one_way_cut_scenario).
    lone_one_way_cut: bool = False
    # Small thresholds, so that every run snapshots, compacts and installs many times.
    snapshots: SnapshotPolicy = field(default_factory=lambda: SnapshotPolicy(20, 1 << 20, 5))
    # Sessions that expire within a run, yet live far longer than a client retries one write.
    sessions: SessionRules = field(default_factory=SessionRules)

    def describe(self) -> str:
        unsafe = ",".join(self.unsafe.enabled()) or "none"
        text = (
            f"seed={self.seed} nodes={self.nodes} profile={self.profile} "
            f"read_mode={self.timing.read_mode.value} faults={','.join(sorted(self.faults))} "
            f"unsafe={unsafe}"
        )
        if "clockstop" in self.faults:
            text += f" suspend_clock={self.suspend_clock.value}"
        if self.lone_one_way_cut:
            text += " scenario=one-way-cut"
        policy = self.snapshots
        text += f" snapshot={policy.entries}/{policy.bytes}/{policy.trailing_entries}"
        return text


def make_scenario(
    seed: int,
    *,
    nodes: int | None = None,
    profile: str | None = None,
    faults: frozenset[str] = ALL_FAULTS,
    read_mode: ReadMode | None = None,
    unsafe: UnsafeSwitches = SAFE,
    suspend_clock: SuspendClock = SuspendClock.MONOTONIC,
) -> Scenario:
    rng = random.Random(f"scenario-{seed}")
    chosen_nodes = nodes or rng.choice([3, 3, 5, 5, 7])
    chosen_profile = profile or rng.choice(["fast", "fast", "long-lease", "high-drift", "seed"])
    timing = SIM_PROFILES[chosen_profile]
    mode = read_mode or (ReadMode.READ_INDEX if rng.random() < 0.15 else ReadMode.LEASE)
    timing = replace(timing, read_mode=mode, max_entries_per_message=rng.choice([2, 16, 512]))
    snapshots = SnapshotPolicy(
        entries=rng.choice([8, 20, 60]),
        bytes=rng.choice([200, 1 << 20]),
        trailing_entries=rng.choice([0, 3, 10]),
    )
    return Scenario(
        seed=seed,
        nodes=chosen_nodes,
        profile=chosen_profile,
        timing=timing,
        faults=faults,
        clients=rng.randint(2, 5),
        keys=rng.randint(1, 4),
        duration=timing.election_timeout_max * 40,
        unsafe=unsafe,
        suspend_clock=suspend_clock,
        snapshots=snapshots,
        sessions=session_rules(timing),
    )


def session_rules(timing: TimingConfig) -> SessionRules:
    """2.5 times the longest a simulated client retries one operation (its op timeout): as
    the product's 15 minutes are to its clients' 2-minute retry cap, a retry never outlives the
    session it resumes."""
    lifetime = 2.5 * op_timeout(timing)
    # Evicted over the cap once idle as long as a session lives: a client's normal retries
    # (one op timeout) stay below resume_after_ms, only a suspended one crosses it.
    return SessionRules(
        lifetime_ms=int(lifetime * 1000), max_sessions=4, evict_idle_ms=int(lifetime * 1000)
    )


def op_timeout(timing: TimingConfig) -> float:
    """How long a simulated client retries one operation before it gives up (unknown)."""
    return 6 * timing.election_timeout_max + 3 * timing.lease_duration


ONE_WAY_CUT = "one-way-cut"
SCENARIOS = (ONE_WAY_CUT,)


def one_way_cut_scenario(
    seed: int, *, read_mode: ReadMode | None = None, unsafe: UnsafeSwitches = SAFE
) -> Scenario:
    """Three nodes, fast timings, and one fault only: a follower that can send to its peers
    but hears none of them, for most of the run. The other two are a connected majority all
    along, so a cluster with PreVote and CheckQuorum serves nearly all the time; without
    PreVote the cut node's elections keep deposing their leader (issue 14)."""
    scenario = make_scenario(
        seed,
        nodes=3,
        profile="fast",
        faults=frozenset({"oneway"}),
        read_mode=read_mode,
        unsafe=unsafe,
    )
    return replace(scenario, lone_one_way_cut=True)


@dataclass
class _ClientOp:
    op_id: int
    kind: str
    key: str
    value: str
    seq: int
    invoke: float
    deadline: float
    attempt: int = 0
    suspended: bool = False
    # A retry is scheduled: further refusals (duplicates, answers to earlier tries) schedule no
    # other, as a client with one request outstanding would not (else duplicated requests and
    # answers multiply the retries without bound).
    retry_scheduled: bool = False


@dataclass
class _Client:
    client_id: int
    target: int
    next_seq: int = 1
    current: _ClientOp | None = None
    done: bool = False
    # Sessions (docs/design.md §11): the current one, and whether a write of it was
    # acknowledged (then its writes say `resume`).
    session: int = 0
    acknowledged: bool = False


@dataclass
class RunResult:
    scenario: Scenario
    ok: bool
    failure: str = ""
    operations: int = 0
    history: list[Operation] = field(default_factory=list)
    trace: list[str] | None = None
    # Share of the fault phase during which some node could serve, counted only while a
    # majority was running and connected (liveness.ServingMeter); None if that never held.
    serving_fraction: float | None = None


class Simulation:
    def __init__(self, scenario: Scenario, *, trace: bool = False) -> None:
        self.scenario = scenario
        self.config = scenario.timing
        self.rng = random.Random(scenario.seed)
        self.world = World(scenario.seed, self.rng)
        if trace:
            self.world.trace = []
        # The nodes that run or may be restarted: the first configuration's, plus those that
        # joined, minus those retired after their removal ("membership").
        self.ids = list(range(1, scenario.nodes + 1))
        self.initial_ids = tuple(self.ids)
        self.quorum = scenario.nodes // 2 + 1
        # "membership": ids that may join (started empty, as learners), and the configuration
        # each joined node was started with (what its core starts from after any restart).
        self.spare_ids: list[int] = []
        if "membership" in scenario.faults:
            self.spare_ids = [scenario.nodes + 1, scenario.nodes + 2]
        self.joined_with: dict[int, Membership] = {}
        # Nodes whose removal a leader accepted: retired once a committed configuration lacks
        # them (an add that was lost leaves its node running, a member of nothing).
        self.removal_asked: set[int] = set()
        # The checker replays what the nodes apply (a negative control's rules included), so
        # that what the control breaks shows where it matters: in what clients see.
        self.checker = SafetyChecker(
            Membership.of_voters(self.initial_ids),
            scenario.sessions,
            honour_resume=not scenario.unsafe.ignore_resume,
        )
        self.blocked: set[tuple[int, int]] = set()
        # Extra one-way delay per link (congestion, a slow route): (from, to) -> seconds.
        self.slow_links: dict[tuple[int, int], float] = {}
        self.network = self._draw_network()
        self.nodes = {
            i: SimNode(i, self._draw_clock(), self.config) for i in [*self.ids, *self.spare_ids]
        }
        self.clients = [_Client(c, self.rng.choice(self.ids)) for c in range(scenario.clients)]
        self.history: list[Operation] = []
        self._op_ids = iter(range(1, 10**9))
        self._tokens = iter(range(1, 10**9))
        self._values = iter(range(1, 10**9))
        self.faults_active = True
        self.settling = False
        # Day-2 faults (DAY2_FAULTS).
        # Nodes whose disk was wiped and that are not yet restored from a peer's files.
        self.wiped: set[int] = set()
        self.max_wiped = (scenario.nodes - 1) // 2
        # Links of the one persistent one-way cut, apart from `blocked` so that partitions and
        # heals leave them alone.
        self.one_way_cut: frozenset[tuple[int, int]] = frozenset()
        self._one_way_cuts_made = 0
        # The configuration a rolling change is moving every node to ("lease_change").
        self.rollout_target: TimingConfig | None = None
        self.serving = ServingMeter(self.quorum)
        # Snapshot transfers under way, (leader, follower) -> transfer id (one at a time).
        self.transfers: dict[tuple[int, int], int] = {}
        self._transfer_ids = iter(range(1, 10**9))

    # ------------------------------------------------------------------------------------------
    # Set-up draws

    def _draw_network(self) -> NetworkProfile:
        f = self.scenario.faults
        rng = self.rng
        base = self.config.heartbeat_interval
        return NetworkProfile(
            loss=rng.choice([0.0, 0.01, 0.05]) if "loss" in f else 0.0,
            duplicate=rng.choice([0.0, 0.01, 0.03]) if "duplicate" in f else 0.0,
            min_delay=base * 0.01,
            max_delay=base * rng.choice([0.1, 0.5, 1.0]) if "delay" in f else base * 0.02,
            spike_probability=rng.choice([0.0, 0.01, 0.03]) if "delay" in f else 0.0,
            spike_max=self.config.lease_duration * 0.6,
            corrupt=rng.choice([0.01, 0.05]) if "corrupt" in f else 0.0,
        )

    def _draw_rate(self) -> float:
        if "drift" not in self.scenario.faults:
            return 1.0
        rho = self.config.max_clock_drift
        return self.rng.choice([1 - rho, 1 + rho, self.rng.uniform(1 - rho, 1 + rho)])

    def _draw_clock(self) -> DriftingClock:
        return DriftingClock(offset=self.rng.uniform(0, 1000), rate=self._draw_rate())

    # ------------------------------------------------------------------------------------------
    # Running

    def run(self) -> RunResult:
        try:
            self._run()
            self._check_linearizable()
        except InvariantViolationError as failure:
            return self._result(False, f"t={self.world.now:.4f}: {failure}")
        except Exception as error:  # a core (or the simulator) raised: report it as the seed's
            where = traceback.extract_tb(error.__traceback__)[-1]
            return self._result(
                False,
                f"t={self.world.now:.4f}: crash: {type(error).__name__}: {error} "
                f"({where.filename}:{where.lineno})",
            )
        return self._result(True)

    def _result(self, ok: bool, failure: str = "") -> RunResult:
        return RunResult(
            self.scenario,
            ok,
            failure,
            len(self.history),
            self.history,
            self.world.trace,
            self.serving.fraction,
        )

    def _run(self) -> None:
        for node in self.nodes.values():
            self._start_node(node)
        for client in self.clients:
            self.world.after(
                self.rng.uniform(0, self.config.election_timeout_max), self._next_op_for(client)
            )
        self._schedule_nemesis()
        if "membership" in self.scenario.faults:
            self.world.after(self.config.election_timeout_max, self._schedule_membership_changes)
        # Leadership changes at heartbeat granularity at best: half a heartbeat resolves it.
        self.world.sample_every(self.config.heartbeat_interval / 2, self._sample_serving)
        self.world.run_until(self.scenario.duration)
        self.world.stop_sampling()

        # Heal everything and demand that the cluster recovers and converges.
        self.faults_active = False
        self.settling = True
        self.blocked.clear()
        self.slow_links.clear()
        self._end_day2_faults()
        for node in self.nodes.values():
            if node.paused:
                self._resume(node)
            if not node.up:
                self._start_node(node)
            else:
                self._process(node)
        settle = 30 * self.config.election_timeout_max + 10 * self.config.lease_duration
        for client in self.clients:
            client.done = True  # finish the current operation, start no new one
        converged = self.world.run_until(self.world.now + settle, self._converged)
        if not converged:
            raise InvariantViolationError(self._no_progress_report())
        self._check_durability()

    def _converged(self) -> bool:
        if any(c.current is not None for c in self.clients):
            return False
        leaders = [
            n.core for n in self.nodes.values() if n.core is not None and n.core.role is Role.LEADER
        ]
        if len(leaders) != 1:
            return False
        leader = leaders[0]
        noop_committed = leader.log.term(leader.commit_index) == leader.term
        members = leader.membership.ids
        return noop_committed and all(
            n.core is not None and n.core.commit_index == leader.commit_index
            for n in self.nodes.values()
            if n.node_id in members
        )

    def _no_progress_report(self) -> str:
        states = ", ".join(
            f"{n.node_id}:{n.core.role.value}/t{n.core.term}/c{n.core.commit_index}"
            if n.core
            else f"{n.node_id}:down"
            for n in self.nodes.values()
        )
        return f"liveness: no converged leader after healing all faults ({states})"

    # ------------------------------------------------------------------------------------------
    # Node lifecycle (the simulator plays the shell)

    def _local(self, node: SimNode) -> float:
        return node.clock.local(self.world.now)

    def _start_node(self, node: SimNode) -> None:
        if node.node_id not in self.ids:
            return  # a spare that has not joined, or a node retired after its removal
        if not node.admitted:
            self.world.log(f"node {node.node_id} starts wiped (admitted=False)")
        durable = node.durable
        covered = durable.snapshot.index if durable.snapshot is not None else 0
        if durable.offset > covered:
            # What the real storage refuses to start from (StorageDataLostError).
            raise InvariantViolationError(
                f"durability: node {node.node_id}'s log starts after index {durable.offset} "
                f"but its snapshot covers only {covered}: entries {covered + 1}.."
                f"{durable.offset} are lost"
            )
        node.core = RaftNode(
            node.node_id,
            [i for i in self.initial_ids if i != node.node_id],
            node.config,
            random.Random(self.rng.random()),
            self._local(node),
            persisted=durable.persisted(),
            unsafe=self.scenario.unsafe,
            admitted=node.admitted,
            snapshots=self.scenario.snapshots,
            sessions=self.scenario.sessions,
            membership=self.joined_with.get(node.node_id),
        )
        node.pending_ready = None
        node.inbox.clear()
        node.waiting.clear()
        node.receiving.clear()
        snapshot = f", snapshot {covered}" if covered else ""
        self.world.log(
            f"node {node.node_id} started (log {durable.offset + 1}..{durable.last_index}"
            f"{snapshot})"
        )
        self._process(node)

    def _crash(self, node: SimNode) -> None:
        if not node.up:
            return
        ready = node.pending_ready
        if ready is not None and ready.installed is not None and self.rng.random() < 0.5:
            # Crash between an install's rename of snapshot.txt and its log reset: the core
            # finds a log that does not reach the snapshot and drops it at start-up.
            node.durable.snapshot = ready.installed
        elif ready is not None and ready.log_changed and self.rng.random() < 0.5:
            # Torn persist: part of the log write reached the disk, the metadata did not.
            node.durable.write_log(ready, keep=self.rng.randint(0, len(ready.entries)))
        node.core = None
        node.pending_ready = None
        node.inbox.clear()
        node.waiting.clear()
        node.paused = False
        node.receiving.clear()
        # Its snapshot senders die with the process.
        self.transfers = {k: t for k, t in self.transfers.items() if k[0] != node.node_id}
        node.suspensions += 1
        if node.clock.stopped:
            node.clock.start(self.world.now)  # a machine that is restarted runs again
        node.resume_action = None
        node.timer_generation += 1
        self.world.log(f"node {node.node_id} crashed")
        self._check_durability()

    def _check_durability(self) -> None:
        self.checker.check_durability({i: n.durable for i, n in self.nodes.items()}, self.wiped)

    def _process(self, node: SimNode) -> None:
        """Feed queued inputs and timers, then start persisting the next Ready."""
        core = node.core
        if core is None or node.paused or node.pending_ready is not None:
            return
        now = self._local(node)
        while node.inbox:
            kind, payload = node.inbox.popleft()
            if kind == "message":
                if isinstance(payload, ForgedConflict):
                    payload = payload.against(core)
                    self.world.log(f"nemesis forged for {node.node_id}: {payload}")
                core.step(payload, now)
            elif kind == "get":
                self._serve_read(node, core, payload, now)
            elif kind == "transfer":
                self._transfer_leadership(node, core, payload, now)
            elif kind == "snapshot_saved":
                core.snapshot_saved(payload, now)
            elif kind == "snapshot_failed":
                core.snapshot_failed(payload, now, "simulated disk error")
            elif kind == "snapshot_send_failed":
                core.snapshot_send_failed(payload, now)
            elif kind == "membership":
                self._change_membership_at(node, core, payload, now)
            else:
                self._propose(node, core, payload, now)
        deadline = core.next_deadline()
        if now >= deadline - TIMER_RESOLUTION:
            # A deadline a few ulps ahead of the clock: the timer, armed in real time, fired at
            # the same real instant (the conversion rounds), and would again, for ever.
            core.tick(max(now, deadline))
        self.checker.on_step(node.node_id, core)
        self._check_leases()
        if core.has_ready():
            ready = core.take_ready()
            for event in ready.events:
                self.world.log(f"[{node.node_id}] {event}")
            self.checker.on_ready(node.node_id, core, ready, now)
            # Before the disk, as the shell does: a crash during this persist must not take
            # back what the replies said.
            for reply in ready.replies:
                self._answer_later(node, reply)
            for envelope in ready.send_now:
                self._send_to_node(node.node_id, envelope)
            if ready.snapshot is not None:
                self._write_snapshot(node, core, ready.snapshot)
            if ready.needs_persist:
                node.pending_ready = ready
                disk = self.rng.choice([0.0, 0.0001, 0.001, self.config.heartbeat_interval * 0.2])
                self.world.after(disk, lambda: self._persisted(node, core, ready))
                return
            node.durable.compact(ready.compact_to)
            self._deliver(node, ready)
            core.advance(ready)
            self._process(node)
            return
        self._arm_timer(node, core)

    def _persisted(self, node: SimNode, core: RaftNode, ready: Ready) -> None:
        if node.core is not core or node.pending_ready is not ready:
            return  # crashed meanwhile
        if node.paused:
            # A stopped process sends nothing; finish this persist when it resumes.
            node.resume_action = lambda: self._persisted(node, core, ready)
            return
        if ready.installed is not None:
            node.durable.snapshot = ready.installed
        node.durable.write_log(ready)
        if ready.hard_state is not None:
            node.durable.hard_state = ready.hard_state
        node.durable.commit_hint = ready.commit_index
        node.durable.compact(ready.compact_to)
        node.pending_ready = None
        self._deliver(node, ready)
        core.advance(ready)
        self._process(node)

    def _write_snapshot(self, node: SimNode, core: RaftNode, image: SnapshotImage) -> None:
        """The shell's background snapshot write: slow (serialising and fsyncing a whole
        state), lost if the node crashes first, sometimes failing; when it ends the core is
        told, as an input. storage.save_snapshot keeps a newer snapshot (an install) that
        landed meanwhile."""
        beat = self.config.heartbeat_interval
        delay = self.rng.choice([0.0005, beat * 0.5, beat * 2, self.config.election_timeout_max])
        fails = "snapshot" in self.scenario.faults and self.rng.random() < 0.1

        def written() -> None:
            if node.core is not core:
                return  # crashed while writing: the old snapshot.txt is still there
            if node.paused:
                self.world.after(beat, written)  # a stopped process finishes nothing
                return
            if fails:
                node.inbox.append(("snapshot_failed", image.index))
            else:
                durable = node.durable
                if durable.snapshot is None or durable.snapshot.index < image.index:
                    durable.snapshot = image
                node.inbox.append(("snapshot_saved", image.index))
            self._process(node)

        self.world.after(delay, written)

    def _start_snapshot_transfer(self, leader: SimNode, to: int, intent: InstallSnapshot) -> None:
        """The leader's shell streams its durable snapshot (the file, not the intent, says
        which) in chunks through the faulty network, one after another; a transfer not done
        by its deadline is reported failed to the core, which starts another once the
        follower answers again."""
        key = (leader.node_id, to)
        image = leader.durable.snapshot
        if key in self.transfers or image is None:
            return
        transfer = next(self._transfer_ids)
        self.transfers[key] = transfer
        core = leader.core
        total = 1 + len(image.data) // 2
        spacing = self.network.min_delay
        chunk = replace(intent, last_index=image.index, last_term=image.term)
        self.world.log(
            f"[{leader.node_id}] streams snapshot {image.index} to {to} ({total} chunks)"
        )

        def send(number: int) -> None:
            if leader.core is not core or core is None or core.term != intent.term:
                return  # the sender died with its process or its leadership
            payload = SnapshotChunk(chunk, number, total, image)
            self._transmit(leader.node_id, to, payload)
            if number + 1 < total:
                self.world.after(spacing, lambda: send(number + 1))

        def deadline() -> None:
            if self.transfers.get(key) != transfer:
                return
            if leader.paused:
                # A stopped process reports nothing until it runs again.
                self.world.after(self.config.heartbeat_interval, deadline)
                return
            del self.transfers[key]
            self.world.log(f"[{leader.node_id}] snapshot transfer to {to} ended by its deadline")
            if leader.core is core:
                leader.inbox.append(("snapshot_send_failed", to))
                self._process(leader)

        send(0)
        limit = max(self.config.election_timeout_max, total * self.config.election_timeout_min)
        self.world.after(limit, deadline)

    def _receive_chunk(self, node: SimNode, chunk: SnapshotChunk) -> InstallSnapshot:
        """The follower's shell: bytes are kept only in order (a first chunk starts over);
        the core sees every chunk, with the image once the last one completes the file."""
        message = chunk.message
        key = (message.leader_id, message.last_index, message.last_term)
        received = node.receiving.get(key, 0)
        if chunk.number == 0:
            node.receiving = {key: 1}
        elif chunk.number == received:
            node.receiving[key] = received + 1
        if node.receiving.get(key) == chunk.total and chunk.number == chunk.total - 1:
            del node.receiving[key]
            return replace(message, done=True, image=chunk.image)
        return message

    def _deliver(self, node: SimNode, ready: Ready) -> None:
        for envelope in ready.send_after_persist:
            self._send_to_node(node.node_id, envelope)

    def _arm_timer(self, node: SimNode, core: RaftNode) -> None:
        node.timer_generation += 1
        generation = node.timer_generation
        deadline = core.next_deadline()
        if deadline == float("inf"):
            return
        when = node.clock.real_for(deadline, self.world.now)

        def fire() -> None:
            if node.timer_generation == generation and node.core is core:
                self._process(node)

        self.world.at(when, fire)

    def _check_leases(self) -> None:
        # Each node by its own read mode: a rolling change ("lease_change") mixes them.
        holders = [
            n
            for n in self.nodes.values()
            if n.core is not None
            and n.core.config.read_mode is ReadMode.LEASE
            and n.core.serves_lease_reads(self._local(n))
        ]
        self.checker.check_leases([n.node_id for n in holders], self.world.now)
        if holders and self.rollout_target is not None:
            committing = [
                (n.node_id, n.core.term)
                for n in self.nodes.values()
                if n.core is not None
                and n.core.config.read_mode is ReadMode.READ_INDEX
                and _committed_in_own_term(n.core)
            ]
            self.checker.check_lease_against_read_index(
                [(n.node_id, n.core.term) for n in holders if n.core is not None],
                committing,
                self.world.now,
            )

    def _can_serve(self, node: SimNode) -> bool:
        """Whether this node, running, could answer a GET now: from its lease, or in
        read_index mode as a leader whose NO-OP has committed (the read then needs only one
        more round)."""
        core = node.core
        if core is None or node.paused or core.role is not Role.LEADER:
            return False  # the common case, decided without reading the node's clock
        if core.config.read_mode is ReadMode.LEASE:
            return core.serves_lease_reads(self._local(node))
        return _committed_in_own_term(core)

    def _sample_serving(self) -> None:
        running = frozenset(
            i for i, n in self.nodes.items() if n.up and not n.paused and i not in self.wiped
        )
        serving = any(self._can_serve(n) for n in self.nodes.values())
        cut = frozenset(self.blocked | self.one_way_cut)
        self.serving.sample(running, cut, serving)

    # ------------------------------------------------------------------------------------------
    # Network

    def _send_to_node(self, source: int, envelope: Envelope) -> None:
        if isinstance(envelope.message, InstallSnapshot):
            # From a core, an InstallSnapshot is the intent to stream a snapshot.
            self._start_snapshot_transfer(self.nodes[source], envelope.to, envelope.message)
            return
        message: Message | ForgedConflict = envelope.message
        if self.faults_active and self.network.corrupt and self.rng.random() < self.network.corrupt:
            message = self._corrupt(envelope.message)
            self.world.log(f"nemesis corrupt {source}->{envelope.to} {message}")
        self._transmit(source, envelope.to, message)

    def _transmit(
        self, source: int, to: int, payload: Message | ForgedConflict | SnapshotChunk
    ) -> None:
        link = (source, to)
        if link in self.blocked or link in self.one_way_cut:
            return
        extra = self.slow_links.get(link, 0.0)
        target = self.nodes.get(to)
        if target is None:
            return  # an answer to a stranger (only a core that accepts malformed input sends one)
        for delay in self._delivery_delays(extra):
            self.world.after(delay, lambda: self._arrive(target, payload))

    def _corrupt(self, message: Message) -> Message | ForgedConflict:
        """`message` turned into one a correct core refuses: malformed (validation.py), or
        well-formed but impossible given the receiver's state (RaftNode's stateful checks)."""
        if self.rng.random() < 0.15:
            return replace(message, term=self.rng.choice([MAX_TERM + 1, 2**64 - 1]))
        choice = self.rng.randrange(6)
        if isinstance(message, AppendEntries):
            if choice == 0:
                lease = self.rng.choice([float("inf"), float("nan"), 0.0, -1.0])
                return replace(message, lease_duration=lease)
            if choice == 1 and message.entries:
                first = message.entries[0]
                future = LogEntry(message.term + 1, first.command)
                return replace(message, entries=(future, *message.entries[1:]))
            if choice == 1:
                return replace(message, prev_log_term=message.term + 1)
            if choice == 2:
                # Terms going backwards within the message (or to 0, refused too).
                command = message.entries[0].command if message.entries else NO_OP
                backwards = (LogEntry(message.term, command), LogEntry(message.term - 1, command))
                return replace(message, entries=backwards)
            if choice == 3:
                # Beyond MAX_LEASE_DURATION (a follower would wait that long for it), or a
                # drift bound outside [0, 0.5): malformed.
                if self.rng.random() < 0.5:
                    return replace(message, lease_duration=1e300)
                return replace(message, max_clock_drift=self.rng.choice([0.7, float("nan")]))
            if choice == 4:
                return ForgedConflict(message)
            return replace(message, leader_id=STRANGER)
        if isinstance(message, AppendEntriesReply):
            if choice < 2:
                # A follower claiming to lack entries the leader may have committed: legal (a
                # follower may lose its disk), handled by Progress without moving the commit.
                return replace(message, success=False, match_index=0, conflict_index=1)
            if choice < 4:
                return replace(message, success=True, match_index=MAX_INDEX)
            return replace(message, follower_id=STRANGER)
        if isinstance(message, RequestVote):
            return replace(message, candidate_id=STRANGER)
        if isinstance(message, InstallSnapshot):
            if choice < 2:
                return replace(message, lease_duration=1e300)
            if choice < 4 and message.image is not None:
                # Names another snapshot than the one received: refused.
                return replace(message, last_index=message.last_index + 1)
            return replace(message, leader_id=STRANGER)
        if isinstance(message, InstallSnapshotReply):
            if choice < 3:
                return replace(message, done=True, match_index=MAX_INDEX)
            return replace(message, follower_id=STRANGER)
        if choice < 2:
            return replace(message, voter_id=STRANGER)
        if choice < 4:
            # More than any voter can owe (MAX_LEASE_DURATION): malformed.
            return replace(message, old_lease_remaining=1e300)
        remaining = self.rng.choice([float("inf"), float("nan"), -1.0])
        return replace(message, old_lease_remaining=remaining)

    def _delivery_delays(self, extra: float = 0.0) -> list[float]:
        net = self.network
        if not self.faults_active:
            return [self.rng.uniform(net.min_delay, net.min_delay * 3)]
        if self.rng.random() < net.loss:
            return []
        copies = 2 if self.rng.random() < net.duplicate else 1
        delays = []
        for _ in range(copies):
            delay = extra + self.rng.uniform(net.min_delay, net.max_delay)
            if self.rng.random() < net.spike_probability:
                delay += self.rng.uniform(0, net.spike_max)
            delays.append(delay)
        return delays

    def _arrive(self, node: SimNode, message: object) -> None:
        if not node.up:
            return
        if isinstance(message, SnapshotChunk):
            message = self._receive_chunk(node, message)
        node.inbox.append(("message", message))
        self._process(node)

    # ------------------------------------------------------------------------------------------
    # Clients

    def _next_op_for(self, client: _Client) -> Callable[[], None]:
        def start() -> None:
            if client.done:
                return
            # One draw for the kind, as before DELETE existed, so that every seed's random
            # stream (and the seed budgets of the negative controls) stays what it was.
            roll = self.rng.random()
            kind = "get" if roll < 0.5 else "set" if roll < 0.9 else "delete"
            key = f"k{self.rng.randrange(self.scenario.keys)}"
            value = f"v{next(self._values)}" if kind == "set" else ""
            seq = 0
            if kind != "get":
                # A client's SETs and DELETEs share one sequence, as in the client library.
                seq = client.next_seq
                client.next_seq += 1
            client.current = _ClientOp(
                next(self._op_ids),
                kind,
                key,
                value,
                seq,
                self.world.now,
                self.world.now + op_timeout(self.config),
            )
            self._attempt(client)

        return start

    def _attempt(self, client: _Client) -> None:
        op = client.current
        assert op is not None
        op.attempt += 1
        # `resume` as the client library sets it (docs/design.md §11): a write of this session
        # was acknowledged, or this one has been retried past resume_after_ms.
        retried_for = self.world.now - op.invoke
        resume = client.acknowledged or (
            retried_for * 1000 >= self.scenario.sessions.resume_after_ms
        )
        request = ClientRequest(
            client.client_id,
            op.op_id,
            op.kind,
            op.key,
            op.value,
            op.seq,
            client.session,
            resume,
        )
        target = self.nodes[client.target]
        for delay in self._delivery_delays():
            self.world.after(delay, lambda: self._client_request_arrives(target, request))
        attempt = op.attempt
        per_try = max(4 * self.config.heartbeat_interval, self.config.election_timeout_max)
        self.world.after(per_try, lambda: self._attempt_timed_out(client, op, attempt))

    def _attempt_timed_out(self, client: _Client, op: _ClientOp, attempt: int) -> None:
        if client.current is not op or op.attempt != attempt:
            return
        client.target = self.rng.choice(self.ids)
        self._retry_or_give_up(client, op)

    def _retry_or_give_up(self, client: _Client, op: _ClientOp) -> None:
        if self.world.now >= op.deadline:
            self._finish(client, op, Outcome.INFO, None)
        elif (
            op.kind != "get"
            and "client_pause" in self.scenario.faults
            and self.faults_active
            and not op.suspended
            and self.rng.random() < 0.2
        ):
            # The client's process is suspended between two tries of a write for longer than a
            # session lives, then retries it: what `resume` is for. Had an earlier try applied,
            # a new session would apply it again.
            op.suspended = True
            # At most 1.3 lifetimes (3.25 op timeouts): over well within the final settling.
            pause = self.rng.uniform(1.05, 1.3) * self.scenario.sessions.lifetime_ms / 1000
            op.deadline += pause
            self.world.log(f"client {client.client_id} suspended mid-write for {pause:.4f}s")
            self.world.after(pause, lambda: self._retry_if_current(client, op))
        else:
            self._attempt(client)

    def _client_response(self, client: _Client, response: ClientResponse) -> None:
        op = client.current
        if op is None or op.op_id != response.op_id:
            return
        if response.ok:
            if op.kind != "get":
                client.acknowledged = True
            self._finish(client, op, Outcome.OK, response.value)
            return
        if response.definite_failure:
            # A stale seq, or a session that expired: committed but skipped by every replica,
            # so it never took effect.
            if response.session_expired:
                client.session += 1
                client.acknowledged = False
                self.world.log(f"client {client.client_id} starts session {client.session}")
                if op.attempt > 1:
                    # This try was refused, but an earlier one may have applied (its answer
                    # lost): the outcome is unknown, as the client library reports it.
                    self._finish(client, op, Outcome.INFO, None)
                    return
            self._finish(client, op, Outcome.FAIL, None)
            return
        hint = response.leader_hint
        client.target = (
            hint
            # A hint may name a node the client cannot reach: one that left, or a stranger a
            # forged message made a node follow ("corrupt").
            if hint is not None and hint != client.target and hint in self.ids
            else self.rng.choice(self.ids)
        )
        if op.retry_scheduled:
            return
        op.attempt += 1  # the pending per-try timer is now stale
        op.retry_scheduled = True
        backoff = self.rng.uniform(0.5, 1.5) * self.config.heartbeat_interval
        self.world.after(backoff, lambda: self._retry_if_current(client, op))

    def _retry_if_current(self, client: _Client, op: _ClientOp) -> None:
        op.retry_scheduled = False
        if client.current is op:
            self._retry_or_give_up(client, op)

    def _finish(self, client: _Client, op: _ClientOp, outcome: Outcome, value: str | None) -> None:
        client.current = None
        completed = self.world.now if outcome is not Outcome.INFO else None
        # A delete writes "absent" (None), which is how the checker models it.
        recorded_value = op.value if op.kind == "set" else None if op.kind == "delete" else value
        self.history.append(
            Operation(
                f"c{client.client_id}",
                op.kind,
                op.key,
                recorded_value,
                op.invoke,
                completed,
                outcome,
            )
        )
        self.world.log(
            f"client {client.client_id} {op.kind} {op.key} -> {outcome.value} {recorded_value}"
        )
        if not client.done:
            think = self.rng.uniform(0, self.config.heartbeat_interval * 2)
            if "client_pause" in self.scenario.faults and self.rng.random() < 0.05:
                # A client that goes quiet for longer than a session lives.
                think = self.rng.uniform(1.2, 2) * self.scenario.sessions.lifetime_ms / 1000
                self.world.log(f"client {client.client_id} goes quiet for {think:.4f}s")
            self.world.after(think, self._next_op_for(client))

    def _respond(self, node: SimNode, request: ClientRequest, response: ClientResponse) -> None:
        client = self.clients[request.client]
        for delay in self._delivery_delays():
            self.world.after(delay, lambda: self._client_response(client, response))

    def _client_request_arrives(self, node: SimNode, request: ClientRequest) -> None:
        core = node.core
        if core is None:
            return
        if request.kind == "get" and not node.paused:
            # Reads bypass the input queue, as in the shell: answered at the moment they arrive.
            self._serve_read(node, core, request, self._local(node))
            if core.has_ready():
                self._process(node)
            return
        # A paused process leaves requests in its socket buffer until it resumes.
        node.inbox.append((request.kind, request))
        self._process(node)

    def _serve_read(
        self, node: SimNode, core: RaftNode, request: ClientRequest, now: float
    ) -> None:
        token = next(self._tokens)
        result = core.read(request.key, now, token)
        if isinstance(result, ReadPending):
            node.waiting[token] = (request.client, request.op_id)
        else:
            self._respond(node, request, self._to_response(request.op_id, result))

    def _propose(self, node: SimNode, core: RaftNode, request: ClientRequest, now: float) -> None:
        token = next(self._tokens)
        client_id = f"c{request.client}.{request.session}"
        command: SetCommand | DeleteCommand = (
            DeleteCommand(request.key, client_id, request.seq, request.resume)
            if request.kind == "delete"
            else SetCommand(request.key, request.value, client_id, request.seq, request.resume)
        )
        result = core.propose(command, now, token)
        if isinstance(result, Accepted):
            node.waiting[token] = (request.client, request.op_id)
        else:
            self._respond(node, request, self._to_response(request.op_id, result))

    def _answer_later(self, node: SimNode, reply: ClientReply) -> None:
        waiter = node.waiting.pop(reply.token, None)
        if waiter is None:
            return
        client_id, op_id = waiter
        client = self.clients[client_id]
        response = self._to_response(op_id, reply.result)
        for delay in self._delivery_delays():
            self.world.after(delay, lambda: self._client_response(client, response))

    @staticmethod
    def _to_response(op_id: int, result: object) -> ClientResponse:
        if isinstance(result, ReadValue):
            return ClientResponse(op_id, True, result.value, None, False)
        if isinstance(result, WriteDone):
            return ClientResponse(op_id, True, None, None, False)
        assert isinstance(result, Refused)
        expired = result.reason is Refusal.SESSION_EXPIRED
        definite = expired or result.reason is Refusal.STALE_SEQUENCE
        return ClientResponse(op_id, False, None, result.leader_hint, definite, expired)

    # ------------------------------------------------------------------------------------------
    # Nemesis

    def _schedule_membership_changes(self) -> None:
        """A stream of changes of its own, faster than the nemesis, so that changes race each
        other (two in a row, the second often refused), elections and the other faults."""
        if not self.faults_active:
            return
        self._ask_membership_change()
        if self.rng.random() < 0.3:
            # Two in a row: the second comes before the first can commit (refused, unless a
            # negative control lets a leader take two changes at once).
            self._ask_membership_change()
        interval = self.rng.uniform(0.2, 1.5) * self.config.election_timeout_max
        self.world.after(interval, self._schedule_membership_changes)

    def _schedule_nemesis(self) -> None:
        interval = self.config.election_timeout_max
        self.world.after(self.rng.uniform(1, 3) * interval, self._nemesis_step)

    def _nemesis_step(self) -> None:
        if not self.faults_active:
            return
        actions = []
        f = self.scenario.faults
        if "partition" in f:
            actions += [self._partition, self._partition, self._heal]
        if "delay" in f:
            actions += [self._slow_links_into_leader]
        if "partition" in f and "crash" in f:
            actions += [self._restart_all_but_isolated_leader]
        if "crash" in f:
            actions += [self._crash_random, self._crash_leader]
        if "pause" in f:
            actions += [self._pause_random]
        if "drift" in f:
            actions += [self._change_rate]
        if "wipe" in f:
            actions += [self._wipe_random]
        if "oneway" in f:
            actions += [self._cut_one_way]
        if "lease_change" in f:
            actions += [self._roll_config_change]
        if "clockstop" in f:
            actions += [self._suspend_random]
        if "transfer" in f:
            actions += [self._ask_leader_to_transfer]
        if "snapshot" in f:
            actions += [self._lag_follower]

        if actions:
            self.rng.choice(actions)()
        self._schedule_nemesis()

    # ------------------------------------------------------------------------------------------
    # Membership ("membership")

    def _ask_membership_change(self) -> None:
        """Retire what a committed removal took out, then ask the leader for one change: add a
        spare as a learner, promote a learner, or remove a member (the leader too)."""
        leader_id = self._leader_id()
        if leader_id is None:
            return
        core = self.nodes[leader_id].core
        if core is None:
            return
        self._retire_removed(core)
        membership = core.membership
        options: list[MembershipChange] = []
        for spare in self.spare_ids:
            if spare not in membership.ids and spare not in self.ids:
                options.append(AddLearner(Member(spare)))
        # A node whose add was lost (it runs, a member of nothing) may be added again.
        options += [
            AddLearner(Member(i))
            for i in self.ids
            if i not in membership.ids and i not in self.removal_asked
        ]
        options += [Promote(i) for i in sorted(membership.learners)] * 2
        voters = sorted(membership.voters)
        if len(voters) > 2:
            options += [Remove(i) for i in voters]
        options += [Remove(i) for i in sorted(membership.learners)]
        if not options:
            return
        change = self.rng.choice(options)
        self.world.log(f"nemesis asks leader {leader_id} to {describe_membership_change(change)}")
        self.nodes[leader_id].inbox.append(("membership", change))
        self._process(self.nodes[leader_id])

    def _change_membership_at(
        self, node: SimNode, core: RaftNode, change: MembershipChange, now: float
    ) -> None:
        result = core.change_membership(change, now, next(self._tokens))
        self.world.log(f"node {node.node_id}: {describe_membership_change(change)} -> {result}")
        if isinstance(result, Accepted) and isinstance(change, Remove):
            self.removal_asked.add(change.node_id)
        if isinstance(result, Accepted) and isinstance(change, AddLearner):
            joiner = self.nodes[change.member.node_id]
            if joiner.node_id in self.ids:
                return  # still running (an earlier add of it was lost): it keeps its disk
            # `raftkv-node --join`: an empty directory and the configuration that names it, in
            # the term of the leader that added it with that term's vote spent (its id may be a
            # removed member's, whose old disk voted in that term or before: docs/design.md §13).
            self.joined_with[joiner.node_id] = core.membership
            joiner.durable = Durable()
            joiner.durable.hard_state = HardState(core.term, joiner.node_id)
            joiner.admitted = True
            self.ids.append(joiner.node_id)
            incarnation = joiner.suspensions

            def start() -> None:
                # Not if it was retired (and maybe added again) meanwhile.
                if not joiner.up and joiner.suspensions == incarnation:
                    self._start_node(joiner)

            self.world.after(self.rng.uniform(0, 2) * self.config.election_timeout_min, start)

    def _retire_removed(self, leader: RaftNode) -> None:
        """Stop, for good, the nodes that a committed configuration no longer names (and the
        leader's latest neither): their id becomes a spare, joinable again with an empty disk
        (a replaced node)."""
        keep = leader.committed_membership.ids | leader.membership.ids
        for node_id in [i for i in self.ids if i not in keep and i in self.removal_asked]:
            self.removal_asked.discard(node_id)
            node = self.nodes[node_id]
            self._crash(node)
            node.durable = Durable()
            self.ids.remove(node_id)
            self.wiped.discard(node_id)
            if node_id not in self.spare_ids:
                self.spare_ids.append(node_id)
            self.world.log(f"nemesis retires node {node_id} (removed, committed)")

    def _leader_id(self) -> int | None:
        leaders = [
            n for n in self.nodes.values() if n.core is not None and n.core.role is Role.LEADER
        ]
        if not leaders:
            return None
        return max(leaders, key=lambda n: n.core.term if n.core else 0).node_id

    def _partition(self) -> None:
        ids = list(self.ids)
        self.rng.shuffle(ids)
        shape = self.rng.choice(["isolate", "isolate-leader", "split", "one-way", "ring"])
        self.blocked.clear()
        if shape == "isolate-leader" and self._leader_id() is not None:
            leader = self._leader_id()
            assert leader is not None
            groups = [[leader], [i for i in self.ids if i != leader]]
        elif shape in ("isolate", "isolate-leader"):
            groups = [ids[:1], ids[1:]]
        elif shape == "split":
            cut = self.rng.randint(1, len(ids) // 2)
            groups = [ids[:cut], ids[cut:]]
        elif shape == "one-way":
            for _ in range(self.rng.randint(1, len(ids))):
                a, b = self.rng.sample(self.ids, 2)
                self.blocked.add((a, b))
            self.world.log(f"nemesis one-way {sorted(self.blocked)}")
            return
        else:
            # Each node reaches only its ring neighbours: overlapping majorities (for n ≥ 5 no
            # two nodes see the same majority), the classic Jepsen "majorities ring".
            reach = len(ids) // 2
            position = {node: p for p, node in enumerate(ids)}
            for a in ids:
                for b in ids:
                    distance = abs(position[a] - position[b])
                    if a != b and min(distance, len(ids) - distance) > reach // 2 + (reach % 2):
                        self.blocked.add((a, b))
            self.world.log(f"nemesis ring {ids}")
            return
        for group in groups:
            for other in groups:
                if other is not group:
                    self.blocked.update((a, b) for a in group for b in other)
        self.world.log(f"nemesis partition {groups}")

    def _heal(self) -> None:
        self.blocked.clear()
        self.slow_links.clear()
        self.world.log("nemesis heal")

    def _slow_links_into_leader(self) -> None:
        """Acknowledgements crawl back to the leader: what a lease must be measured against."""
        leader = self._leader_id()
        if leader is None:
            return
        extra = self.rng.uniform(0.1, 0.5) * self.config.lease_duration
        for other in self.ids:
            if other != leader:
                self.slow_links[(other, leader)] = extra
        self.world.log(f"nemesis slow links into {leader} (+{extra:.4f}s)")
        if self.rng.random() < 0.5:
            # Congestion often precedes a partition: cut the leader off while acks are late.
            self.world.after(
                extra + self.rng.uniform(1, 3) * self.config.heartbeat_interval,
                lambda: self._isolate(leader),
            )

    def _isolate(self, node_id: int) -> None:
        if not self.faults_active:
            return
        self.blocked = {(a, b) for a in self.ids for b in self.ids if node_id in (a, b) and a != b}
        self.world.log(f"nemesis isolate {node_id}")

    def _lag_follower(self) -> None:
        """A follower cut off while the others go on writing, for long enough that the
        leader compacts what it lacks: it comes back to an InstallSnapshot, which may race
        with the partitions, crashes and AppendEntries that follow."""
        leader = self._leader_id()
        followers = [i for i in self.ids if i != leader]
        if leader is None or not followers:
            return
        lagging = self.rng.choice(followers)
        self._isolate(lagging)
        self.world.log(f"nemesis lag {lagging}: cut off while the others write")
        duration = self.rng.uniform(2, 6) * self.config.election_timeout_max
        self.world.after(duration, self._heal)

    def _restart_all_but_isolated_leader(self) -> None:
        """The leader is cut off while every other node restarts, forgetting what it saw."""
        leader = self._leader_id()
        if leader is None:
            return
        self._isolate(leader)
        for node_id in self.ids:
            if node_id != leader:
                self._crash_and_restart(
                    node_id, self.rng.uniform(0, 0.5) * self.config.lease_duration
                )

    def _crash_random(self) -> None:
        self._crash_and_restart(self.rng.choice(self.ids))

    def _crash_leader(self) -> None:
        leader = self._leader_id()
        self._crash_and_restart(leader if leader is not None else self.rng.choice(self.ids))

    def _crash_and_restart(self, node_id: int, downtime: float | None = None) -> None:
        node = self.nodes[node_id]
        if not node.up:
            return
        self._crash(node)
        if downtime is None:
            downtime = self.rng.uniform(0, 3) * self.config.election_timeout_max

        def restart() -> None:
            if not node.up and self.faults_active:
                self._start_node(node)

        self.world.after(downtime, restart)

    def _pause_random(self) -> None:
        candidates = [n for n in self.nodes.values() if n.up and not n.paused]
        if not candidates:
            return
        leader = self._leader_id()
        node = (
            self.nodes[leader]
            if leader is not None and self.rng.random() < 0.5
            else self.rng.choice(candidates)
        )
        if not node.up or node.paused:
            return
        node.paused = True
        self.world.log(f"nemesis pause {node.node_id}")
        duration = self.rng.uniform(0.5, 3) * self.config.lease_duration

        def resume() -> None:
            if node.paused:
                self._resume(node)

        self.world.after(duration, resume)

    def _resume(self, node: SimNode) -> None:
        node.paused = False
        self.world.log(f"nemesis resume {node.node_id}")
        if node.clock.stopped:
            node.clock.start(self.world.now)
            self.world.log(f"node {node.node_id}'s clock goes on from where it stopped")
        action, node.resume_action = node.resume_action, None
        if action is not None:
            action()
        else:
            self._process(node)

    def _change_rate(self) -> None:
        node = self.nodes[self.rng.choice(self.ids)]
        node.clock.set_rate(self._draw_rate(), self.world.now)
        if node.core is not None:
            self._arm_timer(node, node.core)

    # ------------------------------------------------------------------------------------------
    # Nemesis: the day-2 faults (DAY2_FAULTS)

    def _wipe_random(self) -> None:
        """A node's machine is replaced with an empty disk under the same id (a VM recreated
        by Terraform). The deployment knows the cluster exists, so it starts the node as not
        admitted; a while later the operator restores it from a peer's files."""
        if len(self.wiped) >= self._wipe_budget():
            return  # the cluster survives only a minority of lost disks at a time
        candidates = [self.nodes[i] for i in self.ids if i not in self.wiped]
        leader = self._leader_id()
        followers = [n for n in candidates if n.node_id != leader]
        if followers and self.rng.random() < 0.5:
            # The follower with the longest log: the copy that committed entries are most
            # likely to need while other followers lag.
            node = max(followers, key=lambda n: n.durable.last_index)
        else:
            node = self.rng.choice(candidates)
        self._crash(node)
        node.durable = Durable()
        node.admitted = False
        self.wiped.add(node.node_id)
        self.world.log(f"nemesis wipe {node.node_id}: empty disk (no log, term 0, no vote)")
        self._check_durability()
        downtime = self.rng.uniform(0, 3) * self.config.election_timeout_max
        restore_after = downtime + self.rng.uniform(2, 10) * self.config.election_timeout_max

        def restart() -> None:
            if not node.up and self.faults_active:
                self._start_node(node)

        def restore() -> None:
            if self.faults_active:
                self._restore(node)

        self.world.after(downtime, restart)
        self.world.after(restore_after, restore)

    def _wipe_budget(self) -> int:
        """How many disks may be lost at once: a minority of the voters (of the configuration
        the leader uses, and of the committed one, whichever is smaller)."""
        if "membership" not in self.scenario.faults:
            return self.max_wiped
        # The smallest voter set any running node uses or has committed: with no leader to ask,
        # a cluster shrunk to two voters must not lose both disks (seed 200853 did: two wiped
        # voters of {2, 3} forgot their votes of term 2, and term 2 had two leaders).
        sizes = [
            len(voters)
            for node in self.nodes.values()
            if node.core is not None
            for voters in (node.core.membership.voters, node.core.committed_membership.voters)
        ]
        return min(self.max_wiped, (min(sizes, default=1) - 1) // 2)

    def _restore(self, node: SimNode) -> None:
        """The documented recovery of a wiped node: stop it, copy a healthy peer's log and
        term (not its vote: this node cast none in that term that it remembers), start it as
        admitted."""
        if node.node_id not in self.wiped:
            return
        source = self._restore_source()
        self._crash(node)
        files = source.durable
        hard_state = replace(files.hard_state, voted_for=None)
        node.durable = files.copy()
        node.durable.hard_state = hard_state
        node.admitted = True
        self.wiped.discard(node.node_id)
        self.world.log(
            f"nemesis restore {node.node_id} from node {source.node_id}'s files "
            f"(log {files.offset + 1}..{files.last_index}, term {hard_state.term})"
        )
        self._check_durability()
        if self.faults_active:
            self._start_node(node)

    def _restore_source(self) -> SimNode:
        """The leader that is serving, as an operator would pick it (a deposed leader that has
        not heard so yet may lack committed entries); without one, the node whose files hold
        the most up-to-date log (Raft's comparison: among a majority it holds every committed
        entry, as a leader would)."""
        healthy = [n for n in self.nodes.values() if n.node_id not in self.wiped]
        serving = [n for n in healthy if n.core is not None and self._can_serve(n)]
        if serving:
            return max(serving, key=lambda n: n.core.term if n.core else 0)

        def up_to_date(node: SimNode) -> tuple[int, int]:
            return (node.durable.last_term, node.durable.last_index)

        return max(healthy, key=up_to_date)

    def _cut_one_way(self) -> None:
        """One node's links cut in one direction for a long time: it sends to its peers but
        hears none of them, or they hear nothing from it. Only its scheduled end (or the final
        heal) lifts it; one at a time."""
        if self.one_way_cut:
            return
        if self.scenario.lone_one_way_cut:
            leader = self._leader_id()
            if leader is None:
                return  # wait for a leader, so that the cut falls on a follower
            node_id = self.rng.choice([i for i in self.ids if i != leader])
            sends_only = True
            duration = self.scenario.duration - self.world.now
        else:
            node_id = self.rng.choice(self.ids)
            sends_only = self.rng.random() < 0.5
            duration = self.rng.uniform(10, 30) * self.config.election_timeout_max
        peers = [i for i in self.ids if i != node_id]
        if sends_only:
            self.one_way_cut = frozenset((peer, node_id) for peer in peers)
            shape = "sends to its peers but hears none of them"
        else:
            self.one_way_cut = frozenset((node_id, peer) for peer in peers)
            shape = "hears its peers but none of them hears it"
        self._one_way_cuts_made += 1
        cut_number = self._one_way_cuts_made
        self.world.log(f"nemesis one-way cut: {node_id} {shape}, for {duration:.4f}s")

        def end() -> None:
            if self._one_way_cuts_made == cut_number and self.one_way_cut:
                self.one_way_cut = frozenset()
                self.world.log(f"nemesis one-way cut of {node_id} ends")

        self.world.after(duration, end)

    def _roll_config_change(self) -> None:
        """One step of a rolling configuration change: restart one node that still runs the
        old timings with the new ones (disk intact). Once every node has them, the next step
        starts another change."""
        target = self.rollout_target
        if target is None or all(n.config == target for n in self.nodes.values()):
            current = target or self.config
            target = draw_change(self.rng, self.config, current)
            self.rollout_target = target
            self.world.log(f"nemesis config rollout: {describe_change(current, target)}")
        node = self.rng.choice([n for n in self.nodes.values() if n.config != target])
        old, node.config = node.config, target
        on_target = sum(n.config == target for n in self.nodes.values())
        self.world.log(
            f"nemesis config change on {node.node_id}: {describe_change(old, target)} "
            f"({on_target}/{len(self.ids)} nodes)"
        )
        # A service restart, not a reboot: back quickly. A node that is down already gets the
        # new configuration when it restarts.
        self._crash_and_restart(
            node.node_id, self.rng.uniform(0, 0.5) * self.config.election_timeout_max
        )

    def _finish_rollout(self) -> None:
        """The operator completes the change under way: until then, nodes with different
        leases refuse each other's AppendEntries (rule 2) and the cluster cannot converge."""
        target = self.rollout_target
        if target is None:
            return
        for node in self.nodes.values():
            if node.config != target:
                self.world.log(
                    f"config change on {node.node_id} completes the rollout: "
                    f"{describe_change(node.config, target)}"
                )
                node.config = target
                self._crash(node)

    def _suspend_random(self) -> None:
        """A node's machine is suspended (a VM paused by its host, a laptop lid): it runs
        nothing and, with SuspendClock.MONOTONIC, its clock stops too."""
        candidates = [n for n in self.nodes.values() if n.up and not n.paused]
        if not candidates:
            return
        leader = self._leader_id()
        if leader is not None and not self.nodes[leader].paused and self.rng.random() < 0.5:
            node = self.nodes[leader]  # the node whose lease a stopped clock stretches
        else:
            node = self.rng.choice(candidates)
        node.paused = True
        node.suspensions += 1
        suspension = node.suspensions
        clock_stops = self.scenario.suspend_clock is SuspendClock.MONOTONIC
        if clock_stops:
            node.clock.stop(self.world.now)
        # Long enough for the others to elect a leader and for every old lease to run out.
        duration = self.rng.uniform(1, 8) * self.config.election_timeout_max
        what = "its clock stops" if clock_stops else "its clock keeps counting"
        self.world.log(f"nemesis suspend {node.node_id} for {duration:.4f}s ({what})")

        def resume() -> None:
            if node.paused and node.suspensions == suspension:
                self._resume(node)

        self.world.after(duration, resume)

    def _ask_leader_to_transfer(self) -> None:
        leader = self._leader_id()
        if leader is None:
            return
        node = self.nodes[leader]
        peers = [i for i in self.ids if i != leader]
        target = None if not peers or self.rng.random() < 0.3 else self.rng.choice(peers)
        self.world.log(f"nemesis transfer: asking leader {leader} to hand over to {target}")
        # Queued like any input, as an operator's request would reach the shell.
        node.inbox.append(("transfer", target))
        self._process(node)

    def _transfer_leadership(
        self, node: SimNode, core: RaftNode, target: int | None, now: float
    ) -> None:
        result = core.transfer_leadership(now, target)
        self.world.log(f"[{node.node_id}] transfer_leadership(target={target}) -> {result}")

    def _end_day2_faults(self) -> None:
        """The final heal of the day-2 faults: the cut lifted, wiped nodes restored, the
        rolling change completed. Draws nothing from the seed unless one of them happened."""
        if self.one_way_cut:
            self.one_way_cut = frozenset()
            self.world.log("one-way cut healed")
        for node_id in sorted(self.wiped):
            self._restore(self.nodes[node_id])
        self._finish_rollout()

    # ------------------------------------------------------------------------------------------
    # Final judgement

    def _check_linearizable(self) -> None:
        result = check_history(self.history)
        if not result.ok:
            raise InvariantViolationError(f"linearizability: {result.explanation}")


def _committed_in_own_term(core: RaftNode) -> bool:
    """A leader whose own NO-OP (the first entry of its term) has committed: it can commit
    writes and, in read_index mode, serve reads."""
    commit = core.commit_index
    return core.role is Role.LEADER and commit > 0 and core.log.term(commit) == core.term


def run_scenario(scenario: Scenario, *, trace: bool = False) -> RunResult:
    return Simulation(scenario, trace=trace).run()
