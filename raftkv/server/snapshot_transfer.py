"""InstallSnapshot over the peer stream: the leader's sender and the follower's receiver.

The core decides *that* a follower needs the snapshot (it emits an `InstallSnapshot` intent,
docs/design.md §5) and *what* an installed one changes; this module moves the bytes.

Sender (`SnapshotSender`, one task per follower at a time). It opens snapshot.txt and keeps
the descriptor for the whole transfer: a newer snapshot renamed over the file meanwhile, or
the compaction after it, leaves the inode being sent alone (POSIX), so the transfer never
mixes two files. The file's own header names the snapshot (it may be newer than the intent;
the follower checks the header against the chunks). Chunks of `SNAPSHOT_CHUNK_BYTES` go out
with the intent's term, lease and drift, at most `WINDOW` unanswered, so the leader holds at
most that many chunks in memory. Each reply says how many bytes the follower holds
(`next_offset`); one that differs from what the sender expects restarts the stream from there,
except 0 in answer to the last chunk: the follower's checks of the whole file failed, and a
resend of the same file would too, so the transfer fails.
The whole transfer must finish within max(election_timeout_max, chunks × election_timeout_min)
(hashicorp/raft's net_transport scales its deadline with the size the same way); on a failure
or past it, the caller reports `snapshot_send_failed` to the core, which probes the follower
again and asks for a new transfer once it answers. A sender whose node no longer leads the
intent's term stops without a report.

Receiver (`SnapshotReceiver`, one per node). Chunks arrive in order on a stream and are
handled one at a time (an asyncio lock across streams): offset 0 starts a transfer (a new
``snapshot.txt.recv``, created with O_TRUNC and mode 0600, and a fresh `SnapshotReader`),
replacing any partial one, so the receiver holds at most one, unless its term is below the
core's or a chunk's seen before (a deposed leader's: the core refuses it); a chunk that
continues the current transfer exactly where it stands is written and parsed in a worker
thread; any other chunk writes nothing, and one of another transfer is answered next_offset 0
(the current one's position means nothing to its sender). The last chunk is fdatasync'ed and
checked whole (checksum, counts, the header against the chunk, the cluster id); the core then
gets the image with it. A transfer that fails a check is dropped (a dump line naming the
check), the chunk goes to the core as a chunk that is not the last, and the reply's
next_offset 0 fails the sender's transfer (it reports it; the core asks for another later).
Every chunk goes to the core: each one is news of the leader (election timer, lease rule 2).

A done chunk's answer is awaited before the next chunk is taken: the core installs the image
by renaming ``snapshot.txt.recv`` (the Ready's `installed`, raftkv/server/replica.py) before
it replies, so no later transfer can truncate the file before it is in place. A crash
mid-transfer leaves ``snapshot.txt.recv``, which the storage deletes at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Protocol

from raftkv.core.config import TimingConfig
from raftkv.core.messages import InstallSnapshot, Message
from raftkv.core.state_machine import SnapshotImage
from raftkv.server.snapshot_file import SnapshotHeader, SnapshotReader
from raftkv.server.storage_errors import StorageCorruption
from raftkv.server.wire import SNAPSHOT_CHUNK_BYTES, SnapshotChunk, SnapshotChunkReply

# Chunks a sender keeps unanswered: enough to keep a follower's disk busy across a round trip,
# few enough that the leader holds 1 MiB per transfer and heartbeats are not queued far behind.
WINDOW: Final = 4


class ChunkLink(Protocol):
    """What the sender needs of a peer link (`raftkv.server.peers.PeerLink`)."""

    def send_chunk(self, chunk: SnapshotChunk) -> asyncio.Future[SnapshotChunkReply]: ...


class TransferFailedError(Exception):
    """The transfer cannot go on; the message says why (for the dump)."""


def transfer_deadline(size: int, config: TimingConfig) -> float:
    """Seconds a transfer of `size` bytes may take: an election timeout per chunk, at least the
    longest election timeout."""
    chunks = size / SNAPSHOT_CHUNK_BYTES
    return max(config.election_timeout_max, chunks * config.election_timeout_min)


def read_header(data: bytes, source: str) -> SnapshotHeader:
    """The header at the start of a snapshot file's first bytes (the header lines are short:
    they fit in any chunk). Raises StorageCorruption when they do not parse."""
    reader = SnapshotReader(source)
    end = 0
    # The seven header lines; feeding only them keeps the reader from parsing the body.
    for _ in range(7):
        newline = data.find(b"\n", end)
        if newline < 0:
            break
        end = newline + 1
    reader.feed(data[:end])
    header = reader.header
    if header is None:
        raise StorageCorruption(source, 1, "no complete header in the first chunk")
    return header


class SnapshotSender:
    """Streams one snapshot file to one follower (module docstring)."""

    def __init__(
        self,
        path: Path,
        link: ChunkLink,
        intent: InstallSnapshot,
        config: TimingConfig,
        still_leading: Callable[[], bool],
        *,
        chunk_bytes: int = SNAPSHOT_CHUNK_BYTES,
        window: int = WINDOW,
    ) -> None:
        self._path = path
        self._link = link
        self._intent = intent
        self._config = config
        self._still_leading = still_leading
        self._chunk_bytes = chunk_bytes
        self._window = window
        # Chunks sent and restarts, for the caller's dump line and the tests.
        self.chunks_sent = 0
        self.restarts = 0
        self.size = 0
        self.header: SnapshotHeader | None = None

    async def run(self) -> bool:
        """True once the follower acknowledged the last chunk, False when the node stopped
        leading the intent's term (nothing to report); raises TransferFailedError otherwise."""
        try:
            fd = await asyncio.to_thread(os.open, self._path, os.O_RDONLY)
        except OSError as error:
            raise TransferFailedError(f"cannot open {self._path}: {error}") from error
        try:
            return await self._stream(fd)
        finally:
            os.close(fd)

    async def _stream(self, fd: int) -> bool:
        loop = asyncio.get_running_loop()
        try:
            self.size = os.fstat(fd).st_size
            first = await asyncio.to_thread(os.pread, fd, self._chunk_bytes, 0)
            self.header = header = read_header(first, str(self._path))
        except (OSError, StorageCorruption) as error:
            raise TransferFailedError(f"cannot read {self._path}: {error}") from error
        size = self.size
        deadline = loop.time() + transfer_deadline(size, self._config)
        intent = self._intent
        template = InstallSnapshot(
            intent.term,
            intent.leader_id,
            header.last_index,
            header.last_term,
            intent.lease_duration,
            max_clock_drift=intent.max_clock_drift,
        )
        position = 0
        # The unanswered chunks, oldest first: each one's reply and the offset it should name.
        in_flight: deque[tuple[asyncio.Future[SnapshotChunkReply], int]] = deque()
        try:
            while True:
                if not self._still_leading():
                    return False
                while position < size and len(in_flight) < self._window:
                    if position == 0:
                        data = first  # read for the header already
                    else:
                        data = await self._read(fd, position)
                    if not data:
                        short = f"{self._path} ended at byte {position} of {size}"
                        raise TransferFailedError(short)
                    end = position + len(data)
                    chunk = SnapshotChunk(template, position, size, data, done=end == size)
                    future = self._link.send_chunk(chunk)
                    in_flight.append((future, end))
                    self.chunks_sent += 1
                    position = end
                if not in_flight:
                    raise TransferFailedError("nothing left to send and nothing unanswered")
                future, expected = in_flight.popleft()
                try:
                    reply = await asyncio.wait_for(
                        asyncio.shield(future), max(0.0, deadline - loop.time())
                    )
                except TimeoutError:
                    limit = transfer_deadline(size, self._config)
                    raise TransferFailedError(f"not done within {limit:.1f}s") from None
                except ConnectionError as error:
                    raise TransferFailedError(str(error)) from error
                if reply.message.term > intent.term:
                    return False  # the core steps down when it sees the reply
                if reply.next_offset == expected:
                    if expected == size:
                        return True
                    continue
                if reply.next_offset == 0 and expected == size:
                    # The follower took every byte and dropped them at its last-chunk check
                    # (its dump names which one): sending the same file again would fail the
                    # same way (bit rot in this snapshot.txt) until the deadline. The core hears
                    # of the failure and asks for a transfer again later.
                    raise TransferFailedError(
                        f"the follower dropped the whole {size}-byte snapshot: it failed the "
                        "follower's checks (checksum, counts, header or cluster id; its dump "
                        "names which)"
                    )
                if reply.next_offset > size:
                    raise TransferFailedError(
                        f"the follower asks for byte {reply.next_offset} of a {size}-byte snapshot"
                    )
                # The follower holds another amount than this sender thought (it dropped a
                # transfer that failed its checks, or began another one): start again from
                # what it holds. The chunks still unanswered are answered with the same
                # next_offset; they are no longer awaited.
                self.restarts += 1
                position = reply.next_offset
                _drop(in_flight)
        finally:
            _drop(in_flight)

    async def _read(self, fd: int, position: int) -> bytes:
        # An OSError (EIO from a failing disk) must end as a failure the caller reports to the
        # core: escaping run() would leave the follower waiting for a transfer for the term.
        try:
            return await asyncio.to_thread(os.pread, fd, self._chunk_bytes, position)
        except OSError as error:
            raise TransferFailedError(f"cannot read {self._path}: {error}") from error


