"""The fault controller itself: every fault does what it says on real node processes."""

from __future__ import annotations

import subprocess
import sys
import time

import grpc

from raftkv.core import events as ev
from tests.faults import netns
from tests.faults.conftest import ClusterFactory, require_netns
from tests.faults.controller import REPO_ROOT, Cluster, wait_until


def elections_started(cluster: Cluster, node: int) -> int:
    """How often `node`'s election timer fired: it asked for pre-votes (or, when they were
    granted, campaigned)."""
    found = cluster.core_events(node)
    return sum(isinstance(e, ev.PreVoteStarted | ev.ElectionTimeout) for e in found)


def leftovers() -> list[str]:
    found = []
    ip, nft = netns.find_binary("ip"), netns.find_binary("nft")
    if ip:
        listing = subprocess.run([ip, "netns", "list"], capture_output=True, text=True).stdout
        found += [line for line in listing.splitlines() if line.startswith(f"{netns.PREFIX}-")]
        links = subprocess.run([ip, "-o", "link", "show"], capture_output=True, text=True).stdout
        found += [line for line in links.splitlines() if f" {netns.PREFIX}-" in line]
    if nft:
        tables = subprocess.run([nft, "list", "tables"], capture_output=True, text=True).stdout
        found += [line for line in tables.splitlines() if netns.NFT_TABLE in line]
    return found


