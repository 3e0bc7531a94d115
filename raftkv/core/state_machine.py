"""The replicated key-value state machine, including the exactly-once table for client writes.

The dedup table is part of the replicated state (Raft thesis §6.3): every replica applies the
same entries in the same order, so every replica skips the same duplicates and keeps the same
table. Only the answer to the proposer depends on it (node.py): a write (SET or DELETE) that
carries a client id is applied when its seq is above the client's last applied seq; a retry of
that last applied write (same seq) is skipped and answered with the index where it was applied;
a write below it is skipped and refused as stale, never acknowledged. A client's SETs and
DELETEs share one sequence and one table entry. A DELETE of an absent key changes no data but
still counts as applied (its seq is recorded), so its retry is recognised like a SET's.

Both maps are persistent (`immutables.Map`, a hash array mapped trie): taking a snapshot is
taking two references, O(1) whatever the size, so the Raft loop never pauses to copy the data
(docs/design.md §12); the worker thread that writes the image reads a version nobody changes.

A hash map has no order, and LIST pages through keys in order, so the machine also keeps the
keys in a `SortedList`: an index derived from the data, changed only when a key appears or is
deleted (an overwrite leaves it alone), rebuilt from an image's data at start and never part of
an image (it is mutable, and the data says everything it does).

Sessions are bounded (Raft thesis §6.3, docs/design.md §11). Every entry carries its leader's
cluster time (LogEntry.time); the machine's clock is the largest it has applied. A session not
written to for `SessionRules.lifetime_ms` of that clock expires, on every replica at the same
entry, since only the log decides. A write that says its session exists (`resume`) but finds
none is refused, never applied as the first write of a new session: that would apply a retry
twice. The table also has a soft cap: beyond `max_sessions`, the sessions idle longest go first,
but only once idle for `evict_idle_ms`, longer than any client retries one write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import immutables
from sortedcontainers import SortedList

from raftkv.limits import MAX_LIST_PAGE_BYTES

from .messages import (
    Command,
    DeleteCommand,
    Membership,
    MembershipCommand,
    NoOpCommand,
    RangeQuery,
    ReadRange,
    SetCommand,
)

# client id -> (highest seq applied for it, the log index where that write was applied, the cluster
# time in ms of its last activity; 0 until sessions expire). Plain tuples: a snapshot line each.
SessionRecord = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class PreparedIndexes:
    """The machine's derived indexes of an image, sorted ahead of time (off the Raft loop, by
    the thread that read or received the snapshot): the keys, and the sessions as (last active,
    client id). Tuples, so that an image can be shared."""

    keys: tuple[str, ...]
    idle: tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class SnapshotImage:
    """The state machine as of log entry `index` (of `term`): what snapshot.txt holds."""

    index: int
    term: int
    data: immutables.Map[str, str]
    sessions: immutables.Map[str, SessionRecord]
    cluster_time: int = 0
    # Not part of the state: sorted copies of what the data and sessions say (prepare()).
    prepared: PreparedIndexes | None = field(default=None, compare=False)
    # The configuration as of `index` (docs/design.md §13); None: the cluster's first one,
    # which every node is started with (a snapshot file written before membership changes).
    membership: Membership | None = None


def prepare(image: SnapshotImage) -> SnapshotImage:
    """The image with its derived indexes sorted: O(n log n), for a worker thread, so that a
    node that installs or loads it builds its machine in O(n / 1000) on the loop."""
    keys = tuple(sorted(image.data.keys()))
    idle = tuple(sorted((record[2], client) for client, record in image.sessions.items()))
    return replace(image, prepared=PreparedIndexes(keys, idle))


def _sorted_list(ordered: Sequence[Any]) -> SortedList:
    """A SortedList of values already in order, without sorting them again. It fills the
    list's chunks as SortedList.update does after its sort (sortedcontainers 2.4.0, pinned;
    tests/core/test_state_machine.py checks the result against SortedList(values))."""
    result = SortedList()
    load = result._load
    result._lists = [list(ordered[pos : pos + load]) for pos in range(0, len(ordered), load)]
    result._maxes = [chunk[-1] for chunk in result._lists]
    result._len = len(ordered)
    return result


@dataclass(frozen=True, slots=True)
class SessionRules:
    """Replicated semantics, not node settings: two nodes with different rules would keep
    different tables. Constants for the product; the simulator shrinks them for every node."""

    lifetime_ms: int = 15 * 60 * 1000
    max_sessions: int = 100_000
    # No session goes before it is idle this long, even over the cap (at most lifetime_ms).
    evict_idle_ms: int = 4 * 60 * 1000

    @property
    def resume_after_ms(self) -> int:
        """A client retrying one write for longer than this (its own clock) marks the retry
        `resume`, even the first write of its session. Until then the session an earlier try
        may have opened cannot be gone: it was opened after that try was sent, and no session
        goes before evict_idle_ms of cluster time, which runs no faster than real time; half
        of it leaves room for a client clock up to 2× fast. Twice the client library's retry
        cap (120 s): only a client suspended mid-write gets there."""
        return self.evict_idle_ms // 2


DEFAULT_SESSION_RULES: Final = SessionRules()


class SessionExpired:
    """`apply`'s answer to a write whose session is gone: refused, not applied."""

    def __repr__(self) -> str:
        return "SESSION_EXPIRED"