def _drop(in_flight: deque[tuple[asyncio.Future[SnapshotChunkReply], int]]) -> None:
    for future, _ in in_flight:
        future.cancel()
    in_flight.clear()


@dataclass(slots=True)
class _Partial:
    """The transfer the receiver is in the middle of."""

    # (leader, term, last index, last term, size): a chunk continues it only if it says the same.
    key: tuple[int, int, int, int, int]
    fd: int
    reader: SnapshotReader
    received: int = 0
    closed: bool = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


def _key(chunk: SnapshotChunk) -> tuple[int, int, int, int, int]:
    m = chunk.message
    return (m.leader_id, m.term, m.last_index, m.last_term, chunk.total_size)


class SnapshotReceiver:
    """The follower's side (module docstring). `feed_core` queues a chunk for the core and
    returns the future of the core's reply (`Replica.begin_exchange`)."""

    def __init__(
        self,
        path: Path,
        node_id: int,
        cluster_id: str,
        feed_core: Callable[[InstallSnapshot], asyncio.Future[Message]],
        log: Callable[[str], None],
        *,
        sync: bool = True,
        current_term: Callable[[], int] | None = None,
    ) -> None:
        self.path = path
        self._node_id = node_id
        self._cluster_id = cluster_id
        self._feed_core = feed_core
        self._log = log
        self._sync = sync
        # The core's term (None: only the chunks' terms count), and the highest term of a chunk
        # received: a first chunk below either is a deposed leader's (module docstring).
        self._current_term = current_term
        self._highest_term = 0
        self._lock = asyncio.Lock()
        self._partial: _Partial | None = None

    @property
    def received(self) -> int:
        """Bytes of the current transfer written so far (0 when there is none)."""
        return self._partial.received if self._partial is not None else 0

    async def receive(self, chunk: SnapshotChunk) -> tuple[asyncio.Future[Message], int]:
        """Write `chunk` if it continues the current transfer (or starts one), and feed the
        core; returns the future of the core's reply and the reply's next_offset."""
        async with self._lock:
            image: SnapshotImage | None = None
            term = chunk.message.term
            newest = self._highest_term
            if self._current_term is not None:
                newest = max(newest, self._current_term())
            self._highest_term = max(self._highest_term, term)
            # A deposed leader's first chunk must not truncate the current leader's transfer:
            # the core refuses that chunk anyway, but the file would already be lost.
            if chunk.offset == 0 and term >= newest:
                self.close()
                self._partial = await self._start(chunk)
            key = _key(chunk)
            partial = self._partial
            if partial is not None and partial.key == key and chunk.offset == partial.received:
                try:
                    image = await asyncio.to_thread(self._write, partial, chunk)
                except (StorageCorruption, OSError, ValueError) as error:
                    self._drop(chunk, str(error))
            # Only the chunk's own transfer has a position to resume from. Another transfer's
            # would send its sender to an offset it cannot continue from either, again and again
            # until its deadline; 0 makes it start over, and its first chunk replaces this one.
            partial = self._partial
            next_offset = partial.received if partial is not None and partial.key == key else 0
            # Only a verified snapshot makes the core's message the last chunk: a failed or
            # misplaced last chunk must not pass for a finished transfer.
            message = chunk.message
            if image is not None:
                message = replace(message, done=True, image=image)
                # Complete: the file is the core's to install; nothing more is written to it.
                self.close()
            future = self._feed_core(message)
            if image is not None:
                # The install renames snapshot.txt.recv before the core answers: no chunk may
                # start another transfer (and truncate the file) until then.
                await asyncio.wait([future])
            return future, next_offset

    def close(self) -> None:
        """Give up the current transfer (its file stays, for the next start's cleanup)."""
        if self._partial is not None:
            self._partial.close()
            self._partial = None

    async def _start(self, chunk: SnapshotChunk) -> _Partial | None:
        try:
            fd = await asyncio.to_thread(
                os.open, self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
            )
        except OSError as error:
            self._log(
                f"Node {self._node_id} cannot receive the snapshot of leader "
                f"{chunk.message.leader_id}: {self.path}: {error}"
            )
            return None
        reader = SnapshotReader(f"the snapshot from leader {chunk.message.leader_id}")
        return _Partial(_key(chunk), fd, reader)

    def _write(self, partial: _Partial, chunk: SnapshotChunk) -> SnapshotImage | None:
        """In a worker thread: write and parse the chunk; on the last one, sync and check the
        whole snapshot and return its image."""
        data = chunk.data
        view = memoryview(data)
        offset = chunk.offset
        while view:
            written = os.pwrite(partial.fd, view, offset)
            view, offset = view[written:], offset + written
        partial.reader.feed(data)
        partial.received = chunk.end
        if not chunk.done:
            return None
        if self._sync:
            os.fdatasync(partial.fd)
        loaded = partial.reader.finish()
        header, m = loaded.header, chunk.message
        if (header.last_index, header.last_term) != (m.last_index, m.last_term):
            raise ValueError(
                f"its header says index {header.last_index} (term {header.last_term}) but the "
                f"chunks say index {m.last_index} (term {m.last_term})"
            )
        if header.cluster_id != self._cluster_id:
            raise ValueError(
                f"it belongs to cluster {header.cluster_id!r}, this node to {self._cluster_id!r}"
            )
        return loaded.image()

    def _drop(self, chunk: SnapshotChunk, problem: str) -> None:
        self.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._log(
            f"Node {self._node_id} dropped the snapshot streamed by leader "
            f"{chunk.message.leader_id} (index {chunk.message.last_index}): {problem}; it "
            "will take it again from the start."
        )
