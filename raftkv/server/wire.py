"""Conversion between the core's messages and protobuf, validating everything a peer sends.

A peer's message that cannot be decoded, or that the core's own checks
(raftkv/core/validation.py) refuse, raises `WireError`; the RPC answers INVALID_ARGUMENT and the
core never sees it.
"""

from __future__ import annotations

import operator
from collections.abc import Collection
from typing import TypeVar

from raftkv.core.messages import (
    NO_OP,
    AppendEntries,
    AppendEntriesReply,
    DeleteCommand,
    LogEntry,
    Message,
    RequestVote,
    RequestVoteReply,
    SetCommand,
)
from raftkv.core.validation import malformed
from raftkv.rpc import raftkv_pb2 as pb

M = TypeVar("M", bound=Message)


class WireError(ValueError):
    """A message from the network that the core must not see."""


def entry_to_pb(entry: LogEntry) -> pb.LogEntry:
    command = entry.command
    if isinstance(command, SetCommand):
        return pb.LogEntry(
            term=entry.term,
            set=pb.SetCommand(
                key=command.key, value=command.value, client_id=command.client_id, seq=command.seq
            ),
        )
    if isinstance(command, DeleteCommand):
        return pb.LogEntry(
            term=entry.term,
            delete=pb.DeleteCommand(key=command.key, client_id=command.client_id, seq=command.seq),
        )
    return pb.LogEntry(term=entry.term, noop=pb.NoOp())


def entry_from_pb(message: pb.LogEntry) -> LogEntry:
    kind = message.WhichOneof("command")
    if kind == "set":
        c = message.set
        return LogEntry(message.term, SetCommand(c.key, c.value, c.client_id, c.seq))
    if kind == "delete":
        d = message.delete
        return LogEntry(message.term, DeleteCommand(d.key, d.client_id, d.seq))
    if kind == "noop":
        return LogEntry(message.term, NO_OP)
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


def _checked(message: M, peers: Collection[int]) -> M:
    """The core's own checks, run before the message is queued so that the sender hears
    INVALID_ARGUMENT (the core would drop it too, with a ProtocolViolation event)."""
    problem = malformed(message, peers)
    if problem is not None:
        raise WireError(problem)
    return message
