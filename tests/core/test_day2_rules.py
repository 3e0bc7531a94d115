"""Issue 14's rules on hand-delivered messages: PreVote and leader stickiness, CheckQuorum,
leadership transfer with the lease handed off (rule 8), admission after a disk loss, the
carried lease and drift bound, and the match index that late rejections cannot lower."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from raftkv.core import events as ev
from raftkv.core.config import ReadMode
from raftkv.core.messages import (
    NO_OP,
    PROTOCOL_FEATURES,
    AppendEntries,
    AppendEntriesReply,
    Envelope,
    LogEntry,
    Refusal,
    Refused,
    RequestVote,
    RequestVoteReply,
    SetCommand,
)
from raftkv.core.node import HardState, PersistentState, RaftNode, Role, UnsafeSwitches
from raftkv.core.progress import ProgressState

from .test_core_node import CONFIG, Harness, events


def role(node: RaftNode) -> Role:
    """The node's role, read afresh (a plain attribute would stay narrowed for mypy)."""
    return node.role


def noop(term: int) -> LogEntry:
    return LogEntry(term, NO_OP)


def sent(h: Harness, kind: type, *, to: int | None = None) -> list[Envelope]:
    return [e for _, e in h.in_flight if isinstance(e.message, kind) and to in (None, e.to)]


# ---------------------------------------------------------------------------------------------
# PreVote and leader stickiness


def test_a_timed_out_node_asks_for_pre_votes_without_raising_its_term() -> None:
    h = Harness()
    h.tick(1, 3.0)
    node = h.nodes[1]
    assert node.term == 0 and role(node) is Role.FOLLOWER
    requests = [e.message for e in sent(h, RequestVote)]
    assert len(requests) == 2
    assert all(isinstance(m, RequestVote) and m.pre_vote and m.term == 1 for m in requests)
    assert ev.PreVoteStarted(node=1, term=1) in events(h, 1)
    # Voters answer without changing anything: no term, no vote, nothing to persist.
    h.deliver_all(3.0)
    assert role(node) is Role.LEADER and node.term == 1
    assert h.nodes[2].voted_for == 1  # the real vote that followed the pre-vote


def test_a_node_that_can_send_but_not_receive_never_deposes_the_leader() -> None:
    # Issue 14: node 3 hears nothing (one-way cut), times out again and again; its pre-votes
    # reach nodes that hear their leader, which refuse them without adopting any term.
    h = Harness()
    leader = h.elect(1, 3.0)
    term = leader.term
    now = 3.0
    for _ in range(200):
        now += 0.05
        h.tick(1, now)  # heartbeats...
        h.deliver_all(now, drop_to={3})  # ...never reach node 3
        if now >= h.nodes[3].next_deadline():
            h.tick(3, now)
            h.deliver_all(now, drop_to={3})
    assert any(isinstance(e, ev.PreVoteStarted) for e in events(h, 3))  # it did time out
    assert h.nodes[3].term == term  # learnt from the election it took part in, never raised
    assert role(leader) is Role.LEADER and leader.term == term
    assert h.nodes[2].term == term and h.nodes[2].leader_id == 1
    ignored = [e for e in events(h, 2) if isinstance(e, ev.VoteIgnored)]
    assert ignored and all(e.kind == "pre-vote" and e.leader == 1 for e in ignored)


def test_without_pre_vote_the_same_node_deposes_the_leader() -> None:
    # The negative control of the test above: the rule is what keeps the leader.
    h = Harness()
    for node in h.nodes.values():
        node.unsafe = UnsafeSwitches(no_pre_vote=True)
    leader = h.elect(1, 3.0)
    term = leader.term
    now = 3.0
    while role(leader) is Role.LEADER and now < 10.0:
        now += 0.05
        h.tick(1, now)
        h.deliver_all(now, drop_to={3})
        if now >= h.nodes[3].next_deadline():
            h.tick(3, now)
            h.deliver_all(now, drop_to={3})
    assert role(leader) is Role.FOLLOWER and leader.term > term


