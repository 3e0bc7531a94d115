"""What the servers cost, read from /proc: CPU time, resident memory, and who listens on a port;
plus the size of a data directory."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of `pid` (all its threads), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3 of stat(5)); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class DirSize:
    apparent: int  # sum of file sizes
    allocated: int  # blocks on disk, as du(1) counts them
    # The largest files (path relative to the directory → allocated bytes), largest first.
    largest: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "apparent_bytes": self.apparent,
            "allocated_bytes": self.allocated,
            "largest_files": dict(self.largest),
        }


def dir_size(path: Path, keep: int = 4, skip: tuple[str, ...] = ()) -> DirSize:
    """Every file under `path`, except those whose name starts with one of `skip`."""
    apparent = allocated = 0
    files_seen: list[tuple[str, int]] = []
    for root, _, files in os.walk(path):
        for name in files:
            if skip and name.startswith(skip):
                continue
            full = os.path.join(root, name)
            try:
                info = os.lstat(full)
            except OSError:
                continue
            apparent += info.st_size
            allocated += info.st_blocks * 512
            files_seen.append((os.path.relpath(full, path), info.st_blocks * 512))
    files_seen.sort(key=lambda item: -item[1])
    return DirSize(apparent, allocated, tuple(files_seen[:keep]))


class ProcessMonitor:
    """CPU use of a fixed set of labelled processes between two snapshots."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)

    def snapshot(self) -> tuple[float, dict[str, float | None]]:
        return time.monotonic(), {label: cpu_seconds(pid) for label, pid in self.pids.items()}

    @staticmethod
    def cpu_percent(
        start: tuple[float, dict[str, float | None]], end: tuple[float, dict[str, float | None]]
    ) -> dict[str, float]:
        """% of one core per process over the interval (processes that died are left out)."""
        elapsed = end[0] - start[0]
        result = {}
        for label, before in start[1].items():
            after = end[1].get(label)
            if before is not None and after is not None and elapsed > 0:
                result[label] = 100.0 * (after - before) / elapsed
        return result
