"""Single-server membership changes with learners (docs/design.md §13), rule by rule."""

from __future__ import annotations

import random

import pytest

from raftkv.core import events as ev
from raftkv.core.membership import (
    AddLearner,
    MembershipRefused,
    Promote,
    Remove,
    next_membership,
)
from raftkv.core.messages import (
    FEATURE_SNAPSHOTS_AND_SESSIONS,
    Accepted,
    AppendEntries,
    AppendEntriesReply,
    ClientReply,
    LogEntry,
    Member,
    Membership,
    MembershipCommand,
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
    Role,
    UnsafeSwitches,
)

from .test_core_node import CONFIG, Harness, events

THREE = Membership.of_voters([1, 2, 3])


def test_next_membership_moves_one_server_at_a_time() -> None:
    four = next_membership(THREE, AddLearner(Member(4, voter=True, peer_address="h4:51050")))
    assert isinstance(four, Membership)
    assert four.voters == {1, 2, 3} and four.learners == {4}
    assert four.member(4) == Member(4, voter=False, peer_address="h4:51050")
    promoted = next_membership(four, Promote(4))
    assert isinstance(promoted, Membership) and promoted.voters == {1, 2, 3, 4}
    removed = next_membership(promoted, Remove(1))
    assert isinstance(removed, Membership) and removed.ids == {2, 3, 4}
    assert "already a voter" in str(next_membership(THREE, AddLearner(Member(2))))
    assert "remove it first" in str(next_membership(THREE, AddLearner(Member(2))))
    assert "already a voter" in str(next_membership(THREE, Promote(3)))
    assert "add it as a learner first" in str(next_membership(THREE, Promote(9)))
    assert "not a member" in str(next_membership(THREE, Remove(9)))
    assert "last voter" in str(next_membership(Membership.of_voters([5]), Remove(5)))
    with pytest.raises(ValueError, match="ascending"):
        Membership((Member(2), Member(1)))
    with pytest.raises(ValueError, match="at least one voter"):
        Membership((Member(1, voter=False),))


class Cluster(Harness):
    """The harness, with nodes that join: started empty, with the configuration that names
    them as learners (what `raftkv-node --join` gets from the cluster)."""

    def join(self, node_id: int, membership: Membership, now: float) -> RaftNode:
        node = RaftNode(node_id, [], CONFIG, random.Random(node_id), now, membership=membership)
        self.nodes[node_id] = node
        self.readies[node_id] = []
        return node

    def change(self, leader: RaftNode, change: object, now: float, token: int = 900) -> int:
        result = leader.change_membership(change, now, token)  # type: ignore[arg-type]
        assert isinstance(result, Accepted), result
        self.flush(leader.id)
        return result.index

    def beats(
        self, leader: RaftNode, now: float, count: int, drop_to: set[int] | None = None
    ) -> float:
        """`count` heartbeats of `leader` (entries lost on the way are resent after two), every
        message delivered; the time after the last."""
        for _ in range(count):
            now += CONFIG.heartbeat_interval * 1.01
            self.tick(leader.id, now)
            self.deliver_all(now, drop_to=drop_to)
        return now

    def elect_losing_noop(self, node_id: int, now: float) -> float:
        """Make `node_id` leader and let it append its NO-OP, which is lost on the way: a
        serving leader that has committed nothing of its term. Returns when it began serving."""
        node = self.nodes[node_id]
        self.tick(node_id, now)
        while node.role is not Role.LEADER:  # deliver until elected
            _, envelope = self.in_flight.pop(0)
            self.nodes[envelope.to].step(envelope.message, now)
            self.flush(envelope.to)
        self.in_flight.clear()
        serve_at = now + node.status(now).waiting_for_old_lease
        self.tick(node_id, serve_at)
        self.in_flight.clear()
        return serve_at

    def committed(self, token: int) -> bool:
        return any(r.token == token and isinstance(r.result, WriteDone) for r in self.replies)


def _grown_to_four(now: float = 3.0) -> tuple[Cluster, RaftNode]:
    """Nodes 1–3 with node 1 leading, node 4 added as a learner and caught up."""
    h = Cluster()
    leader = h.elect(1, now)
    h.change(leader, AddLearner(Member(4, peer_address="h4")), now + 0.1, token=1)
    h.join(4, leader.membership, now + 0.1)
    h.deliver_all(now + 0.1)
    h.tick(1, now + 0.2)  # a heartbeat carries the commit index
    h.deliver_all(now + 0.2)
    assert h.committed(1)
    return h, leader