def test_a_follower_that_hears_its_leader_ignores_a_vote_for_a_later_term() -> None:
    follower = RaftNode(3, [1, 2], CONFIG, random.Random(0), 0.0)
    follower.step(AppendEntries(4, 1, 0, 0, (), 0, 0.5, 1), 10.0)
    follower.advance(follower.take_ready())
    follower.step(RequestVote(5, 2, 0, 0), 10.5)
    ready = follower.take_ready()
    assert follower.term == 4 and follower.voted_for is None
    assert ready.messages == (Envelope(2, RequestVoteReply(4, 3, False, 0.0)),)
    assert ev.VoteIgnored(3, "vote", 2, 5, 1) in ready.events
    # Once the minimum election timeout has passed without the leader, it votes.
    follower.step(RequestVote(5, 2, 0, 0), 11.0)
    ready = follower.take_ready()
    assert follower.term == 5 and follower.voted_for == 2


def test_a_pre_vote_refusal_from_a_later_term_brings_the_asker_up_to_it() -> None:
    node = RaftNode(1, [2, 3], CONFIG, random.Random(0), 0.0)
    node.tick(5.0)
    node.advance(node.take_ready())
    node.step(RequestVoteReply(7, 2, False, 0.0, pre_vote=True), 5.1)
    assert node.term == 7 and role(node) is Role.FOLLOWER
    # A granted pre-vote reply carries a term nobody holds: it changes no term.
    node.tick(node.next_deadline())
    node.advance(node.take_ready())
    node.step(RequestVoteReply(8, 3, True, 0.0, pre_vote=True), 9.0)
    assert role(node) is Role.CANDIDATE and node.term == 8


def test_pre_votes_are_refused_to_a_candidate_whose_log_is_behind() -> None:
    voter = RaftNode(
        2,
        [1, 3],
        CONFIG,
        random.Random(0),
        0.0,
        PersistentState(HardState(3, None), [noop(3)]),
    )
    voter.step(RequestVote(4, 1, 0, 0, pre_vote=True), 5.0)
    reply = voter.take_ready().messages[-1].message
    assert reply == RequestVoteReply(3, 2, False, 0.0, pre_vote=True)
    assert voter.term == 3


# ---------------------------------------------------------------------------------------------
# CheckQuorum


def test_check_quorum_steps_a_leader_down_before_a_long_lease_ends() -> None:
    # A lease longer than the election timeout: without CheckQuorum a leader cut off from
    # everyone would stay leader (refusing writes it cannot commit) for the whole lease.
    config = replace(CONFIG, lease_duration=5.0, heartbeat_interval=0.5)
    h = Harness(config=config)
    leader = h.elect(1, 6.0)
    start = 6.0 + 0.0
    now = start
    while role(leader) is Role.LEADER and now < start + 4.0:
        now += 0.1
        h.tick(1, now)
        h.in_flight.clear()  # a partition: nobody answers
    assert role(leader) is Role.FOLLOWER
    assert now < start + 2 * config.election_timeout_min + 0.2
    assert any(isinstance(e, ev.CheckQuorumFailed) for e in events(h, 1))


def test_check_quorum_keeps_a_leader_that_a_majority_answers() -> None:
    config = replace(CONFIG, lease_duration=5.0, heartbeat_interval=0.5)
    h = Harness(config=config)
    leader = h.elect(1, 6.0)
    now = 6.0
    for _ in range(60):
        now += 0.1
        h.tick(1, now)
        h.deliver_all(now, drop_to={3})
    assert role(leader) is Role.LEADER


# ---------------------------------------------------------------------------------------------
# Leadership transfer (rule 8)


