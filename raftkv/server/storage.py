"""Durable per-node storage: the Raft log (``logs.txt``) and the hard state (``metadata.txt``).

Both files live in one data directory per node, conventionally ``logs_node_<id>/``
(see `node_data_dir`). This module is plain blocking code: the asyncio shell runs its methods
in a worker thread (``asyncio.to_thread``); an internal lock serialises concurrent callers, but
the caller must still await one call before issuing the next if their order matters.

``logs.txt`` — one Raft log entry per line, entry ``i`` on line ``i``::

    SET user:1 hello%20world 3 client=abc seq=7 crc=4f1d4ce6
    SET greeting %- 3 client=%- seq=0 crc=453d6308
    NO-OP 4 crc=55fc349a
    SET naïve%20key a%3Db%25c%0Ad%09日本%E2%80%A8 5 client=%- seq=0 crc=8cdab9ce

  * ``SET <key> <value> <term> client=<client id> seq=<seq> crc=<crc>`` and
    ``NO-OP <term> crc=<crc>``. Fields are separated by exactly one space and all of them are
    always present; ``client=%- seq=0`` is a SET without deduplication.
  * ``<term>`` and ``<seq>`` are unsigned decimal integers without sign or leading zeros.
  * Key, value and client id are escaped: the UTF-8 bytes of every space, ``%``, ``=`` and every
    character for which ``str.isprintable()`` is false (control characters including newline,
    tab and CR, U+0085, U+2028, format characters, unassigned code points, …) are written as
    ``%XX`` (uppercase hex); all other characters, non-ASCII included, are written as they are,
    so ordinary text stays readable. The empty string is written as ``%-``, which no escaped
    non-empty string can produce because a literal ``%`` is always ``%25``. The decoder accepts
    any well-formed ``%XX`` sequence that yields valid UTF-8, so files stay readable by Python
    versions whose Unicode tables consider a different set of characters printable.
  * Lone surrogates (``"\\ud800"``) are not Unicode text and cannot be stored: `encode_entry`
    raises ValueError, and `NodeStorage.append_entries` encodes the whole batch before writing a
    byte, so a rejected entry leaves the file untouched. Clients cannot send them anyway:
    protobuf ``string`` fields must be valid UTF-8.
  * ``<crc>`` is ``zlib.crc32`` of the UTF-8 bytes of everything before `` crc=``, as 8 lowercase
    hex digits. Every line, the last one included, ends with ``\\n``.

  Loading: a last line without ``\\n``, or a last line that is unparsable or fails its checksum,
  is an interrupted append (appends are fsynced before they are acknowledged, so nobody relied
  on it): it is dropped, the file is truncated after the last good line and fsynced, and
  `LoadedState.dropped_torn_line` is set (a warning is logged too). A bad line followed by any
  other line raises `StorageCorruption` naming the file, the line number and the problem: the
  node refuses to start rather than silently lose acknowledged entries. This is deliberately
  conservative: a crash whose unsynced pages reached the disk out of order can also produce it,
  and then an operator decides.

``metadata.txt`` — ``name value`` lines, all four always present, each ending with ``\\n``::

    commitLength 12
    term 4
    votedFor 2
    nodeId 1

  ``votedFor`` is ``None`` when the node has not voted in ``term``. The file is replaced
  atomically (write ``metadata.txt.tmp``, fsync it, ``os.replace``, fsync the directory). No file
  means a fresh node (term 0, no vote, commitLength 0). A malformed file raises
  `StorageCorruption`; a ``nodeId`` other than this node's raises `StorageError`. commitLength is
  only a hint and is clamped to the length of the loaded log.

Failure handling: an OSError while writing or syncing (ENOSPC, EIO, …) raises `StorageError` and
makes every later call raise too. After a failed fsync the kernel may have dropped the dirty pages
and a retried fsync can report success, so the only safe recovery is a restart that re-reads the
files.

The data directory is locked with ``flock`` on ``logs.txt`` so that two processes started with
the same node id cannot interleave writes.

Failpoints, for crash tests: the environment variable ``RAFTKV_FAILPOINT`` is read when a
`NodeStorage` is constructed (an unknown value raises `StorageError`):

  * ``after-log-write-before-fsync`` — the first append that writes log lines calls
    ``os._exit(137)`` after writing them and before the fsync.
  * ``after-metadata-rename-before-dirsync`` — the first `NodeStorage.save_metadata` calls
    ``os._exit(137)`` after ``os.replace`` and before the directory fsync.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import string
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, assert_never

from raftkv.core.messages import NO_OP, LogEntry, NodeId, NoOpCommand, SetCommand
from raftkv.core.node import HardState

__all__ = [
    "EMPTY_FIELD",
    "FAILPOINT_ENV",
    "FAILPOINT_EXIT_CODE",
    "FAILPOINT_LOG_WRITE",
    "FAILPOINT_METADATA_RENAME",
    "LOG_FILE_NAME",
    "METADATA_FILE_NAME",
    "HardState",
    "LoadedState",
    "NodeStorage",
    "StorageCorruption",
    "StorageError",
    "decode_entry",
    "encode_entry",
    "escape_field",
    "node_data_dir",
    "unescape_field",
]

logger = logging.getLogger(__name__)

LOG_FILE_NAME: Final = "logs.txt"
METADATA_FILE_NAME: Final = "metadata.txt"
_METADATA_TMP_NAME: Final = "metadata.txt.tmp"

FAILPOINT_ENV: Final = "RAFTKV_FAILPOINT"
FAILPOINT_LOG_WRITE: Final = "after-log-write-before-fsync"
FAILPOINT_METADATA_RENAME: Final = "after-metadata-rename-before-dirsync"
FAILPOINT_EXIT_CODE: Final = 137
_FAILPOINTS: Final = (FAILPOINT_LOG_WRITE, FAILPOINT_METADATA_RENAME)

EMPTY_FIELD: Final = "%-"
_ALWAYS_ESCAPED: Final = frozenset(" %=")
_HEX_DIGITS: Final = frozenset(string.hexdigits)
# `[0-9]`, not `\d`: int() would also accept "+1", " 1", "1_0" and non-ASCII digits.
_UINT_RE: Final = re.compile(r"0|[1-9][0-9]*")
_CRC_RE: Final = re.compile(r"[0-9a-f]{8}")
_CRC_SEPARATOR: Final = " crc="
_METADATA_NAMES: Final = ("commitLength", "term", "votedFor", "nodeId")


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


@dataclass(frozen=True, slots=True)
class LoadedState:
    hard_state: HardState
    entries: list[LogEntry]
    # Already clamped to len(entries).
    commit_length: int
    dropped_torn_line: bool


def node_data_dir(base: Path, node_id: NodeId) -> Path:
    return base / f"logs_node_{node_id}"


# ---------------------------------------------------------------------------------------------
# Line format.


def escape_field(text: str) -> str:
    """Escape a key, value or client id into one space-free, newline-free token."""
    if not text:
        return EMPTY_FIELD
    if text.isprintable() and _ALWAYS_ESCAPED.isdisjoint(text):
        return text
    parts: list[str] = []
    for position, char in enumerate(text):
        if char in _ALWAYS_ESCAPED or not char.isprintable():
            try:
                raw = char.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"cannot store {_preview(text)}: lone surrogate U+{ord(char):04X} at "
                    f"position {position} is not valid Unicode"
                ) from None
            parts.append("".join(f"%{byte:02X}" for byte in raw))
        else:
            parts.append(char)
    return "".join(parts)


def unescape_field(token: str) -> str:
    """Inverse of `escape_field`. Raises ValueError for a token it could not have produced."""
    if token == EMPTY_FIELD:
        return ""
    if not token:
        raise ValueError("empty field (the empty string is written as %-)")
    if "%" not in token:
        return token
    decoded = bytearray()
    i = 0
    while i < len(token):
        char = token[i]
        if char == "%":
            digits = token[i + 1 : i + 3]
            if len(digits) != 2 or not _HEX_DIGITS.issuperset(digits):
                raise ValueError(f"malformed escape {token[i : i + 3]!r} at position {i}")
            decoded.append(int(digits, 16))
            i += 3
        else:
            decoded += char.encode("utf-8")
            i += 1
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"escapes do not form valid UTF-8 ({exc.reason})") from None


def encode_entry(entry: LogEntry) -> str:
    """The line for `entry`, without the trailing newline."""
    _check_uint(entry.term, "term")
    command = entry.command
    if isinstance(command, SetCommand):
        _check_uint(command.seq, "seq")
        body = (
            f"SET {escape_field(command.key)} {escape_field(command.value)} {entry.term} "
            f"client={escape_field(command.client_id)} seq={command.seq}"
        )
    elif isinstance(command, NoOpCommand):
        body = f"NO-OP {entry.term}"
    else:
        assert_never(command)
    return f"{body}{_CRC_SEPARATOR}{zlib.crc32(body.encode('utf-8')):08x}"


def decode_entry(line: str, *, path: str, line_no: int) -> LogEntry:
    """Parse one line (without its newline). Raises StorageCorruption naming `path:line_no`."""
    body, separator, stored = line.rpartition(_CRC_SEPARATOR)
    if not separator:
        raise StorageCorruption(path, line_no, f"no checksum field: {_preview(line)}")
    if not _CRC_RE.fullmatch(stored):
        raise StorageCorruption(
            path, line_no, f"checksum {_preview(stored)} is not 8 lowercase hex digits"
        )
    try:
        body_bytes = body.encode("utf-8")
    except UnicodeEncodeError:
        raise StorageCorruption(path, line_no, "line is not valid Unicode") from None
    computed = zlib.crc32(body_bytes)
    if computed != int(stored, 16):
        raise StorageCorruption(
            path, line_no, f"checksum mismatch: stored {stored}, computed {computed:08x}"
        )
    try:
        return _parse_body(body.split(" "))
    except ValueError as exc:
        raise StorageCorruption(path, line_no, str(exc)) from None


def _parse_body(fields: list[str]) -> LogEntry:
    match fields:
        case ["SET", key, value, term, client, seq]:
            return LogEntry(
                _parse_uint(term, "term"),
                SetCommand(
                    key=_unescape_named(key, "key"),
                    value=_unescape_named(value, "value"),
                    client_id=_unescape_named(_strip_label(client, "client="), "client id"),
                    seq=_parse_uint(_strip_label(seq, "seq="), "seq"),
                ),
            )
        case ["NO-OP", term]:
            return LogEntry(_parse_uint(term, "term"), NO_OP)
        case ["SET", *_]:
            raise ValueError(f"SET line has {len(fields)} fields, expected 6")
        case ["NO-OP", *_]:
            raise ValueError(f"NO-OP line has {len(fields)} fields, expected 2")
        case _:
            raise ValueError(f"unknown command {_preview(fields[0])}")


def _unescape_named(token: str, name: str) -> str:
    try:
        return unescape_field(token)
    except ValueError as exc:
        raise ValueError(f"bad {name} {_preview(token)}: {exc}") from None


def _strip_label(token: str, label: str) -> str:
    if not token.startswith(label):
        raise ValueError(f"expected {label}..., got {_preview(token)}")
    return token[len(label) :]


def _parse_uint(token: str, name: str) -> int:
    if not _UINT_RE.fullmatch(token):
        raise ValueError(f"{name} {_preview(token)} is not an unsigned decimal integer")
    return int(token)


def _check_uint(value: object, name: str) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def _preview(text: str, limit: int = 60) -> str:
    # A corrupt line can be megabytes long; error messages show only its start.
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text)} chars)"


# ---------------------------------------------------------------------------------------------
# Metadata format.


def _encode_metadata(hard_state: HardState, commit_length: int, node_id: NodeId) -> str:
    voted_for = "None" if hard_state.voted_for is None else str(hard_state.voted_for)
    return (
        f"commitLength {commit_length}\n"
        f"term {hard_state.term}\n"
        f"votedFor {voted_for}\n"
        f"nodeId {node_id}\n"
    )


def _parse_metadata(data: bytes, path: Path) -> tuple[HardState, int, int]:
    """Returns (hard state, commit length, node id)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StorageCorruption(path, None, f"not valid UTF-8 at byte {exc.start}") from None
    lines = text.split("\n")
    if lines[-1]:
        raise StorageCorruption(path, len(lines), "last line has no newline (truncated file?)")
    values: dict[str, int | None] = {}
    for line_no, line in enumerate(lines[:-1], start=1):
        name, separator, raw = line.partition(" ")
        if not separator:
            raise StorageCorruption(path, line_no, f"expected 'name value', got {_preview(line)}")
        if name not in _METADATA_NAMES:
            raise StorageCorruption(path, line_no, f"unknown name {_preview(name)}")
        if name in values:
            raise StorageCorruption(path, line_no, f"{name} appears twice")
        try:
            values[name] = None if name == "votedFor" and raw == "None" else _parse_uint(raw, name)
        except ValueError as exc:
            raise StorageCorruption(path, line_no, str(exc)) from None
    missing = [name for name in _METADATA_NAMES if name not in values]
    if missing:
        raise StorageCorruption(path, None, f"missing {', '.join(missing)}")
    commit_length, term, node_id = values["commitLength"], values["term"], values["nodeId"]
    assert commit_length is not None and term is not None and node_id is not None
    return HardState(term=term, voted_for=values["votedFor"]), commit_length, node_id


