"""Checks that reject a malformed peer message before the core acts on it.

A peer's message is remote input: it may come from a buggy or hostile sender. The core drops a
message that fails these checks and reports a `ProtocolViolation` event; the shell runs the same
checks first so that it can answer the sender INVALID_ARGUMENT (docs/design.md §8).
"""

from __future__ import annotations

import math
from collections.abc import Collection

from .messages import AppendEntries, AppendEntriesReply, Message, NodeId, RequestVote


def sender_of(message: Message) -> NodeId:
    """The node id a message claims to come from."""
    if isinstance(message, AppendEntries):
        return message.leader_id
    if isinstance(message, AppendEntriesReply):
        return message.follower_id
    if isinstance(message, RequestVote):
        return message.candidate_id
    return message.voter_id


def malformed(message: Message, members: Collection[NodeId]) -> str | None:
    """Why `message` must not reach the core, or None when it may. `members`: the other
    voters of this cluster (a message claiming to come from anyone else is refused)."""
    sender = sender_of(message)
    if sender not in members:
        field = {
            AppendEntries: "leader_id",
            AppendEntriesReply: "follower_id",
            RequestVote: "candidate_id",
        }.get(type(message), "voter_id")
        return f"{field} {sender} is not a member of this cluster"
    if isinstance(message, AppendEntries):
        if not math.isfinite(message.lease_duration) or message.lease_duration <= 0:
            return f"lease_duration must be a positive number, got {message.lease_duration}"
        if any(entry.term > message.term for entry in message.entries):
            return "an entry's term exceeds the leader's term"
        if message.prev_log_term > message.term:
            return "prev_log_term exceeds the leader's term"
    elif isinstance(message, RequestVote):
        if message.term == 0:
            return "a vote request needs a term ≥ 1"
    elif not isinstance(message, AppendEntriesReply):
        remaining = message.old_lease_remaining
        if not math.isfinite(remaining) or remaining < 0:
            return f"old_lease_remaining must be ≥ 0, got {remaining}"
    return None
