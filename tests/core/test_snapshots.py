"""Snapshots and compaction in the core (docs/design.md §12): when an image is handed out, what
is compacted once it is durable, and how a node starts from a snapshot and a log tail."""

from __future__ import annotations

import random

import pytest

from raftkv.core import events as ev
from raftkv.core.config import SnapshotPolicy, TimingConfig
from raftkv.core.messages import (
    NO_OP,
    PROTOCOL_FEATURES,
    AppendEntries,
    AppendEntriesReply,
    InstallSnapshot,
    InstallSnapshotReply,
    LogEntry,
    RequestVoteReply,
    SetCommand,
)
from raftkv.core.node import (
    CoreMisuseError,
    HardState,
    PersistentState,
    RaftNode,
    Ready,
    Role,
    UnsafeSwitches,
)
from raftkv.core.state_machine import KeyValueStateMachine, SnapshotImage

CONFIG = TimingConfig(
    election_timeout_min=1.0,
    election_timeout_max=2.0,
    heartbeat_interval=0.1,
    lease_duration=0.5,
    max_clock_drift=0.0,
)


def single(policy: SnapshotPolicy, unsafe: UnsafeSwitches | None = None) -> RaftNode:
    """A cluster of one, already leader and serving (its NO-OP at index 1 committed)."""
    node = RaftNode(
        1, [], CONFIG, random.Random(1), 0.0, snapshots=policy, unsafe=unsafe or UnsafeSwitches()
    )
    node.tick(node.next_deadline())
    node.tick(node.next_deadline())  # the old-lease wait of rule 3 ends
    drain(node)
    assert node.role is Role.LEADER and node.commit_index == 1
    return node


def drain(node: RaftNode) -> list[Ready]:
    readies = []
    while node.has_ready():
        ready = node.take_ready()
        readies.append(ready)
        node.advance(ready)
    return readies


def write(node: RaftNode, count: int, value: str = "v", now: float = 5.0) -> list[Ready]:
    for i in range(count):
        node.propose(SetCommand(f"k{i}", value), now, i + 1)
    return drain(node)


def image_of(readies: list[Ready]) -> SnapshotImage:
    images = [r.snapshot for r in readies if r.snapshot is not None]
    assert len(images) == 1, images
    return images[0]


def test_an_image_is_handed_out_once_enough_has_committed_and_compaction_waits_for_it() -> None:
    node = single(SnapshotPolicy(entries=5, trailing_entries=2, idle=None))
    readies = write(node, 4)
    image = image_of(readies)
    assert (image.index, image.term) == (5, 1) and len(image.data) == 4
    assert all(r.compact_to == 0 for r in readies)
    assert node.log.first_index == 1  # nothing dropped before the image is durable
    write(node, 6)  # no second image while the first is being written
    assert node.log.last_index == 11
    node.snapshot_saved(5, 6.0)
    [ready] = drain(node)
    # min(snapshot index 5, last 11 − 2 trailing): the whole snapshot, since the tail is long.
    assert ready.compact_to == 5 and node.log.first_index == 6
    assert node.status(6.0).snapshot_index == 5
    assert ev.SnapshotSaved(1, 5, 1) in ready.events and ev.LogCompacted(1, 5, 1) in ready.events
    # 6 more entries have committed since: the next image comes in the same Ready.
    assert ready.snapshot is not None and ready.snapshot.index == 11


def test_the_trailing_entries_stay_when_the_log_after_the_snapshot_is_short() -> None:
    node = single(SnapshotPolicy(entries=5, trailing_entries=3, idle=None))
    image = image_of(write(node, 4))
    node.snapshot_saved(image.index, 6.0)
    [ready] = drain(node)
    assert ready.compact_to == 2 and node.log.first_index == 3 and node.log.offset_term == 1


