"""One Raft replica as a pure state machine, with leader leases (docs/design.md §2–3).

The caller (the asyncio shell, or the test simulator) drives it:

1. Feed inputs: `step(message, now)`, `propose(command, now, token)`, `tick(now)` when
   `next_deadline()` has passed. `read(key, now, token)`, `read_range(prefix, start_after,
   limit, now, token)` and `read_image(now, token)` may be called at any time.
2. `take_ready()` hands back everything to do. The caller must, in this order: send
   `ready.send_now`, persist `ready.first_index/entries` to the log and then `ready.hard_state`
   (durably), send `ready.send_after_persist`, and call `advance(ready)`. `ready.replies` may be
   delivered at any point: they report only entries already durable on a majority and reads
   already checked. No other input except the reads may be fed between `take_ready` and
   `advance`.

Where each rule of Figure 2 (Raft paper) and of the lease (docs/design.md §3) lives:
- Terms: checked once, at the top of `step`; a higher term makes us a follower
  (`_become_follower`); a message of a lower term is answered with our term and not acted on
  (`_on_append_entries`, `_on_request_vote`).
- Votes: one per term, durable before the reply (`_on_request_vote` sets the hard state
  dirty), only to a candidate whose log is at least as up to date as ours.
- Log matching: a follower truncates its log only where an incoming entry's term conflicts
  with its own (`_on_append_entries`).
- Commit: a leader commits only entries of its own term, when a majority has them
  (`_maybe_commit`, `quorum.quorum_value`); it counts itself only for entries it has persisted
  (`advance`). Followers commit up to `leader_commit` (`_on_append_entries`).
- Replication: what to send a follower is decided in one place (`_send_append`, with the
  follower's `Progress`).
- Peer input: stateless checks in `validation.malformed` (at the top of `step`); what only our
  state can refute in `_refuse_append` / `_append_problem` (before anything changes) and in the
  reply handlers, each reported as an event, never raised (docs/design.md §8).
- Leases: rule 1 `_on_round_acked`; rule 2 `_record_old_lease`, `_refuse_append` and
  `__init__`; rule 3 `_on_request_vote` (remaining time) and `_become_leader` (the wait); rule
  4 `lease_read_refusal`; rules 5 and 7 `tick`; rule 6 `TimingConfig.validate`.

Time is always an argument (`now`, seconds of this node's monotonic clock); randomness comes only
from the `random.Random` passed in.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import Enum

from . import events
from .config import (
    DEFAULT_SNAPSHOTS,
    ReadMode,
    SnapshotPolicy,
    TimingConfig,
    drift_stretch,
    lease_span,
)
from .events import Event, describe_command
from .leader import LONG_AGO, NEVER, LeaderState, PendingRead
from .membership import (
    DEFAULT_PROMOTE_MAX_LAG,
    MembershipChange,
    MembershipRefused,
    Promote,
    describe_change,
    next_membership,
)
from .messages import (
    FEATURE_MEMBERSHIP,
    FEATURE_SNAPSHOTS_AND_SESSIONS,
    IMAGE_QUERY,
    NO_OP,
    PROTOCOL_FEATURES,
    Accepted,
    AppendEntries,
    AppendEntriesReply,
    ClientReply,
    Command,
    DeleteCommand,
    Envelope,
    ImageQuery,
    InstallSnapshot,
    InstallSnapshotReply,
    LogEntry,
    Membership,
    MembershipCommand,
    Message,
    NodeId,
    ProposeResult,
    RangeQuery,
    ReadPending,
    ReadQuery,
    ReadRange,
    ReadValue,
    Refusal,
    Refused,
    RequestVote,
    RequestVoteReply,
    SetCommand,
    WriteDone,
)
from .progress import Progress, ProgressState
from .quorum import majority, quorum_value
from .raft_log import RaftLog
from .state_machine import (
    DEFAULT_SESSION_RULES,
    KeyValueStateMachine,
    SessionExpired,
    SessionRules,
    SnapshotImage,
)
from .validation import MAX_TERM, malformed, sender_of

__all__ = ["LONG_AGO", "NEVER"]


# Lease durations reported as a configuration error, at most once each (rule 2); bounded so
# that a peer sending a new value every time cannot grow the set.
_MAX_REPORTED_LEASES = 16


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
    # Acts on malformed peer messages instead of dropping them (validation.py).
    accept_malformed: bool = False
    # Campaigns without asking for pre-votes, and votes whatever leader it hears (no PreVote,
    # no leader stickiness, no CheckQuorum).
    no_pre_vote: bool = False
    # A leader that transfers leadership keeps serving lease reads (rule 8 broken).
    transfer_keeps_lease: bool = False
    # A restarted node assumes only its own configured lease, not the longest it recorded.
    forget_lease_bound: bool = False
    # Compacts the log when a snapshot is taken, not once it is durable (a crash in between
    # loses committed entries: the simulator's durability check must catch it).
    compact_before_snapshot_durable: bool = False
    # Applies a write whose session expired as the first of a new session (`resume` ignored):
    # a retry that outlived its session applies twice.
    ignore_resume: bool = False
    # Membership (docs/design.md §13). A leader counts its rounds (the lease, CheckQuorum)
    # against the voters it had when elected, not the configuration in force for each round.
    lease_from_old_config: bool = False
    # A leader starts a membership change while another is not yet committed.
    concurrent_config_changes: bool = False
    # A leader starts a membership change before it committed an entry of its own term.
    change_before_term_commit: bool = False

    def enabled(self) -> list[str]:
        return [name for name in self.__slots__ if getattr(self, name)]


SAFE = UnsafeSwitches()


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it is sent."""

    term: int
    voted_for: NodeId | None
    # The longest lease this node has recorded for a leader (rule 2): after a restart it
    # assumes that one, whatever its own flags say now.
    lease_bound: float = 0.0
    # The largest clock drift bound ρ any node announced to this one (rule 6).
    drift_bound: float = 0.0


@dataclass(frozen=True, slots=True)
class PersistentState:
    hard_state: HardState
    # The log entries log_offset + 1, log_offset + 2, ... (docs/design.md §5: logs.txt).
    entries: Sequence[LogEntry]
    # Only a hint (the commit index is volatile in Raft), clamped to the log on load.
    commit_index: int = 0
    # The durable snapshot, if any: the state machine as of its index, all of it committed.
    snapshot: SnapshotImage | None = None
    # The last index before `entries` and its term (0, 0 for a log never compacted); never
    # beyond the snapshot's index, or entries in between would be lost.
    log_offset: int = 0
    log_offset_term: int = 0


@dataclass(frozen=True, slots=True)
class Ready:
    """A batch of work for the caller, its order carried by its fields (module docstring)."""

    hard_state: HardState | None
    # The log on disk must end with `entries` starting at `first_index`: anything stored at
    # first_index or later is replaced. Empty entries with first_index <= length = truncation.
    first_index: int
    entries: tuple[LogEntry, ...]
    log_changed: bool
    commit_index: int
    # May go out before (and while) this Ready is persisted. A leader's AppendEntries do not
    # depend on its own copy being durable (it counts itself only after `advance`), so
    # replication overlaps the leader's fsync (Raft thesis §10.2.1).
    send_now: tuple[Envelope, ...]
    # Only once the persist is durable: votes, acknowledgements, anything after a term change.
    send_after_persist: tuple[Envelope, ...]
    replies: tuple[ClientReply, ...]
    applied: tuple[tuple[int, LogEntry], ...]
    events: tuple[Event, ...]
    # A snapshot received from the leader, to become the node's snapshot.txt before the log is
    # reset (log_reset holds its position) and before any reply is sent.
    installed: SnapshotImage | None = None
    # Before this Ready's entries: the stored log is replaced by an empty one that starts
    # after (index, term), which a durable snapshot covers (an installed snapshot, or a log
    # found at start-up not to agree with the snapshot).
    log_reset: tuple[int, int] | None = None
    # A point-in-time image of the state machine to write in the background (docs/design.md
    # §10); the caller reports the outcome with `snapshot_saved` or `snapshot_failed`.
    snapshot: SnapshotImage | None = None
    # After this Ready's entries: the stored log may drop the entries before this index,
    # keeping the entry at it (0: nothing to drop). Only ever up to a durable snapshot.
    compact_to: int = 0

    @property
    def needs_persist(self) -> bool:
        return self.hard_state is not None or self.log_changed or self.log_reset is not None

    @property
    def messages(self) -> tuple[Envelope, ...]:
        """Every message of this Ready, in the order the caller sends them."""
        return self.send_now + self.send_after_persist


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: NodeId
    role: Role
    term: int
    leader_id: NodeId | None
    voted_for: NodeId | None
    log_length: int
    commit_index: int
    # Entries are applied as soon as they commit (docs/design.md §2): always commit_index.
    last_applied: int
    lease_remaining: float
    waiting_for_old_lease: float
    # The durable snapshot's index (0: none) and the first log entry held in memory.
    snapshot_index: int = 0
    first_index: int = 1


