"""``snapshot.txt``: the applied state at one log index, as a human-readable file.

A snapshot holds everything the state machine derived from the log up to ``lastIndex``: the
key-value map and the client sessions (the dedup table), plus the cluster it belongs to and
the cluster time at that index. The file is a pure function of that state (keys and sessions
sorted, every number in its one spelling, no timestamps of its own), so two replicas at the
same index write byte-identical files and a ``cmp`` or a checksum compares them::

    raftkv-snapshot 1
    lastIndex 1200
    lastTerm 4
    clusterId local-5f0c9a1e
    clusterTime 86400123
    keys 2
    sessions 1
    KEY greeting %-
    KEY user:1 hello%20world
    SESSION app.1f2e3d4c5b6a7980 7 1193 86399000
    END crc=16c5fa82

  * The header: ``name value`` lines, exactly these names in exactly this order. ``1`` is the
    format version. Version ``2`` (docs/design.md §13) adds a header line ``members <n>`` after
    ``sessions`` and, after the SESSION lines, one ``MEMBER <id> voter|learner <client address>
    <peer address>`` line per member of the configuration in force at ``lastIndex``, in
    ascending id order, at least one a voter (addresses escaped like keys). A snapshot with no
    configuration entry behind it (the cluster's first configuration, which every node is
    started with) is written as version 1, so that nodes of the previous release read it.
    ``lastIndex`` and ``lastTerm`` are at least 1 (an empty log needs no
    snapshot); ``clusterTime``, ``keys`` and ``sessions`` at least 0. Every number is an
    unsigned decimal without sign or leading zeros, at most 2**63 − 1 (so that no reader with
    signed 64-bit integers can overflow). ``clusterId`` is escaped and may be empty (``%-``).
  * ``KEY <key> <value>``, one line per key, in ascending key order (Python's ``str`` order:
    code points) and without duplicates; then ``SESSION <client id> <seq> <index>
    <lastActiveMs>``, one line per session, in ascending client id order. Keys, values and
    client ids are escaped as in every file of a node (`raftkv.textformat`).
  * ``keys`` and ``sessions`` are the numbers of those lines.
  * The last line is ``END crc=<crc>``: ``zlib.crc32`` of every byte before it, as 8 lowercase
    hex digits, followed by ``\\n``, and nothing after it.

Anything else — a missing or misplaced header line, a malformed line, a count that does not
match, keys or client ids out of order or repeated, a wrong checksum, a missing END line (a
truncated file), bytes after it, a line longer than `MAX_SNAPSHOT_LINE_BYTES` — raises
`SnapshotCorruption`, naming the file, the line and the problem. A snapshot is all or nothing:
unlike logs.txt there is no torn tail to repair, because the file is only ever replaced whole
(written to ``snapshot.txt.tmp``, synced, renamed, the directory synced), so a damaged file is
damage, not an interrupted write.

`SnapshotReader` parses incrementally, from chunks split anywhere, so that the same code reads
the file from disk and a snapshot streamed by a peer, and never holds more than one line beyond
the maps it builds: a hostile sender cannot make it buffer without limit.

Plain blocking code, like `raftkv.server.storage`: the shell runs it in a worker thread.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import math
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import accumulate, islice
from operator import add
from pathlib import Path
from typing import Final

import immutables

from raftkv.core.messages import Member, Membership
from raftkv.core.state_machine import SnapshotImage, prepare
from raftkv.core.validation import MAX_ADDRESS_CHARS, MAX_MEMBERS, MAX_NODE_ID
from raftkv.limits import MAX_KEY_BYTES, MAX_VALUE_BYTES
from raftkv.server.storage_errors import (
    SnapshotWriteStoppedError,
    StorageCorruption,
    StorageError,
)
from raftkv.textformat import (
    UINT_RE,
    escape_field,
    is_plain,
    preview,
    unescape_field,
)

__all__ = [
    "FORMAT_VERSION",
    "MAX_SNAPSHOT_LINE_BYTES",
    "NODE_SNAPSHOT_DUTY",
    "NODE_SNAPSHOT_MAX_REST",
    "SNAPSHOT_FILE_NAME",
    "LoadedSnapshot",
    "Pace",
    "SessionRecord",
    "SnapshotCorruption",
    "SnapshotHeader",
    "SnapshotInfo",
    "SnapshotReader",
    "encode_snapshot",
    "read_snapshot_file",
    "snapshot_tmp_path",
    "write_snapshot_file",
    "write_snapshot_tmp",
]

SNAPSHOT_FILE_NAME: Final = "snapshot.txt"
FORMAT_VERSION: Final = 1
# A snapshot that holds a configuration (MEMBER lines).
MEMBERSHIP_FORMAT_VERSION: Final = 2
_MAGIC: Final = "raftkv-snapshot"

# The longest line a reader accepts, newline excluded. The longest line a node can write is a
# KEY line with a key and a value at their limits, every byte escaped (3 bytes each); the
# factor 4 leaves room for values stored under a larger limit than today's, so that no state a
# node holds becomes unwritable, while still bounding what a reader buffers (~12 MiB).
MAX_SNAPSHOT_LINE_BYTES: Final = 4 * 3 * (MAX_KEY_BYTES + MAX_VALUE_BYTES) + 64

# Every number fits a signed 64-bit integer, like terms and indexes everywhere else
# (raftkv/core/validation.py), and a longer digit string is refused before int() sees it.
_MAX_UINT: Final = 2**63 - 1
_MAX_UINT_DIGITS: Final = len(str(_MAX_UINT))
# How much encode_snapshot joins into one chunk: big enough that a write is one system call
# per MiB, small enough that the writer's extra memory stays negligible beside the map.
_CHUNK_BYTES: Final = 1 << 20
# The most characters of keys and values `_key_blocks` formats in one block (unless one line
# holds more): a chunk is at most 4 × this (UTF-8) plus one line longer than _CHUNK_BYTES.
_BLOCK_CHARS: Final = 16 * 1024
_READ_BYTES: Final = 1 << 20
# At most this many MEMBER lines (the core's bound on a configuration a peer sends).
MAX_SNAPSHOT_MEMBERS: Final = MAX_MEMBERS
# Keys sorted in one C call (~1 ms for ordinary keys), between two rests of the encoder.
_SORT_RUN: Final = 4096
# The share of a slice's wall time below which the encoding thread is taken to have waited
# for the GIL or a core: the loop (or the machine) is busy, and `Pace` rests.
_IDLE_CPU_SHARE: Final = 0.8
# The duty a node's own snapshot write keeps to while its node is busy, and the most it rests
# in all (`Pace`): 1,000 keys take ~1.5 ms of CPU, written over ~150 ms; a million take ~1.5 s,
# written over ~6.5 s (at 7,000 SETs/s the log grows by ~45,000 entries meanwhile).
NODE_SNAPSHOT_DUTY: Final = 0.01
NODE_SNAPSHOT_MAX_REST: Final = 5.0

_HEADER_NAMES: Final = (
    _MAGIC,
    "lastIndex",
    "lastTerm",
    "clusterId",
    "clusterTime",
    "keys",
    "sessions",
)
# Version 2's header: the same, then the number of MEMBER lines.
_HEADER_NAMES_V2: Final = (*_HEADER_NAMES, "members")
_END_PREFIX: Final = b"END crc="
_CRC_RE: Final = re.compile(rb"[0-9a-f]{8}")

# A client session as the state machine keeps it: (seq, index, last_active_ms). This file only
# stores the three numbers; what they mean is the state machine's business.
SessionRecord = tuple[int, int, int]


class SnapshotCorruption(StorageCorruption):
    """A snapshot (a file, or a stream from a peer) holds data no node could have written.

    A `StorageCorruption`, so the shell's handling of damaged node files covers it; the
    message is ``corrupt data in <source>, line N: <problem>``.
    """


@dataclass(frozen=True, slots=True)
class SnapshotHeader:
    """What a snapshot says about itself; the constructor refuses what no file may hold, so
    that a header in hand is always one the writer can write and the reader would accept."""

    last_index: int
    last_term: int
    cluster_id: str
    cluster_time: int

    def __post_init__(self) -> None:
        _check_bounded(self.last_index, "last_index", 1)
        _check_bounded(self.last_term, "last_term", 1)
        _check_bounded(self.cluster_time, "cluster_time", 0)
        if not isinstance(self.cluster_id, str):
            raise ValueError(f"cluster_id must be a str, got {self.cluster_id!r}")


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """What `write_snapshot_file` wrote: enough to log it and to compare it with a peer's."""

    header: SnapshotHeader
    keys: int
    sessions: int
    size: int
    crc: int