def test_large_values_trigger_a_snapshot_before_the_entry_count_does() -> None:
    node = single(SnapshotPolicy(entries=1000, bytes=300, idle=None))
    assert all(r.snapshot is None for r in write(node, 1, "x" * 100))
    assert image_of(write(node, 2, "x" * 100)).index == 4


def test_a_failed_write_is_retried_only_after_an_election_timeout() -> None:
    node = single(SnapshotPolicy(entries=2, trailing_entries=0, idle=None))
    image = image_of(write(node, 1))
    node.snapshot_failed(image.index, 6.0, "No space left on device")
    [ready] = drain(node)
    assert ev.SnapshotFailed(1, 2, "No space left on device") in ready.events
    assert node.log.first_index == 1
    assert all(r.snapshot is None for r in write(node, 3, now=6.5))
    node.tick(6.0 + CONFIG.election_timeout_max)
    assert image_of(drain(node)).index == 5


def test_a_late_or_unknown_saved_report_is_ignored_or_refused() -> None:
    node = single(SnapshotPolicy(entries=2, trailing_entries=0, idle=None))
    image = image_of(write(node, 1))
    node.snapshot_saved(image.index, 6.0)
    drain(node)
    node.snapshot_saved(image.index, 6.0)  # twice: nothing more happens
    assert not node.has_ready()
    with pytest.raises(CoreMisuseError):
        node.snapshot_saved(99, 6.0)


def test_a_node_starts_from_its_snapshot_and_the_log_after_it() -> None:
    machine = KeyValueStateMachine()
    machine.apply(SetCommand("a", "1", "c", 1), 3)
    image = machine.image(4, 2)
    tail = [LogEntry(2, SetCommand("b", "2")), LogEntry(3, NO_OP)]
    state = PersistentState(
        HardState(3, None), tail, commit_index=5, snapshot=image, log_offset=4, log_offset_term=2
    )
    node = RaftNode(2, [1, 3], CONFIG, random.Random(2), 0.0, persisted=state)
    assert (node.commit_index, node.log.first_index, node.log.last_index) == (5, 5, 6)
    assert node.state_machine.get("a") == "1" and node.state_machine.get("b") == "2"
    assert node.state_machine.last_applied("c") == (1, 3)
    [ready] = drain(node)
    assert ready.log_reset is None and [i for i, _ in ready.applied] == [5]
    assert ev.SnapshotLoaded(2, 4, 2, 2) in ready.events


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([LogEntry(1, NO_OP)], "the log does not reach the snapshot"),
        ([LogEntry(1, NO_OP)] * 4, "the log holds another term at the snapshot's index"),
    ],
)
def test_a_log_that_disagrees_with_the_snapshot_is_replaced_by_it(
    entries: list[LogEntry], why: str
) -> None:
    image = KeyValueStateMachine().image(4, 2)
    state = PersistentState(HardState(2, None), entries, snapshot=image)
    node = RaftNode(2, [1, 3], CONFIG, random.Random(2), 0.0, persisted=state)
    assert (node.log.offset, node.log.last_index, node.log.last_term) == (4, 4, 2), why
    assert node.commit_index == 4
    [ready] = drain(node)
    assert ready.log_reset == (4, 2) and ready.needs_persist


def test_a_log_that_starts_after_the_snapshot_is_refused() -> None:
    image = KeyValueStateMachine().image(4, 2)
    with pytest.raises(ValueError, match=r"entries 5\.\.6 are missing"):
        RaftNode(
            2,
            [1, 3],
            CONFIG,
            random.Random(2),
            0.0,
            persisted=PersistentState(
                HardState(2, None), [], snapshot=image, log_offset=6, log_offset_term=2
            ),
        )
    with pytest.raises(ValueError, match=r"entries 1\.\.3 are missing"):
        RaftNode(
            2,
            [1, 3],
            CONFIG,
            random.Random(2),
            0.0,
            persisted=PersistentState(HardState(2, None), [], log_offset=3, log_offset_term=1),
        )


