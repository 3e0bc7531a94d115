from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from raftkv.server.dump import DumpLog, DumpRateLimiter


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


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Stands in for DumpLog.write_lines: one list per write."""

    def __init__(self) -> None:
        self.writes: list[list[str]] = []

    def __call__(self, lines: list[str]) -> None:
        self.writes.append(list(lines))

    @property
    def lines(self) -> list[str]:
        return [line for write in self.writes for line in write]


def limiter(clock: FakeClock, recorder: Recorder, **kwargs: Any) -> DumpRateLimiter:
    return DumpRateLimiter(recorder, burst=3, interval=10.0, clock=clock, **kwargs)


def test_a_burst_per_key_is_written_and_the_rest_summed_up_before_the_next_line() -> None:
    clock, recorder = FakeClock(), Recorder()
    dump = limiter(clock, recorder)
    written = [dump.write("sender 7", f"refused {i}") for i in range(1000)]
    assert written == [True] * 3 + [False] * 997
    assert dump.write("sender 8", "refused from 8")  # another key has a burst of its own
    assert recorder.lines == ["refused 0", "refused 1", "refused 2", "refused from 8"]
    clock.now += 9.9
    assert not dump.write("sender 7", "still within the interval")
    clock.now += 0.1
    assert dump.write("sender 7", "next interval")
    # The summary and the line after it go out in one write.
    assert recorder.writes[-1] == [
        "Suppressed 998 more lines for sender 7 within 10 s; the last: still within the interval",
        "next interval",
    ]


def test_flush_sums_up_ended_intervals_only_and_close_sums_up_the_rest() -> None:
    clock, recorder = FakeClock(), Recorder()
    dump = limiter(clock, recorder)
    for i in range(5):
        dump.write("a", f"a{i}")
    clock.now += 5
    for i in range(4):
        dump.write("b", f"b{i}")
    dump.write("c", "c0")  # nothing suppressed: never a summary
    clock.now += 5
    dump.flush()
    assert recorder.writes[-1] == ["Suppressed 2 more lines for a within 10 s; the last: a4"]
    dump.flush()  # said once
    assert recorder.lines.count("Suppressed 2 more lines for a within 10 s; the last: a4") == 1
    dump.close()  # b's interval has not ended, but the node is stopping
    assert recorder.writes[-1] == ["Suppressed 1 more line for b within 10 s; the last: b3"]


def test_keys_beyond_the_cap_share_one_window_and_ended_keys_are_forgotten() -> None:
    clock, recorder = FakeClock(), Recorder()
    dump = limiter(clock, recorder, max_keys=2)
    # A hostile peer claims a new sender id with every message.
    written = [dump.write(f"sender {i}", f"from {i}") for i in range(100)]
    assert written == [True, True, True, True, True] + [False] * 95
    assert recorder.lines == [f"from {i}" for i in range(5)]
    clock.now += 10
    assert dump.write("sender 500", "from 500")
    assert recorder.writes[-1] == [
        "Suppressed 95 more lines for other senders within 10 s; the last: from 99",
        "from 500",
    ]
    assert len(dump._windows) == 1  # the ended windows of senders 0, 1 and others are gone


@pytest.mark.parametrize(
    "kwargs", [{"burst": 0}, {"interval": 0.0}, {"max_keys": 0}], ids=["burst", "interval", "keys"]
)
def test_a_limiter_that_lets_nothing_through_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DumpRateLimiter(Recorder(), **kwargs)


def test_the_limiter_writes_through_a_dump_log(tmp_path: Path) -> None:
    clock = FakeClock()
    log = DumpLog(tmp_path, 0, to_stdout=False)
    dump = DumpRateLimiter(log.write_lines, burst=1, interval=1.0, clock=clock)
    dump.write("k", "first")
    dump.write("k", "second")
    dump.close()
    log.close()
    texts = [line.partition(" ")[2] for line in (tmp_path / "dump.txt").read_text().splitlines()]
    assert texts == ["first", "Suppressed 1 more line for k within 1 s; the last: second"]