def test_transfer_hands_leadership_and_the_lease_to_the_most_up_to_date_follower() -> None:
    h = Harness()
    leader = h.elect(1, 3.0)
    leader.propose(SetCommand("k", "v"), 3.1, token=1)
    h.flush(1)
    h.deliver_all(3.1, drop_to={3})  # node 3 misses the SET: node 2 is the most up to date
    assert leader.serves_lease_reads(3.2)
    assert leader.transfer_leadership(3.2) is None
    # From this moment the old leader serves no lease read and takes no write.
    assert leader.read("k", 3.2, 2) == Refused(Refusal.NOT_LEADER, 2)
    assert leader.propose(SetCommand("k", "w"), 3.2, token=3) == Refused(Refusal.NOT_LEADER, 2)
    assert ev.TransferStarted(1, 2, 1) in h.flush(1).events
    timeout_now = [
        e
        for e in sent(h, AppendEntries, to=2)
        if isinstance(e.message, AppendEntries) and e.message.timeout_now
    ]
    assert timeout_now
    h.deliver_all(3.2)
    new = h.nodes[2]
    assert role(new) is Role.LEADER and new.term == 2
    assert role(leader) is Role.FOLLOWER
    # The hand-off: no old-lease wait, the NO-OP at once.
    assert new.status(3.2).waiting_for_old_lease == 0
    assert new.serves_lease_reads(3.2)
    assert ev.WaitingForOldLease() not in events(h, 2)


def test_a_transfer_to_a_lagging_follower_catches_it_up_first() -> None:
    h = Harness()
    leader = h.elect(1, 3.0)
    leader.propose(SetCommand("k", "v"), 3.1, token=1)
    h.flush(1)
    h.deliver_all(3.1, drop_to={3})
    assert leader.transfer_leadership(3.2, target=3) is None
    h.flush(1)
    now = 3.2
    while role(leader) is Role.LEADER:
        h.deliver_all(now)
        now += CONFIG.heartbeat_interval  # the leader finds the lost SET at a heartbeat
        h.tick(1, now)
    assert now < 3.2 + CONFIG.election_timeout_min
    assert role(h.nodes[3]) is Role.LEADER and h.nodes[3].state_machine.get("k") == "v"


def test_an_aborted_transfer_steps_the_leader_down_without_its_lease() -> None:
    h = Harness()
    leader = h.elect(1, 3.0)
    assert leader.transfer_leadership(3.1, target=3) is None
    now = 3.1
    while role(leader) is Role.LEADER:
        assert not leader.serves_lease_reads(now)  # never again in this term
        now += 0.05
        h.tick(1, now)
        h.deliver_all(now, drop_to={3})  # the target is unreachable
    assert now == pytest.approx(3.1 + CONFIG.election_timeout_min, abs=0.06)
    assert ev.TransferAborted(1, 3) in events(h, 1)


def test_transfer_refusals_say_why() -> None:
    h = Harness()
    assert h.nodes[2].transfer_leadership(0.0) == "node 2 is not the leader"
    leader = h.elect(1, 3.0)
    refusal = leader.transfer_leadership(3.1, target=7)
    assert refusal == "node 7 is not another member of this cluster"
    assert leader.transfer_leadership(3.1, target=2) is None
    assert leader.transfer_leadership(3.1, target=3) == "a transfer to node 2 is already under way"


def test_the_hand_off_holds_only_for_the_term_the_timeout_now_started() -> None:
    # The target's transfer election fails (nobody answers); its next, ordinary election
    # must wait out old leases again.
    h = Harness()
    h.elect(1, 3.0)
    target = h.nodes[2]
    target.step(AppendEntries(1, 1, 1, 1, (), 1, 0.5, 9, timeout_now=True), 3.5)
    h.flush(2)
    assert role(target) is Role.CANDIDATE and target.term == 2
    h.in_flight.clear()
    now = target.next_deadline()
    h.tick(2, now)  # pre-vote for term 3
    for peer in (1, 3):
        target.step(RequestVoteReply(3, peer, True, 0.0, pre_vote=True), now)
    target.step(RequestVoteReply(3, 1, True, 0.4), now)
    assert role(target) is Role.LEADER and target.term == 3
    assert target.status(now).waiting_for_old_lease > 0


# ---------------------------------------------------------------------------------------------
# Admission after a disk loss, incarnations


