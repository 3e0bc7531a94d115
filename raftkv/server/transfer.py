"""Leadership transfer from the outside (KeyValue.TransferLeader, a stopping leader): what the
replica queues for its loop and what it answers (docs/design.md §6)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """A leadership transfer queued for the loop (None: the most up-to-date follower)."""

    target: int | None


@dataclass(frozen=True, slots=True)
class TransferDone:
    leader_id: int
    previous_leader_id: int
    term: int
    seconds: float


class TransferRefusal(Enum):
    NOT_LEADER = "not-leader"
    # The leader is still waiting out an old lease: it can transfer shortly.
    NOT_YET = "not-yet"
    # The leader refuses (no other node, a transfer under way, an unknown target).
    REFUSED = "refused"
    TIMED_OUT = "timed-out"
    # This node was elected again.
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class TransferRefused:
    reason: TransferRefusal
    details: str
    leader_hint: int | None = None