def test_kill_restart_pause_resume(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    cluster.write("k", "before")
    cluster.kill(leader)
    assert not cluster.nodes[leader].running
    others = [i for i in cluster.ids if i != leader]
    cluster.wait_for_leader(among=others)
    cluster.write("k", "while-down", among=others)
    cluster.start_node(leader)
    cluster.wait_converged()
    assert cluster.read("k") == "while-down"

    follower = next(i for i in cluster.ids if i != cluster.wait_for_leader())
    cluster.pause(follower)
    assert cluster.status(follower) is None  # a stopped process answers nothing
    cluster.write("k", "while-paused")
    cluster.resume(follower)
    cluster.wait_converged()
    assert cluster.read("k") == "while-paused"
    assert cluster.statuses()[follower].applied_length >= 3


def test_partition_shapes_in_the_kernel(make_cluster: ClusterFactory) -> None:
    require_netns()
    cluster = make_cluster(5)
    assert cluster.fabric is not None

    # Isolate the leader, with the test's client still connected to it.
    leader = cluster.wait_for_leader()
    cluster.isolate(leader)
    rules = cluster.fabric.ruleset()
    assert rules.count("drop") == 8, rules  # 4 peers, both directions
    others = [i for i in cluster.ids if i != leader]
    new = cluster.wait_for_leader(among=others)
    cluster.write("k", "majority", among=others)
    status = cluster.status(leader)
    assert status is not None, "the client lost its connection to the isolated leader"
    assert status.commit_length < cluster.statuses()[new].commit_length

    # Minority / majority: the minority never serves, the majority does.
    cluster.heal()
    cluster.wait_converged()
    minority, majority = [0, 1], [2, 3, 4]
    cluster.split([minority, majority])
    cluster.wait_for_leader(among=majority)
    cluster.write("k", "split", among=majority)
    result = cluster.set(minority[0], "k", "minority", timeout=1.0)
    assert not result.ok
    assert cluster.serving_leader(minority) is None

    # A majority ring: every node sees two neighbours, still one leader and writes commit.
    cluster.ring()
    assert len(cluster.partition) == 10  # each node cut from its 2 non-neighbours, per direction
    cluster.write("k", "ring", timeout=30)

    # A bridge: two halves joined only through node 0.
    cluster.bridge(0)
    cluster.write("k", "bridge", timeout=30)

    # One-way kernel cut leader → follower: the follower hears nothing and its timer fires.
    cluster.heal()
    leader = cluster.wait_converged()
    follower = next(i for i in cluster.ids if i != leader)
    before = elections_started(cluster, follower)
    cluster.cut_one_way(leader, follower)
    wait_until(
        lambda: elections_started(cluster, follower) > before,
        10,
        "the cut-off follower to campaign",
    )

    cluster.heal()
    cluster.wait_converged(timeout=30)
    cluster.close()
    assert leftovers() == []


def test_wan_delays_slow_writes_but_not_lease_reads(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3, lease=1.0, proxied=True)
    leader = cluster.wait_for_leader()
    others = [i for i in cluster.ids if i != leader]
    one_way = 0.06
    cluster.set_wan([[leader], others], lambda a, b: one_way)
    wait_until(lambda: cluster.serving_leader() == leader, 10, "the leader to keep its lease")
    writes = [cluster.set(leader, "k", f"v{n}", timeout=3) for n in range(5)]
    reads = [cluster.get(leader, "k") for _ in range(5)]
    assert all(w.ok for w in writes) and all(r.ok for r in reads)
    # A commit needs a remote ack: at least one round trip between the regions.
    assert min(w.complete - w.invoke for w in writes) >= 2 * one_way
    # A lease read is answered locally.
    assert max(r.complete - r.invoke for r in reads) < one_way
    assert cluster.proxies is not None
    assert cluster.proxies.stats[(others[0], leader)].forwarded > 0


def test_black_holed_link_hangs_nothing(make_cluster: ClusterFactory) -> None:
    """Every message to and from the leader vanishes (proxy black hole, connections kept
    open): its peer calls must end at their deadline, it must step down when its lease runs
    out, and a client call to it must be answered within its own deadline."""
    cluster = make_cluster(3, proxied=True)
    leader = cluster.wait_for_leader()
    others = [i for i in cluster.ids if i != leader]
    cluster.drop_messages({(leader, i) for i in others} | {(i, leader) for i in others})
    cut = time.monotonic()
    cluster.wait_for_leader(among=others)

    def stepped_down() -> bool:
        status = cluster.status(leader)
        return status is not None and status.role != "leader"

    wait_until(stepped_down, 10, "the black-holed leader to step down")

    def timed_out() -> bool:
        # Its peer calls end at their deadline (0.4 s), which may come after the step-down
        # (lease span 0.294 s).
        return any("DEADLINE_EXCEEDED" in line for line in cluster.dump_lines(leader))

    wait_until(timed_out, 5, "a peer call of the black-holed leader to hit its deadline")
    assert time.monotonic() - cut < 10
    assert ev.LeaseRenewalFailed(leader) in cluster.core_events(leader)
    began = time.monotonic()
    result = cluster.get(leader, "k", timeout=2.0)
    assert not result.ok and result.code == grpc.StatusCode.FAILED_PRECONDITION.name
    assert time.monotonic() - began < 1.0

    cluster.heal()  # resets the connections that lost bytes; gRPC reconnects
    cluster.write("k", "after")
    cluster.wait_converged(timeout=30)


def test_loopback_fallback_partitions_through_proxies(make_cluster: ClusterFactory) -> None:
    """The path used where namespaces cannot be made (not root): nodes on 127.0.0.1, every
    link through a proxy, partitions as black holes."""
    cluster = make_cluster(3, network="loopback")
    assert cluster.fabric is None and cluster.proxies is not None
    assert "fallback" in cluster.mode_note
    leader = cluster.wait_for_leader()
    cluster.isolate(leader)
    others = [i for i in cluster.ids if i != leader]
    cluster.wait_for_leader(among=others)
    cluster.write("k", "v", among=others)
    assert cluster.status(leader) is not None  # the client still reaches it
    cluster.heal()
    cluster.wait_converged(timeout=30)


def test_the_controller_command() -> None:
    script = "leader\nwrite k v\nisolate leader\nstatus\nheal\nquit\n"
    result = subprocess.run(
        [sys.executable, "-m", "tests.faults.controller", "--nodes", "3"],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "leader: node" in result.stdout
    assert "ok=True" in result.stdout
    assert "healed" in result.stdout
    # The status table: a header, then one row per node.
    table = result.stdout[result.stdout.index("NODE  ADDRESS") :].splitlines()
    assert [line.split()[0] for line in table[1:4]] == ["0", "1", "2"]