# ---------------------------------------------------------------------------------------------
# The store.


class NodeStorage:
    """The log and hard state of one node, in `directory` (created if missing).

    Call `load` once before any write: it validates the directory's owner and learns the byte
    offset of every line, which is what makes truncation a single ``ftruncate``.
    """

    def __init__(self, directory: Path, node_id: NodeId, *, sync: bool = True) -> None:
        # sync=False is the `--unsafe-no-fsync` negative control: writes reach only the page
        # cache, so a machine crash (not a process kill) can lose acknowledged entries.
        self._sync = sync
        self._failpoint = _failpoint_from_env()
        self._directory = Path(directory)
        self._node_id = node_id
        self._log_path = self._directory / LOG_FILE_NAME
        self._metadata_path = self._directory / METADATA_FILE_NAME
        self._lock = threading.Lock()
        # _offsets[i] is the byte offset of the line holding log index i + 1.
        self._offsets: list[int] = []
        self._end = 0
        self._loaded = False
        self._failure: str | None = None

        existed = self._directory.is_dir()
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            if not existed:
                # Without this a crash could forget the directory and every file in it.
                _fsync_directory(self._directory.parent)
            fd = os.open(self._log_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot open data directory {self._directory}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StorageError(
                f"data directory {self._directory} is in use by another NodeStorage "
                f"(lock on {self._log_path} is held)"
            ) from None
        self._fd: int | None = fd
        try:
            _fsync_directory(self._directory)
        except OSError as exc:
            self.close()
            raise StorageError(f"cannot sync data directory {self._directory}: {exc}") from exc

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def log_length(self) -> int:
        """Number of entries in the log file (valid after `load`)."""
        return len(self._offsets)

    def load(self) -> LoadedState:
        """Read metadata and log, repairing a torn last log line. See the module docstring."""
        with self._lock:
            fd = self._open_fd()
            # Metadata first: a directory that belongs to another node must not be repaired.
            hard_state, commit_length = self._load_metadata()
            entries, dropped = self._load_log(fd)
            if commit_length > len(entries):
                logger.warning(
                    "%s: commitLength %d exceeds the %d log entries; using %d",
                    self._metadata_path,
                    commit_length,
                    len(entries),
                    len(entries),
                )
                commit_length = len(entries)
            self._loaded = True
            return LoadedState(hard_state, entries, commit_length, dropped)

    def append_entries(self, first_index: int, entries: Sequence[LogEntry]) -> None:
        """Make the log hold `entries` at indexes `first_index`, … and nothing after them.

        Entries at ``>= first_index`` are removed first (with their own fsync, so that unsynced
        new lines can never end up interleaved with old ones on disk); the new lines are then
        written and synced with one fdatasync, whatever their number. Returns once durable.
        """
        self.append_encoded(first_index, encode_lines(entries))

    def append_encoded(self, first_index: int, lines: Sequence[bytes]) -> None:
        """`append_entries` for lines `encode_lines` made: a caller that syncs in a worker
        thread encodes first, so that the thread needs the GIL only around its system calls."""
        with self._lock:
            fd = self._writable_fd()
            if not 1 <= first_index <= len(self._offsets) + 1:
                raise ValueError(
                    f"first_index {first_index} is outside 1..{len(self._offsets) + 1} "
                    f"(the log holds {len(self._offsets)} entries)"
                )
            if first_index <= len(self._offsets):
                self._truncate_locked(fd, first_index)
            if not lines:
                return
            start = self._end
            payload = b"".join(lines)
            try:
                _write_all(fd, payload, start)
                if self._failpoint == FAILPOINT_LOG_WRITE:
                    os._exit(FAILPOINT_EXIT_CODE)
                self._sync_fd(fd)
            except OSError as exc:
                raise self._fail(f"appending to {self._log_path} failed: {exc}") from exc
            offset = start
            for line in lines:
                self._offsets.append(offset)
                offset += len(line)
            self._end = offset

    def truncate_from(self, index: int) -> None:
        """Remove the entries at log indexes ``>= index`` (1-based) and sync."""
        if index < 1:
            raise ValueError(f"log indexes start at 1, got {index}")
        with self._lock:
            fd = self._writable_fd()
            if index <= len(self._offsets):
                self._truncate_locked(fd, index)

    def save_metadata(self, hard_state: HardState, commit_length: int) -> None:
        """Atomically replace metadata.txt; returns once the new file is durable."""
        _check_uint(hard_state.term, "term")
        if hard_state.voted_for is not None:
            _check_uint(hard_state.voted_for, "voted_for")
        _check_uint(commit_length, "commit_length")
        data = _encode_metadata(hard_state, commit_length, self._node_id).encode("utf-8")
        tmp_path = self._directory / _METADATA_TMP_NAME
        with self._lock:
            self._writable_fd()
            try:
                tmp_fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    _write_all(tmp_fd, data, 0)
                    self._sync_fd(tmp_fd)
                finally:
                    os.close(tmp_fd)
                os.replace(tmp_path, self._metadata_path)
                if self._failpoint == FAILPOINT_METADATA_RENAME:
                    os._exit(FAILPOINT_EXIT_CODE)
                if self._sync:
                    _fsync_directory(self._directory)
            except OSError as exc:
                raise self._fail(f"saving {self._metadata_path} failed: {exc}") from exc

    def _sync_fd(self, fd: int) -> None:
        if self._sync:
            _sync_file(fd)

    def close(self) -> None:
        """Release the file and the directory lock. Safe to call more than once."""
        with self._lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)

    def __enter__(self) -> NodeStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals (callers hold self._lock) ---------------------------------------------------

    def _open_fd(self) -> int:
        if self._failure is not None:
            raise StorageError(f"storage unusable after an earlier failure: {self._failure}")
        if self._fd is None:
            raise StorageError(f"storage for {self._directory} is closed")
        return self._fd

    def _writable_fd(self) -> int:
        fd = self._open_fd()
        if not self._loaded:
            raise StorageError("call load() before writing")
        return fd

    def _fail(self, reason: str) -> StorageError:
        self._failure = reason
        return StorageError(reason)

    def _truncate_locked(self, fd: int, index: int) -> None:
        offset = self._offsets[index - 1]
        try:
            os.ftruncate(fd, offset)
            self._sync_fd(fd)
        except OSError as exc:
            raise self._fail(f"truncating {self._log_path} failed: {exc}") from exc
        del self._offsets[index - 1 :]
        self._end = offset

    def _load_metadata(self) -> tuple[HardState, int]:
        try:
            data = self._metadata_path.read_bytes()
        except FileNotFoundError:
            return HardState(term=0, voted_for=None), 0
        except OSError as exc:
            raise StorageError(f"cannot read {self._metadata_path}: {exc}") from exc
        hard_state, commit_length, node_id = _parse_metadata(data, self._metadata_path)
        if node_id != self._node_id:
            raise StorageError(
                f"data directory {self._directory} belongs to node {node_id}, "
                f"not to node {self._node_id}"
            )
        return hard_state, commit_length

    def _load_log(self, fd: int) -> tuple[list[LogEntry], bool]:
        try:
            data = _read_all(fd)
        except OSError as exc:
            raise StorageError(f"cannot read {self._log_path}: {exc}") from exc
        path = str(self._log_path)
        entries: list[LogEntry] = []
        offsets: list[int] = []
        start = 0
        line_no = 0
        torn_problem: str | None = None
        while start < len(data):
            line_no += 1
            newline = data.find(b"\n", start)
            if newline == -1:
                torn_problem = "no trailing newline"
                break
            try:
                entry = _decode_line_bytes(data[start:newline], path, line_no)
            except StorageCorruption as exc:
                if newline + 1 < len(data):
                    raise
                torn_problem = exc.problem
                break
            offsets.append(start)
            entries.append(entry)
            start = newline + 1
        if torn_problem is not None:
            logger.warning(
                "%s: dropping torn last line %d (%s; %d bytes) left by an interrupted append",
                path,
                line_no,
                torn_problem,
                len(data) - start,
            )
            try:
                os.ftruncate(fd, start)
                self._sync_fd(fd)
            except OSError as exc:
                raise self._fail(f"repairing {path} failed: {exc}") from exc
        self._offsets = offsets
        self._end = start
        return entries, torn_problem is not None


def _decode_line_bytes(raw: bytes, path: str, line_no: int) -> LogEntry:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StorageCorruption(path, line_no, f"not valid UTF-8 at byte {exc.start}") from None
    return decode_entry(line, path=path, line_no=line_no)


def _failpoint_from_env() -> str | None:
    value = os.environ.get(FAILPOINT_ENV, "")
    if not value:
        return None
    if value not in _FAILPOINTS:
        raise StorageError(
            f"unknown {FAILPOINT_ENV}={value!r}; expected one of: {', '.join(_FAILPOINTS)}"
        )
    return value


def encode_lines(entries: Sequence[LogEntry]) -> list[bytes]:
    """logs.txt lines for `entries`, newline included."""
    return [(encode_entry(entry) + "\n").encode("utf-8") for entry in entries]


def _sync_file(fd: int) -> None:
    # fdatasync still flushes the file size (needed to read the data back) but skips
    # timestamps, which recovery never looks at.
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:
        os.fsync(fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 24), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
