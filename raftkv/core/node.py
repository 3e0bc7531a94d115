"""One Raft replica as a pure state machine, with leader leases (docs/design.md §2–3).

The caller (the asyncio shell, or the test simulator) drives it:

1. Feed inputs: `step(message, now)`, `propose(command, now, token)`, `tick(now)` when
   `next_deadline()` has passed. `read(key, now, token)` may be called at any time.
2. `take_ready()` hands back everything to do. The caller must, in this order: send
   `ready.messages_before_persist()`, persist `ready.first_index/entries` to the log and then
   `ready.hard_state` (durably), send `ready.messages_after_persist()`, and call
   `advance(ready)`. `ready.replies` may be delivered at any point: they report only entries
   already durable on a majority and reads already checked.
   No other input except `read` may be fed between `take_ready` and `advance`.

Rules kept here (the reader may want Figure 2 of the Raft paper open):
- Terms are checked once, at the top of `step`; a higher term makes us a follower.
- A vote is granted only to a candidate whose log is at least as up to date as ours.
- A follower truncates its log only where an incoming entry's term conflicts with its own.
- A leader commits only entries of its own term by majority; earlier ones commit with them.
  The leader counts itself only for entries it has persisted (`advance`).
- Leases: see the numbered rules of docs/design.md §3, referenced as "rule N" below.

Time is always an argument (`now`, seconds of this node's monotonic clock); randomness comes only
from the `random.Random` passed in.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from .config import ReadMode, TimingConfig
from .messages import (
    NO_OP,
    Accepted,
    AppendEntries,
    AppendEntriesReply,
    ClientReply,
    Command,
    Envelope,
    LogEntry,
    Message,
    NodeId,
    NoOpCommand,
    ProposeResult,
    ReadPending,
    ReadResult,
    ReadValue,
    Refusal,
    Refused,
    RequestVote,
    RequestVoteReply,
    SetCommand,
    WriteDone,
)
from .state_machine import KeyValueStateMachine

NEVER = float("inf")
LONG_AGO = float("-inf")


class CoreMisuseError(RuntimeError):
    """The caller broke the Ready/advance protocol: a bug in the shell, not in the input."""


class Role(Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class UnsafeSwitches:
    """Test-only switches, each breaking one lease rule, to prove the checks can catch it."""

    read_without_lease: bool = False
    skip_lease_wait: bool = False
    lease_from_ack_time: bool = False
    read_before_noop: bool = False
    renew_lease_on_send: bool = False
    forget_lease_on_restart: bool = False

    def enabled(self) -> list[str]:
        return [name for name in self.__slots__ if getattr(self, name)]


SAFE = UnsafeSwitches()


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it is sent."""

    term: int
    voted_for: NodeId | None


@dataclass(frozen=True, slots=True)
class PersistentState:
    hard_state: HardState
    entries: Sequence[LogEntry]
    # Only a hint (commit index is volatile in Raft), clamped to the log on load.
    commit_length: int = 0


@dataclass(frozen=True, slots=True)
class Ready:
    """A batch of work for the caller; see the module docstring for the order."""

    hard_state: HardState | None
    # The log on disk must end with `entries` starting at `first_index`: anything stored at
    # first_index or later is replaced. Empty entries with first_index <= length = truncation.
    first_index: int
    entries: tuple[LogEntry, ...]
    log_changed: bool
    commit_length: int
    messages: tuple[Envelope, ...]
    replies: tuple[ClientReply, ...]
    applied: tuple[tuple[int, LogEntry], ...]
    events: tuple[str, ...]

    @property
    def needs_persist(self) -> bool:
        return self.hard_state is not None or self.log_changed

    def messages_before_persist(self) -> tuple[Envelope, ...]:
        """Messages that may go out while this Ready is still being persisted.

        A leader's AppendEntries do not depend on its own copy being durable (it counts itself
        only after `advance`), so replication overlaps the leader's fsync (Raft thesis §10.2.1).
        Anything else — votes, acknowledgements, a term change — waits for the disk.
        """
        if self.hard_state is not None:
            return ()
        return tuple(e for e in self.messages if isinstance(e.message, AppendEntries))

    def messages_after_persist(self) -> tuple[Envelope, ...]:
        if self.hard_state is not None:
            return self.messages
        return tuple(e for e in self.messages if not isinstance(e.message, AppendEntries))


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: NodeId
    role: Role
    term: int
    leader_id: NodeId | None
    voted_for: NodeId | None
    log_length: int
    commit_length: int
    applied_length: int
    lease_remaining: float
    waiting_for_old_lease: float


