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
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

DUMP_FILE = "dump.txt"


def timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _one_line(event: str) -> str:
    return event.replace("\n", "\\n").replace("\r", "\\r")


class DumpLog:
    def __init__(
        self,
        directory: Path,
        node_id: int,
        *,
        to_stdout: bool = True,
        max_bytes: int = 20 * 1024 * 1024,
        backups: int = 3,
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
