"""`raftkv snapshot save` and `RaftKVClient.snapshot_save` against a real (one-node, in-process)
node: the file is the node's snapshot format, checked while it is written, kept only when whole;
a stream that fails its check leaves nothing behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv.client import backup
from raftkv.client.backup import BackupError, SnapshotSink
from raftkv.client.cli import main
from raftkv.client.library import SyncClient
from raftkv.server import service
from raftkv.server.snapshot_file import SnapshotHeader, encode_snapshot, read_snapshot_file
from tests.support.one_node import OneNodeCluster

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[OneNodeCluster]:
    with OneNodeCluster(tmp_path / "node", cluster_id="prod-7") as running:
        yield running


def test_the_library_saves_a_checked_backup(node: OneNodeCluster, tmp_path: Path) -> None:
    target = tmp_path / "backup.snap"
    with SyncClient(node.description) as client:
        last = client.set("greeting", "hello world")
        client.set("user:1", "")
        saved = client.snapshot_save(target)
        client_id = client.client_id
    assert saved.path == target and saved.index >= last
    assert (saved.keys, saved.sessions, saved.cluster_id) == (2, 1, "prod-7")
    loaded = read_snapshot_file(target)
    assert loaded is not None
    assert dict(loaded.data) == {"greeting": "hello world", "user:1": ""}
    assert client_id in loaded.sessions
    assert (loaded.size, loaded.crc) == (saved.size, saved.crc)
    assert target.stat().st_size == saved.size
    assert target.stat().st_mode & 0o777 == 0o600
    assert not backup.tmp_path_for(target).exists()


def test_the_cli_prints_what_it_saved(
    node: OneNodeCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with SyncClient(node.description) as client:
        client.set("k", "v")
    target = tmp_path / "b.snap"
    assert main(["--peers", node.address, "snapshot", "save", str(target)]) == 0
    out = capsys.readouterr().out.strip()
    loaded = read_snapshot_file(target)
    assert loaded is not None
    header = loaded.header
    assert out == (
        f"saved index {header.last_index} term {header.last_term}: 1 keys, 1 sessions, "
        f"{loaded.size} bytes, crc {loaded.crc:08x}"
    )
    assert target.read_bytes().endswith(f"END crc={loaded.crc:08x}\n".encode())


def test_a_backup_that_fails_its_checksum_is_not_kept(
    node: OneNodeCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with SyncClient(node.description) as client:
        client.set("k", "value")

    def corrupted(*args: object, **kwargs: object) -> Iterator[bytes]:
        for chunk in encode_snapshot(*args, **kwargs):  # type: ignore[arg-type]
            # Still a well-formed line, but not the bytes the checksum covers.
            yield chunk.replace(b"KEY k value", b"KEY k valve")

    monkeypatch.setattr(service, "encode_snapshot", corrupted)
    target = tmp_path / "bad.snap"
    target.write_bytes(b"an older backup\n")
    assert main(["--peers", node.address, "snapshot", "save", str(target)]) == 1
    err = capsys.readouterr().err
    assert "failed its check" in err and "checksum mismatch" in err, err
    assert "nothing was saved" in err
    # The file that was there is untouched, and no temporary file is left.
    assert target.read_bytes() == b"an older backup\n"
    assert not backup.tmp_path_for(target).exists()


def test_the_sink_refuses_a_stream_that_stops_early(tmp_path: Path) -> None:
    header = SnapshotHeader(5, 2, "c", 0)
    data = b"".join(encode_snapshot(header, {"a": "1", "b": "2"}, {}))
    target = tmp_path / "cut.snap"
    sink = SnapshotSink(target, "node 0")
    try:
        sink.write(data[: len(data) - 5])
        with pytest.raises(BackupError, match="truncated"):
            sink.finish()
    finally:
        sink.discard()
    assert not target.exists() and not backup.tmp_path_for(target).exists()
    whole = SnapshotSink(target, "node 0")
    for start in range(0, len(data), 7):
        whole.write(data[start : start + 7])
    saved = whole.finish()
    whole.discard()
    assert (saved.index, saved.term, saved.keys, saved.sessions) == (5, 2, 2, 0)
    assert target.read_bytes() == data


def test_a_backup_into_a_missing_directory_is_an_error(
    node: OneNodeCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "no" / "such" / "dir" / "b.snap"
    assert main(["--peers", node.address, "snapshot", "save", str(target)]) == 1
    assert "cannot create" in capsys.readouterr().err
