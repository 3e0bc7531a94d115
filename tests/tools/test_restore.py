"""`raftkv restore-node` (raftkv_tools.restore): a lost node's directory rebuilt from the
leader's files (docs/design.md §5)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import immutables
import pytest

from raftkv.client.commands import GlobalOptions
from raftkv.cluster import ClusterDescription, NodeAddress
from raftkv.core.config import profile
from raftkv.core.messages import NO_OP, LogEntry, SetCommand
from raftkv.core.state_machine import SnapshotImage
from raftkv.server.snapshot_file import SnapshotHeader, write_snapshot_file
from raftkv.server.storage import (
    FAILPOINT_ENV,
    LOG_FILE_NAME,
    METADATA_FILE_NAME,
    SNAPSHOT_FILE_NAME,
    HardState,
    NodeStorage,
    node_data_dir,
    read_node_files,
)
from raftkv_tools import commands, restore

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRIES = [LogEntry(1, NO_OP), LogEntry(1, SetCommand("a", "1", "c", 1)), LogEntry(4, NO_OP)]
LEADER_STATE = HardState(term=4, voted_for=0, lease_bound=0.3, drift_bound=0.02)


@pytest.fixture(autouse=True)
def _no_failpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAILPOINT_ENV, raising=False)


@pytest.fixture
def leader_dir(tmp_path: Path) -> Path:
    """Node 0's directory, as a leader of term 4 leaves it, with half a line being appended."""
    directory = node_data_dir(tmp_path / "leader", 0)
    with NodeStorage(directory, 0, cluster_id="c1") as storage:
        storage.load()
        storage.append_entries(1, ENTRIES)
        storage.save_metadata(LEADER_STATE, 2)
    with (directory / LOG_FILE_NAME).open("ab") as log:
        log.write(b"SET b 2 4 client=c se")
    return directory


def test_the_restored_node_has_the_leaders_log_and_a_later_term(
    tmp_path: Path, leader_dir: Path
) -> None:
    source_before = {p.name: p.read_bytes() for p in leader_dir.iterdir()}
    root = tmp_path / "data"
    restored = restore.restore_node(leader_dir, root, 2, lease=3.5)
    assert {p.name: p.read_bytes() for p in leader_dir.iterdir()} == source_before
    assert restored.entries == 3 and restored.dropped_torn_line
    files = read_node_files(node_data_dir(root, 2))
    assert files.entries == ENTRIES and not files.dropped_torn_line
    metadata = files.metadata
    assert metadata is not None
    # Term + 1 and no vote; the longer of the leader's recorded and the configured lease.
    assert metadata.hard_state == HardState(5, None, 3.5, 0.02)
    assert metadata.commit_length == 0 and metadata.node_id == 2
    assert metadata.admitted and metadata.cluster_id == "c1"
    source = read_node_files(leader_dir).metadata
    assert source is not None and metadata.incarnation not in (None, source.incarnation)
    assert metadata.incarnation == restored.incarnation
    # The node itself loads it, for its cluster.
    with NodeStorage(node_data_dir(root, 2), 2, cluster_id="c1") as storage:
        loaded = storage.load()
    assert loaded.admitted and loaded.entries == ENTRIES and loaded.hard_state.term == 5


def test_a_node_that_is_not_admitted_is_restored_under_a_new_incarnation(
    tmp_path: Path, leader_dir: Path
) -> None:
    root = tmp_path / "data"
    with NodeStorage(node_data_dir(root, 2), 2, cluster_id="c1") as storage:
        waiting = storage.load(admit_if_new=False)
    restored = restore.restore_node(leader_dir, root, 2, lease=0.1)
    assert restored.incarnation != waiting.incarnation
    assert restored.hard_state.lease_bound == 0.3  # the leader's recorded one is longer


def test_an_admitted_nodes_directory_is_refused_untouched(tmp_path: Path, leader_dir: Path) -> None:
    root = tmp_path / "data"
    with NodeStorage(node_data_dir(root, 2), 2, cluster_id="c1") as storage:
        storage.load()
        storage.append_entries(1, ENTRIES[:1])
    before = {p.name: p.read_bytes() for p in node_data_dir(root, 2).iterdir()}
    with pytest.raises(restore.RestoreError, match="already holds node 2's data"):
        restore.restore_node(leader_dir, root, 2, lease=0.3)
    assert {p.name: p.read_bytes() for p in node_data_dir(root, 2).iterdir()} == before


