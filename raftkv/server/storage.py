"""Durable per-node storage: the Raft log (``logs.txt``), the hard state (``metadata.txt``) and
the snapshot (``snapshot.txt``, format in `raftkv.server.snapshot_file`).

The files live in one data directory per node, conventionally ``logs_node_<id>/``
(see `node_data_dir`). This module is plain blocking code: the asyncio shell runs its methods
in a worker thread (``asyncio.to_thread``); an internal lock serialises concurrent callers, but
the caller must still await one call before issuing the next if their order matters.

``logs.txt`` — one Raft log entry per line, in index order without gaps; entry ``i`` on line
``i`` until the log is compacted (below), after which the first line may hold any index::

    SET user:1 hello%20world 3 client=abc seq=7 index=1 crc=12e590c5
    SET greeting %- 3 client=%- seq=0 index=2 crc=695fa2ce
    NO-OP 4 index=3 crc=2fdbac7e
    SET naïve%20key a%3Db%25c%0Ad%09日本%E2%80%A8 5 client=%- seq=0 index=4 crc=dc02b4d0
    DEL user:1 5 client=abc seq=8 index=5 crc=65377292

  * ``SET <key> <value> <term> client=<client id> seq=<seq> index=<i> crc=<crc>``,
    ``DEL <key> <term> client=<client id> seq=<seq> index=<i> crc=<crc>`` and
    ``NO-OP <term> index=<i> crc=<crc>``, and a configuration (docs/design.md §13):
    ``MEMBERSHIP <term> change=<change> voter=<id> client=<address> peer=<address> …
    index=<i> crc=<crc>`` with ``voter=`` or ``learner=`` and the two addresses once per member,
    in ascending id order. Fields are separated by exactly one space and all of them are always
    present; ``client=%- seq=0`` is a write without deduplication. ``<i>`` is the
    entry's log index: its line number, plus the first line's index minus 1 once compacted.
    Files written before DELETE existed simply have no DEL lines.
  * ``<term>``, ``<seq>`` and ``<i>`` are unsigned decimal integers without sign or leading
    zeros.
  * Key, value and client id are escaped (`raftkv.textformat`, shared by every file of
    a node): the UTF-8 bytes of every space, ``%``, ``=`` and every character for which
    ``str.isprintable()`` is false (control characters including newline, tab and CR, U+0085,
    U+2028, format characters, unassigned code points, …) are written as ``%XX`` (uppercase
    hex); all other characters, non-ASCII included, are written as they are, so ordinary text
    stays readable. The empty string is written as ``%-``, which no escaped
    non-empty string can produce because a literal ``%`` is always ``%25``. The decoder accepts
    any well-formed ``%XX`` sequence that yields valid UTF-8, so files stay readable by Python
    versions whose Unicode tables consider a different set of characters printable.
  * Lone surrogates (``"\\ud800"``) are not Unicode text and cannot be stored: `encode_entry`
    raises ValueError, and `NodeStorage.append_entries` encodes the whole batch before writing a
    byte, so a rejected entry leaves the file untouched. Clients cannot send them anyway:
    protobuf ``string`` fields must be valid UTF-8.
  * ``<crc>`` is ``zlib.crc32`` of the UTF-8 bytes of everything before `` crc=``, ``index=``
    included, as 8 lowercase hex digits. Every line, the last one included, ends with ``\\n``.
    Since the checksum covers the index, a line that was lost, duplicated or moved cannot pass
    for another: line ``n`` must say ``index=n`` (``index=k+n-1`` in a log starting at ``k``).

  Loading: a last line without ``\\n``, or a last line that is unparsable or fails its checksum,
  is an interrupted append (appends are fsynced before they are acknowledged, so nobody relied
  on it): it is dropped, the file is truncated after the last good line and fsynced, and
  `LoadedState.dropped_torn_line` is set (a warning is logged too). A bad line followed by any
  other line raises `StorageCorruption` naming the file, the line number and the problem: the
  node refuses to start rather than silently lose acknowledged entries. So does a line that
  parses and passes its checksum but whose ``index=`` does not follow the line before it, the
  last line included (an interrupted append cannot produce one). This is deliberately
  conservative: a crash whose unsynced pages reached the disk out of order can also produce it,
  and then an operator decides. Lines lost from the end of the file are invisible to these
  checks; the commit point below catches those that were committed.

  The old format (before ``index=``; the same lines without that field, the checksum covering
  the rest) still loads: a file whose first line has no ``index=`` field is read as the old
  format, every line must then be in it, and after the checks below it is upgraded in place —
  written in the indexed format to ``logs.txt.tmp`` (locked, fsynced), renamed over
  ``logs.txt``, the directory fsynced — and `LoadedState.upgraded_old_format` is set. A crash
  during the upgrade leaves the old file, upgraded at the next start. A file mixing both formats
  is corrupt.

  Lost data: a log holding fewer entries than metadata.txt's ``commitLength`` (lines cut, the
  file emptied or deleted), or a non-empty log without metadata.txt, raises
  `StorageDataLostError` before anything is repaired or upgraded, with a one-line message
  saying what is missing and what the operator can do. Both are sound because of the write
  order: commitLength is saved only after the log lines it counts are durable, and a fresh node
  writes its metadata.txt (term 0) before its first log line.

  Snapshots and compaction. `NodeStorage.save_snapshot` writes the state machine at index S as
  snapshot.txt; once it is durable, `NodeStorage.compact` drops the lines below an index
  c ≤ S, keeping line c as the *sentinel*: it is not a live entry (the snapshot covers it), it
  only gives the term of the entry before the first live one, which the consistency checks of
  AppendEntries and RequestVote need. `NodeStorage.reset_log` (an installed snapshot, or a tail
  that disagrees with the snapshot) leaves an empty logs.txt; the lines appended after it start
  at S + 1. Loading, with k the first line's index (`LoadedState.log_offset` and
  ``log_offset_term`` say where the live entries start):

    * no snapshot.txt: k must be 1 (offset 0), else `StorageDataLostError` ("logs.txt starts at
      index k but there is no snapshot.txt: entries 1..k−1 are missing");
    * a snapshot at S and an empty log: the offset is S with the snapshot's term;
    * k ≤ S: line k is the sentinel (offset k, its term), the live entries are the lines after
      it. This is also what a crash between a snapshot's rename and the compaction leaves (a
      whole log from k = 1 beside a new snapshot): the core, not the loader, skips the entries
      the snapshot covers, and replaces a log that disagrees with the snapshot at S;
    * k = S + 1: the log was reset to the snapshot, line k is the first live entry (offset S);
    * k > S + 1: `StorageDataLostError` ("entries S+1..k−1 are missing").

  The other checks: metadata.txt missing beside a snapshot or a non-empty log, and a
  commitLength above both the snapshot's index and the last line's, are lost data (the snapshot
  only holds committed entries); a snapshot whose clusterId is not the cluster's raises
  `ClusterIdMismatchError`; an old-format log (which predates snapshots) beside a snapshot is
  corrupt. The old-format upgrade applies only to a log from index 1 with no snapshot.

  Compaction and reset replace logs.txt like the upgrade does (`_replace_log_locked`): the kept
  lines are copied byte for byte to ``logs.txt.tmp``, which is synced and locked, renamed over
  logs.txt, and the directory is synced, so the directory lock never lapses and a crash leaves
  either the old file or the new one. A snapshot is written to ``snapshot.txt.tmp`` and synced
  without the storage's lock (appends go on meanwhile), then renamed under it unless a snapshot
  at the same or a later index got there first (the newer one wins; the stale file is deleted).
  Crash points, and why each is safe: before the snapshot's rename, the old snapshot (or none)
  and the whole log; after it, the new snapshot and the old whole log, whose first line serves
  as the sentinel; during compaction before the rename, the whole log; after it, the compacted
  log, whose sentinel the durable snapshot covers. The order makes these the only
  combinations: a log is compacted or reset only up to a snapshot already durable. `load`
  deletes the temporary files a crash leaves (``logs.txt.tmp``, ``snapshot.txt.tmp``, and the
  InstallSnapshot receiver's ``snapshot.txt.recv``), once the checks have passed.

``metadata.txt`` — ``name value`` lines, each ending with ``\\n``::

    commitLength 12
    term 4
    votedFor 2
    nodeId 1
    leaseBound 3.5
    driftBound 0.01
    incarnation 5f0c9a1e33d2b7a4
    clusterId local-5f0c9a1e
    admitted true

  ``votedFor`` is ``None`` when the node has not voted in ``term``. ``leaseBound`` and
  ``driftBound`` are the core's `HardState.lease_bound` (the longest lease the node recorded for
  a leader, rule 2) and `HardState.drift_bound` (the largest clock drift bound announced to it),
  written with ``repr()`` so that they read back exactly; a value that is not a finite decimal
  number ≥ 0, a ``leaseBound`` above ``MAX_LEASE_DURATION`` or a ``driftBound`` of 0.5 or more
  is corruption. ``incarnation`` (16 lowercase hex digits, 1..2**63−1) is random, made when the
  data directory is first used and never changed after, except by `NodeStorage.admit`
  (``raftkv restore-node``): the node's replies carry it, so a leader tells a replaced disk
  from the old one. ``clusterId`` (escaped like a key) names the cluster the directory belongs
  to: a storage opened for another cluster refuses to load (`ClusterIdMismatchError`).
  ``admitted false`` marks a directory that was empty when its node started under a cluster
  that already existed (``--initial-cluster-state existing``): that node neither votes nor
  acknowledges entries, and the line stays until ``raftkv restore-node`` rewrites the directory.

  The file is replaced atomically (write ``metadata.txt.tmp``, fsync it, ``os.replace``, fsync
  the directory). No file beside an empty log means a fresh node (term 0, no vote,
  commitLength 0, a new incarnation, admitted unless ``load(admit_if_new=False)``), and
  `NodeStorage.load` writes that state at once. A file of the previous format (only the first
  four lines) still loads, with bounds 0, admitted, and the configured cluster id; `load` then
  writes it anew with a new incarnation and that cluster id. A malformed file raises
  `StorageCorruption`, and so does a ``term`` above ``MAX_TERM`` or a ``commitLength`` above
  ``MAX_INDEX`` (``raftkv/core/validation.py``), which no node writes; a ``nodeId`` other than
  this node's raises `StorageError`. commitLength is only a hint of how much is committed (it
  may lag), but never more than the log held when it was written.

  `read_node_files` reads a directory (a running node's included) without locking or writing:
  what ``raftkv restore-node`` copies from the leader. It reads metadata.txt, then logs.txt,
  then snapshot.txt, an order in which a running node's concurrent snapshot and compaction
  cannot look like lost data (see its docstring).

Failure handling: an OSError while opening, writing or syncing (EROFS, EACCES, ENOSPC, EIO, …)
raises `StorageError` with a one-line message naming the file and the system's reason, and a
failed write makes every later call raise too. After a failed fsync the kernel may have dropped
the dirty pages and a retried fsync can report success, so the only safe recovery is a restart
that re-reads the files.

Descriptors: appends use ``logs.txt``'s descriptor, held from the start; the descriptors
opened later (the temporary files, the directory for its fsync) come through a
`DescriptorReserve` of spares, so that a process whose descriptors were all taken by client
connections still saves its metadata instead of failing with EMFILE and stopping.

The data directory is locked with ``flock`` on ``logs.txt`` so that two processes started with
the same node id cannot interleave writes.

Failpoints, for crash tests: the environment variable ``RAFTKV_FAILPOINT`` is read when a
`NodeStorage` is constructed (an unknown value raises `StorageError`):

  * ``after-log-write-before-fsync`` — the first append that writes log lines calls
    ``os._exit(137)`` after writing them and before the fsync.
  * ``after-metadata-rename-before-dirsync`` — the first `NodeStorage.save_metadata` calls
    ``os._exit(137)`` after ``os.replace`` and before the directory fsync (a fresh node's first
    metadata.txt, written by `NodeStorage.load`, does not count).
  * ``after-snapshot-write-before-rename`` — `NodeStorage.save_snapshot` calls ``os._exit(137)``
    once ``snapshot.txt.tmp`` is written and synced, before the rename.
  * ``during-log-compaction`` — `NodeStorage.compact` calls ``os._exit(137)`` once
    ``logs.txt.tmp`` is written and synced, before the rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import re
import secrets
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Final, assert_never

from raftkv.core.config import MAX_LEASE_DURATION
from raftkv.core.messages import (
    NO_OP,
    DeleteCommand,
    LogEntry,
    Member,
    Membership,
    MembershipCommand,
    NodeId,
    NoOpCommand,
    SetCommand,
)
from raftkv.core.node import HardState
from raftkv.core.state_machine import SnapshotImage
from raftkv.core.validation import MAX_INDEX, MAX_TERM
from raftkv.server.resources import DescriptorReserve
from raftkv.server.snapshot_file import (
    NODE_SNAPSHOT_DUTY,
    NODE_SNAPSHOT_MAX_REST,
    SNAPSHOT_FILE_NAME,
    LoadedSnapshot,
    SnapshotHeader,
    SnapshotInfo,
    read_snapshot_file,
    snapshot_tmp_path,
    write_snapshot_tmp,
)
from raftkv.server.storage_errors import (
    SnapshotWriteStoppedError,
    StorageCorruption,
    StorageError,
)

# Re-exported: the escaping is shared by every file of a node and lives in textformat; callers
# that know it as storage's keep working.
from raftkv.textformat import (
    EMPTY_FIELD,
    check_uint,
    escape_field,
    parse_uint,
    preview,
    unescape_field,
)

__all__ = [
    "EMPTY_FIELD",
    "FAILPOINT_ENV",
    "FAILPOINT_EXIT_CODE",
    "FAILPOINT_LOG_COMPACTION",
    "FAILPOINT_LOG_WRITE",
    "FAILPOINT_METADATA_RENAME",
    "FAILPOINT_SNAPSHOT_RENAME",
    "LOG_FILE_NAME",
    "MAX_INCARNATION",
    "METADATA_FILE_NAME",
    "SNAPSHOT_FILE_NAME",
    "SNAPSHOT_RECV_NAME",
    "ClusterIdMismatchError",
    "HardState",
    "LoadedState",
    "NodeFiles",
    "NodeStorage",
    "SnapshotWriteStoppedError",
    "StorageCorruption",
    "StorageDataLostError",
    "StorageError",
    "StoredMetadata",
    "decode_entry",
    "encode_entry",
    "escape_field",
    "new_incarnation",
    "node_data_dir",
    "read_node_files",
    "unescape_field",
]

logger = logging.getLogger(__name__)

LOG_FILE_NAME: Final = "logs.txt"
METADATA_FILE_NAME: Final = "metadata.txt"
_METADATA_TMP_NAME: Final = "metadata.txt.tmp"
_LOG_TMP_NAME: Final = "logs.txt.tmp"
_SNAPSHOT_TMP_NAME: Final = SNAPSHOT_FILE_NAME + ".tmp"
# Where the InstallSnapshot receiver streams a leader's snapshot before it is installed.
SNAPSHOT_RECV_NAME: Final = SNAPSHOT_FILE_NAME + ".recv"
# Left by a crash while one of them was being written; the file they were to replace is intact.
_STALE_TMP_NAMES: Final = (_LOG_TMP_NAME, _SNAPSHOT_TMP_NAME, SNAPSHOT_RECV_NAME)

FAILPOINT_ENV: Final = "RAFTKV_FAILPOINT"
FAILPOINT_LOG_WRITE: Final = "after-log-write-before-fsync"
FAILPOINT_METADATA_RENAME: Final = "after-metadata-rename-before-dirsync"
FAILPOINT_SNAPSHOT_RENAME: Final = "after-snapshot-write-before-rename"
FAILPOINT_LOG_COMPACTION: Final = "during-log-compaction"
FAILPOINT_EXIT_CODE: Final = 137
_FAILPOINTS: Final = (
    FAILPOINT_LOG_WRITE,
    FAILPOINT_METADATA_RENAME,
    FAILPOINT_SNAPSHOT_RENAME,
    FAILPOINT_LOG_COMPACTION,
)

_CRC_RE: Final = re.compile(r"[0-9a-f]{8}")
_CRC_SEPARATOR: Final = " crc="
_INDEX_LABEL: Final = "index="
_TIME_LABEL: Final = "ts="
_RESUME_LABEL: Final = "resume="
_METADATA_NAMES: Final = ("commitLength", "term", "votedFor", "nodeId")
# Written since issue 14; a file without them still loads (docs/design.md §5).
_METADATA_ADDED_NAMES: Final = ("leaseBound", "driftBound", "incarnation", "clusterId", "admitted")
# No node writes a term or a commit length above these (the core never goes past MAX_TERM):
# a larger value is damage, and loading it would start the node beyond what its peers accept.
_METADATA_BOUNDS: Final = {"commitLength": MAX_INDEX, "term": MAX_TERM}
# The same for the bounds (limit, whether the limit itself is allowed): the core never records a
# lease above MAX_LEASE_DURATION nor accepts a drift bound of 0.5 or more.
_FLOAT_BOUNDS: Final = {"leaseBound": (MAX_LEASE_DURATION, True), "driftBound": (0.5, False)}
# What repr() writes for a finite float ≥ 0 (and what int() writes), nothing else: no sign,
# no spaces, no "inf", "nan" or underscores, which float() would accept.
_FLOAT_RE: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?")
_INCARNATION_RE: Final = re.compile(r"[0-9a-f]{16}")
# Incarnations are below 2**63, so that signed 64-bit readers and JSON tools keep them exact.
MAX_INCARNATION: Final = 2**63 - 1


class StorageDataLostError(StorageError):
    """Data the node wrote durably is gone (a file deleted or cut short): the node must not serve.

    The message says what is missing and what the operator can do.
    """

    def __init__(self, path: str | os.PathLike[str], what: str, directory: Path) -> None:
        super().__init__(
            f"{what}. The node's data is damaged; restore {directory} from a backup, or move "
            "it away, start the node with --initial-cluster-state existing and give it the "
            "leader's log with `raftkv restore-node` (an emptied node forgets its votes and the "
            "entries it acknowledged: it must not start as a new member)."
        )
        self.path = os.fspath(path)


@dataclass(frozen=True, slots=True)
class LoadedState:
    hard_state: HardState
    # The log entries log_offset + 1, log_offset + 2, … (all of them when nothing was compacted).
    entries: list[LogEntry]
    # Never above max(snapshot index, last log index): a larger commitLength stops the load.
    commit_length: int
    dropped_torn_line: bool
    # logs.txt was in the old line format (no index=) and has been rewritten in the new one.
    upgraded_old_format: bool = False
    # The data directory's incarnation (made when it was first used, never changed after).
    incarnation: int = 0
    # The cluster the directory belongs to (None only for storage opened without one).
    cluster_id: str | None = None
    # False: the directory was empty under a cluster that already existed, and nobody has
    # restored it since (docs/design.md §5); the node must neither vote nor acknowledge.
    admitted: bool = True
    # The directory was empty: this load wrote its first metadata.txt.
    created: bool = False
    # snapshot.txt, checked whole; None when the node never took or installed one.
    snapshot: LoadedSnapshot | None = None
    # The last index not in `entries`, and its term: the log's sentinel line (compacted to it),
    # or the snapshot's last entry when the log starts right after it; 0 and 0 with no snapshot.
    # Never above the snapshot's index. The entries may still disagree with the snapshot (a
    # crash between installing a snapshot and resetting the log): the core checks that.
    log_offset: int = 0
    log_offset_term: int = 0


class ClusterIdMismatchError(StorageError):
    """The data directory belongs to another cluster than the one the node is configured for."""

    def __init__(self, path: Path, stored: str, configured: str) -> None:
        super().__init__(
            f"{path} records clusterId {stored!r} but this node is configured for cluster "
            f"{configured!r}: the data directory belongs to another cluster. Start the node "
            f"with that cluster's description (or --cluster-id {stored}), or move "
            f"{path.parent} away to join cluster {configured!r} with an empty directory"
        )
        self.stored = stored
        self.configured = configured


@dataclass(frozen=True, slots=True)
class NodeFiles:
    """A node's files as `read_node_files` found them, untouched."""

    metadata: StoredMetadata | None
    # As in LoadedState: the entries after log_offset.
    entries: list[LogEntry]
    dropped_torn_line: bool
    snapshot: LoadedSnapshot | None = None
    log_offset: int = 0
    log_offset_term: int = 0