@dataclass(slots=True)
class _Peer:
    next_index: int
    match_index: int = 0
    # After a success we stream (pipeline); after a rejection we probe one message at a time.
    pipeline: bool = False
    acked_round: int = 0
    match_at_last_heartbeat: int = 0


@dataclass(slots=True)
class _PendingRead:
    token: int
    key: str
    read_index: int
    round: int


@dataclass(slots=True)
class _Outbox:
    messages: list[Envelope] = field(default_factory=list)
    replies: list[ClientReply] = field(default_factory=list)
    applied: list[tuple[int, LogEntry]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


def describe(command: Command) -> str:
    if isinstance(command, NoOpCommand):
        return "NO-OP"
    return f"SET {command.key} {command.value}"


class RaftNode:
    def __init__(
        self,
        node_id: NodeId,
        peers: Sequence[NodeId],
        config: TimingConfig,
        rng: random.Random,
        now: float,
        persisted: PersistentState | None = None,
        unsafe: UnsafeSwitches = SAFE,
    ) -> None:
        config.validate()
        if node_id in peers:
            raise ValueError(f"node {node_id} lists itself among its peers")
        self.id = node_id
        self.peer_ids = tuple(sorted(set(peers)))
        self.config = config
        self.unsafe = unsafe
        self._rng = rng
        self._quorum = (len(self.peer_ids) + 1) // 2 + 1

        state = persisted or PersistentState(HardState(0, None), ())
        self._log: list[LogEntry] = list(state.entries)
        self.term = state.hard_state.term
        self.voted_for = state.hard_state.voted_for
        self._hard_state_dirty = False
        if self._last_log_term() > self.term:
            # Entries were made durable but the metadata naming their term was not (crash
            # between the two writes); no message depended on the lost metadata.
            self.term, self.voted_for = self._last_log_term(), None
            self._hard_state_dirty = True

        self.role = Role.FOLLOWER
        self.leader_id: NodeId | None = None
        # Invariant: applied_length == commit_length after every input (we apply at once).
        self.commit_length = 0
        self.applied_length = 0
        self.state_machine = KeyValueStateMachine()

        # Log bookkeeping for Ready: entries from _unstable_from on are not yet handed out.
        self._unstable_from = len(self._log) + 1
        self._log_changed = False
        self._persisted_length = len(self._log)
        self._awaiting_advance = False
        self._ready_log_length = 0

        self._out = _Outbox()
        self._last_now = now

        # Rule 2: a restarted node has forgotten which leases it saw, so it assumes a full one.
        self._old_lease_end = (
            LONG_AGO if unsafe.forget_lease_on_restart else now + (config.lease_duration)
        )
        self._reported_lease_mismatch: set[float] = set()
        self._election_deadline = NEVER
        self._reset_election_timer(now)

        # Candidate state.
        self._votes: set[NodeId] = set()
        self._vote_lease_bound = LONG_AGO

        # Leader state.
        self._peers: dict[NodeId, _Peer] = {}
        self._round = 0
        self._round_sent_at: dict[int, float] = {}
        self._quorum_round = 0
        self._lease_end = LONG_AGO
        self._serving_from = NEVER
        self._step_down_grace_end = NEVER
        self._next_heartbeat = NEVER
        self._noop_index = 0
        self._pending_writes: dict[int, tuple[int, int]] = {}  # index -> (token, term)
        self._pending_reads: list[_PendingRead] = []
        self._read_round_wanted = False
        self._replicate_wanted = False

        self._apply_committed(min(state.commit_length, len(self._log)), announce=False)
        if self.applied_length:
            self._out.events.append(
                f"Node {self.id} restored {len(self._log)} log entries, "
                f"{self.applied_length} applied from the commit hint."
            )

    # ------------------------------------------------------------------------------------------
    # Inputs

    def step(self, message: Message, now: float) -> None:
        self._begin_input(now)
        if message.term > self.term:
            leader = message.leader_id if isinstance(message, AppendEntries) else None
            self._become_follower(message.term, leader, now)
        if isinstance(message, AppendEntries):
            self._on_append_entries(message, now)
        elif isinstance(message, AppendEntriesReply):
            self._on_append_entries_reply(message, now)
        elif isinstance(message, RequestVote):
            self._on_request_vote(message, now)
        else:
            self._on_request_vote_reply(message, now)

    def tick(self, now: float) -> None:
        self._begin_input(now)
        if self.role is Role.LEADER:
            if now >= self._serving_from and now >= max(self._lease_end, self._step_down_grace_end):
                self._out.events.append(f"Leader {self.id} lease renewal failed. Stepping Down.")
                self._become_follower(self.term, None, now)
                return
            if now >= self._serving_from and self._noop_index == 0:
                self._start_serving(now)
            if now >= self._next_heartbeat:
                self._out.events.append(f"Leader {self.id} sending heartbeat & Renewing Lease")
                self._broadcast(now, heartbeat=True)
        elif now >= self._election_deadline:
            self._start_election(now)

    def propose(self, command: Command, now: float, token: int) -> ProposeResult:
        self._begin_input(now)
        if self.role is not Role.LEADER:
            return Refused(Refusal.NOT_LEADER, self.leader_id)
        if self._noop_index == 0:
            # Rule 3: nothing is appended before the old leader's lease has ended.
            return Refused(Refusal.WAITING_OLD_LEASE, self.id)
        self._out.events.append(f"Node {self.id} (leader) received a {describe(command)} request.")
        index = self._append(command)
        self._pending_writes[index] = (token, self.term)
        self._replicate_wanted = True
        return Accepted(index, self.term)

    def read(self, key: str, now: float, token: int) -> ReadResult:
        """Answer a GET now if it is safe to (rule 4), else refuse or (read_index) defer."""
        self._last_now = max(self._last_now, now)
        if self.role is not Role.LEADER:
            return Refused(Refusal.NOT_LEADER, self.leader_id)
        if now < self._serving_from:
            return Refused(Refusal.WAITING_OLD_LEASE, self.id)
        noop_committed = self._noop_index != 0 and self.commit_length >= self._noop_index
        if not noop_committed and not self.unsafe.read_before_noop:
            return Refused(Refusal.NOT_READY, self.id)
        if self.applied_length < self.commit_length:
            return Refused(Refusal.NOT_READY, self.id)
        if self.config.read_mode is ReadMode.READ_INDEX:
            self._pending_reads.append(
                _PendingRead(token, key, self.commit_length, self._round + 1)
            )
            self._read_round_wanted = True
            return ReadPending()
        if now >= self._lease_end and not self.unsafe.read_without_lease:
            return Refused(Refusal.NO_LEASE, self.id)
        return ReadValue(self.state_machine.get(key))

    # ------------------------------------------------------------------------------------------
    # Outputs

    def next_deadline(self) -> float:
        if self.role is not Role.LEADER:
            return self._election_deadline
        if self._noop_index == 0:
            return min(self._serving_from, self._next_heartbeat)
        return min(self._next_heartbeat, max(self._lease_end, self._step_down_grace_end))

    def has_ready(self) -> bool:
        return bool(
            self._hard_state_dirty
            or self._log_changed
            or self._out.messages
            or self._out.replies
            or self._out.applied
            or self._out.events
            or self._replicate_wanted
            or self._read_round_wanted
        )

    def take_ready(self) -> Ready:
        if self._awaiting_advance:
            raise CoreMisuseError("take_ready called again before advance")
        if self.role is Role.LEADER and (self._replicate_wanted or self._read_round_wanted):
            self._broadcast(self._last_now)
        self._replicate_wanted = self._read_round_wanted = False
        out, self._out = self._out, _Outbox()
        ready = Ready(
            hard_state=HardState(self.term, self.voted_for) if self._hard_state_dirty else None,
            first_index=self._unstable_from,
            entries=tuple(self._log[self._unstable_from - 1 :]),
            log_changed=self._log_changed,
            commit_length=self.commit_length,
            messages=tuple(out.messages),
            replies=tuple(out.replies),
            applied=tuple(out.applied),
            events=tuple(out.events),
        )
        self._hard_state_dirty = False
        self._log_changed = False
        self._unstable_from = len(self._log) + 1
        self._ready_log_length = len(self._log)
        self._awaiting_advance = ready.needs_persist
        return ready

    def advance(self, ready: Ready) -> None:
        """The caller has persisted and sent `ready`."""
        if not ready.needs_persist:
            return
        if not self._awaiting_advance:
            raise CoreMisuseError("advance called without an outstanding ready")
        self._awaiting_advance = False
        if ready.log_changed:
            self._persisted_length = self._ready_log_length
            if self.role is Role.LEADER:
                self._maybe_commit()

    def status(self, now: float) -> NodeStatus:
        leader = self.role is Role.LEADER
        return NodeStatus(
            node_id=self.id,
            role=self.role,
            term=self.term,
            leader_id=self.id if leader else self.leader_id,
            voted_for=self.voted_for,
            log_length=len(self._log),
            commit_length=self.commit_length,
            applied_length=self.applied_length,
            lease_remaining=max(0.0, self._lease_end - now) if leader else 0.0,
            waiting_for_old_lease=max(0.0, self._serving_from - now) if leader else 0.0,
        )

    def serves_lease_reads(self, now: float) -> bool:
        """Whether this node believes, at `now`, that it may answer a GET from its lease."""
        if self.role is not Role.LEADER or now < self._serving_from:
            return False
        return now < self._lease_end or self.unsafe.read_without_lease

    @property
    def log(self) -> Sequence[LogEntry]:
        return self._log

    # ------------------------------------------------------------------------------------------
    # Role changes

    def _become_follower(self, term: int, leader: NodeId | None, now: float) -> None:
        if self.role is Role.LEADER:
            self._out.events.append(f"Leader {self.id} Stepping down (term {term}).")
            for read in self._pending_reads:
                self._out.replies.append(
                    ClientReply(read.token, Refused(Refusal.NOT_LEADER, leader))
                )
            self._pending_reads.clear()
        if term != self.term:
            self.term = term
            self.voted_for = None
            self._hard_state_dirty = True
        if self.role is not Role.FOLLOWER:
            # A follower keeps its deadline: a higher term alone (say, a denied candidate's) is
            # no news of a leader, and resetting on it would let stale candidates stall elections.
            self._reset_election_timer(now)
        self.role = Role.FOLLOWER
        self.leader_id = leader
        self._peers.clear()
        self._lease_end = LONG_AGO
        self._serving_from = NEVER
        self._step_down_grace_end = NEVER
        self._next_heartbeat = NEVER
        self._noop_index = 0
        self._replicate_wanted = self._read_round_wanted = False

    def _start_election(self, now: float) -> None:
        self._out.events.append(f"Node {self.id} election timer timed out, Starting election.")
        self.role = Role.CANDIDATE
        self.term += 1
        self.voted_for = self.id
        self.leader_id = None
        self._hard_state_dirty = True
        self._votes = {self.id}
        self._vote_lease_bound = LONG_AGO
        self._reset_election_timer(now)
        request = RequestVote(self.term, self.id, len(self._log), self._last_log_term())
        self._out.messages.extend(Envelope(peer, request) for peer in self.peer_ids)
        if len(self._votes) >= self._quorum:
            self._become_leader(now)

    def _become_leader(self, now: float) -> None:
        self.role = Role.LEADER
        self.leader_id = self.id
        self._out.events.append(f"Node {self.id} became the leader for term {self.term}.")
        self._peers = {p: _Peer(next_index=len(self._log) + 1) for p in self.peer_ids}
        self._round_sent_at.clear()
        self._quorum_round = self._round
        self._lease_end = LONG_AGO
        self._noop_index = 0
        # Rule 3: wait out every lease a voter (or we) may still be bound by.
        wait_until = max(self._old_lease_end, self._vote_lease_bound)
        if self.unsafe.skip_lease_wait or self.config.read_mode is ReadMode.READ_INDEX:
            wait_until = now
        self._serving_from = max(now, wait_until)
        self._step_down_grace_end = self._serving_from + self.config.leader_lease_span
        if self._serving_from > now:
            self._out.events.append("New Leader waiting for Old Leader Lease to timeout.")
            # Heartbeats during the wait keep followers from starting needless elections.
            self._broadcast(now)
        else:
            self._start_serving(now)

    def _start_serving(self, now: float) -> None:
        self._noop_index = self._append(NO_OP)
        self._broadcast(now)

    # ------------------------------------------------------------------------------------------
    # Message handlers

    def _on_append_entries(self, msg: AppendEntries, now: float) -> None:
        if msg.term < self.term:
            # Round 0: this reply must not vouch for any round of a later leader (or of a
            # restarted one whose round counter started again).
            reply = AppendEntriesReply(self.term, self.id, False, 0, 0, 0)
            self._out.messages.append(Envelope(msg.leader_id, reply))
            return
        if self.role is not Role.FOLLOWER or self.leader_id != msg.leader_id:
            self._become_follower(msg.term, msg.leader_id, now)
        self._reset_election_timer(now)
        self._record_old_lease(msg, now)

        if msg.prev_log_index > len(self._log):
            self._reject_append(msg, conflict=len(self._log) + 1)
            return
        if msg.prev_log_index > 0:
            local_term = self._log[msg.prev_log_index - 1].term
            if local_term != msg.prev_log_term:
                self._reject_append(msg, conflict=self._first_index_of_term(msg.prev_log_index))
                return

        index = msg.prev_log_index
        for entry in msg.entries:
            index += 1
            if index <= len(self._log):
                if self._log[index - 1].term == entry.term:
                    continue
                # Only a real conflict truncates; a stale or duplicate message never does.
                self._truncate_from(index)
            self._log.append(entry)
            self._unstable_from = min(self._unstable_from, index)
            self._log_changed = True
        last_new = msg.prev_log_index + len(msg.entries)
        self._out.events.append(f"Node {self.id} accepted AppendEntries RPC from {msg.leader_id}.")
        if msg.leader_commit > self.commit_length:
            self._apply_committed(min(msg.leader_commit, last_new))
        self._reply_append(msg, success=True, match=last_new, conflict=0)

    def _record_old_lease(self, msg: AppendEntries, now: float) -> None:
        # Rule 2: keep the longest lease seen from any leader of any term.
        lease = msg.lease_duration
        if lease != self.config.lease_duration:
            if lease not in self._reported_lease_mismatch:
                self._reported_lease_mismatch.add(lease)
                self._out.events.append(
                    f"Configuration error: leader {msg.leader_id} uses lease {lease}s, "
                    f"this node {self.config.lease_duration}s; assuming the longer."
                )
            lease = max(lease, self.config.lease_duration)
        self._old_lease_end = max(self._old_lease_end, now + lease)

    def _reject_append(self, msg: AppendEntries, conflict: int) -> None:
        self._out.events.append(f"Node {self.id} rejected AppendEntries RPC from {msg.leader_id}.")
        self._reply_append(msg, success=False, match=0, conflict=conflict)

    def _reply_append(
        self, msg: AppendEntries, *, success: bool, match: int, conflict: int
    ) -> None:
        reply = AppendEntriesReply(self.term, self.id, success, match, conflict, msg.round)
        self._out.messages.append(Envelope(msg.leader_id, reply))

    def _on_append_entries_reply(self, msg: AppendEntriesReply, now: float) -> None:
        if msg.term < self.term or self.role is not Role.LEADER:
            return
        peer = self._peers.get(msg.follower_id)
        if peer is None:
            return
        # Rule 1: an answer in our term vouches for its round, whether or not the log matched.
        if self._round >= msg.round > peer.acked_round:
            peer.acked_round = msg.round
            self._on_round_acked(now)
        if msg.success:
            if msg.match_index > peer.match_index:
                peer.match_index = msg.match_index
                self._maybe_commit()
            peer.next_index = max(peer.next_index, peer.match_index + 1)
            peer.pipeline = True
            if peer.next_index <= len(self._log):
                self._send_append(msg.follower_id, peer)
        elif msg.conflict_index > 0:
            peer.pipeline = False
            if msg.conflict_index <= peer.match_index:
                # The follower lost entries it had acknowledged (a damaged disk, an operator
                # cutting its log): believe its log as it is now, or we would probe forever.
                peer.match_index = msg.conflict_index - 1
            peer.next_index = max(peer.match_index + 1, min(peer.next_index, msg.conflict_index))
            self._send_append(msg.follower_id, peer)

    def _on_request_vote(self, msg: RequestVote, now: float) -> None:
        up_to_date = (msg.last_log_term, msg.last_log_index) >= (
            self._last_log_term(),
            len(self._log),
        )
        grant = (
            msg.term == self.term
            and self.voted_for in (None, msg.candidate_id)
            and up_to_date
            and self.role is Role.FOLLOWER
        )
        if grant:
            self.voted_for = msg.candidate_id
            self._hard_state_dirty = True
            self._reset_election_timer(now)
            self._out.events.append(f"Vote granted for Node {msg.candidate_id} in term {msg.term}.")
        else:
            self._out.events.append(f"Vote denied for Node {msg.candidate_id} in term {msg.term}.")
        # Rule 3: the voter tells the candidate how long it still owes to an old leader.
        remaining = max(0.0, self._old_lease_end - now)
        reply = RequestVoteReply(self.term, self.id, grant, remaining)
        self._out.messages.append(Envelope(msg.candidate_id, reply))

    def _on_request_vote_reply(self, msg: RequestVoteReply, now: float) -> None:
        if self.role is not Role.CANDIDATE or msg.term != self.term or not msg.granted:
            return
        self._votes.add(msg.voter_id)
        # Stretch the voter's remaining time by the worst drift between its clock and ours.
        bound = now + msg.old_lease_remaining * self.config.drift_stretch
        self._vote_lease_bound = max(self._vote_lease_bound, bound)
        if len(self._votes) >= self._quorum:
            self._become_leader(now)

    # ------------------------------------------------------------------------------------------
    # Leader: replication, rounds and the lease

    def _broadcast(self, now: float, *, heartbeat: bool = False) -> None:
        """Start a new round: one AppendEntries to every peer, carrying the lease duration."""
        self._round += 1
        if now >= self._serving_from:
            self._round_sent_at[self._round] = now
            if self.unsafe.renew_lease_on_send:
                self._lease_end = max(self._lease_end, now + self.config.leader_lease_span)
        self._next_heartbeat = now + self.config.heartbeat_interval
        for peer_id, peer in self._peers.items():
            self._send_append(peer_id, peer, heartbeat=heartbeat)
        self._on_round_acked(now)  # a cluster of one is its own majority

    def _send_append(self, peer_id: NodeId, peer: _Peer, *, heartbeat: bool = False) -> None:
        limit = self.config.max_entries_per_message
        if peer.pipeline and heartbeat:
            in_flight = peer.next_index - 1 - peer.match_index
            if in_flight > 0 and peer.match_index == peer.match_at_last_heartbeat:
                # No progress for a whole heartbeat with entries out: assume they were lost.
                peer.pipeline = False
                peer.next_index = peer.match_index + 1
            peer.match_at_last_heartbeat = peer.match_index
        if not peer.pipeline:
            # Probe: resend from next_index until the follower says where its log matches.
            prev_index = peer.next_index - 1
            entries = self._batch_from(prev_index, limit)
        elif peer.next_index <= len(self._log) and (
            peer.next_index - 1 - peer.match_index < 4 * limit
        ):
            prev_index = peer.next_index - 1
            entries = self._batch_from(prev_index, limit)
            peer.next_index += len(entries)
        else:
            # Nothing new (or enough in flight): anchor at the confirmed match, which cannot
            # be rejected, so that in-flight entries are not mistaken for a conflict.
            prev_index = peer.match_index
            entries = []
        message = AppendEntries(
            term=self.term,
            leader_id=self.id,
            prev_log_index=prev_index,
            prev_log_term=self._term_at(prev_index),
            entries=tuple(entries),
            leader_commit=self.commit_length,
            lease_duration=self.config.lease_duration,
            round=self._round,
        )
        self._out.messages.append(Envelope(peer_id, message))

    def _batch_from(self, prev_index: int, limit: int) -> list[LogEntry]:
        batch = self._log[prev_index : prev_index + limit]
        budget = self.config.max_message_chars
        for count, entry in enumerate(batch):
            command = entry.command
            if isinstance(command, SetCommand):
                budget -= len(command.key) + len(command.value)
            if budget < 0 and count > 0:
                return batch[:count]
        return batch

    def _on_round_acked(self, now: float) -> None:
        acked = sorted([self._round, *(p.acked_round for p in self._peers.values())], reverse=True)
        quorum_round = acked[self._quorum - 1]
        if quorum_round <= self._quorum_round:
            return
        self._quorum_round = quorum_round
        sent_at = self._round_sent_at.get(quorum_round)
        if sent_at is not None:
            start = now if self.unsafe.lease_from_ack_time else sent_at
            self._lease_end = max(self._lease_end, start + self.config.leader_lease_span)
        for r in [r for r in self._round_sent_at if r < quorum_round]:
            del self._round_sent_at[r]
        self._serve_confirmed_reads()

    def _serve_confirmed_reads(self) -> None:
        still_waiting = []
        for read in self._pending_reads:
            if read.round <= self._quorum_round and self.applied_length >= read.read_index:
                value = self.state_machine.get(read.key)
                self._out.replies.append(ClientReply(read.token, ReadValue(value)))
            else:
                still_waiting.append(read)
        self._pending_reads = still_waiting

    def _maybe_commit(self) -> None:
        matched = sorted(
            [self._persisted_length, *(p.match_index for p in self._peers.values())],
            reverse=True,
        )
        candidate = matched[self._quorum - 1]
        if candidate > self.commit_length and self._log[candidate - 1].term == self.term:
            self._apply_committed(candidate)
            self._serve_confirmed_reads()

    # ------------------------------------------------------------------------------------------
    # Log and state machine

    def _append(self, command: Command) -> int:
        self._log.append(LogEntry(self.term, command))
        index = len(self._log)
        self._unstable_from = min(self._unstable_from, index)
        self._log_changed = True
        return index

    def _truncate_from(self, index: int) -> None:
        assert index > self.commit_length, "truncating a committed entry"
        del self._log[index - 1 :]
        self._unstable_from = min(self._unstable_from, index)
        self._persisted_length = min(self._persisted_length, index - 1)
        self._log_changed = True
        for lost in [i for i in self._pending_writes if i >= index]:
            token, _ = self._pending_writes.pop(lost)
            self._out.replies.append(
                ClientReply(token, Refused(Refusal.ENTRY_LOST, self.leader_id))
            )

    def _apply_committed(self, commit_length: int, *, announce: bool = True) -> None:
        if commit_length <= self.commit_length:
            return
        self.commit_length = commit_length
        role = "leader" if self.role is Role.LEADER else "follower"
        while self.applied_length < self.commit_length:
            self.applied_length += 1
            index = self.applied_length
            entry = self._log[index - 1]
            self.state_machine.apply(entry.command)
            self._out.applied.append((index, entry))
            if announce and isinstance(entry.command, SetCommand):
                self._out.events.append(
                    f"Node {self.id} ({role}) committed the entry {describe(entry.command)} "
                    "to the state machine."
                )
            pending = self._pending_writes.pop(index, None)
            if pending is not None:
                token, term = pending
                result: WriteDone | Refused = (
                    WriteDone(index)
                    if term == entry.term
                    else Refused(Refusal.ENTRY_LOST, self.leader_id)
                )
                self._out.replies.append(ClientReply(token, result))

    # ------------------------------------------------------------------------------------------
    # Helpers

    def _begin_input(self, now: float) -> None:
        if self._awaiting_advance:
            raise CoreMisuseError("input fed between take_ready and advance")
        self._last_now = max(self._last_now, now)

    def _reset_election_timer(self, now: float) -> None:
        timeout = self._rng.uniform(
            self.config.election_timeout_min, self.config.election_timeout_max
        )
        self._election_deadline = now + timeout

    def _last_log_term(self) -> int:
        return self._log[-1].term if self._log else 0

    def _term_at(self, index: int) -> int:
        return self._log[index - 1].term if index > 0 else 0

    def _first_index_of_term(self, index: int) -> int:
        term = self._log[index - 1].term
        while index > 1 and self._log[index - 2].term == term and index - 1 > self.commit_length:
            index -= 1
        return index
