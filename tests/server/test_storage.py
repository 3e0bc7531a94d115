"""Tests for raftkv.server.storage: line format, log append/truncate/repair, metadata, crashes."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

from raftkv.core.messages import (
    NO_OP,
    DeleteCommand,
    LogEntry,
    Member,
    Membership,
    MembershipCommand,
    SetCommand,
)
from raftkv.core.validation import MAX_INDEX, MAX_TERM
from raftkv.server import storage as storage_module
from raftkv.server.storage import (
    EMPTY_FIELD,
    FAILPOINT_ENV,
    FAILPOINT_EXIT_CODE,
    FAILPOINT_LOG_WRITE,
    FAILPOINT_METADATA_RENAME,
    LOG_FILE_NAME,
    METADATA_FILE_NAME,
    HardState,
    NodeStorage,
    StorageCorruption,
    StorageDataLostError,
    StorageError,
    decode_entry,
    encode_entry,
    escape_field,
    node_data_dir,
    unescape_field,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_ID = 1


@pytest.fixture(autouse=True)
def _no_failpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    # A failpoint leaking in from the developer's shell would kill the test process.
    monkeypatch.delenv(FAILPOINT_ENV, raising=False)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return node_data_dir(tmp_path, NODE_ID)


def open_storage(directory: Path, node_id: int = NODE_ID) -> NodeStorage:
    return NodeStorage(directory, node_id)


def set_entry(term: int, key: str, value: str, client_id: str = "", seq: int = 0) -> LogEntry:
    return LogEntry(term, SetCommand(key, value, client_id, seq))


def write_log(directory: Path, entries: list[LogEntry]) -> None:
    with open_storage(directory) as storage:
        storage.load()
        storage.append_entries(1, entries)


def reload(directory: Path, node_id: int = NODE_ID) -> storage_module.LoadedState:
    with open_storage(directory, node_id) as storage:
        return storage.load()


def line_bytes(data: bytes) -> list[bytes]:
    """Each line of `data`, newline included."""
    return data.splitlines(keepends=True)


def old_format_line(entry: LogEntry) -> str:
    """A logs.txt line exactly as versions before the index= field wrote it."""
    command = entry.command
    if isinstance(command, SetCommand):
        body = (
            f"SET {escape_field(command.key)} {escape_field(command.value)} {entry.term} "
            f"client={escape_field(command.client_id)} seq={command.seq}"
        )
    else:
        body = f"NO-OP {entry.term}"
    return f"{body} crc={zlib.crc32(body.encode('utf-8')):08x}"


def write_old_format(directory: Path, entries: list[LogEntry], commit_length: int) -> bytes:
    """A data directory as versions before the index= field left it."""
    directory.mkdir(parents=True, exist_ok=True)
    data = "".join(old_format_line(entry) + "\n" for entry in entries).encode("utf-8")
    (directory / LOG_FILE_NAME).write_bytes(data)
    (directory / METADATA_FILE_NAME).write_text(
        f"commitLength {commit_length}\nterm 3\nvotedFor 2\nnodeId {NODE_ID}\n"
    )
    return data


def line_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) byte offsets of each line, end pointing just past its newline."""
    spans = []
    start = 0
    while start < len(data):
        end = data.index(b"\n", start) + 1
        spans.append((start, end))
        start = end
    return spans


# ---------------------------------------------------------------------------------------------
# Line format.

_SPECIAL_PIECES = [
    " ",
    "  ",
    "\n",
    "\r",
    "\r\n",
    "\t",
    "\x00",
    "\x1b",
    "\x7f",
    "\x85",
    "\xa0",
    "\u2028",
    "\u2029",
    "\u200d",
    "\ufeff",
    "%",
    "%-",
    "%25",
    "%%",
    "=",
    "-",
    "é",
    "日本",
    "😀",
    "\U0010ffff",
    " crc=",
    "crc=00000000",
    "client=",
    "seq=",
    "SET",
    "NO-OP",
    "None",
]


def random_text(rng: random.Random) -> str:
    pieces: list[str] = []
    for _ in range(rng.choice([0, 0, 1, 2, 3, 8, 30])):
        roll = rng.random()
        if roll < 0.4:
            pieces.append(rng.choice(_SPECIAL_PIECES))
        elif roll < 0.7:
            pieces.append(chr(rng.randint(0x20, 0x7E)))
        else:
            code_point = rng.randint(0, 0x10FFFF)
            while 0xD800 <= code_point <= 0xDFFF:
                code_point = rng.randint(0, 0x10FFFF)
            pieces.append(chr(code_point))
    return "".join(pieces)


def random_entry(rng: random.Random) -> LogEntry:
    term = rng.choice([0, 1, 2, 9, 10, rng.randint(0, 10**12)])
    roll = rng.random()
    if roll < 0.2:
        return LogEntry(term, NO_OP)
    seq = rng.choice([0, 1, rng.randint(0, 2**63)])
    if roll < 0.35:
        return LogEntry(term, DeleteCommand(random_text(rng), random_text(rng), seq))
    return set_entry(term, random_text(rng), random_text(rng), random_text(rng), seq)


def test_lines_are_readable_and_match_the_documented_examples() -> None:
    assert (
        encode_entry(set_entry(3, "user:1", "hello world", "abc", 7), 1)
        == "SET user:1 hello%20world 3 client=abc seq=7 index=1 crc=12e590c5"
    )
    assert encode_entry(set_entry(3, "greeting", ""), 2) == (
        "SET greeting %- 3 client=%- seq=0 index=2 crc=695fa2ce"
    )
    assert encode_entry(LogEntry(4, NO_OP), 3) == "NO-OP 4 index=3 crc=2fdbac7e"
    assert encode_entry(set_entry(5, "naïve key", "a=b%c\nd\t日本\u2028"), 4) == (
        "SET naïve%20key a%3Db%25c%0Ad%09日本%E2%80%A8 5 client=%- seq=0 index=4 crc=dc02b4d0"
    )
    assert encode_entry(LogEntry(5, DeleteCommand("user:1", "abc", 8)), 5) == (
        "DEL user:1 5 client=abc seq=8 index=5 crc=65377292"
    )


