"""raftkv.server.snapshot_transfer: the follower's receiver (in order, out of order, a restart
at 0, a snapshot that fails its checks) and the leader's sender (its window, a restart from the
follower's next_offset, its deadline), with a fake core and a fake link."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from pathlib import Path

import immutables
import pytest

from raftkv.core.config import FAST_PROFILE
from raftkv.core.messages import InstallSnapshot, InstallSnapshotReply, Message
from raftkv.server.peers import StreamBrokenError
from raftkv.server.snapshot_file import SnapshotHeader, encode_snapshot
from raftkv.server.snapshot_transfer import (
    SnapshotReceiver,
    SnapshotSender,
    TransferFailedError,
    transfer_deadline,
)
from raftkv.server.wire import SnapshotChunk, SnapshotChunkReply

CLUSTER = "test-cluster"
CHUNK = 1000
INTENT = InstallSnapshot(3, 0, 40, 2, 0.3, max_clock_drift=0.01)


def snapshot_bytes(cluster_id: str = CLUSTER, keys: int = 300) -> bytes:
    data = immutables.Map({f"key{i:04}": f"value {i}" for i in range(keys)})
    sessions = immutables.Map({"client": (4, 39, 0)})
    header = SnapshotHeader(40, 2, cluster_id, 0)
    return b"".join(encode_snapshot(header, data, sessions))


def chunks_of(data: bytes, size: int = CHUNK) -> list[SnapshotChunk]:
    template = InstallSnapshot(3, 0, 40, 2, 0.3)
    return [
        SnapshotChunk(
            template, offset, len(data), data[offset : offset + size], (offset + size >= len(data))
        )
        for offset in range(0, len(data), size)
    ]


class FakeCore:
    """Answers every chunk at once, as the core would (done only with an image)."""

    def __init__(self) -> None:
        self.messages: list[InstallSnapshot] = []

    def feed(self, message: InstallSnapshot) -> asyncio.Future[Message]:
        self.messages.append(message)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        match = message.last_index if message.image is not None else 0
        future.set_result(InstallSnapshotReply(3, 1, message.last_index, message.done, match))
        return future


def receiver(tmp_path: Path, core: FakeCore, log: list[str]) -> SnapshotReceiver:
    return SnapshotReceiver(
        tmp_path / "snapshot.txt.recv", 1, CLUSTER, core.feed, log.append, sync=False
    )


def receive_all(recv: SnapshotReceiver, chunks: list[SnapshotChunk]) -> list[int]:
    async def scenario() -> list[int]:
        offsets = []
        for chunk in chunks:
            future, next_offset = await recv.receive(chunk)
            assert future.done()
            offsets.append(next_offset)
        return offsets

    return asyncio.run(scenario())


def test_chunks_in_order_make_the_file_and_the_last_one_carries_the_image(
    tmp_path: Path,
) -> None:
    data = snapshot_bytes()
    chunks = chunks_of(data)
    core, log = FakeCore(), list[str]()
    recv = receiver(tmp_path, core, log)
    offsets = receive_all(recv, chunks)
    assert offsets == [chunk.end for chunk in chunks]
    assert (tmp_path / "snapshot.txt.recv").read_bytes() == data
    assert (tmp_path / "snapshot.txt.recv").stat().st_mode & 0o777 == 0o600
    *middle, last = core.messages
    assert all(not m.done and m.image is None for m in middle)
    assert last.done and last.image is not None
    assert (last.image.index, last.image.term, len(last.image.data)) == (40, 2, 300)
    assert last.image.sessions["client"] == (4, 39, 0)
    assert recv.received == 0 and not log  # the transfer is over


def test_a_chunk_out_of_order_writes_nothing_and_names_what_is_held(tmp_path: Path) -> None:
    chunks = chunks_of(snapshot_bytes())
    core, log = FakeCore(), list[str]()
    recv = receiver(tmp_path, core, log)
    offsets = receive_all(recv, [chunks[0], chunks[2], chunks[1], chunks[1]])
    assert offsets == [CHUNK, CHUNK, 2 * CHUNK, 2 * CHUNK]
    assert (tmp_path / "snapshot.txt.recv").stat().st_size == 2 * CHUNK
    # Every chunk still reaches the core (each is news of the leader), never as the last one.
    assert len(core.messages) == 4 and not any(m.done for m in core.messages)


def test_a_chunk_of_another_transfer_is_not_taken_and_told_to_start_over(
    tmp_path: Path,
) -> None:
    chunks = chunks_of(snapshot_bytes())
    core, log = FakeCore(), list[str]()
    recv = receiver(tmp_path, core, log)
    # A's transfer holds 2 chunks; B's chunk at 1 * CHUNK is not told A's 2 * CHUNK (B would
    # restart there, mismatch again, and so on until its deadline) but 0.
    other = SnapshotChunk(
        InstallSnapshot(4, 0, 40, 2, 0.3), CHUNK, chunks[1].total_size, chunks[1].data
    )
    assert receive_all(recv, [chunks[0], chunks[1], other]) == [CHUNK, 2 * CHUNK, 0]
    assert recv.received == 2 * CHUNK


def restamped(chunk: SnapshotChunk, term: int, leader: int) -> SnapshotChunk:
    message = InstallSnapshot(term, leader, 40, 2, 0.3)
    return SnapshotChunk(message, chunk.offset, chunk.total_size, chunk.data, chunk.done)


def test_a_deposed_leaders_first_chunk_does_not_replace_the_transfer(tmp_path: Path) -> None:
    data = snapshot_bytes()
    chunks = chunks_of(data)
    core, log = FakeCore(), list[str]()
    recv = receiver(tmp_path, core, log)
    stale = restamped(chunks[0], 2, 5)  # leader 5 of term 2; chunks are term 3's
    offsets = receive_all(recv, [chunks[0], chunks[1], stale, *chunks[2:]])
    assert offsets[:3] == [CHUNK, 2 * CHUNK, 0]
    assert offsets[-1] == len(data) and core.messages[-1].image is not None
    assert (tmp_path / "snapshot.txt.recv").read_bytes() == data


def test_a_first_chunk_below_the_cores_term_does_not_replace_the_transfer(
    tmp_path: Path,
) -> None:
    # The core moved to term 4 while term 3's transfer went on: a term-3 restart from another
    # node (the chunks alone would not show it stale) leaves the transfer alone.
    data = snapshot_bytes()
    chunks = chunks_of(data)
    core, log = FakeCore(), list[str]()
    recv = SnapshotReceiver(
        tmp_path / "snapshot.txt.recv",
        1,
        CLUSTER,
        core.feed,
        log.append,
        sync=False,
        current_term=lambda: 4 if len(core.messages) >= 2 else 3,
    )
    offsets = receive_all(recv, [chunks[0], chunks[1], restamped(chunks[0], 3, 5)])
    assert offsets == [CHUNK, 2 * CHUNK, 0]
    assert recv.received == 2 * CHUNK


def test_offset_zero_starts_over_and_replaces_the_partial_transfer(tmp_path: Path) -> None:
    data = snapshot_bytes()
    chunks = chunks_of(data)
    core, log = FakeCore(), list[str]()
    recv = receiver(tmp_path, core, log)
    offsets = receive_all(recv, [chunks[0], chunks[1], *chunks])
    assert offsets[:3] == [CHUNK, 2 * CHUNK, CHUNK]
    assert (tmp_path / "snapshot.txt.recv").read_bytes() == data
    assert core.messages[-1].image is not None


def damaged(data: bytes) -> bytes:
    # A different byte inside a value: every line still parses, the checksum does not match.
    position = data.index(b"value%20150")
    return data[:position] + b"valuE%20150" + data[position + len(b"value%20150") :]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (damaged(snapshot_bytes()), "checksum mismatch"),
        (snapshot_bytes(cluster_id="another"), "belongs to cluster 'another'"),
    ],
    ids=["crc", "cluster"],
)
def test_a_snapshot_that_fails_its_checks_is_dropped_and_restarts_at_zero(
    tmp_path: Path, data: bytes, problem: str
) -> None:
    chunks = chunks_of(data)
    core, log = FakeCore(), list[str]()
    recv = receiver(tmp_path, core, log)
    offsets = receive_all(recv, chunks)
    assert offsets[-1] == 0 and offsets[:-1] == [chunk.end for chunk in chunks[:-1]]
    assert not any(m.done or m.image is not None for m in core.messages)
    assert not (tmp_path / "snapshot.txt.recv").exists()
    assert len(log) == 1 and problem in log[0] and "from the start" in log[0]
    # The sender's retry from 0 is taken.
    good = chunks_of(snapshot_bytes())
    assert receive_all(recv, good)[-1] == good[-1].total_size
    assert core.messages[-1].image is not None


def test_a_header_that_is_not_the_chunks_snapshot_is_dropped(tmp_path: Path) -> None:
    data = snapshot_bytes()
    chunks = [
        SnapshotChunk(InstallSnapshot(3, 0, 41, 2, 0.3), c.offset, c.total_size, c.data, c.done)
        for c in chunks_of(data)
    ]
    core, log = FakeCore(), list[str]()
    recv = receiver(tmp_path, core, log)
    assert receive_all(recv, chunks)[-1] == 0
    assert "its header says index 40" in log[0]


# ---------------------------------------------------------------------------------------------
# The sender


class FakeLink:
    """Records chunks; `answer` decides each reply's next_offset (None: leave it to the test).
    Replies come only once four chunks are unanswered or the last one was sent, so that the
    window shows."""

    def __init__(self, answer: Callable[[SnapshotChunk], int | None]) -> None:
        self.answer = answer
        self.sent: list[SnapshotChunk] = []
        self.pending: list[asyncio.Future[SnapshotChunkReply]] = []
        self.held: list[tuple[asyncio.Future[SnapshotChunkReply], SnapshotChunkReply]] = []
        self.most_unanswered = 0

    def send_chunk(self, chunk: SnapshotChunk) -> asyncio.Future[SnapshotChunkReply]:
        self.sent.append(chunk)
        future: asyncio.Future[SnapshotChunkReply] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        self.most_unanswered = max(self.most_unanswered, sum(not f.done() for f in self.pending))
        next_offset = self.answer(chunk)
        if next_offset is not None:
            reply = InstallSnapshotReply(3, 1, 40, chunk.done, 40 if chunk.done else 0)
            self.held.append((future, SnapshotChunkReply(reply, next_offset)))
        if len(self.held) >= 4 or chunk.done:
            held, self.held = self.held, []
            asyncio.get_running_loop().call_soon(self._release, held)
        return future

    @staticmethod
    def _release(
        held: list[tuple[asyncio.Future[SnapshotChunkReply], SnapshotChunkReply]],
    ) -> None:
        for future, reply in held:
            if not future.done():
                future.set_result(reply)


def run_sender(
    tmp_path: Path, link: FakeLink, leading: Callable[[], bool] = lambda: True
) -> tuple[SnapshotSender, bool]:
    path = tmp_path / "snapshot.txt"
    path.write_bytes(snapshot_bytes())
    sender = SnapshotSender(path, link, INTENT, FAST_PROFILE, leading, chunk_bytes=CHUNK)
    return sender, asyncio.run(sender.run())


def test_the_sender_streams_the_file_with_at_most_four_unanswered(tmp_path: Path) -> None:
    link = FakeLink(lambda chunk: chunk.end)
    sender, done = run_sender(tmp_path, link)
    data = snapshot_bytes()
    assert done and b"".join(c.data for c in link.sent) == data
    assert [c.offset for c in link.sent] == list(range(0, len(data), CHUNK))
    assert link.most_unanswered == 4
    assert [c.done for c in link.sent] == [False] * (len(link.sent) - 1) + [True]
    first = link.sent[0].message
    # The header's snapshot, the intent's term, lease and drift.
    assert (first.term, first.leader_id, first.last_index, first.last_term) == (3, 0, 40, 2)
    assert (first.lease_duration, first.max_clock_drift, first.done) == (0.3, 0.01, False)
    assert sender.header is not None and sender.header.last_index == 40


def test_the_sender_restarts_from_the_followers_next_offset(tmp_path: Path) -> None:
    restarted: list[SnapshotChunk] = []

    def answer(chunk: SnapshotChunk) -> int:
        # The follower drops the transfer once, when the chunk at 3 * CHUNK arrives.
        if chunk.offset == 3 * CHUNK and not restarted:
            restarted.append(chunk)
            return 0
        return chunk.end

    link = FakeLink(answer)
    sender, done = run_sender(tmp_path, link)
    assert done and sender.restarts == 1
    offsets = [c.offset for c in link.sent]
    restart = offsets.index(0, 1)
    assert offsets[restart:] == list(range(0, len(snapshot_bytes()), CHUNK))


def test_the_sender_stops_without_failing_once_the_node_stops_leading(tmp_path: Path) -> None:
    link = FakeLink(lambda chunk: chunk.end)
    calls: list[int] = []

    def leading() -> bool:
        calls.append(1)
        return len(calls) < 3

    _, done = run_sender(tmp_path, link, leading)
    assert not done and len(link.sent) < len(snapshot_bytes()) // CHUNK


def test_a_broken_stream_or_a_missing_file_fails_the_transfer(tmp_path: Path) -> None:
    def broken(chunk: SnapshotChunk) -> None:
        asyncio.get_running_loop().call_soon(
            lambda: link.pending[-1].set_exception(StreamBrokenError("UNAVAILABLE: gone"))
        )

    link = FakeLink(broken)
    with pytest.raises(TransferFailedError, match="gone"):
        run_sender(tmp_path, link)
    sender = SnapshotSender(tmp_path / "none.txt", link, INTENT, FAST_PROFILE, lambda: True)
    with pytest.raises(TransferFailedError, match="cannot open"):
        asyncio.run(sender.run())


def test_the_deadline_scales_with_the_size() -> None:
    assert transfer_deadline(1000, FAST_PROFILE) == FAST_PROFILE.election_timeout_max
    big = 100 * 256 * 1024
    assert transfer_deadline(big, FAST_PROFILE) == pytest.approx(
        100 * FAST_PROFILE.election_timeout_min
    )


def test_a_read_error_mid_file_fails_the_transfer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # EIO past the header: it must end as TransferFailedError (which the replica reports to
    # the core), not as an OSError out of run().
    real_pread = os.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        if offset > 0:
            raise OSError(errno.EIO, "Input/output error")
        return real_pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", pread)
    link = FakeLink(lambda chunk: chunk.end)
    with pytest.raises(TransferFailedError, match="Input/output error"):
        run_sender(tmp_path, link)


def test_a_file_the_follower_drops_at_its_last_check_fails_the_transfer(tmp_path: Path) -> None:
    # The follower's checks of the whole file always fail (bit rot in the leader's copy): each
    # chunk is taken, the last one answered 0. Starting over would fail again until the deadline.
    link = FakeLink(lambda chunk: 0 if chunk.done else chunk.end)
    with pytest.raises(TransferFailedError, match="failed the follower's checks"):
        run_sender(tmp_path, link)
    assert [c.offset for c in link.sent] == list(range(0, len(snapshot_bytes()), CHUNK))
