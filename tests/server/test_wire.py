"""raftkv.server.wire: every core message survives protobuf both ways, its day-2 fields included
(PreVote, transfer, drift, incarnation), and what a peer could not have sent is refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from raftkv.core.messages import (
    NO_OP,
    PROTOCOL_FEATURES,
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
from raftkv.rpc import raftkv_pb2 as pb
from raftkv.server import peers, wire

PEERS = {0, 1, 2}
# The largest incarnation a data directory gets (below 2**63, docs/design.md §5).
LARGEST_INCARNATION = 2**63 - 1

ENTRIES = (
    LogEntry(1, SetCommand("k", "v w", "client", 3)),
    LogEntry(2, NO_OP),
    LogEntry(2, DeleteCommand("k w", "client", 4)),
    LogEntry(2, DeleteCommand("k")),
    LogEntry(2, SetCommand("k", "v", "client", 5, resume=True), time=86_400_123),
    LogEntry(2, DeleteCommand("k", "client", 6, resume=True), time=2**63 - 1),
    LogEntry(2, NO_OP, time=90_000_000),
)

MESSAGES: list[Message] = [
    AppendEntries(2, 0, 0, 0, ENTRIES, 1, 0.3, 7),
    AppendEntries(2, 0, 2, 2, (), 2, 3.5, 8, timeout_now=True, max_clock_drift=0.01),
    AppendEntriesReply(2, 1, True, 2, 0, 7),
    AppendEntriesReply(2, 1, False, 0, 3, 8, max_clock_drift=0.25, incarnation=LARGEST_INCARNATION),
    AppendEntriesReply(2, 1, True, 2, 0, 9, incarnation=0x5F0C9A1E33D2B7A4),
    AppendEntriesReply(2, 1, True, 2, 0, 9, features=PROTOCOL_FEATURES),
    RequestVote(3, 2, 2, 2),
    RequestVote(3, 2, 2, 2, pre_vote=True, max_clock_drift=0.01),
    RequestVote(3, 2, 2, 2, transfer=True, max_clock_drift=0.49),
    RequestVoteReply(3, 0, True, 0.25),
    RequestVoteReply(3, 0, False, 0.0, pre_vote=True, max_clock_drift=0.02),
]

CONVERTERS: dict[type, tuple[Callable[[Any], Any], Callable[[Any, set[int]], Message]]] = {
    AppendEntries: (wire.append_entries_to_pb, wire.append_entries_from_pb),
    AppendEntriesReply: (wire.append_reply_to_pb, wire.append_reply_from_pb),
    RequestVote: (wire.request_vote_to_pb, wire.request_vote_from_pb),
    RequestVoteReply: (wire.vote_reply_to_pb, wire.vote_reply_from_pb),
}


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_protobuf_and_its_bytes(message: Message) -> None:
    to_pb, from_pb = CONVERTERS[type(message)]
    encoded = to_pb(message)
    again = type(encoded).FromString(encoded.SerializeToString())
    assert from_pb(again, PEERS) == message


def test_the_day2_fields_have_their_own_numbers_after_the_old_ones() -> None:
    # Appended, never renumbered: a node of the previous version reads the old fields unchanged
    # and ignores the new ones (proto3 skips unknown fields).
    numbers = {
        (message.DESCRIPTOR.name, field.name): field.number
        for message in (
            pb.AppendEntriesArgs,
            pb.AppendEntriesReply,
            pb.RequestVoteArgs,
            pb.RequestVoteReply,
        )
        for field in message.DESCRIPTOR.fields
    }
    assert numbers[("AppendEntriesArgs", "round")] == 8
    assert numbers[("AppendEntriesArgs", "timeout_now")] == 9
    assert numbers[("AppendEntriesArgs", "max_clock_drift")] == 10
    assert numbers[("AppendEntriesReply", "round")] == 6
    assert numbers[("AppendEntriesReply", "max_clock_drift")] == 7
    assert numbers[("AppendEntriesReply", "incarnation")] == 8
    assert numbers[("RequestVoteArgs", "pre_vote")] == 5
    assert numbers[("RequestVoteArgs", "transfer")] == 6
    assert numbers[("RequestVoteArgs", "max_clock_drift")] == 7
    assert numbers[("RequestVoteReply", "pre_vote")] == 5
    assert numbers[("RequestVoteReply", "max_clock_drift")] == 6


def test_delete_takes_the_next_free_numbers_of_its_oneofs() -> None:
    entry = {f.name: f.number for f in pb.LogEntry.DESCRIPTOR.fields}
    assert (entry["set"], entry["noop"], entry["delete"]) == (2, 3, 4)
    numbers = {f.name: f.number for f in pb.PipelineRequest.DESCRIPTOR.fields}
    assert [numbers[name] for name in ("get", "set", "timeout_ms", "delete")] == [2, 3, 4, 5]


def test_an_entry_without_a_command_is_refused() -> None:
    with pytest.raises(wire.WireError, match="without a command"):
        wire.entry_from_pb(pb.LogEntry(term=1))


def test_a_message_of_the_previous_version_decodes_with_the_defaults() -> None:
    old = pb.RequestVoteArgs(term=3, candidate_id=2, last_log_index=1, last_log_term=1)
    assert wire.request_vote_from_pb(old, PEERS) == RequestVote(3, 2, 1, 1)
    reply = pb.AppendEntriesReply(term=3, follower_id=1, success=True, match_index=1, round=4)
    decoded = wire.append_reply_from_pb(reply, PEERS)
    assert decoded.incarnation == 0 and decoded.max_clock_drift == 0.0


@pytest.mark.parametrize("drift", [0.5, 2.0, float("nan"), float("inf"), -0.1])
def test_a_drift_bound_outside_the_allowed_range_is_refused(drift: float) -> None:
    with pytest.raises(wire.WireError, match="max_clock_drift"):
        wire.request_vote_from_pb(
            pb.RequestVoteArgs(term=3, candidate_id=2, max_clock_drift=drift), PEERS
        )
    with pytest.raises(wire.WireError, match="max_clock_drift"):
        wire.vote_reply_from_pb(
            pb.RequestVoteReply(term=3, voter_id=2, max_clock_drift=drift), PEERS
        )


# ---------------------------------------------------------------------------------------------
# InstallSnapshot chunks: the core's fields plus the wire-only byte range.


def _chunk(offset: int, data: bytes, size: int, done: bool) -> pb.InstallSnapshotArgs:
    return pb.InstallSnapshotArgs(
        term=3,
        leader_id=0,
        last_index=100,
        last_term=2,
        lease_duration=0.3,
        max_clock_drift=0.01,
        offset=offset,
        total_size=size,
        data=data,
        done=done,
    )


def test_a_snapshot_chunk_and_its_reply_round_trip() -> None:
    chunk = wire.SnapshotChunk(
        InstallSnapshot(3, 0, 100, 2, 0.3, max_clock_drift=0.01), 10, 13, b"abc", done=True
    )
    encoded = pb.RaftMessage.FromString(peers.request_to_pb(chunk).SerializeToString())
    assert peers.request_from_pb(encoded, PEERS) == chunk
    reply = wire.SnapshotChunkReply(
        InstallSnapshotReply(3, 1, 100, True, 100, 0.01, LARGEST_INCARNATION), 13
    )
    encoded = pb.RaftMessage.FromString(peers.reply_to_pb(reply).SerializeToString())
    assert peers.reply_from_pb(encoded, PEERS) == reply


@pytest.mark.parametrize(
    ("offset", "data", "size", "done", "problem"),
    [
        (0, b"x" * (wire.SNAPSHOT_CHUNK_BYTES + 1), 10**7, False, "more than"),
        (0, b"", wire.MAX_SNAPSHOT_BYTES + 1, False, "exceeds the limit"),
        (5, b"abc", 7, True, "beyond the snapshot"),
        (0, b"abc", 3, False, "done must be set"),
        (0, b"abc", 4, True, "done must be set"),
    ],
)
def test_a_chunk_with_an_impossible_byte_range_is_refused(
    offset: int, data: bytes, size: int, done: bool, problem: str
) -> None:
    with pytest.raises(wire.WireError, match=problem):
        wire.install_snapshot_from_pb(_chunk(offset, data, size, done), PEERS)


def test_a_chunk_the_core_would_refuse_is_refused_on_the_wire() -> None:
    bad = _chunk(0, b"abc", 3, True)
    bad.lease_duration = 1e300
    with pytest.raises(wire.WireError):
        wire.install_snapshot_from_pb(bad, PEERS)
    reply = pb.InstallSnapshotReply(term=3, follower_id=1, next_offset=wire.MAX_SNAPSHOT_BYTES + 1)
    with pytest.raises(wire.WireError, match="next_offset"):
        wire.install_reply_from_pb(reply, PEERS)


def test_the_snapshot_messages_have_their_own_numbers_in_the_peer_oneof() -> None:
    fields = {f.name: f.number for f in pb.RaftMessage.DESCRIPTOR.fields}
    assert fields["install_snapshot"] == 5 and fields["install_snapshot_reply"] == 6
    reply = {f.name: f.number for f in pb.InstallSnapshotReply.DESCRIPTOR.fields}
    assert reply["next_offset"] == 8


def test_an_entrys_cluster_time_and_resume_cross_the_wire() -> None:
    """`time` is not part of LogEntry equality (an entry is named by index and term), so the
    round trip above cannot see it: compare it field by field."""
    message = AppendEntries(2, 0, 0, 0, ENTRIES, 1, 0.3, 7)
    encoded = wire.append_entries_to_pb(message)
    decoded = wire.append_entries_from_pb(
        type(encoded).FromString(encoded.SerializeToString()), PEERS
    )
    assert [e.time for e in decoded.entries] == [e.time for e in ENTRIES]
    assert [getattr(e.command, "resume", None) for e in decoded.entries] == [
        getattr(e.command, "resume", None) for e in ENTRIES
    ]
    assert [f.number for f in pb.LogEntry.DESCRIPTOR.fields if f.name == "time"] == [5]


def test_a_configuration_entry_crosses_the_wire_and_a_bad_one_is_refused() -> None:
    membership = Membership(
        (Member(1, client_address="h1:50050", peer_address="h1:51050"), Member(4, voter=False))
    )
    entry = LogEntry(3, MembershipCommand(membership, "add learner 4"), 99)
    encoded = wire.entry_to_pb(entry)
    decoded = wire.entry_from_pb(pb.LogEntry.FromString(encoded.SerializeToString()))
    assert decoded == entry and decoded.command == entry.command and decoded.time == 99
    assert [f.number for f in pb.LogEntry.DESCRIPTOR.fields if f.name == "membership"] == [6]
    unordered = pb.LogEntry(
        term=1,
        membership=pb.MembershipCommand(
            members=[pb.Member(node_id=2, voter=True), pb.Member(node_id=1, voter=True)]
        ),
    )
    with pytest.raises(wire.WireError, match="ascending order"):
        wire.entry_from_pb(unordered)
    no_voter = pb.LogEntry(
        term=1, membership=pb.MembershipCommand(members=[pb.Member(node_id=1, voter=False)])
    )
    with pytest.raises(wire.WireError, match="at least one voter"):
        wire.entry_from_pb(no_voter)


def test_a_configuration_of_too_many_members_is_refused_before_it_is_built() -> None:
    members = [pb.Member(node_id=i, voter=True) for i in range(65)]
    entry = pb.LogEntry(term=1, membership=pb.MembershipCommand(members=members))
    with pytest.raises(wire.WireError, match="65 members"):
        wire.entry_from_pb(entry)