def test_delete_lines_escape_like_set_lines_and_round_trip() -> None:
    entry = LogEntry(6, DeleteCommand("a b=c%\n日本", "cl ient", 2))
    line = encode_entry(entry, 9)
    assert line.startswith("DEL a%20b%3Dc%25%0A日本 6 client=cl%20ient seq=2 index=9 crc=")
    assert decode_entry(line, path="logs.txt", line_no=9) == entry
    no_dedup = LogEntry(1, DeleteCommand("k"))
    assert encode_entry(no_dedup, 1).startswith("DEL k 1 client=%- seq=0 index=1 ")
    assert decode_entry(encode_entry(no_dedup, 1), path="logs.txt", line_no=1) == no_dedup


def test_membership_lines_list_every_member_and_round_trip() -> None:
    membership = Membership(
        (
            Member(1, client_address="10.0.0.1:50050", peer_address="10.0.0.1:51050"),
            Member(4, voter=False, client_address="[::1]:50054"),
        )
    )
    entry = LogEntry(3, MembershipCommand(membership, "add learner 4"), time=77)
    line = encode_entry(entry, 12)
    assert line.startswith(
        "MEMBERSHIP 3 change=add%20learner%204 voter=1 client=10.0.0.1:50050 "
        "peer=10.0.0.1:51050 learner=4 client=[::1]:50054 peer=%- ts=77 index=12 crc="
    )
    decoded = decode_entry(line, path="logs.txt", line_no=12)
    assert decoded == entry and decoded.time == 77
    assert decoded.command == entry.command


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("MEMBERSHIP 3 change=x voter=1 client=%-", "MEMBERSHIP line has 5 fields"),
        ("MEMBERSHIP 3 change=x member=1 client=%- peer=%-", "expected voter=<id> or learner"),
        ("MEMBERSHIP 3 change=x learner=1 client=%- peer=%-", "at least one voter"),
        (
            "MEMBERSHIP 3 change=x voter=2 client=%- peer=%- voter=1 client=%- peer=%-",
            "ascending order",
        ),
        ("MEMBERSHIP 3 change=x voter=01 client=%- peer=%-", "node id"),
        ("MEMBERSHIP 3 x voter=1 client=%- peer=%-", "change="),
    ],
)
def test_a_malformed_membership_line_is_corruption_naming_the_problem(
    body: str, problem: str
) -> None:
    line = f"{body} index=1"
    line += f" crc={zlib.crc32(line.encode()):08x}"
    with pytest.raises(StorageCorruption, match=problem):
        decode_entry(line, path="logs.txt", line_no=1)


def test_checksum_is_crc32_of_everything_before_crc_field_index_included() -> None:
    line = encode_entry(set_entry(12, "k", "v w", "c", 3), 7)
    body, _, crc = line.rpartition(" crc=")
    assert body.endswith(" index=7")
    assert crc == f"{zlib.crc32(body.encode('utf-8')):08x}"
    # The same entry at another index has another checksum, so a moved line cannot pass.
    assert encode_entry(set_entry(12, "k", "v w", "c", 3), 8).rpartition(" crc=")[2] != crc


@pytest.mark.parametrize("index", [0, -1])
def test_encode_refuses_indexes_below_one(index: int) -> None:
    with pytest.raises(ValueError, match="index"):
        encode_entry(LogEntry(1, NO_OP), index)


def test_decode_checks_the_index_against_the_line_number() -> None:
    line = encode_entry(LogEntry(2, NO_OP), 5)
    assert decode_entry(line, path="logs.txt", line_no=5) == LogEntry(2, NO_OP)
    with pytest.raises(StorageCorruption, match="line 6: holds the entry for index 5, not 6"):
        decode_entry(line, path="logs.txt", line_no=6)
    with pytest.raises(StorageCorruption, match="line 5: no index= field"):
        decode_entry(old_format_line(LogEntry(2, NO_OP)), path="logs.txt", line_no=5)
    old = old_format_line(LogEntry(2, NO_OP))
    assert decode_entry(old, path="logs.txt", line_no=5, legacy=True) == LogEntry(2, NO_OP)
    with pytest.raises(StorageCorruption, match="index= field in a file of the old format"):
        decode_entry(line, path="logs.txt", line_no=5, legacy=True)


@pytest.mark.parametrize("text", ["user:1", "naïve", "日本語", "😀", "a-b_c.d/e:f", "x+y*z"])
def test_printable_text_is_not_escaped(text: str) -> None:
    assert escape_field(text) == text


@pytest.mark.parametrize("text", ["", *_SPECIAL_PIECES, "%2", "%-%-", "a b\nc\x00d"])
def test_tricky_strings_round_trip_as_one_token(text: str) -> None:
    token = escape_field(text)
    assert token
    assert not any(char in token for char in " \n\r\t=\x85\u2028\u2029")
    assert unescape_field(token) == text


def test_empty_string_has_an_explicit_marker() -> None:
    assert escape_field("") == EMPTY_FIELD == "%-"
    assert escape_field("%-") == "%25-"


def test_random_entries_round_trip_over_many_seeds() -> None:
    for seed in range(600):
        rng = random.Random(seed)
        entry = random_entry(rng)
        line = encode_entry(entry, seed + 1)
        assert "\n" not in line and "\r" not in line, seed
        assert line.splitlines() == [line], seed
        expected_fields = {SetCommand: 8, DeleteCommand: 7}.get(type(entry.command), 4)
        assert len(line.split(" ")) == expected_fields, seed
        assert decode_entry(line, path="logs.txt", line_no=seed + 1) == entry, seed


def test_random_entries_round_trip_through_the_file(data_dir: Path) -> None:
    expected: list[LogEntry] = []
    with open_storage(data_dir) as storage:
        storage.load()
        for seed in range(40):
            rng = random.Random(seed)
            batch = [random_entry(rng) for _ in range(rng.randint(0, 12))]
            storage.append_entries(len(expected) + 1, batch)
            expected.extend(batch)
    loaded = reload(data_dir)
    assert loaded.entries == expected
    assert not loaded.dropped_torn_line