def test_a_running_target_node_is_refused(tmp_path: Path, leader_dir: Path) -> None:
    root = tmp_path / "data"
    with NodeStorage(node_data_dir(root, 2), 2, cluster_id="c1") as storage:
        storage.load(admit_if_new=False)
        with pytest.raises(restore.RestoreError, match=r"node 2 is running.*stop it first"):
            restore.restore_node(leader_dir, root, 2, lease=0.3)


def test_a_target_of_another_cluster_is_refused(tmp_path: Path, leader_dir: Path) -> None:
    root = tmp_path / "data"
    with NodeStorage(node_data_dir(root, 2), 2, cluster_id="other") as storage:
        storage.load(admit_if_new=False)
    with pytest.raises(restore.RestoreError, match="records clusterId 'other'"):
        restore.restore_node(leader_dir, root, 2, lease=0.3)


def test_sources_that_are_no_leaders_data_are_refused(tmp_path: Path, leader_dir: Path) -> None:
    root = tmp_path / "data"
    with pytest.raises(restore.RestoreError, match=r"holds no logs\.txt"):
        restore.restore_node(tmp_path / "nowhere", root, 2, lease=0.3)
    empty = node_data_dir(tmp_path / "empty", 1)
    with NodeStorage(empty, 1) as storage:
        storage.load()
    with pytest.raises(restore.RestoreError, match="holds no log entries"):
        restore.restore_node(empty, root, 2, lease=0.3)
    waiting = node_data_dir(tmp_path / "waiting", 1)
    with NodeStorage(waiting, 1) as storage:
        storage.load(admit_if_new=False)
    with pytest.raises(restore.RestoreError, match="not admitted itself"):
        restore.restore_node(waiting, root, 2, lease=0.3)
    (leader_dir / METADATA_FILE_NAME).unlink()
    with pytest.raises(restore.RestoreError, match=r"metadata\.txt is missing"):
        restore.restore_node(leader_dir, root, 2, lease=0.3)
    assert not node_data_dir(root, 2).exists()


def test_the_command_takes_the_lease_from_the_cluster_description(
    tmp_path: Path, leader_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    description = tmp_path / "cluster.json"
    nodes = tuple(NodeAddress(i, f"127.0.0.1:{50050 + i}") for i in range(3))
    ClusterDescription(nodes, name="c1", profile="seed").save(description)
    root = tmp_path / "data"
    argv = ["--from", str(leader_dir), "--into", str(root), "--id", "1"]
    assert commands.RESTORE_NODE.run(argv, GlobalOptions(cluster=description)) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"restored node 1 into {node_data_dir(root, 1)}: 3 log entries")
    metadata = read_node_files(node_data_dir(root, 1)).metadata
    assert metadata is not None
    assert metadata.hard_state.lease_bound == profile("seed").lease_duration
    # A second run finds the node's data and changes nothing.
    assert commands.RESTORE_NODE.run(argv, GlobalOptions(cluster=description)) == 1
    assert "already holds node 1's data" in capsys.readouterr().err


