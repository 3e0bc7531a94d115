"""PreVote on real processes (issue 14): a node that can send but not receive never deposes a
healthy leader.

The cut is made in the kernel with nftables on the node's peer port
(`Cluster.close_peer_port`): no node can open a connection to it, while its own connections to
the others work both ways. So it sends its requests (pre-votes, votes) and gets their replies,
but receives no AppendEntries: it hears no leader, its election timer fires again and again.
Before PreVote and leader stickiness its ever-higher terms deposed the leader each time (the
issue measured a serving leader 62% of the time); the negative control, nodes started with
`--unsafe-no-pre-vote`, shows that it is the rule that keeps the leader.
"""

from __future__ import annotations

import time

from raftkv.core import events
from tests.faults.conftest import ClusterFactory, require_netns
from tests.faults.controller import Cluster, wait_until

# Fast profile: election timeouts of 0.4–0.8 s, so the cut node times out about 6 times.
CUT_SECONDS = 4.0


def pre_votes_asked(cluster: Cluster, node: int) -> int:
    return sum(isinstance(e, events.PreVoteStarted) for e in cluster.core_events(node))


def elections_started(cluster: Cluster, node: int) -> int:
    return sum(isinstance(e, events.ElectionTimeout) for e in cluster.core_events(node))


def run_with_a_node_that_hears_nothing(cluster: Cluster) -> tuple[int, int, int, set[int]]:
    """Close a follower's peer port for CUT_SECONDS while writing at the leader. Returns the
    cut follower, the leader, the failed writes and the terms the leader-side saw."""
    leader = cluster.wait_converged()
    follower = next(i for i in cluster.ids if i != leader)
    cluster.close_peer_port(follower)
    deadline = time.monotonic() + CUT_SECONDS
    failed, n = 0, 0
    terms: set[int] = set()
    while time.monotonic() < deadline:
        n += 1
        if not cluster.set(leader, "k", f"v{n}", timeout=1.0).ok:
            failed += 1
        status = cluster.status(leader)
        if status is not None:
            terms.add(status.term)
    return follower, leader, failed, terms


def test_a_node_that_cannot_receive_never_deposes_the_leader(
    make_cluster: ClusterFactory,
) -> None:
    require_netns()
    cluster = make_cluster(3)
    follower, leader, failed, terms = run_with_a_node_that_hears_nothing(cluster)
    # The cut node did time out, more than once, and asked for pre-votes each time...
    assert pre_votes_asked(cluster, follower) >= 2, cluster.tail(follower)
    # ...but never started an election, and the leader kept its term and served every write.
    assert elections_started(cluster, follower) == 0, cluster.tail(follower)
    assert len(terms) == 1, terms
    assert failed == 0
    assert cluster.serving_leader() == leader
    refusals = [
        e
        for i in cluster.ids
        if i != follower
        for e in cluster.core_events(i)
        if isinstance(e, events.VoteIgnored) and e.candidate == follower
    ]
    assert refusals, "the pre-votes never reached the others: the cut is not one way"
    # Healed, the node catches up under the same leader.
    cluster.heal()
    wait_until(
        lambda: (
            (s := cluster.status(follower)) is not None
            and s.HasField("leader_id")
            and s.leader_id == leader
        ),
        10,
        "the healed node to follow the same leader",
    )


def test_negative_control_without_pre_vote_the_leader_is_deposed(
    make_cluster: ClusterFactory,
) -> None:
    require_netns()
    cluster = make_cluster(3, node_args=["--unsafe-no-pre-vote"], allow_unsafe=True)
    follower, _, _, terms = run_with_a_node_that_hears_nothing(cluster)
    assert elections_started(cluster, follower) >= 2, cluster.tail(follower)
    assert len(terms) > 1, f"the leader kept term {terms}: the negative control is blind"
