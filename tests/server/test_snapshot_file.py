"""Tests for raftkv.server.snapshot_file: the snapshot.txt format, its writer and its reader."""

from __future__ import annotations

import os
import random
import re
import stat
import threading
import time
import zlib
from collections.abc import Mapping
from pathlib import Path

import immutables
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.core.messages import Member, Membership
from raftkv.limits import MAX_VALUE_BYTES
from raftkv.server import snapshot_file
from raftkv.server.snapshot_file import (
    MAX_SNAPSHOT_LINE_BYTES,
    LoadedSnapshot,
    SessionRecord,
    SnapshotCorruption,
    SnapshotHeader,
    SnapshotReader,
    encode_snapshot,
    read_snapshot_file,
    write_snapshot_file,
)
from raftkv.server.storage import StorageCorruption, StorageError
from raftkv.server.storage_errors import SnapshotWriteStoppedError

HEADER = SnapshotHeader(last_index=1200, last_term=4, cluster_id="local-5f0c9a1e", cluster_time=0)
SOURCE = "/data/snapshot.txt"

# The module docstring's example, byte for byte: the documented format is the written one.
DOCUMENTED = b"""raftkv-snapshot 1
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
"""


def encode(
    data: Mapping[str, str],
    sessions: Mapping[str, SessionRecord] | None = None,
    header: SnapshotHeader = HEADER,
) -> bytes:
    return b"".join(encode_snapshot(header, data, sessions or {}))


def read(raw: bytes, splits: list[int] | None = None) -> LoadedSnapshot:
    """Feed `raw` cut at the offsets in `splits` (one chunk when None)."""
    reader = SnapshotReader(SOURCE)
    start = 0
    for end in [*(splits or []), len(raw)]:
        reader.feed(raw[start:end])
        start = end
    return reader.finish()


def with_crc(body: bytes) -> bytes:
    """`body` (the lines before END) completed with a correct END line, so that a test reaches
    the check it means to hit rather than the checksum."""
    return body + f"END crc={zlib.crc32(body):08x}\n".encode()


def body_of(raw: bytes) -> bytes:
    return raw[: raw.rindex(b"END crc=")]


def corruption(raw: bytes, splits: list[int] | None = None) -> SnapshotCorruption:
    with pytest.raises(SnapshotCorruption) as info:
        read(raw, splits)
    return info.value


# -- round trips --------------------------------------------------------------------------------

AWKWARD = {
    "": "the empty key",
    "empty value": "",
    "with space": "a b  c ",
    "new\nline": "cr\r lf\n tab\t nul\x00 del\x7f",
    "per%cent": "%-",
    "%-": "%25 %2",
    "eq=uals": "a=b",
    "naïve 日本": "emoji 🙂 and U+2028 \u2028 and U+0085 \x85 and zwj \u200d",
    "unassigned \U000e0080": "private \ue000",
}


@pytest.mark.parametrize(
    ("data", "sessions"),
    [
        pytest.param({}, {}, id="empty"),
        pytest.param({"k": ""}, {"": (0, 0, 0)}, id="empty-strings"),
        pytest.param(AWKWARD, {"cli ent\n%": (7, 1193, 86399000)}, id="escaping"),
        pytest.param(
            {"big": "v" * MAX_VALUE_BYTES, "big-escaped": "\n" * MAX_VALUE_BYTES}, {}, id="1mib"
        ),
        pytest.param(
            {f"key:{i}": f"value {i}" for i in range(10_000)},
            {f"client-{i}": (i, i + 1, i * 1000) for i in range(500)},
            id="10k-keys",
        ),
    ],
)
def test_a_snapshot_reads_back_as_written(
    data: dict[str, str], sessions: dict[str, SessionRecord]
) -> None:
    raw = encode(data, sessions)
    loaded = read(raw)
    assert loaded.header == HEADER
    assert dict(loaded.data) == data and dict(loaded.sessions) == sessions
    assert isinstance(loaded.data, immutables.Map) and isinstance(loaded.sessions, immutables.Map)
    assert loaded.size == len(raw)
    assert raw.endswith(f"END crc={loaded.crc:08x}\n".encode())
    assert loaded.crc == zlib.crc32(body_of(raw))


