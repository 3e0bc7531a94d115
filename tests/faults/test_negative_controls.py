"""Negative controls at process level: each `--unsafe-*` switch breaks one lease rule, and the
same scenarios that pass on the real node (test_lease_scenarios.py) must catch it — a stale
read, a lease longer than the rule allows, or a failed linearizability check.

Which scenario catches which switch, and why:

  --unsafe-skip-lease-wait          partitioned old leader: the new leader commits at once,
                                    while the old one still serves from its lease.
  --unsafe-renew-lease-on-send      partitioned old leader: it renews its own lease with every
                                    heartbeat nobody answers, and never stops serving.
  --unsafe-forget-lease-on-restart  partitioned old leader, followers restarted: they vote with
                                    no memory of its lease, so the new leader does not wait.
  --unsafe-lease-from-ack-time      late acks: Status.lease_remaining reaches the full span
                                    instead of span − ack delay.
  --unsafe-read-before-noop         full-cluster restart: the leader reads its state machine as
                                    restored from the lazy commit hint, before its NO-OP
                                    commits what the old term had committed.
  --unsafe-read-without-lease       stalled disk: the leader's loop waits on fsync, so it does
                                    not step down, but it still answers GETs, lease or not.
                                    (A SIGSTOPped leader does not show it: on SIGCONT its timer
                                    fires before the queued GETs are read, and it steps down.)
  RAFTKV_CLOCK_RATE=0.3 on the      far beyond max drift 0.01: its lease lasts 3.3× longer in
  leader                            real time than its followers assume.
  --unsafe-no-fsync                 kill -9 cannot lose page-cache data, so no history can show
                                    it; strace shows the node makes no fsync/fdatasync at all.

The partitioned-leader controls also turn CheckQuorum off (`--unsafe-no-pre-vote`, which turns
off PreVote and leader stickiness with it). Since issue 14 an isolated leader steps down after
one or two election timeouts of silence, before its broken 2 s lease could be seen; that is a
second defence, and these controls test the lease rules alone. With both on, the simulator
checks them together (tests/simulation).
"""

from __future__ import annotations

import subprocess

import pytest

from tests.faults import scenarios
from tests.faults.conftest import ClusterFactory, require_strace
from tests.faults.controller import Cluster

LONG_LEASE = 2.0
RESTART_LEASE = 10.0  # restarting two nodes takes seconds on a busy machine


def assert_caught(story: scenarios.Story) -> None:
    stale = story.stale_reads()
    result = story.check()
    print(story.summary())
    print(result.explanation)
    assert stale, "the broken node served no stale read:\n" + story.summary()
    assert not result.ok, "the checker accepted a history with stale reads"


def unsafe(switch: str) -> list[str]:
    return [f"--unsafe-{switch}"]


# CheckQuorum would step the isolated leader down before its broken lease shows (module doc).
WITHOUT_CHECK_QUORUM = ["--unsafe-no-pre-vote"]


# Every cluster here starts its nodes with a test seam, which each node refuses without this.
ACKNOWLEDGED = {"allow_unsafe": True}


def assert_switch_logged(cluster: Cluster, name: str) -> None:
    lines = [line for i in cluster.ids for line in cluster.dump_lines(i)]
    assert any("UNSAFE test switches on" in line and name in line for line in lines)


@pytest.mark.parametrize("switch", ["skip-lease-wait", "renew-lease-on-send"])
def test_partitioned_old_leader_catches(make_cluster: ClusterFactory, switch: str) -> None:
    args = unsafe(switch) + WITHOUT_CHECK_QUORUM
    cluster = make_cluster(3, lease=LONG_LEASE, node_args=args, **ACKNOWLEDGED)
    assert_switch_logged(cluster, switch.replace("-", "_"))
    assert_caught(scenarios.partitioned_leader(cluster))


