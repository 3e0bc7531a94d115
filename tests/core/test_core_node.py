"""Unit tests of the core's rules, one rule per test, driven by hand-delivered messages."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from raftkv.core import events as ev
from raftkv.core.config import ReadMode, TimingConfig
from raftkv.core.messages import (
    NO_OP,
    PROTOCOL_FEATURES,
    Accepted,
    AppendEntries,
    AppendEntriesReply,
    ClientReply,
    DeleteCommand,
    Envelope,
    LogEntry,
    Message,
    ReadPending,
    ReadRange,
    ReadValue,
    Refusal,
    Refused,
    RequestVote,
    RequestVoteReply,
    SetCommand,
    WriteDone,
)
from raftkv.core.node import (
    CoreMisuseError,
    HardState,
    PersistentState,
    RaftNode,
    Ready,
    Role,
)
from raftkv.core.state_machine import SnapshotImage

# No drift, so that lease arithmetic in the assertions is exact: span = L, stretch = 1.
CONFIG = TimingConfig(
    election_timeout_min=1.0,
    election_timeout_max=2.0,
    heartbeat_interval=0.1,
    lease_duration=0.5,
    max_clock_drift=0.0,
)


class Harness:
    """A few cores and a FIFO of messages that the test delivers explicitly."""

    def __init__(self, size: int = 3, config: TimingConfig = CONFIG, now: float = 0.0) -> None:
        ids = list(range(1, size + 1))
        self.nodes = {
            i: RaftNode(i, [p for p in ids if p != i], config, random.Random(i), now) for i in ids
        }
        self.in_flight: list[tuple[int, Envelope]] = []
        self.replies: list[ClientReply] = []
        self.readies: dict[int, list[Ready]] = {i: [] for i in ids}

    def flush(self, node_id: int) -> Ready:
        node = self.nodes[node_id]
        ready = node.take_ready()
        self.readies[node_id].append(ready)
        self.in_flight.extend((node_id, e) for e in ready.messages)
        self.replies.extend(ready.replies)
        node.advance(ready)
        if node.has_ready():
            self.flush(node_id)
        return ready

    def tick(self, node_id: int, now: float) -> None:
        self.nodes[node_id].tick(now)
        self.flush(node_id)

    def deliver_all(self, now: float, *, drop_to: set[int] | None = None) -> None:
        delivered = 0
        while self.in_flight:
            delivered += 1
            assert delivered < 10_000, "messages never stop flowing: a livelock"
            _, envelope = self.in_flight.pop(0)
            if drop_to and envelope.to in drop_to:
                continue
            self.nodes[envelope.to].step(envelope.message, now)
            self.flush(envelope.to)

    def take(self, kind: type[Message], to: int | None = None) -> list[tuple[int, Message]]:
        taken = [
            (src, e.message)
            for src, e in self.in_flight
            if isinstance(e.message, kind) and (to is None or e.to == to)
        ]
        self.in_flight = [
            (src, e)
            for src, e in self.in_flight
            if not (isinstance(e.message, kind) and (to is None or e.to == to))
        ]
        return taken

    def elect(self, node_id: int, now: float) -> RaftNode:
        """Make node_id leader at `now` and let it start serving (past every old lease)."""
        self.tick(node_id, now)
        self.deliver_all(now)
        leader = self.nodes[node_id]
        assert leader.role is Role.LEADER
        serve_at = now + leader.status(now).waiting_for_old_lease
        self.tick(node_id, serve_at)
        self.deliver_all(serve_at)
        return leader


def campaign(node: RaftNode, now: float) -> None:
    """Let `node`'s election timer fire at `now` and every peer grant its pre-vote: it is then a
    candidate of the next term with its vote requests queued (PreVote has its own tests)."""
    node.tick(now)
    for peer in node.peer_ids:
        node.step(RequestVoteReply(node.term + 1, peer, True, 0.0, pre_vote=True), now)
        if node.role is not Role.FOLLOWER:
            break
    assert node.role is not Role.FOLLOWER


def events(h: Harness, node_id: int) -> list[ev.Event]:
    return [e for r in h.readies[node_id] for e in r.events]


# ---------------------------------------------------------------------------------------------
# Elections


def test_a_fresh_cluster_elects_and_the_leader_appends_a_noop_after_the_restart_lease() -> None:
    h = Harness()
    h.tick(1, 3.0)
    h.deliver_all(3.0)
    leader = h.nodes[1]
    assert leader.role is Role.LEADER and leader.term == 1
    # Every node assumed at start-up that a lease of L might be running; by t=3 it is over.
    assert leader.log.held() == [LogEntry(1, NO_OP)]
    assert ev.BecameLeader(node=1, term=1) in events(h, 1)
    assert all(n.log.held() == [LogEntry(1, NO_OP)] for n in h.nodes.values())
    assert leader.commit_index == 1


def test_a_vote_is_durable_before_the_reply_that_grants_it() -> None:
    h = Harness()
    campaign(h.nodes[1], 3.0)
    h.flush(1)
    request = next(
        m for _, m in h.take(RequestVote, to=2) if isinstance(m, RequestVote) and not m.pre_vote
    )
    h.nodes[2].step(request, 3.0)
    ready = h.nodes[2].take_ready()
    assert ready.hard_state == HardState(term=1, voted_for=1)
    assert any(
        isinstance(e.message, RequestVoteReply) and e.message.granted for e in ready.messages
    )
    assert ev.VoteGranted(candidate=1, term=1) in ready.events


def test_vote_denied_to_a_candidate_with_a_shorter_log_of_the_same_term() -> None:
    h = Harness()
    h.elect(1, 3.0)
    h.nodes[1].propose(SetCommand("a", "1"), 3.6, token=1)
    h.flush(1)
    h.deliver_all(3.6, drop_to={3})  # node 3 misses the SET
    h.tick(3, 10.0)  # node 3 campaigns with a log that lacks the SET
    votes = h.take(RequestVote, to=2)
    assert votes
    h.nodes[2].step(votes[0][1], 10.0)
    h.flush(2)
    replies = [m for _, m in h.take(RequestVoteReply)]
    assert replies and not any(isinstance(r, RequestVoteReply) and r.granted for r in replies)


def test_vote_denied_to_a_longer_log_with_an_older_last_term() -> None:
    # Terms are compared before lengths (Raft §5.4.1).
    state = PersistentState(HardState(2, None), [LogEntry(1, NO_OP), LogEntry(2, NO_OP)])
    voter = RaftNode(2, [1, 3], CONFIG, random.Random(0), 0.0, persisted=state)
    voter.step(RequestVote(3, 1, 9, 1), 10.0)
    (reply,) = [e.message for e in voter.take_ready().messages]
    assert isinstance(reply, RequestVoteReply) and not reply.granted


def test_one_vote_per_term() -> None:
    h = Harness()
    voter = h.nodes[3]
    voter.step(RequestVote(5, 1, 0, 0), 1.0)
    voter.step(RequestVote(5, 2, 0, 0), 1.0)
    ready = voter.take_ready()
    grants = [e.message for e in ready.messages if isinstance(e.message, RequestVoteReply)]
    assert [g.granted for g in grants] == [True, False]
    assert voter.voted_for == 1


# ---------------------------------------------------------------------------------------------
# Log replication


def append(
    term: int, prev: int, prev_term: int, entries: list[LogEntry], commit: int = 0
) -> AppendEntries:
    return AppendEntries(term, 1, prev, prev_term, tuple(entries), commit, CONFIG.lease_duration, 1)


def test_follower_truncates_only_on_a_real_conflict() -> None:
    follower = RaftNode(2, [1, 3], CONFIG, random.Random(0), 0.0)
    e1, e2, e3 = (LogEntry(1, SetCommand("k", v)) for v in "abc")
    follower.step(append(1, 0, 0, [e1, e2, e3]), 0.1)
    follower.advance(follower.take_ready())
    # A stale, shorter duplicate of the first message must not cut entries 2 and 3.
    follower.step(append(1, 0, 0, [e1]), 0.2)
    follower.advance(follower.take_ready())
    assert follower.log.held() == [e1, e2, e3]
    # A conflicting entry of a later term at index 2 replaces 2 and everything after it.
    x = LogEntry(2, SetCommand("k", "x"))
    follower.step(append(2, 1, 1, [x]), 0.3)
    ready = follower.take_ready()
    assert follower.log.held() == [e1, x]
    assert (ready.first_index, ready.entries) == (2, (x,))


def test_mismatch_is_rejected_with_a_fast_backoff_hint() -> None:
    follower = RaftNode(2, [1, 3], CONFIG, random.Random(0), 0.0)
    entries = [LogEntry(1, NO_OP), LogEntry(1, NO_OP), LogEntry(2, NO_OP)]
    follower.step(append(2, 0, 0, entries), 0.1)
    follower.advance(follower.take_ready())
    follower.step(append(3, 3, 3, []), 0.2)  # index 3 holds term 2, not 3
    ready = follower.take_ready()
    (reply,) = [e.message for e in ready.messages]
    assert isinstance(reply, AppendEntriesReply) and not reply.success
    assert reply.conflict_index == 3  # first index of the conflicting term
    follower.advance(ready)
    follower.step(append(3, 9, 3, []), 0.3)
    (reply,) = [e.message for e in follower.take_ready().messages]
    assert isinstance(reply, AppendEntriesReply) and reply.conflict_index == 4


def test_an_append_that_would_cut_a_committed_entry_is_refused_and_answered() -> None:
    follower = RaftNode(2, [1, 3], CONFIG, random.Random(0), 0.0)
    e1, e2 = LogEntry(1, SetCommand("k", "a")), LogEntry(1, SetCommand("k", "b"))
    follower.step(append(1, 0, 0, [e1, e2], commit=2), 0.1)
    follower.advance(follower.take_ready())
    assert follower.commit_index == 2
    forged = LogEntry(2, SetCommand("k", "forged"))
    follower.step(append(2, 1, 1, [forged], commit=2), 0.2)  # index 2 is committed
    ready = follower.take_ready()
    assert follower.log.held() == [e1, e2] and not ready.log_changed
    assert follower.state_machine.get("k") == "b"
    (violation,) = [e for e in ready.events if isinstance(e, ev.ProtocolViolation)]
    assert "conflicts with a committed entry" in violation.reason
    # Answered (the shell waits for one reply per AppendEntries), vouching for no round.
    assert [e.message for e in ready.messages] == [
        AppendEntriesReply(1, 2, False, 0, 0, 0, features=PROTOCOL_FEATURES)
    ]
    assert follower.term == 1


def test_a_second_leader_in_one_term_is_refused() -> None:
    follower = RaftNode(2, [1, 3], CONFIG, random.Random(0), 0.0)
    follower.step(append(1, 0, 0, []), 0.1)
    follower.advance(follower.take_ready())
    follower.step(AppendEntries(1, 3, 0, 0, (), 0, CONFIG.lease_duration, 1), 0.2)
    ready = follower.take_ready()
    assert follower.leader_id == 1
    assert any(isinstance(e, ev.ProtocolViolation) for e in ready.events)
    assert [e.message for e in ready.messages] == [
        AppendEntriesReply(1, 2, False, 0, 0, 0, features=PROTOCOL_FEATURES)
    ]


def test_replies_naming_indexes_beyond_the_leaders_log_are_dropped() -> None:
    h = Harness()
    leader = h.elect(1, 3.0)
    length, commit = leader.log.last_index, leader.commit_index
    r = leader._round
    for reply in (
        AppendEntriesReply(1, 2, True, 10**6, 0, r),
        AppendEntriesReply(1, 3, True, length + 1, 0, r),
        AppendEntriesReply(1, 2, False, 0, length + 2, r),
    ):
        leader.step(reply, 3.2)
    ready = leader.take_ready()
    assert len([e for e in ready.events if isinstance(e, ev.ProtocolViolation)]) == 3
    assert leader.commit_index == commit and leader.log.last_index == length
    for progress in leader._leader.progress.values():  # type: ignore[union-attr]
        assert 0 <= progress.match < progress.next <= length + 1


def test_followers_commit_from_leader_commit_but_not_past_what_they_verified() -> None:
    follower = RaftNode(2, [1, 3], CONFIG, random.Random(0), 0.0)
    entries = [LogEntry(1, SetCommand("k", str(i))) for i in range(3)]
    follower.step(append(1, 0, 0, entries[:2], commit=3), 0.1)
    assert follower.commit_index == 2
    assert follower.state_machine.get("k") == "1"


def test_leader_never_commits_an_old_term_entry_by_counting_replicas() -> None:
    # Figure 8: node 1 leads term 3 with an entry of term 2 that is on a majority but was never
    # committed; it commits only once an entry of term 3 reaches a majority.
    old = LogEntry(2, SetCommand("k", "old"))
    state = PersistentState(HardState(2, None), [LogEntry(1, NO_OP), old])
    leader = RaftNode(1, [2, 3], CONFIG, random.Random(0), 0.0, persisted=state)
    campaign(leader, 5.0)
    leader.advance(leader.take_ready())
    leader.step(RequestVoteReply(3, 2, True, 0.0), 5.0)
    assert leader.role is Role.LEADER
    leader.advance(leader.take_ready())
    assert leader.log.held()[-1] == LogEntry(3, NO_OP)
    round_ = leader._round
    leader.step(AppendEntriesReply(3, 2, True, 2, 0, round_), 5.1)  # old entry replicated
    assert leader.commit_index == 0
    leader.step(AppendEntriesReply(3, 2, True, 3, 0, round_), 5.1)  # the NO-OP replicated
    assert leader.commit_index == 3
    assert leader.state_machine.get("k") == "old"


def test_leader_counts_itself_only_for_what_it_has_persisted() -> None:
    solo = RaftNode(1, [], CONFIG, random.Random(0), 0.0)
    solo.tick(3.0)
    solo.advance(solo.take_ready())
    assert solo.commit_index == 1
    solo.propose(SetCommand("a", "1"), 4.0, token=7)
    ready = solo.take_ready()
    assert ready.entries and solo.commit_index == 1  # not durable yet: not committed
    solo.advance(ready)
    assert solo.commit_index == 2
    assert solo.take_ready().replies == (ClientReply(7, WriteDone(2)),)


def test_input_between_take_ready_and_advance_is_a_misuse() -> None:
    h = Harness()
    campaign(h.nodes[1], 3.0)
    h.nodes[1].take_ready()
    with pytest.raises(CoreMisuseError):
        h.nodes[1].tick(3.1)
    # Reads are allowed at any time.
    assert isinstance(h.nodes[1].read("k", 3.1, 1), Refused)
    with pytest.raises(CoreMisuseError, match="take_ready called again"):
        h.nodes[1].take_ready()


def test_advance_without_an_outstanding_ready_is_a_misuse() -> None:
    node = Harness().nodes[1]
    campaign(node, 3.0)
    ready = node.take_ready()
    assert ready.needs_persist
    node.advance(ready)
    with pytest.raises(CoreMisuseError, match="without an outstanding ready"):
        node.advance(ready)


def test_a_node_listing_itself_among_its_peers_is_refused() -> None:
    with pytest.raises(ValueError, match="lists itself"):
        RaftNode(1, [1, 2], CONFIG, random.Random(0), 0.0)


def test_restart_adopts_the_term_of_durable_entries_whose_metadata_was_lost() -> None:
    # A crash between the log write and the metadata write: entries of term 3, metadata term 2.
    state = PersistentState(HardState(2, 1), [LogEntry(3, NO_OP)])
    node = RaftNode(1, [2, 3], CONFIG, random.Random(0), 0.0, persisted=state)
    assert (node.term, node.voted_for) == (3, None)
    assert node.take_ready().hard_state == HardState(3, None)


# ---------------------------------------------------------------------------------------------
# Leases (docs/design.md §3)


def serving_leader(h: Harness) -> RaftNode:
    leader = h.elect(1, 3.0)
    assert leader.commit_index == 1
    return leader


def test_rule1_lease_runs_from_the_send_time_of_the_acknowledged_round() -> None:
    h = Harness()
    leader = serving_leader(h)
    h.tick(1, 3.2)  # heartbeat round sent at 3.2
    h.deliver_all(3.4)  # acknowledged late, at 3.4
    assert leader.status(3.4).lease_remaining == pytest.approx(3.2 + 0.5 - 3.4)


def test_rule1_sending_alone_never_renews_the_lease() -> None:
    h = Harness()
    leader = serving_leader(h)
    lease_left = leader.status(3.2).lease_remaining
    h.tick(1, 3.2)
    h.in_flight.clear()  # every heartbeat lost
    assert leader.status(3.2).lease_remaining == pytest.approx(lease_left)


def test_rule1_old_round_acks_never_move_the_lease_back_and_higher_terms_do_not_count() -> None:
    h = Harness()
    leader = serving_leader(h)
    h.tick(1, 3.2)
    old = h.take(AppendEntries)
    h.tick(1, 3.32)
    h.deliver_all(3.325)
    assert leader.status(3.325).lease_remaining == pytest.approx(3.32 + 0.5 - 3.325)
    for _, message in old:  # the older round's acks arrive after
        assert isinstance(message, AppendEntries)
        leader.step(AppendEntriesReply(1, 2, True, 1, 0, message.round), 3.4)
    assert leader.status(3.4).lease_remaining == pytest.approx(3.32 + 0.5 - 3.4)
    leader.step(AppendEntriesReply(9, 2, False, 0, 0, leader._round), 3.4)
    assert leader.role is Role.FOLLOWER
    assert leader.serves_lease_reads(3.4) is False


def test_rule1_a_log_mismatch_still_counts_as_an_ack() -> None:
    h = Harness()
    leader = serving_leader(h)
    h.tick(1, 3.2)
    for _, message in h.take(AppendEntries):
        assert isinstance(message, AppendEntries)
        leader.step(AppendEntriesReply(1, 2, False, 0, 1, message.round), 3.3)
    assert leader.status(3.3).lease_remaining == pytest.approx(3.2 + 0.5 - 3.3)


def test_rule1_lease_is_shortened_by_the_drift_bound() -> None:
    drifty = replace(CONFIG, max_clock_drift=0.2)
    h = Harness(config=drifty)
    leader = h.elect(1, 3.0)
    now = 3.1
    h.tick(1, now)
    h.deliver_all(now)
    assert leader.status(now).lease_remaining == pytest.approx(0.5 * 0.8 / 1.2)


def test_rule2_followers_keep_the_longest_lease_seen_across_leaders() -> None:
    follower = RaftNode(3, [1, 2], CONFIG, random.Random(0), 0.0)
    follower.step(AppendEntries(4, 1, 0, 0, (), 0, 0.5, 1), 10.0)
    follower.step(AppendEntries(5, 2, 0, 0, (), 0, 0.5, 1), 10.1)
    # A transfer's vote request: the follower answers it although it still hears a leader.
    follower.step(RequestVote(6, 2, 0, 0, transfer=True), 10.2)
    reply = [e.message for e in follower.take_ready().messages][-1]
    assert isinstance(reply, RequestVoteReply)
    assert reply.old_lease_remaining == pytest.approx(10.1 + 0.5 - 10.2)


def test_rule2_a_follower_honours_its_leaders_longer_lease_and_remembers_it() -> None:
    # Issue 14: a rolling restart that changes the lease leaves nodes with different flags. The
    # follower records the lease the leader claims (not its own), notes the difference once,
    # and persists the longest lease it recorded, so that a restart cannot shorten it.
    follower = RaftNode(3, [1, 2], CONFIG, random.Random(0), 0.0)
    follower.advance(follower.take_ready())
    for now in (0.2, 0.3):
        follower.step(AppendEntries(4, 1, 0, 0, (), 0, 2.0, 7), now)
    ready = follower.take_ready()
    follower.advance(ready)
    assert [e for e in ready.events if isinstance(e, ev.LeaseMismatch)] == [
        ev.LeaseMismatch(1, 2.0, 0.5)
    ]
    assert ready.hard_state is not None and ready.hard_state.lease_bound == 2.0
    assert follower.term == 4 and follower.leader_id == 1
    follower.step(RequestVote(5, 2, 0, 0, transfer=True), 1.3)
    reply = [e.message for e in follower.take_ready().messages][-1]
    assert isinstance(reply, RequestVoteReply) and reply.granted
    assert reply.old_lease_remaining == pytest.approx(0.3 + 2.0 - 1.3)
    # Restarted with its own (shorter) flags, it still owes the longest lease it recorded.
    restarted = RaftNode(
        3, [1, 2], CONFIG, random.Random(0), 50.0, PersistentState(ready.hard_state, ())
    )
    assert restarted.lease_bound == 2.0
    assert restarted.drift_bound == CONFIG.max_clock_drift
    restarted.step(RequestVote(6, 2, 0, 0), 50.1)
    reply = [e.message for e in restarted.take_ready().messages][-1]
    assert isinstance(reply, RequestVoteReply)
    assert reply.old_lease_remaining == pytest.approx(2.0 - 0.1)


def test_rule2_a_lease_beyond_the_longest_allowed_is_dropped_as_malformed() -> None:
    follower = RaftNode(3, [1, 2], CONFIG, random.Random(0), 0.0)
    follower.advance(follower.take_ready())
    follower.step(AppendEntries(4, 1, 0, 0, (), 0, 1e300, 7), 0.2)
    ready = follower.take_ready()
    assert [type(e) for e in ready.events] == [ev.ProtocolViolation]
    assert ready.messages == () and follower.term == 0


def test_a_vote_reply_owing_a_longer_lease_than_ours_is_waited_out() -> None:
    candidate = RaftNode(1, [2, 3], CONFIG, random.Random(0), 0.0)
    campaign(candidate, 5.0)
    candidate.advance(candidate.take_ready())
    candidate.step(RequestVoteReply(1, 2, True, 1e300), 5.1)
    ready = candidate.take_ready()
    assert candidate.role is Role.CANDIDATE
    assert any(isinstance(e, ev.ProtocolViolation) for e in ready.events)
    candidate.step(RequestVoteReply(1, 3, True, 2.0), 5.1)
    assert candidate.status(5.1).role is Role.LEADER
    assert candidate.status(5.1).waiting_for_old_lease == pytest.approx(2.0)


def test_rule3_new_leader_waits_out_the_longest_reported_lease_and_appends_nothing() -> None:
    drifty = replace(CONFIG, max_clock_drift=0.1)
    candidate = RaftNode(1, [2, 3], drifty, random.Random(0), 0.0)
    campaign(candidate, 5.0)
    candidate.advance(candidate.take_ready())
    candidate.step(RequestVoteReply(1, 2, True, 0.3), 5.1)
    assert candidate.role is Role.LEADER
    ready = candidate.take_ready()
    candidate.advance(ready)
    assert ev.WaitingForOldLease() in ready.events
    wait_end = 5.1 + 0.3 * 1.1 / 0.9
    assert candidate.status(5.1).waiting_for_old_lease == pytest.approx(wait_end - 5.1)
    assert candidate.log.held() == []
    refused = candidate.propose(SetCommand("a", "1"), 5.2, token=1)
    assert refused == Refused(Refusal.WAITING_OLD_LEASE, 1)
    assert candidate.read("a", 5.2, 2) == Refused(Refusal.WAITING_OLD_LEASE, 1)
    assert candidate.next_deadline() <= wait_end
    candidate.tick(wait_end - 1e-6)
    candidate.advance(candidate.take_ready())
    assert candidate.log.held() == []
    candidate.tick(wait_end)
    candidate.advance(candidate.take_ready())
    assert candidate.log.held() == [LogEntry(1, NO_OP)]


def test_rule3_rounds_sent_during_the_wait_do_not_grant_a_lease() -> None:
    candidate = RaftNode(1, [2, 3], CONFIG, random.Random(0), 0.0)
    candidate.tick(5.0)
    candidate.advance(candidate.take_ready())
    candidate.step(RequestVoteReply(1, 2, True, 0.4), 5.0)
    candidate.advance(candidate.take_ready())
    candidate.step(AppendEntriesReply(1, 2, False, 0, 1, candidate._round), 5.1)
    assert not candidate.serves_lease_reads(5.2)
    assert candidate.status(5.2).lease_remaining == 0.0


def test_rule4_reads_need_lease_noop_commit_and_leadership() -> None:
    h = Harness()
    follower = h.nodes[2]
    leader = h.elect(1, 3.0)
    assert follower.read("k", 3.6, 1) == Refused(Refusal.NOT_LEADER, 1)
    leader.propose(SetCommand("k", "v"), 3.6, token=1)
    h.flush(1)
    h.deliver_all(3.6)
    assert leader.read("k", 3.6, 2) == ReadValue("v")
    lease_end = 3.6 + leader.status(3.6).lease_remaining
    assert leader.read("k", lease_end, 3) == Refused(Refusal.NO_LEASE, 1)
    assert leader.read("missing", 3.61, 4) == ReadValue(None)


def test_rule4_no_reads_before_the_terms_noop_commits() -> None:
    state = PersistentState(HardState(1, None), [LogEntry(1, NO_OP)])
    leader = RaftNode(1, [2, 3], CONFIG, random.Random(0), 0.0, persisted=state)
    campaign(leader, 5.0)
    leader.advance(leader.take_ready())
    leader.step(RequestVoteReply(2, 2, True, 0.0), 5.0)
    ready = leader.take_ready()
    leader.advance(ready)
    assert leader.log.held()[-1] == LogEntry(2, NO_OP)
    # Both followers answer the NO-OP's round with a log mismatch: a lease, but no commit.
    for envelope in ready.messages:
        assert isinstance(envelope.message, AppendEntries)
        reply = AppendEntriesReply(2, envelope.to, False, 0, 1, envelope.message.round)
        leader.step(reply, 5.1)
    assert leader.status(5.1).lease_remaining > 0
    assert leader.commit_index < 2
    # One predicate for reads and for the simulator's lease check: neither serves yet.
    assert leader.lease_read_refusal(5.1) == Refused(Refusal.NOT_READY, 1)
    assert not leader.serves_lease_reads(5.1)
    assert leader.read("k", 5.1, 1) == Refused(Refusal.NOT_READY, 1)
    assert leader.read_range("", "", 10, 5.1, 2) == Refused(Refusal.NOT_READY, 1)
    assert leader.read_image(5.1, 3) == Refused(Refusal.NOT_READY, 1)


def test_rule4_a_list_is_served_and_refused_exactly_like_a_get() -> None:
    h = Harness()
    follower = h.nodes[2]
    leader = h.elect(1, 3.0)
    assert follower.read_range("", "", 10, 3.6, 1) == Refused(Refusal.NOT_LEADER, 1)
    for token, key in enumerate(("k/2", "k/1", "other"), start=1):
        leader.propose(SetCommand(key, f"v{token}"), 3.6, token=token)
    h.flush(1)
    h.deliver_all(3.6)
    page = ReadRange((("k/1", "v2"), ("k/2", "v1")), more=False)
    assert leader.read_range("k/", "", 10, 3.6, 2) == page
    assert leader.read_range("k/", "", 1, 3.6, 3) == ReadRange((("k/1", "v2"),), more=True)
    lease_end = 3.6 + leader.status(3.6).lease_remaining
    # The GET's predicate decides: at the end of the lease both are refused, for one reason.
    assert leader.read("k/1", lease_end, 4) == Refused(Refusal.NO_LEASE, 1)
    assert leader.read_range("k/", "", 10, lease_end, 5) == Refused(Refusal.NO_LEASE, 1)
    with pytest.raises(ValueError, match="limit"):
        leader.read_range("", "", 0, 3.6, 6)


def test_rule5_a_leader_whose_lease_lapses_steps_down() -> None:
    h = Harness()
    leader = serving_leader(h)
    deadline = leader.next_deadline()
    h.tick(1, 3.55)
    h.in_flight.clear()
    while leader.role is Role.LEADER:
        now = leader.next_deadline()
        h.tick(1, now)
        h.in_flight.clear()
        assert now < deadline + 1.0
    assert ev.LeaseRenewalFailed(node=1) in events(h, 1)
    assert leader.role is Role.FOLLOWER


def test_read_index_mode_answers_after_a_fresh_majority_round() -> None:
    h = Harness(config=CONFIG.with_read_mode(ReadMode.READ_INDEX))
    leader = h.elect(1, 3.0)
    leader.propose(SetCommand("k", "v"), 3.1, token=1)
    h.flush(1)
    h.deliver_all(3.1)
    assert isinstance(leader.read("k", 3.2, 42), ReadPending)
    h.flush(1)
    assert not any(r.token == 42 for r in h.replies)
    h.deliver_all(3.3)
    assert ClientReply(42, ReadValue("v")) in h.replies


def test_read_index_mode_answers_a_list_after_a_fresh_majority_round() -> None:
    h = Harness(config=CONFIG.with_read_mode(ReadMode.READ_INDEX))
    leader = h.elect(1, 3.0)
    leader.propose(SetCommand("k", "v"), 3.1, token=1)
    h.flush(1)
    h.deliver_all(3.1)
    assert isinstance(leader.read_range("", "", 10, 3.2, 42), ReadPending)
    assert isinstance(leader.read("k", 3.2, 43), ReadPending)
    # A write after the LIST arrived is not in its answer: the read index was taken before it.
    leader.propose(SetCommand("later", "x"), 3.2, token=2)
    h.flush(1)
    assert not any(r.token in (42, 43) for r in h.replies)
    h.deliver_all(3.3)
    assert ClientReply(43, ReadValue("v")) in h.replies
    [answer] = [r.result for r in h.replies if r.token == 42]
    assert isinstance(answer, ReadRange) and ("k", "v") in answer.items
    # A leader that steps down refuses the LISTs it holds, like its GETs.
    held = leader.read_range("", "", 10, 3.4, 44)
    assert isinstance(held, ReadPending)
    h.flush(1)
    h.in_flight.clear()
    leader.step(AppendEntries(5, 2, 0, 0, (), 0, 0.5, 1), 3.5)
    h.flush(1)
    assert [r.result for r in h.replies if r.token == 44] == [Refused(Refusal.NOT_LEADER, 2)]


def test_rule4_an_image_is_served_and_refused_exactly_like_a_get() -> None:
    h = Harness()
    follower = h.nodes[2]
    leader = h.elect(1, 3.0)
    assert follower.read_image(3.6, 1) == Refused(Refusal.NOT_LEADER, 1)
    leader.propose(SetCommand("k", "v", "c", 1), 3.6, token=1)
    h.flush(1)
    h.deliver_all(3.6)
    [done] = [r.result for r in h.replies if r.token == 1]
    assert isinstance(done, WriteDone)
    # Lease mode answers at once, with the state at the commit index: every acknowledged write.
    image = leader.read_image(3.6, 2)
    assert isinstance(image, SnapshotImage)
    assert (image.index, image.term) == (leader.commit_index, leader.term)
    assert image.index >= done.index
    assert dict(image.data) == {"k": "v"}
    assert image.sessions["c"][:2] == (1, done.index)
    # The image is a version, not a view: a later write does not change it.
    leader.propose(SetCommand("k", "w"), 3.6, token=3)
    h.flush(1)
    h.deliver_all(3.6)
    assert dict(image.data) == {"k": "v"}
    lease_end = 3.6 + leader.status(3.6).lease_remaining
    assert leader.read("k", lease_end, 4) == Refused(Refusal.NO_LEASE, 1)
    assert leader.read_image(lease_end, 5) == Refused(Refusal.NO_LEASE, 1)


def test_read_index_mode_answers_an_image_after_a_fresh_majority_round() -> None:
    h = Harness(config=CONFIG.with_read_mode(ReadMode.READ_INDEX))
    leader = h.elect(1, 3.0)
    leader.propose(SetCommand("k", "v"), 3.1, token=1)
    h.flush(1)
    h.deliver_all(3.1)
    acked = leader.commit_index
    assert isinstance(leader.read_image(3.2, 42), ReadPending)
    assert not any(r.token == 42 for r in h.replies)
    h.flush(1)
    h.deliver_all(3.3)
    [answer] = [r.result for r in h.replies if r.token == 42]
    assert isinstance(answer, SnapshotImage)
    assert answer.index >= acked and answer.term == leader.term
    assert dict(answer.data) == {"k": "v"}
    # A leader that steps down refuses the images it holds, like its GETs.
    assert isinstance(leader.read_image(3.4, 44), ReadPending)
    h.flush(1)
    h.in_flight.clear()
    leader.step(AppendEntries(5, 2, 0, 0, (), 0, 0.5, 1), 3.5)
    h.flush(1)
    assert [r.result for r in h.replies if r.token == 44] == [Refused(Refusal.NOT_LEADER, 2)]


def test_a_proposal_returns_its_index_and_a_reply_when_it_applies() -> None:
    h = Harness()
    leader = serving_leader(h)
    result = leader.propose(SetCommand("k", "v", "client", 1), 3.2, token=9)
    assert result == Accepted(2, 1)
    h.flush(1)
    h.deliver_all(3.2)
    assert ClientReply(9, WriteDone(2)) in h.replies
    assert h.nodes[2].state_machine.get("k") is None  # followers learn of commits later
    h.tick(1, 3.32)
    h.deliver_all(3.32)
    assert all(n.state_machine.get("k") == "v" for n in h.nodes.values())


def test_an_overwritten_proposal_is_answered_as_lost() -> None:
    h = Harness()
    leader = serving_leader(h)
    leader.propose(SetCommand("k", "v"), 3.6, token=9)
    h.flush(1)
    h.in_flight.clear()
    # Node 2 becomes leader of term 2 without the entry and overwrites index 2.
    h.tick(2, 10.0)
    h.deliver_all(10.0)
    h.tick(2, 10.0 + h.nodes[2].status(10.0).waiting_for_old_lease)
    h.deliver_all(11.0)
    assert ClientReply(9, Refused(Refusal.ENTRY_LOST, 2)) in h.replies


def _propose_and_commit(
    h: Harness, leader: RaftNode, command: SetCommand | DeleteCommand, now: float, token: int
) -> tuple[int, list[WriteDone | ReadValue | ReadRange | SnapshotImage | Refused]]:
    """Propose, deliver until quiet; the entry's index and the replies to `token`."""
    result = leader.propose(command, now, token=token)
    assert isinstance(result, Accepted)
    h.flush(leader.id)
    h.deliver_all(now)
    return result.index, [r.result for r in h.replies if r.token == token]


