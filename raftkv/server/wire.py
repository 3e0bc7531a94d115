"""Conversion between the core's messages and protobuf, validating everything a peer sends.

A peer's message that cannot be decoded, or that the core's own checks
(raftkv/core/validation.py) refuse, raises `WireError`; the RPC answers INVALID_ARGUMENT and the
core never sees it.
"""

from __future__ import annotations

import operator
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final, TypeVar

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
from raftkv.core.validation import MAX_MEMBERS, malformed
from raftkv.rpc import raftkv_pb2 as pb

M = TypeVar("M", bound=Message)


# A snapshot chunk carries at most this many bytes: a peer never makes a node buffer more per
# request (the sender reads exactly this much per chunk; the receiver refuses larger ones).
SNAPSHOT_CHUNK_BYTES: Final = 256 * 1024
# The largest snapshot a transfer may announce. Far beyond any state a node holds in memory;
# it bounds what a faulty peer can make a follower write to its disk in one transfer.
MAX_SNAPSHOT_BYTES: Final = 64 * 1024**3


class WireError(ValueError):
    """A message from the network that the core must not see."""


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """One InstallSnapshotArgs: the core's message and the wire-only fields, which stay in the
    shell. The message's `done` is False and its `image` None whatever `done` says here: the
    core takes a chunk as the last one only with the verified image, which the receiving shell
    attaches (raftkv/server/snapshot_transfer.py)."""

    message: InstallSnapshot
    offset: int
    total_size: int
    data: bytes
    # The chunk that ends the file: offset + len(data) == total_size.
    done: bool = False

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass(frozen=True, slots=True)
class SnapshotChunkReply:
    """One InstallSnapshotReply: the core's reply and where the follower wants the next chunk
    to start (the bytes of this transfer it holds)."""

    message: InstallSnapshotReply
    next_offset: int


def entry_to_pb(entry: LogEntry) -> pb.LogEntry:
    command = entry.command
    if isinstance(command, SetCommand):
        return pb.LogEntry(
            term=entry.term,
            set=pb.SetCommand(
                key=command.key,
                value=command.value,
                client_id=command.client_id,
                seq=command.seq,
                resume=command.resume,
            ),
            time=entry.time,
        )
    if isinstance(command, DeleteCommand):
        return pb.LogEntry(
            term=entry.term,
            delete=pb.DeleteCommand(
                key=command.key, client_id=command.client_id, seq=command.seq, resume=command.resume
            ),
            time=entry.time,
        )
    if isinstance(command, MembershipCommand):
        members = [
            pb.Member(
                node_id=m.node_id,
                voter=m.voter,
                client_address=m.client_address,
                peer_address=m.peer_address,
            )
            for m in command.membership.members
        ]
        return pb.LogEntry(
            term=entry.term,
            membership=pb.MembershipCommand(members=members, change=command.change),
            time=entry.time,
        )
    return pb.LogEntry(term=entry.term, noop=pb.NoOp(), time=entry.time)


def entry_from_pb(message: pb.LogEntry) -> LogEntry:
    kind = message.WhichOneof("command")
    if kind == "set":
        c = message.set
        command = SetCommand(c.key, c.value, c.client_id, c.seq, c.resume)
        return LogEntry(message.term, command, message.time)
    if kind == "delete":
        d = message.delete
        return LogEntry(
            message.term, DeleteCommand(d.key, d.client_id, d.seq, d.resume), message.time
        )
    if kind == "noop":
        return LogEntry(message.term, NO_OP, message.time)
    if kind == "membership":
        m = message.membership
        # Before building them: a peer's configuration is bounded (validation.MAX_MEMBERS), and
        # millions of tiny members in one message must not become millions of objects.
        if len(m.members) > MAX_MEMBERS:
            raise WireError(f"a configuration of {len(m.members)} members (at most {MAX_MEMBERS})")
        try:
            membership = Membership(
                tuple(
                    Member(x.node_id, x.voter, x.client_address, x.peer_address) for x in m.members
                )
            )
        except ValueError as error:
            raise WireError(f"a configuration entry: {error}") from None
        return LogEntry(message.term, MembershipCommand(membership, m.change), message.time)
    raise WireError("log entry without a command")