@dataclass(slots=True)
class _ScannedLog:
    # Every line's entry, a sentinel line included; line n holds index first_index + n - 1.
    entries: list[LogEntry]
    offsets: list[int]
    # The index on the first line (1 for an empty log or one of the old format).
    first_index: int
    # Byte offset just past the last good line.
    end: int
    torn_problem: str | None
    torn_line_no: int
    old_format: bool


def node_data_dir(base: Path, node_id: NodeId) -> Path:
    return base / f"logs_node_{node_id}"


# ---------------------------------------------------------------------------------------------
# Line format.


def encode_entry(entry: LogEntry, index: int) -> str:
    """The line for `entry` at log index `index` (1-based), without the trailing newline."""
    check_uint(entry.term, "term")
    check_uint(index, "index")
    if index < 1:
        raise ValueError(f"log indexes start at 1, got {index}")
    return _with_crc(f"{_encode_body(entry)} {_INDEX_LABEL}{index}")


def _encode_body(entry: LogEntry) -> str:
    """The fields of `entry` that both line formats share: everything before index= and crc=.
    The optional fields are written only when set, so that a log without them reads as
    before: `resume=1` (the write resumes a session) and `ts=<ms>` (the cluster time)."""
    return _encode_command(entry) + _encode_options(entry)


