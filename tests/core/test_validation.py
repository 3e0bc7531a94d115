"""Malformed peer messages: refused by the core's own checks, reported, never acted on."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from raftkv.core import events as ev
from raftkv.core.config import TimingConfig
from raftkv.core.messages import (
    AppendEntries,
    AppendEntriesReply,
    LogEntry,
    Message,
    RequestVote,
    RequestVoteReply,
    SetCommand,
)
from raftkv.core.node import RaftNode, UnsafeSwitches
from raftkv.core.validation import malformed

CONFIG = TimingConfig(1.0, 2.0, 0.1, 0.5, 0.0)
MEMBERS = (2, 3)


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
    (append(leader_id=9), "leader_id 9 is not a member"),
    (append(lease_duration=float("nan")), "lease_duration must be a positive number"),
    (append(lease_duration=float("inf")), "lease_duration must be a positive number"),
    (append(lease_duration=0.0), "lease_duration must be a positive number"),
    (append(entries=(LogEntry(3, SetCommand("k", "v")),)), "an entry's term exceeds"),
    (append(prev_log_term=3), "prev_log_term exceeds"),
    (AppendEntriesReply(2, 7, True, 1, 0, 1), "follower_id 7 is not a member"),
    (RequestVote(0, 2, 0, 0), "a vote request needs a term"),
    (RequestVote(1, 1, 0, 0), "candidate_id 1 is not a member"),
    (RequestVoteReply(1, 3, True, -1.0), "old_lease_remaining must be ≥ 0"),
    (RequestVoteReply(1, 3, True, float("nan")), "old_lease_remaining must be ≥ 0"),
    (RequestVoteReply(1, 8, True, 0.0), "voter_id 8 is not a member"),
]


@pytest.mark.parametrize(("message", "reason"), BAD, ids=[r for _, r in BAD])
def test_malformed_messages_are_named(message: Message, reason: str) -> None:
    problem = malformed(message, MEMBERS)
    assert problem is not None and reason in problem


def test_well_formed_messages_pass() -> None:
    well_formed: list[Message] = [
        append(entries=(LogEntry(2, SetCommand("k", "v")),), prev_log_term=1),
        AppendEntriesReply(2, 3, False, 0, 1, 0),
        RequestVote(1, 2, 0, 0),
        RequestVoteReply(1, 3, False, 0.0),
    ]
    for message in well_formed:
        assert malformed(message, MEMBERS) is None


@pytest.mark.parametrize(("message", "reason"), BAD, ids=[r for _, r in BAD])
def test_the_core_drops_a_malformed_message_and_reports_it(message: Message, reason: str) -> None:
    node = RaftNode(1, MEMBERS, CONFIG, random.Random(0), 0.0)
    node.advance(node.take_ready())
    before = (node.term, node.voted_for, node.role, list(node.log), node.next_deadline())
    node.step(message, 0.1)
    ready = node.take_ready()
    assert ready.messages == () and ready.hard_state is None and not ready.log_changed
    assert len(ready.events) == 1
    event = ready.events[0]
    assert isinstance(event, ev.ProtocolViolation) and reason in event.reason
    assert (node.term, node.voted_for, node.role, list(node.log), node.next_deadline()) == before


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