def test_a_follower_accepts_entries_it_already_compacted_without_truncating() -> None:
    image = KeyValueStateMachine().image(4, 1)
    state = PersistentState(
        HardState(1, 1),
        [LogEntry(1, SetCommand("k", "5"))],
        commit_index=5,
        snapshot=image,
        log_offset=4,
        log_offset_term=1,
    )
    node = RaftNode(2, [1, 3], CONFIG, random.Random(2), 0.0, persisted=state)
    drain(node)
    entries = tuple(LogEntry(1, SetCommand("k", str(i))) for i in range(3, 7))
    message = AppendEntries(1, 1, 2, 1, entries, 5, 0.5, round=7)
    node.step(message, 0.1)
    [ready] = drain(node)
    reply = ready.messages[0].message
    assert isinstance(reply, AppendEntriesReply) and reply.success and reply.match_index == 6
    assert ready.first_index == 6 and ready.entries == entries[-1:]
    assert node.log.first_index == 5 and node.log.last_index == 6


def leader_after_snapshot() -> RaftNode:
    """Node 1, restarted from a snapshot at 10 with nothing after it, elected in term 2."""
    machine = KeyValueStateMachine()
    machine.apply(SetCommand("k", "v"), 9)
    state = PersistentState(
        HardState(1, 1), [], snapshot=machine.image(10, 1), log_offset=10, log_offset_term=1
    )
    unsafe = UnsafeSwitches(no_pre_vote=True)
    node = RaftNode(1, [2, 3], CONFIG, random.Random(1), 0.0, persisted=state, unsafe=unsafe)
    now = node.next_deadline()
    node.tick(now)
    drain(node)
    node.step(RequestVoteReply(2, 2, True, 0.0), now)
    drain(node)
    assert node.role is Role.LEADER
    return node


def sent_to(ready: Ready, peer: int) -> list[object]:
    return [e.message for e in ready.messages if e.to == peer]


def test_a_follower_behind_the_compaction_point_is_sent_the_snapshot_once() -> None:
    node = leader_after_snapshot()
    now = node.next_deadline() - 0.5
    # Node 3 has an empty log: it rejects, pointing at index 1, which was compacted away.
    node.step(AppendEntriesReply(2, 3, False, 0, 1, 1, features=PROTOCOL_FEATURES), now)
    [ready] = drain(node)
    intent, heartbeat = sent_to(ready, 3)
    assert intent == InstallSnapshot(2, 1, 10, 1, CONFIG.lease_duration)
    assert isinstance(heartbeat, AppendEntries)
    assert (heartbeat.prev_log_index, heartbeat.prev_log_term, heartbeat.entries) == (10, 1, ())
    assert ev.SnapshotSending(1, 3, 10, 1) in ready.events
    # While it streams, rejections move nothing and start no second transfer.
    node.step(AppendEntriesReply(2, 3, False, 0, 1, 2, features=PROTOCOL_FEATURES), now)
    assert not any(isinstance(m, InstallSnapshot) for r in drain(node) for m in sent_to(r, 3))
    # Installed: replication goes on from the snapshot's index.
    node.step(InstallSnapshotReply(2, 3, 10, True, 10), now)
    [ready] = drain(node)
    [append] = sent_to(ready, 3)
    assert isinstance(append, AppendEntries) and append.prev_log_index == 10


def test_a_failed_transfer_is_retried_once_the_follower_answers_again() -> None:
    node = leader_after_snapshot()
    now = node.next_deadline() - 0.5
    node.step(AppendEntriesReply(2, 3, False, 0, 1, 1, features=PROTOCOL_FEATURES), now)
    drain(node)
    node.snapshot_send_failed(3, now)
    [ready] = drain(node)
    assert ev.SnapshotSendFailed(1, 3) in ready.events
    # Heartbeats go on, but no new transfer until node 3 answers again.
    now = node.next_deadline()
    node.tick(now)
    assert not any(isinstance(m, InstallSnapshot) for r in drain(node) for m in sent_to(r, 3))
    answer = AppendEntriesReply(2, 3, False, 0, 1, node._round, features=PROTOCOL_FEATURES)
    node.step(answer, now)
    [ready] = drain(node)
    assert isinstance(sent_to(ready, 3)[0], InstallSnapshot)
    node.snapshot_send_failed(2, now)  # a follower not being sent one: nothing happens
    assert not node.has_ready()