def test_a_node_that_is_not_admitted_never_votes_acknowledges_or_campaigns() -> None:
    node = RaftNode(3, [1, 2], CONFIG, random.Random(0), 0.0, admitted=False)
    ready = node.take_ready()
    assert ready.events == (ev.NotAdmitted(3),)
    node.tick(100.0)
    assert node.take_ready().messages == ()
    node.step(RequestVote(1, 1, 0, 0), 100.0)
    node.step(AppendEntries(1, 1, 0, 0, (noop(1),), 1, 0.5, 4), 100.0)
    replies = [e.message for e in node.take_ready().messages]
    assert replies == [
        RequestVoteReply(1, 3, False, 0.0),
        AppendEntriesReply(1, 3, False, 0, 0, 0, features=PROTOCOL_FEATURES),
    ]
    assert node.log.held() == [] and node.term == 0 and node.voted_for is None


def test_a_leader_forgets_what_a_follower_with_a_new_incarnation_acknowledged() -> None:
    h = Harness()
    leader = h.elect(1, 3.0)
    leader.step(AppendEntriesReply(1, 2, True, 1, 0, leader._round, incarnation=0xA), 3.1)
    assert leader._leader is not None and leader._leader.progress[2].match == 1
    leader.step(AppendEntriesReply(1, 2, False, 0, 1, leader._round, incarnation=0xB), 3.2)
    ready = leader.take_ready()
    assert ev.PeerReplaced(1, 2, "a", "b") in ready.events
    assert leader._leader.progress[2].match == 0


# ---------------------------------------------------------------------------------------------
# The carried lease and drift bound; both read modes wait


def test_a_read_index_leader_waits_out_the_old_lease_too() -> None:
    # Issue 14: a read_index leader used to skip the wait, so a lease-mode leader elsewhere
    # (a cluster switching read mode node by node) could still serve a stale read.
    config = CONFIG.with_read_mode(ReadMode.READ_INDEX)
    candidate = RaftNode(1, [2, 3], config, random.Random(0), 0.0)
    candidate.tick(5.0)
    candidate.step(RequestVoteReply(1, 2, True, 0.0, pre_vote=True), 5.0)
    candidate.step(RequestVoteReply(1, 2, True, 0.4), 5.0)
    assert candidate.role is Role.LEADER
    assert candidate.status(5.0).waiting_for_old_lease == pytest.approx(0.4)


def test_the_largest_announced_drift_bound_is_adopted_and_persisted() -> None:
    follower = RaftNode(3, [1, 2], CONFIG, random.Random(0), 0.0)
    follower.advance(follower.take_ready())
    follower.step(AppendEntries(1, 1, 0, 0, (), 0, 0.5, 1, max_clock_drift=0.05), 1.0)
    ready = follower.take_ready()
    assert ready.hard_state == HardState(1, None, 0.5, 0.05)
    reply = ready.messages[0].message
    assert isinstance(reply, AppendEntriesReply) and reply.max_clock_drift == 0.05
    follower.advance(ready)
    # A later, smaller announcement changes nothing.
    follower.step(AppendEntries(1, 1, 0, 0, (), 0, 0.5, 2, max_clock_drift=0.01), 1.1)
    assert follower.take_ready().hard_state is None


def test_the_forget_lease_bound_switch_restarts_with_only_its_own_lease() -> None:
    hard = HardState(4, None, lease_bound=3.5)
    unsafe = UnsafeSwitches(forget_lease_bound=True)
    node = RaftNode(3, [1, 2], CONFIG, random.Random(0), 10.0, PersistentState(hard, ()), unsafe)
    node.step(RequestVote(5, 2, 0, 0), 10.1)
    reply = node.take_ready().messages[-1].message
    assert isinstance(reply, RequestVoteReply)
    assert reply.old_lease_remaining == pytest.approx(0.5 - 0.1)


def test_a_candidate_that_times_out_gives_up_its_term_before_asking_for_pre_votes() -> None:
    # Found by the simulator (seed 173): late votes of the abandoned term made the node leader
    # while it was asking for pre-votes, and the pre-votes then started an election from the
    # leader's state, leaving a candidate that never campaigned again.
    node = RaftNode(1, [2, 3], CONFIG, random.Random(0), 0.0)
    node.tick(5.0)
    node.step(RequestVoteReply(1, 2, True, 0.0, pre_vote=True), 5.0)
    assert role(node) is Role.CANDIDATE and node.term == 1
    node.advance(node.take_ready())
    node.tick(node.next_deadline())  # the election of term 1 timed out: ask about term 2
    assert role(node) is Role.FOLLOWER
    node.step(RequestVoteReply(1, 2, True, 0.0), 9.0)  # a late vote of term 1
    assert role(node) is Role.FOLLOWER
    node.step(RequestVoteReply(2, 3, True, 0.0, pre_vote=True), 9.0)
    assert role(node) is Role.CANDIDATE and node.term == 2