@dataclass(slots=True)
class _Outbox:
    messages: list[Envelope] = field(default_factory=list)
    replies: list[ClientReply] = field(default_factory=list)
    applied: list[tuple[int, LogEntry]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


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
        *,
        admitted: bool = True,
        incarnation: int = 0,
        snapshots: SnapshotPolicy = DEFAULT_SNAPSHOTS,
        sessions: SessionRules = DEFAULT_SESSION_RULES,
        membership: Membership | None = None,
    ) -> None:
        """`peers`: the other members of the cluster's first configuration, all voters; or
        `membership`, that configuration itself (then `peers` is ignored). A configuration in
        the snapshot or the log replaces it (docs/design.md §13)."""
        config.validate()
        snapshots.validate()
        if node_id in peers:
            raise ValueError(f"node {node_id} lists itself among its peers")
        self.id = node_id
        self._first_membership = membership or Membership.of_voters([node_id, *peers])
        self.config = config
        self.unsafe = unsafe
        self.snapshots = snapshots
        self.sessions = sessions
        self._rng = rng

        state = persisted or PersistentState(HardState(0, None), ())
        snapshot = state.snapshot
        if state.log_offset > (snapshot.index if snapshot is not None else 0):
            covered = snapshot.index if snapshot is not None else 0
            raise ValueError(
                f"the log starts after index {state.log_offset} but the snapshot covers only "
                f"{covered}: entries {covered + 1}..{state.log_offset} are missing"
            )
        self._log = RaftLog(
            state.entries, offset=state.log_offset, offset_term=state.log_offset_term
        )
        # Everything in a snapshot is committed; a log that does not reach its last entry, or
        # holds another term there, has a tail that can never commit (a crash between an
        # install's snapshot and its log reset): the snapshot wins (etcd raft's restore()).
        self._log_reset: tuple[int, int] | None = None
        self._installed: SnapshotImage | None = None
        self._snapshot_index = self._snapshot_term = 0
        if snapshot is not None:
            self._snapshot_index, self._snapshot_term = snapshot.index, snapshot.term
            if self._log.term(snapshot.index) != snapshot.term:
                self._log.reset(snapshot.index, snapshot.term)
                self._log_reset = (snapshot.index, snapshot.term)
        # The index of the image handed out in a Ready whose outcome is not known yet (0: none),
        # and when a failed write may be tried again.
        self._snapshot_capture = 0
        self._snapshot_retry_at = LONG_AGO
        # Bytes of keys and values applied since the last image was taken (the size trigger).
        self._applied_bytes = 0
        self._compact_to = 0
        # When the commit index last advanced (the idle rule of SnapshotPolicy).
        self._last_commit_at = now
        self.term = state.hard_state.term
        self.voted_for = state.hard_state.voted_for
        self._hard_state_dirty = False
        # Rule 6: the largest ρ any node announced, ours included; it only grows.
        self._drift = max(config.max_clock_drift, state.hard_state.drift_bound)
        # Rule 2: the longest lease this node may still be bound by for some leader (persisted
        # with the hard state). It comes down only once every promise of it has run out: when
        # it was last recorded (or the node started) is `_bound_recorded_at`, and the longest
        # lease recorded since then is `_longest_since`.
        self._lease_bound = state.hard_state.lease_bound
        self._bound_recorded_at = now
        self._longest_since = 0.0
        # docs/design.md §8: a node whose disk was lost under a cluster that exists neither votes
        # nor acknowledges until re-admitted; its incarnation names this data directory.
        self.admitted = admitted
        self.incarnation = incarnation
        if self._last_log_term() > self.term:
            # Entries were made durable but the metadata naming their term was not (crash
            # between the two writes); no message depended on the lost metadata.
            self.term, self.voted_for = self._last_log_term(), None
            self._hard_state_dirty = True

        self.role = Role.FOLLOWER
        self.leader_id: NodeId | None = None
        # Figure 2's commitIndex. Committed entries are applied at once, so lastApplied is
        # always equal to it and is not kept separately.
        self.commit_index = self._snapshot_index
        # The state machine's configuration stays None (the cluster's first one) until an
        # entry changes it: so every node's images agree, a joined node's included, whose
        # first configuration is the one it joined with, not the cluster's (§13).
        self.state_machine = KeyValueStateMachine(
            snapshot, sessions, honour_resume=not unsafe.ignore_resume
        )
        # Present exactly while this node is leader.
        self._leader: LeaderState | None = None
        # Configuration entries in the log above the commit index, in index order: the last
        # one is in force (committed or not, Raft thesis §4.1); the committed one is the state
        # machine's. Derived (the shell never stores it): rebuilt here from the log.
        self._pending_configs: list[tuple[int, MembershipCommand]] = [
            (index, entry.command)
            for index in range(self.commit_index + 1, self._log.last_index + 1)
            if isinstance((entry := self._log.entry(index)).command, MembershipCommand)
        ]
        self._refresh_membership()

        # Log bookkeeping for Ready: entries from _unstable_from on are not yet handed out.
        self._unstable_from = self._log.last_index + 1
        self._log_changed = False
        self._persisted_length = self._log.last_index
        self._awaiting_advance = False
        self._ready_log_length = 0

        self._out = _Outbox()
        self._last_now = now

        # Rule 2: a restarted node has forgotten which leases it saw, so it assumes the longest
        # it may have promised: its own, or a longer one it recorded before.
        bound = config.lease_duration
        if not unsafe.forget_lease_bound:
            bound = max(bound, self._lease_bound)
        self._old_lease_end = LONG_AGO if unsafe.forget_lease_on_restart else now + bound
        self._reported_lease_mismatch: set[float] = set()
        self._election_deadline = NEVER
        self._reset_election_timer(now)
        # Leader stickiness: when this node last accepted an AppendEntries from its leader.
        self._leader_contact = LONG_AGO
        # PreVote: the peers that said they would vote for us in term + 1, while asking.
        self._pre_votes: set[NodeId] | None = None
        # Rule 8: the term whose election a leader's timeout_now started (lease handed off).
        self._handoff_term = 0

        # Candidate state.
        self._votes: set[NodeId] = set()
        self._vote_lease_bound = LONG_AGO

        # Rounds number a leader's broadcasts (rule 1). They keep increasing over the node's
        # life, across terms, so that no reply of an earlier leadership can vouch for a round.
        self._round = 0
        # Proposals waiting to apply, index -> (token, term). Kept across role changes: a node
        # that stepped down still learns whether its entry committed or was overwritten.
        self._pending_writes: dict[int, tuple[int, int]] = {}

        if snapshot is not None:
            after = self._log.last_index - snapshot.index
            self._out.events.append(
                events.SnapshotLoaded(self.id, snapshot.index, snapshot.term, after)
            )
        self._apply_committed(min(state.commit_index, self._log.last_index), announce=False)
        if self.commit_index > self._snapshot_index:
            self._out.events.append(
                events.Restored(self.id, self._log.last_index, self.commit_index)
            )
        if not admitted:
            self._out.events.append(events.NotAdmitted(self.id))

    # ------------------------------------------------------------------------------------------
    # Inputs

    def check_message(self, message: Message) -> str | None:
        """Why `message` would be dropped as malformed (validation.py), or None."""
        if self.unsafe.accept_malformed:
            return None
        members: Collection[NodeId] = self._known_ids
        sender = sender_of(message)
        if isinstance(message, AppendEntries | InstallSnapshot | RequestVote) and sender != self.id:
            # Raft thesis §4.1: a request is processed whatever this node's configuration says
            # of its sender (the shell authenticated it). A node that was cut off while the
            # configuration moved on, or that joined with an older one, must still follow a
            # leader it has not heard of; a reply, though, only comes from a node it asked.
            members = self._known_ids | {sender}
        return malformed(message, members)

    def step(self, message: Message, now: float) -> None:
        self._begin_input(now)
        problem = self.check_message(message)
        if problem is not None:
            self._out.events.append(events.ProtocolViolation(self.id, sender_of(message), problem))
            return
        if not self.admitted:
            self._answer_unadmitted(message)
            return
        self._adopt_drift(message.max_clock_drift)
        if (
            isinstance(message, RequestVote)
            and message.term > self.term
            and self._ignores_vote_request(message, now)
        ):
            return
        if (
            isinstance(message, AppendEntries)
            and message.term >= self.term
            and self._refuse_append(message)
        ):
            return
        if (
            isinstance(message, InstallSnapshot)
            and message.term >= self.term
            and self._refuse_snapshot(message)
        ):
            return
        if message.term > self.term and not _is_pre_vote_not_refusal(message):
            leader = (
                message.leader_id if isinstance(message, AppendEntries | InstallSnapshot) else None
            )
            self._become_follower(message.term, leader, now)
        if isinstance(message, AppendEntries):
            self._on_append_entries(message, now)
        elif isinstance(message, AppendEntriesReply):
            self._on_append_entries_reply(message, now)
        elif isinstance(message, RequestVote):
            self._on_request_vote(message, now)
        elif isinstance(message, RequestVoteReply):
            self._on_request_vote_reply(message, now)
        elif isinstance(message, InstallSnapshot):
            self._on_install_snapshot(message, now)
        else:
            self._on_install_snapshot_reply(message, now)

    def tick(self, now: float) -> None:
        self._begin_input(now)
        leader = self._leader
        if leader is None:
            if now >= self._election_deadline:
                if not self.admitted or self.id not in self._voters:
                    # It may not campaign: a lost disk (docs/design.md §8), or a learner or a
                    # removed member (§13). A leader silent for a whole election timeout is
                    # forgotten, as a campaign would, so that this term's leader is heard if
                    # the one it followed was not it (a forged message, §8).
                    self._reset_election_timer(now)
                    self.leader_id = None
                elif self.term >= MAX_TERM:
                    # The next term could not be represented (validation.MAX_TERM): stay a
                    # follower. A leader of this term, if there is one, can still serve.
                    self._out.events.append(events.TermExhausted(self.id, self.term))
                    self._reset_election_timer(now)
                elif self.unsafe.no_pre_vote or self._voters == {self.id}:
                    self._start_election(now)
                else:
                    self._start_pre_vote(now)
            return
        if now >= leader.quorum_check_at:
            # CheckQuorum: a leader that a majority has not answered for a whole election
            # timeout steps down, even inside its lease (which it then no longer renews).
            voters = self._counting_voters(leader, self._round)
            answered = sum(
                1
                for voter in voters
                if voter == self.id
                or ((p := leader.progress.get(voter)) is not None and p.recent_active)
            )
            for progress in leader.progress.values():
                progress.recent_active = False
            if answered < majority(len(voters)):
                timeout = self.config.election_timeout_min
                self._out.events.append(events.CheckQuorumFailed(self.id, timeout))
                self._become_follower(self.term, None, now)
                return
            leader.quorum_check_at = now + self.config.election_timeout_min
        if leader.transfer_target is not None and now >= leader.transfer_deadline:
            # Rule 8: the target did not take over in time. This leader released its lease,
            # so it steps down rather than serve on without one.
            self._out.events.append(events.TransferAborted(self.id, leader.transfer_target))
            self._become_follower(self.term, None, now)
            return
        if now >= leader.serving_from and now >= max(leader.lease_end, leader.step_down_grace_end):
            # Rule 5, with rule 7's grace for a leader that has just started serving.
            self._out.events.append(events.LeaseRenewalFailed(self.id))
            self._become_follower(self.term, None, now)
            return
        if now >= leader.serving_from and leader.noop_index == 0:
            self._start_serving(leader, now)
        if now >= leader.next_heartbeat:
            self._out.events.append(events.SendingHeartbeat(self.id))
            self._broadcast(leader, now, heartbeat=True)

    def propose(self, command: Command, now: float, token: int) -> ProposeResult:
        if isinstance(command, MembershipCommand):
            # Only change_membership may append one: it keeps the rules of docs/design.md §13.
            raise CoreMisuseError("propose() a MembershipCommand: use change_membership()")
        self._begin_input(now)
        leader = self._leader
        if leader is None:
            return Refused(Refusal.NOT_LEADER, self.leader_id)
        if leader.noop_index == 0:
            # Rule 3: nothing is appended before the old leader's lease has ended.
            return Refused(Refusal.WAITING_OLD_LEASE, self.id)
        if leader.transfer_target is not None:
            # Rule 8: the log stays still while the target catches up with it.
            return Refused(Refusal.NOT_LEADER, leader.transfer_target)
        if isinstance(command, DeleteCommand) and not self._cluster_upgraded():
            return Refused(Refusal.UNSUPPORTED, self.id)
        self._out.events.append(events.ReceivedRequest(self.id, describe_command(command)))
        index = self._append(command, now)
        self._pending_writes[index] = (token, self.term)
        leader.replicate_wanted = True
        return Accepted(index, self.term)

    def read(self, key: str, now: float, token: int) -> ReadValue | ReadPending | Refused:
        """Answer a GET now if it is safe to (rule 4), else refuse or (read_index) defer."""
        held = self._hold_read(key, now, token)
        return ReadValue(self.state_machine.get(key)) if held is None else held

    def read_range(
        self, prefix: str, start_after: str, limit: int, now: float, token: int
    ) -> ReadRange | ReadPending | Refused:
        """A LIST page, under exactly a GET's rules: the same permit, the same deferral in
        read_index mode. `limit` ≥ 1 (the shell checks the client's)."""
        if limit < 1:
            raise ValueError(f"a LIST needs a limit ≥ 1, got {limit}")
        query = RangeQuery(prefix, start_after, limit)
        held = self._hold_read(query, now, token)
        return self.state_machine.range(query) if held is None else held

    def read_image(self, now: float, token: int) -> SnapshotImage | ReadPending | Refused:
        """The whole state machine for a backup, under exactly a GET's rules: the image at the
        commit index when the read is served. It covers every write acknowledged before this
        call (a write is acknowledged only once applied, and the commit index only grows),
        which is what makes a backup linearizable. O(1): two references (state_machine.py)."""
        held = self._hold_read(IMAGE_QUERY, now, token)
        return self._image_at_commit() if held is None else held

    def _image_at_commit(self) -> SnapshotImage:
        index = self.commit_index
        return self.state_machine.image(index, self._term_at(index))

    def _answer(self, query: ReadQuery) -> ReadValue | ReadRange | SnapshotImage:
        """What a read asks, from the state machine as it is now (every committed entry is
        applied): the one place each query kind is answered, at once or deferred."""
        if isinstance(query, RangeQuery):
            return self.state_machine.range(query)
        if isinstance(query, ImageQuery):
            return self._image_at_commit()
        return ReadValue(self.state_machine.get(query))

    def _hold_read(self, query: ReadQuery, now: float, token: int) -> ReadPending | Refused | None:
        """The one read path, GET, LIST and IMAGE alike (rule 4): None when the read may be answered
        now (lease mode), else why not, or that it waits (read_index mode) for a round started
        after it and for the commit index of now to apply; `_serve_confirmed_reads` answers it.
        Appends nothing and changes no persistent state, so it may come at any time."""
        self._last_now = max(self._last_now, now)
        lease_mode = self.config.read_mode is ReadMode.LEASE
        leader = self._read_permit(now, need_lease=lease_mode)
        if isinstance(leader, Refused):
            return leader
        if lease_mode:
            return None
        leader.pending_reads.append(PendingRead(token, query, self.commit_index, self._round + 1))
        leader.read_round_wanted = True
        return ReadPending()

    def transfer_leadership(self, now: float, target: NodeId | None = None) -> str | None:
        """Start handing leadership to `target` (None: the most up-to-date follower), rule 8.
        Returns None when the transfer started, else why it cannot."""
        self._begin_input(now)
        leader = self._leader
        if leader is None:
            hint = f" (node {self.leader_id} is)" if self.leader_id is not None else ""
            return f"node {self.id} is not the leader{hint}"
        if not leader.progress:
            return "there is no other node to hand leadership to"
        if leader.transfer_target is not None:
            return f"a transfer to node {leader.transfer_target} is already under way"
        if leader.noop_index == 0:
            return "this leader is still waiting out the old leader's lease; try again shortly"
        # Only to a node that answers: a transfer to a dead node ends with this leader stepping
        # down (rule 8), so anyone allowed to ask could otherwise cost the cluster an election.
        silence = self.config.election_timeout_min
        answering = [
            p
            for p, pr in leader.progress.items()
            if now - pr.heard_at < silence and p in self._voters
        ]
        if target is None:
            if not answering:
                return f"no follower has answered within {silence}s"
            target = max(answering, key=lambda peer: (leader.progress[peer].match, -peer))
        elif target not in leader.progress:
            return f"node {target} is not another member of this cluster"
        elif target not in self._voters:
            return f"node {target} is a learner; only a voter can lead"
        elif target not in answering:
            return f"node {target} has not answered within {silence}s"
        behind = self._log.last_index - leader.progress[target].match
        if behind > self.config.max_entries_per_message:
            # It could not catch up before the transfer's deadline, and a transfer that fails
            # makes this leader step down (rule 8).
            return f"node {target} is {behind} entries behind; try again once it has caught up"
        leader.transfer_target = target
        leader.transfer_deadline = now + self.config.election_timeout_min
        leader.lease_released = not self.unsafe.transfer_keeps_lease
        self._out.events.append(events.TransferStarted(self.id, target, self.term))
        self._send_append(leader, target, leader.progress[target])
        return None

    # ------------------------------------------------------------------------------------------
    # The lease predicate (rule 4): the one test of whether a read may be served from the lease.

    def lease_read_refusal(self, now: float) -> Refused | None:
        """Why a GET cannot be answered from the lease at `now`, or None when it can."""
        permit = self._read_permit(now, need_lease=True)
        return permit if isinstance(permit, Refused) else None

    def serves_lease_reads(self, now: float) -> bool:
        """Whether this node would answer a GET from its lease at `now` (the simulator's
        "at most one lease holder" check uses this, the same predicate as `read`)."""
        return self.lease_read_refusal(now) is None

    def _read_permit(self, now: float, *, need_lease: bool) -> LeaderState | Refused:
        """The leader state to serve a read from, or why a read cannot be served at `now`."""
        leader = self._leader
        if leader is None:
            return Refused(Refusal.NOT_LEADER, self.leader_id)
        if leader.lease_released:
            # Rule 8: a leader that started a transfer serves no more lease reads this term.
            return Refused(Refusal.NOT_LEADER, leader.transfer_target)
        if now < leader.serving_from:
            return Refused(Refusal.WAITING_OLD_LEASE, self.id)
        noop_committed = leader.noop_index != 0 and self.commit_index >= leader.noop_index
        if not noop_committed and not self.unsafe.read_before_noop:
            return Refused(Refusal.NOT_READY, self.id)
        if need_lease and now >= leader.lease_end and not self.unsafe.read_without_lease:
            return Refused(Refusal.NO_LEASE, self.id)
        return leader

    # ------------------------------------------------------------------------------------------
    # Outputs

    def next_deadline(self) -> float:
        leader = self._leader
        idle = self._idle_at()
        if leader is None:
            return min(self._election_deadline, idle)
        checks = min(leader.quorum_check_at, leader.transfer_deadline, idle)
        if leader.noop_index == 0:
            return min(leader.serving_from, leader.next_heartbeat, checks)
        lease_check = max(leader.lease_end, leader.step_down_grace_end)
        return min(leader.next_heartbeat, lease_check, checks)

    def snapshot_saved(self, index: int, now: float) -> None:
        """The image of `Ready.snapshot` at `index` is durable (docs/design.md §12): the log
        may now be compacted up to it."""
        self._begin_input(now)
        if index == self._snapshot_capture:
            self._snapshot_capture = 0
        if index <= self._snapshot_index:
            return  # superseded by a later snapshot, or reported twice
        term = self._log.term(index)
        if term is None or index > self.commit_index:
            raise CoreMisuseError(f"snapshot_saved({index}) for no image this node handed out")
        self._snapshot_index, self._snapshot_term = index, term
        self._out.events.append(events.SnapshotSaved(self.id, index, term))
        self._compact()

    def snapshot_failed(self, index: int, now: float, reason: str) -> None:
        """Writing the image at `index` failed: keep the whole log, and try again after an
        election timeout (a full disk must not turn into a retry loop)."""
        self._begin_input(now)
        if index != self._snapshot_capture:
            return
        self._snapshot_capture = 0
        self._snapshot_retry_at = now + self.config.election_timeout_max
        self._out.events.append(events.SnapshotFailed(self.id, index, reason))

    def snapshot_send_failed(self, peer_id: NodeId, now: float) -> None:
        """Streaming a snapshot to `peer_id` failed (stream broken, deadline passed): probe the
        follower again; a new transfer starts only once it answers."""
        self._begin_input(now)
        leader = self._leader
        progress = leader.progress.get(peer_id) if leader is not None else None
        if progress is None or progress.state is not ProgressState.SNAPSHOT:
            return
        self._out.events.append(events.SnapshotSendFailed(self.id, peer_id))
        progress.snapshot_done(0)
        # Another transfer only once the follower answers again: a dead or unreachable node
        # would otherwise be sent one at every heartbeat for an election timeout.
        progress.heard_at = LONG_AGO

    def has_ready(self) -> bool:
        leader = self._leader
        return bool(
            self._hard_state_dirty
            or self._log_changed
            or self._out.messages
            or self._out.replies
            or self._out.applied
            or self._out.events
            or (leader is not None and (leader.replicate_wanted or leader.read_round_wanted))
            or self._log_reset is not None
            or self._compact_to > 0
            or self._snapshot_due()
            or self._idle_compaction_due()
        )

    def take_ready(self) -> Ready:
        if self._awaiting_advance:
            raise CoreMisuseError("take_ready called again before advance")
        leader = self._leader
        if leader is not None and (leader.replicate_wanted or leader.read_round_wanted):
            self._broadcast(leader, self._last_now)
            leader.replicate_wanted = leader.read_round_wanted = False
        if self._idle_compaction_due():
            self._compact(up_to=self._rest_compaction_target(), trailing=0)
        image = self._capture_snapshot() if self._snapshot_due() else None
        out, self._out = self._out, _Outbox()
        hard_state = self.hard_state if self._hard_state_dirty else None
        messages = tuple(out.messages)
        if hard_state is not None or not (self._log_changed or self._log_reset is not None):
            # After a term or vote change every message waits for the disk; with nothing to
            # persist, "after persisting" is now.
            send_now, send_after = ((), messages) if hard_state is not None else (messages, ())
        else:
            send_now = tuple(e for e in messages if isinstance(e.message, AppendEntries))
            send_after = tuple(e for e in messages if not isinstance(e.message, AppendEntries))
        ready = Ready(
            hard_state=hard_state,
            first_index=self._unstable_from,
            entries=tuple(self._log.slice(self._unstable_from, self._log.last_index + 1)),
            log_changed=self._log_changed,
            commit_index=self.commit_index,
            send_now=send_now,
            send_after_persist=send_after,
            replies=tuple(out.replies),
            applied=tuple(out.applied),
            events=tuple(out.events),
            installed=self._installed,
            log_reset=self._log_reset,
            snapshot=image,
            compact_to=self._compact_to,
        )
        self._log_reset = None
        self._installed = None
        self._compact_to = 0
        self._hard_state_dirty = False
        self._log_changed = False
        self._unstable_from = self._log.last_index + 1
        self._ready_log_length = self._log.last_index
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
            if self._leader is not None:
                self._maybe_commit()

    def status(self, now: float) -> NodeStatus:
        leader = self._leader
        return NodeStatus(
            node_id=self.id,
            role=self.role,
            term=self.term,
            leader_id=self.id if leader is not None else self.leader_id,
            voted_for=self.voted_for,
            log_length=self._log.last_index,
            commit_index=self.commit_index,
            last_applied=self.commit_index,
            lease_remaining=max(0.0, leader.lease_end - now) if leader is not None else 0.0,
            waiting_for_old_lease=(
                max(0.0, leader.serving_from - now) if leader is not None else 0.0
            ),
            snapshot_index=self._snapshot_index,
            first_index=self._log.first_index,
        )

    @property
    def log(self) -> RaftLog:
        """The log, read-only for callers (the simulator's checker, status)."""
        return self._log

    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.voted_for, self._lease_bound, self._drift)

    @property
    def lease_bound(self) -> float:
        """The longest lease this node has recorded for a leader (rule 2); after a restart it
        assumes max(this, its own configured lease)."""
        return self._lease_bound

    @property
    def drift_bound(self) -> float:
        """The clock drift bound ρ this node uses: the largest any node announced, its own
        configured one included (rule 6)."""
        return self._drift

    # ------------------------------------------------------------------------------------------
    # Role changes

    def _become_follower(self, term: int, leader_id: NodeId | None, now: float) -> None:
        leader = self._leader
        if leader is not None:
            self._out.events.append(events.SteppingDown(self.id, term))
            for read in leader.pending_reads:
                self._out.replies.append(
                    ClientReply(read.token, Refused(Refusal.NOT_LEADER, leader_id))
                )
        if term != self.term:
            self.term = term
            self.voted_for = None
            self._hard_state_dirty = True
        if self.role is not Role.FOLLOWER:
            # A follower keeps its deadline: a higher term alone (say, a denied candidate's) is
            # no news of a leader, and resetting on it would let stale candidates stall elections.
            self._reset_election_timer(now)
        self.role = Role.FOLLOWER
        self.leader_id = leader_id
        self._pre_votes = None
        self._leader = None  # the one reset path: everything a leader kept goes at once

    def _start_pre_vote(self, now: float) -> None:
        """PreVote (Raft thesis §9.6): ask whether a majority would vote for us in the next
        term, without raising ours, so that a node that cannot win never deposes a leader."""
        self._out.events.append(events.PreVoteStarted(self.id, self.term + 1))
        # A candidate whose election timed out gives it up: late votes of that term must not
        # make it leader while it asks about the next one.
        self.role = Role.FOLLOWER
        self.leader_id = None
        self._pre_votes = {self.id}
        self._reset_election_timer(now)
        request = RequestVote(
            self.term + 1,
            self.id,
            self._log.last_index,
            self._last_log_term(),
            pre_vote=True,
            max_clock_drift=self._drift,
        )
        self._out.messages.extend(Envelope(peer, request) for peer in self._other_voters())

    def _start_election(self, now: float, *, transfer: bool = False) -> None:
        self._out.events.append(events.ElectionTimeout(self.id))
        self.role = Role.CANDIDATE
        self.term += 1
        self.voted_for = self.id
        self.leader_id = None
        self._hard_state_dirty = True
        self._pre_votes = None
        self._votes = {self.id} & self._voters
        self._vote_lease_bound = LONG_AGO
        self._reset_election_timer(now)
        request = RequestVote(
            self.term,
            self.id,
            self._log.last_index,
            self._last_log_term(),
            transfer=transfer,
            max_clock_drift=self._drift,
        )
        self._out.messages.extend(Envelope(peer, request) for peer in self._other_voters())
        if len(self._votes) >= self._quorum:
            self._become_leader(now)

    def _become_leader(self, now: float) -> None:
        self.role = Role.LEADER
        self.leader_id = self.id
        self._pre_votes = None
        self._out.events.append(events.BecameLeader(self.id, self.term))
        leader = LeaderState.elected(self.peer_ids, self._log.last_index, self._round)
        leader.elected_voters = self._voters
        last_term_entry = self._log.last_index > self._log.offset
        last_time = self._log.entry(self._log.last_index).time if last_term_entry else 0
        # Stamps along a log never decrease: start from the largest in ours (the last entry's,
        # or, with none held, what the state machine applied, which covers the compacted ones).
        leader.time_base = leader.last_stamp = max(last_time, self.state_machine.cluster_time)
        leader.time_origin = now
        if not self.unsafe.no_pre_vote:
            leader.quorum_check_at = now + self.config.election_timeout_min
        self._leader = leader
        # Rule 3: wait out every lease a voter (or we) may still be bound by, in both read
        # modes: a lease-mode leader may still serve while a read_index one takes over. Rule 8:
        # an election started by a serving leader's timeout_now has nothing to wait for.
        wait_until = max(self._old_lease_end, self._vote_lease_bound)
        if self.unsafe.skip_lease_wait or self._handoff_term == self.term:
            wait_until = now
        leader.serving_from = max(now, wait_until)
        # Rule 7: the first lease can only come from a round sent once serving has begun.
        leader.step_down_grace_end = leader.serving_from + self._leader_lease_span
        if leader.serving_from > now:
            self._out.events.append(events.WaitingForOldLease())
            # Heartbeats during the wait keep followers from starting needless elections.
            self._broadcast(leader, now)
        else:
            self._start_serving(leader, now)

    def _start_serving(self, leader: LeaderState, now: float) -> None:
        leader.noop_index = self._append(NO_OP, now)
        self._broadcast(leader, now)

    # ------------------------------------------------------------------------------------------
    # Message handlers

    def _on_append_entries(self, msg: AppendEntries, now: float) -> None:
        if msg.term < self.term:
            # Round 0: this reply must not vouch for any round of a later leader (or of a
            # restarted one whose round counter started again).
            reply = AppendEntriesReply(
                self.term, self.id, False, 0, 0, 0, features=PROTOCOL_FEATURES
            )
            self._out.messages.append(Envelope(msg.leader_id, reply))
            return
        self._hear_from_leader(msg, now)

        if msg.prev_log_index > self._log.last_index:
            self._reject_append(msg, conflict=self._log.last_index + 1)
            return
        if msg.prev_log_index > self._log.offset:
            local_term = self._log.term(msg.prev_log_index)
            if local_term != msg.prev_log_term:
                self._reject_append(msg, conflict=self._first_index_of_term(msg.prev_log_index))
                return

        conflict = self._first_conflict(msg)
        if conflict is not None:
            self._truncate_from(conflict)
        last_new = msg.prev_log_index + len(msg.entries)
        if last_new > self._log.last_index:
            first_new = self._log.last_index + 1
            self._log.extend(msg.entries[first_new - msg.prev_log_index - 1 :])
            self._unstable_from = min(self._unstable_from, first_new)
            self._log_changed = True
            self._note_appended_configs(first_new, last_new)
        self._out.events.append(events.AppendAccepted(self.id, msg.leader_id))
        if msg.leader_commit > self.commit_index:
            self._apply_committed(min(msg.leader_commit, last_new))
        self._reply_append(msg, success=True, match=last_new, conflict=0)
        if msg.timeout_now and self.term < MAX_TERM and self.id in self._voters:
            # Rule 8: our log now holds the leader's whole log, and the leader serves no more
            # lease reads: campaign at once, with the lease handed off for the next term.
            self._handoff_term = self.term + 1
            self._out.events.append(
                events.TimeoutNowReceived(self.id, msg.leader_id, self._handoff_term)
            )
            self._start_election(now, transfer=True)

    def _refuse_append(self, msg: AppendEntries) -> bool:
        """Stateful checks of an AppendEntries of our term or later, made before anything
        changes (docs/design.md §8). A refused message is still answered, as the shell expects
        one reply per AppendEntries: unsuccessful, round 0 (it vouches for no round, so it
        renews no lease, rule 1) and conflict index 0 (the leader moves nothing). The term is
        not adopted and the election timer not reset: a message we refuse is no news of a
        leader we can follow (rule 2)."""
        problem = self._append_problem(msg)
        if problem is None:
            return False
        self._out.events.append(events.ProtocolViolation(self.id, msg.leader_id, problem))
        self._out.messages.append(Envelope(msg.leader_id, self._refusal_reply(self.term)))
        return True

    def _hear_from_leader(self, msg: AppendEntries | InstallSnapshot, now: float) -> None:
        """A message of this term's leader (already checked): follow it, reset the election
        timer, and record its lease (rule 2)."""
        if self.role is not Role.FOLLOWER or self.leader_id != msg.leader_id:
            self._become_follower(msg.term, msg.leader_id, now)
        self._reset_election_timer(now)
        self._leader_contact = now
        self._record_old_lease(msg, now)

    def _on_install_snapshot(self, msg: InstallSnapshot, now: float) -> None:
        if msg.term < self.term:
            self._reply_snapshot(msg, match=0, term=self.term)
            return
        # Every chunk is news of the leader, as an AppendEntries is (Raft thesis §5.3). Its
        # reply vouches for no round, so a chunk never renews a lease; heartbeats go on doing that.
        self._hear_from_leader(msg, now)
        image = msg.image
        if image is None:
            self._reply_snapshot(msg, match=0)
            return
        if image.index <= self.commit_index:
            # Stale or duplicate: this node already has all of it (etcd raft's restore()).
            self._reply_snapshot(msg, match=self.commit_index)
            return
        if self._log.term(image.index) == image.term:
            # The log already holds the snapshot's last entry: it and everything before it
            # are committed; the entries after it stay (they may be the leader's too).
            self._apply_committed(image.index)
            self._reply_snapshot(msg, match=image.index)
            return
        self._install(image)
        self._reply_snapshot(msg, match=image.index)

    def _install(self, image: SnapshotImage) -> None:
        """Replace the state machine and the whole log by the leader's snapshot."""
        self._out.events.append(events.SnapshotInstalled(self.id, image.index, image.term))
        self.state_machine = KeyValueStateMachine(
            image, self.sessions, honour_resume=not self.unsafe.ignore_resume
        )
        self._log.reset(image.index, image.term)
        self.commit_index = self._snapshot_index = image.index
        self._snapshot_term = image.term
        self._installed = image
        self._log_reset = (image.index, image.term)
        self._pending_configs = []
        self._refresh_membership()
        self._applied_bytes = 0
        self._unstable_from = image.index + 1
        self._persisted_length = image.index
        self._log_changed = False
        # Whatever this node proposed as an earlier leader is gone from its log: the outcome
        # is for the cluster to know (the entry may or may not be in the snapshot).
        for index in sorted(self._pending_writes):
            token, _ = self._pending_writes.pop(index)
            lost = Refused(Refusal.ENTRY_LOST, self.leader_id)
            self._out.replies.append(ClientReply(token, lost))

    def _reply_snapshot(self, msg: InstallSnapshot, *, match: int, term: int | None = None) -> None:
        reply = InstallSnapshotReply(
            self.term if term is None else term,
            self.id,
            msg.last_index,
            msg.done,
            match,
            max_clock_drift=self._drift,
            incarnation=self.incarnation,
        )
        self._out.messages.append(Envelope(msg.leader_id, reply))

    def _refusal_reply(self, term: int) -> AppendEntriesReply:
        """Unsuccessful, round 0 (vouches for no round, renews no lease), conflict index 0
        (moves nothing at the leader)."""
        return AppendEntriesReply(
            term,
            self.id,
            False,
            0,
            0,
            0,
            max_clock_drift=self._drift,
            incarnation=self.incarnation,
            features=PROTOCOL_FEATURES,
        )

    def _answer_unadmitted(self, message: Message) -> None:
        """docs/design.md §8: a node whose disk was lost acknowledges nothing and votes for
        no one, answering in the sender's own term so that it deposes no one either (for a
        pre-vote that is the asked term minus one: a refusal in the asked term would raise the
        asker's term, and the asker would then depose its leader)."""
        if isinstance(message, AppendEntries):
            reply: Message = self._refusal_reply(message.term)
            self._out.messages.append(Envelope(message.leader_id, reply))
        elif isinstance(message, InstallSnapshot):
            self._reply_snapshot(message, match=0, term=message.term)
        elif isinstance(message, RequestVote):
            term = max(1, message.term - 1) if message.pre_vote else message.term
            reply = RequestVoteReply(term, self.id, False, 0.0, pre_vote=message.pre_vote)
            self._out.messages.append(Envelope(message.candidate_id, reply))

    def _adopt_drift(self, rho: float) -> None:
        # Rule 6: the cluster's ρ is the largest any node announces; it is persisted.
        if rho > self._drift:
            self._drift = rho
            self._hard_state_dirty = True

    def _ignores_vote_request(self, msg: RequestVote, now: float) -> bool:
        """Leader stickiness (Raft thesis §4.2.3, with PreVote §9.6): a node that heard from a
        leader within the minimum election timeout, or is one, refuses a vote or pre-vote for a
        later term without adopting that term, unless a leader's timeout_now started it."""
        if self.unsafe.no_pre_vote or msg.transfer:
            return False
        if self._leader is not None:
            leader = self.id
        elif (
            self.leader_id is not None
            and now < self._leader_contact + self.config.election_timeout_min
        ):
            leader = self.leader_id
        else:
            return False
        kind = "pre-vote" if msg.pre_vote else "vote"
        self._out.events.append(
            events.VoteIgnored(self.id, kind, msg.candidate_id, msg.term, leader)
        )
        reply = RequestVoteReply(
            self.term,
            self.id,
            False,
            0.0,
            pre_vote=msg.pre_vote,
            max_clock_drift=self._drift,
        )
        self._out.messages.append(Envelope(msg.candidate_id, reply))
        return True

    def _second_leader_problem(self, msg: AppendEntries | InstallSnapshot) -> str | None:
        if msg.term == self.term:
            if self.role is Role.LEADER:
                return f"a second leader in term {msg.term} (this node leads it)"
            if self.leader_id is not None and self.leader_id != msg.leader_id:
                return f"a second leader in term {msg.term} (node {self.leader_id} leads it)"
        return None

    def _refuse_snapshot(self, msg: InstallSnapshot) -> bool:
        """As `_refuse_append`: a chunk from a second leader of a term is refused, answered
        with nothing installed, and changes nothing."""
        problem = self._second_leader_problem(msg)
        if problem is None:
            return False
        self._out.events.append(events.ProtocolViolation(self.id, msg.leader_id, problem))
        self._reply_snapshot(msg, match=0, term=self.term)
        return True

    def _append_problem(self, msg: AppendEntries) -> str | None:
        problem = self._second_leader_problem(msg)
        if problem is not None:
            return problem
        if not self._matches_prev(msg):
            return None  # the log-matching rule rejects it, changing nothing
        conflict = self._first_conflict(msg)
        if conflict is not None and conflict <= self.commit_index:
            entry = msg.entries[conflict - msg.prev_log_index - 1]
            return (
                f"entry {conflict} (term {entry.term}) conflicts with a committed entry "
                f"(term {self._log.term(conflict)}, commit index {self.commit_index})"
            )
        return None

    def _matches_prev(self, msg: AppendEntries) -> bool:
        """Log matching: we hold the entry before `msg.entries`, with the leader's term."""
        prev = msg.prev_log_index
        # Entries up to the compaction point are committed, so every legitimate leader has them.
        return prev <= self._log.offset or self._log.term(prev) == msg.prev_log_term

    def _first_conflict(self, msg: AppendEntries) -> int | None:
        """The first index where an entry of `msg` differs in term from ours (only such a real
        conflict truncates; a stale or duplicated message never does), or None."""
        for index, entry in enumerate(msg.entries, start=msg.prev_log_index + 1):
            if index <= self._log.offset:
                continue  # committed and compacted: the same entry in every legitimate log
            if index > self._log.last_index:
                return None
            if self._log.term(index) != entry.term:
                return index
        return None

    def _record_old_lease(self, msg: AppendEntries | InstallSnapshot, now: float) -> None:
        # Rule 2: keep the longest lease seen from any leader of any term, as long as the leader
        # claims it (validation caps it at MAX_LEASE_DURATION), whatever our own flags say; and
        # remember the longest for after a restart.
        lease = msg.lease_duration
        if lease != self.config.lease_duration:
            reported = self._reported_lease_mismatch
            if lease not in reported and len(reported) < _MAX_REPORTED_LEASES:
                reported.add(lease)
                own = self.config.lease_duration
                self._out.events.append(events.LeaseMismatch(msg.leader_id, lease, own))
        self._old_lease_end = max(self._old_lease_end, now + lease)
        if lease >= self._lease_bound:
            if lease > self._lease_bound:
                self._lease_bound = lease
                self._hard_state_dirty = True
            self._bound_recorded_at, self._longest_since = now, 0.0
            return
        self._longest_since = max(self._longest_since, lease)
        if now >= self._bound_recorded_at + self._lease_bound:
            # Every promise of the longer bound has run out (a rolling change shortened the
            # lease): from now on a restart need only assume the longest lease since.
            self._lease_bound = self._longest_since
            self._bound_recorded_at, self._longest_since = now, 0.0
            self._hard_state_dirty = True

    def _reject_append(self, msg: AppendEntries, conflict: int) -> None:
        self._out.events.append(events.AppendRejected(self.id, msg.leader_id))
        self._reply_append(msg, success=False, match=0, conflict=conflict)

    def _reply_append(
        self, msg: AppendEntries, *, success: bool, match: int, conflict: int
    ) -> None:
        reply = AppendEntriesReply(
            self.term,
            self.id,
            success,
            match,
            conflict,
            msg.round,
            max_clock_drift=self._drift,
            incarnation=self.incarnation,
            features=PROTOCOL_FEATURES,
        )
        self._out.messages.append(Envelope(msg.leader_id, reply))

    def _on_append_entries_reply(self, msg: AppendEntriesReply, now: float) -> None:
        leader = self._leader
        if msg.term < self.term or leader is None:
            return
        progress = leader.progress.get(msg.follower_id)
        if progress is None:
            return
        problem = None
        if msg.success and msg.match_index > self._log.last_index:
            problem = (
                f"match_index {msg.match_index} is beyond this leader's log "
                f"({self._log.last_index})"
            )
        elif not msg.success and msg.conflict_index > self._log.last_index + 1:
            problem = (
                f"conflict_index {msg.conflict_index} is beyond this leader's log "
                f"({self._log.last_index}) + 1"
            )
        if problem is not None:
            self._out.events.append(events.ProtocolViolation(self.id, msg.follower_id, problem))
            return
        progress.features = msg.features
        if msg.incarnation != progress.incarnation:
            if progress.incarnation and msg.incarnation:
                old, new = f"{progress.incarnation:x}", f"{msg.incarnation:x}"
                self._out.events.append(events.PeerReplaced(self.id, msg.follower_id, old, new))
                progress.forget(self._log.last_index)
            progress.incarnation = msg.incarnation or progress.incarnation
        if msg.round > 0:
            # An answer that vouches for a round: a round-0 refusal (a node that is not
            # admitted, or refuses this leader) is no sign of a follower that can take part.
            progress.recent_active = True
            progress.heard_at = now
        # Rule 1: an answer in our term vouches for its round, whether or not the log matched.
        if self._round >= msg.round > progress.acked_round:
            progress.acked_round = msg.round
            self._on_round_acked(leader, now)
        if msg.success:
            advanced = progress.on_success(msg.match_index, msg.round)
            if advanced:
                self._maybe_commit()
                if self._leader is not leader:
                    return  # its own removal committed: it stepped down
            # Only entries, or the timeout_now of a target that has just caught up: an empty
            # append answering a success would be answered by another success, and so on for
            # as long as the window stays full (etcd's maybeSendAppend(sendIfEmpty=false)).
            caught_up = advanced and self._timeout_now_due(leader, msg.follower_id)
            if progress.next_send(self._log.last_index, self._window)[1] or caught_up:
                self._send_append(leader, msg.follower_id, progress)
        elif (
            msg.conflict_index > 0
            and progress.on_rejection(msg.conflict_index, msg.round)
            # When nothing can catch it up now (a follower of the previous release behind the
            # compaction point), the next heartbeat goes, not a reject/resend loop.
            and (progress.next - 1 >= self._log.offset or self._may_send_snapshot(progress))
        ):
            self._send_append(leader, msg.follower_id, progress)

    def _on_request_vote(self, msg: RequestVote, now: float) -> None:
        up_to_date = (msg.last_log_term, msg.last_log_index) >= (
            self._last_log_term(),
            self._log.last_index,
        )
        if msg.pre_vote:
            # Answer as a vote for msg.term would be answered, changing nothing here.
            granted = msg.term > self.term and up_to_date
            reply_term = msg.term if granted else self.term
            pre_vote_reply = RequestVoteReply(
                reply_term, self.id, granted, 0.0, pre_vote=True, max_clock_drift=self._drift
            )
            self._out.messages.append(Envelope(msg.candidate_id, pre_vote_reply))
            return
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
            self._out.events.append(events.VoteGranted(msg.candidate_id, msg.term))
        else:
            self._out.events.append(events.VoteDenied(msg.candidate_id, msg.term))
        # Rule 3: the voter tells the candidate how long it still owes to an old leader.
        remaining = max(0.0, self._old_lease_end - now)
        reply = RequestVoteReply(self.term, self.id, grant, remaining, max_clock_drift=self._drift)
        self._out.messages.append(Envelope(msg.candidate_id, reply))

    def _on_request_vote_reply(self, msg: RequestVoteReply, now: float) -> None:
        if msg.pre_vote:
            pre_votes = self._pre_votes
            if pre_votes is None or not msg.granted or msg.term != self.term + 1:
                return
            if msg.voter_id not in self._voters:
                return
            pre_votes.add(msg.voter_id)
            if len(pre_votes) >= self._quorum:
                self._start_election(now)
            return
        if self.role is not Role.CANDIDATE or msg.term != self.term or not msg.granted:
            return
        if msg.voter_id not in self._voters:
            return  # a learner's or a former member's vote counts toward no majority
        # A voter owes at most MAX_LEASE_DURATION (validation), so rule 3 never waits longer.
        self._votes.add(msg.voter_id)
        # Stretch the voter's remaining time by the worst drift between its clock and ours.
        bound = now + msg.old_lease_remaining * drift_stretch(self._drift)
        self._vote_lease_bound = max(self._vote_lease_bound, bound)
        if len(self._votes) >= self._quorum:
            self._become_leader(now)

    # ------------------------------------------------------------------------------------------
    # Leader: replication, rounds and the lease

    def _broadcast(self, leader: LeaderState, now: float, *, heartbeat: bool = False) -> None:
        """Start a new round: one AppendEntries to every peer, carrying the lease duration."""
        self._round += 1
        if now >= leader.serving_from:
            leader.round_sent_at[self._round] = now
            leader.round_voters[self._round] = self._voters
            if self.unsafe.renew_lease_on_send:
                leader.lease_end = max(leader.lease_end, now + self._leader_lease_span)
        leader.next_heartbeat = now + self.config.heartbeat_interval
        for peer_id, progress in leader.progress.items():
            if heartbeat:
                progress.on_heartbeat()
            self._send_append(leader, peer_id, progress)
        self._on_round_acked(leader, now)  # a cluster of one is its own majority

    def _send_append(self, leader: LeaderState, peer_id: NodeId, progress: Progress) -> None:
        """The one place that decides what a follower is sent next."""
        limit = self.config.max_entries_per_message
        prev_index, with_entries = progress.next_send(self._log.last_index, window=self._window)
        if prev_index < self._log.offset:
            # The follower needs entries compacted away: only a snapshot can catch it up
            # (Raft thesis §5.3). Meanwhile it is sent heartbeats anchored where this leader
            # still knows the term, which keep its election timer and the lease going.
            if self._may_send_snapshot(progress):
                self._send_snapshot(peer_id, progress)
            prev_index, with_entries = self._log.offset, False
        entries = self._batch_from(prev_index, limit) if with_entries else []
        progress.sent(prev_index, len(entries))
        message = AppendEntries(
            term=self.term,
            leader_id=self.id,
            prev_log_index=prev_index,
            prev_log_term=self._term_at(prev_index),
            entries=tuple(entries),
            leader_commit=self.commit_index,
            lease_duration=self.config.lease_duration,
            round=self._round,
            # Rule 8: once this message brings the target level with our whole log.
            timeout_now=(
                leader.transfer_target == peer_id
                and prev_index + len(entries) == self._log.last_index
            ),
            max_clock_drift=self._drift,
        )
        self._out.messages.append(Envelope(peer_id, message))

    def _cluster_upgraded(self) -> bool:
        """Whether every node runs a version with snapshots and sessions (DELETE, stamped
        cluster time): every follower announced it in this term, or a stamped entry was applied,
        which a leader appended only when every follower had (downgrades are unsupported). The
        latter keeps a follower that is down, or has not answered yet, from turning them off."""
        leader = self._leader
        if leader is None:
            return False
        if self.state_machine.cluster_time > 0 or leader.time_base > 0:
            return True
        return all(p.features & FEATURE_SNAPSHOTS_AND_SESSIONS for p in leader.progress.values())

    def _may_send_snapshot(self, progress: Progress) -> bool:
        """A follower that needs compacted entries gets a snapshot if none is being sent to it,
        it answered within an election timeout (no transfers to a dead node), and its version
        understands InstallSnapshot."""
        answering = self._last_now - progress.heard_at < self.config.election_timeout_min
        understands = progress.features & FEATURE_SNAPSHOTS_AND_SESSIONS
        return progress.state is not ProgressState.SNAPSHOT and answering and bool(understands)

    def _send_snapshot(self, peer_id: NodeId, progress: Progress) -> None:
        # The intent: the shell streams the durable snapshot.txt in chunks, each stamped
        # with this term and lease (its header, not this message, says which index it holds).
        index, term = self._snapshot_index, self._snapshot_term
        progress.become_snapshot(index)
        intent = InstallSnapshot(
            self.term,
            self.id,
            index,
            term,
            self.config.lease_duration,
            max_clock_drift=self._drift,
        )
        self._out.messages.append(Envelope(peer_id, intent))
        self._out.events.append(events.SnapshotSending(self.id, peer_id, index, term))

    def _on_install_snapshot_reply(self, msg: InstallSnapshotReply, now: float) -> None:
        leader = self._leader
        if msg.term < self.term or leader is None or not msg.done:
            return
        progress = leader.progress.get(msg.follower_id)
        if progress is None:
            return
        if msg.match_index > self._log.last_index:
            problem = (
                f"match_index {msg.match_index} is beyond this leader's log "
                f"({self._log.last_index})"
            )
            self._out.events.append(events.ProtocolViolation(self.id, msg.follower_id, problem))
            return
        if progress.state is ProgressState.SNAPSHOT:
            progress.snapshot_done(msg.match_index)
        else:
            progress.on_success(msg.match_index)
        self._maybe_commit()
        self._send_append(leader, msg.follower_id, progress)

    def _timeout_now_due(self, leader: LeaderState, peer_id: NodeId) -> bool:
        """The transfer target has just caught up: tell it to campaign without waiting for the
        next heartbeat."""
        return (
            leader.transfer_target == peer_id
            and leader.progress[peer_id].match == self._log.last_index
        )

    @property
    def _window(self) -> int:
        """Entries a leader streams to one follower before waiting for its answers."""
        return 4 * self.config.max_entries_per_message

    @property
    def _leader_lease_span(self) -> float:
        return lease_span(self.config.lease_duration, self._drift)

    def _batch_from(self, prev_index: int, limit: int) -> list[LogEntry]:
        batch = list(self._log.slice(prev_index + 1, prev_index + 1 + limit))
        budget = self.config.max_message_chars
        for count, entry in enumerate(batch):
            command = entry.command
            if isinstance(command, SetCommand):
                budget -= len(command.key) + len(command.value)
            elif isinstance(command, DeleteCommand):
                budget -= len(command.key)
            if budget < 0 and count > 0:
                return batch[:count]
        return batch

    def _on_round_acked(self, leader: LeaderState, now: float) -> None:
        quorum_round = self._quorum_round(leader)
        if quorum_round <= leader.quorum_round:
            return
        leader.quorum_round = quorum_round
        sent_at = leader.round_sent_at.get(quorum_round)
        if sent_at is not None:
            # Rule 1: the lease runs from the round's send time, never from the ack's arrival.
            start = now if self.unsafe.lease_from_ack_time else sent_at
            leader.lease_end = max(leader.lease_end, start + self._leader_lease_span)
        for r in [r for r in leader.round_sent_at if r < quorum_round]:
            del leader.round_sent_at[r]
        for r in [r for r in leader.round_voters if r < quorum_round]:
            del leader.round_voters[r]
        self._serve_confirmed_reads(leader)

    def _quorum_round(self, leader: LeaderState) -> int:
        """The highest round that a majority of the voters in force when it was sent has
        answered, this leader counting itself if it was one (docs/design.md §13: a lease is
        renewed only by a majority of the configuration in force for its round)."""
        acked = {peer: progress.acked_round for peer, progress in leader.progress.items()}
        acked[self.id] = self._round
        for candidate in sorted(set(acked.values()), reverse=True):
            if candidate <= leader.quorum_round:
                break
            voters = self._counting_voters(leader, candidate)
            answered = sum(1 for voter in voters if acked.get(voter, 0) >= candidate)
            if answered >= majority(len(voters)):
                return candidate
        return leader.quorum_round

    def _counting_voters(self, leader: LeaderState, round_: int) -> frozenset[NodeId]:
        """Whose answers count for `round_`: the voters in force when it was sent (the current
        ones for a round sent during the old-lease wait, which renews nothing)."""
        if self.unsafe.lease_from_old_config:
            return leader.elected_voters
        return leader.round_voters.get(round_, self._voters)

    def _serve_confirmed_reads(self, leader: LeaderState) -> None:
        still_waiting = []
        for read in leader.pending_reads:
            if read.round <= leader.quorum_round and self.commit_index >= read.read_index:
                self._out.replies.append(ClientReply(read.token, self._answer(read.query)))
            else:
                still_waiting.append(read)
        leader.pending_reads = still_waiting

    def _maybe_commit(self) -> None:
        leader = self._leader
        if leader is None:
            return
        voters = self._voters
        matches = [p.match for peer, p in leader.progress.items() if peer in voters]
        if self.id in voters:
            matches.append(self._persisted_length)
        candidate = quorum_value(matches, majority(len(voters)))
        if candidate > self.commit_index and self._log.term(candidate) == self.term:
            self._apply_committed(candidate)
            if self._leader is leader:  # not if its own removal committed (it stepped down)
                self._serve_confirmed_reads(leader)

    # ------------------------------------------------------------------------------------------
    # Log and state machine

    def _append(self, command: Command, now: float) -> int:
        leader = self._leader
        time = 0
        # Stamped only once every follower's version keeps cluster time too (a rolling upgrade
        # from before it): its session table would differ from ours otherwise.
        if leader is not None and self._cluster_upgraded():
            elapsed = max(0.0, now - leader.time_origin) * (1 - self._drift)
            time = max(leader.last_stamp, leader.time_base + int(elapsed * 1000))
            leader.last_stamp = time
        index = self._log.append(LogEntry(self.term, command, time))
        self._unstable_from = min(self._unstable_from, index)
        self._log_changed = True
        if isinstance(command, MembershipCommand):
            self._note_appended_configs(index, index)
        return index

    def _truncate_from(self, index: int) -> None:
        # Never at or below the commit index: _append_problem refuses such a message first.
        self._log.truncate_from(index)
        self._unstable_from = min(self._unstable_from, index)
        self._persisted_length = min(self._persisted_length, index - 1)
        self._log_changed = True
        dropped = [i for i, _ in self._pending_configs if i >= index]
        if dropped:
            self._pending_configs = [(i, c) for i, c in self._pending_configs if i < index]
            self._refresh_membership()
            self._out.events.append(
                events.MembershipReverted(self.id, dropped[0], self.membership.describe())
            )
        for lost in [i for i in self._pending_writes if i >= index]:
            token, _ = self._pending_writes.pop(lost)
            self._out.replies.append(
                ClientReply(token, Refused(Refusal.ENTRY_LOST, self.leader_id))
            )

    def _apply_committed(self, commit_index: int, *, announce: bool = True) -> None:
        """Advance the commit index and apply every entry up to it, in order."""
        if commit_index <= self.commit_index:
            return
        first, self.commit_index = self.commit_index + 1, commit_index
        self._last_commit_at = self._last_now
        role = "leader" if self.role is Role.LEADER else "follower"
        for index in range(first, commit_index + 1):
            entry = self._log.entry(index)
            effect_index = self.state_machine.apply(entry.command, index, entry.time)
            if isinstance(entry.command, MembershipCommand):
                self._config_committed(index, entry.command)
            if isinstance(entry.command, SetCommand):
                self._applied_bytes += len(entry.command.key) + len(entry.command.value)
            self._out.applied.append((index, entry))
            # Every client write is announced (SET and DELETE: the log review matches these
            # lines to logs.txt entry by entry, skipping only NO-OPs).
            if announce and isinstance(entry.command, SetCommand | DeleteCommand):
                self._out.events.append(
                    events.Committed(self.id, role, describe_command(entry.command))
                )
            pending = self._pending_writes.pop(index, None)
            if pending is not None:
                token, term = pending
                result: WriteDone | Refused
                if term != entry.term:
                    result = Refused(Refusal.ENTRY_LOST, self.leader_id)
                elif effect_index is None:
                    result = Refused(Refusal.STALE_SEQUENCE, None)
                elif isinstance(effect_index, SessionExpired):
                    result = Refused(Refusal.SESSION_EXPIRED, None)
                else:
                    # A retry of the client's last applied SET answers where that one applied.
                    result = WriteDone(effect_index)
                self._out.replies.append(ClientReply(token, result))
        leader = self._leader
        if leader is not None and self.id not in self.committed_membership.voters:
            # Raft thesis §4.2.2: a leader removed from the configuration leads until the
            # change is committed (without counting itself), then steps down.
            self._out.events.append(events.RemovedLeaderSteppingDown(self.id, self.commit_index))
            self._become_follower(self.term, None, self._last_now)

    # ------------------------------------------------------------------------------------------
    # Membership (docs/design.md §13)

    def change_membership(
        self,
        change: MembershipChange,
        now: float,
        token: int,
        *,
        promote_max_lag: int = DEFAULT_PROMOTE_MAX_LAG,
    ) -> Accepted | MembershipRefused:
        """Start a single-server change: append the next configuration, in force at once; the
        result comes as a ClientReply for `token` once it is committed (WriteDone) or lost.
        Refused unless this node is a serving leader that has committed an entry of its own
        term and has no other change uncommitted (the thesis' fix for single-server changes
        across leader changes), and, to promote, the learner answers and is at most
        `promote_max_lag` entries behind."""
        self._begin_input(now)
        leader = self._leader
        if leader is None:
            return MembershipRefused(f"node {self.id} is not the leader", self.leader_id)
        if leader.transfer_target is not None:
            return MembershipRefused(
                f"leadership is being handed to node {leader.transfer_target}",
                leader.transfer_target,
            )
        committed_own = leader.noop_index != 0 and self.commit_index >= leader.noop_index
        if not committed_own and not self.unsafe.change_before_term_commit:
            return MembershipRefused(
                "this leader has not committed an entry of its own term yet; try again shortly",
                self.id,
            )
        if self._pending_configs and not self.unsafe.concurrent_config_changes:
            index, pending = self._pending_configs[-1]
            return MembershipRefused(
                f"the change of entry {index} ({pending.change}) is not committed yet; one "
                "change at a time",
                self.id,
            )
        older = sorted(
            peer
            for peer, progress in leader.progress.items()
            if progress.features and not progress.features & FEATURE_MEMBERSHIP
        )
        if older:
            # It could not decode the entry: a rolling upgrade must finish first.
            return MembershipRefused(
                f"node(s) {', '.join(map(str, older))} run a version without membership "
                "changes; upgrade every node first",
                self.id,
            )
        membership = next_membership(self.membership, change)
        if isinstance(membership, str):
            return MembershipRefused(membership, self.id)
        if isinstance(change, Promote):
            progress = leader.progress.get(change.node_id)
            if progress is None:
                return MembershipRefused(f"node {change.node_id} is not a learner", self.id)
            lag = self._log.last_index - progress.match
            if lag > promote_max_lag:
                return MembershipRefused(
                    f"node {change.node_id} is {lag} entries behind the leader (at most "
                    f"{promote_max_lag} to be promoted); wait until it has caught up",
                    self.id,
                )
            silence = self.config.election_timeout_min
            if now - progress.heard_at >= silence:
                return MembershipRefused(
                    f"node {change.node_id} has not answered within {silence}s", self.id
                )
        command = MembershipCommand(membership, describe_change(change))
        index = self._append(command, now)
        self._pending_writes[index] = (token, self.term)
        leader.replicate_wanted = True
        return Accepted(index, self.term)

    @property
    def membership(self) -> Membership:
        """The configuration in force: the last in the log, committed or not."""
        return self._membership

    @property
    def committed_membership(self) -> Membership:
        """The configuration of the last committed configuration entry (or the first one)."""
        return self.state_machine.membership or self._first_membership

    def _note_appended_configs(self, first: int, last: int) -> None:
        """Entries first..last just entered the log: the configurations among them are in
        force from now on (Raft thesis §4.1)."""
        found = [
            (index, command)
            for index in range(first, last + 1)
            if isinstance(command := self._log.entry(index).command, MembershipCommand)
        ]
        if not found:
            return
        self._pending_configs.extend(found)
        self._refresh_membership()
        for index, command in found:
            self._out.events.append(
                events.MembershipAppended(
                    self.id, index, command.change or "-", command.membership.describe()
                )
            )

    def _config_committed(self, index: int, command: MembershipCommand) -> None:
        if self._pending_configs and self._pending_configs[0][0] == index:
            self._pending_configs.pop(0)
        self._refresh_membership()
        self._out.events.append(
            events.MembershipCommitted(
                self.id, index, command.change or "-", command.membership.describe()
            )
        )

    def _refresh_membership(self) -> None:
        """Derive what every rule uses from the configuration in force; a leader starts and
        stops replicating to the members it gained and lost."""
        committed = self.committed_membership
        membership = self._pending_configs[-1][1].membership if self._pending_configs else committed
        self._membership = membership
        self._voters = membership.voters
        self._quorum = majority(len(self._voters))
        self.peer_ids = tuple(sorted(membership.ids - {self.id}))
        known = set(membership.ids) | committed.ids
        for _, command in self._pending_configs:
            known |= command.membership.ids
        known.discard(self.id)
        self._known_ids = frozenset(known)
        leader = self._leader
        if leader is not None:
            for peer in self.peer_ids:
                if peer not in leader.progress:
                    leader.progress[peer] = Progress(next=self._log.last_index + 1)
            for peer in [p for p in leader.progress if p not in self.peer_ids]:
                del leader.progress[peer]

    def _other_voters(self) -> list[NodeId]:
        return sorted(self._voters - {self.id})

    # ------------------------------------------------------------------------------------------
    # Snapshots and compaction (docs/design.md §12)

    def _snapshot_due(self) -> bool:
        if self._snapshot_capture or self._last_now < self._snapshot_retry_at:
            return False
        since = self.commit_index - max(self._snapshot_index, self._log.offset)
        policy = self.snapshots
        return since > 0 and (
            since >= policy.entries or self._applied_bytes >= policy.bytes or self._idle()
        )

    def _idle(self) -> bool:
        idle = self.snapshots.idle
        return idle is not None and self._last_now >= self._last_commit_at + idle

    def _rest_compaction_target(self) -> int:
        """How far a node at rest compacts: all its snapshot covers, but on a leader not past
        what a follower still needs from the log (the lowest match index)."""
        target = self._snapshot_index
        if self._leader is not None:
            target = min([target, *(p.match for p in self._leader.progress.values())])
        return target

    def _idle_compaction_due(self) -> bool:
        return self._idle() and self._rest_compaction_target() > self._log.offset

    def _idle_at(self) -> float:
        """When the idle rule has work to do (snapshot the rest, or drop the trailing log),
        or NEVER: so that a node at rest is woken for it, and only once."""
        idle = self.snapshots.idle
        if idle is None or self._snapshot_capture:
            return NEVER
        pending = self.commit_index > max(self._snapshot_index, self._log.offset) or (
            self._rest_compaction_target() > self._log.offset
        )
        if not pending:
            return NEVER
        return max(self._last_commit_at + idle, self._snapshot_retry_at)

    def _capture_snapshot(self) -> SnapshotImage:
        # Every committed entry is applied (§2), so the state machine *is* the state at the
        # commit index; taking the image costs two references, whatever the data's size.
        index = self.commit_index
        image = self.state_machine.image(index, self._term_at(index))
        self._snapshot_capture = index
        self._applied_bytes = 0
        if self.unsafe.compact_before_snapshot_durable:
            # Only entries already handed out (this Ready may still carry the rest).
            self._compact(up_to=min(index, self._unstable_from - 1))
        return image

    def _compact(self, up_to: int | None = None, trailing: int | None = None) -> None:
        """Drop log entries the durable snapshot covers, keeping `trailing_entries` before it
        for followers a little behind (hashicorp/raft: min(snapshot, last − trailing))."""
        limit = self._snapshot_index if up_to is None else up_to
        keep = self.snapshots.trailing_entries if trailing is None else trailing
        target = min(limit, self._log.last_index - keep)
        if self._leader is not None:
            # A follower installing a snapshot continues from the entry after it: keep that
            # entry, or it would need another snapshot, and again (a livelock under load).
            pending = [p.pending_snapshot for p in self._leader.progress.values()]
            target = min([target, *(index for index in pending if index)])
        if target <= self._log.offset:
            return
        self._log.compact_to(target)
        self._compact_to = target
        self._out.events.append(events.LogCompacted(self.id, target, self._log.offset_term))

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
        return self._log.last_term

    def _term_at(self, index: int) -> int:
        term = self._log.term(index)
        if term is None:
            raise CoreMisuseError(
                f"term of entry {index} asked, but the log holds "
                f"{self._log.first_index}..{self._log.last_index}"
            )
        return term

    def _first_index_of_term(self, index: int) -> int:
        return self._log.first_index_of_term(index, floor=self.commit_index)


def _is_pre_vote_not_refusal(message: Message) -> bool:
    """A pre-vote request, or a granted pre-vote reply: its term is one nobody holds yet, so it
    makes no one adopt it (a refused pre-vote reply carries the voter's real term)."""
    if isinstance(message, RequestVote):
        return message.pre_vote
    return isinstance(message, RequestVoteReply) and message.pre_vote and message.granted
