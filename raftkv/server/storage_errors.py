"""The errors every node file reader and writer raises (`raftkv.server.storage`,
`raftkv.server.snapshot_file`).

Their own module so that storage can use the snapshot file's code and the snapshot file can
raise storage's errors without importing each other; `raftkv.server.storage` re-exports them,
and that is where callers import them from.
"""

from __future__ import annotations

import os

__all__ = ["SnapshotWriteStoppedError", "StorageCorruption", "StorageError"]


class StorageError(Exception):
    """The data directory cannot be used; the node must not continue with it."""


# The name is fixed by the interface the shell was specified against, hence no Error suffix.
class StorageCorruption(StorageError):  # noqa: N818
    """A file holds data this module could not have written (and that is not a torn append)."""

    def __init__(self, path: str | os.PathLike[str], line_no: int | None, problem: str) -> None:
        where = f"{os.fspath(path)}, line {line_no}" if line_no is not None else os.fspath(path)
        super().__init__(f"corrupt data in {where}: {problem}")
        self.path = os.fspath(path)
        self.line_no = line_no
        self.problem = problem


class SnapshotWriteStoppedError(Exception):
    """A snapshot write given up because its caller asked it to stop (the node is stopping);
    its temporary file is removed, the snapshot already in place is untouched."""
