from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest

from raftkv.server.dump import DumpLog


def test_lines_are_timestamped_and_kept_verbatim(tmp_path: Path) -> None:
    dump = DumpLog(tmp_path, 2, to_stdout=False)
    dump.write_lines(["Node 2 became the leader for term 3.", "Vote granted for Node 1 in term 2."])
    dump.close()
    lines = (tmp_path / "dump.txt").read_text().splitlines()
    assert len(lines) == 2
    stamp, _, event = lines[0].partition(" ")
    assert datetime.fromisoformat(stamp).tzinfo is not None
    assert event == "Node 2 became the leader for term 3."


def test_a_newline_in_an_event_cannot_forge_a_second_line(tmp_path: Path) -> None:
    dump = DumpLog(tmp_path, 0, to_stdout=False)
    dump.write("Node 0 (leader) committed the entry SET k a\nNode 9 became the leader to it.")
    dump.close()
    lines = (tmp_path / "dump.txt").read_text().splitlines()
    assert len(lines) == 1 and "\\n" in lines[0]


def test_rotation_keeps_a_bounded_number_of_files(tmp_path: Path) -> None:
    dump = DumpLog(tmp_path, 0, to_stdout=False, max_bytes=500, backups=2)
    for i in range(200):
        dump.write(f"Leader 0 sending heartbeat & Renewing Lease {i}")
    dump.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["dump.txt", "dump.txt.1", "dump.txt.2"]
    assert all(p.stat().st_size < 1000 for p in tmp_path.iterdir())
    newest = (tmp_path / "dump.txt").read_text()
    assert re.search(r"Renewing Lease 199$", newest.strip())


def test_stdout_gets_the_same_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dump = DumpLog(tmp_path, 0, to_stdout=True)
    dump.write("Node 0 election timer timed out, Starting election.")
    dump.close()
    assert capsys.readouterr().out == (tmp_path / "dump.txt").read_text()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_never_stops_the_writer_and_warns_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # /dev/full fails every write with ENOSPC, like a full disk.
    (tmp_path / "dump.txt").symlink_to("/dev/full")
    dump = DumpLog(tmp_path, 4, to_stdout=True)
    for i in range(3):
        dump.write(f"Node 4 storage failure, stopping: event {i}")
    dump.close()
    captured = capsys.readouterr()
    assert captured.out.count("Node 4 storage failure, stopping: event") == 3
    (warning,) = captured.err.splitlines()
    assert warning == (
        f"raftkv-node: node 4: warning: cannot write {tmp_path / 'dump.txt'} ([Errno 28] No "
        "space left on device); the node goes on without it and retries at each write"
    )


def test_an_unopenable_dump_file_is_retried_at_each_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_open = Path.open

    def read_only_open(self: Path, *args: object, **kwargs: object) -> object:
        raise OSError(30, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "open", read_only_open)
    dump = DumpLog(tmp_path, 1, to_stdout=False)
    dump.write("lost")
    assert "[Errno 30] Read-only file system" in capsys.readouterr().err
    monkeypatch.setattr(Path, "open", real_open)
    dump.write("kept")
    dump.close()
    assert (tmp_path / "dump.txt").read_text().endswith(" kept\n")
    assert capsys.readouterr().err == ""
