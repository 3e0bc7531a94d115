"""Values that flow into and out of the core: log entries, Raft RPCs, client results.

Every value is a frozen, slotted dataclass so that the simulator can hand the same message to
two nodes (duplication) without either being able to change what the other sees.

Indexing follows the paper: log index 1 is the first entry; index 0 is the empty prefix and has
term 0.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .state_machine import SnapshotImage

NodeId = int


@dataclass(frozen=True, slots=True)
class SetCommand:
    """Set `key` to `value`. `client_id`/`seq` make a retried SET apply once ("" = no dedup)."""

    key: str
    value: str
    client_id: str = ""
    seq: int = 0
    # The client has had a write acknowledged under this id, so its session must exist: if it
    # expired, the write is refused (SESSION_EXPIRED), never applied as a new session's first
    # (Raft thesis §6.3).
    resume: bool = False

    def __post_init__(self) -> None:
        # Keys and client ids repeat across a long log (every SET of a client carries its id):
        # sharing one string object each keeps ~150 bytes per entry out of the node's memory.
        object.__setattr__(self, "key", sys.intern(self.key))
        object.__setattr__(self, "client_id", sys.intern(self.client_id))


@dataclass(frozen=True, slots=True)
class DeleteCommand:
    """Remove `key` (nothing changes when it is absent). `client_id`/`seq` as for SetCommand:
    a client's SETs and DELETEs share one sequence, so a retried DELETE applies once."""

    key: str
    client_id: str = ""
    seq: int = 0
    resume: bool = False

    def __post_init__(self) -> None:
        # Interned like SetCommand's: a log of one client's writes repeats its id.
        object.__setattr__(self, "key", sys.intern(self.key))
        object.__setattr__(self, "client_id", sys.intern(self.client_id))


@dataclass(frozen=True, slots=True)
class NoOpCommand:
    """Appended by every new leader so that entries of earlier terms commit with it."""


@dataclass(frozen=True, slots=True)
class Member:
    """One server of a configuration (docs/design.md §13). The addresses are opaque to the
    core: the shell reaches the node there, and a node that joins learns them from the log."""

    node_id: NodeId
    # A voter counts toward every majority (votes, commit, the lease); a learner (etcd's
    # non-voting member) receives the log and a snapshot, and counts toward none.
    voter: bool = True
    client_address: str = ""
    peer_address: str = ""


@dataclass(frozen=True, slots=True)
class Membership:
    """A configuration: its members in ascending id order, at least one a voter. Immutable, so
    that every entry, snapshot and leader round can keep the one it was made under."""

    members: tuple[Member, ...]
    voters: frozenset[NodeId] = field(init=False, compare=False, repr=False)
    ids: frozenset[NodeId] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        ids = [member.node_id for member in self.members]
        if ids != sorted(set(ids)):
            raise ValueError(f"members must have distinct ids in ascending order, got {ids}")
        voters = frozenset(m.node_id for m in self.members if m.voter)
        if not voters:
            raise ValueError("a configuration needs at least one voter")
        object.__setattr__(self, "voters", voters)
        object.__setattr__(self, "ids", frozenset(ids))

    @classmethod
    def of_voters(cls, node_ids: Iterable[NodeId]) -> Membership:
        """The configuration a cluster starts with: these nodes, all voters, no addresses."""
        return cls(tuple(Member(node_id) for node_id in sorted(set(node_ids))))

    @property
    def learners(self) -> frozenset[NodeId]:
        return self.ids - self.voters

    def member(self, node_id: NodeId) -> Member | None:
        for member in self.members:
            if member.node_id == node_id:
                return member
        return None

    def describe(self) -> str:
        """`voters 0,1,2 learners 3`, for events and refusals."""
        voters = ",".join(str(i) for i in sorted(self.voters)) or "-"
        text = f"voters {voters}"
        if self.learners:
            text += " learners " + ",".join(str(i) for i in sorted(self.learners))
        return text


@dataclass(frozen=True, slots=True)
class MembershipCommand:
    """Replace the configuration by `membership`: one member added as a learner, promoted, or
    removed (docs/design.md §13). In force on every node from the moment the entry is in its
    log, committed or not; `change` says which, for events and the dump."""

    membership: Membership
    change: str = ""