def test_a_learner_gets_the_log_but_never_campaigns_or_counts() -> None:
    h, leader = _grown_to_four()
    learner = h.nodes[4]
    assert learner.membership.learners == {4}
    assert learner.log.last_index == leader.log.last_index
    assert learner.commit_index == leader.commit_index
    assert ev.MembershipCommitted(4, 2, "add learner 4", "voters 1,2,3 learners 4") in events(h, 4)
    # Past any election timeout, a learner asks for no votes.
    h.tick(4, 20.0)
    assert not h.take(RequestVote)
    assert learner.role is Role.FOLLOWER
    # Commit needs a majority of the voters: node 1 and the learner are not one.
    leader.propose(SetCommand("k", "v"), 3.3, token=2)
    h.flush(1)
    h.deliver_all(3.3, drop_to={2, 3})
    assert leader.commit_index == 2
    # Node 2 makes it one.
    h.tick(1, 3.4)
    h.deliver_all(3.4, drop_to={3})
    assert leader.commit_index == 3


def test_promotion_waits_until_the_learner_has_caught_up() -> None:
    h = Cluster()
    leader = h.elect(1, 3.0)
    h.change(leader, AddLearner(Member(4)), 3.1, token=1)
    h.deliver_all(3.1, drop_to={4})  # node 4 is not started yet
    h.tick(1, 3.15)
    h.deliver_all(3.15, drop_to={4})
    for i in range(5):
        leader.propose(SetCommand(f"k{i}", "v"), 3.2, token=10 + i)
    h.flush(1)
    h.deliver_all(3.2, drop_to={4})
    refused = leader.change_membership(Promote(4), 3.3, token=2, promote_max_lag=2)
    assert isinstance(refused, MembershipRefused)
    assert refused.reason.startswith("node 4 is 7 entries behind the leader (at most 2")
    h.join(4, THREE, 3.3)
    h.tick(1, 3.4)
    h.deliver_all(3.4)
    assert h.change(leader, Promote(4), 3.5, token=3) == 8
    h.deliver_all(3.5)
    h.tick(1, 3.6)
    h.deliver_all(3.6)
    assert h.committed(3)
    assert all(node.membership.voters == {1, 2, 3, 4} for node in h.nodes.values())
    # Four voters: two are not a majority, three are.
    leader.propose(SetCommand("x", "y"), 3.7, token=4)
    h.flush(1)
    h.deliver_all(3.7, drop_to={3, 4})
    assert leader.commit_index == 8
    h.tick(1, 3.85)
    h.deliver_all(3.85, drop_to={4})
    assert leader.commit_index == 9


def test_one_change_at_a_time_and_only_after_a_commit_of_the_leaders_term() -> None:
    h = Cluster()
    leader = h.nodes[1]
    serve_at = h.elect_losing_noop(1, 3.0)
    assert leader.status(serve_at).commit_index == 0
    refused = leader.change_membership(AddLearner(Member(4)), serve_at, token=1)
    assert isinstance(refused, MembershipRefused)
    assert "not committed an entry of its own term" in refused.reason
    serve_at = h.beats(leader, serve_at, 3)
    h.change(leader, AddLearner(Member(4)), serve_at, token=2)
    second = leader.change_membership(Remove(3), serve_at, token=3)
    assert isinstance(second, MembershipRefused)
    assert "(add learner 4) is not committed yet; one change at a time" in second.reason
    # The negative controls lift each rule.
    loose = Cluster()
    for node in loose.nodes.values():
        node.unsafe = UnsafeSwitches(change_before_term_commit=True, concurrent_config_changes=True)
    eager = loose.nodes[1]
    serve_at = loose.elect_losing_noop(1, 3.0)
    assert isinstance(eager.change_membership(AddLearner(Member(4)), serve_at, 1), Accepted)
    assert isinstance(eager.change_membership(Remove(3), serve_at, 2), Accepted)