def restart_with_a_shorter_lease(unsafe: UnsafeSwitches) -> tuple[RaftNode, RaftNode, float]:
    """Issue 14's reproduction, no drift: leader 1 (lease 3.5 s) keeps its lease through node
    3's acknowledgements after losing node 2; node 3 restarts with a 0.3 s lease, node 1 is
    cut off from both, and node 2 or 3 wins an election with the other's vote (node 3, just
    restarted, follows no leader, so it grants at once). Every node's timer runs (node 1's
    CheckQuorum included). Returns (old leader, new leader, the instant the new leader starts
    serving)."""
    long = replace(CONFIG, lease_duration=3.5, heartbeat_interval=0.1)
    h = Harness(config=long)
    old = h.elect(1, 4.0)  # past every node's restart lease
    now = 4.0
    for _ in range(30):  # 3 s in which node 2 hears nothing: its promise runs out
        now = round(now + 0.1, 9)
        h.tick(1, now)
        h.deliver_all(now, drop_to={2})
    # Node 1's CheckQuorum has just passed (at t=7) and node 3's acknowledgement counts for the
    # next check: node 1 stays leader, with its lease, until t=9.
    hard_state = h.readies[3][-1].hard_state or h.nodes[3].hard_state
    assert hard_state.lease_bound == 3.5
    short = replace(long, lease_duration=0.3)
    persisted = PersistentState(hard_state, tuple(h.nodes[3].log.held()))
    h.nodes[3] = RaftNode(3, [1, 2], short, random.Random(3), now, persisted, unsafe)
    h.in_flight.clear()
    while not (leaders := [h.nodes[i] for i in (2, 3) if role(h.nodes[i]) is Role.LEADER]):
        assert now < 20.0, "no new leader"
        now = round(now + 0.01, 9)
        for node_id, node in h.nodes.items():
            if now >= node.next_deadline():
                h.tick(node_id, now)
        h.in_flight = [(src, e) for src, e in h.in_flight if src != 1]  # node 1 is cut off
        h.deliver_all(now, drop_to={1})
    new = leaders[0]
    serving = now + new.status(now).waiting_for_old_lease
    return old, new, serving


def test_a_restart_with_a_shorter_lease_still_waits_out_the_longer_one() -> None:
    old, new, serving = restart_with_a_shorter_lease(UnsafeSwitches())
    # Node 3 waited out the 3.5 s lease it had acknowledged: the old leader cannot serve then
    # (its lease ran out, or CheckQuorum stepped it down first).
    assert old.lease_read_refusal(serving) is not None
    assert new.status(serving).waiting_for_old_lease == 0


def test_negative_control_forgetting_the_lease_bound_gives_two_lease_holders() -> None:
    old, new, serving = restart_with_a_shorter_lease(UnsafeSwitches(forget_lease_bound=True))
    # The new leader is done waiting (and appends and commits at once) while the old one still
    # holds its lease and answers reads: a stale read.
    assert role(new) is Role.LEADER and new.status(serving).waiting_for_old_lease == 0
    assert old.lease_read_refusal(serving) is None
    assert old.status(serving).lease_remaining > 0


def test_the_lease_bound_comes_down_once_every_promise_of_the_longer_one_has_run_out() -> None:
    # A rolling change from 3.5 s to 0.3 s: once the node has followed only 0.3 s leaders for
    # 3.5 s, no promise of the longer lease can be running, and a restart waits 0.3 s again.
    hard = HardState(4, None, lease_bound=3.5)
    node = RaftNode(3, [1, 2], CONFIG, random.Random(0), 10.0, PersistentState(hard, ()))
    node.advance(node.take_ready())
    now = 10.0
    while now < 13.4:
        now += 0.1
        node.step(AppendEntries(5, 1, 0, 0, (), 0, 0.3, 1), now)
        ready = node.take_ready()
        node.advance(ready)
        assert node.lease_bound == 3.5 and (ready.hard_state is None or now < 10.2)
    now += 0.2
    node.step(AppendEntries(5, 1, 0, 0, (), 0, 0.3, 1), now)
    ready = node.take_ready()
    assert ready.hard_state is not None and ready.hard_state.lease_bound == 0.3
    # A longer lease recorded again raises it at once.
    node.advance(ready)
    node.step(AppendEntries(5, 1, 0, 0, (), 0, 2.0, 2), now + 0.1)
    assert node.lease_bound == 2.0


