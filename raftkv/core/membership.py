"""Single-server membership changes (Raft thesis §4.1, with learners; docs/design.md §13).

A change is asked for as one of three operations, each of which moves the configuration by one
server at most, so that every majority of the old configuration overlaps every majority of the
new one: add a learner (no voter changes), promote a learner (one voter more), remove a member
(one voter fewer, or a learner). Adding a voter always goes through a learner: it receives the
snapshot and the log first, and is promoted only once it is caught up (etcd's learners).

`next_membership` is the one function that turns a request into the next configuration or says
why it cannot; `RaftNode.change_membership` adds what only a leader knows (its own term
committed, no other change in flight, the learner's lag).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .messages import Member, Membership, NodeId

__all__ = [
    "DEFAULT_PROMOTE_MAX_LAG",
    "AddLearner",
    "MembershipChange",
    "MembershipRefused",
    "Promote",
    "Remove",
    "next_membership",
]

# A learner is promoted only when its log is at most this many entries behind the leader's
# (etcd promotes at 90% of the leader's progress; an absolute bound keeps a large log from
# admitting a learner that is thousands of entries behind).
DEFAULT_PROMOTE_MAX_LAG = 1000


@dataclass(frozen=True, slots=True)
class AddLearner:
    """A new member that receives the log but votes and counts toward no majority yet."""

    member: Member


@dataclass(frozen=True, slots=True)
class Promote:
    """A caught-up learner becomes a voter."""

    node_id: NodeId


@dataclass(frozen=True, slots=True)
class Remove:
    """A voter or a learner leaves the configuration (the leader too: it steps down once the
    change is committed)."""

    node_id: NodeId


MembershipChange = AddLearner | Promote | Remove


@dataclass(frozen=True, slots=True)
class MembershipRefused:
    """Why a membership change was not started; `leader_id` hints where to ask instead."""

    reason: str
    leader_id: NodeId | None = None


def next_membership(current: Membership, change: MembershipChange) -> Membership | str:
    """The configuration `change` leads to from `current`, or why there is none."""
    if isinstance(change, AddLearner):
        member = change.member
        if member.node_id in current.ids:
            kind = "voter" if member.node_id in current.voters else "learner"
            return (
                f"node {member.node_id} is already a {kind}; to replace it, remove it first "
                "and add it again under its new incarnation"
            )
        learner = replace(member, voter=False)
        return Membership(tuple(sorted((*current.members, learner), key=lambda m: m.node_id)))
    if isinstance(change, Promote):
        if change.node_id in current.voters:
            return f"node {change.node_id} is already a voter"
        if change.node_id not in current.ids:
            return f"node {change.node_id} is not a member; add it as a learner first"
        promoted = tuple(
            replace(m, voter=True) if m.node_id == change.node_id else m for m in current.members
        )
        return Membership(promoted)
    if change.node_id not in current.ids:
        return f"node {change.node_id} is not a member"
    if current.voters == {change.node_id}:
        return f"node {change.node_id} is the last voter; a cluster needs one"
    return Membership(tuple(m for m in current.members if m.node_id != change.node_id))


def describe_change(change: MembershipChange) -> str:
    """`add learner 3`, `promote 3`, `remove 1`: the change's name in events and entries."""
    if isinstance(change, AddLearner):
        return f"add learner {change.member.node_id}"
    if isinstance(change, Promote):
        return f"promote {change.node_id}"
    return f"remove {change.node_id}"
