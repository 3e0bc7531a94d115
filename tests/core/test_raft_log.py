"""The log with a compaction point: absolute indexes, the term before the first entry kept."""

from __future__ import annotations

import pytest

from raftkv.core.messages import NO_OP, LogEntry, SetCommand
from raftkv.core.raft_log import RaftLog


def entries(*terms: int) -> list[LogEntry]:
    return [LogEntry(term, SetCommand(f"k{i}", "v")) for i, term in enumerate(terms)]


def test_an_uncompacted_log_is_the_papers_log() -> None:
    log = RaftLog(entries(1, 1, 2))
    assert (log.offset, log.first_index, log.last_index, log.last_term) == (0, 1, 3, 2)
    assert [log.term(i) for i in range(5)] == [0, 1, 1, 2, None]
    assert log.entry(3).term == 2
    assert [e.term for e in log.slice(2, 10)] == [1, 2]
    assert list(log.slice(3, 2)) == []


def test_compaction_keeps_the_term_at_the_compaction_point() -> None:
    log = RaftLog(entries(1, 1, 2, 3, 3))
    log.compact_to(3)
    assert (log.offset, log.offset_term, log.first_index, log.last_index) == (3, 2, 4, 5)
    assert [log.term(i) for i in range(7)] == [None, None, None, 2, 3, 3, None]
    assert [e.term for e in log.held()] == [3, 3]
    log.compact_to(2)  # behind the point already reached: nothing changes
    assert log.offset == 3
    log.compact_to(5)
    assert (log.offset, log.offset_term, log.last_term, log.held()) == (5, 3, 3, [])
    assert log.append(LogEntry(4, NO_OP)) == 6


def test_compacted_entries_cannot_be_read_or_truncated() -> None:
    log = RaftLog(entries(1, 2, 2), offset=0)
    log.compact_to(2)
    with pytest.raises(IndexError):
        log.entry(2)
    with pytest.raises(IndexError):
        log.slice(2, 4)
    with pytest.raises(IndexError):
        log.truncate_from(2)
    with pytest.raises(IndexError):
        log.compact_to(9)
    log.truncate_from(3)
    assert (log.last_index, log.last_term) == (2, 2)


def test_a_log_can_start_after_a_snapshot() -> None:
    log = RaftLog(entries(7, 8), offset=100, offset_term=7)
    assert (log.first_index, log.last_index, log.term(100), log.term(102)) == (101, 102, 7, 8)
    log.reset(500, 9)
    assert (log.first_index, log.last_index, log.last_term, log.term(500)) == (501, 500, 9, 9)
    with pytest.raises(ValueError):
        RaftLog(offset=5, offset_term=0)
    with pytest.raises(ValueError):
        log.reset(0, 1)


def test_the_first_index_of_a_term_stops_at_the_floor_and_the_compaction_point() -> None:
    log = RaftLog(entries(1, 2, 2, 2, 2))
    assert log.first_index_of_term(5, floor=0) == 2
    assert log.first_index_of_term(5, floor=3) == 4
    log.compact_to(3)
    assert log.first_index_of_term(5, floor=0) == 4