def test_the_command_needs_a_lease(
    tmp_path: Path,
    leader_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(restore.CLUSTER_ENVIRONMENT_VARIABLE, raising=False)
    argv = ["--from", str(leader_dir), "--into", str(tmp_path / "data"), "--id", "1"]
    assert restore.main(argv) == 2
    assert "give --lease S" in capsys.readouterr().err
    assert restore.main([*argv, "--lease", "inf"]) == 2
    assert restore.main([*argv, "--lease", "0.5"]) == 0


def test_raftkv_tools_registers_the_command() -> None:
    project = tomllib.loads((REPO_ROOT / "tools" / "pyproject.toml").read_text())
    points = project["project"]["entry-points"]["raftkv.commands"]
    assert points["restore-node"] == "raftkv_tools.commands:RESTORE_NODE"
    assert commands.RESTORE_NODE.module == "raftkv_tools.restore"


def _leader_with_snapshot(tmp_path: Path, compact_to: int) -> Path:
    """Node 0's directory after a snapshot at index 3 and a compaction to `compact_to`, with
    entries 4 and 5 after it."""
    directory = node_data_dir(tmp_path / "leader", 0)
    with NodeStorage(directory, 0, cluster_id="c1") as storage:
        storage.load()
        storage.append_entries(1, [*ENTRIES, LogEntry(4, NO_OP), LogEntry(5, NO_OP)])
        storage.save_metadata(LEADER_STATE, 4)
        storage.save_snapshot(SNAPSHOT)
        storage.compact(compact_to)
    return directory


SNAPSHOT = SnapshotImage(
    3, 4, immutables.Map({"a": "1"}), immutables.Map({"c": (1, 2, 0)}), cluster_time=9
)


@pytest.mark.parametrize("compact_to", [1, 2, 3])
def test_the_leaders_snapshot_is_copied_with_the_entries_after_it(
    tmp_path: Path, compact_to: int
) -> None:
    leader_dir = _leader_with_snapshot(tmp_path, compact_to)
    root = tmp_path / "data"
    restored = restore.restore_node(leader_dir, root, 2, lease=0.3)
    assert (restored.snapshot_index, restored.entries) == (3, 2)
    assert "the snapshot up to index 3 and 2 log entries from" in restored.describe(2, leader_dir)
    target = node_data_dir(root, 2)
    assert (target / SNAPSHOT_FILE_NAME).read_bytes() == (
        leader_dir / SNAPSHOT_FILE_NAME
    ).read_bytes()
    with NodeStorage(target, 2, cluster_id="c1") as storage:
        loaded = storage.load()
    assert loaded.admitted and loaded.snapshot is not None
    assert loaded.snapshot.image() == SNAPSHOT
    assert (loaded.log_offset, loaded.log_offset_term) == (3, 4)
    assert loaded.entries == [LogEntry(4, NO_OP), LogEntry(5, NO_OP)]


def test_a_log_that_disagrees_with_the_snapshot_is_left_out(tmp_path: Path) -> None:
    leader_dir = _leader_with_snapshot(tmp_path, 1)
    # The snapshot now ends at index 3 of term 5, which the log's line 3 (term 4) contradicts.
    header = SnapshotHeader(3, 5, "c1", 0)
    write_snapshot_file(leader_dir / SNAPSHOT_FILE_NAME, header, immutables.Map(), immutables.Map())
    restored = restore.restore_node(leader_dir, tmp_path / "data", 2, lease=0.3)
    assert (restored.snapshot_index, restored.entries) == (3, 0)
    files = read_node_files(node_data_dir(tmp_path / "data", 2))
    assert files.entries == [] and (files.log_offset, files.log_offset_term) == (3, 5)


def test_a_restore_interrupted_after_the_snapshot_runs_again(tmp_path: Path) -> None:
    leader_dir = _leader_with_snapshot(tmp_path, 3)
    root = tmp_path / "data"
    with NodeStorage(node_data_dir(root, 2), 2, cluster_id="c1") as storage:
        storage.load(admit_if_new=False)
        storage.save_snapshot(SNAPSHOT)  # where a crash of the first run could stop
    restored = restore.restore_node(leader_dir, root, 2, lease=0.3)
    assert (restored.snapshot_index, restored.entries) == (3, 2)
    assert read_node_files(node_data_dir(root, 2)).entries == [
        LogEntry(4, NO_OP),
        LogEntry(5, NO_OP),
    ]


def test_a_target_with_a_newer_snapshot_than_the_source_is_refused(tmp_path: Path) -> None:
    leader_dir = _leader_with_snapshot(tmp_path, 3)
    root = tmp_path / "data"
    with NodeStorage(node_data_dir(root, 2), 2, cluster_id="c1") as storage:
        storage.load(admit_if_new=False)
        storage.save_snapshot(SnapshotImage(9, 5, immutables.Map(), immutables.Map()))
    with pytest.raises(restore.RestoreError, match=r"snapshot\.txt up to index 9, beyond the"):
        restore.restore_node(leader_dir, root, 2, lease=0.3)