def test_restarted_voters_catch_forget_lease_on_restart(make_cluster: ClusterFactory) -> None:
    # Restarting two nodes takes seconds on a busy machine: the old lease must outlast that.
    args = unsafe("forget-lease-on-restart") + WITHOUT_CHECK_QUORUM
    cluster = make_cluster(3, lease=RESTART_LEASE, node_args=args, **ACKNOWLEDGED)
    assert_caught(scenarios.partitioned_leader(cluster, restart_followers=True))


def test_late_acks_catch_lease_from_ack_time(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(
        3, lease=LONG_LEASE, proxied=True, node_args=unsafe("lease-from-ack-time"), **ACKNOWLEDGED
    )
    story = scenarios.late_acks(cluster, delay=0.25)
    print(story.summary(), story.max_lease_remaining, story.bound)
    # The lease ran from the ack's arrival: up to the whole span, 0.25 s past the rule's bound.
    assert story.max_lease_remaining > story.bound + 0.15, story.max_lease_remaining


def test_full_restart_catches_read_before_noop(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3, proxied=True, node_args=unsafe("read-before-noop"), **ACKNOWLEDGED)
    story = scenarios.full_restart(cluster, delay=0.15)
    assert story.hint < story.index
    assert_caught(story)


def test_stalled_disk_catches_read_without_lease(make_cluster: ClusterFactory) -> None:
    require_strace()
    cluster = make_cluster(3, node_args=unsafe("read-without-lease"), **ACKNOWLEDGED)
    assert_caught(scenarios.stalled_disk_leader(cluster))


def test_clock_far_beyond_the_drift_bound_breaks_leases(make_cluster: ClusterFactory) -> None:
    """Documented limit, not a bug: leases assume every clock runs within 1 ± ρ. A leader at
    0.3× (ρ = 0.01) holds its lease 3.3× longer in real time than its followers wait: with
    L = 2 s, 6.5 s against 2.04 s. (CheckQuorum, on the same slow clock, is turned off to show
    the lease's own bound.)"""
    cluster = make_cluster(
        3,
        lease=LONG_LEASE,
        proxied=True,
        hold_while_down=True,
        node_args=WITHOUT_CHECK_QUORUM,
        env={"RAFTKV_CLOCK_RATE": "0.3"},
        **ACKNOWLEDGED,
    )
    assert_switch_logged(cluster, "clock_rate=0.3")
    leader = scenarios.skewed_leader(cluster, 0.3)
    assert_caught(scenarios.partitioned_leader(cluster, leader=leader))


def test_no_fsync_makes_no_fsync_calls(make_cluster: ClusterFactory) -> None:
    """kill -9 leaves the page cache intact, so losing unsynced writes needs a machine crash
    (or a storage fault layer); what a test *can* show is that the switch is on and that the
    node never calls fsync/fdatasync, where a normal node calls them for every write batch."""
    require_strace()
    counts = {}
    for label, args in (("safe", []), ("no-fsync", unsafe("no-fsync"))):
        cluster = make_cluster(3, node_args=args, allow_unsafe=bool(args))
        leader = cluster.wait_for_leader()
        counts[label] = count_syncs(cluster, leader, writes=20)
        if args:
            assert_switch_logged(cluster, "no_fsync")
        cluster.close()
    print(counts)
    assert counts["safe"] >= 20  # one fdatasync per write batch at least
    assert counts["no-fsync"] == 0


def count_syncs(cluster: Cluster, node: int, writes: int) -> int:
    pid = cluster.nodes[node].pid
    assert pid is not None
    output = cluster.workdir / f"strace-sync-{node}.txt"
    tracer = subprocess.Popen(
        ["strace", "-f", "-qq", "-p", str(pid), "-e", "trace=fsync,fdatasync", "-o", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        scenarios.wait_for_tracer(pid)
        for n in range(writes):
            result = cluster.set(node, "fsync", f"v{n}", timeout=5)
            assert result.ok, result
        # Each answer came after its fsync returned; strace writes everything out as it exits.
    finally:
        tracer.terminate()
        tracer.wait(10)
    return sum(
        1
        for line in output.read_text().splitlines()
        if ("fdatasync(" in line or "fsync(" in line) and "resumed" not in line
    )