def test_the_documented_example_is_what_the_writer_writes() -> None:
    header = SnapshotHeader(1200, 4, "local-5f0c9a1e", 86400123)
    data = {"user:1": "hello world", "greeting": ""}
    raw = encode(data, {"app.1f2e3d4c5b6a7980": (7, 1193, 86399000)}, header)
    assert raw == DOCUMENTED
    assert DOCUMENTED.decode() in (snapshot_file.__doc__ or "").replace("\n    ", "\n")


def test_the_header_round_trips_an_empty_cluster_id_and_the_largest_numbers() -> None:
    top = 2**63 - 1
    header = SnapshotHeader(last_index=top, last_term=top, cluster_id="", cluster_time=top)
    raw = encode({}, {"c": (top, top, top)}, header)
    assert b"clusterId %-\n" in raw
    loaded = read(raw)
    assert loaded.header == header and loaded.sessions["c"] == (top, top, top)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    data=st.dictionaries(st.text(), st.text(), max_size=20),
    sessions=st.dictionaries(
        st.text(max_size=8),
        st.tuples(*[st.integers(0, 2**63 - 1)] * 3),
        max_size=5,
    ),
)
def test_any_state_round_trips(
    data: dict[str, str], sessions: dict[str, tuple[int, int, int]]
) -> None:
    # st.text() draws no lone surrogates: they are not Unicode text (encode refuses them).
    loaded = read(encode(data, sessions))
    assert dict(loaded.data) == data and dict(loaded.sessions) == sessions


def test_equal_states_give_identical_bytes_whatever_the_insertion_order() -> None:
    items = [(f"k{i:03d}", f"v{i}") for i in range(300)] + list(AWKWARD.items())
    sessions = [(f"c{i}", (i, i, i)) for i in range(50)]
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    shuffled_sessions = sessions[::-1]
    first = encode(dict(items), dict(sessions))
    assert encode(dict(shuffled), dict(shuffled_sessions)) == first
    assert encode(immutables.Map(shuffled), immutables.Map(shuffled_sessions)) == first


def test_keys_are_sorted_by_code_point() -> None:
    raw = encode({"b": "1", "a": "2", "B": "3", "é": "4", "\U0001f642": "5", "ab": "6"})
    keys = [line.split(b" ")[1] for line in raw.splitlines() if line.startswith(b"KEY ")]
    assert [k.decode() for k in keys] == ["B", "a", "ab", "b", "é", "\U0001f642"]


# -- the encoder's chunks -----------------------------------------------------------------------