def test_a_retry_of_the_applied_seq_answers_the_original_index_and_a_lower_seq_is_refused() -> None:
    h = Harness()
    leader = serving_leader(h)
    index, replies = _propose_and_commit(h, leader, SetCommand("k", "five", "c", 5), 3.2, 1)
    assert (index, replies) == (2, [WriteDone(2)])
    # The retry is a new entry (index 3) that every replica skips; it answers seq 5's index.
    index, replies = _propose_and_commit(h, leader, SetCommand("k", "five", "c", 5), 3.25, 2)
    assert (index, replies) == (3, [WriteDone(2)])
    # A lower seq commits (index 4) but never applies, and is never acknowledged.
    index, replies = _propose_and_commit(h, leader, SetCommand("k", "three", "c", 3), 3.3, 3)
    assert (index, replies) == (4, [Refused(Refusal.STALE_SEQUENCE, None)])
    h.tick(1, 3.4)
    h.deliver_all(3.4)
    assert all(n.commit_index == 4 for n in h.nodes.values())
    assert all(n.state_machine.get("k") == "five" for n in h.nodes.values())
    assert all(n.state_machine.last_applied("c") == (5, 2) for n in h.nodes.values())


def test_a_new_leader_answers_retries_and_stale_seqs_from_the_replicated_table() -> None:
    h = Harness()
    old = serving_leader(h)
    _propose_and_commit(h, old, SetCommand("k", "five", "c", 5), 3.2, 1)
    h.tick(1, 3.3)
    h.deliver_all(3.3)
    new = h.elect(2, 10.0)
    assert old.role is not Role.LEADER
    now = 12.0  # after elect() let node 2 serve; no ticks, so it stays leader
    _, replies = _propose_and_commit(h, new, SetCommand("k", "five", "c", 5), now, 2)
    assert replies == [WriteDone(2)]
    _, replies = _propose_and_commit(h, new, SetCommand("k", "three", "c", 3), now + 0.01, 3)
    assert replies == [Refused(Refusal.STALE_SEQUENCE, None)]
    index, replies = _propose_and_commit(h, new, SetCommand("k", "six", "c", 6), now + 0.02, 4)
    assert replies == [WriteDone(index)]
    assert new.state_machine.get("k") == "six"


