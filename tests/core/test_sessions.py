"""Bounded client sessions (Raft thesis §6.3, docs/design.md §11): expiry by the cluster time
the leader stamps into the log, the same on every replica; a write that resumes an expired
session is refused, never applied twice."""

from __future__ import annotations

import random

from raftkv.core.config import TimingConfig
from raftkv.core.messages import (
    NO_OP,
    DeleteCommand,
    LogEntry,
    Refusal,
    Refused,
    SetCommand,
    WriteDone,
)
from raftkv.core.node import HardState, PersistentState, RaftNode, Role
from raftkv.core.state_machine import (
    SESSION_EXPIRED,
    KeyValueStateMachine,
    SessionRules,
)

RULES = SessionRules(lifetime_ms=1000, max_sessions=3, evict_idle_ms=500)


def machine() -> KeyValueStateMachine:
    return KeyValueStateMachine(rules=RULES)


def test_a_session_expires_once_the_cluster_time_passes_its_lifetime() -> None:
    m = machine()
    assert m.apply(SetCommand("k", "1", "c", 1), 1, time=100) == 1
    assert m.apply(NO_OP, 2, time=1099) == 2
    assert m.last_applied("c") == (1, 1)
    assert m.apply(NO_OP, 3, time=1100) == 3  # 100 + 1000: gone
    assert m.last_applied("c") is None
    # Its retry says the session must exist: refused, not applied as a new session's first.
    assert m.apply(SetCommand("k", "2", "c", 2, resume=True), 4, time=1200) is SESSION_EXPIRED
    assert m.get("k") == "1" and m.last_applied("c") is None
    # A client that never had a write acknowledged opens a new session as before.
    assert m.apply(DeleteCommand("k", "c", 1), 5, time=1300) == 5
    assert m.get("k") is None and m.last_applied("c") == (1, 5)


def test_any_write_of_a_client_keeps_its_session_alive_even_a_retry_or_a_stale_one() -> None:
    m = machine()
    m.apply(SetCommand("k", "1", "c", 2), 1, time=0)
    m.apply(SetCommand("k", "1", "c", 2), 2, time=800)  # a retry: skipped, but alive
    m.apply(SetCommand("k", "0", "c", 1), 3, time=1500)  # stale: refused, but alive
    assert m.apply(NO_OP, 4, time=2400) == 4
    assert m.last_applied("c") == (2, 1)
    m.apply(NO_OP, 5, time=2500)
    assert m.last_applied("c") is None


def test_a_log_without_stamps_never_expires_anything() -> None:
    m = machine()
    for index in range(1, 50):
        m.apply(SetCommand("k", str(index), f"c{index}", 1), index)
    assert m.cluster_time == 0 and m.last_applied("c1") == (1, 1)


def test_over_the_cap_the_longest_idle_go_first_but_only_once_past_every_retry() -> None:
    m = machine()
    for n in range(3):
        m.apply(SetCommand("k", "v", f"c{n}", 1), n + 1, time=n * 100)
    m.apply(SetCommand("k", "v", "c3", 1), 4, time=450)  # c0 idle 450 ms < 500: kept
    assert m.last_applied("c0") == (1, 1)
    m.apply(SetCommand("k", "v", "c4", 1), 5, time=550)  # c0 idle 550 ms: evicted
    assert m.last_applied("c0") is None and m.last_applied("c1") == (1, 2)


def test_replicas_and_a_replica_started_from_an_image_expire_alike() -> None:
    writes = [(SetCommand("k", str(i), f"c{i % 4}", i), i, i * 300) for i in range(1, 20)]
    first, second = machine(), machine()
    halfway = None
    for command, index, time in writes:
        first.apply(command, index, time)
        second.apply(command, index, time)
        if index == 9:
            halfway = KeyValueStateMachine(second.image(9, 1), RULES)
        elif halfway is not None:
            halfway.apply(command, index, time)
    assert halfway is not None
    image = first.image(19, 1)
    assert image.sessions == second.image(19, 1).sessions == halfway.image(19, 1).sessions
    assert image.cluster_time == halfway.image(19, 1).cluster_time == 19 * 300


CONFIG = TimingConfig(1.0, 2.0, 0.1, 0.5, 0.1)


def drain(node: RaftNode) -> list[object]:
    results: list[object] = []
    while node.has_ready():
        ready = node.take_ready()
        results += [reply.result for reply in ready.replies]
        node.advance(ready)
    return results