def test_the_encoder_yields_chunks_of_about_a_mib_ending_with_the_end_line() -> None:
    data = {f"key:{i:05d}": "x" * 1000 for i in range(5000)}  # ~5 MB
    chunks = list(encode_snapshot(HEADER, data, {}))
    assert len(chunks) >= 4
    # Lines of plain text are formatted in blocks of ≤ _BLOCK_CHARS characters: a chunk ends
    # within one block (here 16 lines of 1,010 bytes) past the MiB.
    block_bytes = (snapshot_file._BLOCK_CHARS // 1009 + 1) * 1020
    for chunk in chunks[:-1]:
        assert (1 << 20) <= len(chunk) < (1 << 20) + block_bytes
        assert chunk.endswith(b"\n") and b"END crc=" not in chunk
    assert chunks[-1].endswith(b"\n") and chunks[-1].splitlines()[-1].startswith(b"END crc=")
    assert dict(read(b"".join(chunks)).data) == data


def test_a_chunk_never_holds_more_than_a_mib_plus_one_block_or_one_line() -> None:
    # The worst case for the bound: one-character keys and values, the most lines per block.
    data = {f"{i:x}": "v" for i in range(300_000)}
    chunks = list(encode_snapshot(HEADER, data, {}, yield_every=100_000))
    bound = (1 << 20) + 4 * snapshot_file._BLOCK_CHARS + 6 * snapshot_file._BLOCK_CHARS
    assert len(chunks) >= 2
    assert all(len(chunk) < bound for chunk in chunks)
    big = {"a": "x" * MAX_VALUE_BYTES, "b": "y" * MAX_VALUE_BYTES, "c": "z"}
    chunks = list(encode_snapshot(HEADER, big, {}))
    # A line longer than a block is a block of its own: one chunk each (the first with the header).
    assert len(chunks) == 3 and all(len(chunk) < MAX_VALUE_BYTES + 200 for chunk in chunks)


_FIELD = st.one_of(
    st.text(alphabet="abc", max_size=3),
    st.text(max_size=4),
    st.sampled_from(["", " ", "%", "=", "a b", "x\ny", "\x00", "é", "\U0001f642", "\ud800"]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(_FIELD, _FIELD, max_size=40),
    st.integers(min_value=1, max_value=7),
    st.integers(min_value=1, max_value=30),
)
def test_block_formatting_gives_the_bytes_of_one_line_at_a_time(
    data: dict[str, str], yield_every: int, block_chars: int
) -> None:
    # Blocks of every size, plain and escaped fields side by side, lone surrogates refused.
    def one_by_one() -> bytes:
        return b"".join(snapshot_file._key_line(key, data[key]) for key in sorted(data))

    def blocks() -> bytes:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(snapshot_file, "_BLOCK_CHARS", block_chars)
            raw = b"".join(encode_snapshot(HEADER, data, {}, yield_every=yield_every))
        return b"".join(line + b"\n" for line in raw.splitlines() if line.startswith(b"KEY "))

    try:
        expected = one_by_one()
    except ValueError:
        with pytest.raises(ValueError, match="surrogate"):
            blocks()
        return
    assert blocks() == expected


def test_the_encoder_gives_the_gil_back_after_every_sort_run_and_every_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    # One sort run of keys; batches of 1,000, 1,000 and 500 keys.
    list(encode_snapshot(HEADER, {str(i): "" for i in range(2500)}, {}, yield_every=1000))
    assert sleeps == [0, 0, 0, 0]
    sleeps.clear()
    # Sort runs: 3 of keys, 1 of sessions; batches: 3 of keys (10,000 at a time), 1 of sessions.
    run = snapshot_file._SORT_RUN
    data = {f"{i:06d}": "v" for i in range(2 * run + 1)}
    sessions = {f"c{i}": (1, 1, 1) for i in range(5)}
    list(encode_snapshot(HEADER, data, sessions, yield_every=run))
    assert sleeps == [0] * 8


class _Clock:
    """time.monotonic and time.thread_time for `Pace`, advanced by hand."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 5.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.wall

    def thread_time(self) -> float:
        return self.cpu

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.wall += seconds


def test_pace_rests_to_its_duty_only_while_the_thread_waits_for_the_gil(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    monkeypatch.setattr(snapshot_file, "time", clock)
    pace = snapshot_file.Pace(duty=0.05)
    # Idle: the slice had the CPU all along, so it only lets the GIL go.
    clock.wall += 0.002
    clock.cpu += 0.002
    pace.rest()
    assert clock.sleeps == [0.0]
    # Busy: 2 ms of wall time, of which 0.5 ms on the CPU: 19 × 0.5 ms of rest (5% duty).
    clock.wall += 0.002
    clock.cpu += 0.0005
    pace.rest()
    assert clock.sleeps[1] == pytest.approx(0.0095)
    assert pace.rested == pytest.approx(0.0095)
    # The rest is not counted as work: the next idle slice does not rest.
    clock.wall += 0.001
    clock.cpu += 0.001
    pace.rest()
    assert clock.sleeps[2] == 0.0
    # Full duty never rests, busy or not.
    full = snapshot_file.Pace()
    clock.wall += 0.002
    full.rest()
    assert clock.sleeps[3] == 0.0
    with pytest.raises(ValueError, match="duty"):
        snapshot_file.Pace(duty=0.0)
    # A node that says it is busy gets the rest even when the slice had the CPU all along.
    busy = [True]
    told = snapshot_file.Pace(duty=0.1, busy=lambda: busy[0])
    clock.wall += 0.001
    clock.cpu += 0.001
    told.rest()
    assert clock.sleeps[4] == pytest.approx(0.009)
    busy[0] = False
    clock.wall += 0.001
    clock.cpu += 0.001
    told.rest()
    assert clock.sleeps[5] == 0.0
    # Rests add up to max_rest at most; then only the GIL is let go.
    capped = snapshot_file.Pace(duty=0.01, busy=lambda: True, max_rest=0.15)
    for _ in range(3):
        clock.wall += 0.001
        clock.cpu += 0.001
        capped.rest()
    assert clock.sleeps[6:] == pytest.approx([0.099, 0.051, 0.0])
    assert capped.rested == pytest.approx(0.15)
    with pytest.raises(ValueError, match="max_rest"):
        snapshot_file.Pace(max_rest=-1.0)


def test_pace_stops_resting_once_stop_is_set() -> None:
    stop = threading.Event()
    pace = snapshot_file.Pace(duty=0.001, stop=stop, busy=lambda: True)
    stop.set()
    worked_until = time.thread_time() + 0.01
    while time.thread_time() < worked_until:  # 10 ms of CPU: a rest of 10 s at this duty
        pass
    began = time.monotonic()
    pace.rest()
    assert time.monotonic() - began < 1.0


def test_a_stopped_write_ends_within_a_chunk_even_while_pacing(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    data = {f"{i:07d}": "x" * 100 for i in range(30_000)}  # ~3.3 MB: four chunks
    with pytest.raises(SnapshotWriteStoppedError):
        snapshot_file.write_snapshot_tmp(
            tmp_path / "snapshot.txt", HEADER, data, {}, stop=stop, duty=0.001
        )
    assert not (tmp_path / "snapshot.txt.tmp").exists()


@pytest.mark.parametrize(
    ("data", "sessions", "message"),
    [
        ({"\ud800": "v"}, {}, "lone surrogate U+D800"),
        ({"k": "\udfff"}, {}, "lone surrogate U+DFFF"),
        ({"k": 1}, {}, "the value of key 'k' is not a str"),
        ({1: "v"}, {}, "every key must be a str"),
        ({}, {"c": (1, 2)}, "must be (seq, index, last_active_ms)"),
        ({}, {"c": [1, 2, 3]}, "must be (seq, index, last_active_ms)"),
        ({}, {"c": (1, -2, 3)}, "index must be an int in 0.."),
        ({}, {"c": (1, 2, True)}, "last_active_ms must be an int in 0.."),
        ({}, {"c": (2**63, 2, 3)}, "seq must be an int in 0.."),
        ({}, {"\ud800": (1, 2, 3)}, "lone surrogate"),
        (
            {"k": "v" * (MAX_SNAPSHOT_LINE_BYTES + 1)},
            {},
            "a snapshot line may have at most",
        ),
    ],
)
def test_the_encoder_refuses_what_the_reader_would_refuse(
    data: dict[object, object], sessions: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        encode(data, sessions)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((0, 1, "", 0), "last_index must be an int in 1.."),
        ((1, 0, "", 0), "last_term must be an int in 1.."),
        ((1, 1, "", -1), "cluster_time must be an int in 0.."),
        ((2**63, 1, "", 0), "last_index must be an int in 1.."),
        ((1.0, 1, "", 0), "last_index must be an int"),
        ((1, 1, None, 0), "cluster_id must be a str"),
    ],
)
def test_a_header_no_file_may_hold_cannot_be_made(
    fields: tuple[object, object, object, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        SnapshotHeader(*fields)  # type: ignore[arg-type]


# -- incremental reading ------------------------------------------------------------------------


def test_feeding_one_byte_at_a_time_gives_the_same_snapshot() -> None:
    raw = encode(AWKWARD, {"c": (1, 2, 3)})
    assert read(raw, list(range(1, len(raw)))) == read(raw)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.data())
def test_feeding_random_splits_gives_the_same_snapshot(data: st.DataObject) -> None:
    raw = encode({**AWKWARD, "big": "y" * 5000}, {"c": (1, 2, 3), "d": (4, 5, 6)})
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=30).map(sorted))
    assert read(raw, cuts) == read(raw)


def test_empty_feeds_are_harmless() -> None:
    raw = encode({"k": "v"})
    reader = SnapshotReader(SOURCE)
    for piece in (b"", raw[:10], b"", raw[10:], b""):
        reader.feed(piece)
    assert dict(reader.finish().data) == {"k": "v"}


# -- corruption ---------------------------------------------------------------------------------

GOOD = encode({"a": "1", "b": "2"}, {"c1": (1, 2, 3), "c2": (4, 5, 6)})
GOOD_LINES = body_of(GOOD).decode().splitlines(keepends=True)
GOOD_LINES_BYTES_BEFORE_KEYS = "".join(GOOD_LINES[:7]).encode()


def edited(line_no: int, new: str | None) -> bytes:
    """GOOD with line `line_no` (1-based) replaced by `new` (removed when None), or with `new`
    inserted before it when `line_no` is negative; the checksum recomputed."""
    lines = GOOD_LINES[:]
    if line_no < 0:
        lines.insert(-line_no - 1, f"{new}\n")
    elif new is None:
        del lines[line_no - 1]
    else:
        lines[line_no - 1] = f"{new}\n"
    return with_crc("".join(lines).encode())


TOP = 2**63 - 1


@pytest.mark.parametrize(
    ("raw", "line_no", "problem"),
    [
        (edited(1, "raftkv-snapshat 1"), 1, "expected 'raftkv-snapshot' in the first line, got"),
        (edited(1, "raftkv-snapshot 3"), 1, "unsupported snapshot format version '3'"),
        (edited(1, "raftkv-snapshot 2"), 8, "expected 'members' in the header"),
        (edited(1, "raftkv-snapshot"), 1, "expected 'raftkv-snapshot <value>', got"),
        (edited(2, "lastTerm 4"), 2, "expected 'lastIndex' in the header, got 'lastTerm 4'"),
        (edited(2, "lastIndex 0"), 2, f"lastIndex 0 is outside 1..{TOP}"),
        (edited(2, f"lastIndex {TOP + 1}"), 2, f"lastIndex {TOP + 1} is outside 1..{TOP}"),
        (edited(2, "lastIndex 01"), 2, "lastIndex '01' is not an unsigned decimal integer"),
        (edited(2, "lastIndex +1"), 2, "lastIndex '+1' is not an unsigned decimal integer"),
        (edited(2, "lastIndex  1"), 2, "expected 'lastIndex <value>', got 'lastIndex  1'"),
        (edited(2, "lastIndex ١"), 2, "lastIndex '١' is not an unsigned decimal integer"),
        (edited(2, "lastIndex " + "9" * 30), 2, f"lastIndex '{'9' * 30}' is not an unsigned"),
        (edited(3, "lastTerm 0"), 3, "lastTerm 0 is outside 1.."),
        (edited(4, "clusterId "), 4, "bad clusterId '': empty field"),
        (edited(4, "clusterId a%zz"), 4, "bad clusterId 'a%zz': malformed escape"),
        (edited(4, "clusterId a b"), 4, "expected 'clusterId <value>', got 'clusterId a b'"),
        (edited(5, "clusterTime -1"), 5, "clusterTime '-1' is not an unsigned"),
        (edited(6, "sessions 2"), 6, "expected 'keys' in the header, got 'sessions 2'"),
        (edited(6, "keys 3"), 10, "SESSION line after 2 KEY lines; the header says keys 3"),
        (edited(6, "keys 1"), 9, "more KEY lines than the header's keys 1"),
        (edited(7, "sessions 1"), 11, "more SESSION lines than the header's sessions 1"),
        (edited(7, "sessions 3"), 12, "END line too early: 2 SESSION lines of the header's 3"),
        (edited(8, "KEY b 1"), 9, "key 'b' repeats the previous key (keys are sorted and unique)"),
        (edited(9, "KEY 0 2"), 9, "key '0' sorts before the previous key"),
        (edited(8, "KEY a"), 8, "a KEY line has 3 fields, this one 2"),
        (edited(8, "KEY a 1 x"), 8, "a KEY line has 3 fields, this one 4"),
        (edited(8, "KEY"), 8, "a KEY line has 3 fields, this one 1"),
        (edited(8, "KEY a%4 1"), 8, "bad key 'a%4': malformed escape"),
        (edited(8, "KEY a %C3%28"), 8, "bad value '%C3%28': escapes do not form valid UTF-8"),
        (edited(8, "KEY a  1"), 8, "a KEY line has 3 fields, this one 4"),
        (edited(8, "key a 1"), 8, "expected a KEY, SESSION or END line, got 'key a 1'"),
        (edited(8, ""), 8, "expected a KEY, SESSION or END line, got ''"),
        (edited(-12, "KEY z 1"), 12, "KEY line after a SESSION line (keys come first)"),
        (edited(11, "SESSION c1 1 2 3"), 11, "client id 'c1' repeats the previous one"),
        (edited(11, "SESSION c0 1 2 3"), 11, "client id 'c0' sorts before the previous one"),
        (edited(10, "SESSION c1 1 2"), 10, "a SESSION line has 5 fields, this one 4"),
        (edited(10, "SESSION c1 1 2 3 4"), 10, "a SESSION line has 5 fields, this one 6"),
        (edited(10, "SESSION c1 1 x 3"), 10, "index 'x' is not an unsigned decimal integer"),
        (edited(10, f"SESSION c1 1 2 {TOP + 1}"), 10, f"lastActiveMs {TOP + 1} is outside"),
        (edited(10, "SESSION c1 01 2 3"), 10, "seq '01' is not an unsigned decimal integer"),
        (edited(10, "SESSION %zz 1 2 3"), 10, "bad client id '%zz': malformed escape"),
        (GOOD.replace(b"KEY a 1", b"KEY a \xff"), 8, "not valid UTF-8 at byte 6"),
        (GOOD[:-9] + b"DEADBEEF\n", 12, "checksum 'DEADBEEF' is not 8 lowercase hex digits"),
        (GOOD[:-9] + b"0000000\n", 12, "checksum '0000000' is not 8 lowercase hex digits"),
        (GOOD[: GOOD.rindex(b"END")] + b"END\n", 12, "expected 'END crc=<8 hex digits>'"),
        (GOOD[: GOOD.rindex(b"END")] + b"END x\n", 12, "expected 'END crc=<8 hex digits>'"),
        (GOOD_LINES[0].encode() + b"END crc=0\n", 2, "END line inside the header (expected 'la"),
        (edited(9, None), 9, "SESSION line after 1 KEY lines; the header says keys 2"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_every_kind_of_damage_is_refused_with_the_line_and_the_problem(
    raw: bytes, line_no: int, problem: str
) -> None:
    error = corruption(raw)
    assert str(error).startswith(f"corrupt data in {SOURCE}, line {line_no}: {problem}"), error
    assert isinstance(error, StorageCorruption) and isinstance(error, StorageError)
    assert (error.path, error.line_no) == (SOURCE, line_no)


def test_a_wrong_checksum_is_refused_on_the_end_line() -> None:
    raw = GOOD.replace(b"KEY a 1", b"KEY a 7")
    error = corruption(raw)
    computed = zlib.crc32(body_of(raw))
    stored = GOOD[-9:-1].decode()
    assert str(error) == (
        f"corrupt data in {SOURCE}, line 12: checksum mismatch: stored {stored}, "
        f"computed {computed:08x}"
    )


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.data())
def test_any_changed_byte_is_refused(data: st.DataObject) -> None:
    raw = encode({"a": "1", "key with space": "naïve\n", "": ""}, {"c": (1, 2, 3)})
    position = data.draw(st.integers(0, len(raw) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != raw[position]))
    damaged = raw[:position] + bytes([byte]) + raw[position + 1 :]
    error = corruption(damaged)
    assert str(error).startswith(f"corrupt data in {SOURCE}, line ")


def test_every_truncation_is_refused() -> None:
    raw = encode({"a": "1", "b": ""}, {"c": (1, 2, 3)})
    for length in range(len(raw)):
        error = corruption(raw[:length])
        lines = raw[:length].count(b"\n")
        assert error.line_no == lines + 1, (length, error)
        assert "truncated?" in error.problem, (length, error)
    assert "no END line (truncated?): the header stops before 'raftkv-snapshot'" in str(
        corruption(b"")
    )
    cut = raw[: raw.index(b"KEY b")]
    assert str(corruption(cut)) == (
        f"corrupt data in {SOURCE}, line 9: no END line (truncated?): 1 KEY lines of the header's 2"
    )


@pytest.mark.parametrize("garbage", [b"\n", b"x", b"END crc=00000000\n", b"\x00" * 100])
def test_anything_after_the_end_line_is_refused(garbage: bytes) -> None:
    # In the same chunk as the END line, and in a later one.
    for splits in (None, [len(GOOD)], [len(GOOD) - 3]):
        error = corruption(GOOD + garbage, splits)
        assert str(error) == f"corrupt data in {SOURCE}, line 13: data after the END line"


def test_a_huge_line_is_refused_before_it_is_buffered_whole() -> None:
    head = body_of(GOOD)[: GOOD.index(b"KEY a")]
    reader = SnapshotReader(SOURCE)
    reader.feed(head + b"KEY a ")
    fed = 0
    chunk = b"x" * (1 << 20)
    with pytest.raises(SnapshotCorruption) as info:
        while fed < 4 * MAX_SNAPSHOT_LINE_BYTES:
            reader.feed(chunk)
            fed += len(chunk)
    # Refused by the chunk that took the line past the limit, not at the end of the stream.
    assert fed <= MAX_SNAPSHOT_LINE_BYTES
    assert info.value.line_no == 8
    assert f"line is longer than {MAX_SNAPSHOT_LINE_BYTES} bytes" in info.value.problem
    # The reader stays failed: a caller that ignores the error cannot carry on.
    with pytest.raises(SnapshotCorruption):
        reader.feed(b"\n")
    with pytest.raises(SnapshotCorruption):
        reader.finish()


def test_a_huge_line_in_one_chunk_is_refused() -> None:
    line = b"KEY a " + b"x" * MAX_SNAPSHOT_LINE_BYTES + b"\n"
    raw = with_crc(GOOD_LINES_BYTES_BEFORE_KEYS + line)
    error = corruption(raw.replace(b"keys 2", b"keys 1").replace(b"sessions 2", b"sessions 0"))
    assert error.line_no == 8 and "line is longer than" in error.problem


def test_a_finished_reader_cannot_be_fed() -> None:
    reader = SnapshotReader(SOURCE)
    reader.feed(GOOD)
    reader.finish()
    with pytest.raises(ValueError, match="has finished"):
        reader.feed(b"x")
    with pytest.raises(ValueError, match="has finished"):
        reader.finish()


# -- files --------------------------------------------------------------------------------------

STATE = ({"greeting": "", "user:1": "hello world"}, {"app.1": (7, 1193, 86399000)})


def test_write_then_read_a_file(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.txt"
    info = write_snapshot_file(path, HEADER, *STATE)
    raw = path.read_bytes()
    assert raw == encode(*STATE)
    assert (info.header, info.keys, info.sessions, info.size) == (HEADER, 2, 1, len(raw))
    assert raw.endswith(f"END crc={info.crc:08x}\n".encode())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot.txt"]
    loaded = read_snapshot_file(path)
    assert loaded is not None
    assert (loaded.header, dict(loaded.data), dict(loaded.sessions)) == (HEADER, *STATE)
    assert (loaded.size, loaded.crc) == (info.size, info.crc)


def test_a_new_snapshot_replaces_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.txt"
    write_snapshot_file(path, HEADER, {"old": "1"}, {})
    newer = SnapshotHeader(1300, 5, HEADER.cluster_id, 7)
    write_snapshot_file(path, newer, {"new": "2"}, {})
    loaded = read_snapshot_file(path)
    assert loaded is not None and loaded.header == newer and dict(loaded.data) == {"new": "2"}


def test_reading_a_missing_file_gives_none_and_a_damaged_one_names_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "snapshot.txt"
    assert read_snapshot_file(path) is None
    path.write_bytes(GOOD[:-1])
    with pytest.raises(SnapshotCorruption, match=f"^corrupt data in {path}, line 12: last line"):
        read_snapshot_file(path)
    with pytest.raises(StorageError, match=f"cannot read {tmp_path}"):
        read_snapshot_file(tmp_path)


def test_a_large_file_reads_back_across_read_chunks(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.txt"
    data = {f"key:{i:05d}": "\n" * 700 for i in range(2000)}  # ~4 MiB escaped
    info = write_snapshot_file(path, HEADER, data, {})
    assert info.size > 3 << 20
    loaded = read_snapshot_file(path)
    assert loaded is not None and dict(loaded.data) == data


def assert_old_snapshot_intact(path: Path, old: bytes) -> None:
    assert path.read_bytes() == old
    loaded = read_snapshot_file(path)
    assert loaded is not None and dict(loaded.data) == {"old": "1"}


def test_a_failed_rename_leaves_the_old_snapshot_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "snapshot.txt"
    write_snapshot_file(path, HEADER, {"old": "1"}, {})
    old = path.read_bytes()

    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(StorageError, match=f"^writing {path} failed: .*No space left"):
        write_snapshot_file(path, HEADER, {"new": "2"}, {})
    assert_old_snapshot_intact(path, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot.txt"]


def test_an_unwritable_temporary_file_leaves_the_old_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.txt"
    write_snapshot_file(path, HEADER, {"old": "1"}, {})
    old = path.read_bytes()
    (tmp_path / "snapshot.txt.tmp").mkdir()
    with pytest.raises(StorageError, match=f"^writing {path} failed: cannot create"):
        write_snapshot_file(path, HEADER, {"new": "2"}, {})
    assert_old_snapshot_intact(path, old)


def test_a_refused_value_midway_leaves_the_old_snapshot_and_no_temporary_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "snapshot.txt"
    write_snapshot_file(path, HEADER, {"old": "1"}, {})
    old = path.read_bytes()
    # Far enough into the map that chunks were already written to the temporary file.
    data = {f"key:{i:05d}": "x" * 1000 for i in range(3000)}
    data["zz"] = "\ud800"
    with pytest.raises(ValueError, match="lone surrogate"):
        write_snapshot_file(path, HEADER, data, {})
    assert_old_snapshot_intact(path, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot.txt"]


def test_a_failed_sync_is_a_storage_error_and_the_final_name_never_holds_a_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "snapshot.txt"

    def fail(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fail)
    with pytest.raises(StorageError, match="Input/output error"):
        write_snapshot_file(path, HEADER, {"new": "2"}, {})
    assert list(tmp_path.iterdir()) == []
    assert read_snapshot_file(path) is None


@pytest.mark.parametrize("yield_every", [0, -1, 1.5])
def test_yield_every_must_be_a_positive_int(yield_every: int) -> None:
    with pytest.raises(ValueError, match="yield_every must be an int ≥ 1"):
        encode_snapshot(HEADER, {}, {}, yield_every=yield_every)


# -- version 2: the configuration ---------------------------------------------------------------


def test_a_snapshot_with_a_configuration_is_version_2_and_round_trips() -> None:
    membership = Membership(
        (Member(1, client_address="10.0.0.1:50050", peer_address="10.0.0.1:51050"),
         Member(4, voter=False, client_address="h 4"))
    )  # fmt: skip
    raw = b"".join(encode_snapshot(HEADER, {"k": "v"}, {}, membership=membership))
    text = raw.decode()
    assert text.startswith("raftkv-snapshot 2\n")
    assert "sessions 0\nmembers 2\nKEY k v\n" in text
    assert "MEMBER 1 voter 10.0.0.1:50050 10.0.0.1:51050\nMEMBER 4 learner h%204 %-\nEND" in text
    loaded = read(raw)
    assert loaded.membership == membership
    assert loaded.image().membership == membership
    # Without one it is version 1, byte for byte as before (the previous release reads it).
    plain = b"".join(encode_snapshot(HEADER, {"k": "v"}, {}))
    assert plain.startswith(b"raftkv-snapshot 1\n") and b"MEMBER" not in plain
    assert read(plain).membership is None


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (["MEMBER 1 voter %- %-"], "more MEMBER lines"),
        ([], "0 MEMBER lines of the header's 1"),
        (["MEMBER 1 learner %- %-"], "no MEMBER line is a voter"),
        (["MEMBER 1 boss %- %-"], "a voter or a learner"),
        (["MEMBER x voter %- %-"], "member id"),
        (["MEMBER 1 voter %-"], "a MEMBER line has 5 fields"),
        (["MEMBER 4294967296 voter %- %-"], "above 4294967295"),
        ([f"MEMBER 1 voter {'x' * 1025} %-"], "1025 characters"),
    ],
)
def test_a_bad_member_line_is_corruption(lines: list[str], problem: str) -> None:
    expected = 1 if problem != "more MEMBER lines" else 0
    members = expected if problem != "more MEMBER lines" else 0
    body = (
        "raftkv-snapshot 2\nlastIndex 1200\nlastTerm 4\nclusterId x\nclusterTime 0\n"
        f"keys 0\nsessions 0\nmembers {max(members, 1)}\n"
    )
    if problem == "more MEMBER lines":
        lines = [*lines, "MEMBER 2 voter %- %-"]
    body += "".join(line + "\n" for line in lines)
    raw = body.encode()
    raw += f"END crc={zlib.crc32(raw):08x}\n".encode()
    with pytest.raises(SnapshotCorruption, match=problem):
        read(raw)


def test_version_2_header_needs_at_least_one_member() -> None:
    body = (
        b"raftkv-snapshot 2\nlastIndex 1\nlastTerm 1\nclusterId x\nclusterTime 0\n"
        b"keys 0\nsessions 0\nmembers 0\n"
    )
    with pytest.raises(SnapshotCorruption, match=r"members must be in 1\.\.64"):
        read(body)
