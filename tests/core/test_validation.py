"""Malformed peer messages: refused by the core's own checks, reported, never acted on."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from raftkv.core import events as ev
from raftkv.core.config import TimingConfig
from raftkv.core.messages import (
    NO_OP,
    AppendEntries,
    AppendEntriesReply,
    DeleteCommand,
    InstallSnapshot,
    InstallSnapshotReply,
    LogEntry,
    Member,
    Membership,
    MembershipCommand,
    Message,
    RequestVote,
    RequestVoteReply,
    SetCommand,
)
from raftkv.core.node import HardState, PersistentState, RaftNode, Role, UnsafeSwitches
from raftkv.core.state_machine import KeyValueStateMachine
from raftkv.core.validation import (
    MAX_ADDRESS_CHARS,
    MAX_INDEX,
    MAX_MEMBERS,
    MAX_NODE_ID,
    MAX_TERM,
    malformed,
)

CONFIG = TimingConfig(1.0, 2.0, 0.1, 0.5, 0.0)
MEMBERS = (2, 3)


IMAGE = KeyValueStateMachine().image(5, 1)

GOOD_APPEND = AppendEntries(
    term=2,
    leader_id=2,
    prev_log_index=0,
    prev_log_term=0,
    entries=(),
    leader_commit=0,
    lease_duration=0.5,
    round=1,
)


def append(**changes: Any) -> AppendEntries:
    return dataclasses.replace(GOOD_APPEND, **changes)


BAD: list[tuple[Message, str]] = [
    (append(leader_id=MAX_NODE_ID + 1), "sender id 4294967296 is outside"),
    (append(lease_duration=float("nan")), "lease_duration must be finite, got nan"),
    (append(lease_duration=float("inf")), "lease_duration must be finite, got inf"),
    (append(lease_duration=0.0), "lease_duration must be a positive number"),
    (append(entries=(LogEntry(3, SetCommand("k", "v")),)), "an entry's term exceeds"),
    (append(prev_log_term=3), "prev_log_term exceeds"),
    (append(term=0), "an AppendEntries needs a term ≥ 1"),
    (append(term=MAX_TERM + 1), f"term {MAX_TERM + 1} exceeds the limit"),
    (append(term=2**64 - 1), "term 18446744073709551615 exceeds the limit"),
    (append(prev_log_index=0, prev_log_term=1), "prev_log_term must be 0 when"),
    (append(prev_log_index=3, prev_log_term=0), "prev_log_term must be ≥ 1 when"),
    (append(prev_log_index=MAX_INDEX + 1, prev_log_term=1), "prev_log_index"),
    (append(leader_commit=MAX_INDEX + 1), "leader_commit"),
    (append(round=2**64 - 1), "round"),
    (
        append(prev_log_index=MAX_INDEX, prev_log_term=1, entries=(LogEntry(2, NO_OP),)),
        "last entry index",
    ),
    (append(entries=(LogEntry(0, NO_OP),)), "entry 1 has term 0"),
    (append(entries=(LogEntry(2, NO_OP, MAX_INDEX + 1),)), "entry 1's time"),
    (
        append(entries=(LogEntry(2, NO_OP), LogEntry(1, NO_OP))),
        "entry 2's term 1 is below the entry before it (2)",
    ),
    (
        append(prev_log_index=4, prev_log_term=2, entries=(LogEntry(1, NO_OP),)),
        "entry 1's term 1 is below prev_log_term (2)",
    ),
    (AppendEntriesReply(2, 7, True, 1, 0, 1), "follower_id 7 is not a member"),
    (AppendEntriesReply(2**64 - 1, 3, True, 1, 0, 1), "term 18446744073709551615 exceeds"),
    (AppendEntriesReply(2, 3, True, MAX_INDEX + 1, 0, 1), "match_index"),
    (AppendEntriesReply(2, 3, False, 0, MAX_INDEX + 1, 1), "conflict_index"),
    (AppendEntriesReply(2, 3, False, 0, 1, MAX_INDEX + 1), "round"),
    (RequestVote(0, 2, 0, 0), "a vote request needs a term"),
    (RequestVote(1, 1, 0, 0), "candidate_id 1 is not a member"),
    (RequestVote(2**64 - 1, 2, 0, 0), "term 18446744073709551615 exceeds"),
    (RequestVote(2, 2, 1, 3), "last_log_term exceeds the candidate's term"),
    (RequestVote(2, 2, 0, 1), "last_log_term must be 0 when"),
    (RequestVote(2, 2, 9, 0), "last_log_term must be ≥ 1 when"),
    (RequestVote(2, 2, MAX_INDEX + 1, 1), "last_log_index"),
    (RequestVoteReply(1, 3, True, -1.0), "old_lease_remaining must be ≥ 0"),
    (RequestVoteReply(1, 3, True, float("nan")), "old_lease_remaining must be finite, got nan"),
    (RequestVoteReply(1, 3, True, float("inf")), "old_lease_remaining must be finite, got inf"),
    (RequestVoteReply(0, 3, True, 0.0), "a vote reply needs a term ≥ 1"),
    (RequestVoteReply(MAX_TERM + 1, 3, True, 0.0), "exceeds the limit"),
    (RequestVoteReply(1, 8, True, 0.0), "voter_id 8 is not a member"),
    (InstallSnapshotReply(2, 9, 5, True, 5), "follower_id 9 is not a member"),
    (InstallSnapshot(2, 2, 5, 1, 1e300), "exceeds the longest lease"),
    (InstallSnapshot(0, 2, 5, 1, 0.5), "an InstallSnapshot needs a term ≥ 1"),
    (InstallSnapshot(2, 2, 0, 1, 0.5), "a snapshot covers at least entry 1"),
    (InstallSnapshot(2, 2, 5, 0, 0.5), "a snapshot covers at least entry 1"),
    (InstallSnapshot(2, 2, 5, 3, 0.5), "last_term exceeds the leader's term"),
    (InstallSnapshot(2, 2, 5, 1, 0.5, done=True), "only the last chunk"),
    (InstallSnapshot(2, 2, 5, 1, 0.5, image=IMAGE), "only the last chunk"),
    (InstallSnapshot(2, 2, 6, 1, 0.5, done=True, image=IMAGE), "not the one the chunk names"),
    (InstallSnapshot(2, 2, MAX_INDEX + 1, 1, 0.5), "last_index"),
    (InstallSnapshotReply(2, 7, 5), "follower_id 7 is not a member"),
    (InstallSnapshotReply(2, 3, MAX_INDEX + 1), "last_index"),
    (InstallSnapshotReply(2, 3, 5, True, MAX_INDEX + 1), "match_index"),
]


@pytest.mark.parametrize(("message", "reason"), BAD, ids=[r for _, r in BAD])
def test_malformed_messages_are_named(message: Message, reason: str) -> None:
    problem = malformed(message, MEMBERS)
    assert problem is not None and reason in problem


def test_well_formed_messages_pass() -> None:
    well_formed: list[Message] = [
        append(entries=(LogEntry(2, SetCommand("k", "v")),), prev_log_index=1, prev_log_term=1),
        append(
            entries=(LogEntry(2, DeleteCommand("k", "c", 2)),), prev_log_index=1, prev_log_term=1
        ),
        append(term=MAX_TERM, entries=(LogEntry(1, NO_OP), LogEntry(MAX_TERM, NO_OP))),
        AppendEntriesReply(2, 3, False, 0, 1, 0),
        RequestVote(1, 2, 0, 0),
        RequestVote(MAX_TERM, 2, 7, 3),
        RequestVoteReply(1, 3, False, 0.0),
    ]
    for message in well_formed:
        assert malformed(message, MEMBERS) is None


@pytest.mark.parametrize(("message", "reason"), BAD, ids=[r for _, r in BAD])
def test_the_core_drops_a_malformed_message_and_reports_it(message: Message, reason: str) -> None:
    node = RaftNode(1, MEMBERS, CONFIG, random.Random(0), 0.0)
    node.advance(node.take_ready())
    before = (node.term, node.voted_for, node.role, node.log.held(), node.next_deadline())
    node.step(message, 0.1)
    ready = node.take_ready()
    assert ready.messages == () and ready.hard_state is None and not ready.log_changed
    assert len(ready.events) == 1
    event = ready.events[0]
    assert isinstance(event, ev.ProtocolViolation) and reason in event.reason
    assert (node.term, node.voted_for, node.role, node.log.held(), node.next_deadline()) == before


def test_unsafe_switches_name_what_they_turn_on() -> None:
    assert UnsafeSwitches().enabled() == []
    assert UnsafeSwitches(accept_malformed=True).enabled() == ["accept_malformed"]


def test_the_accept_malformed_control_lets_a_bad_message_through() -> None:
    node = RaftNode(
        1, MEMBERS, CONFIG, random.Random(0), 0.0, unsafe=UnsafeSwitches(accept_malformed=True)
    )
    node.advance(node.take_ready())
    assert node.check_message(append(lease_duration=float("inf"))) is None
    node.step(append(lease_duration=float("inf")), 0.1)
    assert not any(isinstance(e, ev.ProtocolViolation) for e in node.take_ready().events)


def test_a_node_at_max_term_does_not_campaign() -> None:
    state = PersistentState(HardState(MAX_TERM, None), ())
    node = RaftNode(1, MEMBERS, CONFIG, random.Random(0), 0.0, persisted=state)
    node.advance(node.take_ready())
    node.tick(10.0)
    ready = node.take_ready()
    assert ready.messages == () and ready.hard_state is None
    assert ev.TermExhausted(1, MAX_TERM) in ready.events
    assert node.term == MAX_TERM and node.role is Role.FOLLOWER
    assert node.next_deadline() > 10.0


def test_a_configuration_a_peer_sends_is_bounded() -> None:
    def append(membership: Membership) -> AppendEntries:
        entry = LogEntry(1, MembershipCommand(membership, "add learner 2"))
        return AppendEntries(1, 1, 0, 0, (entry,), 0, 0.5, 1)

    fine = Membership((Member(1), Member(2, voter=False, peer_address="h:1")))
    assert malformed(append(fine), [1]) is None
    many = Membership(tuple(Member(i) for i in range(MAX_MEMBERS + 1)))
    assert "members (at most 64)" in str(malformed(append(many), [1]))
    huge_id = Membership((Member(1), Member(MAX_NODE_ID + 1)))
    assert "outside 0.." in str(malformed(append(huge_id), [1]))
    long = Membership((Member(1, client_address="x" * (MAX_ADDRESS_CHARS + 1)),))
    assert "characters (at most 1024)" in str(malformed(append(long), [1]))


def test_a_request_from_a_node_of_no_known_configuration_is_processed() -> None:
    """Raft thesis §4.1: a node cut off while the configuration moved on must still follow a
    leader it never heard of (the shell authenticated the sender); replies are only taken from
    nodes it knows."""
    node = RaftNode(1, [2, 3], CONFIG, random.Random(1), 0.0)
    assert node.check_message(RequestVote(2, 9, 0, 0)) is None
    assert node.check_message(InstallSnapshot(2, 9, 5, 1, 0.5)) is None
    assert node.check_message(AppendEntriesReply(2, 9, True, 1, 0, 1)) is not None
    node.step(AppendEntries(3, 9, 0, 0, (LogEntry(3, NO_OP),), 0, 0.5, 1), 0.1)
    ready = node.take_ready()
    assert (node.term, node.leader_id, node.log.last_index) == (3, 9, 1)
    assert [e.to for e in ready.messages] == [9]