@dataclass(frozen=True, slots=True)
class LoadedSnapshot:
    """A snapshot that passed every check. The maps are persistent (`immutables.Map`), the
    type the state machine keeps, so loading hands them over without a copy."""

    header: SnapshotHeader
    data: immutables.Map[str, str]
    sessions: immutables.Map[str, SessionRecord]
    size: int
    crc: int
    # The configuration at last_index (version 2); None: the cluster's first one (version 1).
    membership: Membership | None = None

    def image(self) -> SnapshotImage:
        """The core's view of this snapshot (what a loaded or received snapshot hands it), its
        derived indexes sorted here: this runs in the thread that read the file, so the core
        builds its machine from it without sorting on the Raft loop."""
        header = self.header
        return prepare(
            SnapshotImage(
                header.last_index,
                header.last_term,
                self.data,
                self.sessions,
                header.cluster_time,
                membership=self.membership,
            )
        )


# ---------------------------------------------------------------------------------------------
# Writing.


@dataclass(slots=True)
class _Totals:
    """What the encoder counted, for `write_snapshot_file`'s SnapshotInfo."""

    size: int = 0
    crc: int = 0


class Pace:
    """How a worker thread that encodes a snapshot shares the GIL with the event loop.

    `rest` is called after every slice of work (a run of keys sorted, a batch of lines formatted,
    each at most ~1 ms). It always lets the GIL go (``sleep(0)``, so a waiting loop takes it at
    once). While the node is busy — `busy()` says so (its node is taking entries), or the slice
    shows it: the thread had the CPU for less than `_IDLE_CPU_SHARE` of its wall time, i.e. it
    waited for the GIL or for a core — it also rests long enough that its work (its CPU time)
    takes at most `duty` of the wall time. A snapshot of a large state then costs a busy node
    ~`duty` of its throughput while it is written, instead of half of it (measured: 50,000
    keys, C=64 pipelined SETs, 0.45× inside the windows without pacing), and three nodes on one
    machine do not take a third of its CPU at once. On an idle node it runs at full speed.
    Resting ends early once `stop` is set, and for good once it added up to `max_rest` s: a
    large snapshot must still end, or the log it lets the node compact grows meanwhile.
    """

    def __init__(
        self,
        duty: float = 1.0,
        stop: threading.Event | None = None,
        busy: Callable[[], bool] | None = None,
        max_rest: float = math.inf,
    ) -> None:
        if not 0.0 < duty <= 1.0:
            raise ValueError(f"duty must be in (0, 1], got {duty!r}")
        if not max_rest >= 0.0:
            raise ValueError(f"max_rest must be ≥ 0, got {max_rest!r}")
        self.duty = duty
        self.max_rest = max_rest
        self._stop = stop
        self._busy = busy
        self.rested = 0.0
        self._wall = time.monotonic()
        self._cpu = time.thread_time()

    def rest(self) -> None:
        wall = time.monotonic() - self._wall
        cpu = time.thread_time() - self._cpu
        pause = 0.0
        waited = cpu < _IDLE_CPU_SHARE * wall
        if self.duty < 1.0 and wall > 0.0 and (waited or (self._busy is not None and self._busy())):
            # By the thread's CPU time, not the slice's wall time: what the loop lost is the time
            # this thread held the GIL, not the time it waited for it.
            pause = min(cpu * (1.0 - self.duty) / self.duty, self.max_rest - self.rested)
        if self._stop is None:
            time.sleep(pause)
        elif not self._stop.is_set():
            self._stop.wait(pause) if pause > 0 else time.sleep(0)
        self.rested += pause
        self._wall = time.monotonic()
        self._cpu = time.thread_time()


