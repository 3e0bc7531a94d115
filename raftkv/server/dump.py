"""dump.txt: every event the node prints, one ISO-8601-timestamped line each, rotated by size.

The core's sentences (`Node 2 became the leader for term 3.`, …) are kept verbatim after the
timestamp so that dumps from every node can be merged and reviewed by machine.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from pathlib import Path

DUMP_FILE = "dump.txt"


class _IsoFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds")
        return f"{stamp} {record.getMessage()}"


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
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DUMP_FILE
        self._logger = logging.getLogger(f"raftkv.dump.{node_id}.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        formatter = _IsoFormatter()
        file_handler = logging.handlers.RotatingFileHandler(
            self.path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        file_handler.setFormatter(formatter)
        self._handlers: list[logging.Handler] = [file_handler]
        if to_stdout:
            stream = logging.StreamHandler(sys.stdout)
            stream.setFormatter(formatter)
            self._handlers.append(stream)
        for handler in self._handlers:
            self._logger.addHandler(handler)

    def write(self, line: str) -> None:
        # One line per event: a newline inside a key or value must not forge a second event.
        self._logger.info(line.replace("\n", "\\n").replace("\r", "\\r"))

    def close(self) -> None:
        for handler in self._handlers:
            self._logger.removeHandler(handler)
            handler.close()