class _RecentEntries:
    """The last AppendEntries' entries in protobuf form: a leader usually sends every follower
    the same slice of its log in a row, and building the messages is the costly part."""

    def __init__(self) -> None:
        self._entries: tuple[LogEntry, ...] = ()
        self._messages: list[pb.LogEntry] = []

    def to_pb(self, entries: tuple[LogEntry, ...]) -> list[pb.LogEntry]:
        recent = self._entries
        if not entries:
            return []
        if len(entries) != len(recent) or not all(map(operator.is_, entries, recent)):
            self._entries = entries
            self._messages = [entry_to_pb(e) for e in entries]
        return self._messages


_recent_entries = _RecentEntries()


def append_entries_to_pb(m: AppendEntries) -> pb.AppendEntriesArgs:
    return pb.AppendEntriesArgs(
        term=m.term,
        leader_id=m.leader_id,
        prev_log_index=m.prev_log_index,
        prev_log_term=m.prev_log_term,
        entries=_recent_entries.to_pb(m.entries),
        leader_commit=m.leader_commit,
        lease_duration=m.lease_duration,
        round=m.round,
        timeout_now=m.timeout_now,
        max_clock_drift=m.max_clock_drift,
    )


def append_entries_from_pb(m: pb.AppendEntriesArgs, peers: Collection[int]) -> AppendEntries:
    message = AppendEntries(
        term=m.term,
        leader_id=m.leader_id,
        prev_log_index=m.prev_log_index,
        prev_log_term=m.prev_log_term,
        entries=tuple(entry_from_pb(e) for e in m.entries),
        leader_commit=m.leader_commit,
        lease_duration=m.lease_duration,
        round=m.round,
        timeout_now=m.timeout_now,
        max_clock_drift=m.max_clock_drift,
    )
    return _checked(message, peers)


def append_reply_to_pb(m: AppendEntriesReply) -> pb.AppendEntriesReply:
    return pb.AppendEntriesReply(
        term=m.term,
        follower_id=m.follower_id,
        success=m.success,
        match_index=m.match_index,
        conflict_index=m.conflict_index,
        round=m.round,
        max_clock_drift=m.max_clock_drift,
        incarnation=m.incarnation,
        features=m.features,
    )


def append_reply_from_pb(m: pb.AppendEntriesReply, peers: Collection[int]) -> AppendEntriesReply:
    message = AppendEntriesReply(
        m.term,
        m.follower_id,
        m.success,
        m.match_index,
        m.conflict_index,
        m.round,
        max_clock_drift=m.max_clock_drift,
        incarnation=m.incarnation,
        features=m.features,
    )
    return _checked(message, peers)


def request_vote_to_pb(m: RequestVote) -> pb.RequestVoteArgs:
    return pb.RequestVoteArgs(
        term=m.term,
        candidate_id=m.candidate_id,
        last_log_index=m.last_log_index,
        last_log_term=m.last_log_term,
        pre_vote=m.pre_vote,
        transfer=m.transfer,
        max_clock_drift=m.max_clock_drift,
    )


def request_vote_from_pb(m: pb.RequestVoteArgs, peers: Collection[int]) -> RequestVote:
    message = RequestVote(
        m.term,
        m.candidate_id,
        m.last_log_index,
        m.last_log_term,
        pre_vote=m.pre_vote,
        transfer=m.transfer,
        max_clock_drift=m.max_clock_drift,
    )
    return _checked(message, peers)


def vote_reply_to_pb(m: RequestVoteReply) -> pb.RequestVoteReply:
    return pb.RequestVoteReply(
        term=m.term,
        voter_id=m.voter_id,
        granted=m.granted,
        old_lease_remaining=m.old_lease_remaining,
        pre_vote=m.pre_vote,
        max_clock_drift=m.max_clock_drift,
    )