def encode_snapshot(
    header: SnapshotHeader,
    data: Mapping[str, str],
    sessions: Mapping[str, SessionRecord],
    *,
    yield_every: int = 100,
    membership: Membership | None = None,
) -> Iterator[bytes]:
    """The bytes of the snapshot file for this state, in chunks of about 1 MiB; the last chunk
    ends with the END line.

    Meant for a worker thread: it calls ``time.sleep(0)`` after sorting every `_SORT_RUN` keys
    and after formatting every `yield_every` keys or sessions, so that the event loop gets the
    GIL back while a large map is encoded. Raises ValueError (before
    the END line, so no complete file results) for anything the reader would refuse: a key,
    value or client id that is not a str or holds a lone surrogate, a session that is not
    three ints in 0..2**63−1, a line longer than `MAX_SNAPSHOT_LINE_BYTES`. `data` and
    `sessions` must not change while the iterator runs (an `immutables.Map` cannot).
    """
    if type(yield_every) is not int or yield_every < 1:
        raise ValueError(f"yield_every must be an int ≥ 1, got {yield_every!r}")
    return _encode(header, data, sessions, yield_every, _Totals(), Pace(), membership)


def _encode(
    header: SnapshotHeader,
    data: Mapping[str, str],
    sessions: Mapping[str, SessionRecord],
    yield_every: int,
    totals: _Totals,
    pace: Pace,
    membership: Membership | None = None,
) -> Iterator[bytes]:
    pending: list[bytes] = []
    pending_bytes = 0
    crc = 0
    size = 0

    def flush() -> bytes:
        nonlocal pending, pending_bytes, crc, size
        chunk = b"".join(pending)
        crc = zlib.crc32(chunk, crc)
        size += len(chunk)
        pending, pending_bytes = [], 0
        return chunk

    version = FORMAT_VERSION if membership is None else MEMBERSHIP_FORMAT_VERSION
    head = (
        f"{_MAGIC} {version}\n"
        f"lastIndex {header.last_index}\n"
        f"lastTerm {header.last_term}\n"
        f"clusterId {escape_field(header.cluster_id)}\n"
        f"clusterTime {header.cluster_time}\n"
        f"keys {len(data)}\n"
        f"sessions {len(sessions)}\n"
    ).encode()
    if membership is not None:
        head += f"members {len(membership.members)}\n".encode()
    pending.append(head)
    pending_bytes += len(head)
    # Both sorted before the first line: a key or client id that is not a str fails the write
    # before anything is written.
    keys = _sorted_str_keys(data, "key", pace)
    client_ids = _sorted_str_keys(sessions, "client id", pace)
    while batch := list(islice(keys, yield_every)):
        for block in _key_blocks(batch, data):
            pending.append(block)
            pending_bytes += len(block)
            if pending_bytes >= _CHUNK_BYTES:
                yield flush()
        pace.rest()
    while batch := list(islice(client_ids, yield_every)):
        for client_id in batch:
            seq, index, last_active_ms = _check_session(client_id, sessions[client_id])
            line = f"SESSION {escape_field(client_id)} {seq} {index} {last_active_ms}\n".encode()
            _check_line_length(line, f"the session of {preview(client_id)}")
            pending.append(line)
            pending_bytes += len(line)
            if pending_bytes >= _CHUNK_BYTES:
                yield flush()
        pace.rest()
    if membership is not None:
        for member in membership.members:
            kind = "voter" if member.voter else "learner"
            line = (
                f"MEMBER {member.node_id} {kind} {escape_field(member.client_address)} "
                f"{escape_field(member.peer_address)}\n"
            ).encode()
            pending.append(line)
    last = flush()
    end = _END_PREFIX + f"{crc:08x}\n".encode()
    totals.size, totals.crc = size + len(end), crc
    yield last + end


