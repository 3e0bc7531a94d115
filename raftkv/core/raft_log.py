"""The in-memory Raft log, which may start after a compaction point (docs/design.md §1, §10).

Indexes are the paper's: entry 1 is the first entry ever appended. After a snapshot covers
index `offset`, the entries 1..offset are dropped; the log keeps `offset_term`, the term of the
entry at `offset`, because AppendEntries' consistency check and RequestVote's up-to-date check
need the term of the entry just before the first one kept (etcd keeps a dummy entry at the
compaction point for the same reason, storage.go `ents[0]`).

Callers never index the entry list positionally: every lookup goes through an absolute index, so
an offset can never be forgotten at one call site.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .messages import LogEntry


class RaftLog:
    __slots__ = ("_entries", "_offset", "_offset_term")

    def __init__(
        self, entries: Iterable[LogEntry] = (), *, offset: int = 0, offset_term: int = 0
    ) -> None:
        if offset < 0 or offset_term < 0 or (offset == 0) != (offset_term == 0):
            raise ValueError(f"a log cannot start after index {offset} of term {offset_term}")
        self._offset = offset
        self._offset_term = offset_term
        self._entries: list[LogEntry] = list(entries)

    @property
    def offset(self) -> int:
        """The last index not held in this log (0 if nothing was ever compacted)."""
        return self._offset

    @property
    def offset_term(self) -> int:
        return self._offset_term

    @property
    def first_index(self) -> int:
        return self._offset + 1

    @property
    def last_index(self) -> int:
        return self._offset + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self._offset_term

    def term(self, index: int) -> int | None:
        """The term of the entry at `index`; None if it was compacted away or is beyond the end.

        The term at `offset` is known (0 at index 0, the empty prefix).
        """
        if index == self._offset:
            return self._offset_term
        if index < self._offset or index > self.last_index:
            return None
        return self._entries[index - self._offset - 1].term

    def entry(self, index: int) -> LogEntry:
        """The entry at `index`, which the caller knows is held (offset < index ≤ last)."""
        if not self._offset < index <= self.last_index:
            raise IndexError(f"entry {index} is outside {self.first_index}..{self.last_index}")
        return self._entries[index - self._offset - 1]

    def slice(self, first: int, stop: int) -> Sequence[LogEntry]:
        """The entries first..stop-1, clipped at the end of the log; `first` must be held."""
        if first <= self._offset:
            raise IndexError(
                f"entries from {first} were compacted (log starts at {self.first_index})"
            )
        return self._entries[first - self._offset - 1 : max(first, stop) - self._offset - 1]

    def append(self, entry: LogEntry) -> int:
        self._entries.append(entry)
        return self.last_index

    def extend(self, entries: Iterable[LogEntry]) -> None:
        self._entries.extend(entries)

    def truncate_from(self, index: int) -> None:
        """Drop the entries index..last (a conflicting suffix); compacted entries are committed."""
        if index <= self._offset:
            raise IndexError(
                f"cannot truncate from {index}: entries up to {self._offset} are compacted"
            )
        del self._entries[index - self._offset - 1 :]

    def compact_to(self, index: int) -> None:
        """Drop the entries up to and including `index`, keeping its term as `offset_term`."""
        if index <= self._offset:
            return
        term = self.term(index)
        if term is None:
            raise IndexError(f"cannot compact to {index}: the log ends at {self.last_index}")
        del self._entries[: index - self._offset]
        self._offset, self._offset_term = index, term

    def reset(self, index: int, term: int) -> None:
        """Replace everything with an empty log after (index, term): an installed snapshot."""
        if index < 1 or term < 1:
            raise ValueError(f"a snapshot cannot end at index {index} of term {term}")
        self._entries.clear()
        self._offset, self._offset_term = index, term

    def first_index_of_term(self, index: int, floor: int) -> int:
        """The first index of the run of entries of `index`'s term, going back no lower than
        floor + 1 and never into the compacted prefix (a conflict hint, design §2)."""
        term = self.term(index)
        lowest = max(floor, self._offset) + 1
        while index > lowest and self.term(index - 1) == term:
            index -= 1
        return index

    def held(self) -> list[LogEntry]:
        """A copy of the entries held, first_index..last_index (for checkers and tests)."""
        return list(self._entries)