def test_lone_surrogate_is_rejected_before_anything_is_written(data_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"lone surrogate U\+D800 at position 1"):
        encode_entry(set_entry(1, "a\ud800", "v"), 1)
    write_log(data_dir, [set_entry(1, "k", "v")])
    size_before = (data_dir / LOG_FILE_NAME).stat().st_size
    with open_storage(data_dir) as storage:
        storage.load()
        good = set_entry(1, "ok", "ok")
        with pytest.raises(ValueError, match="surrogate"):
            storage.append_entries(2, [good, set_entry(1, "k", "\udfff"), good])
        assert storage.log_length == 1
        storage.append_entries(2, [good])
    assert (data_dir / LOG_FILE_NAME).stat().st_size > size_before
    assert reload(data_dir).entries == [set_entry(1, "k", "v"), good]


@pytest.mark.parametrize("token", ["", "%", "%4", "%GG", "%FF", "%C3", "%ED%A0%80", "a%-", "%%"])
def test_unescape_rejects_tokens_escape_cannot_produce(token: str) -> None:
    with pytest.raises(ValueError):
        unescape_field(token)


def with_crc(body: str) -> str:
    return f"{body} crc={zlib.crc32(body.encode('utf-8')):08x}"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("SET a b 1 client=c seq=2", "no checksum"),
        ("SET a b 1 client=c seq=2 crc=0000000", "not 8 lowercase hex"),
        ("SET a b 1 client=c seq=2 crc=ABCDEF01", "not 8 lowercase hex"),
        ("SET a b 1 client=c seq=2 crc=00000000", "checksum mismatch"),
        (with_crc("SET a b 1"), "SET line has 4 fields"),
        (with_crc("SET a  b 1 client=c seq=2"), "SET line has 7 fields"),
        (with_crc("SET a b 1 client=c seq=2 extra"), "SET line has 7 fields"),
        (with_crc("NO-OP"), "NO-OP line has 1 fields"),
        (with_crc("DEL a b 1 client=c seq=2"), "DEL line has 6 fields"),
        (with_crc("DEL a 1 client=c"), "DEL line has 4 fields"),
        (with_crc("DEL a%ZZ 1 client=c seq=2"), "bad key"),
        (with_crc("DEL a 1 client=c seq=-2"), "seq '-2'"),
        (with_crc("PUT a b 1 client=c seq=2"), "unknown command 'PUT'"),
        (with_crc(""), "unknown command ''"),
        (with_crc("SET a b 01 client=c seq=2"), "term '01'"),
        (with_crc("SET a b +1 client=c seq=2"), "term '\\+1'"),
        (with_crc("NO-OP -1"), "term '-1'"),
        (with_crc("NO-OP \u0661"), "is not an unsigned decimal"),
        (with_crc("SET a b 1 client=c seq=x"), "seq 'x'"),
        (with_crc("SET a b 1 cli=c seq=2"), "expected client="),
        (with_crc("SET a b 1 client=c sequence=2"), "expected seq="),
        (with_crc("SET a%ZZ b 1 client=c seq=2"), "bad key"),
        (with_crc("SET a %FF 1 client=c seq=2"), "bad value"),
        (with_crc("SET a b 1 client= seq=2"), "bad client id"),
        (with_crc("index=5"), "no command before index="),
        (with_crc("SET a b 1 client=c seq=2 resume=2 index=1"), "resume= must be 1"),
        (with_crc("NO-OP 1 resume=1 index=1"), "only a SET or DEL line can resume"),
        (with_crc("NO-OP 1 ts=-3 index=1"), "ts '-3'"),
        (with_crc("NO-OP 1 ts=01 index=1"), "ts '01'"),
    ],
)
def test_decode_rejects_malformed_lines_naming_file_and_line(line: str, problem: str) -> None:
    with pytest.raises(StorageCorruption, match=problem) as info:
        decode_entry(line, path="/data/logs.txt", line_no=42)
    assert str(info.value).startswith("corrupt data in /data/logs.txt, line 42: ")
    assert info.value.path == "/data/logs.txt"
    assert info.value.line_no == 42


# ---------------------------------------------------------------------------------------------
# Appending, truncating, reloading.


def sample_entries(count: int, term: int = 1) -> list[LogEntry]:
    return [set_entry(term, f"key {i}", f"value {i}\n", "client", i + 1) for i in range(count)]


def test_fresh_directory_is_created_and_empty(tmp_path: Path) -> None:
    directory = tmp_path / "nested" / "logs_node_1"
    loaded = reload(directory)
    assert directory.is_dir()
    assert (directory / LOG_FILE_NAME).read_bytes() == b""
    # Written before any log line: a log without metadata.txt then always means a lost file.
    assert (directory / METADATA_FILE_NAME).read_text() == (
        "commitLength 0\nterm 0\nvotedFor None\nnodeId 1\nleaseBound 0.0\ndriftBound 0.0\n"
        f"incarnation {loaded.incarnation:016x}\nadmitted true\n"
    )
    assert 0 < loaded.incarnation < 2**63
    assert loaded.created and loaded.admitted and loaded.cluster_id is None
    assert loaded.entries == []
    assert loaded.hard_state == HardState(term=0, voted_for=None)
    assert loaded.commit_length == 0
    assert not loaded.dropped_torn_line


def test_node_data_dir_naming(tmp_path: Path) -> None:
    assert node_data_dir(tmp_path, 3) == tmp_path / "logs_node_3"


def test_append_truncate_and_reload(data_dir: Path) -> None:
    entries = sample_entries(5)
    with open_storage(data_dir) as storage:
        storage.load()
        storage.append_entries(1, entries[:2])
        storage.append_entries(3, entries[2:])
        assert storage.log_length == 5
        storage.truncate_from(4)
        assert storage.log_length == 3
        storage.truncate_from(10)
        assert storage.log_length == 3
    assert reload(data_dir).entries == entries[:3]
    text = (data_dir / LOG_FILE_NAME).read_text(encoding="utf-8")
    assert text == "".join(encode_entry(entry, i) + "\n" for i, entry in enumerate(entries[:3], 1))

    with open_storage(data_dir) as storage:
        storage.load()
        storage.truncate_from(1)
        assert storage.log_length == 0
        storage.append_entries(1, entries[:1])
    assert reload(data_dir).entries == entries[:1]


