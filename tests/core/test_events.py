"""Typed events: `str()` is the dump sentence, and the same template parses it back."""

from __future__ import annotations

import dataclasses

import pytest

from raftkv.core import events as ev
from raftkv.core.events import describe_command
from raftkv.core.messages import DeleteCommand

EXAMPLES: list[ev.Event] = [
    ev.Restored(node=1, entries=20, applied=15),
    ev.ElectionTimeout(node=2),
    ev.VoteGranted(candidate=3, term=7),
    ev.VoteDenied(candidate=3, term=7),
    ev.BecameLeader(node=1, term=4),
    ev.WaitingForOldLease(),
    ev.SendingHeartbeat(node=1),
    ev.LeaseRenewalFailed(node=1),
    ev.SteppingDown(node=1, term=5),
    ev.ReceivedRequest(node=1, command="SET key a value with spaces"),
    ev.AppendAccepted(node=2, leader=1),
    ev.AppendRejected(node=2, leader=1),
    ev.Committed(node=2, role="follower", command="SET k v"),
    ev.LeaseMismatch(leader=1, lease=3.5, own=0.3),
    ev.ProtocolViolation(node=1, sender=9, reason="leader_id 9 is not a member of this cluster"),
    ev.TermExhausted(node=1, term=2**63 - 1),
    ev.CheckQuorumFailed(node=1, seconds=0.4),
    ev.PreVoteStarted(node=2, term=8),
    ev.VoteIgnored(node=1, kind="pre-vote", candidate=3, term=9, leader=2),
    ev.TransferStarted(node=1, target=2, term=4),
    ev.TransferAborted(node=1, target=2),
    ev.TimeoutNowReceived(node=2, leader=1, term=5),
    ev.NotAdmitted(node=3),
    ev.PeerReplaced(node=1, peer=3, old="1f", new="a0"),
]


def test_every_core_event_has_an_example() -> None:
    assert {type(e) for e in EXAMPLES} == set(ev.CORE_EVENTS)


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_each_event_parses_back_from_its_sentence(event: ev.Event) -> None:
    assert ev.parse(str(event)) == event


def test_the_assignment_sentences_are_kept_word_for_word() -> None:
    assert str(ev.BecameLeader(1, 2)) == "Node 1 became the leader for term 2."
    assert str(ev.VoteGranted(3, 2)) == "Vote granted for Node 3 in term 2."
    assert str(ev.VoteDenied(3, 2)) == "Vote denied for Node 3 in term 2."
    assert str(ev.SendingHeartbeat(1)) == "Leader 1 sending heartbeat & Renewing Lease"
    assert str(ev.LeaseRenewalFailed(1)) == "Leader 1 lease renewal failed. Stepping Down."
    assert str(ev.WaitingForOldLease()) == "New Leader waiting for Old Leader Lease to timeout."
    assert str(ev.ElectionTimeout(4)) == "Node 4 election timer timed out, Starting election."
    assert str(ev.AppendAccepted(2, 1)) == "Node 2 accepted AppendEntries RPC from 1."
    assert str(ev.AppendRejected(2, 1)) == "Node 2 rejected AppendEntries RPC from 1."
    assert (
        str(ev.Committed(2, "leader", "SET k v"))
        == "Node 2 (leader) committed the entry SET k v to the state machine."
    )
    assert str(ev.ReceivedRequest(1, "SET k v")) == "Node 1 (leader) received a SET k v request."


def test_a_committed_delete_parses_back_to_its_command() -> None:
    command = describe_command(DeleteCommand("user:1 with spaces", "c", 3))
    assert command == "DELETE user:1 with spaces"
    line = str(ev.Committed(1, "leader", command))
    assert (
        line
        == "Node 1 (leader) committed the entry DELETE user:1 with spaces to the state machine."
    )
    assert ev.parse(line) == ev.Committed(1, "leader", command)


def test_lines_that_are_no_core_event_do_not_parse() -> None:
    assert ev.parse("Node 1 became the leader for term two.") is None
    assert ev.parse("Node 1 starting at 127.0.0.1:5000: term 0") is None
    assert ev.parse("") is None


def test_events_are_frozen_values() -> None:
    event = ev.BecameLeader(1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.term = 3  # type: ignore[misc]