def _encode_command(entry: LogEntry) -> str:
    command = entry.command
    if isinstance(command, SetCommand):
        check_uint(command.seq, "seq")
        return (
            f"SET {escape_field(command.key)} {escape_field(command.value)} {entry.term} "
            f"client={escape_field(command.client_id)} seq={command.seq}"
        )
    if isinstance(command, DeleteCommand):
        check_uint(command.seq, "seq")
        return (
            f"DEL {escape_field(command.key)} {entry.term} "
            f"client={escape_field(command.client_id)} seq={command.seq}"
        )
    if isinstance(command, NoOpCommand):
        return f"NO-OP {entry.term}"
    if isinstance(command, MembershipCommand):
        members = "".join(
            f" {'voter' if m.voter else 'learner'}={m.node_id}"
            f" client={escape_field(m.client_address)} peer={escape_field(m.peer_address)}"
            for m in command.membership.members
        )
        return f"MEMBERSHIP {entry.term} change={escape_field(command.change)}{members}"
    assert_never(command)


def _encode_options(entry: LogEntry) -> str:
    options = ""
    if isinstance(entry.command, SetCommand | DeleteCommand) and entry.command.resume:
        options += f" {_RESUME_LABEL}1"
    if entry.time:
        check_uint(entry.time, "ts")
        options += f" {_TIME_LABEL}{entry.time}"
    return options


def _with_crc(body: str) -> str:
    return f"{body}{_CRC_SEPARATOR}{zlib.crc32(body.encode('utf-8')):08x}"


def decode_entry(
    line: str, *, path: str, line_no: int, legacy: bool = False, index: int | None = None
) -> LogEntry:
    """Parse line `line_no` (without its newline) of a logs.txt. Raises StorageCorruption
    naming `path:line_no` if it is malformed, fails its checksum, or (lines written since the
    indexed format) holds another index than `index`, which defaults to `line_no` (a log that
    was never compacted; a compacted one starts at a later index).

    ``legacy=True`` parses the old line format, which has no index= field (see `NodeStorage.load`
    for how such files are recognised and upgraded).
    """
    entry, stored = _decode_line(line, path, line_no)
    if legacy and stored is not None:
        raise StorageCorruption(path, line_no, "has an index= field in a file of the old format")
    if not legacy:
        _check_index(stored, path, line_no, line_no if index is None else index)
    return entry


def _check_index(index: int | None, path: str, line_no: int, expected: int) -> None:
    if index is None:
        raise StorageCorruption(path, line_no, "no index= field (a line of the old format)")
    if index != expected:
        raise StorageCorruption(
            path,
            line_no,
            f"holds the entry for index {index}, not {expected}: a line before it is missing or "
            "duplicated, or lines are out of order",
        )