def follower(commit: int = 0, entries: tuple[LogEntry, ...] = ()) -> RaftNode:
    state = PersistentState(HardState(2, None), entries, commit_index=commit)
    node = RaftNode(3, [1, 2], CONFIG, random.Random(3), 0.0, persisted=state)
    drain(node)
    return node


def chunk(image: SnapshotImage | None, *, term: int = 2, lease: float = 0.5) -> InstallSnapshot:
    return InstallSnapshot(term, 1, 10, 1, lease, done=image is not None, image=image)


def test_a_follower_installs_the_snapshot_from_its_last_chunk() -> None:
    node = follower(entries=(LogEntry(1, NO_OP), LogEntry(2, SetCommand("x", "old"))))
    deadline = node.next_deadline()
    node.step(chunk(None, lease=0.9), 0.5)
    [ready] = drain(node)
    assert node.next_deadline() > deadline  # a chunk resets the election timer
    assert node.leader_id == 1 and node.lease_bound == 0.9  # and records the lease (rule 2)
    assert ready.messages[0].message == InstallSnapshotReply(2, 3, 10, False, 0)
    machine = KeyValueStateMachine()
    machine.apply(SetCommand("k", "v", "c", 1), 9)
    image = machine.image(10, 1)
    node.step(chunk(image), 0.6)
    [ready] = drain(node)
    assert ready.installed is image and ready.log_reset == (10, 1) and ready.needs_persist
    assert ready.send_now == () and ready.send_after_persist[0].message == InstallSnapshotReply(
        2, 3, 10, True, 10
    )
    assert node.state_machine.get("k") == "v" and node.state_machine.get("x") is None
    assert node.state_machine.last_applied("c") == (1, 9)
    assert (node.commit_index, node.log.offset, node.log.last_index) == (10, 10, 10)
    assert node.status(0.6).snapshot_index == 10
    assert ev.SnapshotInstalled(3, 10, 1) in ready.events
    # A duplicate of the last chunk is stale now: answered, nothing changes.
    node.step(chunk(image), 0.7)
    [ready] = drain(node)
    assert ready.installed is None and ready.messages[0].message == InstallSnapshotReply(
        2, 3, 10, True, 10
    )


def test_a_snapshot_whose_last_entry_the_log_holds_only_commits() -> None:
    entries = tuple(LogEntry(1, SetCommand("k", str(i))) for i in range(12))
    node = follower(entries=entries)
    node.step(chunk(KeyValueStateMachine().image(10, 1)), 0.5)
    [ready] = drain(node)
    assert ready.installed is None and ready.log_reset is None
    assert node.commit_index == 10 and node.log.last_index == 12
    assert node.state_machine.get("k") == "9"


def test_a_snapshot_from_an_old_term_is_refused_in_the_followers_term() -> None:
    node = follower()
    node.step(chunk(None, term=2), 0.1)
    drain(node)
    node.step(replace_term(chunk(KeyValueStateMachine().image(10, 1)), 5), 0.2)
    drain(node)
    node.step(chunk(KeyValueStateMachine().image(10, 1), term=2), 0.3)
    [ready] = drain(node)
    assert ready.installed is None
    assert ready.messages[0].message == InstallSnapshotReply(5, 3, 10, True, 0)


