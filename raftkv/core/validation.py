"""Checks that reject a malformed peer message before the core acts on it.

A peer's message is remote input: it may come from a buggy or hostile sender. The core drops a
message that fails these checks and reports a `ProtocolViolation` event; the shell runs the same
checks first so that it can answer the sender INVALID_ARGUMENT (docs/design.md §8).

These checks are stateless: they look at the message alone. What needs the node's state (an
AppendEntries that would cut a committed entry, a reply naming an index the leader does not
have) is checked by `RaftNode` itself.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from .config import MAX_LEASE_DURATION
from .messages import (
    AppendEntries,
    AppendEntriesReply,
    InstallSnapshot,
    InstallSnapshotReply,
    Membership,
    MembershipCommand,
    Message,
    NodeId,
    RequestVote,
)

# The highest term a node accepts or reaches. Terms travel as uint64 and are stored in decimal;
# 2**63 − 1 also fits a signed 64-bit integer, so no reader anywhere can overflow on a term the
# core produced. Honest elections could never get near it (one election a millisecond would
# take 292 million years); only a buggy or hostile peer can. A node at MAX_TERM does not start
# elections, since a next term could not be represented (RaftNode.tick).
MAX_TERM = 2**63 - 1
# The highest log index, commit index or round a message may name (same reasoning as MAX_TERM:
# a log of 2**63 entries cannot exist).
MAX_INDEX = 2**63 - 1
# A configuration a peer sends (docs/design.md §13): at most this many members, ids in
# 0..MAX_NODE_ID (a uint32 on the wire), addresses of at most MAX_ADDRESS_CHARS characters.
MAX_MEMBERS = 64
MAX_NODE_ID = 2**32 - 1
MAX_ADDRESS_CHARS = 1024
# A change's description ("add learner 4"): short by construction.
MAX_CHANGE_CHARS = 256


def sender_of(message: Message) -> NodeId:
    """The node id a message claims to come from."""
    if isinstance(message, AppendEntries | InstallSnapshot):
        return message.leader_id
    if isinstance(message, AppendEntriesReply | InstallSnapshotReply):
        return message.follower_id
    if isinstance(message, RequestVote):
        return message.candidate_id
    return message.voter_id


def _above(name: str, value: int, bound: int) -> str | None:
    if value > bound:
        return f"{name} {value} exceeds the limit {bound}"
    return None


def _first(*problems: str | None) -> str | None:
    return next((p for p in problems if p is not None), None)


def malformed(message: Message, members: Collection[NodeId]) -> str | None:
    """Why `message` must not reach the core, or None when it may. `members`: the nodes this
    one accepts it from (a message claiming to come from anyone else is refused)."""
    sender = sender_of(message)
    if not 0 <= sender <= MAX_NODE_ID:
        return f"sender id {sender} is outside 0..{MAX_NODE_ID}"
    if sender not in members:
        field = {
            AppendEntries: "leader_id",
            AppendEntriesReply: "follower_id",
            InstallSnapshot: "leader_id",
            InstallSnapshotReply: "follower_id",
            RequestVote: "candidate_id",
        }.get(type(message), "voter_id")
        return f"{field} {sender} is not a member of this cluster"
    term_problem = _above("term", message.term, MAX_TERM)
    if term_problem is not None:
        return term_problem
    rho = message.max_clock_drift
    if not (math.isfinite(rho) and 0 <= rho < 0.5):
        return f"max_clock_drift must be in [0, 0.5), got {rho}"
    if isinstance(message, AppendEntries):
        return _append_entries_problem(message)
    if isinstance(message, InstallSnapshot):
        return _install_snapshot_problem(message)
    if isinstance(message, InstallSnapshotReply):
        return _first(
            _above("last_index", message.last_index, MAX_INDEX),
            _above("match_index", message.match_index, MAX_INDEX),
        )
    if isinstance(message, AppendEntriesReply):
        return _first(
            _above("match_index", message.match_index, MAX_INDEX),
            _above("conflict_index", message.conflict_index, MAX_INDEX),
            _above("round", message.round, MAX_INDEX),
        )
    if isinstance(message, RequestVote):
        if message.term == 0:
            return "a vote request needs a term ≥ 1"
        if message.last_log_term > message.term:
            return "last_log_term exceeds the candidate's term"
        return _first(
            _position_problem("last_log", message.last_log_index, message.last_log_term),
            _above("last_log_index", message.last_log_index, MAX_INDEX),
        )
    if message.term == 0:
        return "a vote reply needs a term ≥ 1"
    remaining = message.old_lease_remaining
    if not math.isfinite(remaining):
        return f"old_lease_remaining must be finite, got {remaining}"
    if remaining < 0:
        return f"old_lease_remaining must be ≥ 0, got {remaining}"
    if remaining > MAX_LEASE_DURATION:
        return f"old_lease_remaining {remaining} exceeds the longest lease {MAX_LEASE_DURATION}"
    return None


def _position_problem(name: str, index: int, term: int) -> str | None:
    """A log position (index, term) as Figure 2 has them: term 0 exactly at index 0."""
    if index == 0 and term != 0:
        return f"{name}_term must be 0 when {name}_index is 0 (the empty prefix)"
    if index > 0 and term == 0:
        return (
            f"{name}_term must be ≥ 1 when {name}_index is ≥ 1 (only the empty prefix has term 0)"
        )
    return None


def _lease_problem(lease: float) -> str | None:
    if not math.isfinite(lease):
        return f"lease_duration must be finite, got {lease}"
    if lease <= 0:
        return f"lease_duration must be a positive number, got {lease}"
    if lease > MAX_LEASE_DURATION:
        return f"lease_duration {lease} exceeds the longest lease {MAX_LEASE_DURATION}"
    return None


def _install_snapshot_problem(message: InstallSnapshot) -> str | None:
    lease_problem = _lease_problem(message.lease_duration)
    if lease_problem is not None:
        return lease_problem
    if message.term == 0:
        return "an InstallSnapshot needs a term ≥ 1"
    if message.last_index == 0 or message.last_term == 0:
        return "a snapshot covers at least entry 1, of a term ≥ 1"
    if message.last_term > message.term:
        return "the snapshot's last_term exceeds the leader's term"
    if message.done != (message.image is not None):
        return "only the last chunk of a snapshot carries its image"
    image = message.image
    if image is not None and (image.index, image.term) != (message.last_index, message.last_term):
        return "the snapshot received is not the one the chunk names"
    return _above("last_index", message.last_index, MAX_INDEX)


def _append_entries_problem(message: AppendEntries) -> str | None:
    lease_problem = _lease_problem(message.lease_duration)
    if lease_problem is not None:
        return lease_problem
    if message.term == 0:
        return "an AppendEntries needs a term ≥ 1"
    if message.prev_log_term > message.term:
        return "prev_log_term exceeds the leader's term"
    problem = _first(
        _position_problem("prev_log", message.prev_log_index, message.prev_log_term),
        _above("prev_log_index", message.prev_log_index, MAX_INDEX),
        _above("leader_commit", message.leader_commit, MAX_INDEX),
        _above("round", message.round, MAX_INDEX),
        _above("last entry index", message.prev_log_index + len(message.entries), MAX_INDEX),
    )
    if problem is not None:
        return problem
    previous = message.prev_log_term
    for position, entry in enumerate(message.entries, start=1):
        if entry.term > message.term:
            return "an entry's term exceeds the leader's term"
        if entry.term == 0:
            return f"entry {position} has term 0 (only the empty prefix has term 0)"
        if entry.time > MAX_INDEX:
            return f"entry {position}'s time {entry.time} exceeds the limit {MAX_INDEX}"
        if isinstance(entry.command, MembershipCommand):
            problem = _membership_problem(entry.command.membership)
            if len(entry.command.change) > MAX_CHANGE_CHARS:
                problem = f"a change description of {len(entry.command.change)} characters"
            if problem is not None:
                return f"entry {position}: {problem}"
        if entry.term < previous:
            where = "prev_log_term" if position == 1 else "the entry before it"
            return (
                f"entry {position}'s term {entry.term} is below {where} ({previous}): "
                "terms in a log never go backwards"
            )
        previous = entry.term
    return None


def _membership_problem(membership: Membership) -> str | None:
    """Bounds on a configuration a peer sends (its order and voters are checked when it is
    built): so many members, ids and addresses are not a cluster this code runs."""
    if len(membership.members) > MAX_MEMBERS:
        return f"a configuration of {len(membership.members)} members (at most {MAX_MEMBERS})"
    for member in membership.members:
        if not 0 <= member.node_id <= MAX_NODE_ID:
            return f"node id {member.node_id} is outside 0..{MAX_NODE_ID}"
        for address in (member.client_address, member.peer_address):
            if len(address) > MAX_ADDRESS_CHARS:
                return (
                    f"an address of node {member.node_id} has {len(address)} characters "
                    f"(at most {MAX_ADDRESS_CHARS})"
                )
    return None