def _decode_line(line: str, path: str, line_no: int) -> tuple[LogEntry, int | None]:
    """Either line format; returns the entry and its index= (None: the old format)."""
    body, separator, stored = line.rpartition(_CRC_SEPARATOR)
    if not separator:
        raise StorageCorruption(path, line_no, f"no checksum field: {preview(line)}")
    if not _CRC_RE.fullmatch(stored):
        raise StorageCorruption(
            path, line_no, f"checksum {preview(stored)} is not 8 lowercase hex digits"
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
    fields = body.split(" ")
    index: int | None = None
    try:
        if fields[-1].startswith(_INDEX_LABEL):
            index = parse_uint(fields.pop()[len(_INDEX_LABEL) :], "index")
        time = 0
        if len(fields) > 1 and fields[-1].startswith(_TIME_LABEL):
            time = parse_uint(fields.pop()[len(_TIME_LABEL) :], "ts")
        resume = False
        if len(fields) > 1 and fields[-1].startswith(_RESUME_LABEL):
            if fields.pop() != f"{_RESUME_LABEL}1":
                raise ValueError("resume= must be 1 when present")
            resume = True
        entry = _parse_body(fields)
        if resume:
            if not isinstance(entry.command, SetCommand | DeleteCommand):
                raise ValueError("only a SET or DEL line can resume a session")
            entry = replace(entry, command=replace(entry.command, resume=True))
        return (replace(entry, time=time) if time else entry), index
    except ValueError as exc:
        raise StorageCorruption(path, line_no, str(exc)) from None


def _parse_body(fields: list[str]) -> LogEntry:
    match fields:
        case ["SET", key, value, term, client, seq]:
            return LogEntry(
                parse_uint(term, "term"),
                SetCommand(
                    key=_unescape_named(key, "key"),
                    value=_unescape_named(value, "value"),
                    client_id=_unescape_named(_strip_label(client, "client="), "client id"),
                    seq=parse_uint(_strip_label(seq, "seq="), "seq"),
                ),
            )
        case ["DEL", key, term, client, seq]:
            return LogEntry(
                parse_uint(term, "term"),
                DeleteCommand(
                    key=_unescape_named(key, "key"),
                    client_id=_unescape_named(_strip_label(client, "client="), "client id"),
                    seq=parse_uint(_strip_label(seq, "seq="), "seq"),
                ),
            )
        case ["NO-OP", term]:
            return LogEntry(parse_uint(term, "term"), NO_OP)
        case ["MEMBERSHIP", term, change, *members] if len(members) % 3 == 0:
            return LogEntry(
                parse_uint(term, "term"),
                MembershipCommand(
                    _parse_members(members),
                    _unescape_named(_strip_label(change, "change="), "change"),
                ),
            )
        case ["MEMBERSHIP", *_]:
            raise ValueError(
                f"MEMBERSHIP line has {len(fields)} fields, expected 3 and three per member"
            )
        case ["SET", *_]:
            raise ValueError(f"SET line has {len(fields)} fields, expected 6")
        case ["DEL", *_]:
            raise ValueError(f"DEL line has {len(fields)} fields, expected 5")
        case ["NO-OP", *_]:
            raise ValueError(f"NO-OP line has {len(fields)} fields, expected 2")
        case []:
            raise ValueError("no command before index=")
        case _:
            raise ValueError(f"unknown command {preview(fields[0])}")


def _parse_members(fields: list[str]) -> Membership:
    """`voter=<id> client=<address> peer=<address>` (or `learner=<id> …`), once per member."""
    members = []
    for at in range(0, len(fields), 3):
        kind, client, peer = fields[at : at + 3]
        label, separator, node_id = kind.partition("=")
        if not separator or label not in ("voter", "learner"):
            raise ValueError(f"expected voter=<id> or learner=<id>, got {preview(kind)}")
        members.append(
            Member(
                parse_uint(node_id, "node id"),
                voter=label == "voter",
                client_address=_unescape_named(_strip_label(client, "client="), "client address"),
                peer_address=_unescape_named(_strip_label(peer, "peer="), "peer address"),
            )
        )
    # Membership refuses an empty, unordered or voterless configuration (ValueError).
    return Membership(tuple(members))


def _unescape_named(token: str, name: str) -> str:
    try:
        return unescape_field(token)
    except ValueError as exc:
        raise ValueError(f"bad {name} {preview(token)}: {exc}") from None


def _strip_label(token: str, label: str) -> str:
    if not token.startswith(label):
        raise ValueError(f"expected {label}..., got {preview(token)}")
    return token[len(label) :]


# ---------------------------------------------------------------------------------------------
# Metadata format.


@dataclass(frozen=True, slots=True)
class StoredMetadata:
    """A parsed metadata.txt."""

    hard_state: HardState
    commit_length: int
    node_id: NodeId
    # None for a file written before these lines existed (NodeStorage.load adds them).
    incarnation: int | None = None
    cluster_id: str | None = None
    # False for a node started on an empty data directory under a cluster that already exists
    # (--initial-cluster-state existing), until `raftkv restore-node` re-admits it.
    admitted: bool = True


def new_incarnation() -> int:
    """A random incarnation for a new data directory: in 1..MAX_INCARNATION (0 means "not told"
    on the wire)."""
    return secrets.randbelow(MAX_INCARNATION) + 1


def _encode_metadata(metadata: StoredMetadata) -> str:
    hard_state = metadata.hard_state
    voted_for = "None" if hard_state.voted_for is None else str(hard_state.voted_for)
    lines = [
        f"commitLength {metadata.commit_length}",
        f"term {hard_state.term}",
        f"votedFor {voted_for}",
        f"nodeId {metadata.node_id}",
        # repr: the shortest text that reads back as exactly the same float.
        f"leaseBound {float(hard_state.lease_bound)!r}",
        f"driftBound {float(hard_state.drift_bound)!r}",
    ]
    if metadata.incarnation is not None:
        lines.append(f"incarnation {metadata.incarnation:016x}")
    if metadata.cluster_id is not None:
        lines.append(f"clusterId {escape_field(metadata.cluster_id)}")
    lines.append(f"admitted {'true' if metadata.admitted else 'false'}")
    return "".join(line + "\n" for line in lines)


def _check_metadata(metadata: StoredMetadata) -> None:
    """ValueError for a value `_parse_metadata` would refuse: nothing unreadable is written."""
    hard_state = metadata.hard_state
    check_uint(hard_state.term, "term")
    if hard_state.voted_for is not None:
        check_uint(hard_state.voted_for, "voted_for")
    check_uint(metadata.commit_length, "commit_length")
    for name, value in (
        ("leaseBound", hard_state.lease_bound),
        ("driftBound", hard_state.drift_bound),
    ):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a float, got {value!r}")
        problem = _float_problem(name, float(value))
        if problem is not None:
            raise ValueError(problem)
    incarnation = metadata.incarnation
    if incarnation is not None and not (
        type(incarnation) is int and 0 < incarnation <= MAX_INCARNATION
    ):
        raise ValueError(f"incarnation must be an int in 1..{MAX_INCARNATION}, got {incarnation!r}")


def _float_problem(name: str, value: float) -> str | None:
    if not math.isfinite(value) or value < 0:
        return f"{name} {value!r} is not a finite number ≥ 0"
    limit, inclusive = _FLOAT_BOUNDS[name]
    if value > limit or (value == limit and not inclusive):
        return f"{name} {value!r} exceeds the limit {limit}"
    return None


def _parse_float(raw: str, name: str) -> float:
    if not _FLOAT_RE.fullmatch(raw):
        raise ValueError(f"{name} {preview(raw)} is not a decimal number")
    value = float(raw)
    problem = _float_problem(name, value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _parse_incarnation(raw: str) -> int:
    if not _INCARNATION_RE.fullmatch(raw):
        raise ValueError(f"incarnation {preview(raw)} is not 16 lowercase hex digits")
    value = int(raw, 16)
    if not 0 < value <= MAX_INCARNATION:
        raise ValueError(f"incarnation {raw} is outside 1..{MAX_INCARNATION:016x}")
    return value


def _parse_metadata(data: bytes, path: Path) -> StoredMetadata:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StorageCorruption(path, None, f"not valid UTF-8 at byte {exc.start}") from None
    lines = text.split("\n")
    if lines[-1]:
        raise StorageCorruption(path, len(lines), "last line has no newline (truncated file?)")
    values: dict[str, object] = {}
    for line_no, line in enumerate(lines[:-1], start=1):
        name, separator, raw = line.partition(" ")
        if not separator:
            raise StorageCorruption(path, line_no, f"expected 'name value', got {preview(line)}")
        if name not in _METADATA_NAMES and name not in _METADATA_ADDED_NAMES:
            raise StorageCorruption(path, line_no, f"unknown name {preview(name)}")
        if name in values:
            raise StorageCorruption(path, line_no, f"{name} appears twice")
        try:
            values[name] = _parse_metadata_value(name, raw)
        except ValueError as exc:
            raise StorageCorruption(path, line_no, str(exc)) from None
    missing = [name for name in _METADATA_NAMES if name not in values]
    if missing:
        raise StorageCorruption(path, None, f"missing {', '.join(missing)}")
    commit_length, term, node_id = values["commitLength"], values["term"], values["nodeId"]
    voted_for, incarnation = values["votedFor"], values.get("incarnation")
    lease_bound, drift_bound = values.get("leaseBound", 0.0), values.get("driftBound", 0.0)
    cluster_id, admitted = values.get("clusterId"), values.get("admitted", True)
    assert isinstance(commit_length, int) and isinstance(term, int) and isinstance(node_id, int)
    assert voted_for is None or isinstance(voted_for, int)
    assert isinstance(lease_bound, float) and isinstance(drift_bound, float)
    assert incarnation is None or isinstance(incarnation, int)
    assert cluster_id is None or isinstance(cluster_id, str)
    assert isinstance(admitted, bool)
    return StoredMetadata(
        HardState(term, voted_for, lease_bound, drift_bound),
        commit_length,
        node_id,
        incarnation,
        cluster_id,
        admitted,
    )


def _parse_metadata_value(name: str, raw: str) -> object:
    """One line's value; ValueError (the message names the field) for a malformed one."""
    if name in ("leaseBound", "driftBound"):
        return _parse_float(raw, name)
    if name == "incarnation":
        return _parse_incarnation(raw)
    if name == "clusterId":
        return _unescape_named(raw, "clusterId")
    if name == "admitted":
        if raw not in ("true", "false"):
            raise ValueError(f"admitted {preview(raw)} is neither true nor false")
        return raw == "true"
    if name == "votedFor" and raw == "None":
        return None
    value = parse_uint(raw, name)
    bound = _METADATA_BOUNDS.get(name)
    if bound is not None and value > bound:
        raise ValueError(f"{name} {value} exceeds the limit {bound}")
    return value


# ---------------------------------------------------------------------------------------------
# The store.


class NodeStorage:
    """The log and hard state of one node, in `directory` (created if missing).

    Call `load` once before any write: it validates the directory's owner and learns the byte
    offset of every line, which is what makes truncation a single ``ftruncate``.
    """

    def __init__(
        self,
        directory: Path,
        node_id: NodeId,
        *,
        sync: bool = True,
        cluster_id: str | None = None,
    ) -> None:
        # sync=False is the `--unsafe-no-fsync` negative control: writes reach only the page
        # cache, so a machine crash (not a process kill) can lose acknowledged entries.
        self._sync = sync
        self._failpoint = _failpoint_from_env()
        self._directory = Path(directory)
        self._node_id = node_id
        # The cluster this node is configured for: written into a new metadata.txt (or one
        # without a clusterId line), and a metadata.txt naming another one stops the load.
        self._cluster_id = cluster_id
        # What every metadata.txt this storage writes carries besides the hard state (set by
        # `load`, changed only by `admit`).
        self._incarnation = 0
        self._stored_cluster_id: str | None = cluster_id
        self._admitted = True
        self._log_path = self._directory / LOG_FILE_NAME
        self._metadata_path = self._directory / METADATA_FILE_NAME
        self._snapshot_path = self._directory / SNAPSHOT_FILE_NAME
        self._lock = threading.Lock()
        # Held by `save_snapshot` from start to end (never with _lock waiting on it), so that two
        # snapshots never write the same temporary file at once; appends do not wait for it.
        self._snapshot_lock = threading.Lock()
        # _offsets[i] is the byte offset of the line holding log index _first_line + i.
        self._offsets: list[int] = []
        self._end = 0
        # The index of the file's first line (or of the next line appended to an empty file):
        # _log_offset when that line is a compaction's sentinel, else _log_offset + 1.
        self._first_line = 1
        # The last index the log does not hold live (the sentinel's, or the snapshot's after a
        # reset); appends and truncations start above it.
        self._log_offset = 0
        # The durable snapshot.txt's last index and term (0, 0: none).
        self._snapshot_index = 0
        self._snapshot_term = 0
        self._loaded = False
        self._failure: str | None = None
        # Every descriptor the storage opens after this one comes through it, so that a process
        # out of descriptors (a flood of client connections) still saves its metadata
        # (raftkv/server/resources.py).
        self._reserve = DescriptorReserve()

        existed = self._directory.is_dir()
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            if not existed:
                # Without this a crash could forget the directory and every file in it.
                self._fsync_directory(self._directory.parent)
            fd = self._reserve.open(self._log_path, os.O_RDWR | os.O_CREAT)
            self._reserve.refill()
        except OSError as exc:
            self._reserve.close()
            raise StorageError(f"cannot open data directory {self._directory}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self._reserve.close()
            raise StorageError(
                f"data directory {self._directory} is in use by another NodeStorage "
                f"(lock on {self._log_path} is held)"
            ) from None
        self._fd: int | None = fd
        try:
            self._fsync_directory(self._directory)
        except OSError as exc:
            self.close()
            raise StorageError(f"cannot sync data directory {self._directory}: {exc}") from exc

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def log_length(self) -> int:
        """The index of the log's last entry: its length in Raft's terms, compacted entries
        included (valid after `load`)."""
        return self._first_line + len(self._offsets) - 1

    @property
    def log_offset(self) -> int:
        """The last index the log does not hold live (0 when nothing was compacted): appends
        and truncations must start above it."""
        return self._log_offset

    @property
    def snapshot_index(self) -> int:
        """The last index of the durable snapshot.txt (0 when there is none)."""
        return self._snapshot_index

    @property
    def snapshot_term(self) -> int:
        """The term of the durable snapshot's last entry (0 when there is none)."""
        return self._snapshot_term

    def load(self, *, admit_if_new: bool = True) -> LoadedState:
        """Read metadata and log, check them against each other, then repair a torn last log
        line or upgrade a log of the old format. See the module docstring.

        `admit_if_new=False` (--initial-cluster-state existing): an empty directory is recorded
        as not admitted, and stays so across restarts until `admit` (docs/design.md §5)."""
        with self._lock:
            fd = self._open_fd()
            # Everything is checked before anything is written: a directory that belongs to
            # another node or cluster, or that has lost data, is left as it is for the operator.
            metadata = self._load_metadata()
            snapshot = read_snapshot_file(self._snapshot_path)
            if snapshot is not None:
                configured = self._cluster_id
                if configured is None and metadata is not None:
                    configured = metadata.cluster_id
                _check_snapshot_cluster(snapshot, self._snapshot_path, configured)
            header = None if snapshot is None else snapshot.header
            scanned = self._scan_log(fd)
            layout = _log_layout(scanned, header, self._log_path, self._snapshot_path)
            _check_files(
                metadata,
                layout,
                header,
                self._metadata_path,
                self._log_path,
                self._snapshot_path,
            )
            entries = layout.entries
            self._remove_stale_files()
            if metadata is None:
                metadata = StoredMetadata(
                    HardState(term=0, voted_for=None),
                    0,
                    self._node_id,
                    new_incarnation(),
                    self._cluster_id,
                    admitted=admit_if_new,
                )
                rewrite = created = True
            else:
                # A file written before incarnations and cluster ids gets them now.
                rewrite = metadata.incarnation is None or (
                    metadata.cluster_id is None and self._cluster_id is not None
                )
                created = False
                metadata = replace(
                    metadata,
                    incarnation=metadata.incarnation or new_incarnation(),
                    cluster_id=metadata.cluster_id or self._cluster_id,
                )
            assert metadata.incarnation is not None
            self._incarnation = metadata.incarnation
            self._stored_cluster_id = metadata.cluster_id
            self._admitted = metadata.admitted
            hard_state, commit_length = metadata.hard_state, metadata.commit_length
            if scanned.torn_problem is not None:
                logger.warning(
                    "%s: dropping torn last line %d (%s; %d bytes) left by an interrupted append",
                    self._log_path,
                    scanned.torn_line_no,
                    scanned.torn_problem,
                    os.fstat(fd).st_size - scanned.end,
                )
            # _log_layout refuses an old-format log beside a snapshot: this is a log from 1.
            upgraded = scanned.old_format and bool(entries)
            if upgraded:
                self._upgrade_log_locked(entries)
            else:
                if scanned.torn_problem is not None:
                    try:
                        os.ftruncate(fd, scanned.end)
                        self._sync_fd(fd)
                    except OSError as exc:
                        raise self._fail(f"repairing {self._log_path} failed: {exc}") from exc
                self._offsets = scanned.offsets
                self._end = scanned.end
            self._first_line, self._log_offset = layout.first_line, layout.offset
            if header is not None:
                self._snapshot_index, self._snapshot_term = header.last_index, header.last_term
            if rewrite:
                # A fresh node writes its metadata before its first log line, so that a log
                # without metadata.txt always means a lost file, never a crash.
                self._save_metadata_locked(hard_state, commit_length, failpoint=False)
            self._loaded = True
            return LoadedState(
                hard_state,
                entries,
                commit_length,
                scanned.torn_problem is not None,
                upgraded,
                incarnation=metadata.incarnation,
                cluster_id=metadata.cluster_id,
                admitted=metadata.admitted,
                created=created,
                snapshot=snapshot,
                log_offset=layout.offset,
                log_offset_term=layout.offset_term,
            )

    def append_entries(self, first_index: int, entries: Sequence[LogEntry]) -> None:
        """Make the log hold `entries` at indexes `first_index`, … and nothing after them.

        Entries at ``>= first_index`` are removed first (with their own fsync, so that unsynced
        new lines can never end up interleaved with old ones on disk); the new lines are then
        written and synced with one fdatasync, whatever their number. Returns once durable.
        """
        with self._lock:
            self._check_first_index(first_index)
        self.append_encoded(first_index, encode_lines(entries, first_index))

    def append_encoded(self, first_index: int, lines: Sequence[bytes]) -> None:
        """`append_entries` for lines `encode_lines` made: a caller that syncs in a worker
        thread encodes first, so that the thread needs the GIL only around its system calls."""
        with self._lock:
            fd = self._writable_fd()
            self._check_first_index(first_index)
            if lines and f" {_INDEX_LABEL}{first_index}{_CRC_SEPARATOR}".encode() not in lines[0]:
                raise ValueError(f"lines were not encoded for index {first_index}")
            if first_index <= self.log_length:
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
        """Remove the entries at log indexes ``>= index`` (1-based) and sync. `index` must be
        above `log_offset`: compacted entries (and the sentinel) are committed."""
        if index < 1:
            raise ValueError(f"log indexes start at 1, got {index}")
        with self._lock:
            fd = self._writable_fd()
            if index <= self._log_offset:
                raise ValueError(
                    f"cannot truncate from {index}: the log is compacted up to {self._log_offset}"
                )
            if index <= self.log_length:
                self._truncate_locked(fd, index)

    def save_snapshot(
        self,
        image: SnapshotImage,
        *,
        stop: threading.Event | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> SnapshotInfo | None:
        """Write `image` as snapshot.txt, durably; None (nothing changed) when the storage
        already holds a snapshot at `image.index` or later (an installed or newer snapshot won
        while this one was written).

        Meant for a worker thread while the event loop goes on appending: the file is encoded
        and synced as ``snapshot.txt.tmp`` without the storage's lock (seconds for a large
        state); only the check, the rename and the directory fsync take it. One snapshot is
        written at a time (a second call waits). The snapshot records the configured cluster
        id. Raises ValueError for a state no file may hold, StorageError for an OSError (after
        the rename, the storage is unusable, as after any failed write), and
        SnapshotWriteStoppedError once `stop` is set while the file is encoded (the temporary
        file removed: see `write_snapshot_tmp`). While `busy()` is true (the node takes
        entries) the encoding keeps to `NODE_SNAPSHOT_DUTY` of the time, resting
        `NODE_SNAPSHOT_MAX_REST` s at most."""
        header = SnapshotHeader(
            image.index,
            image.term,
            self._cluster_id or self._stored_cluster_id or "",
            image.cluster_time,
        )
        tmp_path = snapshot_tmp_path(self._snapshot_path)
        with self._snapshot_lock:
            with self._lock:
                self._writable_fd()
                if self._snapshot_index >= image.index:
                    return None
            info = write_snapshot_tmp(
                self._snapshot_path,
                header,
                image.data,
                image.sessions,
                stop=stop,
                duty=NODE_SNAPSHOT_DUTY,
                busy=busy,
                max_rest=NODE_SNAPSHOT_MAX_REST,
                membership=image.membership,
            )
            with self._lock:
                try:
                    self._writable_fd()
                    if self._snapshot_index >= image.index:
                        return None
                    if self._failpoint == FAILPOINT_SNAPSHOT_RENAME:
                        os._exit(FAILPOINT_EXIT_CODE)
                    try:
                        os.replace(tmp_path, self._snapshot_path)
                    except OSError as exc:
                        raise self._fail(f"saving {self._snapshot_path} failed: {exc}") from exc
                finally:
                    # Still there unless renamed: superseded, or the storage failed or closed.
                    with contextlib.suppress(OSError):
                        tmp_path.unlink()
                self._snapshot_index, self._snapshot_term = image.index, image.term
            # The directory fsync that makes the rename durable runs without the storage's lock:
            # appends (the leader's next batch) need not wait for it. Nothing relies on this
            # snapshot before it returns: the core compacts only once told it is saved, and an
            # install meanwhile renames and syncs on its own.
            if self._sync:
                try:
                    self._fsync_directory(self._directory)
                except OSError as exc:
                    with self._lock:
                        raise self._fail(f"saving {self._snapshot_path} failed: {exc}") from exc
            return info

    def install_received_snapshot(self, path: Path, index: int, term: int) -> None:
        """Make the snapshot a leader sent (`path`, in this directory: the receiver wrote,
        checked and fdatasync'ed it) the node's snapshot.txt, durably: rename, directory fsync.

        Takes only the storage's lock, never the one `save_snapshot` holds while it writes (an
        install must not wait for a local snapshot of seconds; that one, older, then finds this
        one in place and is dropped). `index` must be above the durable snapshot's (ValueError
        otherwise: the core installs only a snapshot beyond its commit index). The caller
        resets the log next (`reset_log`): until then a crash leaves this snapshot beside the
        old log, which the core replaces at start-up (it disagrees with the snapshot)."""
        path = Path(path)
        if path.parent != self._directory:
            raise ValueError(f"{path} is not in {self._directory}: the rename would not be atomic")
        with self._lock:
            self._writable_fd()
            if index <= self._snapshot_index:
                raise ValueError(
                    f"cannot install a snapshot at {index}: the durable one is at "
                    f"{self._snapshot_index}"
                )
            try:
                os.replace(path, self._snapshot_path)
                if self._sync:
                    self._fsync_directory(self._directory)
            except OSError as exc:
                raise self._fail(f"installing {self._snapshot_path} failed: {exc}") from exc
            self._snapshot_index, self._snapshot_term = index, term

    def compact(self, compact_to: int) -> None:
        """Drop the log lines below `compact_to`, keeping its line as the sentinel (its term is
        the one the entry after it is checked against). Durable on return.

        A no-op when the log already starts at `compact_to` or later. `compact_to` must be
        covered by the durable snapshot and held by the log (ValueError otherwise: the caller
        has a bug). The kept lines are copied unchanged to ``logs.txt.tmp``, which is synced,
        locked and renamed over logs.txt (the hand-over of `_replace_log_locked`): a crash
        leaves either the whole old log or the compacted one."""
        with self._lock:
            fd = self._writable_fd()
            if compact_to <= self._log_offset:
                return
            if compact_to > self._snapshot_index:
                raise ValueError(
                    f"cannot compact to {compact_to}: the durable snapshot ends at "
                    f"{self._snapshot_index}"
                )
            if compact_to > self.log_length:
                raise ValueError(
                    f"cannot compact to {compact_to}: the log ends at {self.log_length}"
                )
            if compact_to == self._first_line:
                # Already the first line (the log starts right after a reset): it becomes the
                # sentinel, as a reload would take it, without rewriting anything.
                self._log_offset = compact_to
                return
            keep = compact_to - self._first_line
            start, end = self._offsets[keep], self._end

            def copy_tail(tmp_fd: int) -> None:
                _copy_range(fd, start, end, tmp_fd)

            self._replace_log_locked(copy_tail, "compacting", FAILPOINT_LOG_COMPACTION)
            self._offsets = [offset - start for offset in self._offsets[keep:]]
            self._end = end - start
            self._first_line = self._log_offset = compact_to

    def reset_log(self, index: int, term: int) -> None:
        """Replace the log with an empty one after (`index`, `term`): an installed snapshot,
        or a tail that disagrees with the snapshot. The next append starts at index + 1.

        The durable snapshot must cover `index` (ValueError otherwise), so that no entry up to
        it is lost, and have `term` if it ends there. Atomic like `compact`. Reloaded, an
        empty log starts after the snapshot (which may be later than `index`)."""
        if index < 1 or term < 1:
            raise ValueError(f"a log cannot start after index {index} of term {term}")
        with self._lock:
            self._writable_fd()
            if index > self._snapshot_index:
                raise ValueError(
                    f"cannot reset the log to {index}: the durable snapshot ends at "
                    f"{self._snapshot_index}"
                )
            if index == self._snapshot_index and term != self._snapshot_term:
                raise ValueError(
                    f"cannot reset the log to index {index} of term {term}: the snapshot ends "
                    f"there with term {self._snapshot_term}"
                )
            self._replace_log_locked(lambda _fd: None, "resetting", None)
            self._offsets = []
            self._end = 0
            self._log_offset = index
            self._first_line = index + 1

    @property
    def incarnation(self) -> int:
        """The data directory's incarnation (valid after `load`)."""
        return self._incarnation

    def save_metadata(self, hard_state: HardState, commit_length: int) -> None:
        """Atomically replace metadata.txt; returns once the new file is durable."""
        _check_metadata(StoredMetadata(hard_state, commit_length, self._node_id))
        with self._lock:
            self._writable_fd()
            self._save_metadata_locked(hard_state, commit_length, failpoint=True)

    def admit(self, hard_state: HardState, commit_length: int) -> int:
        """Mark the directory admitted, under a new incarnation, with this hard state (what
        `raftkv restore-node` does once the log is in place). Returns the new incarnation."""
        _check_metadata(StoredMetadata(hard_state, commit_length, self._node_id))
        with self._lock:
            self._writable_fd()
            self._incarnation = new_incarnation()
            self._admitted = True
            self._save_metadata_locked(hard_state, commit_length, failpoint=False)
            return self._incarnation

    def _save_metadata_locked(
        self, hard_state: HardState, commit_length: int, *, failpoint: bool
    ) -> None:
        metadata = StoredMetadata(
            hard_state,
            commit_length,
            self._node_id,
            self._incarnation,
            self._stored_cluster_id,
            self._admitted,
        )
        data = _encode_metadata(metadata).encode("utf-8")
        tmp_path = self._directory / _METADATA_TMP_NAME
        try:
            with self._reserve.opened(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) as tmp_fd:
                _write_all(tmp_fd, data, 0)
                self._sync_fd(tmp_fd)
            os.replace(tmp_path, self._metadata_path)
            if failpoint and self._failpoint == FAILPOINT_METADATA_RENAME:
                os._exit(FAILPOINT_EXIT_CODE)
            if self._sync:
                self._fsync_directory(self._directory)
        except OSError as exc:
            raise self._fail(f"saving {self._metadata_path} failed: {exc}") from exc

    def _sync_fd(self, fd: int) -> None:
        if self._sync:
            _sync_file(fd)

    def _fsync_directory(self, directory: Path) -> None:
        with self._reserve.opened(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) as fd:
            os.fsync(fd)

    def close(self) -> None:
        """Release the file and the directory lock. Safe to call more than once."""
        with self._lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)
            self._reserve.close()

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

    def _check_first_index(self, first_index: int) -> None:
        low, high = self._log_offset + 1, self.log_length + 1
        if not low <= first_index <= high:
            held = f"{high - low} entries" if low == 1 else f"entries {low}..{high - 1}"
            raise ValueError(
                f"first_index {first_index} is outside {low}..{high} (the log holds {held})"
            )

    def _fail(self, reason: str) -> StorageError:
        self._failure = reason
        return StorageError(reason)

    def _truncate_locked(self, fd: int, index: int) -> None:
        # Callers keep index above _log_offset, so a sentinel line is never cut.
        position = index - self._first_line
        offset = self._offsets[position]
        try:
            os.ftruncate(fd, offset)
            self._sync_fd(fd)
        except OSError as exc:
            raise self._fail(f"truncating {self._log_path} failed: {exc}") from exc
        del self._offsets[position:]
        self._end = offset

    def _remove_stale_files(self) -> None:
        """Unlink the temporary files a crash left: each was to replace a file that is still
        whole (or that already replaced it), so nothing in them is needed."""
        for name in _STALE_TMP_NAMES:
            path = self._directory / name
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self._fail(f"removing the stale {path} failed: {exc}") from exc
            logger.info("%s: removed a temporary file left by an interrupted write", path)

    def _load_metadata(self) -> StoredMetadata | None:
        """The parsed metadata.txt, or None when there is none."""
        metadata = _read_metadata(self._metadata_path)
        if metadata is None:
            return None
        if metadata.node_id != self._node_id:
            raise StorageError(
                f"data directory {self._directory} belongs to node {metadata.node_id}, "
                f"not to node {self._node_id}"
            )
        stored, configured = metadata.cluster_id, self._cluster_id
        if stored is not None and configured is not None and stored != configured:
            raise ClusterIdMismatchError(self._metadata_path, stored, configured)
        return metadata

    def _scan_log(self, fd: int) -> _ScannedLog:
        """Parse the log without changing it; raises StorageCorruption for a bad line that is
        not a torn last line."""
        try:
            data = _read_all(fd)
        except OSError as exc:
            raise StorageError(f"cannot read {self._log_path}: {exc}") from exc
        return _scan_log_data(data, str(self._log_path))

    def _upgrade_log_locked(self, entries: list[LogEntry]) -> None:
        """Rewrite logs.txt in the indexed format (`_replace_log_locked`)."""
        lines = encode_lines(entries, 1)
        payload = b"".join(lines)
        self._replace_log_locked(lambda fd: _write_all(fd, payload, 0), "upgrading", None)
        offset = 0
        self._offsets = []
        for line in lines:
            self._offsets.append(offset)
            offset += len(line)
        self._end = offset
        logger.info(
            "%s: upgraded %d entries from the old line format to the indexed one",
            self._log_path,
            len(entries),
        )

    def _replace_log_locked(
        self, fill: Callable[[int], None], action: str, failpoint: str | None
    ) -> None:
        """Replace logs.txt with what `fill` writes into a new file: ``logs.txt.tmp``, synced,
        renamed over logs.txt, the directory synced; the storage then appends to the new file.
        The caller updates the offsets.

        The one way logs.txt is replaced (upgrade, compaction, reset). The new file is locked
        before the rename, so the directory lock never lapses: until the rename the old file
        (locked by the old descriptor) is logs.txt, after it the new one (locked by the new).
        `failpoint` fires once the new file is synced, before the rename.
        """
        tmp_path = self._directory / _LOG_TMP_NAME
        try:
            fd = self._reserve.open(tmp_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        except OSError as exc:
            raise self._fail(f"{action} {self._log_path} failed: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fill(fd)
            self._sync_fd(fd)
            if failpoint is not None and self._failpoint == failpoint:
                os._exit(FAILPOINT_EXIT_CODE)
            os.replace(tmp_path, self._log_path)
        except BaseException as exc:
            os.close(fd)
            self._reserve.refill()
            with contextlib.suppress(OSError):
                tmp_path.unlink()
            if isinstance(exc, OSError):
                raise self._fail(f"{action} {self._log_path} failed: {exc}") from exc
            raise
        old_fd, self._fd = self._fd, fd
        if old_fd is not None:
            os.close(old_fd)
        self._reserve.refill()
        try:
            if self._sync:
                self._fsync_directory(self._directory)
        except OSError as exc:
            raise self._fail(f"{action} {self._log_path} failed: {exc}") from exc


def _scan_log_data(data: bytes, path: str) -> _ScannedLog:
    """Parse a log's bytes; raises StorageCorruption for a bad line that is not a torn last
    line."""
    entries: list[LogEntry] = []
    offsets: list[int] = []
    start = 0
    line_no = 0
    torn_problem: str | None = None
    old_format: bool | None = None
    # A compacted log starts at a later index (its sentinel line); the lines after the first
    # must follow it without a gap.
    first_index = 1
    while start < len(data):
        line_no += 1
        newline = data.find(b"\n", start)
        if newline == -1:
            torn_problem = "no trailing newline"
            break
        try:
            entry, index = _decode_line_bytes(data[start:newline], path, line_no)
        except StorageCorruption as exc:
            if newline + 1 < len(data):
                raise
            torn_problem = exc.problem
            break
        # A line that parses and passes its checksum is never a torn append, so what
        # follows is checked on every line, the last one included.
        if old_format is None:
            old_format = index is None
            if index is not None:
                if index < 1:
                    raise StorageCorruption(path, line_no, "index=0: log indexes start at 1")
                first_index = index
        if old_format:
            if index is not None:
                raise StorageCorruption(
                    path, line_no, "has an index= field but line 1 is in the old format"
                )
        else:
            _check_index(index, path, line_no, first_index + line_no - 1)
        offsets.append(start)
        entries.append(entry)
        start = newline + 1
    return _ScannedLog(
        entries, offsets, first_index, start, torn_problem, line_no, bool(old_format)
    )


def _read_metadata(path: Path) -> StoredMetadata | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc
    return _parse_metadata(data, path)


@dataclass(frozen=True, slots=True)
class _LogLayout:
    """Where the scanned lines sit against the snapshot (`_log_layout`)."""

    # The last index the log does not hold live: its sentinel line's, or the snapshot's.
    offset: int
    offset_term: int
    # The entries offset + 1, … .
    entries: list[LogEntry]
    # The index of the first line in the file: offset (a sentinel line) or offset + 1.
    first_line: int
    # The index of the last line (offset when there is none after the sentinel, or no line).
    last_index: int


def _log_layout(
    scanned: _ScannedLog,
    snapshot: SnapshotHeader | None,
    log_path: Path,
    snapshot_path: Path,
) -> _LogLayout:
    """The log's offset and live entries, from its first line and the snapshot; raises
    StorageDataLostError when entries between the snapshot and the first line are missing."""
    lines, first = scanned.entries, scanned.first_index
    directory = log_path.parent
    if snapshot is None:
        if lines and first != 1:
            raise StorageDataLostError(
                log_path,
                f"{log_path} starts at index {first} but there is no {snapshot_path}: entries "
                f"1..{first - 1} are missing",
                directory,
            )
        return _LogLayout(0, 0, lines, 1, len(lines))
    last_snapshot, snapshot_term = snapshot.last_index, snapshot.last_term
    if not lines:
        # Compacted up to the snapshot, then reset (an installed snapshot): nothing after it yet.
        return _LogLayout(last_snapshot, snapshot_term, [], last_snapshot + 1, last_snapshot)
    if scanned.old_format:
        # Old-format files predate snapshots, and a node upgrades its log at the start that
        # precedes any snapshot: the pair cannot come from a node.
        raise StorageCorruption(
            log_path, 1, f"a log of the old format (no index=) beside {snapshot_path}"
        )
    last_line = first + len(lines) - 1
    if first == last_snapshot + 1:
        # Written after a reset to the snapshot: the first line is the first live entry.
        return _LogLayout(last_snapshot, snapshot_term, lines, first, last_line)
    if first > last_snapshot + 1:
        raise StorageDataLostError(
            log_path,
            f"{log_path} starts at index {first} but {snapshot_path} ends at index "
            f"{last_snapshot}: entries {last_snapshot + 1}..{first - 1} are missing",
            directory,
        )
    # The first line is the sentinel of a compaction: only its term matters, and the snapshot
    # covers it (a log of one line holds no live entry).
    return _LogLayout(first, lines[0].term, lines[1:], first, last_line)


def _check_files(
    metadata: StoredMetadata | None,
    layout: _LogLayout,
    snapshot: SnapshotHeader | None,
    metadata_path: Path,
    log_path: Path,
    snapshot_path: Path,
) -> None:
    """StorageDataLostError when the log, the snapshot and the metadata show that durable data
    is gone."""
    directory = log_path.parent
    lines = layout.last_index - layout.first_line + 1
    if metadata is None:
        if lines > 0:
            raise StorageDataLostError(
                metadata_path,
                f"{metadata_path} is missing but {log_path} holds {lines} entries: the "
                "node's term and vote are lost (starting as new, it could vote twice in one "
                "term)",
                directory,
            )
        if snapshot is not None:
            raise StorageDataLostError(
                metadata_path,
                f"{metadata_path} is missing but {snapshot_path} holds the state up to index "
                f"{snapshot.last_index}: the node's term and vote are lost (starting as new, it "
                "could vote twice in one term)",
                directory,
            )
        return
    # The snapshot only ever holds committed entries, and commitLength is saved only once the
    # log lines it counts are durable: together they reach at least commitLength.
    if snapshot is None and metadata.commit_length > layout.last_index:
        raise StorageDataLostError(
            log_path,
            f"{log_path} holds {layout.last_index} entries but {metadata_path} records "
            f"commitLength {metadata.commit_length}: committed entries are missing",
            directory,
        )
    if snapshot is not None and metadata.commit_length > max(
        snapshot.last_index, layout.last_index
    ):
        raise StorageDataLostError(
            log_path,
            f"{log_path} ends at index {layout.last_index} and {snapshot_path} at index "
            f"{snapshot.last_index} but {metadata_path} records commitLength "
            f"{metadata.commit_length}: committed entries are missing",
            directory,
        )


def read_node_files(directory: Path) -> NodeFiles:
    """A node's metadata.txt, logs.txt and snapshot.txt, read without locking, repairing or
    writing anything (a running node's files may be read: `raftkv restore-node` copies the
    leader's).

    Every line is checked as `NodeStorage.load` checks it (StorageCorruption otherwise), and so
    are the files against each other (StorageDataLostError); a torn last line, which a running
    node may be in the middle of appending, is left out. The order makes a running node's
    files consistent: metadata.txt first, because the node saves a commitLength only once the
    lines it counts are durable (and snapshots only hold committed entries); then logs.txt,
    then snapshot.txt, because the node compacts its log only up to a snapshot already renamed
    into place, and a snapshot's index never decreases, so the snapshot read after the log
    reaches at least the log's first line. (Read the other way round, a compaction in between
    would look like missing entries.)"""
    directory = Path(directory)
    metadata_path, log_path = directory / METADATA_FILE_NAME, directory / LOG_FILE_NAME
    snapshot_path = directory / SNAPSHOT_FILE_NAME
    metadata = _read_metadata(metadata_path)
    try:
        data = log_path.read_bytes()
    except FileNotFoundError:
        data = b""
    except OSError as exc:
        raise StorageError(f"cannot read {log_path}: {exc}") from exc
    scanned = _scan_log_data(data, str(log_path))
    snapshot = read_snapshot_file(snapshot_path)
    if snapshot is not None and metadata is not None:
        _check_snapshot_cluster(snapshot, snapshot_path, metadata.cluster_id)
    header = None if snapshot is None else snapshot.header
    layout = _log_layout(scanned, header, log_path, snapshot_path)
    _check_files(metadata, layout, header, metadata_path, log_path, snapshot_path)
    return NodeFiles(
        metadata,
        layout.entries,
        scanned.torn_problem is not None,
        snapshot,
        layout.offset,
        layout.offset_term,
    )


def _check_snapshot_cluster(
    snapshot: LoadedSnapshot, snapshot_path: Path, cluster_id: str | None
) -> None:
    """ClusterIdMismatchError when the snapshot names another cluster than `cluster_id`."""
    stored = snapshot.header.cluster_id
    if cluster_id is not None and stored != cluster_id:
        raise ClusterIdMismatchError(snapshot_path, stored, cluster_id)


def _decode_line_bytes(raw: bytes, path: str, line_no: int) -> tuple[LogEntry, int | None]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StorageCorruption(path, line_no, f"not valid UTF-8 at byte {exc.start}") from None
    return _decode_line(line, path, line_no)


def _failpoint_from_env() -> str | None:
    value = os.environ.get(FAILPOINT_ENV, "")
    if not value:
        return None
    if value not in _FAILPOINTS:
        raise StorageError(
            f"unknown {FAILPOINT_ENV}={value!r}; expected one of: {', '.join(_FAILPOINTS)}"
        )
    return value


def encode_lines(entries: Sequence[LogEntry], first_index: int) -> list[bytes]:
    """logs.txt lines for `entries` at indexes `first_index`, …, newline included."""
    return [
        (encode_entry(entry, index) + "\n").encode("utf-8")
        for index, entry in enumerate(entries, start=first_index)
    ]


def _sync_file(fd: int) -> None:
    # fdatasync still flushes the file size (needed to read the data back) but skips
    # timestamps, which recovery never looks at.
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:
        os.fsync(fd)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _copy_range(source_fd: int, start: int, end: int, target_fd: int) -> None:
    """Copy bytes start..end-1 of `source_fd` to the start of `target_fd`, unchanged."""
    position = start
    while position < end:
        chunk = os.pread(source_fd, min(end - position, 1 << 20), position)
        if not chunk:
            raise OSError(f"{end - position} bytes of the log vanished while it was copied")
        _write_all(target_fd, chunk, position - start)
        position += len(chunk)


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
