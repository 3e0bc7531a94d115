"""Compact, deterministic text for the core's messages, results and `Ready` batches.

Used by the transcript tests (tests/core/testdata/*.txt), in the style of etcd-io/raft's
`DescribeMessage`/`DescribeReady`: one line per message, one block per Ready. The text is part of
those tests' expected output, so it must not depend on anything but the values described.

Conventions:
- `1->2 MsgApp …`: sender (the id the message claims) -> recipient; `1->? …` for a bare message.
- Log positions are `INDEX/TERM` (`prev=3/1`: index 3, term 1); entries are `TERM:COMMAND`, their
  indexes following `prev` one by one.
- Floats have at most 4 decimals, trailing zeros stripped (`0.5`, `1`, `0.3333`, `inf`).
"""

from __future__ import annotations

import math

from .events import describe_command
from .messages import (
    Accepted,
    AppendEntries,
    AppendEntriesReply,
    ClientReply,
    Envelope,
    InstallSnapshot,
    InstallSnapshotReply,
    LogEntry,
    Message,
    ReadPending,
    ReadRange,
    ReadValue,
    Refused,
    RequestVote,
    WriteDone,
)
from .node import Ready
from .state_machine import SnapshotImage
from .validation import sender_of


def fmt_float(value: float) -> str:
    """`value` with at most 4 decimals and no trailing zeros: 0.5, 1, 0.3333, inf, nan."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def describe_entry(entry: LogEntry) -> str:
    """`TERM:COMMAND`, e.g. `2:SET k v` or `2:NO-OP`."""
    return f"{entry.term}:{describe_command(entry.command)}"


def describe_entries(entries: tuple[LogEntry, ...] | list[LogEntry]) -> str:
    return "[" + ", ".join(describe_entry(e) for e in entries) + "]"


def _extras(message: Message) -> str:
    """The fields most messages leave at their defaults, shown only when set."""
    parts = []
    if getattr(message, "timeout_now", False):
        parts.append("timeout_now")
    if getattr(message, "transfer", False):
        parts.append("transfer")
    if message.max_clock_drift:
        parts.append(f"drift={fmt_float(message.max_clock_drift)}")
    incarnation = getattr(message, "incarnation", 0)
    if incarnation:
        parts.append(f"incarnation={incarnation:x}")
    return "".join(" " + part for part in parts)


def _body(message: Message) -> str:
    return _main_body(message) + _extras(message)


def _main_body(message: Message) -> str:
    if isinstance(message, AppendEntries):
        return (
            f"MsgApp term={message.term} prev={message.prev_log_index}/{message.prev_log_term} "
            f"entries={describe_entries(message.entries)} commit={message.leader_commit} "
            f"lease={fmt_float(message.lease_duration)} round={message.round}"
        )
    if isinstance(message, AppendEntriesReply):
        parts = [f"MsgAppResp term={message.term}"]
        if message.success:
            parts += ["ok", f"match={message.match_index}"]
            if message.conflict_index:
                parts.append(f"conflict={message.conflict_index}")
        else:
            parts.append("reject")
            if message.match_index:
                parts.append(f"match={message.match_index}")
            parts.append(f"conflict={message.conflict_index}")
        parts.append(f"round={message.round}")
        return " ".join(parts)
    if isinstance(message, InstallSnapshot):
        done = " done" if message.done else ""
        return (
            f"MsgSnap term={message.term} last={message.last_index}/{message.last_term} "
            f"lease={fmt_float(message.lease_duration)}{done}"
        )
    if isinstance(message, InstallSnapshotReply):
        done = " done" if message.done else ""
        return (
            f"MsgSnapResp term={message.term} last={message.last_index}{done} "
            f"match={message.match_index}"
        )
    if isinstance(message, RequestVote):
        kind = "MsgPreVote" if message.pre_vote else "MsgVote"
        return f"{kind} term={message.term} last={message.last_log_index}/{message.last_log_term}"
    verdict = "granted" if message.granted else "denied"
    if message.pre_vote:
        return f"MsgPreVoteResp term={message.term} {verdict}"
    return (
        f"MsgVoteResp term={message.term} {verdict} "
        f"old_lease={fmt_float(message.old_lease_remaining)}"
    )


def describe_message(item: Envelope | Message) -> str:
    """One line: `1->2 MsgApp term=2 prev=3/1 entries=[2:SET k v] commit=3 lease=0.5 round=4`."""
    if isinstance(item, Envelope):
        return f"{sender_of(item.message)}->{item.to} {_body(item.message)}"
    return f"{sender_of(item)}->? {_body(item)}"


def describe_result(
    result: Accepted | WriteDone | ReadValue | ReadRange | SnapshotImage | ReadPending | Refused,
) -> str:
    """A propose/read result or a deferred reply's result, e.g. `Refused NO_LEASE hint=1`."""
    if isinstance(result, Accepted):
        return f"Accepted index={result.index} term={result.term}"
    if isinstance(result, WriteDone):
        return f"WriteDone index={result.index}"
    if isinstance(result, ReadValue):
        return "ReadValue " + ("<unset>" if result.value is None else repr(result.value))
    if isinstance(result, ReadRange):
        items = ", ".join(f"{key!r}={value!r}" for key, value in result.items)
        return f"ReadRange [{items}] more={str(result.more).lower()}"
    if isinstance(result, SnapshotImage):
        return (
            f"SnapshotImage index={result.index} term={result.term} keys={len(result.data)} "
            f"sessions={len(result.sessions)}"
        )
    if isinstance(result, ReadPending):
        return "ReadPending"
    hint = "none" if result.leader_hint is None else str(result.leader_hint)
    return f"Refused {result.reason.name} hint={hint}"