def test_a_configuration_is_in_force_from_the_log_and_reverts_on_truncation() -> None:
    h = Cluster()
    leader = h.elect(1, 3.0)
    h.change(leader, AddLearner(Member(4)), 3.1, token=1)
    [(_, append)] = h.take(AppendEntries, to=2)
    h.in_flight.clear()
    follower = h.nodes[2]
    follower.step(append, 3.1)
    h.flush(2)
    assert follower.membership.learners == {4}
    assert follower.committed_membership == THREE
    assert ev.MembershipAppended(2, 2, "add learner 4", "voters 1,2,3 learners 4") in events(h, 2)
    # A later leader overwrites entry 2: node 2 is back to the first configuration.
    assert isinstance(append, AppendEntries)
    other = AppendEntries(
        term=append.term + 1,
        leader_id=3,
        prev_log_index=1,
        prev_log_term=append.prev_log_term,
        entries=(LogEntry(append.term + 1, SetCommand("a", "b")),),
        leader_commit=1,
        lease_duration=CONFIG.lease_duration,
        round=1,
    )
    follower.step(other, 10.0)
    h.flush(2)
    assert follower.membership == THREE
    assert ev.MembershipReverted(2, 2, "voters 1,2,3") in events(h, 2)


def test_a_restarted_node_uses_the_last_configuration_of_its_log_and_snapshot() -> None:
    h, leader = _grown_to_four()
    image = leader.state_machine.image(leader.commit_index, leader.term)
    assert image.membership is not None and image.membership.learners == {4}
    restarted = RaftNode(
        2,
        [1, 3],
        CONFIG,
        random.Random(2),
        50.0,
        PersistentState(h.nodes[2].hard_state, (), snapshot=image, log_offset=image.index,
                        log_offset_term=image.term),
    )  # fmt: skip
    assert restarted.membership.learners == {4}
    promoted = next_membership(image.membership, Promote(4))
    assert isinstance(promoted, Membership)
    entry = LogEntry(leader.term, MembershipCommand(promoted, "promote 4"))
    uncommitted = RaftNode(
        3,
        [1, 2],
        CONFIG,
        random.Random(3),
        50.0,
        PersistentState(h.nodes[3].hard_state, (*leader.log.slice(1, 3), entry), commit_index=2),
    )
    assert uncommitted.membership.voters == {1, 2, 3, 4}
    assert uncommitted.committed_membership.voters == {1, 2, 3}


def test_a_removed_leader_leads_until_the_change_commits_without_counting_itself() -> None:
    h = Cluster()
    leader = h.elect(1, 3.0)
    h.change(leader, Remove(1), 3.1, token=1)
    assert leader.membership.voters == {2, 3}
    # Node 2 alone is not a majority of {2, 3}: the leader no longer counts itself.
    h.deliver_all(3.1, drop_to={3})
    assert leader.commit_index == 1 and leader.role is Role.LEADER
    now = h.beats(leader, 3.1, 3)
    assert leader.commit_index == 2
    assert leader.status(now).role is Role.FOLLOWER
    assert ev.RemovedLeaderSteppingDown(1, 2) in events(h, 1)
    assert any(r == ClientReply(1, WriteDone(2)) for r in h.replies)
    # It never campaigns again.
    h.tick(1, 30.0)
    assert not [m for src, m in h.take(RequestVote) if src == 1]


def test_a_lease_is_renewed_only_by_a_majority_of_the_configuration_of_its_round() -> None:
    """Grown from {1,2,3} to five voters one change at a time; then only node 2 answers.
    {1, 2} is a majority of the configuration node 1 was elected under, not of the one in
    force: its lease must lapse. The negative control keeps renewing it from the old one."""

    def grow(unsafe: UnsafeSwitches) -> tuple[Cluster, RaftNode, float]:
        h = Cluster()
        for node in h.nodes.values():
            node.unsafe = unsafe
        leader = h.elect(1, 3.0)
        now = 3.0
        for new in (4, 5):
            now += 0.1
            h.change(leader, AddLearner(Member(new)), now)
            h.join(new, leader.membership, now)
            h.deliver_all(now)
            h.tick(1, now + 0.05)
            h.deliver_all(now + 0.05)
            now += 0.1
            h.change(leader, Promote(new), now)
            h.deliver_all(now)
            h.tick(1, now + 0.05)
            h.deliver_all(now + 0.05)
        assert leader.committed_membership.voters == {1, 2, 3, 4, 5}
        return h, leader, now + 0.05

    for unsafe, keeps_lease in (
        (UnsafeSwitches(), False),
        (UnsafeSwitches(lease_from_old_config=True), True),
    ):
        h, leader, now = grow(unsafe)
        # From here only node 2 answers, for longer than a lease.
        end = now + 3 * CONFIG.lease_duration
        while now < end and leader.role is Role.LEADER:
            now += CONFIG.heartbeat_interval
            h.tick(1, now)
            h.deliver_all(now, drop_to={3, 4, 5})
        serving = leader.role is Role.LEADER and leader.serves_lease_reads(now)
        assert serving is keeps_lease, unsafe