def vote_reply_from_pb(m: pb.RequestVoteReply, peers: Collection[int]) -> RequestVoteReply:
    message = RequestVoteReply(
        m.term,
        m.voter_id,
        m.granted,
        m.old_lease_remaining,
        pre_vote=m.pre_vote,
        max_clock_drift=m.max_clock_drift,
    )
    return _checked(message, peers)


def install_snapshot_to_pb(chunk: SnapshotChunk) -> pb.InstallSnapshotArgs:
    m = chunk.message
    return pb.InstallSnapshotArgs(
        term=m.term,
        leader_id=m.leader_id,
        last_index=m.last_index,
        last_term=m.last_term,
        lease_duration=m.lease_duration,
        max_clock_drift=m.max_clock_drift,
        offset=chunk.offset,
        total_size=chunk.total_size,
        data=chunk.data,
        done=chunk.done,
    )


def install_snapshot_from_pb(m: pb.InstallSnapshotArgs, peers: Collection[int]) -> SnapshotChunk:
    """The chunk, refused (WireError) when its byte range is impossible: beyond the announced
    size, a size beyond MAX_SNAPSHOT_BYTES, more than SNAPSHOT_CHUNK_BYTES of data, or `done`
    on any chunk but the one that ends the file."""
    size, offset, data = m.total_size, m.offset, m.data
    if len(data) > SNAPSHOT_CHUNK_BYTES:
        raise WireError(
            f"a snapshot chunk carries {len(data)} bytes, more than {SNAPSHOT_CHUNK_BYTES}"
        )
    if size > MAX_SNAPSHOT_BYTES:
        raise WireError(f"a snapshot of {size} bytes exceeds the limit {MAX_SNAPSHOT_BYTES}")
    if offset + len(data) > size:
        raise WireError(
            f"a snapshot chunk ends at byte {offset + len(data)}, beyond the snapshot's {size}"
        )
    if m.done != (offset + len(data) == size):
        raise WireError(
            "done must be set on the chunk that ends the snapshot, and on no other "
            f"(offset {offset}, {len(data)} bytes of {size}, done {m.done})"
        )
    message = InstallSnapshot(
        m.term,
        m.leader_id,
        m.last_index,
        m.last_term,
        m.lease_duration,
        max_clock_drift=m.max_clock_drift,
    )
    return SnapshotChunk(_checked(message, peers), offset, size, data, m.done)


def install_reply_to_pb(reply: SnapshotChunkReply) -> pb.InstallSnapshotReply:
    m = reply.message
    return pb.InstallSnapshotReply(
        term=m.term,
        follower_id=m.follower_id,
        last_index=m.last_index,
        done=m.done,
        match_index=m.match_index,
        max_clock_drift=m.max_clock_drift,
        incarnation=m.incarnation,
        next_offset=reply.next_offset,
    )


def install_reply_from_pb(m: pb.InstallSnapshotReply, peers: Collection[int]) -> SnapshotChunkReply:
    if m.next_offset > MAX_SNAPSHOT_BYTES:
        raise WireError(f"next_offset {m.next_offset} exceeds the limit {MAX_SNAPSHOT_BYTES}")
    message = InstallSnapshotReply(
        m.term,
        m.follower_id,
        m.last_index,
        m.done,
        m.match_index,
        max_clock_drift=m.max_clock_drift,
        incarnation=m.incarnation,
    )
    return SnapshotChunkReply(_checked(message, peers), m.next_offset)


def _checked(message: M, peers: Collection[int]) -> M:
    """The core's own checks, run before the message is queued so that the sender hears
    INVALID_ARGUMENT (the core would drop it too, with a ProtocolViolation event)."""
    problem = malformed(message, peers)
    if problem is not None:
        raise WireError(problem)
    return message