def test_append_at_an_existing_index_replaces_the_suffix(data_dir: Path) -> None:
    old = sample_entries(6, term=1)
    new = [LogEntry(2, NO_OP), set_entry(2, "x", "y")]
    write_log(data_dir, old)
    with open_storage(data_dir) as storage:
        storage.load()
        storage.append_entries(3, new)
        assert storage.log_length == 4
        storage.append_entries(5, [])
        storage.append_entries(4, [])
        assert storage.log_length == 3
    assert reload(data_dir).entries == [*old[:2], new[0]]


def test_append_rejects_gaps_and_bad_indexes(data_dir: Path) -> None:
    with open_storage(data_dir) as storage:
        storage.load()
        storage.append_entries(1, sample_entries(2))
        with pytest.raises(ValueError, match=r"outside 1\.\.3"):
            storage.append_entries(4, sample_entries(1))
        with pytest.raises(ValueError, match=r"outside 1\.\.3"):
            storage.append_entries(0, sample_entries(1))
        with pytest.raises(ValueError, match="start at 1"):
            storage.truncate_from(0)
        assert storage.log_length == 2


def test_writes_before_load_are_refused(data_dir: Path) -> None:
    with open_storage(data_dir) as storage:
        with pytest.raises(StorageError, match="load"):
            storage.append_entries(1, sample_entries(1))
        with pytest.raises(StorageError, match="load"):
            storage.save_metadata(HardState(1, None), 0)


def test_closed_storage_refuses_calls(data_dir: Path) -> None:
    storage = open_storage(data_dir)
    storage.load()
    storage.close()
    storage.close()
    with pytest.raises(StorageError, match="closed"):
        storage.append_entries(1, sample_entries(1))
    with pytest.raises(StorageError, match="closed"):
        storage.load()


