"""A rolling upgrade from the release before snapshots and sessions (docs/design.md §11): a
leader uses DELETE, stamped cluster time and InstallSnapshot only once every follower has
announced it understands them (AppendEntriesReply.features)."""

from __future__ import annotations

import random

from raftkv.core.config import TimingConfig
from raftkv.core.messages import (
    NO_OP,
    PROTOCOL_FEATURES,
    AppendEntriesReply,
    DeleteCommand,
    InstallSnapshot,
    LogEntry,
    Refusal,
    Refused,
    RequestVoteReply,
    SetCommand,
)
from raftkv.core.node import HardState, PersistentState, RaftNode, Role, UnsafeSwitches
from raftkv.core.state_machine import KeyValueStateMachine

CONFIG = TimingConfig(1.0, 2.0, 0.1, 0.5, 0.0)


def leader(persisted: PersistentState | None = None) -> tuple[RaftNode, float]:
    """Node 1 of 3, elected in term 2 by node 2's vote, serving (old-lease wait over)."""
    node = RaftNode(
        1,
        [2, 3],
        CONFIG,
        random.Random(1),
        0.0,
        persisted=persisted or PersistentState(HardState(1, None), ()),
        unsafe=UnsafeSwitches(no_pre_vote=True),
    )
    now = node.next_deadline()
    node.tick(now)
    node.step(RequestVoteReply(2, 2, True, 0.0), now)
    while node.has_ready():
        node.advance(node.take_ready())
    # A restarted cluster has no old lease to wait out here: the NO-OP is appended at once.
    assert node.role is Role.LEADER and node.log.last_index > node.log.offset
    return node, now


def answer(node: RaftNode, follower: int, features: int, now: float) -> None:
    reply = AppendEntriesReply(2, follower, True, 0, 0, 0, features=features)
    node.step(reply, now)
    while node.has_ready():
        node.advance(node.take_ready())


def test_with_an_old_follower_the_leader_neither_stamps_nor_deletes() -> None:
    node, now = leader()
    answer(node, 2, PROTOCOL_FEATURES, now)
    answer(node, 3, 0, now)  # a follower still on the previous release
    node.propose(SetCommand("k", "v"), now + 1, 1)
    assert node.log.entry(node.log.last_index).time == 0
    assert node.propose(DeleteCommand("k"), now + 1, 2) == Refused(Refusal.UNSUPPORTED, 1)
    # Once it is upgraded (it answers with the feature), both are used.
    answer(node, 3, PROTOCOL_FEATURES, now + 2)
    node.propose(SetCommand("k", "w"), now + 3, 3)
    assert node.log.entry(node.log.last_index).time > 0
    assert node.propose(DeleteCommand("k"), now + 3, 4) != Refused(Refusal.UNSUPPORTED, 1)


def test_an_old_follower_behind_the_compaction_point_is_sent_no_snapshot() -> None:
    image = KeyValueStateMachine().image(10, 1)
    state = PersistentState(HardState(1, 1), [], snapshot=image, log_offset=10, log_offset_term=1)
    node, now = leader(state)
    old = AppendEntriesReply(2, 3, False, 0, 1, 1)
    node.step(old, now)
    ready = node.take_ready()
    node.advance(ready)
    assert not any(isinstance(e.message, InstallSnapshot) for e in ready.messages)
    upgraded = AppendEntriesReply(2, 3, False, 0, 1, 2, features=PROTOCOL_FEATURES)
    node.step(upgraded, now)
    ready = node.take_ready()
    assert any(isinstance(e.message, InstallSnapshot) and e.to == 3 for e in ready.messages)


def test_once_a_stamped_entry_applied_a_silent_follower_turns_nothing_off() -> None:
    """A follower that is down, or has not answered in this term, is no old release: once a
    stamped entry has applied, every node had announced the features (no downgrades)."""
    entries = (LogEntry(1, NO_OP, 5000),)
    node, now = leader(PersistentState(HardState(1, None), entries, commit_index=1))
    answer(node, 2, PROTOCOL_FEATURES, now)  # node 3 says nothing
    node.propose(SetCommand("k", "v"), now + 1, 1)
    assert node.log.entry(node.log.last_index).time > 5000
    assert node.propose(DeleteCommand("k"), now + 1, 2) != Refused(Refusal.UNSUPPORTED, 1)


def test_an_old_follower_behind_the_compaction_point_is_not_sent_appends_in_a_loop() -> None:
    image = KeyValueStateMachine().image(10, 1)
    state = PersistentState(HardState(1, 1), [], snapshot=image, log_offset=10, log_offset_term=1)
    node, now = leader(state)
    for round_ in range(1, 4):
        node.step(AppendEntriesReply(2, 3, False, 0, 1, round_), now)
        assert not node.has_ready() or not [e for e in node.take_ready().messages if e.to == 3], (
            "a rejection of an old follower was answered at once"
        )
