"""dump.txt: every event the node prints, one ISO-8601-timestamped line each, rotated by size.

The core's sentences (`Node 2 became the leader for term 3.`, …) are kept verbatim after the
timestamp so that dumps from every node can be merged and reviewed by machine. A Ready's events
are written with one write() and one flush: a busy leader produces several lines per request.
The file is not fsynced — it is a diagnostic record, not state, and it never stops the node:
when it cannot be opened or written (full disk, read-only directory), one warning goes to stderr,
the lines still go to stdout (unless --quiet), and the file is tried again at the next write.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TextIO

DUMP_FILE = "dump.txt"
# DumpRateLimiter's defaults: per key, the first REPEAT_BURST lines of every REPEAT_INTERVAL
# seconds are written (enough to see what is going on), the rest only counted; at most
# REPEAT_KEYS keys are tracked apart, since keys can come from remote input (a claimed sender).
REPEAT_BURST = 20
REPEAT_INTERVAL = 10.0
REPEAT_KEYS = 32
# Where lines go when REPEAT_KEYS keys are already tracked.
OTHER_KEYS = "other senders"


def timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _one_line(event: str) -> str:
    return event.replace("\n", "\\n").replace("\r", "\\r")


# dump.txt is rotated at this size and this many older copies are kept (dump.txt.1 …).
DUMP_MAX_BYTES: Final = 20 * 1024 * 1024
DUMP_BACKUPS: Final = 3


class DumpLog:
    def __init__(
        self,
        directory: Path,
        node_id: int,
        *,
        to_stdout: bool = True,
        max_bytes: int = DUMP_MAX_BYTES,
        backups: int = DUMP_BACKUPS,
    ) -> None:
        self.node_id = node_id
        self.path = directory / DUMP_FILE
        self._max_bytes = max_bytes
        self._backups = backups
        self._stdout: TextIO | None = sys.stdout if to_stdout else None
        self._file: TextIO | None = None
        self._size = 0
        self._warned = False
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as error:
            self._warn(error)

    def _open(self) -> None:
        self._file = self.path.open("a", encoding="utf-8")
        self._size = self._file.tell()

    def _warn(self, error: OSError) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if not self._warned:
            self._warned = True
            print(
                f"raftkv-node: node {self.node_id}: warning: cannot write {self.path} ({error}); "
                "the node goes on without it and retries at each write",
                file=sys.stderr,
                flush=True,
            )

    def write(self, line: str) -> None:
        self.write_lines((line,))

    def write_lines(self, lines: Iterable[str]) -> None:
        stamp = timestamp()
        # One line per event: a newline inside a key or value must not forge a second event.
        text = "".join(f"{stamp} {_one_line(line)}\n" for line in lines)
        if not text:
            return
        if self._stdout is not None:
            self._stdout.write(text)
            self._stdout.flush()
        try:
            if self._file is None:
                self._open()
            assert self._file is not None
            self._file.write(text)
            self._file.flush()
            self._size += len(text)
            if self._size >= self._max_bytes:
                self._rotate()
        except OSError as error:
            self._warn(error)

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        for index in range(self._backups - 1, 0, -1):
            older = self.path.with_name(f"{DUMP_FILE}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{DUMP_FILE}.{index + 1}"))
        if self._backups > 0:
            self.path.replace(self.path.with_name(f"{DUMP_FILE}.1"))
        else:
            self.path.unlink()
        self._open()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


@dataclass(slots=True)
class _Window:
    start: float
    written: int = 0
    suppressed: int = 0
    last: str = ""


class DumpRateLimiter:
    """Writes at most `burst` lines per key in each `interval` seconds; the rest are counted.

    For lines that remote input can trigger at will (a refused peer message each): a flood would
    otherwise rotate the node's whole history out of the dump (20 MiB × 3 files) and cost a
    write per message. When a key's interval has ended, one line says how many of its lines were
    suppressed and shows the last of them: written just before the key's next line, or by
    `flush` (call it now and then, e.g. from a timer, so that the count of a flood that stopped
    is not held back) or `close`. There is no timer inside: `clock` (monotonic seconds) is read
    at each call, so tests can drive it.

    `write_lines` is `DumpLog.write_lines` (a summary and the line after it go out in one write).
    At most `max_keys` keys are tracked at once: a key beyond them shares `OTHER_KEYS`'s window.
    """

    def __init__(
        self,
        write_lines: Callable[[list[str]], None],
        *,
        burst: int = REPEAT_BURST,
        interval: float = REPEAT_INTERVAL,
        max_keys: int = REPEAT_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or interval <= 0 or max_keys < 1:
            raise ValueError("burst and max_keys must be at least 1 and interval positive")
        self._write_lines = write_lines
        self._burst = burst
        self._interval = interval
        self._max_keys = max_keys
        self._clock = clock
        # Invariant: at most max_keys windows besides OTHER_KEYS's.
        self._windows: dict[str, _Window] = {}

    def write(self, key: str, line: str) -> bool:
        """Write `line` unless `key` has had its `burst` in the current interval; returns
        whether it was written."""
        now = self._clock()
        summaries = self._close_ended(now, only=key)
        if key not in self._windows and key != OTHER_KEYS:
            if self._tracked() >= self._max_keys:
                summaries += self._close_ended(now)
            if self._tracked() >= self._max_keys:
                key = OTHER_KEYS
                summaries += self._close_ended(now, only=key)
        window = self._windows.setdefault(key, _Window(now))
        if window.written < self._burst:
            window.written += 1
            self._write_lines([*summaries, line])
            return True
        window.suppressed += 1
        window.last = line
        if summaries:
            self._write_lines(summaries)
        return False

    def flush(self) -> None:
        """Write the summary of every interval that has ended, and forget those keys."""
        summaries = self._close_ended(self._clock())
        if summaries:
            self._write_lines(summaries)

    def close(self) -> None:
        """Write the summary of every interval, ended or not (at shutdown)."""
        summaries = [self._summary(key, window) for key, window in self._windows.items()]
        self._windows.clear()
        lines = [summary for summary in summaries if summary is not None]
        if lines:
            self._write_lines(lines)

    def _tracked(self) -> int:
        return len(self._windows) - (OTHER_KEYS in self._windows)

    def _close_ended(self, now: float, only: str | None = None) -> list[str]:
        """Drop the windows (of `only`, or all) whose interval has ended; their summaries."""
        keys = list(self._windows) if only is None else [only]
        summaries = []
        for key in keys:
            window = self._windows.get(key)
            if window is not None and now - window.start >= self._interval:
                del self._windows[key]
                summary = self._summary(key, window)
                if summary is not None:
                    summaries.append(summary)
        return summaries

    def _summary(self, key: str, window: _Window) -> str | None:
        if not window.suppressed:
            return None
        count = window.suppressed
        return (
            f"Suppressed {count} more line{'s' if count > 1 else ''} for {key} within "
            f"{self._interval:g} s; the last: {window.last}"
        )