def test_a_transfer_goes_only_to_a_node_that_answers() -> None:
    # A transfer to a dead node ends with the leader stepping down; refusing it up front keeps
    # any client allowed to ask from costing the cluster an election.
    h = Harness()
    leader = h.elect(1, 3.0)
    now = 3.0
    for _ in range(12):  # node 3 stops answering for longer than election_timeout_min
        now = round(now + 0.1, 9)
        h.tick(1, now)
        h.deliver_all(now, drop_to={3})
    assert leader.transfer_leadership(now, target=3) == "node 3 has not answered within 1.0s"
    assert leader.transfer_leadership(now) is None  # the most up-to-date node that answers
    assert leader._leader is not None and leader._leader.transfer_target == 2


def test_a_success_reply_with_the_window_full_sends_no_empty_append() -> None:
    # Found by the soak (seed 1707): with the window of entries in flight full, each success
    # reply that moved nothing was answered by an empty append, answered by another success,
    # and so on without end at one instant.
    h = Harness(config=replace(CONFIG, max_entries_per_message=1))
    leader = h.elect(1, 3.0)
    for n in range(8):
        leader.propose(SetCommand("k", str(n)), 3.1, token=n)
    h.flush(1)
    h.in_flight.clear()
    progress = leader._leader.progress[2] if leader._leader else None
    assert progress is not None and progress.state is ProgressState.REPLICATE
    progress.next = progress.match + 5  # the window (4 entries) in flight, nothing answered
    assert progress.next <= leader.log.last_index
    leader.step(AppendEntriesReply(1, 2, True, progress.match, 0, leader._round), 3.2)
    assert not [e for e in leader.take_ready().messages if isinstance(e.message, AppendEntries)]


def test_a_pre_vote_refused_by_a_node_that_is_not_admitted_raises_no_term() -> None:
    # Found in review: answered in the asked term, the refusal raised the asker's term, and
    # the asker then deposed its leader, which PreVote is there to prevent.
    node = RaftNode(3, [1, 2], CONFIG, random.Random(0), 0.0, admitted=False)
    node.take_ready()
    node.step(RequestVote(5, 1, 0, 0, pre_vote=True), 1.0)
    assert node.take_ready().messages == (
        Envelope(1, RequestVoteReply(4, 3, False, 0.0, pre_vote=True)),
    )


def test_leadership_goes_neither_to_a_node_that_is_not_admitted_nor_far_behind() -> None:
    # Found in review: round-0 refusals counted as answers, so a client could name a node that
    # can never take over, and the leader would step down at the transfer's deadline.
    h = Harness(size=5, config=replace(CONFIG, max_entries_per_message=2))
    leader = h.elect(1, 3.0)
    h.nodes[4] = RaftNode(4, [1, 2, 3, 5], h.nodes[4].config, random.Random(4), 3.0, admitted=False)
    now = 3.0
    for n in range(12):  # node 4 answers every heartbeat, with round-0 refusals only
        now = round(now + 0.1, 9)
        leader.propose(SetCommand("k", str(n)), now, token=n)
        h.tick(1, now)
        h.deliver_all(now, drop_to={5} if n >= 4 else None)  # node 5 falls behind
    assert role(leader) is Role.LEADER
    assert leader.transfer_leadership(now, target=4) == "node 4 has not answered within 1.0s"
    refusal = leader.transfer_leadership(now, target=5)
    assert refusal is not None and "entries behind" in refusal, refusal
    assert leader.transfer_leadership(now) is None  # to node 2 or 3, which are level with it
