"""Snapshots, log compaction and InstallSnapshot on real processes (docs/design.md §5).

Nodes run with a tiny snapshot policy (`--snapshot-entries 50 --trailing-entries 10`), so a few
hundred SETs take several snapshots and compactions; a follower that was down meanwhile can only
be caught up by the leader's snapshot. Crashes at the storage's failpoints, and a kill -9 in the
middle of a transfer, must lose nothing that was acknowledged.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from raftkv.core.messages import SetCommand
from raftkv.server.snapshot_file import read_snapshot_file
from raftkv.server.storage import NodeStorage
from tests.process.conftest import ClusterFactory
from tests.support.processes import LocalCluster

pytestmark = pytest.mark.timeout(240)

SMALL_SNAPSHOTS = ["--snapshot-entries", "50", "--trailing-entries", "10"]
INSTALLED = "installed the leader's snapshot"


def write_many(cluster: LocalCluster, count: int, prefix: str, value: str = "") -> dict[str, str]:
    """`count` acknowledged SETs, sent to the leader directly (cluster.write's leader search per
    SET would dominate); a refused or failed SET is retried through cluster.write."""
    written: dict[str, str] = {}
    leader = cluster.leader()
    for i in range(count):
        key, val = f"{prefix}{i}", value or f"value {i} of {prefix}"
        try:
            cluster.set(leader, key, val)
        except grpc.RpcError:
            cluster.write(key, val)
            leader = cluster.leader()
        written[key] = val
    return written


def stored_state(cluster: LocalCluster, node_id: int) -> dict[str, str]:
    """The key-value state node `node_id`'s files hold (snapshot, then the log after it), read
    with the node stopped."""
    storage = NodeStorage(cluster.node_dir(node_id), node_id)
    try:
        loaded = storage.load()
    finally:
        storage.close()
    state = dict(loaded.snapshot.data) if loaded.snapshot is not None else {}
    first = loaded.log_offset + 1
    commit = loaded.commit_length
    for index, entry in enumerate(loaded.entries, start=first):
        if index <= commit and isinstance(entry.command, SetCommand):
            state[entry.command.key] = entry.command.value
    return state


def assert_readable(cluster: LocalCluster, written: dict[str, str]) -> None:
    for key, value in written.items():
        assert cluster.read(key) == value, key


def wait_for_snapshot(
    cluster: LocalCluster, node_id: int, at_least: int, timeout: float = 30
) -> int:
    def snapshotted() -> int | None:
        status = cluster.status(node_id)
        if status is None or status.snapshot_index < at_least:
            return None
        return status.snapshot_index

    return cluster.wait_for(snapshotted, timeout, f"node {node_id} to snapshot past {at_least}")


def wait_caught_up(cluster: LocalCluster, node_id: int, timeout: float = 30) -> None:
    leader = cluster.leader()

    def caught_up() -> bool:
        mine, theirs = cluster.status(node_id), cluster.status(leader)
        return (
            mine is not None and theirs is not None and mine.commit_length >= theirs.commit_length
        )

    cluster.wait_for(caught_up, timeout, f"node {node_id} to catch up with leader {leader}")


def test_every_node_snapshots_compacts_and_restarts_from_its_snapshot(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(3, extra_args=SMALL_SNAPSHOTS).start()
    written = write_many(cluster, 500, "k")
    leader = cluster.leader()
    for node in cluster.ids:
        wait_caught_up(cluster, node)
        wait_for_snapshot(cluster, node, 400)
    sizes = {}
    for node in cluster.ids:
        directory = cluster.node_dir(node)
        snapshot = read_snapshot_file(directory / "snapshot.txt")
        assert snapshot is not None and snapshot.header.last_index >= 400
        lines = cluster.log_lines(node)
        sizes[node] = (len(lines), (directory / "logs.txt").stat().st_size)
        # 500 SETs and a NO-OP: what is left is the trailing entries and the tail after the
        # last snapshot (fewer than 50), not the whole log.
        assert len(lines) < 120, (node, len(lines))
        assert cluster.log_first_index(node) > 300
    print(f"logs.txt after 500 SETs (lines, bytes) per node: {sizes}")
    follower = next(n for n in cluster.ids if n != leader)
    cluster.stop_node(follower)
    assert {k: v for k, v in stored_state(cluster, follower).items() if k in written} == written
    cluster.start_node(follower)
    cluster.wait_for(
        lambda: cluster.dump_has(follower, "started from its snapshot at index"),
        10,
        "the start-up from the snapshot",
    )
    wait_caught_up(cluster, follower)
    cluster.stop_node(leader)
    # The restarted follower (or the other one) leads now and serves every value.
    assert_readable(cluster, written)


def test_a_follower_that_was_down_catches_up_through_install_snapshot(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(3, extra_args=SMALL_SNAPSHOTS).start()
    written = write_many(cluster, 20, "before")
    leader = cluster.leader()
    victim = next(n for n in cluster.ids if n != leader)
    cluster.stop_node(victim)
    written |= write_many(cluster, 500, "k")
    leader = cluster.leader()
    wait_for_snapshot(cluster, leader, 400)
    started = time.monotonic()
    cluster.start_node(victim)
    cluster.wait_for(lambda: cluster.dump_has(victim, INSTALLED), 30, "the install")
    wait_caught_up(cluster, victim)
    print(f"install and catch-up took {time.monotonic() - started:.2f} s after the start")
    assert cluster.dump_has(leader, "sent its snapshot at index") or any(
        cluster.dump_has(n, "sent its snapshot") for n in cluster.ids
    )
    written |= write_many(cluster, 5, "after")
    wait_caught_up(cluster, victim)
    for node in cluster.running_ids():
        cluster.stop_node(node)
    states = {node: stored_state(cluster, node) for node in cluster.ids}
    assert states[victim] == states[leader]
    assert {k: v for k, v in states[victim].items() if k in written} == written


@pytest.mark.parametrize(
    "failpoint", ["after-snapshot-write-before-rename", "during-log-compaction"]
)
def test_a_node_killed_while_it_snapshots_or_compacts_loses_nothing(
    make_cluster: ClusterFactory, failpoint: str
) -> None:
    cluster = make_cluster(3, extra_args=SMALL_SNAPSHOTS, allow_unsafe=True)
    survivors, victim = cluster.ids[:2], cluster.ids[2]
    cluster.start(survivors)
    written = write_many(cluster, 20, "before")
    cluster.env["RAFTKV_FAILPOINT"] = failpoint
    cluster.start_node(victim)
    del cluster.env["RAFTKV_FAILPOINT"]
    written |= write_many(cluster, 200, "k")
    process = cluster.nodes[victim].process
    assert process is not None
    assert process.wait(30) == 137, f"{failpoint} did not fire"
    directory = cluster.node_dir(victim)
    leftovers = {p.name for p in directory.iterdir() if p.name.endswith((".tmp", ".recv"))}
    cluster.start_node(victim)
    written |= write_many(cluster, 60, "after")
    wait_caught_up(cluster, victim)
    cluster.stop_node(cluster.leader())
    assert_readable(cluster, written)
    for node in cluster.running_ids():
        cluster.stop_node(node)
    # Checked once every node has stopped: a running node may be writing a new snapshot.txt.tmp
    # (paced, a snapshot write takes a while on a busy node), which a clean stop removes.
    assert not any((directory / name).exists() for name in leftovers if name != "logs.txt.tmp")
    state = stored_state(cluster, victim)
    assert {k: v for k, v in state.items() if k in written} == written


def test_a_follower_killed_while_it_receives_a_snapshot_installs_it_after_a_restart(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(3, extra_args=SMALL_SNAPSHOTS).start()
    leader = cluster.leader()
    victim = next(n for n in cluster.ids if n != leader)
    cluster.stop_node(victim)
    # ~6 MiB of values: the transfer takes a couple of dozen chunks.
    big = "x" * 100_000
    written = write_many(cluster, 60, "big", big)
    written |= write_many(cluster, 100, "k")
    leader = cluster.leader()
    wait_for_snapshot(cluster, leader, 100)
    cluster.start_node(victim)
    recv = cluster.node_dir(victim) / "snapshot.txt.recv"
    cluster.wait_for(lambda: recv.exists() and recv.stat().st_size > 0, 30, "the transfer to begin")
    cluster.kill_node(victim)
    killed_mid_transfer = not cluster.dump_has(victim, INSTALLED)
    cluster.start_node(victim)
    cluster.wait_for(lambda: cluster.dump_has(victim, INSTALLED), 60, "the install")
    wait_caught_up(cluster, victim)
    assert not recv.exists()
    print(f"killed in the middle of the transfer: {killed_mid_transfer}")
    for node in cluster.running_ids():
        cluster.stop_node(node)
    state = stored_state(cluster, victim)
    assert {k: v for k, v in state.items() if k in written} == written
    assert state == stored_state(cluster, leader)


def test_a_wiped_follower_is_restored_and_then_caught_up_from_a_snapshot(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    cluster = make_cluster(3, extra_args=SMALL_SNAPSHOTS).start()
    written = write_many(cluster, 200, "k")
    leader = cluster.leader()
    victim = next(n for n in cluster.ids if n != leader)
    cluster.kill_node(victim)
    # The disk is lost; the node comes back empty under the existing cluster, and stays out.
    for path in cluster.node_dir(victim).iterdir():
        path.unlink()
    cluster.start_node(victim, initial_cluster_state="existing")
    cluster.wait_for(lambda: cluster.dump_has(victim, "will not vote"), 10, "the refusal")
    cluster.stop_node(victim)
    written |= write_many(cluster, 100, "while-out")
    leader = cluster.leader()
    restore = cluster.restore_node(victim, leader, cwd=tmp_path)
    assert restore.returncode == 0, restore.stderr
    # While it is down, the cluster moves on past more snapshots and compactions: the
    # restored copy is behind the leader's compaction point, so only a snapshot catches it up.
    written |= write_many(cluster, 300, "after")
    leader = cluster.leader()
    wait_for_snapshot(cluster, leader, 550)
    cluster.start_node(victim)
    cluster.wait_for(lambda: cluster.dump_has(victim, INSTALLED), 30, "the install")
    wait_caught_up(cluster, victim, timeout=30)
    for node in cluster.running_ids():
        cluster.stop_node(node)
    state = stored_state(cluster, victim)
    assert {k: v for k, v in state.items() if k in written} == written