Command = SetCommand | DeleteCommand | NoOpCommand | MembershipCommand

# What this version's peers understand beyond the previous release's protocol, as a bit set
# announced in every AppendEntriesReply (docs/design.md §11): DELETE entries, stamped cluster
# time with session expiry, and InstallSnapshot. During a rolling upgrade a leader uses them
# only once every follower has announced them, so that an old node never meets an entry it
# cannot decode nor keeps a session table that differs from the others'.
FEATURE_SNAPSHOTS_AND_SESSIONS = 1
# Configuration entries (MembershipCommand, docs/design.md §13).
FEATURE_MEMBERSHIP = 2
PROTOCOL_FEATURES = FEATURE_SNAPSHOTS_AND_SESSIONS | FEATURE_MEMBERSHIP
NO_OP = NoOpCommand()


@dataclass(frozen=True, slots=True)
class LogEntry:
    term: int
    command: Command
    # Cluster time in ms, stamped by the leader that appended the entry (0 in logs written
    # before sessions expired): it never decreases along a log and never runs faster than real
    # time, so sessions expire by it on every replica alike (docs/design.md §11). Not part of
    # equality: an entry is named by its index and term, and its leader stamps it once.
    time: int = field(default=0, compare=False)


# ---------------------------------------------------------------------------------------------
# Raft RPCs. `round` numbers a leader's broadcast; replies echo it so that the leader knows which
# send time an acknowledgement vouches for (docs/design.md §3 rule 1).


@dataclass(frozen=True, slots=True)
class AppendEntries:
    term: int
    leader_id: NodeId
    prev_log_index: int
    prev_log_term: int
    entries: tuple[LogEntry, ...]
    leader_commit: int
    # The lease this leader claims (rule 1): a follower records it, whatever its own (rule 2).
    lease_duration: float
    round: int
    # Leadership transfer (Raft thesis §3.10, etcd's MsgTimeoutNow): the receiver campaigns at
    # once if this message brings its log level with the leader's, which has stopped serving
    # lease reads (docs/design.md §3 rule 8).
    timeout_now: bool = False
    # The sender's clock drift bound ρ; every node adopts the largest it hears (rule 6).
    max_clock_drift: float = 0.0


@dataclass(frozen=True, slots=True)
class AppendEntriesReply:
    term: int
    follower_id: NodeId
    success: bool
    # On success: the index of the last entry known to match the leader's log.
    match_index: int
    # On failure: where the leader should try next (fast back-off, one step per term).
    conflict_index: int
    round: int
    max_clock_drift: float = 0.0
    # The follower's data directory's incarnation (docs/design.md §8, disk loss): a leader that
    # sees a new one for a known node forgets everything it knew of that node's log.
    incarnation: int = 0
    # What the follower's version understands (PROTOCOL_FEATURES); 0 from a version before.
    features: int = 0


@dataclass(frozen=True, slots=True)
class RequestVote:
    term: int
    candidate_id: NodeId
    last_log_index: int
    last_log_term: int
    # PreVote (Raft thesis §9.6): `term` is the term the candidate would campaign in; a voter
    # answers as it would vote, changing nothing, not even its term.
    pre_vote: bool = False
    # A campaign started by a leader's timeout_now: voters answer it even while they still
    # hear from that leader (rule 8).
    transfer: bool = False
    max_clock_drift: float = 0.0


@dataclass(frozen=True, slots=True)
class RequestVoteReply:
    term: int
    voter_id: NodeId
    granted: bool
    # Time the voter still owes to the longest leader lease it has seen (voter's clock).
    old_lease_remaining: float
    pre_vote: bool = False
    max_clock_drift: float = 0.0


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """One chunk of a snapshot a leader streams to a follower that needs entries it compacted
    (Raft thesis §5.3). The core sees the chunks' Raft fields, not their bytes: each one is news
    of the leader (election timer, lease rule 2) like an AppendEntries; the receiving shell
    writes the bytes, and on the last chunk (`done`) attaches the verified `image`.

    From a leader's core, a message with `done` False is the intent "stream the snapshot at
    (last_index, last_term) to this follower": the shell turns it into the chunks.
    """

    term: int
    leader_id: NodeId
    last_index: int
    last_term: int
    lease_duration: float
    done: bool = False
    image: SnapshotImage | None = None
    max_clock_drift: float = 0.0