def test_a_learner_forgets_a_leader_it_has_not_heard_for_an_election_timeout() -> None:
    h, leader = _grown_to_four()
    learner = h.nodes[4]
    assert learner.leader_id == 1
    # The leader goes on; the learner hears nothing for longer than an election timeout.
    now = h.beats(leader, 3.2, int(CONFIG.election_timeout_max / CONFIG.heartbeat_interval) + 2,
                  drop_to={4})  # fmt: skip
    h.tick(4, now)
    assert learner.leader_id is None and learner.role is Role.FOLLOWER
    assert not [m for src, m in h.take(RequestVote) if src == 4]
    # The leader's next heartbeat is heard again.
    now = h.beats(leader, now, 1)
    assert learner.leader_id == 1 and leader.status(now).role is Role.LEADER


def test_a_node_that_joins_in_the_leaders_term_with_its_vote_spent_gives_no_old_vote() -> None:
    """Node 3 was removed, then its id came back as a learner with an empty disk, started (as
    `--join` starts it) in the term of the leader that added it, with that term's vote taken.
    A candidate that still has the old configuration (3 a voter) asks it for a vote of that
    term or an earlier one: refused, or the new disk could give a vote the old one already gave.
    A later term is a vote no disk of node 3 ever gave."""
    joined = next_membership(Membership.of_voters([1, 2]), AddLearner(Member(3)))
    assert isinstance(joined, Membership)
    hard = HardState(term=7, voted_for=3)
    fresh = RaftNode(3, [], CONFIG, random.Random(3), 0.0, PersistentState(hard, ()),
                     membership=joined)  # fmt: skip

    def ask(term: int, pre_vote: bool) -> bool:
        fresh.step(RequestVote(term, 2, 9, min(term, 4), pre_vote=pre_vote), 10.0)
        ready = fresh.take_ready()
        fresh.advance(ready)
        [reply] = [e.message for e in ready.messages]
        assert isinstance(reply, RequestVoteReply)
        return reply.granted

    assert not ask(7, False) and not ask(6, False) and not ask(7, True)
    assert ask(8, True) and ask(8, False)


def test_no_change_while_a_node_of_an_older_version_answers() -> None:
    """A node that announced features without FEATURE_MEMBERSHIP could not decode the entry."""
    h = Cluster()
    leader = h.elect(1, 3.0)
    old = AppendEntriesReply(leader.term, 3, True, leader.log.last_index, 0, 0,
                             features=FEATURE_SNAPSHOTS_AND_SESSIONS)  # fmt: skip
    leader.step(old, 3.1)
    h.flush(1)
    refused = leader.change_membership(AddLearner(Member(4)), 3.1, 1)
    assert isinstance(refused, MembershipRefused)
    assert refused.reason == (
        "node(s) 3 run a version without membership changes; upgrade every node first"
    )
    now = h.beats(leader, 3.1, 2)  # node 3 answers as this version again
    assert isinstance(leader.change_membership(AddLearner(Member(4)), now, 2), Accepted)


def test_a_learner_ignores_timeout_now_and_propose_takes_no_configuration() -> None:
    h, leader = _grown_to_four()
    learner = h.nodes[4]
    last = leader.log.last_index
    lease = CONFIG.lease_duration
    nudge = AppendEntries(leader.term, 1, last, leader.term, (), last, lease, 99, timeout_now=True)
    learner.step(nudge, 3.3)
    h.flush(4)
    assert learner.role is Role.FOLLOWER and learner.term == leader.term
    assert not [m for src, m in h.take(RequestVote) if src == 4]
    with pytest.raises(CoreMisuseError, match="change_membership"):
        leader.propose(MembershipCommand(leader.membership, "sneaky"), 3.3, 5)
