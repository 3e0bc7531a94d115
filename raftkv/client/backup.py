"""`raftkv snapshot save`'s client side: a streamed snapshot written to a file, checked as it
arrives.

`KeyValue.SnapshotSave` streams the bytes of a snapshot.txt (raftkv/server/snapshot_file.py).
`SnapshotSink` writes them to ``FILE.tmp`` (mode 0600) and feeds every chunk to the same
`SnapshotReader` a node reads its own snapshot.txt with, so the file is checked exactly as a
node would check it (format, counts, order, the END line's checksum) before it is kept: only
then is it fsync'ed and renamed to FILE, and the directory fsync'ed. On any failure the
temporary file is removed and FILE is left as it was (absent, or a previous backup).

The reader builds the maps as it goes, so checking a backup takes the memory of the state it
holds (as much as a node needs to load it). Blocking code: `RaftKVClient.snapshot_save` calls
it in a worker thread, one chunk at a time.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from raftkv.server.snapshot_file import SnapshotCorruption, SnapshotReader

from .errors import RaftKVError

__all__ = ["BackupError", "SavedSnapshot", "SnapshotSink"]


class BackupError(RaftKVError):
    """A backup was not saved: the snapshot received failed its check, or the file could not
    be written. Nothing is left behind (FILE.tmp is removed)."""


@dataclass(frozen=True, slots=True)
class SavedSnapshot:
    """A backup on disk: where, what it holds, and the checksum on its END line."""

    path: Path
    index: int
    term: int
    cluster_id: str
    keys: int
    sessions: int
    size: int
    crc: int

    def describe(self) -> str:
        """E.g. ``saved index 1200 term 4: 2 keys, 1 sessions, 41 bytes, crc 9a3b1c2d``."""
        return (
            f"saved index {self.index} term {self.term}: {self.keys} keys, {self.sessions} "
            f"sessions, {self.size} bytes, crc {self.crc:08x}"
        )


def tmp_path_for(path: Path) -> Path:
    """Where a backup to `path` is written until it passes its check: ``<path>.tmp``, in the
    same directory so that the rename is atomic."""
    return path.with_name(path.name + ".tmp")


class SnapshotSink:
    """One attempt at saving a backup to `path` (see the module docstring). `source` names the
    sender in error messages. Use `write` for each chunk, then `finish`; `discard` on any
    failure (also after a failed `write` or `finish`; safe to call twice)."""

    def __init__(self, path: Path, source: str) -> None:
        self.path = Path(path)
        self._tmp = tmp_path_for(self.path)
        self._reader = SnapshotReader(source)
        self._renamed = False
        try:
            self._fd: int | None = os.open(
                self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600
            )
        except OSError as error:
            raise BackupError(f"cannot create {self._tmp}: {error}") from None

    def write(self, data: bytes) -> None:
        """Check and write the next chunk; BackupError when it fails its check (a bad line, a
        wrong checksum) or cannot be written."""
        try:
            self._reader.feed(data)
        except SnapshotCorruption as error:
            raise BackupError(f"the snapshot received failed its check: {error}") from None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._require_open(), view) :]
        except OSError as error:
            raise BackupError(f"writing {self._tmp} failed: {error}") from None

    def finish(self) -> SavedSnapshot:
        """Once every chunk is written: the whole snapshot checked (a stream that stopped
        before its END line fails here), the file synced and renamed to `path`."""
        try:
            loaded = self._reader.finish()
        except SnapshotCorruption as error:
            raise BackupError(f"the snapshot received failed its check: {error}") from None
        fd = self._require_open()
        try:
            os.fsync(fd)
            os.close(fd)
            self._fd = None
            os.replace(self._tmp, self.path)
            self._renamed = True
        except OSError as error:
            raise BackupError(f"saving {self.path} failed: {error}") from None
        # The rename is done; a failed directory sync leaves a backup whose name may not
        # survive a crash, which the caller should hear about.
        try:
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as error:
            raise BackupError(f"syncing {self.path.parent} failed: {error}") from None
        header = loaded.header
        return SavedSnapshot(
            self.path,
            header.last_index,
            header.last_term,
            header.cluster_id,
            len(loaded.data),
            len(loaded.sessions),
            loaded.size,
            loaded.crc,
        )

    def discard(self) -> None:
        """Close and remove the temporary file (nothing to do once `finish` renamed it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)
        if not self._renamed:
            with contextlib.suppress(OSError):
                self._tmp.unlink()

    def _require_open(self) -> int:
        if self._fd is None:
            raise BackupError(f"{self._tmp} is closed")
        return self._fd
