"""Everything only a leader keeps, in one object that is created on election and dropped whole
on stepping down (etcd-io/raft's `reset(term)`: one path, nothing left behind).

Lease and round rules are those of docs/design.md §3; the node (raftkv/core/node.py) applies
them, this module holds their state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .messages import NodeId, ReadQuery
from .progress import Progress

NEVER = float("inf")
LONG_AGO = float("-inf")


@dataclass(slots=True)
class PendingRead:
    """A read_index read (Raft §6.4) of a GET or a LIST (`query`): served once a majority
    answered `round` and the state machine has applied up to `read_index`."""

    token: int
    query: ReadQuery
    read_index: int
    round: int


@dataclass(slots=True)
class LeaderState:
    # One per follower; the leader itself counts through its persisted log length.
    progress: dict[NodeId, Progress]
    # Send time (leader's clock) of each round not yet acknowledged by a majority, once serving.
    round_sent_at: dict[int, float] = field(default_factory=dict)
    # The voters in force when each of those rounds was sent: only a majority of them renews
    # the lease from it (docs/design.md §13).
    round_voters: dict[int, frozenset[NodeId]] = field(default_factory=dict)
    # The voters when elected (only the negative control lease_from_old_config uses them).
    elected_voters: frozenset[NodeId] = frozenset()
    # Highest round that a majority of the voters in force when it was sent has answered in
    # this term (the leader counting itself if it was one of them: docs/design.md §13).
    quorum_round: int = 0
    # Lease reads are allowed while now < lease_end (rule 1).
    lease_end: float = LONG_AGO
    # End of the old-lease wait (rule 3); nothing is appended before it.
    serving_from: float = NEVER
    # Rule 7: a leader does not step down for want of a lease before this.
    step_down_grace_end: float = NEVER
    next_heartbeat: float = NEVER
    # Index of this term's NO-OP; 0 until it is appended.
    noop_index: int = 0
    pending_reads: list[PendingRead] = field(default_factory=list)
    # Set by inputs, consumed by take_ready: a round goes out once for everything that asked.
    replicate_wanted: bool = False
    read_round_wanted: bool = False
    # CheckQuorum: when the leader next checks that a majority answered since the last check.
    quorum_check_at: float = NEVER
    # Leadership transfer (rule 8): the follower asked to take over, and until when.
    transfer_target: NodeId | None = None
    transfer_deadline: float = NEVER
    # Once a transfer starts, this leader serves no lease read for the rest of its term.
    lease_released: bool = False
    # Cluster time (docs/design.md §11): the largest stamp in the log when elected, this
    # leader's clock then, and its last stamp. A stamp is the base plus the time elapsed on the
    # leader's clock scaled by 1 − ρ, so it never runs faster than real time.
    time_base: int = 0
    time_origin: float = 0.0
    last_stamp: int = 0

    @classmethod
    def elected(cls, followers: Iterable[NodeId], log_length: int, last_round: int) -> LeaderState:
        return cls(
            progress={peer: Progress(next=log_length + 1) for peer in followers},
            quorum_round=last_round,
        )