def test_a_delete_commits_on_every_node_and_a_retry_answers_its_first_index() -> None:
    h = Harness()
    leader = serving_leader(h)
    _propose_and_commit(h, leader, SetCommand("k", "v", "c", 1), 3.2, 1)
    index, replies = _propose_and_commit(h, leader, DeleteCommand("k", "c", 2), 3.25, 2)
    assert replies == [WriteDone(index)]
    # The retry is a new entry every replica skips; like a SET's, it answers the first index.
    _, replies = _propose_and_commit(h, leader, DeleteCommand("k", "c", 2), 3.3, 3)
    assert replies == [WriteDone(index)]
    # The client's seq is shared by its SETs and DELETEs: a SET with seq 1 is now stale.
    _, replies = _propose_and_commit(h, leader, SetCommand("k", "again", "c", 1), 3.35, 4)
    assert replies == [Refused(Refusal.STALE_SEQUENCE, None)]
    h.tick(1, 3.5)  # a heartbeat tells the followers the commit index
    h.deliver_all(3.5)
    assert all(n.commit_index == leader.commit_index for n in h.nodes.values())
    assert all(n.state_machine.get("k") is None for n in h.nodes.values())
    assert leader.read("k", 3.51, 5) == ReadValue(None)
    announced = [e for e in events(h, 2) if isinstance(e, ev.Committed)]
    assert [e.command for e in announced] == ["SET k v", "DELETE k", "DELETE k", "SET k again"]