SESSION_EXPIRED: Final = SessionExpired()

_EMPTY_DATA: immutables.Map[str, str] = immutables.Map()
_EMPTY_SESSIONS: immutables.Map[str, SessionRecord] = immutables.Map()


class KeyValueStateMachine:
    def __init__(
        self,
        image: SnapshotImage | None = None,
        rules: SessionRules = DEFAULT_SESSION_RULES,
        *,
        honour_resume: bool = True,
    ) -> None:
        self._data = image.data if image is not None else _EMPTY_DATA
        # The configuration of the last applied MembershipCommand, else the image's; None: the
        # cluster's first configuration, which only the node knows (docs/design.md §13).
        self._membership = image.membership if image is not None else None
        self._sessions = image.sessions if image is not None else _EMPTY_SESSIONS
        self._cluster_time = image.cluster_time if image is not None else 0
        self._rules = rules
        # False only for the negative control UnsafeSwitches.ignore_resume.
        self._honour_resume = honour_resume
        if image is not None and image.prepared is None:
            image = prepare(image)
        prepared = image.prepared if image is not None else None
        # Invariant: holds exactly the keys of _data, sorted (code point order, like str's <).
        self._keys = _sorted_list(prepared.keys if prepared else ())
        # Invariant: (last active, client id) of every session, in that order: expiry and
        # eviction take from the front. A total order on both fields, so that every replica —
        # one that applied every entry, one started from a snapshot — drops the same sessions
        # among those last active at one instant. Derived, like _keys.
        self._idle = _sorted_list(prepared.idle if prepared else ())

    @property
    def cluster_time(self) -> int:
        return self._cluster_time

    def apply(self, command: Command, index: int, time: int = 0) -> int | SessionExpired | None:
        """Apply the committed command at log `index`, stamped with cluster time `time`.

        Returns the index the command's effect is at: `index` when it was applied (a no-op, a
        write without client id, or a write with a new highest seq for its client); the index of
        the original entry when it repeats the client's last applied seq (skipped); None when a
        higher seq of its client was already applied (skipped, and must not be acknowledged);
        SESSION_EXPIRED when the write resumes a session that no longer exists (skipped).
        """
        if time > self._cluster_time:
            self._cluster_time = time
            self._expire()
        if isinstance(command, NoOpCommand):
            return index
        if isinstance(command, MembershipCommand):
            self._membership = command.membership
            return index
        if not isinstance(command, SetCommand | DeleteCommand):
            raise TypeError(f"not a command: {command!r}")
        if command.client_id:
            record = self._sessions.get(command.client_id)
            if record is None and command.resume and self._resume_checked():
                return SESSION_EXPIRED
            last_seq, last_index, _ = record or (0, 0, 0)
            if command.seq <= last_seq:
                if record is not None:
                    # A retry or a stale write still shows the client is alive.
                    self._touch(command.client_id, last_seq, last_index)
                return last_index if command.seq == last_seq else None
            self._touch(command.client_id, command.seq, index)
            if record is None:
                self._evict_over_cap()
        if isinstance(command, SetCommand):
            if command.key not in self._data:
                self._keys.add(command.key)
            self._data = self._data.set(command.key, command.value)
        elif command.key in self._data:
            self._keys.remove(command.key)
            self._data = self._data.delete(command.key)
        return index

    def _resume_checked(self) -> bool:
        """Whether a write's `resume` is held against the table: only once cluster time runs.
        Before it does, no session can have expired or been evicted (both need time to
        advance), so a missing session means the write never applied; and during a rolling
        upgrade, nodes of the old release (which ignore `resume`) keep the same table
        (docs/design.md §12)."""
        return self._honour_resume and self._cluster_time > 0

    def _touch(self, client: str, seq: int, index: int) -> None:
        old = self._sessions.get(client)
        record = (seq, index, self._cluster_time)
        if old == record:
            return
        if old is not None:
            self._idle.remove((old[2], client))
        self._idle.add((self._cluster_time, client))
        self._sessions = self._sessions.set(client, record)

    def _drop_oldest(self) -> None:
        _, client = self._idle.pop(0)
        self._sessions = self._sessions.delete(client)

    def _expire(self) -> None:
        oldest_kept = self._cluster_time - self._rules.lifetime_ms
        while self._idle and self._idle[0][0] <= oldest_kept:
            self._drop_oldest()

    def _evict_over_cap(self) -> None:
        idle_enough = self._cluster_time - self._rules.evict_idle_ms
        while len(self._idle) > self._rules.max_sessions and self._idle[0][0] <= idle_enough:
            self._drop_oldest()

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def range(self, query: RangeQuery, max_bytes: int = MAX_LIST_PAGE_BYTES) -> ReadRange:
        """The keys that start with `query.prefix` and sort after `query.start_after`, with their
        values, in order: at most `query.limit` of them and `max_bytes` of keys and values
        (UTF-8), but always the first one there is. O(log n + page)."""
        prefix, start_after = query.prefix, query.start_after
        if start_after < prefix:
            # Every key with the prefix sorts at or after the prefix itself.
            keys = self._keys.irange(minimum=prefix)
        else:
            keys = self._keys.irange(minimum=start_after, inclusive=(False, True))
        items: list[tuple[str, str]] = []
        size = 0
        for key in keys:
            # The keys with a prefix are one run in sorted order: the first without it ends it.
            if not key.startswith(prefix):
                return ReadRange(tuple(items), more=False)
            if len(items) == query.limit:
                return ReadRange(tuple(items), more=True)
            value: str = self._data[key]
            size += _utf8_size(key) + _utf8_size(value)
            if items and size > max_bytes:
                return ReadRange(tuple(items), more=True)
            items.append((key, value))
        return ReadRange(tuple(items), more=False)

    def last_applied(self, client_id: str) -> tuple[int, int] | None:
        """(highest seq applied, its log index) for `client_id`, or None if none was applied."""
        record = self._sessions.get(client_id)
        return None if record is None else (record[0], record[1])

    @property
    def membership(self) -> Membership | None:
        """The committed configuration: of the last applied MembershipCommand, else the image's
        (None: the cluster's first configuration)."""
        return self._membership

    def image(self, index: int, term: int) -> SnapshotImage:
        """This state, as of entry `index`, in O(1): later applies do not change the image."""
        return SnapshotImage(
            index,
            term,
            self._data,
            self._sessions,
            self._cluster_time,
            membership=self._membership,
        )

    def __len__(self) -> int:
        return len(self._data)

    def snapshot_items(self) -> dict[str, str]:
        return dict(self._data.items())


def _utf8_size(text: str) -> int:
    # surrogatepass: a size, never an exception, whatever the text (the shell refuses lone
    # surrogates before they reach the log, so they do not occur here anyway).
    return len(text.encode("utf-8", "surrogatepass"))