def serving_leader(state: PersistentState | None = None) -> tuple[RaftNode, float]:
    """A cluster of one, leader, its NO-OP committed; and the time it was elected."""
    node = RaftNode(1, [], CONFIG, random.Random(1), 0.0, persisted=state)
    elected = node.next_deadline()
    node.tick(elected)
    if node.next_deadline() > elected:
        node.tick(node.next_deadline())  # the old-lease wait (rule 3), if any, is over
    drain(node)
    assert node.role is Role.LEADER and node.commit_index == node.log.last_index
    return node, elected


def test_a_leader_stamps_cluster_time_that_never_decreases_nor_outruns_its_clock() -> None:
    node, elected = serving_leader()
    stamps = []
    for step in range(1, 6):
        node.propose(SetCommand("k", str(step)), elected + step * 2.0, step)
        stamps.append(node.log.entry(node.log.last_index).time)
    assert stamps == sorted(stamps) and stamps[-1] > stamps[0]
    # A stamp is the leader's elapsed clock time since it won, scaled by 1 − ρ.
    for step, stamp in enumerate(stamps, start=1):
        assert stamp == int(2.0 * step * (1 - CONFIG.max_clock_drift) * 1000)


def test_a_new_leader_stamps_from_the_largest_time_in_its_log() -> None:
    entries = (LogEntry(1, NO_OP, 5000), LogEntry(1, SetCommand("k", "v"), 7000))
    state = PersistentState(HardState(1, 1), entries, commit_index=2)
    node, _ = serving_leader(state)
    assert node.state_machine.cluster_time >= 7000
    noop = node.log.entry(node.log.last_index)
    assert noop.command == NO_OP and noop.time >= 7000


def test_the_proposer_of_a_write_whose_session_expired_is_told_so() -> None:
    node, elected = serving_leader()
    now = elected + 1.0  # the write is stamped after the election: cluster time runs
    node.propose(SetCommand("k", "v", "c", 3, resume=True), now, 7)
    assert drain(node) == [Refused(Refusal.SESSION_EXPIRED, None)]
    assert node.state_machine.get("k") is None
    # Without `resume` (a client that never had a write acknowledged) it opens the session.
    node.propose(SetCommand("k", "v", "c", 3), now, 8)
    [done] = drain(node)
    assert isinstance(done, WriteDone) and node.state_machine.get("k") == "v"


def test_before_cluster_time_runs_resume_is_not_held_against_the_table() -> None:
    """No session can have expired before cluster time advances, and nodes of the previous
    release (which ignore `resume`) must keep the same table during a rolling upgrade."""
    m = machine()
    assert m.apply(SetCommand("k", "v", "c", 4, resume=True), 1) == 1
    assert m.last_applied("c") == (4, 1)
    assert m.apply(SetCommand("k", "w", "d", 1, resume=True), 2, time=5) is SESSION_EXPIRED


def test_replicas_evict_the_same_sessions_among_those_active_at_one_instant() -> None:
    """The cap evicts the longest idle first, and among sessions last active at the same
    instant the same ones on every replica, whether it applied every entry or started from a
    snapshot in between (a total order on (time, client id))."""
    rules = SessionRules(lifetime_ms=10_000, max_sessions=2, evict_idle_ms=100)
    live = KeyValueStateMachine(rules=rules)
    live.apply(SetCommand("k", "1", "b", 1), 1, time=10)
    live.apply(SetCommand("k", "2", "a", 1), 2, time=10)
    restored = KeyValueStateMachine(live.image(2, 1), rules)
    for m in (live, restored):
        m.apply(SetCommand("k", "3", "c", 1), 3, time=500)  # over the cap: one of a, b goes
    assert live.image(3, 1).sessions == restored.image(3, 1).sessions
    assert live.last_applied("a") is None and live.last_applied("b") == (1, 1)


def test_a_sorted_list_built_from_sorted_values_equals_one_that_sorted_them() -> None:
    from sortedcontainers import SortedList

    from raftkv.core.state_machine import _sorted_list

    values = sorted(f"k{i:05d}" for i in range(2500))
    built = _sorted_list(values)
    assert list(built) == list(SortedList(values)) and len(built) == 2500
    built.add("k00000a")
    built.remove("k02499")
    assert list(built) == sorted([*values[:-1], "k00000a"])
    assert list(built.irange("k01000", "k01002")) == ["k01000", "k01001", "k01002"]
