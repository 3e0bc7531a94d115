"""metadata.txt since issue 14: the lease and drift bounds, the incarnation, the cluster id and
admission (docs/design.md §5), and `read_node_files`, the read-only loader restore-node uses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from raftkv.core.config import MAX_LEASE_DURATION
from raftkv.core.messages import NO_OP, LogEntry, SetCommand
from raftkv.server.storage import (
    FAILPOINT_ENV,
    LOG_FILE_NAME,
    MAX_INCARNATION,
    METADATA_FILE_NAME,
    ClusterIdMismatchError,
    HardState,
    NodeStorage,
    StorageCorruption,
    StorageDataLostError,
    encode_lines,
    node_data_dir,
    read_node_files,
)

NODE_ID = 1
OLD_FORMAT = "commitLength 2\nterm 3\nvotedFor 2\nnodeId 1\n"


@pytest.fixture(autouse=True)
def _no_failpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAILPOINT_ENV, raising=False)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return node_data_dir(tmp_path, NODE_ID)


def entries(count: int) -> list[LogEntry]:
    return [LogEntry(1, SetCommand(f"k{i}", f"v{i}")) for i in range(count)]


def write_files(directory: Path, metadata: str, log: list[LogEntry]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / METADATA_FILE_NAME).write_text(metadata)
    (directory / LOG_FILE_NAME).write_bytes(b"".join(encode_lines(log, 1)))


def metadata_values(directory: Path) -> dict[str, str]:
    lines = (directory / METADATA_FILE_NAME).read_text().splitlines()
    return dict(line.split(" ", 1) for line in lines)


def test_the_bounds_round_trip_exactly(data_dir: Path) -> None:
    # 0.1 + 0.2 has no short decimal form: repr() still reads back as the same float.
    hard = HardState(term=3, voted_for=2, lease_bound=0.1 + 0.2, drift_bound=1e-05)
    with NodeStorage(data_dir, NODE_ID) as storage:
        storage.load()
        storage.save_metadata(hard, 0)
    assert metadata_values(data_dir)["leaseBound"] == "0.30000000000000004"
    assert metadata_values(data_dir)["driftBound"] == "1e-05"
    with NodeStorage(data_dir, NODE_ID) as storage:
        assert storage.load().hard_state == hard


def test_the_file_reads_as_name_value_lines_in_a_fixed_order(data_dir: Path) -> None:
    with NodeStorage(data_dir, NODE_ID, cluster_id="prod east") as storage:
        loaded = storage.load()
        storage.save_metadata(HardState(4, None, 3.5, 0.01), 0)
    assert (data_dir / METADATA_FILE_NAME).read_text() == (
        "commitLength 0\nterm 4\nvotedFor None\nnodeId 1\nleaseBound 3.5\ndriftBound 0.01\n"
        f"incarnation {loaded.incarnation:016x}\nclusterId prod%20east\nadmitted true\n"
    )


def test_an_old_file_loads_and_gets_an_incarnation_and_the_cluster_id(data_dir: Path) -> None:
    write_files(data_dir, OLD_FORMAT, entries(2))
    with NodeStorage(data_dir, NODE_ID, cluster_id="c1") as storage:
        loaded = storage.load()
    assert loaded.hard_state == HardState(3, 2, 0.0, 0.0)
    assert loaded.commit_length == 2 and loaded.admitted and not loaded.created
    assert loaded.cluster_id == "c1" and 0 < loaded.incarnation <= MAX_INCARNATION
    values = metadata_values(data_dir)
    assert values["incarnation"] == f"{loaded.incarnation:016x}"
    assert values["clusterId"] == "c1" and values["commitLength"] == "2"


def test_the_incarnation_never_changes_across_restarts_and_saves(data_dir: Path) -> None:
    seen = set()
    for term in range(1, 4):
        with NodeStorage(data_dir, NODE_ID, cluster_id="c1") as storage:
            seen.add(storage.load().incarnation)
            storage.save_metadata(HardState(term, None), 0)
            seen.add(storage.incarnation)
    assert len(seen) == 1
    # A new directory gets another one.
    with NodeStorage(data_dir.with_name("logs_node_9"), 9) as other:
        assert other.load().incarnation not in seen


def test_a_directory_of_another_cluster_is_refused_untouched(data_dir: Path) -> None:
    with NodeStorage(data_dir, NODE_ID, cluster_id="blue") as storage:
        storage.load()
    before = (data_dir / METADATA_FILE_NAME).read_bytes()
    with (
        NodeStorage(data_dir, NODE_ID, cluster_id="green") as storage,
        pytest.raises(ClusterIdMismatchError) as info,
    ):
        storage.load()
    message = str(info.value)
    assert "\n" not in message
    assert str(data_dir / METADATA_FILE_NAME) in message
    assert "'blue'" in message and "'green'" in message
    assert (data_dir / METADATA_FILE_NAME).read_bytes() == before
    # Opened without a cluster id (a tool), the directory loads as it is.
    with NodeStorage(data_dir, NODE_ID) as storage:
        assert storage.load().cluster_id == "blue"


def test_a_node_started_empty_under_an_existing_cluster_stays_unadmitted(
    data_dir: Path,
) -> None:
    with NodeStorage(data_dir, NODE_ID, cluster_id="c1") as storage:
        first = storage.load(admit_if_new=False)
        assert not first.admitted and first.created
        storage.save_metadata(HardState(5, None, 0.3, 0.01), 0)  # a term it learnt
    assert metadata_values(data_dir)["admitted"] == "false"
    # Started again, even as for a new cluster: the file says it was never admitted.
    with NodeStorage(data_dir, NODE_ID, cluster_id="c1") as storage:
        again = storage.load(admit_if_new=True)
        assert not again.admitted and not again.created
        assert again.incarnation == first.incarnation
        incarnation = storage.admit(HardState(7, None, 0.3, 0.01), 0)
    assert incarnation != first.incarnation
    with NodeStorage(data_dir, NODE_ID, cluster_id="c1") as storage:
        admitted = storage.load()
    assert admitted.admitted and admitted.incarnation == incarnation
    assert admitted.hard_state.term == 7


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("leaseBound nan", "not a decimal number"),
        ("leaseBound inf", "not a decimal number"),
        ("leaseBound -1.0", "not a decimal number"),
        ("leaseBound 1_0", "not a decimal number"),
        ("leaseBound  1.0", "not a decimal number"),
        ("leaseBound 1e999", "not a finite number"),
        (f"leaseBound {MAX_LEASE_DURATION + 1}", "exceeds the limit"),
        ("driftBound 0.5", "exceeds the limit"),
        ("driftBound 0x1p-3", "not a decimal number"),
        ("incarnation 5F0C9A1E33D2B7A4", "not 16 lowercase hex digits"),
        ("incarnation 5f0c9a1e33d2b7", "not 16 lowercase hex digits"),
        ("incarnation 0000000000000000", "outside"),
        ("incarnation 8000000000000000", "outside"),
        ("admitted yes", "neither true nor false"),
        ("clusterId a%zz", "bad clusterId"),
        ("leaseBound 1.0\nleaseBound 1.0", "appears twice"),
        ("epoch 3", "unknown name"),
    ],
)
def test_malformed_new_lines_are_corruption(data_dir: Path, line: str, problem: str) -> None:
    write_files(data_dir, OLD_FORMAT + line + "\n", entries(2))
    with NodeStorage(data_dir, NODE_ID) as storage, pytest.raises(StorageCorruption) as info:
        storage.load()
    assert problem in str(info.value)
    assert str(info.value).startswith(f"corrupt data in {data_dir / METADATA_FILE_NAME}, line")


@pytest.mark.parametrize(
    "hard_state",
    [
        HardState(1, None, math.nan, 0.0),
        HardState(1, None, math.inf, 0.0),
        HardState(1, None, -0.5, 0.0),
        HardState(1, None, MAX_LEASE_DURATION * 2, 0.0),
        HardState(1, None, 0.3, 0.5),
    ],
)
def test_bounds_that_could_not_be_read_back_are_never_written(
    data_dir: Path, hard_state: HardState
) -> None:
    with NodeStorage(data_dir, NODE_ID) as storage:
        storage.load()
        before = (data_dir / METADATA_FILE_NAME).read_bytes()
        with pytest.raises(ValueError, match="Bound"):
            storage.save_metadata(hard_state, 0)
    assert (data_dir / METADATA_FILE_NAME).read_bytes() == before


def test_read_node_files_reads_a_running_nodes_directory_without_touching_it(
    data_dir: Path,
) -> None:
    with NodeStorage(data_dir, NODE_ID, cluster_id="c1") as storage:
        storage.load()
        storage.append_entries(1, [*entries(3), LogEntry(2, NO_OP)])
        storage.save_metadata(HardState(2, 1, 0.3, 0.01), 3)
        # The node is mid-append: half a line at the end.
        with (data_dir / LOG_FILE_NAME).open("ab") as log:
            log.write(b"SET half")
        before = {p.name: p.read_bytes() for p in data_dir.iterdir()}
        files = read_node_files(data_dir)  # while the storage holds the directory's lock
        assert {p.name: p.read_bytes() for p in data_dir.iterdir()} == before
    assert files.entries == [*entries(3), LogEntry(2, NO_OP)]
    assert files.dropped_torn_line
    assert files.metadata is not None
    assert files.metadata.hard_state == HardState(2, 1, 0.3, 0.01)
    assert files.metadata.cluster_id == "c1" and files.metadata.node_id == NODE_ID


def test_read_node_files_refuses_damaged_directories(data_dir: Path) -> None:
    write_files(data_dir, OLD_FORMAT, entries(3))
    data = (data_dir / LOG_FILE_NAME).read_bytes()
    (data_dir / LOG_FILE_NAME).write_bytes(data.replace(b"k1", b"kX", 1))
    with pytest.raises(StorageCorruption, match="line 2"):
        read_node_files(data_dir)
    write_files(data_dir, "commitLength 5\nterm 3\nvotedFor 2\nnodeId 1\n", entries(3))
    with pytest.raises(StorageDataLostError, match="commitLength 5"):
        read_node_files(data_dir)
    (data_dir / METADATA_FILE_NAME).unlink()
    with pytest.raises(StorageDataLostError, match=r"metadata\.txt is missing"):
        read_node_files(data_dir)