def replace_term(message: InstallSnapshot, term: int) -> InstallSnapshot:
    return InstallSnapshot(
        term,
        message.leader_id,
        message.last_index,
        message.last_term,
        message.lease_duration,
        message.done,
        message.image,
    )


def test_a_leader_refuses_a_snapshot_from_a_second_leader_of_its_term() -> None:
    node = leader_after_snapshot()
    node.step(InstallSnapshot(2, 2, 10, 1, 0.5), 1.0)
    [ready] = drain(node)
    assert node.role is Role.LEADER
    assert any(isinstance(e, ev.ProtocolViolation) for e in ready.events)


def test_a_node_that_is_not_admitted_installs_nothing() -> None:
    node = RaftNode(3, [1, 2], CONFIG, random.Random(3), 0.0, admitted=False)
    drain(node)
    node.step(chunk(KeyValueStateMachine().image(10, 1)), 0.5)
    [ready] = drain(node)
    assert ready.installed is None and node.commit_index == 0
    assert ready.messages[0].message == InstallSnapshotReply(2, 3, 10, True, 0)


def test_the_negative_control_compacts_before_the_image_is_durable() -> None:
    node = single(
        SnapshotPolicy(entries=2, trailing_entries=0, idle=None),
        UnsafeSwitches(compact_before_snapshot_durable=True),
    )
    readies = write(node, 1)
    [ready] = [r for r in readies if r.snapshot is not None]
    assert ready.compact_to == 2 and node.log.first_index == 3


def test_at_rest_a_node_snapshots_the_rest_and_drops_the_trailing_log() -> None:
    node = single(SnapshotPolicy(entries=5, trailing_entries=3, idle=2.0))
    t = node._last_commit_at + 0.1  # within the idle time of the last commit
    image = image_of(write(node, 4, now=t))
    node.snapshot_saved(image.index, t)
    drain(node)
    write(node, 2, now=t)  # 7 entries, snapshot at 5 (log after 2), 6..7 in no snapshot
    assert (node.log.offset, node.commit_index) == (2, 7)
    # Nothing commits for 2 s: the node is woken then, snapshots the rest...
    rest_at = node._last_commit_at + 2.0
    assert not node.has_ready()
    node.tick(rest_at)
    rest = image_of(drain(node))
    assert rest.index == 7
    node.snapshot_saved(7, rest_at)
    # ...and, at rest, keeps no trailing entries (a cluster of one: nobody else needs them).
    [ready] = drain(node)
    assert ready.compact_to == 7 and node.log.offset == 7 and node.log.held() == []
    # Nothing more to do at rest: the next wake-up is a heartbeat, not the idle rule again.
    node.tick(node.next_deadline())
    assert all(r.snapshot is None and not r.compact_to for r in drain(node))


def test_at_rest_a_leader_keeps_what_a_lagging_follower_still_needs() -> None:
    node = leader_after_snapshot()
    now = node.next_deadline() - 0.5
    assert node.log.offset == 10
    # Its NO-OP (11) is committed with node 2; node 3 stays at 10.
    node.step(AppendEntriesReply(2, 3, True, 10, 0, 1, features=PROTOCOL_FEATURES), now)
    node.step(AppendEntriesReply(2, 2, True, 11, 0, 1, features=PROTOCOL_FEATURES), now)
    drain(node)
    assert node.commit_index == 11
    saved = False
    for step in range(1, 40):  # node 2 answers every heartbeat; nothing else commits
        t = now + 0.1 * step
        node.tick(t)
        for ready in drain(node):
            if ready.snapshot is not None:
                node.snapshot_saved(ready.snapshot.index, t)
                saved = True
        reply = AppendEntriesReply(2, 2, True, 11, 0, node._round, features=PROTOCOL_FEATURES)
        node.step(reply, t)
        drain(node)
    assert saved and node.role is Role.LEADER and node.status(t).snapshot_index == 11
    assert node.log.offset == 10  # node 3 still needs entry 11 from the log