def _key_blocks(keys: list[str], data: Mapping[str, str]) -> Iterator[bytes]:
    """The KEY lines of `keys`, in blocks of several lines (at most `_BLOCK_CHARS` characters of
    keys and values, or one line) when no key or value needs escaping, else one line each.

    Checking and formatting a block at once costs ~1 µs per key of ordinary text instead of
    ~2.5 one by one, and on one machine three nodes write their snapshots at the same index:
    this CPU is taken from the SETs of all of them at once."""
    values = [data[key] for key in keys]
    if not all(type(value) is str for value in values):
        yield from map(_key_line, keys, values)
        return
    sizes = list(accumulate(map(add, map(len, keys), map(len, values))))
    start = 0
    while start < len(keys):
        base = sizes[start - 1] if start else 0
        end = max(start + 1, bisect.bisect_right(sizes, base + _BLOCK_CHARS, lo=start))
        block_keys, block_values = keys[start:end], values[start:end]
        block = _plain_key_lines(block_keys, block_values, sizes[end - 1] - base)
        if block is None:
            yield from map(_key_line, block_keys, block_values)
        else:
            yield block
        start = end


def _plain_key_lines(keys: list[str], values: list[str], chars: int) -> bytes | None:
    """These KEY lines, when no key or value needs escaping or checking beyond what a few scans
    of their concatenation show; None when one might."""
    # A character is at most 4 UTF-8 bytes: no line can be longer than this bound.
    if not (all(keys) and all(values)) or 4 * chars + 6 > MAX_SNAPSHOT_LINE_BYTES:
        return None
    if not is_plain("".join(keys)) or not is_plain("".join(values)):
        return None
    # isprintable() is false for lone surrogates, so this encodes.
    lines = [f"KEY {key} {value}\n" for key, value in zip(keys, values, strict=True)]
    return "".join(lines).encode()


def _key_line(key: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"the value of key {preview(key)} is not a str: {value!r}")
    line = f"KEY {escape_field(key)} {escape_field(value)}\n".encode()
    if len(line) - 1 > MAX_SNAPSHOT_LINE_BYTES:
        _check_line_length(line, f"key {preview(key)}")
    return line