@dataclass(frozen=True, slots=True)
class InstallSnapshotReply:
    term: int
    follower_id: NodeId
    # The snapshot the chunk belonged to, and whether it was its last chunk.
    last_index: int
    done: bool = False
    # On the last chunk: the follower's log matches the leader's up to here (the snapshot's
    # index once installed; its commit index when the snapshot was stale). 0 on other chunks,
    # and from a node that refuses it (not admitted, or in another term).
    match_index: int = 0
    max_clock_drift: float = 0.0
    incarnation: int = 0


Message = (
    AppendEntries
    | AppendEntriesReply
    | RequestVote
    | RequestVoteReply
    | InstallSnapshot
    | InstallSnapshotReply
)


@dataclass(frozen=True, slots=True)
class Envelope:
    to: NodeId
    message: Message


# ---------------------------------------------------------------------------------------------
# Client-facing results.


class Refusal(Enum):
    """Why a request was not served. Each but STALE_SEQUENCE is safe to retry (at the hinted
    leader)."""

    NOT_LEADER = "not the leader"
    NO_LEASE = "leader holds no valid lease"
    NOT_READY = "leader has not committed an entry of its term yet"
    WAITING_OLD_LEASE = "new leader is waiting for the old leader's lease to end"
    # Only this node's copy: another may still commit, so a SET's outcome is unknown.
    ENTRY_LOST = "entry was overwritten by another leader"
    # The SET was committed but skipped: a higher seq of its client id was already applied.
    # Definite (it will never apply), and the one refusal that retrying cannot fix.
    STALE_SEQUENCE = (
        "stale sequence number: a higher sequence number of this client id was already "
        "applied, so this SET was not applied"
    )
    # The write said its client's session exists (`resume`), but it expired (no write for the
    # session lifetime) or never existed here (a cluster restored from a backup). Definite: it
    # was not applied; the client starts a new session.
    # A DELETE while a rolling upgrade is in progress: some follower's version cannot decode it.
    UNSUPPORTED = "not every node runs a version that knows this command yet (upgrade them all)"
    SESSION_EXPIRED = (
        "session expired: this client id's session no longer exists (no write within the "
        "session lifetime, or a cluster restored from a backup), so this write was not applied"
    )


@dataclass(frozen=True, slots=True)
class Refused:
    reason: Refusal
    leader_hint: NodeId | None


@dataclass(frozen=True, slots=True)
class ReadValue:
    """A linearizable read. `value` is None when the key has never been set."""

    value: str | None


@dataclass(frozen=True, slots=True)
class RangeQuery:
    """A LIST: keys that start with `prefix` and sort after `start_after` (code point order),
    at most `limit` of them (≥ 1)."""

    prefix: str
    start_after: str
    limit: int


@dataclass(frozen=True, slots=True)
class ReadRange:
    """A linearizable LIST page: (key, value) pairs in key order; `more` says whether a key
    after the last one matches too (ask again with start_after = the last key)."""

    items: tuple[tuple[str, str], ...]
    more: bool


@dataclass(frozen=True, slots=True)
class ImageQuery:
    """A backup (`raftkv snapshot save`): the whole state machine, as a SnapshotImage at the
    commit index when the read is served. Carries nothing: there is only one whole state."""


IMAGE_QUERY = ImageQuery()

# What a read asks: the value of one key (GET), a page of keys (LIST), or everything (IMAGE).
ReadQuery = str | RangeQuery | ImageQuery


@dataclass(frozen=True, slots=True)
class ReadPending:
    """read_index mode: the answer comes later as a ClientReply with the same token."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """A proposal was appended at `index` in `term`; a ClientReply follows once it applies."""

    index: int
    term: int


@dataclass(frozen=True, slots=True)
class WriteDone:
    index: int


ReadResult = ReadValue | ReadRange | ReadPending | Refused
ProposeResult = Accepted | Refused


@dataclass(frozen=True, slots=True)
class ClientReply:
    """The deferred answer to a proposal or a read_index read, keyed by the caller's token."""

    token: int
    result: WriteDone | ReadValue | ReadRange | SnapshotImage | Refused
