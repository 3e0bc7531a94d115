"""describe.py: one stable line per message, one block per Ready."""

from __future__ import annotations

import random

import immutables
import pytest

from raftkv.core.describe import describe_message, describe_ready, describe_result, fmt_float
from raftkv.core.messages import (
    NO_OP,
    Accepted,
    AppendEntries,
    AppendEntriesReply,
    Envelope,
    LogEntry,
    Message,
    ReadRange,
    ReadValue,
    Refusal,
    Refused,
    RequestVote,
    RequestVoteReply,
    SetCommand,
)
from raftkv.core.node import RaftNode
from raftkv.core.state_machine import SnapshotImage

from .transcripts import TEST_PROFILE, parse_message

APP = AppendEntries(2, 1, 3, 1, (LogEntry(2, SetCommand("k", "v")), LogEntry(2, NO_OP)), 3, 0.5, 4)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.5, "0.5"),
        (1.0, "1"),
        (1 / 3, "0.3333"),
        (0.00001, "0"),
        (-0.00001, "0"),
        (float("inf"), "inf"),
        (float("nan"), "nan"),
        (2.5e-3, "0.0025"),
    ],
)
def test_floats_have_at_most_four_decimals_and_no_trailing_zeros(value: float, text: str) -> None:
    assert fmt_float(value) == text


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (
            APP,
            "1->2 MsgApp term=2 prev=3/1 entries=[2:SET k v, 2:NO-OP] commit=3 lease=0.5 round=4",
        ),
        (AppendEntriesReply(2, 2, True, 5, 0, 4), "2->1 MsgAppResp term=2 ok match=5 round=4"),
        (
            AppendEntriesReply(2, 2, False, 0, 3, 4),
            "2->1 MsgAppResp term=2 reject conflict=3 round=4",
        ),
        (RequestVote(3, 2, 5, 2), "2->1 MsgVote term=3 last=5/2"),
        (RequestVoteReply(3, 1, True, 0.3), "1->2 MsgVoteResp term=3 granted old_lease=0.3"),
        (RequestVoteReply(3, 1, False, 0.0), "1->2 MsgVoteResp term=3 denied old_lease=0"),
        (
            RequestVote(3, 2, 5, 2, pre_vote=True, max_clock_drift=0.01),
            "2->1 MsgPreVote term=3 last=5/2 drift=0.01",
        ),
        (RequestVote(3, 2, 5, 2, transfer=True), "2->1 MsgVote term=3 last=5/2 transfer"),
        (RequestVoteReply(3, 1, True, 0.0, pre_vote=True), "1->2 MsgPreVoteResp term=3 granted"),
        (
            AppendEntries(3, 2, 1, 1, (), 1, 0.5, 4, timeout_now=True),
            "2->1 MsgApp term=3 prev=1/1 entries=[] commit=1 lease=0.5 round=4 timeout_now",
        ),
        (
            AppendEntriesReply(3, 1, True, 2, 0, 4, incarnation=0xAB),
            "1->2 MsgAppResp term=3 ok match=2 round=4 incarnation=ab",
        ),
    ],
)
def test_each_message_kind_has_one_line_that_parses_back(message: Message, text: str) -> None:
    to = 1 if text.split("->")[1].startswith("1") else 2
    envelope = Envelope(to, message)
    assert describe_message(envelope) == text
    assert parse_message(text) == envelope


def test_a_bare_message_has_no_recipient() -> None:
    assert describe_message(RequestVote(3, 2, 5, 2)) == "2->? MsgVote term=3 last=5/2"


def test_results() -> None:
    assert describe_result(Accepted(2, 1)) == "Accepted index=2 term=1"
    assert describe_result(ReadValue(None)) == "ReadValue <unset>"
    assert describe_result(ReadValue("v")) == "ReadValue 'v'"
    page = ReadRange((("a", "1"), ("b c", "2")), more=True)
    assert describe_result(page) == "ReadRange ['a'='1', 'b c'='2'] more=true"
    image = SnapshotImage(7, 2, immutables.Map({"a": "1"}), immutables.Map())
    assert describe_result(image) == "SnapshotImage index=7 term=2 keys=1 sessions=0"
    assert describe_result(Refused(Refusal.NO_LEASE, 1)) == "Refused NO_LEASE hint=1"


def test_a_ready_lists_only_its_non_empty_sections_in_order() -> None:
    node = RaftNode(1, [2, 3], TEST_PROFILE, random.Random(1), 0.0)
    node.tick(5.0)
    assert describe_ready(node.take_ready()).splitlines() == [
        "Ready needs_persist=false commit=0:",
        "send_now:",
        "  1->2 MsgPreVote term=1 last=0/0",
        "  1->3 MsgPreVote term=1 last=0/0",
        "events:",
        "  Node 1 asking for pre-votes for term 1.",
    ]
    node.step(RequestVoteReply(1, 2, True, 0.0, pre_vote=True), 5.0)
    assert describe_ready(node.take_ready()).splitlines() == [
        "Ready needs_persist=true commit=0:",
        "HardState term=1 vote=1",
        "send_after_persist:",
        "  1->2 MsgVote term=1 last=0/0",
        "  1->3 MsgVote term=1 last=0/0",
        "events:",
        "  Node 1 election timer timed out, Starting election.",
    ]