def _sorted_str_keys(mapping: Mapping[str, object], name: str, pace: Pace) -> Iterator[str]:
    """The keys of `mapping` in Python's str order (code points, the order the reader checks).

    Sorted in runs of `_SORT_RUN` keys, each a short C call with a rest after it, then merged
    lazily: one ``sorted()`` of a million keys would hold the GIL for ~1 s."""
    source = iter(mapping)
    runs: list[list[str]] = []
    while run := list(islice(source, _SORT_RUN)):
        for key in run:
            if not isinstance(key, str):
                raise ValueError(f"every {name} must be a str, got {key!r}")
        run.sort()
        runs.append(run)
        pace.rest()
    if len(runs) == 1:
        return iter(runs[0])
    return heapq.merge(*runs)


def _check_session(client_id: str, record: object) -> SessionRecord:
    if not (isinstance(record, tuple) and len(record) == 3):
        raise ValueError(
            f"the session of {preview(client_id)} must be (seq, index, last_active_ms), "
            f"got {record!r}"
        )
    seq, index, last_active_ms = record
    for value, name in ((seq, "seq"), (index, "index"), (last_active_ms, "last_active_ms")):
        _check_bounded(value, f"the session of {preview(client_id)}: {name}", 0)
    return seq, index, last_active_ms


def _check_bounded(value: object, name: str, low: int) -> None:
    if type(value) is not int or not low <= value <= _MAX_UINT:
        raise ValueError(f"{name} must be an int in {low}..{_MAX_UINT}, got {value!r}")


def _check_line_length(line: bytes, what: str) -> None:
    if len(line) - 1 > MAX_SNAPSHOT_LINE_BYTES:
        raise ValueError(
            f"the line for {what} is {len(line) - 1} bytes; a snapshot line may have at most "
            f"{MAX_SNAPSHOT_LINE_BYTES}"
        )


