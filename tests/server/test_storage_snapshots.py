"""NodeStorage with snapshots: snapshot.txt beside a log compacted to a sentinel line, log
resets, the checks at load, the temporary files and the crash points (docs/design.md §5)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import immutables
import pytest

from raftkv.core.messages import NO_OP, LogEntry, Member, Membership, SetCommand
from raftkv.core.state_machine import SnapshotImage
from raftkv.server import snapshot_file
from raftkv.server import storage as storage_module
from raftkv.server.snapshot_file import (
    SessionRecord,
    SnapshotHeader,
    SnapshotInfo,
    read_snapshot_file,
    write_snapshot_file,
)
from raftkv.server.storage import (
    FAILPOINT_ENV,
    FAILPOINT_EXIT_CODE,
    FAILPOINT_LOG_COMPACTION,
    FAILPOINT_SNAPSHOT_RENAME,
    LOG_FILE_NAME,
    METADATA_FILE_NAME,
    SNAPSHOT_FILE_NAME,
    ClusterIdMismatchError,
    HardState,
    NodeStorage,
    SnapshotWriteStoppedError,
    StorageCorruption,
    StorageDataLostError,
    StorageError,
    encode_lines,
    node_data_dir,
    read_node_files,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_ID = 1
CLUSTER = "c1"
HARD_STATE = HardState(term=5, voted_for=2)


@pytest.fixture(autouse=True)
def _no_failpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    # A failpoint leaking in from the developer's shell would kill the test process.
    monkeypatch.delenv(FAILPOINT_ENV, raising=False)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return node_data_dir(tmp_path, NODE_ID)


def entry(index: int) -> LogEntry:
    """Entry `index` of the test log: its term is (index + 1) // 2, so terms tell entries apart."""
    if index % 3 == 0:
        return LogEntry((index + 1) // 2, NO_OP)
    return LogEntry((index + 1) // 2, SetCommand(f"k{index}", f"v {index}", "cl", index))


def entries(first: int, last: int) -> list[LogEntry]:
    return [entry(index) for index in range(first, last + 1)]


def image(index: int, term: int | None = None, **data: str) -> SnapshotImage:
    sessions: immutables.Map[str, SessionRecord] = immutables.Map({"cl": (index, index, 7)})
    return SnapshotImage(
        index,
        entry(index).term if term is None else term,
        immutables.Map(data or {"k": f"at {index}"}),
        sessions,
        cluster_time=1000 + index,
    )


def open_storage(directory: Path, cluster_id: str | None = CLUSTER) -> NodeStorage:
    return NodeStorage(directory, NODE_ID, cluster_id=cluster_id)


@pytest.fixture
def storage(data_dir: Path) -> Iterator[NodeStorage]:
    """A loaded storage whose log holds entries 1..10, commitLength 8."""
    with open_storage(data_dir) as opened:
        opened.load()
        opened.append_entries(1, entries(1, 10))
        opened.save_metadata(HARD_STATE, 8)
        yield opened


def reload(directory: Path) -> storage_module.LoadedState:
    with open_storage(directory) as opened:
        return opened.load()


def first_line_index(directory: Path) -> int | None:
    lines = (directory / LOG_FILE_NAME).read_bytes().splitlines()
    if not lines:
        return None
    return int(lines[0].split(b" index=")[1].split(b" ")[0])


def snapshot_of(loaded: storage_module.LoadedState | storage_module.NodeFiles) -> SnapshotImage:
    assert loaded.snapshot is not None
    return loaded.snapshot.image()


def files_of(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


# ---------------------------------------------------------------------------------------------
# Loading what was saved.


def test_a_directory_without_a_snapshot_loads_as_before(data_dir: Path) -> None:
    with open_storage(data_dir) as storage:
        storage.load()
        storage.append_entries(1, entries(1, 5))
        storage.save_metadata(HARD_STATE, 3)
    before = files_of(data_dir)
    loaded = reload(data_dir)
    assert (loaded.entries, loaded.commit_length) == (entries(1, 5), 3)
    assert (loaded.snapshot, loaded.log_offset, loaded.log_offset_term) == (None, 0, 0)
    assert files_of(data_dir) == before


def test_the_loaded_snapshot_is_the_saved_image(storage: NodeStorage, data_dir: Path) -> None:
    saved = image(6, k="v", other="%20 ü\n")
    info = storage.save_snapshot(saved)
    assert isinstance(info, SnapshotInfo) and info.header.cluster_id == CLUSTER
    assert (storage.snapshot_index, storage.snapshot_term) == (6, 3)
    assert info.size == (data_dir / SNAPSHOT_FILE_NAME).stat().st_size
    storage.close()
    loaded = reload(data_dir)
    assert snapshot_of(loaded) == saved
    # Not compacted: the log's first line is the sentinel, and the snapshot covers it.
    assert (loaded.log_offset, loaded.log_offset_term) == (1, entry(1).term)
    assert loaded.entries == entries(2, 10)


def test_a_snapshot_keeps_the_configuration_of_its_index(
    storage: NodeStorage, data_dir: Path
) -> None:
    """Once compaction drops the configuration entries, the snapshot is where a restarted node
    finds its configuration (docs/design.md §13)."""
    membership = Membership((Member(1, peer_address="h1:51050"), Member(4, voter=False)))
    saved = replace(image(6), membership=membership)
    storage.save_snapshot(saved)
    storage.close()
    loaded = reload(data_dir)
    assert snapshot_of(loaded) == saved
    assert snapshot_of(loaded).membership == membership


@pytest.mark.parametrize("compact_to", [6, 4])
def test_snapshot_then_compaction_reloads_as_snapshot_and_tail(
    storage: NodeStorage, data_dir: Path, compact_to: int
) -> None:
    storage.save_snapshot(image(6))
    storage.compact(compact_to)
    assert first_line_index(data_dir) == compact_to
    assert (storage.log_offset, storage.log_length) == (compact_to, 10)
    storage.close()
    loaded = reload(data_dir)
    assert snapshot_of(loaded) == image(6)
    assert (loaded.log_offset, loaded.log_offset_term) == (compact_to, entry(compact_to).term)
    assert loaded.entries == entries(compact_to + 1, 10)
    assert loaded.commit_length == 8
    assert (data_dir / LOG_FILE_NAME).read_bytes() == b"".join(
        encode_lines(entries(compact_to, 10), compact_to)
    ), "the kept lines are copied unchanged"


def test_compaction_is_repeatable_and_never_goes_back(storage: NodeStorage, data_dir: Path) -> None:
    storage.save_snapshot(image(8))
    storage.compact(3)
    storage.compact(3)
    storage.compact(2)
    assert first_line_index(data_dir) == 3
    storage.compact(8)
    assert first_line_index(data_dir) == 8
    storage.close()
    loaded = reload(data_dir)
    assert (loaded.log_offset, loaded.entries) == (8, entries(9, 10))


def test_compaction_refuses_what_the_snapshot_or_the_log_does_not_hold(
    storage: NodeStorage, data_dir: Path
) -> None:
    with pytest.raises(ValueError, match="durable snapshot ends at 0"):
        storage.compact(2)
    storage.save_snapshot(image(6))
    with pytest.raises(ValueError, match="cannot compact to 7: the durable snapshot ends at 6"):
        storage.compact(7)
    storage.truncate_from(6)
    with pytest.raises(ValueError, match="cannot compact to 6: the log ends at 5"):
        storage.compact(6)
    assert first_line_index(data_dir) == 1


def test_appends_and_truncations_after_a_compaction_use_absolute_indexes(
    storage: NodeStorage, data_dir: Path
) -> None:
    storage.save_metadata(HARD_STATE, 6)  # the entries after 6 may be replaced
    storage.save_snapshot(image(6))
    storage.compact(6)
    storage.truncate_from(9)
    assert storage.log_length == 8
    replaced = [LogEntry(9, NO_OP), LogEntry(9, SetCommand("x", "y", "", 0))]
    storage.append_entries(9, replaced)
    storage.append_entries(8, [entry(8), *replaced, LogEntry(9, NO_OP)])
    assert storage.log_length == 11
    storage.truncate_from(7)  # right after the sentinel: the log holds no live entry
    storage.append_entries(7, [LogEntry(9, NO_OP)])
    with pytest.raises(ValueError, match="cannot truncate from 6: the log is compacted up to 6"):
        storage.truncate_from(6)
    with pytest.raises(ValueError, match=r"first_index 6 is outside 7\.\.8 \(the log holds "):
        storage.append_entries(6, [LogEntry(9, NO_OP)])
    with pytest.raises(ValueError, match=r"first_index 9 is outside 7\.\.8"):
        storage.append_entries(9, [LogEntry(9, NO_OP)])
    storage.close()
    loaded = reload(data_dir)
    assert (loaded.log_offset, loaded.log_offset_term) == (6, entry(6).term)
    assert loaded.entries == [LogEntry(9, NO_OP)]


def test_a_reset_log_takes_appends_after_the_snapshot(storage: NodeStorage, data_dir: Path) -> None:
    installed = image(20, term=7)
    storage.save_snapshot(installed)
    storage.reset_log(20, 7)
    assert (data_dir / LOG_FILE_NAME).read_bytes() == b""
    assert (storage.log_offset, storage.log_length) == (20, 20)
    with pytest.raises(ValueError, match=r"first_index 22 is outside 21\.\.21"):
        storage.append_entries(22, [LogEntry(7, NO_OP)])
    storage.append_entries(21, [LogEntry(7, NO_OP), LogEntry(8, NO_OP)])
    storage.truncate_from(22)
    storage.append_entries(22, [LogEntry(9, NO_OP)])
    storage.close()
    assert first_line_index(data_dir) == 21
    loaded = reload(data_dir)
    assert snapshot_of(loaded) == installed
    assert (loaded.log_offset, loaded.log_offset_term) == (20, 7)
    assert loaded.entries == [LogEntry(7, NO_OP), LogEntry(9, NO_OP)]


def test_an_empty_log_beside_a_snapshot_starts_after_it(
    storage: NodeStorage, data_dir: Path
) -> None:
    storage.save_snapshot(image(6))
    storage.reset_log(6, entry(6).term)
    storage.save_metadata(HARD_STATE, 6)
    storage.close()
    loaded = reload(data_dir)
    assert (loaded.log_offset, loaded.log_offset_term, loaded.entries) == (6, 3, [])
    assert loaded.commit_length == 6


def test_reset_refuses_an_index_no_durable_snapshot_covers(storage: NodeStorage) -> None:
    with pytest.raises(ValueError, match="durable snapshot ends at 0"):
        storage.reset_log(3, 2)
    storage.save_snapshot(image(6))
    with pytest.raises(ValueError, match="cannot reset the log to 7"):
        storage.reset_log(7, 4)
    with pytest.raises(ValueError, match="the snapshot ends there with term 3"):
        storage.reset_log(6, 4)
    with pytest.raises(ValueError, match="cannot start after index 0"):
        storage.reset_log(0, 0)
    assert storage.log_length == 10


# ---------------------------------------------------------------------------------------------
# Saving a snapshot while the log goes on.


def test_an_older_snapshot_than_the_stored_one_is_not_written(
    storage: NodeStorage, data_dir: Path
) -> None:
    storage.save_snapshot(image(8))
    before = (data_dir / SNAPSHOT_FILE_NAME).read_bytes()
    assert storage.save_snapshot(image(8)) is None
    assert storage.save_snapshot(image(5)) is None
    assert (data_dir / SNAPSHOT_FILE_NAME).read_bytes() == before
    assert sorted(os.listdir(data_dir)) == [LOG_FILE_NAME, METADATA_FILE_NAME, SNAPSHOT_FILE_NAME]


def _during_snapshot_write(
    monkeypatch: pytest.MonkeyPatch, action: Callable[[], object]
) -> threading.Event:
    """Make NodeStorage run `action` after it wrote snapshot.txt.tmp and before it renames it;
    the event is set once the action ran."""
    real = snapshot_file.write_snapshot_tmp
    ran = threading.Event()

    def write_then_act(
        path: Path,
        header: SnapshotHeader,
        data: Mapping[str, str],
        sessions: Mapping[str, SessionRecord],
        *,
        stop: threading.Event | None = None,
        duty: float = 1.0,
        busy: Callable[[], bool] | None = None,
        max_rest: float = math.inf,
        membership: Membership | None = None,
    ) -> SnapshotInfo:
        info = real(
            path,
            header,
            data,
            sessions,
            stop=stop,
            duty=duty,
            busy=busy,
            max_rest=max_rest,
            membership=membership,
        )
        action()
        ran.set()
        return info

    monkeypatch.setattr(storage_module, "write_snapshot_tmp", write_then_act)
    return ran


def test_a_snapshot_superseded_while_it_was_written_is_discarded(
    storage: NodeStorage, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    newer = image(30, term=9)

    def install_newer() -> None:
        # What installing a leader's snapshot does meanwhile (its receiver is not written yet):
        # a newer snapshot.txt is renamed into place and the storage records it.
        write_snapshot_file(
            data_dir / SNAPSHOT_FILE_NAME,
            SnapshotHeader(30, 9, CLUSTER, newer.cluster_time),
            newer.data,
            newer.sessions,
        )
        storage._snapshot_index, storage._snapshot_term = 30, 9

    _during_snapshot_write(monkeypatch, install_newer)
    assert storage.save_snapshot(image(8)) is None
    assert not (data_dir / "snapshot.txt.tmp").exists()
    loaded = read_snapshot_file(data_dir / SNAPSHOT_FILE_NAME)
    assert loaded is not None and loaded.image() == newer


def test_the_log_is_appended_to_while_a_snapshot_is_written(
    storage: NodeStorage, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    may_finish = threading.Event()
    _during_snapshot_write(monkeypatch, lambda: may_finish.wait(30))
    result: list[SnapshotInfo | None] = []
    writer = threading.Thread(target=lambda: result.append(storage.save_snapshot(image(9))))
    writer.start()
    try:
        # Only possible if the snapshot's write does not hold the storage's lock.
        storage.append_entries(11, entries(11, 12))
        storage.save_metadata(HARD_STATE, 9)
    finally:
        may_finish.set()
        writer.join(30)
    assert result and result[0] is not None
    storage.compact(9)
    storage.close()
    loaded = reload(data_dir)
    assert (loaded.log_offset, loaded.entries, snapshot_of(loaded)) == (
        9,
        entries(10, 12),
        image(9),
    )


def test_a_snapshot_write_that_fails_leaves_the_storage_usable(
    storage: NodeStorage, data_dir: Path
) -> None:
    with pytest.raises(ValueError, match="surrogate"):
        storage.save_snapshot(image(6, k="\ud800"))
    assert storage.snapshot_index == 0
    assert not (data_dir / "snapshot.txt.tmp").exists()
    storage.append_entries(11, entries(11, 11))


def test_a_stopped_snapshot_write_removes_its_file_and_leaves_the_old_one(
    storage: NodeStorage, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.save_snapshot(image(5))
    before = (data_dir / "snapshot.txt").read_bytes()
    # Several chunks; the stop flag is set while the first is written (a stopping node).
    monkeypatch.setattr(snapshot_file, "_CHUNK_BYTES", 64)
    stop = threading.Event()
    chunks: list[bytes] = []
    real_write_all = snapshot_file._write_all

    def write_all(fd: int, data: bytes) -> None:
        real_write_all(fd, data)
        chunks.append(data)
        stop.set()

    monkeypatch.setattr(snapshot_file, "_write_all", write_all)
    data = immutables.Map({f"k{i:03}": "v" * 20 for i in range(100)})
    many = SnapshotImage(8, entry(8).term, data, immutables.Map(), cluster_time=1008)
    with pytest.raises(SnapshotWriteStoppedError):
        storage.save_snapshot(many, stop=stop)
    assert len(chunks) == 1  # it gave up at the next chunk, not at the end
    assert not (data_dir / "snapshot.txt.tmp").exists()
    assert (data_dir / "snapshot.txt").read_bytes() == before
    assert storage.snapshot_index == 5
    storage.append_entries(11, entries(11, 11))


# ---------------------------------------------------------------------------------------------
# What stops the load.


def test_a_compacted_log_without_its_snapshot_is_lost_data(
    storage: NodeStorage, data_dir: Path
) -> None:
    storage.save_snapshot(image(6))
    storage.compact(6)
    storage.close()
    (data_dir / SNAPSHOT_FILE_NAME).unlink()
    before = files_of(data_dir)
    with pytest.raises(StorageDataLostError) as info:
        reload(data_dir)
    log_path, snapshot_path = data_dir / LOG_FILE_NAME, data_dir / SNAPSHOT_FILE_NAME
    assert str(info.value).startswith(
        f"{log_path} starts at index 6 but there is no {snapshot_path}: entries 1..5 are "
        "missing. The node's data is damaged; "
    )
    assert files_of(data_dir) == before


def test_a_log_that_starts_after_the_snapshot_is_lost_data(
    storage: NodeStorage, data_dir: Path
) -> None:
    storage.save_snapshot(image(9))
    storage.compact(8)
    storage.close()
    write_snapshot_file(
        data_dir / SNAPSHOT_FILE_NAME,
        SnapshotHeader(5, 3, CLUSTER, 0),
        immutables.Map(),
        immutables.Map(),
    )
    with pytest.raises(StorageDataLostError) as info:
        reload(data_dir)
    assert str(info.value).startswith(
        f"{data_dir / LOG_FILE_NAME} starts at index 8 but {data_dir / SNAPSHOT_FILE_NAME} ends "
        "at index 5: entries 6..7 are missing."
    )


def test_a_snapshot_without_metadata_is_lost_data(storage: NodeStorage, data_dir: Path) -> None:
    storage.save_snapshot(image(6))
    storage.reset_log(6, 3)
    storage.close()
    (data_dir / METADATA_FILE_NAME).unlink()
    assert (data_dir / LOG_FILE_NAME).read_bytes() == b"", "only the snapshot is left"
    with pytest.raises(StorageDataLostError, match=r"metadata\.txt is missing but .*snapshot"):
        reload(data_dir)
    with pytest.raises(StorageDataLostError, match=r"metadata\.txt is missing"):
        read_node_files(data_dir)


def test_a_commit_length_beyond_snapshot_and_log_is_lost_data(
    storage: NodeStorage, data_dir: Path
) -> None:
    storage.save_snapshot(image(6))
    storage.compact(6)
    storage.truncate_from(8)
    storage.save_metadata(HARD_STATE, 7)
    storage.close()
    assert reload(data_dir).commit_length == 7
    with open_storage(data_dir) as reopened:
        reopened.load()
        reopened.truncate_from(7)
    with pytest.raises(StorageDataLostError) as info:
        reload(data_dir)
    assert (
        f"{data_dir / LOG_FILE_NAME} ends at index 6 and {data_dir / SNAPSHOT_FILE_NAME} at index "
        f"6 but {data_dir / METADATA_FILE_NAME} records commitLength 7: committed entries are "
        "missing"
    ) in str(info.value)


def test_a_snapshot_of_another_cluster_is_refused(storage: NodeStorage, data_dir: Path) -> None:
    storage.close()
    write_snapshot_file(
        data_dir / SNAPSHOT_FILE_NAME,
        SnapshotHeader(4, 2, "other", 0),
        immutables.Map(),
        immutables.Map(),
    )
    before = files_of(data_dir)
    with pytest.raises(ClusterIdMismatchError, match=r"snapshot\.txt records clusterId 'other'"):
        reload(data_dir)
    with pytest.raises(ClusterIdMismatchError):
        read_node_files(data_dir)
    assert files_of(data_dir) == before


def test_an_old_format_log_beside_a_snapshot_is_corrupt(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / METADATA_FILE_NAME).write_text("commitLength 0\nterm 3\nvotedFor 2\nnodeId 1\n")
    (data_dir / LOG_FILE_NAME).write_bytes(b"NO-OP 1 crc=%08x\n" % zlib.crc32(b"NO-OP 1"))
    write_snapshot_file(
        data_dir / SNAPSHOT_FILE_NAME,
        SnapshotHeader(4, 2, CLUSTER, 0),
        immutables.Map(),
        immutables.Map(),
    )
    with pytest.raises(StorageCorruption, match="line 1: a log of the old format"):
        reload(data_dir)


def test_stale_temporary_files_are_removed_at_load(storage: NodeStorage, data_dir: Path) -> None:
    storage.save_snapshot(image(6))
    storage.close()
    kept = files_of(data_dir)
    for name in ("logs.txt.tmp", "snapshot.txt.tmp", "snapshot.txt.recv"):
        (data_dir / name).write_bytes(b"half a file")
    loaded = reload(data_dir)
    assert files_of(data_dir) == kept
    assert snapshot_of(loaded) == image(6) and loaded.entries == entries(2, 10)


# ---------------------------------------------------------------------------------------------
# The directory lock and crashes.


def test_the_directory_stays_locked_across_compaction_and_reset(
    storage: NodeStorage, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused: list[str] = []
    real_replace = os.replace

    def replace_then_try_to_open(
        source: str | os.PathLike[str], target: str | os.PathLike[str]
    ) -> None:
        real_replace(source, target)
        if Path(target).name == LOG_FILE_NAME:
            # The new logs.txt is in place but the storage still appends to the old one.
            with pytest.raises(StorageError, match="in use by another NodeStorage") as info:
                open_storage(data_dir)
            refused.append(str(info.value))

    monkeypatch.setattr(os, "replace", replace_then_try_to_open)
    storage.save_snapshot(image(6))
    storage.compact(4)
    storage.reset_log(6, 3)
    assert len(refused) == 2
    monkeypatch.undo()
    with pytest.raises(StorageError, match="in use by another NodeStorage"):
        open_storage(data_dir)


_CHILD_PRELUDE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import immutables
    from raftkv.core.state_machine import SnapshotImage
    from raftkv.server.storage import NodeStorage
    storage = NodeStorage(Path(sys.argv[1]), 1, cluster_id="c1")
    storage.load()
    """
)


def run_child(data_dir: Path, failpoint: str, body: str) -> subprocess.CompletedProcess[str]:
    """`body` in a new interpreter with the failpoint set, after loading the storage."""
    environment = {**os.environ, FAILPOINT_ENV: failpoint}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")])
    )
    return subprocess.run(
        [sys.executable, "-c", _CHILD_PRELUDE + textwrap.dedent(body), str(data_dir)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_crash_before_the_snapshot_rename_leaves_the_old_snapshot_and_log(
    storage: NodeStorage, data_dir: Path
) -> None:
    storage.save_snapshot(image(4))
    storage.close()
    before = files_of(data_dir)
    result = run_child(
        data_dir,
        FAILPOINT_SNAPSHOT_RENAME,
        """
        image = SnapshotImage(8, 4, immutables.Map({"k": "new"}), immutables.Map(), 0)
        storage.save_snapshot(image)
        print("survived the failpoint")
        """,
    )
    assert result.returncode == FAILPOINT_EXIT_CODE, result.stderr
    assert (data_dir / "snapshot.txt.tmp").exists()
    loaded = reload(data_dir)
    assert snapshot_of(loaded) == image(4)
    assert (loaded.log_offset, loaded.entries) == (1, entries(2, 10))
    assert files_of(data_dir) == before


def test_a_crash_during_compaction_leaves_the_whole_log(
    storage: NodeStorage, data_dir: Path
) -> None:
    storage.save_snapshot(image(8))
    storage.close()
    before = files_of(data_dir)
    result = run_child(
        data_dir,
        FAILPOINT_LOG_COMPACTION,
        """
        storage.compact(8)
        print("survived the failpoint")
        """,
    )
    assert result.returncode == FAILPOINT_EXIT_CODE, result.stderr
    assert (data_dir / "logs.txt.tmp").exists()
    loaded = reload(data_dir)
    # The new snapshot beside the old whole log: its first line serves as the sentinel.
    assert (loaded.log_offset, loaded.log_offset_term) == (1, entry(1).term)
    assert loaded.entries == entries(2, 10) and snapshot_of(loaded) == image(8)
    assert files_of(data_dir) == before
    with open_storage(data_dir) as reopened:
        reopened.load()
        reopened.compact(8)
    assert reload(data_dir).entries == entries(9, 10)


def test_the_new_failpoints_fire_only_where_placed(storage: NodeStorage, data_dir: Path) -> None:
    storage.close()
    result = run_child(
        data_dir,
        FAILPOINT_SNAPSHOT_RENAME,
        """
        storage.save_snapshot(SnapshotImage(8, 4, immutables.Map(), immutables.Map(), 0))
        storage.compact(8)
        print("done")
        """,
    )
    assert result.returncode == FAILPOINT_EXIT_CODE, result.stderr
    result = run_child(
        data_dir,
        FAILPOINT_LOG_COMPACTION,
        """
        storage.save_snapshot(SnapshotImage(8, 4, immutables.Map(), immutables.Map(), 0))
        storage.reset_log(6, 3)
        storage.append_entries(7, [])
        print("done")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    assert reload(data_dir).log_offset == 8


# ---------------------------------------------------------------------------------------------
# read_node_files, what restore-node copies.


def test_read_node_files_returns_the_snapshot_and_the_tail(
    storage: NodeStorage, data_dir: Path
) -> None:
    storage.save_snapshot(image(6))
    storage.compact(5)
    with (data_dir / LOG_FILE_NAME).open("ab") as log:
        log.write(b"SET half")
    before = files_of(data_dir)
    files = read_node_files(data_dir)  # while the storage holds the directory's lock
    assert files_of(data_dir) == before
    assert snapshot_of(files) == image(6)
    assert (files.log_offset, files.log_offset_term) == (5, entry(5).term)
    assert files.entries == entries(6, 10) and files.dropped_torn_line


# ---------------------------------------------------------------------------------------------
# A snapshot received from the leader (the InstallSnapshot receiver's snapshot.txt.recv).


def received_file(data_dir: Path, installed: SnapshotImage) -> Path:
    path = data_dir / storage_module.SNAPSHOT_RECV_NAME
    header = SnapshotHeader(installed.index, installed.term, CLUSTER, installed.cluster_time)
    write_snapshot_file(path, header, installed.data, installed.sessions)
    return path


def test_a_received_snapshot_is_installed_then_the_log_reset(
    storage: NodeStorage, data_dir: Path
) -> None:
    installed = image(40, term=9, a="1")
    path = received_file(data_dir, installed)
    storage.install_received_snapshot(path, 40, 9)
    assert not path.exists() and storage.snapshot_index == 40
    storage.reset_log(40, 9)
    storage.append_entries(41, [LogEntry(9, NO_OP)])
    storage.close()
    loaded = reload(data_dir)
    assert snapshot_of(loaded) == installed
    assert (loaded.log_offset, loaded.entries) == (40, [LogEntry(9, NO_OP)])


def test_an_install_does_not_wait_for_a_local_snapshot_being_written(
    storage: NodeStorage, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = image(40, term=9)
    path = received_file(data_dir, installed)
    # Run inside save_snapshot's write, on its thread: an install that waited for the lock
    # save_snapshot holds would deadlock here.
    _during_snapshot_write(monkeypatch, lambda: storage.install_received_snapshot(path, 40, 9))
    assert storage.save_snapshot(image(8)) is None
    loaded = read_snapshot_file(data_dir / SNAPSHOT_FILE_NAME)
    assert loaded is not None and loaded.image() == installed


def test_an_install_at_or_below_the_durable_snapshot_is_refused(
    storage: NodeStorage, data_dir: Path
) -> None:
    storage.save_snapshot(image(8))
    path = received_file(data_dir, image(8))
    with pytest.raises(ValueError, match="durable one is at 8"):
        storage.install_received_snapshot(path, 8, 4)
    with pytest.raises(ValueError, match="not in"):
        storage.install_received_snapshot(data_dir.parent / "elsewhere", 20, 4)
