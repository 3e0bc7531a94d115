"""What a leader knows of one follower's log (etcd-io/raft `tracker/progress.go`'s shape).

Invariant, kept by every transition below: 0 ≤ match < next. `match` is the highest index known
to be replicated on the follower; `next` is the index of the next entry to send it.

States:
- PROBE: the leader does not know where the follower's log matches its own. It sends one
  AppendEntries at a time, from `next − 1`, and moves `next` only on the follower's answer.
- REPLICATE: the follower's log matches up to `match`. The leader streams entries from `next`
  optimistically (advancing `next` on send), with a bounded window in flight.
- SNAPSHOT: the follower needs entries the leader compacted away; a snapshot up to
  `pending_snapshot` is being streamed to it, and it gets only heartbeats until that ends
  (etcd's StateSnapshot).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ProgressState(Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@dataclass(slots=True)
class Progress:
    next: int
    match: int = 0
    state: ProgressState = ProgressState.PROBE
    # Highest broadcast round this follower has answered in the leader's term (lease rule 1).
    acked_round: int = 0
    # `match` when the previous heartbeat went out: no change over a whole heartbeat with
    # entries in flight means they were lost.
    match_at_last_heartbeat: int = 0
    # The round of the reply that last raised `match`: a rejection from that round or an
    # earlier one is late (a duplicate, or overtaken) and must not pull `match` back.
    match_round: int = 0
    # CheckQuorum: the follower answered since the leader's last check.
    recent_active: bool = False
    # When the follower last answered (the leader's clock): a transfer goes only to a node
    # that answers.
    heard_at: float = float("-inf")
    # The follower's data-directory incarnation, once it told us (0: not yet).
    incarnation: int = 0
    # In SNAPSHOT: the index of the snapshot being sent (0 otherwise).
    pending_snapshot: int = 0
    # What the follower's version understands, from its last reply (messages.PROTOCOL_FEATURES).
    features: int = 0

    @property
    def in_flight(self) -> int:
        """Entries sent in REPLICATE that the follower has not acknowledged yet."""
        return self.next - 1 - self.match

    def on_success(self, match: int, round: int = 0) -> bool:
        """The follower's log matches ours up to `match`. Returns whether `match` advanced."""
        advanced = match > self.match
        if advanced:
            self.match = match
            self.match_round = max(self.match_round, round)
        self.next = max(self.next, self.match + 1)
        if self.state is ProgressState.SNAPSHOT and self.match < self.pending_snapshot:
            return advanced  # a heartbeat's answer: the entries it needs are still compacted
        self.state = ProgressState.REPLICATE
        self.pending_snapshot = 0
        return advanced

    def on_rejection(self, conflict_index: int, round: int = 0) -> bool:
        """The follower's log does not match before `conflict_index`: probe from there.
        Returns False for a late rejection, which changes nothing (nothing to resend)."""
        if conflict_index <= self.match and round <= self.match_round:
            return False  # sent before the success that set `match`: it says nothing new
        if self.state is ProgressState.SNAPSHOT:
            return False  # its log stays short until the snapshot is installed
        self.state = ProgressState.PROBE
        if conflict_index <= self.match:
            # The follower lost entries it had acknowledged (a damaged disk, an operator
            # cutting its log): believe its log as it is now, or we would probe forever.
            self.match = conflict_index - 1
        self.next = max(self.match + 1, min(self.next, conflict_index))
        return True

    def forget(self, log_length: int) -> None:
        """The follower's data directory was replaced: it holds none of what it acknowledged."""
        self.match = self.match_round = self.match_at_last_heartbeat = 0
        self.next = log_length + 1
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0

    def become_snapshot(self, snapshot_index: int) -> None:
        """The snapshot up to `snapshot_index` is being sent; nothing else until it ends."""
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.next = max(self.next, snapshot_index + 1)

    def snapshot_done(self, match: int) -> None:
        """The transfer ended: installed up to `match` (or failed: 0); probe from there."""
        self.match = max(self.match, match)
        self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0

    def on_heartbeat(self) -> None:
        """Called at each heartbeat: a stream that made no progress for a whole heartbeat with
        entries in flight is assumed lost, and the follower is probed again from `match`."""
        if self.state is not ProgressState.REPLICATE:
            return
        if self.in_flight > 0 and self.match == self.match_at_last_heartbeat:
            self.state = ProgressState.PROBE
            self.next = self.match + 1
        self.match_at_last_heartbeat = self.match

    def next_send(self, log_length: int, window: int) -> tuple[int, bool]:
        """Where the next AppendEntries to this follower starts: (prev_log_index, with entries).

        PROBE resends from `next − 1` until the follower says where its log matches. REPLICATE
        sends new entries while fewer than `window` are in flight; otherwise (nothing new, or
        enough in flight) it anchors at the confirmed `match`, which cannot be rejected, so that
        in-flight entries are not mistaken for a conflict.
        """
        if self.state is ProgressState.PROBE:
            return self.next - 1, True
        if self.state is ProgressState.SNAPSHOT:
            return self.match, False
        if self.next <= log_length and self.in_flight < window:
            return self.next - 1, True
        return self.match, False

    def sent(self, prev_log_index: int, count: int) -> None:
        """`count` entries after `prev_log_index` went out; REPLICATE advances optimistically."""
        if self.state is ProgressState.REPLICATE and prev_log_index == self.next - 1:
            self.next += count