def snapshot_tmp_path(path: Path) -> Path:
    """Where `write_snapshot_tmp` writes the snapshot meant for `path`: ``<path>.tmp``."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


def write_snapshot_tmp(
    path: Path,
    header: SnapshotHeader,
    data: Mapping[str, str],
    sessions: Mapping[str, SessionRecord],
    *,
    stop: threading.Event | None = None,
    duty: float = 1.0,
    busy: Callable[[], bool] | None = None,
    max_rest: float = math.inf,
    membership: Membership | None = None,
) -> SnapshotInfo:
    """Write this state to ``<path>.tmp`` (mode 0600) and fdatasync it, leaving `path` alone:
    the first half of `write_snapshot_file`, for a caller that renames it under its own lock
    (`raftkv.server.storage.NodeStorage.save_snapshot`).

    On any failure the temporary file is removed; an OSError becomes `StorageError` naming the
    file and the system's reason, and a ValueError from `encode_snapshot` (a value no file may
    hold) is raised as it is. Once `stop` is set, the write ends before its next chunk (about
    1 MiB) with `SnapshotWriteStoppedError`. While the thread finds the GIL busy, the encoding
    or `busy()` is true, the encoding keeps to `duty` of the wall time, resting `max_rest` s at
    most (`Pace`).
    """
    path = Path(path)
    tmp_path = snapshot_tmp_path(path)
    totals = _Totals()
    try:
        fd = os.open(tmp_path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    except OSError as exc:
        raise StorageError(f"writing {path} failed: cannot create {tmp_path}: {exc}") from exc
    try:
        try:
            pace = Pace(duty, stop, busy, max_rest)
            for chunk in _encode(header, data, sessions, 1000, totals, pace, membership):
                # Checked between chunks so that a stopping node's shutdown waits for one chunk,
                # not the whole state: it must wait for this thread (and the removal of the
                # temporary file) before it releases the directory's lock.
                if stop is not None and stop.is_set():
                    raise SnapshotWriteStoppedError(f"writing {path} stopped")
                _write_all(fd, chunk)
            os.fdatasync(fd)
        finally:
            os.close(fd)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(exc, OSError):
            raise StorageError(f"writing {path} failed: {exc}") from exc
        raise
    return SnapshotInfo(header, len(data), len(sessions), totals.size, totals.crc)


def write_snapshot_file(
    path: Path,
    header: SnapshotHeader,
    data: Mapping[str, str],
    sessions: Mapping[str, SessionRecord],
) -> SnapshotInfo:
    """Replace the snapshot at `path` with this state, durably; returns once the new file and
    its name are on disk.

    Written to ``<path>.tmp`` (mode 0600), fdatasync'ed (`write_snapshot_tmp`), renamed over
    `path`, the directory fsync'ed: until the rename the previous snapshot stays whole under
    `path`, and after it the new one is complete (a crash in between leaves one or the other,
    never a mix). On any failure the temporary file is removed and the previous snapshot is
    untouched; an OSError becomes `StorageError` naming the file and the system's reason, and a
    ValueError from `encode_snapshot` (a value no file may hold) is raised as it is.

    No lock: the caller makes sure only one snapshot of a directory is written at a time (a
    node's snapshots go through `NodeStorage.save_snapshot`, which does).
    """
    path = Path(path)
    tmp_path = snapshot_tmp_path(path)
    info = write_snapshot_tmp(path, header, data, sessions)
    try:
        os.replace(tmp_path, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise StorageError(f"writing {path} failed: {exc}") from exc
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        # The new file is in place but its name may not be durable: as after any failed
        # sync, only a restart that re-reads the directory is safe.
        raise StorageError(f"writing {path} failed: syncing {path.parent}: {exc}") from exc
    return info


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# ---------------------------------------------------------------------------------------------
# Reading.


class SnapshotReader:
    """Parses a snapshot fed in chunks split anywhere (mid-line included); `finish` returns it.

    Each complete line is checked as it arrives, so a bad snapshot fails at its first bad
    line, and the reader holds at most one incomplete line (refused past
    `MAX_SNAPSHOT_LINE_BYTES`) besides the maps it builds. `source` names the file or the
    sender in error messages. After an error, the reader is unusable (every call raises).
    """

    def __init__(self, source: str | os.PathLike[str] = SNAPSHOT_FILE_NAME) -> None:
        self._source = os.fspath(source)
        self._pending = bytearray()
        # Lines completed so far; the next complete line is line `_line_no + 1`.
        self._line_no = 0
        self._size = 0
        self._crc = 0
        self._header_values: list[str | int] = []
        self._header: SnapshotHeader | None = None
        self._expected_keys = 0
        self._expected_sessions = 0
        # Version 2: the MEMBER lines the header announces, and those read so far.
        self._version = FORMAT_VERSION
        self._expected_members = 0
        self._members: list[Member] = []
        self._data = immutables.Map[str, str]().mutate()
        self._sessions = immutables.Map[str, SessionRecord]().mutate()
        # The numbers of KEY and SESSION lines so far (a MapMutation has no typed len()).
        self._keys = 0
        self._session_count = 0
        self._last_key: str | None = None
        self._last_client: str | None = None
        self._ended = False
        self._failure: SnapshotCorruption | None = None
        self._finished = False

    def feed(self, data: bytes) -> None:
        """Take the next bytes; raises SnapshotCorruption at the first bad line in them."""
        self._check_usable()
        if not data:
            return
        try:
            self._feed(data)
        except SnapshotCorruption as exc:
            self._failure = exc
            raise

    @property
    def header(self) -> SnapshotHeader | None:
        """The header, once its lines have been fed (None before): what a snapshot says it
        holds, known before the rest of it is read."""
        return self._header

    def finish(self) -> LoadedSnapshot:
        """The snapshot, once everything has been fed: raises SnapshotCorruption if it stops
        before its END line (a truncated file or stream)."""
        self._check_usable()
        self._finished = True
        if self._pending:
            raise self._corrupt(
                self._line_no + 1,
                f"last line has no newline (truncated?): {_preview_bytes(self._pending)}",
            )
        if not self._ended:
            raise self._corrupt(self._line_no + 1, f"no END line (truncated?): {self._missing()}")
        header = self._header
        if header is None:  # pragma: no cover - the END line is only accepted after a header
            raise self._corrupt(self._line_no, "no header")
        membership = None
        if self._version == MEMBERSHIP_FORMAT_VERSION:
            membership = Membership(tuple(self._members))  # checked line by line
        return LoadedSnapshot(
            header,
            self._data.finish(),
            self._sessions.finish(),
            self._size,
            self._crc,
            membership=membership,
        )

    # -- internals -----------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._finished:
            raise ValueError("the SnapshotReader has finished; make a new one")

    def _corrupt(self, line_no: int, problem: str) -> SnapshotCorruption:
        exc = SnapshotCorruption(self._source, line_no, problem)
        self._failure = exc
        return exc

    def _feed(self, data: bytes) -> None:
        if self._ended:
            raise self._corrupt(self._line_no + 1, "data after the END line")
        self._size += len(data)
        pending = self._pending
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline == -1:
                break
            if pending:
                pending += data[start:newline]
                line = bytes(pending)
                pending.clear()
            else:
                line = data[start:newline]
            start = newline + 1
            self._line(line)
            if self._ended and start < len(data):
                raise self._corrupt(self._line_no + 1, "data after the END line")
        rest = len(data) - start
        if rest:
            if len(pending) + rest > MAX_SNAPSHOT_LINE_BYTES:
                raise self._corrupt(self._line_no + 1, self._too_long(len(pending) + rest))
            pending += data[start:]

    def _too_long(self, length: int) -> str:
        return (
            f"line is longer than {MAX_SNAPSHOT_LINE_BYTES} bytes (at least {length}), more than "
            "any snapshot line can be"
        )

    def _line(self, raw: bytes) -> None:
        """One complete line, without its newline."""
        self._line_no += 1
        line_no = self._line_no
        if len(raw) > MAX_SNAPSHOT_LINE_BYTES:
            raise self._corrupt(line_no, self._too_long(len(raw)))
        if raw == b"END" or raw.startswith(b"END "):
            self._end(raw, line_no)
            return
        self._crc = zlib.crc32(b"\n", zlib.crc32(raw, self._crc))
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._corrupt(line_no, f"not valid UTF-8 at byte {exc.start}") from None
        try:
            if self._header is None:
                self._header_line(line)
            else:
                self._body_line(line)
        except ValueError as exc:
            raise self._corrupt(line_no, str(exc)) from None

    def _header_names(self) -> tuple[str, ...]:
        return _HEADER_NAMES_V2 if self._version == MEMBERSHIP_FORMAT_VERSION else _HEADER_NAMES

    def _header_line(self, line: str) -> None:
        index = len(self._header_values)
        names = self._header_names()
        expected = names[index]
        fields = line.split(" ")
        if fields[0] != expected:
            what = "the first line" if index == 0 else "the header"
            raise ValueError(f"expected {expected!r} in {what}, got {preview(line)}")
        if len(fields) != 2:
            raise ValueError(f"expected '{expected} <value>', got {preview(line)}")
        value = fields[1]
        parsed: str | int
        if index == 0:
            if value not in (str(FORMAT_VERSION), str(MEMBERSHIP_FORMAT_VERSION)):
                raise ValueError(
                    f"unsupported snapshot format version {preview(value)} "
                    f"(this node reads versions {FORMAT_VERSION} and {MEMBERSHIP_FORMAT_VERSION})"
                )
            parsed = int(value)
            self._version = parsed
            names = self._header_names()
        elif expected == "clusterId":
            parsed = _unescape(value, "clusterId")
        else:
            parsed = _parse_bounded(value, expected, 1 if expected.startswith("last") else 0)
        self._header_values.append(parsed)
        if len(self._header_values) == len(names):
            _, last_index, last_term, cluster_id, cluster_time, keys, sessions, *members = (
                self._header_values
            )
            if members:
                self._expected_members = int(members[0])
                if not 1 <= self._expected_members <= MAX_SNAPSHOT_MEMBERS:
                    raise ValueError(
                        f"members must be in 1..{MAX_SNAPSHOT_MEMBERS}, got {members[0]}"
                    )
            # The types are fixed by the branches above.
            self._header = SnapshotHeader(
                int(last_index), int(last_term), str(cluster_id), int(cluster_time)
            )
            self._expected_keys, self._expected_sessions = int(keys), int(sessions)

    def _body_line(self, line: str) -> None:
        kind, *fields = line.split(" ")
        if kind == "KEY":
            if len(fields) != 2:
                raise ValueError(f"a KEY line has 3 fields, this one {len(fields) + 1}")
            if self._session_count:
                raise ValueError("KEY line after a SESSION line (keys come first)")
            if self._keys >= self._expected_keys:
                raise ValueError(f"more KEY lines than the header's keys {self._expected_keys}")
            key = _unescape(fields[0], "key")
            if self._last_key is not None and key <= self._last_key:
                order = "repeats" if key == self._last_key else "sorts before"
                raise ValueError(
                    f"key {preview(key)} {order} the previous key (keys are sorted and unique)"
                )
            self._data[key] = _unescape(fields[1], "value")
            self._keys += 1
            self._last_key = key
        elif kind == "SESSION":
            if len(fields) != 4:
                raise ValueError(f"a SESSION line has 5 fields, this one {len(fields) + 1}")
            if self._keys < self._expected_keys:
                raise ValueError(
                    f"SESSION line after {self._keys} KEY lines; the header says "
                    f"keys {self._expected_keys}"
                )
            if self._session_count >= self._expected_sessions:
                raise ValueError(
                    f"more SESSION lines than the header's sessions {self._expected_sessions}"
                )
            client_id = _unescape(fields[0], "client id")
            if self._last_client is not None and client_id <= self._last_client:
                order = "repeats" if client_id == self._last_client else "sorts before"
                raise ValueError(
                    f"client id {preview(client_id)} {order} the previous one (sessions are "
                    "sorted and unique)"
                )
            self._sessions[client_id] = (
                _parse_bounded(fields[1], "seq", 0),
                _parse_bounded(fields[2], "index", 0),
                _parse_bounded(fields[3], "lastActiveMs", 0),
            )
            self._session_count += 1
            self._last_client = client_id
        elif kind == "MEMBER" and self._version == MEMBERSHIP_FORMAT_VERSION:
            self._member_line(fields)
        else:
            raise ValueError(f"expected a KEY, SESSION or END line, got {preview(line)}")

    def _member_line(self, fields: list[str]) -> None:
        if len(fields) != 4:
            raise ValueError(f"a MEMBER line has 5 fields, this one {len(fields) + 1}")
        if self._keys < self._expected_keys or self._session_count < self._expected_sessions:
            raise ValueError(
                f"MEMBER line before the header's KEY and SESSION lines: {self._missing()}"
            )
        if len(self._members) >= self._expected_members:
            raise ValueError(
                f"more MEMBER lines than the header's members {self._expected_members}"
            )
        node_id = _parse_bounded(fields[0], "member id", 0)
        if node_id > MAX_NODE_ID:
            raise ValueError(f"member id {node_id} is above {MAX_NODE_ID}")
        if self._members and node_id <= self._members[-1].node_id:
            raise ValueError(f"member {node_id} is not after member {self._members[-1].node_id}")
        if fields[1] not in ("voter", "learner"):
            raise ValueError(f"a member is a voter or a learner, got {preview(fields[1])}")
        self._members.append(
            Member(
                node_id,
                voter=fields[1] == "voter",
                client_address=_address(fields[2], "client address"),
                peer_address=_address(fields[3], "peer address"),
            )
        )

    def _end(self, raw: bytes, line_no: int) -> None:
        if self._header is None:
            expected = self._header_names()[len(self._header_values)]
            raise self._corrupt(line_no, f"END line inside the header (expected {expected!r})")
        missing = self._missing()
        if missing:
            raise self._corrupt(line_no, f"END line too early: {missing}")
        if not raw.startswith(_END_PREFIX):
            raise self._corrupt(
                line_no, f"expected 'END crc=<8 hex digits>', got {_preview_bytes(raw)}"
            )
        stored = raw[len(_END_PREFIX) :]
        if not _CRC_RE.fullmatch(stored):
            raise self._corrupt(
                line_no, f"checksum {_preview_bytes(stored)} is not 8 lowercase hex digits"
            )
        if int(stored, 16) != self._crc:
            raise self._corrupt(
                line_no,
                f"checksum mismatch: stored {stored.decode()}, computed {self._crc:08x}",
            )
        self._ended = True

    def _missing(self) -> str:
        """What the lines so far lack before an END line may come ('' when nothing)."""
        if self._header is None:
            return f"the header stops before {self._header_names()[len(self._header_values)]!r}"
        if self._keys < self._expected_keys:
            return f"{self._keys} KEY lines of the header's {self._expected_keys}"
        if self._session_count < self._expected_sessions:
            return f"{self._session_count} SESSION lines of the header's {self._expected_sessions}"
        if len(self._members) < self._expected_members:
            return f"{len(self._members)} MEMBER lines of the header's {self._expected_members}"
        if self._members and not any(m.voter for m in self._members):
            return "no MEMBER line is a voter"
        return ""


def _address(token: str, name: str) -> str:
    address = _unescape(token, name)
    if len(address) > MAX_ADDRESS_CHARS:
        raise ValueError(f"a {name} of {len(address)} characters (at most {MAX_ADDRESS_CHARS})")
    return address


def _unescape(token: str, name: str) -> str:
    try:
        return unescape_field(token)
    except ValueError as exc:
        raise ValueError(f"bad {name} {preview(token)}: {exc}") from None


def _parse_bounded(token: str, name: str, low: int) -> int:
    # The length check first: int() of a megabyte of digits is slow, and above 4300 digits
    # Python refuses it with a message that would not name the field.
    if len(token) > _MAX_UINT_DIGITS or not UINT_RE.fullmatch(token):
        raise ValueError(f"{name} {preview(token)} is not an unsigned decimal integer")
    value = int(token)
    if not low <= value <= _MAX_UINT:
        raise ValueError(f"{name} {value} is outside {low}..{_MAX_UINT}")
    return value


def _preview_bytes(raw: bytes | bytearray) -> str:
    return preview(bytes(raw[:64]).decode("utf-8", "backslashreplace"))


def read_snapshot_file(path: Path) -> LoadedSnapshot | None:
    """The snapshot at `path`, checked whole (SnapshotCorruption otherwise), or None when
    there is none. An OSError other than a missing file becomes StorageError."""
    path = Path(path)
    reader = SnapshotReader(path)
    try:
        with path.open("rb") as file:
            while chunk := file.read(_READ_BYTES):
                reader.feed(chunk)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc
    return reader.finish()
