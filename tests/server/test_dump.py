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