def describe_reply(reply: ClientReply) -> str:
    return f"token={reply.token} {describe_result(reply.result)}"


def describe_ready(ready: Ready) -> str:
    """A multi-line block: a header (whether it must be persisted, the commit index), then only
    the sections that are not empty, in the order the caller acts on them."""
    lines = [f"Ready needs_persist={str(ready.needs_persist).lower()} commit={ready.commit_index}:"]
    if ready.hard_state is not None:
        hard = ready.hard_state
        vote = "none" if hard.voted_for is None else hard.voted_for
        bounds = f" lease_bound={fmt_float(hard.lease_bound)}" if hard.lease_bound else ""
        lines.append(f"HardState term={hard.term} vote={vote}{bounds}")
    if ready.installed is not None:
        image = ready.installed
        lines.append(
            f"Installed snapshot index={image.index} term={image.term} keys={len(image.data)} "
            f"sessions={len(image.sessions)} (durable before the log reset)"
        )
    if ready.log_reset is not None:
        index, term = ready.log_reset
        lines.append(f"LogReset: the log now starts after {index}/{term}")
    if ready.log_changed:
        if ready.entries:
            lines.append(f"Entries from={ready.first_index}: {describe_entries(ready.entries)}")
        else:
            lines.append(f"Entries from={ready.first_index}: [] (truncate)")
    for title, envelopes in (
        ("send_now", ready.send_now),
        ("send_after_persist", ready.send_after_persist),
    ):
        if envelopes:
            lines.append(f"{title}:")
            lines.extend("  " + describe_message(e) for e in envelopes)
    if ready.replies:
        lines.append("replies:")
        lines.extend("  " + describe_reply(r) for r in ready.replies)
    if ready.applied:
        lines.append("applied:")
        lines.extend(f"  {index}: {describe_entry(entry)}" for index, entry in ready.applied)
    if ready.snapshot is not None:
        image = ready.snapshot
        lines.append(
            f"Snapshot index={image.index} term={image.term} keys={len(image.data)} "
            f"sessions={len(image.sessions)} (write in the background)"
        )
    if ready.compact_to:
        lines.append(f"CompactTo {ready.compact_to} (after the entries above)")
    if ready.events:
        lines.append("events:")
        lines.extend(f"  {event}" for event in ready.events)
    return "\n".join(lines)