def test_a_batch_costs_one_fdatasync(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_fdatasync = os.fdatasync

    def counting_fdatasync(fd: int) -> None:
        calls.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", counting_fdatasync)
    with open_storage(data_dir) as storage:
        storage.load()
        calls.clear()  # a fresh node's first metadata.txt
        storage.append_entries(1, sample_entries(200))
        assert len(calls) == 1
        # Replacing a suffix syncs the truncation on its own before the new lines are written.
        storage.append_entries(150, sample_entries(100, term=2))
        assert len(calls) == 3
        storage.truncate_from(10)
        assert len(calls) == 4
    assert len(reload(data_dir).entries) == 9


def test_usable_from_worker_threads(data_dir: Path) -> None:
    entries = sample_entries(60)

    async def run(storage: NodeStorage) -> None:
        await asyncio.to_thread(storage.load)
        for start in range(0, 60, 20):
            await asyncio.to_thread(storage.append_entries, start + 1, entries[start : start + 20])
        await asyncio.to_thread(storage.save_metadata, HardState(1, 1), 60)

    with open_storage(data_dir) as storage:
        asyncio.run(run(storage))
    loaded = reload(data_dir)
    assert loaded.entries == entries
    assert loaded.commit_length == 60


def test_failed_fsync_makes_the_storage_unusable(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_fdatasync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    with open_storage(data_dir) as storage:
        storage.load()
        storage.append_entries(1, sample_entries(1))
        monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
        with pytest.raises(StorageError, match="Input/output error"):
            storage.append_entries(2, sample_entries(1))
        monkeypatch.undo()
        with pytest.raises(StorageError, match="earlier failure"):
            storage.append_entries(2, sample_entries(1))
        with pytest.raises(StorageError, match="earlier failure"):
            storage.save_metadata(HardState(1, None), 0)


def test_a_second_storage_on_the_same_directory_is_refused(data_dir: Path) -> None:
    with open_storage(data_dir), pytest.raises(StorageError, match="in use"):
        open_storage(data_dir)
    open_storage(data_dir).close()


# ---------------------------------------------------------------------------------------------
# Torn tails and corruption.


@pytest.fixture
def three_line_log(data_dir: Path) -> tuple[list[LogEntry], bytes]:
    # The last line carries multi-byte characters so that cuts also land inside one.
    entries = [*sample_entries(2), set_entry(2, "ключ 日本", "😀 %= \u2028", "c", 9)]
    write_log(data_dir, entries)
    return entries, (data_dir / LOG_FILE_NAME).read_bytes()


def test_torn_last_line_at_every_byte_offset(
    data_dir: Path, three_line_log: tuple[list[LogEntry], bytes]
) -> None:
    entries, data = three_line_log
    log_path = data_dir / LOG_FILE_NAME
    last_start, last_end = line_spans(data)[-1]
    for cut in range(last_start, last_end + 1):
        log_path.write_bytes(data[:cut])
        loaded = reload(data_dir)
        if cut == last_end:
            assert loaded.entries == entries, cut
            assert not loaded.dropped_torn_line, cut
            continue
        assert loaded.entries == entries[:2], cut
        assert loaded.dropped_torn_line == (cut > last_start), cut
        assert log_path.read_bytes() == data[:last_start], cut
        again = reload(data_dir)
        assert again.entries == entries[:2] and not again.dropped_torn_line, cut


def test_repaired_log_accepts_new_appends(
    data_dir: Path, three_line_log: tuple[list[LogEntry], bytes]
) -> None:
    entries, data = three_line_log
    (data_dir / LOG_FILE_NAME).write_bytes(data[:-5])
    with open_storage(data_dir) as storage:
        assert storage.load().dropped_torn_line
        storage.append_entries(3, [LogEntry(3, NO_OP)])
        storage.truncate_from(3)
        storage.append_entries(3, [entries[2]])
    assert reload(data_dir).entries == entries


def test_complete_last_line_with_bad_checksum_is_dropped(
    data_dir: Path, three_line_log: tuple[list[LogEntry], bytes]
) -> None:
    entries, data = three_line_log
    last_start, _ = line_spans(data)[-1]
    damaged = bytearray(data)
    damaged[last_start + 4] ^= 0x01
    (data_dir / LOG_FILE_NAME).write_bytes(bytes(damaged))
    loaded = reload(data_dir)
    assert loaded.entries == entries[:2]
    assert loaded.dropped_torn_line
    assert (data_dir / LOG_FILE_NAME).read_bytes() == data[:last_start]


@pytest.mark.parametrize("tail", [b"\x00" * 4096, b"\n", b"\x00\x00\n", b"SET", b"\xff\xfe\n"])
def test_garbage_tail_is_dropped(
    data_dir: Path, three_line_log: tuple[list[LogEntry], bytes], tail: bytes
) -> None:
    entries, data = three_line_log
    (data_dir / LOG_FILE_NAME).write_bytes(data + tail)
    loaded = reload(data_dir)
    assert loaded.entries == entries
    assert loaded.dropped_torn_line
    assert (data_dir / LOG_FILE_NAME).read_bytes() == data


def test_bit_flip_in_a_middle_line_stops_the_node(data_dir: Path) -> None:
    write_log(data_dir, sample_entries(4))
    log_path = data_dir / LOG_FILE_NAME
    data = log_path.read_bytes()
    start, end = line_spans(data)[1]
    # Every single-bit flip of line 2, its newline included (which merges it with line 3).
    for position in range(start, end):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[position] ^= 1 << bit
            log_path.write_bytes(bytes(damaged))
            with pytest.raises(StorageCorruption) as info:
                reload(data_dir)
            assert info.value.line_no == 2, (position, bit)
            assert f"{log_path}, line 2: " in str(info.value), (position, bit)
            assert log_path.read_bytes() == bytes(damaged), "a corrupt log must not be modified"


def test_corrupt_line_before_a_torn_tail_is_still_corruption(
    data_dir: Path, three_line_log: tuple[list[LogEntry], bytes]
) -> None:
    _, data = three_line_log
    start, _ = line_spans(data)[1]
    damaged = bytearray(data[:-3])
    damaged[start] ^= 0x20
    (data_dir / LOG_FILE_NAME).write_bytes(bytes(damaged))
    with pytest.raises(StorageCorruption, match="line 2: checksum mismatch"):
        reload(data_dir)


def test_invalid_utf8_in_a_middle_line_is_reported(
    data_dir: Path, three_line_log: tuple[list[LogEntry], bytes]
) -> None:
    _, data = three_line_log
    (data_dir / LOG_FILE_NAME).write_bytes(b"\xc3(" + data)
    with pytest.raises(StorageCorruption, match="line 1: not valid UTF-8 at byte 0"):
        reload(data_dir)


# ---------------------------------------------------------------------------------------------
# Metadata.


def test_metadata_is_replaced_atomically_and_reloads(data_dir: Path) -> None:
    write_log(data_dir, sample_entries(5))
    with open_storage(data_dir) as storage:
        storage.load()
        storage.save_metadata(HardState(term=3, voted_for=2), 4)
        incarnation = f"incarnation {storage.incarnation:016x}\n"
        assert (data_dir / METADATA_FILE_NAME).read_text() == (
            "commitLength 4\nterm 3\nvotedFor 2\nnodeId 1\nleaseBound 0.0\ndriftBound 0.0\n"
            f"{incarnation}admitted true\n"
        )
        storage.save_metadata(HardState(term=4, voted_for=None), 5)
    assert sorted(path.name for path in data_dir.iterdir()) == [LOG_FILE_NAME, METADATA_FILE_NAME]
    assert (data_dir / METADATA_FILE_NAME).read_text() == (
        "commitLength 5\nterm 4\nvotedFor None\nnodeId 1\nleaseBound 0.0\ndriftBound 0.0\n"
        f"{incarnation}admitted true\n"
    )
    loaded = reload(data_dir)
    assert loaded.hard_state == HardState(term=4, voted_for=None)
    assert loaded.commit_length == 5


def test_metadata_save_validates_its_arguments(data_dir: Path) -> None:
    with open_storage(data_dir) as storage:
        storage.load()
        (data_dir / METADATA_FILE_NAME).unlink()  # the fresh node's, to see nothing is written
        with pytest.raises(ValueError, match="term"):
            storage.save_metadata(HardState(term=-1, voted_for=None), 0)
        with pytest.raises(ValueError, match="voted_for"):
            storage.save_metadata(HardState(term=1, voted_for=-2), 0)
        with pytest.raises(ValueError, match="commit_length"):
            storage.save_metadata(HardState(term=1, voted_for=None), -1)
    assert not (data_dir / METADATA_FILE_NAME).exists()


def test_commit_length_up_to_the_log_length_loads(data_dir: Path) -> None:
    write_log(data_dir, sample_entries(3))
    (data_dir / METADATA_FILE_NAME).write_text("commitLength 3\nterm 2\nvotedFor 1\nnodeId 1\n")
    loaded = reload(data_dir)
    assert loaded.commit_length == 3
    assert loaded.hard_state == HardState(term=2, voted_for=1)


@pytest.mark.parametrize("kept", [2, 0, None])
def test_a_log_shorter_than_the_commit_length_stops_the_node(
    data_dir: Path, kept: int | None
) -> None:
    # commitLength is written after the log lines it counts are durable, so a longer
    # commitLength means committed entries were lost (lines cut, file emptied or deleted).
    write_log(data_dir, sample_entries(3))
    (data_dir / METADATA_FILE_NAME).write_text("commitLength 3\nterm 2\nvotedFor 1\nnodeId 1\n")
    log_path = data_dir / LOG_FILE_NAME
    if kept is None:
        log_path.unlink()
    else:
        log_path.write_bytes(b"".join(line_bytes(log_path.read_bytes())[:kept]))
    before = log_path.read_bytes() if log_path.exists() else b""
    with pytest.raises(StorageDataLostError) as info:
        reload(data_dir)
    message = str(info.value)
    assert message.startswith(
        f"{log_path} holds {kept or 0} entries but {data_dir / METADATA_FILE_NAME} records "
        "commitLength 3: committed entries are missing. The node's data is damaged; restore "
        f"{data_dir} from a backup, or move it away"
    )
    assert "\n" not in message
    assert (log_path.read_bytes() if log_path.exists() else b"") == before


def test_a_torn_line_within_the_commit_length_is_lost_data(
    data_dir: Path, three_line_log: tuple[list[LogEntry], bytes]
) -> None:
    _, data = three_line_log
    (data_dir / METADATA_FILE_NAME).write_text("commitLength 3\nterm 2\nvotedFor 1\nnodeId 1\n")
    (data_dir / LOG_FILE_NAME).write_bytes(data[:-4])
    with pytest.raises(StorageDataLostError, match=r"holds 2 entries but .* commitLength 3"):
        reload(data_dir)
    assert (data_dir / LOG_FILE_NAME).read_bytes() == data[:-4], "left for the operator"


def test_a_missing_metadata_file_beside_a_log_stops_the_node(data_dir: Path) -> None:
    write_log(data_dir, sample_entries(2))
    (data_dir / METADATA_FILE_NAME).unlink()
    data = (data_dir / LOG_FILE_NAME).read_bytes()
    with pytest.raises(StorageDataLostError) as info:
        reload(data_dir)
    assert str(info.value).startswith(
        f"{data_dir / METADATA_FILE_NAME} is missing but {data_dir / LOG_FILE_NAME} holds 2 "
        "entries: the node's term and vote are lost (starting as new, it could vote twice in "
        "one term). The node's data is damaged; restore "
    )
    assert not (data_dir / METADATA_FILE_NAME).exists()
    assert (data_dir / LOG_FILE_NAME).read_bytes() == data


def test_a_missing_metadata_file_beside_an_empty_log_is_a_fresh_node(data_dir: Path) -> None:
    write_log(data_dir, [])
    (data_dir / METADATA_FILE_NAME).unlink()
    loaded = reload(data_dir)
    assert loaded.entries == [] and loaded.hard_state == HardState(0, None)
    assert (data_dir / METADATA_FILE_NAME).exists()


def test_wrong_node_id_is_refused_without_touching_the_log(
    data_dir: Path, three_line_log: tuple[list[LogEntry], bytes]
) -> None:
    _, data = three_line_log
    (data_dir / METADATA_FILE_NAME).write_text("commitLength 0\nterm 2\nvotedFor None\nnodeId 7\n")
    (data_dir / LOG_FILE_NAME).write_bytes(data[:-1])
    with pytest.raises(StorageError, match="belongs to node 7, not to node 1") as info:
        reload(data_dir)
    assert not isinstance(info.value, StorageCorruption)
    assert (data_dir / LOG_FILE_NAME).read_bytes() == data[:-1]


@pytest.mark.parametrize(
    ("content", "where", "problem"),
    [
        ("commitLength 0\nterm 1\nvotedFor None\nnodeId 1", ", line 4", "no newline"),
        ("commitLength 0\nterm x\nvotedFor None\nnodeId 1\n", ", line 2", "term 'x'"),
        ("commitLength 0\nterm 1\nvotedFor none\nnodeId 1\n", ", line 3", "votedFor 'none'"),
        ("commitLength 0\nterm 1\nvotedFor None\nnodeId 1\nterm 2\n", ", line 5", "twice"),
        ("commitLength 0\nterm 1\nvotedFor None\nnodeid 1\n", ", line 4", "unknown name"),
        ("commitLength 0\n\nterm 1\nvotedFor None\nnodeId 1\n", ", line 2", "name value"),
        ("commitLength  0\nterm 1\nvotedFor None\nnodeId 1\n", ", line 1", "commitLength ' 0'"),
        ("commitLength -1\nterm 1\nvotedFor None\nnodeId 1\n", ", line 1", "commitLength '-1'"),
        ("commitLength 0\nterm 1\nnodeId 1\n", ":", "missing votedFor"),
        ("", ":", "missing commitLength, term, votedFor, nodeId"),
        # Beyond what the core ever reaches (raftkv/core/validation.py):
        (
            f"commitLength 0\nterm {MAX_TERM + 1}\nvotedFor None\nnodeId 1\n",
            ", line 2",
            f"term {MAX_TERM + 1} exceeds the limit {MAX_TERM}",
        ),
        (
            f"commitLength {MAX_INDEX + 1}\nterm 1\nvotedFor None\nnodeId 1\n",
            ", line 1",
            f"commitLength {MAX_INDEX + 1} exceeds the limit {MAX_INDEX}",
        ),
    ],
)
def test_malformed_metadata_names_file_and_line(
    data_dir: Path, content: str, where: str, problem: str
) -> None:
    data_dir.mkdir(parents=True)
    metadata_path = data_dir / METADATA_FILE_NAME
    metadata_path.write_text(content)
    with pytest.raises(StorageCorruption, match=problem) as info:
        reload(data_dir)
    assert str(info.value).startswith(f"corrupt data in {metadata_path}{where}")


def test_the_highest_term_and_commit_length_still_load(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / METADATA_FILE_NAME).write_text(
        f"commitLength 0\nterm {MAX_TERM}\nvotedFor None\nnodeId 1\n"
    )
    assert reload(data_dir).hard_state.term == MAX_TERM


def test_non_utf8_metadata_is_corruption(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / METADATA_FILE_NAME).write_bytes(b"term \xff\n")
    with pytest.raises(StorageCorruption, match="not valid UTF-8"):
        reload(data_dir)


# ---------------------------------------------------------------------------------------------
# Failpoints: a real process dies with os._exit, then this process reloads what it left.

_CHILD_PRELUDE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from raftkv.core.messages import LogEntry, NO_OP, SetCommand
    from raftkv.server.storage import HardState, NodeStorage
    storage = NodeStorage(Path(sys.argv[1]), 1)
    storage.load()
    """
)


def run_python(
    source: str, data_dir: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`source` in a new interpreter that imports this checkout, `data_dir` its argument."""
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")])
    )
    return subprocess.run(
        [sys.executable, "-c", source, str(data_dir)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def run_child(data_dir: Path, failpoint: str, body: str) -> subprocess.CompletedProcess[str]:
    return run_python(_CHILD_PRELUDE + textwrap.dedent(body), data_dir, {FAILPOINT_ENV: failpoint})


def test_failpoint_after_log_write_before_fsync(data_dir: Path) -> None:
    before = sample_entries(3)
    write_log(data_dir, before)
    added = [LogEntry(2, NO_OP), set_entry(2, "after crash", "?", "c", 1)]
    result = run_child(
        data_dir,
        FAILPOINT_LOG_WRITE,
        """
        crash_entry = LogEntry(2, SetCommand("after crash", "?", "c", 1))
        storage.append_entries(4, [LogEntry(2, NO_OP), crash_entry])
        print("survived the failpoint")
        """,
    )
    assert result.returncode == FAILPOINT_EXIT_CODE, result.stderr
    assert "survived" not in result.stdout
    loaded = reload(data_dir)
    # Unsynced lines may or may not have reached the disk; whatever did must be a whole prefix.
    assert loaded.entries[:3] == before
    assert loaded.entries in ([*before, *added[:count]] for count in range(3))
    again = reload(data_dir)
    assert again.entries == loaded.entries and not again.dropped_torn_line


def test_failpoint_after_metadata_rename_before_dirsync(data_dir: Path) -> None:
    write_log(data_dir, sample_entries(2))
    with open_storage(data_dir) as storage:
        storage.load()
        storage.save_metadata(HardState(term=1, voted_for=None), 1)
    result = run_child(
        data_dir,
        FAILPOINT_METADATA_RENAME,
        """
        storage.save_metadata(HardState(term=5, voted_for=3), 2)
        print("survived the failpoint")
        """,
    )
    assert result.returncode == FAILPOINT_EXIT_CODE, result.stderr
    assert "survived" not in result.stdout
    loaded = reload(data_dir)
    assert (loaded.hard_state, loaded.commit_length) in [
        (HardState(term=1, voted_for=None), 1),
        (HardState(term=5, voted_for=3), 2),
    ]
    assert loaded.entries == sample_entries(2)


def test_failpoint_only_fires_where_it_is_placed(data_dir: Path) -> None:
    result = run_child(
        data_dir,
        FAILPOINT_METADATA_RENAME,
        """
        storage.append_entries(1, [LogEntry(1, NO_OP)])
        storage.truncate_from(1)
        storage.append_entries(1, [LogEntry(1, NO_OP)])
        print("appended")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "appended"
    assert reload(data_dir).entries == [LogEntry(1, NO_OP)]


def test_unknown_failpoint_is_refused(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAILPOINT_ENV, "after-everything")
    with pytest.raises(StorageError, match="unknown RAFTKV_FAILPOINT='after-everything'"):
        open_storage(data_dir)
    assert not data_dir.exists()


# ---------------------------------------------------------------------------------------------
# Lost, duplicated and swapped lines: the index= field, covered by the checksum.


def _rearranged(lines: list[bytes], how: str) -> tuple[list[bytes], int]:
    """The lines rearranged, and the line number the load must name."""
    if how == "swapped":
        return [lines[0], lines[2], lines[1], lines[3]], 2
    if how == "duplicated":
        return [lines[0], lines[1], lines[1], lines[2], lines[3]], 3
    if how == "missing middle":
        return [lines[0], lines[2], lines[3]], 2
    assert how == "missing before the last"
    return [lines[0], lines[1], lines[3]], 3


@pytest.mark.parametrize(
    "how", ["swapped", "duplicated", "missing middle", "missing before the last"]
)
def test_moved_lines_stop_the_node_naming_the_line(data_dir: Path, how: str) -> None:
    write_log(data_dir, sample_entries(4))
    log_path = data_dir / LOG_FILE_NAME
    lines, line_no = _rearranged(line_bytes(log_path.read_bytes()), how)
    log_path.write_bytes(b"".join(lines))
    with pytest.raises(StorageCorruption) as info:
        reload(data_dir)
    assert info.value.line_no == line_no
    assert str(info.value).startswith(f"corrupt data in {log_path}, line {line_no}: holds the ")
    assert "a line before it is missing or duplicated, or lines are out of order" in str(info.value)
    assert log_path.read_bytes() == b"".join(lines), "a corrupt log must not be modified"


def test_a_complete_last_line_with_a_wrong_index_is_not_taken_for_a_torn_one(
    data_dir: Path,
) -> None:
    write_log(data_dir, sample_entries(2))
    log_path = data_dir / LOG_FILE_NAME
    log_path.write_bytes(log_path.read_bytes() + line_bytes(log_path.read_bytes())[1])
    with pytest.raises(StorageCorruption, match="line 3: holds the entry for index 2, not 3"):
        reload(data_dir)


def test_append_refuses_lines_encoded_for_another_index(data_dir: Path) -> None:
    with open_storage(data_dir) as storage:
        storage.load()
        storage.append_entries(1, sample_entries(2))
        with pytest.raises(ValueError, match="not encoded for index 3"):
            storage.append_encoded(3, storage_module.encode_lines(sample_entries(1), 2))
        assert storage.log_length == 2


# ---------------------------------------------------------------------------------------------
# Files of the old format (no index=): loaded and upgraded in place.


def test_an_old_format_log_loads_and_is_upgraded(data_dir: Path) -> None:
    entries = [LogEntry(1, NO_OP), *sample_entries(3), set_entry(2, "ключ", "😀 %=", "c", 9)]
    write_old_format(data_dir, entries, commit_length=4)
    with open_storage(data_dir) as storage:
        loaded = storage.load()
        assert loaded.entries == entries
        assert loaded.upgraded_old_format and not loaded.dropped_torn_line
        assert loaded.commit_length == 4
        assert loaded.hard_state == HardState(term=3, voted_for=2)
        # The directory stays locked through the rename, and the store keeps working.
        with pytest.raises(StorageError, match="in use"):
            open_storage(data_dir)
        storage.append_entries(6, [LogEntry(3, NO_OP)])
        storage.truncate_from(6)
    assert (data_dir / LOG_FILE_NAME).read_bytes() == b"".join(
        storage_module.encode_lines(entries, 1)
    )
    assert not (data_dir / "logs.txt.tmp").exists()
    # The metadata of that time is written in today's format too (new incarnation, bounds 0).
    assert (data_dir / METADATA_FILE_NAME).read_text() == (
        "commitLength 4\nterm 3\nvotedFor 2\nnodeId 1\nleaseBound 0.0\ndriftBound 0.0\n"
        f"incarnation {loaded.incarnation:016x}\nadmitted true\n"
    )
    again = reload(data_dir)
    assert again.entries == entries and not again.upgraded_old_format


def test_an_old_format_log_with_a_torn_tail_is_repaired_and_upgraded(data_dir: Path) -> None:
    entries = sample_entries(3)
    data = write_old_format(data_dir, entries, commit_length=2)
    (data_dir / LOG_FILE_NAME).write_bytes(data[:-7])
    loaded = reload(data_dir)
    assert loaded.entries == entries[:2]
    assert loaded.dropped_torn_line and loaded.upgraded_old_format
    assert (data_dir / LOG_FILE_NAME).read_bytes() == b"".join(
        storage_module.encode_lines(entries[:2], 1)
    )


def test_an_old_format_log_is_checked_before_it_is_upgraded(data_dir: Path) -> None:
    data = write_old_format(data_dir, sample_entries(3), commit_length=3)
    log_path = data_dir / LOG_FILE_NAME
    # Shorter than its commit point: left as it is.
    log_path.write_bytes(b"".join(line_bytes(data)[:2]))
    with pytest.raises(StorageDataLostError, match="holds 2 entries"):
        reload(data_dir)
    assert log_path.read_bytes() == b"".join(line_bytes(data)[:2])
    # A corrupt middle line: left as it is.
    damaged = bytearray(data)
    damaged[line_spans(data)[1][0] + 5] ^= 0x01
    log_path.write_bytes(bytes(damaged))
    with pytest.raises(StorageCorruption, match="line 2: checksum mismatch"):
        reload(data_dir)
    assert log_path.read_bytes() == bytes(damaged)


def test_a_log_mixing_both_formats_is_corrupt(data_dir: Path) -> None:
    entries = sample_entries(3)
    write_old_format(data_dir, entries, commit_length=0)
    log_path = data_dir / LOG_FILE_NAME
    old = line_bytes(log_path.read_bytes())
    new = storage_module.encode_lines(entries, 1)
    log_path.write_bytes(old[0] + new[1] + old[2])
    with pytest.raises(StorageCorruption, match="line 2: has an index= field but line 1 is in"):
        reload(data_dir)
    log_path.write_bytes(new[0] + old[1] + new[2])
    with pytest.raises(StorageCorruption, match="line 2: no index= field"):
        reload(data_dir)


def test_a_failed_upgrade_leaves_the_old_file(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = sample_entries(3)
    data = write_old_format(data_dir, entries, commit_length=3)
    real_replace = os.replace

    def failing_replace(src: object, dst: object) -> None:
        if str(src).endswith("logs.txt.tmp"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StorageError, match=r"upgrading .*logs.txt failed: .*No space left"):
        reload(data_dir)
    assert (data_dir / LOG_FILE_NAME).read_bytes() == data
    assert not (data_dir / "logs.txt.tmp").exists()
    monkeypatch.undo()
    assert reload(data_dir).upgraded_old_format


# ---------------------------------------------------------------------------------------------
# Read-only and full data directories: one StorageError with the system's reason.


@pytest.mark.parametrize(
    ("errno_value", "reason"),
    [(30, "Read-only file system"), (13, "Permission denied")],
)
def test_an_unwritable_data_directory_is_one_storage_error(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, errno_value: int, reason: str
) -> None:
    write_log(data_dir, sample_entries(1))
    real_open = os.open

    def refusing_open(path: object, flags: int, *args: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno_value, reason, str(path))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(StorageError) as info:
        open_storage(data_dir)
    assert str(info.value) == (
        f"cannot open data directory {data_dir}: [Errno {errno_value}] {reason}: "
        f"'{data_dir / LOG_FILE_NAME}'"
    )


def test_a_full_disk_is_one_storage_error(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_pwrite(fd: int, data: object, offset: int) -> int:
        raise OSError(28, "No space left on device")

    with open_storage(data_dir) as storage:
        storage.load()
        monkeypatch.setattr(os, "pwrite", full_pwrite)
        with pytest.raises(StorageError) as info:
            storage.append_entries(1, sample_entries(1))
        assert str(info.value) == (
            f"appending to {data_dir / LOG_FILE_NAME} failed: [Errno 28] No space left on device"
        )
        # Every later call names the first failure.
        with pytest.raises(StorageError, match=r"earlier failure: appending .*No space left"):
            storage.save_metadata(HardState(1, None), 0)


# ---------------------------------------------------------------------------------------------
# Out of descriptors: a real process whose every descriptor is taken (as by client connections).

_EXHAUSTED_CHILD = textwrap.dedent(
    """
    import errno, os, resource, sys
    from pathlib import Path
    from raftkv.core.messages import LogEntry, NO_OP
    from raftkv.server.storage import HardState, NodeStorage
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    storage = NodeStorage(Path(sys.argv[1]), 1)
    storage.load()
    taken = []
    while True:
        try:
            taken.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as error:
            assert error.errno == errno.EMFILE, error
            break
    storage.append_entries(1, [LogEntry(3, NO_OP)])
    storage.save_metadata(HardState(3, 2), 1)
    storage.save_metadata(HardState(4, None), 1)  # the spares it gave up were taken back
    try:
        os.open(os.devnull, os.O_RDONLY)
    except OSError as error:
        print("still exhausted:", errno.errorcode[error.errno], "after", len(taken))
    """
)


def test_metadata_saves_and_appends_succeed_when_the_process_has_no_descriptor_left(
    data_dir: Path,
) -> None:
    child = run_python(_EXHAUSTED_CHILD, data_dir)
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("still exhausted: EMFILE after ")
    loaded = reload(data_dir)
    assert loaded.hard_state == HardState(4, None)
    assert loaded.entries == [LogEntry(3, NO_OP)]
    assert loaded.commit_length == 1


@pytest.mark.parametrize(
    "entry",
    [
        LogEntry(3, SetCommand("k", "v", "c", 5, resume=True), 12345),
        LogEntry(3, DeleteCommand("k", "c", 6, resume=True), 9),
        LogEntry(2, NO_OP, 7),
        LogEntry(2, SetCommand("k", "v", "c", 5)),
    ],
)
def test_session_fields_round_trip_and_are_written_only_when_set(entry: LogEntry) -> None:
    line = encode_entry(entry, 4)
    decoded = decode_entry(line, path="logs.txt", line_no=4)
    command = decoded.command
    assert decoded == entry and decoded.time == entry.time
    assert ("ts=" in line) == bool(entry.time)
    resume = isinstance(command, SetCommand | DeleteCommand) and command.resume
    assert ("resume=1" in line) == resume == getattr(entry.command, "resume", False)
