"""`raftkv snapshot restore` (raftkv/server/backup.py): a node directory for a new cluster from
a backup, loaded by the node's own storage; its refusals; and a restored node that serves the
backup's keys and refuses an old client's resumed write as session-expired."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import immutables
import pytest

from raftkv.client.cli import main
from raftkv.client.library import SyncClient
from raftkv.cluster import ClusterDescription
from raftkv.rpc import raftkv_pb2 as pb
from raftkv.rpc import raftkv_pb2_grpc
from raftkv.rpc.metadata import REFUSAL_METADATA, SESSION_EXPIRED_REFUSAL
from raftkv.rpc.options import CLIENT_CHANNEL_OPTIONS
from raftkv.server.backup import RestoreError, restore_snapshot
from raftkv.server.snapshot_file import SnapshotHeader, write_snapshot_file
from raftkv.server.storage import LOG_FILE_NAME, METADATA_FILE_NAME, NodeStorage, node_data_dir
from tests.support.one_node import OneNodeCluster

pytestmark = pytest.mark.timeout(60)

DATA = {"greeting": "hello world", "user:1": "", "naïve key": "a=b%c"}
SESSIONS = {"app.1f2e3d4c": (7, 1193, 86399000)}


@pytest.fixture
def backup_file(tmp_path: Path) -> Path:
    path = tmp_path / "backup.snap"
    header = SnapshotHeader(1200, 4, "old-cluster", 86400123)
    write_snapshot_file(path, header, DATA, SESSIONS)
    return path


def test_a_restored_directory_loads_with_the_new_cluster_id_and_no_sessions(
    backup_file: Path, tmp_path: Path
) -> None:
    restored = restore_snapshot(backup_file, tmp_path / "data", 2, "new-cluster")
    target = node_data_dir(tmp_path / "data", 2)
    assert restored.directory == target
    assert (restored.index, restored.term, restored.keys) == (1200, 4, 3)
    assert (restored.source_cluster_id, restored.dropped_sessions) == ("old-cluster", 1)
    assert sorted(p.name for p in target.iterdir()) == [
        LOG_FILE_NAME,
        METADATA_FILE_NAME,
        "snapshot.txt",
    ]
    assert (target / LOG_FILE_NAME).read_bytes() == b""
    with NodeStorage(target, 2, cluster_id="new-cluster") as storage:
        loaded = storage.load(admit_if_new=False)
    assert loaded.snapshot is not None
    header = loaded.snapshot.header
    assert (header.last_index, header.last_term, header.cluster_time) == (1200, 4, 86400123)
    assert header.cluster_id == "new-cluster" and loaded.cluster_id == "new-cluster"
    assert dict(loaded.snapshot.data) == DATA
    assert loaded.snapshot.sessions == immutables.Map()
    assert (loaded.log_offset, loaded.log_offset_term, loaded.entries) == (1200, 4, [])
    assert loaded.commit_length == 1200
    assert loaded.admitted and not loaded.created
    assert loaded.incarnation == restored.incarnation
    hard = loaded.hard_state
    assert (hard.term, hard.voted_for, hard.lease_bound, hard.drift_bound) == (4, None, 0.0, 0.0)
    # Another node restored from the same file starts from a byte-identical snapshot.
    restore_snapshot(backup_file, tmp_path / "data", 0, "new-cluster")
    other = node_data_dir(tmp_path / "data", 0)
    assert (other / "snapshot.txt").read_bytes() == (target / "snapshot.txt").read_bytes()


def test_the_old_cluster_refuses_the_restored_directory(backup_file: Path, tmp_path: Path) -> None:
    restore_snapshot(backup_file, tmp_path / "data", 0, "new-cluster")
    with (
        pytest.raises(Exception, match="new-cluster"),
        NodeStorage(node_data_dir(tmp_path / "data", 0), 0, cluster_id="old-cluster") as storage,
    ):
        storage.load()


def test_a_directory_that_holds_anything_is_refused(backup_file: Path, tmp_path: Path) -> None:
    target = node_data_dir(tmp_path / "data", 1)
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("mine\n")
    with pytest.raises(RestoreError, match="is not empty"):
        restore_snapshot(backup_file, tmp_path / "data", 1, "new-cluster")
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    # An empty directory is fine.
    (target / "notes.txt").unlink()
    restore_snapshot(backup_file, tmp_path / "data", 1, "new-cluster")
    with pytest.raises(RestoreError, match="is not empty"):
        restore_snapshot(backup_file, tmp_path / "data", 1, "new-cluster")


def test_a_corrupt_or_missing_backup_is_refused(backup_file: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.snap"
    damaged.write_bytes(backup_file.read_bytes().replace(b"hello", b"jello"))
    with pytest.raises(RestoreError, match="checksum mismatch"):
        restore_snapshot(damaged, tmp_path / "data", 0, "new-cluster")
    truncated = tmp_path / "truncated.snap"
    truncated.write_bytes(backup_file.read_bytes()[:-20])
    with pytest.raises(RestoreError, match="not a valid snapshot"):
        restore_snapshot(truncated, tmp_path / "data", 0, "new-cluster")
    with pytest.raises(RestoreError, match="does not exist"):
        restore_snapshot(tmp_path / "nothing.snap", tmp_path / "data", 0, "new-cluster")
    assert not (tmp_path / "data").exists()


def test_the_backups_own_cluster_id_is_refused(backup_file: Path, tmp_path: Path) -> None:
    with pytest.raises(RestoreError, match="needs a new cluster id"):
        restore_snapshot(backup_file, tmp_path / "data", 0, "old-cluster")
    assert not (tmp_path / "data").exists()


def write_description(path: Path, cluster_id: str, size: int = 3) -> Path:
    description = ClusterDescription.local(size, base_port=7100, data_dir=str(path.parent))
    body = json.loads(description.to_json())
    body["cluster_id"] = cluster_id
    path.write_text(json.dumps(body))
    return path


def test_the_cli_takes_the_cluster_id_from_the_description(
    backup_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    description = write_description(tmp_path / "new.json", "prod-restored")
    code = main(
        [
            "snapshot",
            "restore",
            str(backup_file),
            "--data-dir",
            str(tmp_path / "data"),
            "--node-id",
            "1",
            "--cluster",
            str(description),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    target = node_data_dir(tmp_path / "data", 1)
    assert out.startswith(f"restored {backup_file} into {target}: index 1200 term 4, 3 keys")
    assert "node 1 of cluster 'prod-restored'" in out
    assert "--initial-cluster-state new" in out
    with NodeStorage(target, 1, cluster_id="prod-restored") as storage:
        assert storage.load().cluster_id == "prod-restored"


def test_the_cli_makes_and_prints_a_cluster_id_when_given_none(
    backup_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["snapshot", "restore", str(backup_file), "--data-dir", str(tmp_path / "d")]
    assert main([*argv, "--node-id", "0"]) == 0
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if line.startswith("new cluster id ")]
    cluster_id = line.split()[3].rstrip(":")
    assert cluster_id.startswith("restored-") and len(cluster_id) == len("restored-") + 8
    assert main([*argv, "--node-id", "1", "--cluster-id", cluster_id]) == 0
    assert "new cluster id" not in capsys.readouterr().out
    snapshots = [(node_data_dir(tmp_path / "d", i) / "snapshot.txt").read_bytes() for i in (0, 1)]
    assert snapshots[0] == snapshots[1]
    assert f"clusterId {cluster_id}\n".encode() in snapshots[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give --node-id N"),
        (["--node-id", "5", "--cluster", "DESCRIPTION"], "node 5 is not in"),
        (["--node-id", "0", "--cluster-id", "old-cluster"], "needs a new cluster id"),
        (["--node-id", "0", "--cluster-id", "x", "--cluster", "DESCRIPTION"], "not allowed"),
    ],
)
def test_the_cli_refuses_missing_or_conflicting_arguments(
    backup_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    description = write_description(tmp_path / "new.json", "prod-restored")
    extra = [str(description) if arg == "DESCRIPTION" else arg for arg in extra]
    code = main(
        ["snapshot", "restore", str(backup_file), "--data-dir", str(tmp_path / "d"), *extra]
    )
    assert code in (1, 2)
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    # Without --data-dir, argparse's usage error.
    assert main(["snapshot", "restore", str(backup_file), "--node-id", "0"]) == 2


def test_a_restored_node_serves_the_backup_and_expires_old_sessions(tmp_path: Path) -> None:
    backup = tmp_path / "backup.snap"
    with (
        OneNodeCluster(tmp_path / "old", cluster_id="old-cluster") as old,
        SyncClient(old.description) as client,
    ):
        for i in range(20):
            client.set(f"key{i}", f"value {i}")
        client.delete("key3")
        saved = client.snapshot_save(backup)
        old_client, old_seq = client.client_id, 21
    restore_snapshot(backup, tmp_path / "new", 0, "new-cluster")
    with OneNodeCluster(tmp_path / "new", cluster_id="new-cluster") as new:
        with SyncClient(new.description) as client:
            state = dict(client.list_all())
            assert state == {f"key{i}": f"value {i}" for i in range(20) if i != 3}
            index = client.set("after", "restore")
            assert index > saved.index
        request = pb.SetRequest(
            key="key0", value="again", client_id=old_client, seq=old_seq + 1, resume=True
        )
        with (
            grpc.insecure_channel(new.address, options=CLIENT_CHANNEL_OPTIONS) as channel,
            pytest.raises(grpc.RpcError) as refused,
        ):
            raftkv_pb2_grpc.KeyValueStub(channel).Set(request, timeout=5)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        metadata = dict(refused.value.trailing_metadata())
        assert metadata.get(REFUSAL_METADATA) == SESSION_EXPIRED_REFUSAL
        with SyncClient(new.description) as client:
            assert client.get("key0") == "value 0"