def test_append_entries_batches_are_capped_by_size() -> None:
    small = replace(CONFIG, max_message_chars=100)
    h = Harness(config=small)
    leader = h.elect(1, 3.0)
    for i in range(5):
        leader.propose(SetCommand(f"k{i}", "x" * 60), 3.1, token=i)
    h.flush(1)
    batches = [m for _, m in h.take(AppendEntries, to=2)]
    assert batches
    assert all(isinstance(m, AppendEntries) and 1 <= len(m.entries) <= 2 for m in batches)
    # One oversized entry still goes alone rather than never.
    leader.propose(SetCommand("big", "y" * 500), 3.15, token=99)
    h.deliver_all(3.15)
    h.tick(1, 3.2)
    h.deliver_all(3.2)
    assert h.nodes[2].log.held()[-1].command == SetCommand("big", "y" * 500)


def test_a_follower_that_lost_acknowledged_entries_is_caught_up_again() -> None:
    h = Harness()
    leader = serving_leader(h)
    for i in range(3):
        leader.propose(SetCommand("k", str(i)), 3.1, token=i)
    h.flush(1)
    h.deliver_all(3.1)
    assert h.nodes[2].log.last_index == 4
    # Node 2 restarts having lost its last two (acknowledged) entries.
    state = PersistentState(HardState(1, 1), h.nodes[2].log.held()[:2])
    h.nodes[2] = RaftNode(2, [1, 3], CONFIG, random.Random(5), 3.2, persisted=state)
    h.tick(1, 3.21)
    h.deliver_all(3.21)
    h.tick(1, 3.32)
    h.deliver_all(3.32)
    assert h.nodes[2].log.held() == leader.log.held()
