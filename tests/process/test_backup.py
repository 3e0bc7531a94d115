"""Backup and restore on real nodes: the README's two runbooks, command by command.

  * The whole cluster is lost: `raftkv snapshot save` from the running cluster, then `raftkv
    snapshot restore` into three empty data directories under a new cluster description (a new
    cluster id), and the new cluster serves exactly the backup's data; an old client's resumed
    write is refused as session-expired.
  * One node is lost: its empty directory keeps it out (--initial-cluster-state existing) until
    `raftkv restore-node` copies the leader's files; it catches up (by InstallSnapshot, the
    cluster having compacted past what it got) and, made leader, serves the same keys.

Each test prints the commands' output (run with -s to see it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from raftkv.rpc import raftkv_pb2 as pb
from raftkv.rpc.metadata import REFUSAL_METADATA, SESSION_EXPIRED_REFUSAL
from raftkv.textformat import unescape_field
from tests.process.conftest import ClusterFactory
from tests.process.test_snapshots import SMALL_SNAPSHOTS, wait_caught_up, wait_for_snapshot
from tests.support.processes import LocalCluster, run_module

pytestmark = pytest.mark.timeout(180)


def write_keys(cluster: LocalCluster, count: int, prefix: str) -> dict[str, str]:
    written = {}
    for i in range(count):
        key, value = f"{prefix}{i:03}", f"value {i} of {prefix}"
        cluster.write(key, value)
        written[key] = value
    return written


def listed(cluster: LocalCluster) -> dict[str, str]:
    """`raftkv ls` of the whole cluster: every key and value, unescaped."""
    result = run_module("raftkv", "--cluster", str(cluster.description_path), "ls")
    assert result.returncode == 0, result.stderr
    pairs = (line.split(" ") for line in result.stdout.splitlines())
    return {unescape_field(key): unescape_field(value) for key, value in pairs}


def test_a_lost_cluster_is_rebuilt_from_a_backup_under_a_new_cluster_id(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    old = make_cluster(3).start()
    written = write_keys(old, 30, "k")
    old.write("spaced key", "a b c")
    written["spaced key"] = "a b c"
    backup = tmp_path / "backup.snap"
    save = run_module(
        "raftkv", "--cluster", str(old.description_path), "snapshot", "save", str(backup)
    )
    assert save.returncode == 0, save.stderr
    assert save.stdout.startswith("saved index "), save.stdout
    print(f"\n$ raftkv snapshot save {backup.name}\n{save.stdout.strip()}")
    # Acknowledged after the save started: not in the backup.
    old.write("after-backup", "x")
    old_client, old_seq = old.client_id, old._seq
    old.close()  # every node and every disk of the old cluster is gone

    new = make_cluster(3)
    assert new.description.cluster_id != old.description.cluster_id
    for node_id in new.ids:
        restore = run_module(
            "raftkv",
            "snapshot",
            "restore",
            str(backup),
            "--data-dir",
            str(new.data_root),
            "--node-id",
            str(node_id),
            "--cluster",
            str(new.description_path),
        )
        assert restore.returncode == 0, restore.stderr
        print(f"$ raftkv snapshot restore ... --node-id {node_id}\n{restore.stdout.strip()}")
    snapshots = {(new.node_dir(i) / "snapshot.txt").read_bytes() for i in new.ids}
    assert len(snapshots) == 1  # every node starts from the same state
    new.start()
    leader = new.leader(timeout=20)
    assert listed(new) == written
    assert new.read("after-backup") is None

    # A client of the old cluster resuming its session: refused, not applied.
    request = pb.SetRequest(
        key="k000", value="resumed", client_id=old_client, seq=old_seq + 1, resume=True
    )
    with pytest.raises(grpc.RpcError) as refused:
        new.kv(leader).Set(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (REFUSAL_METADATA, SESSION_EXPIRED_REFUSAL) in tuple(refused.value.trailing_metadata())
    assert new.read("k000") == written["k000"]
    # New writes go on from the backup's index.
    new.write("after-restore", "y")
    assert new.read("after-restore") == "y"
    status = new.status(leader)
    assert status is not None
    print(
        f"restored cluster {new.description.cluster_id!r}: leader {leader}, term {status.term}, "
        f"commit {status.commit_length}, {len(written)} keys read back"
    )


def test_a_lost_node_is_restored_from_the_leader_and_serves_the_same_keys(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    cluster = make_cluster(3, extra_args=SMALL_SNAPSHOTS).start()
    written = write_keys(cluster, 120, "k")
    leader = cluster.leader()
    victim = next(n for n in cluster.ids if n != leader)
    # The disk is lost; a replacement comes up empty under the existing cluster, and stays out.
    cluster.kill_node(victim)
    shutil.rmtree(cluster.node_dir(victim))
    cluster.start_node(victim, initial_cluster_state="existing")
    cluster.wait_for(lambda: cluster.dump_has(victim, "will not vote"), 10, "the refusal")
    cluster.stop_node(victim)
    leader = cluster.leader()
    restore = cluster.restore_node(victim, leader, cwd=tmp_path)
    assert restore.returncode == 0, restore.stderr
    print(f"\n$ raftkv restore-node ...\n{restore.stdout.strip()}")
    # The cluster moves on past the copy (more snapshots, compactions): only the leader's
    # snapshot can catch the node up.
    written |= write_keys(cluster, 120, "later")
    wait_for_snapshot(cluster, cluster.leader(), 200)
    cluster.start_node(victim)
    wait_caught_up(cluster, victim, timeout=30)
    transfer = run_module(
        "raftkv",
        "--cluster",
        str(cluster.description_path),
        "transfer-leader",
        "--to",
        str(victim),
    )
    assert transfer.returncode == 0, transfer.stderr
    print(f"$ raftkv transfer-leader --to {victim}\n{transfer.stdout.strip()}")
    cluster.wait_for(lambda: cluster.get(victim, "k000", timeout=0.5), 10, "a read at the node")
    for key, value in written.items():
        assert cluster.get(victim, key).value == value, key
    installed = cluster.dump_has(victim, "installed the leader's snapshot")
    print(f"node {victim} serves all {len(written)} keys (caught up by a snapshot: {installed})")
