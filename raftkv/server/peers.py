"""The peer transport: one `Raft.PeerStream` per peer carries this node's requests to it.

A unary gRPC call per AppendEntries cost the leader (and each follower's server) more than the
Raft work it carried. Instead each node dials every peer once and keeps a stream open: requests
(AppendEntries, RequestVote) go out in batches, and the peer writes one reply per request in
order (`PeerStreamSession`, the answering side).

Snapshot chunks (InstallSnapshot, raftkv/server/snapshot_transfer.py) share the stream: a leader's
sender task sends them with `PeerLink.send_chunk`, which returns a future for the chunk's reply
(the reply also goes to the core); the answering side hands them to the node's receiver, in
order, before the core sees them.

Raft tolerates lost messages, so the link never blocks the core: at most MAX_IN_FLIGHT_PER_PEER
requests may be unanswered, further ones are dropped; a stream whose oldest request is unanswered
for longer than the RPC timeout counts as failed (as a unary call past its deadline would) and is
replaced by a new one at the next send. A broken stream loses what was in flight; the core
retries by itself.

Every batch, both ways, carries the sender's cluster id; a batch from another cluster ends the
stream. Who sent a request is the answering side's business: `PeerStreamSession` is told the
sender's id from its TLS certificate, and refuses a request that claims another
(docs/design.md §8).
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from raftkv.core.messages import (
    AppendEntries,
    AppendEntriesReply,
    InstallSnapshotReply,
    Message,
    RequestVote,
    RequestVoteReply,
)
from raftkv.rpc import raftkv_pb2 as pb
from raftkv.rpc import raftkv_pb2_grpc
from raftkv.server import wire
from raftkv.server.wire import SnapshotChunk, SnapshotChunkReply

# Requests unanswered per peer before further messages are dropped (Raft tolerates loss).
MAX_IN_FLIGHT_PER_PEER = 64


# What a peer stream carries from the dialing node to the answering one.
Request = AppendEntries | RequestVote | SnapshotChunk
# What the answering node writes back: one per request, in order.
Reply = AppendEntriesReply | RequestVoteReply | SnapshotChunkReply


class LinkBusyError(ConnectionError):
    """A chunk was not sent: the link already has MAX_IN_FLIGHT_PER_PEER requests unanswered."""


class StreamBrokenError(ConnectionError):
    """The stream that carried a chunk broke before its reply came."""


def request_to_pb(message: Request) -> pb.RaftMessage:
    if isinstance(message, AppendEntries):
        return pb.RaftMessage(append_entries=wire.append_entries_to_pb(message))
    if isinstance(message, SnapshotChunk):
        return pb.RaftMessage(install_snapshot=wire.install_snapshot_to_pb(message))
    return pb.RaftMessage(request_vote=wire.request_vote_to_pb(message))


def request_from_pb(message: pb.RaftMessage, peers: set[int]) -> Request:
    kind = message.WhichOneof("message")
    if kind == "append_entries":
        return wire.append_entries_from_pb(message.append_entries, peers)
    if kind == "request_vote":
        return wire.request_vote_from_pb(message.request_vote, peers)
    if kind == "install_snapshot":
        return wire.install_snapshot_from_pb(message.install_snapshot, peers)
    raise wire.WireError(f"a peer stream carries requests only, not {kind or 'an empty message'}")


class PeerRefusal(wire.WireError):
    """A request refused for who sent it rather than what it says; `code` is the gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def wrong_cluster(theirs: str, ours: str) -> str:
    return f"the sender belongs to cluster {theirs!r}, this node to cluster {ours!r}"


def _claimed_sender(message: pb.RaftMessage) -> int | None:
    kind = message.WhichOneof("message")
    if kind == "append_entries":
        return message.append_entries.leader_id
    if kind == "request_vote":
        return message.request_vote.candidate_id
    if kind == "install_snapshot":
        return message.install_snapshot.leader_id
    return None


def reply_to_pb(message: Message | SnapshotChunkReply) -> pb.RaftMessage:
    if isinstance(message, AppendEntriesReply):
        return pb.RaftMessage(append_entries_reply=wire.append_reply_to_pb(message))
    if isinstance(message, SnapshotChunkReply):
        return pb.RaftMessage(install_snapshot_reply=wire.install_reply_to_pb(message))
    # The core answers a chunk with an InstallSnapshotReply only through the receiver, which
    # adds next_offset; anything else here is a bug in the shell, not peer input.
    assert isinstance(message, RequestVoteReply)
    return pb.RaftMessage(request_vote_reply=wire.vote_reply_to_pb(message))


def reply_from_pb(message: pb.RaftMessage, peers: set[int]) -> Reply:
    kind = message.WhichOneof("message")
    if kind == "append_entries_reply":
        return wire.append_reply_from_pb(message.append_entries_reply, peers)
    if kind == "request_vote_reply":
        return wire.vote_reply_from_pb(message.request_vote_reply, peers)
    if kind == "install_snapshot_reply":
        return wire.install_reply_from_pb(message.install_snapshot_reply, peers)
    raise wire.WireError(f"a peer stream answers with replies only, not {kind or 'nothing'}")


class PeerLink:
    """Outbound requests to one peer over one stream at a time.

    `deliver` gets every reply (for the core); `log` gets the dump sentences about outages, once
    per outage rather than once per heartbeat.
    """

    def __init__(
        self,
        peer_id: int,
        channel: grpc.aio.Channel,
        timeout: float,
        deliver: Callable[[Message], None],
        log: Callable[[str], None],
        clock: Callable[[], float] | None = None,
        cluster_id: str = "",
    ) -> None:
        self.peer_id = peer_id
        self.channel = channel
        self.timeout = timeout
        self.cluster_id = cluster_id
        self._stub: Any = raftkv_pb2_grpc.RaftStub(channel)
        self._deliver = deliver
        self._log = log
        # Real monotonic time (the event loop's), not the node's Raft clock; a seam for tests.
        self._clock = clock
        self._peers = {peer_id}
        self._queue: list[pb.RaftMessage] = []
        # loop.time() at which each unanswered request was queued, oldest first, and for a
        # snapshot chunk the future its reply resolves (None for the core's own requests).
        self._unanswered: deque[tuple[float, asyncio.Future[SnapshotChunkReply] | None]] = deque()
        self._wake = asyncio.Event()
        self._stream: _OutboundStream | None = None
        self.reachable = True
        self.failures = 0

    @property
    def in_flight(self) -> int:
        return len(self._unanswered)

    def send(self, message: AppendEntries | RequestVote) -> None:
        self._enqueue(message, None)

    def send_chunk(self, chunk: SnapshotChunk) -> asyncio.Future[SnapshotChunkReply]:
        """Send one snapshot chunk; the future gets its reply (which goes to the core too), or
        LinkBusyError / StreamBrokenError when the chunk was not sent or its stream broke."""
        future: asyncio.Future[SnapshotChunkReply] = asyncio.get_running_loop().create_future()
        if not self._enqueue(chunk, future):
            busy = f"{MAX_IN_FLIGHT_PER_PEER} requests to node {self.peer_id} unanswered"
            future.set_exception(LinkBusyError(busy))
        return future

    def _enqueue(self, message: Request, waiter: asyncio.Future[SnapshotChunkReply] | None) -> bool:
        now = self._clock() if self._clock is not None else asyncio.get_running_loop().time()
        stream = self._stream
        if stream is not None and self._unanswered and now - self._unanswered[0][0] > self.timeout:
            self._stream_failed(stream, "DEADLINE_EXCEEDED", f"no reply for {self.timeout:.2f}s")
        if len(self._unanswered) >= MAX_IN_FLIGHT_PER_PEER:
            return False
        self._queue.append(request_to_pb(message))
        self._unanswered.append((now, waiter))
        if self._stream is None:
            self._stream = _OutboundStream(self)
        self._wake.set()
        return True

    async def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.stop()
        for _, waiter in self._unanswered:
            if waiter is not None and not waiter.done():
                waiter.set_exception(StreamBrokenError("the link was closed"))
        self._unanswered.clear()
        await self.channel.close(grace=None)

    # -- what the stream's tasks call -------------------------------------------------------

    def _take_batch(self) -> list[pb.RaftMessage]:
        batch, self._queue = self._queue, []
        return batch

    def _replied(self, reply: Reply) -> None:
        waiter = self._unanswered.popleft()[1] if self._unanswered else None
        if not self.reachable:
            self._log(f"Node {self.peer_id} is reachable again after {self.failures} failed RPCs.")
        self.reachable, self.failures = True, 0
        if isinstance(reply, SnapshotChunkReply):
            self._deliver(reply.message)
            if waiter is not None and not waiter.done():
                waiter.set_result(reply)
            return
        if waiter is not None and not waiter.done():
            # One reply per request, in order: a chunk answered by another kind of reply means
            # the peer broke the pairing; the transfer fails (the core retries it).
            waiter.set_exception(StreamBrokenError("a snapshot chunk got another kind of reply"))
        self._deliver(reply)

    def _stream_failed(self, stream: _OutboundStream, code: str, details: str) -> None:
        if self._stream is not stream:
            return  # an older stream, already replaced
        self._stream = None
        stream.cancel()
        self._queue.clear()
        for _, waiter in self._unanswered:
            if waiter is not None and not waiter.done():
                waiter.set_exception(StreamBrokenError(f"{code}: {details}"))
        self._unanswered.clear()
        self.failures += 1
        if self.reachable:
            # The assignment's sentence, once per outage rather than once per heartbeat.
            self._log(
                f"Error occurred while sending RPC to Node {self.peer_id}. ({code}: {details})"
            )
        self.reachable = False


class _OutboundStream:
    """One open PeerStream call and the two tasks that write and read it."""

    def __init__(self, link: PeerLink) -> None:
        self._link = link
        self._call: Any = link._stub.PeerStream()
        self._sender = asyncio.create_task(self._send())
        self._receiver = asyncio.create_task(self._receive())

    def cancel(self) -> None:
        self._call.cancel()
        self._sender.cancel()
        self._receiver.cancel()

    async def stop(self) -> None:
        self.cancel()
        await asyncio.gather(self._sender, self._receiver, return_exceptions=True)

    async def _send(self) -> None:
        link = self._link
        try:
            while True:
                if not link._queue:
                    link._wake.clear()
                    await link._wake.wait()
                    continue
                await self._call.write(
                    pb.RaftMessages(messages=link._take_batch(), cluster_id=link.cluster_id)
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            self._call.cancel()

    async def _receive(self) -> None:
        link = self._link
        try:
            while True:
                batch = await self._call.read()
                if batch is grpc.aio.EOF:
                    link._stream_failed(self, "UNAVAILABLE", "the peer closed the stream")
                    return
                if batch.cluster_id != link.cluster_id:
                    link._stream_failed(
                        self, "WRONG_CLUSTER", wrong_cluster(batch.cluster_id, link.cluster_id)
                    )
                    return
                for message in batch.messages:
                    link._replied(reply_from_pb(message, link._peers))
        except grpc.aio.AioRpcError as error:
            link._stream_failed(self, error.code().name, error.details() or "")
        except wire.WireError as error:
            link._stream_failed(self, "INVALID_REPLY", str(error))
        except DecodeError as error:
            link._stream_failed(self, "INVALID_REPLY", f"a reply could not be decoded: {error}")


class PeerStreamSession:
    """The answering side of one PeerStream: every request goes to the core as it is read, and
    its reply is written back when the core produces it (replies come in request order).

    `sender` is the peer's node id from its certificate; every request must claim it. None only
    with --insecure-peers, where any member id is taken at its word.

    A snapshot chunk goes to `receive_chunk` (the node's `SnapshotReceiver`), awaited before the
    next request is read: the receiver writes chunks strictly in the order they arrive, and it
    feeds the core itself. Without one, a chunk is refused as malformed.
    """

    def __init__(
        self,
        begin_exchange: Callable[[AppendEntries | RequestVote], asyncio.Future[Message]],
        peers: set[int],
        cluster_id: str = "",
        sender: int | None = None,
        receive_chunk: (
            Callable[[SnapshotChunk], Awaitable[tuple[asyncio.Future[Message], int]]] | None
        ) = None,
    ) -> None:
        self._begin_exchange = begin_exchange
        self._receive_chunk = receive_chunk
        self._peers = peers
        self._cluster_id = cluster_id
        self._sender = sender
        self._outbox: list[pb.RaftMessage] = []
        self._ready = asyncio.Event()
        self._reading = True
        self._unanswered = 0
        self.error: wire.WireError | None = None
        # The sender the refused request claimed, when it named one.
        self.error_sender: int | None = None

    async def serve(
        self, requests: AsyncIterator[pb.RaftMessages]
    ) -> AsyncIterator[pb.RaftMessages]:
        """Yields reply batches; ends when the peer half-closes and every reply was sent, or
        when a request fails validation (then `error` says why)."""
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                if self._outbox:
                    replies, self._outbox = self._outbox, []
                    yield pb.RaftMessages(messages=replies, cluster_id=self._cluster_id)
                    continue
                if self.error is not None or (not self._reading and not self._unanswered):
                    break
                self._ready.clear()
                await self._ready.wait()
        finally:
            reader.cancel()

    async def _read(self, requests: AsyncIterator[pb.RaftMessages]) -> None:
        try:
            async for batch in requests:
                if batch.cluster_id != self._cluster_id:
                    raise PeerRefusal(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        wrong_cluster(batch.cluster_id, self._cluster_id),
                    )
                for message in batch.messages:
                    claimed = _claimed_sender(message)
                    if self._sender is not None and claimed != self._sender:
                        self.error_sender = self._sender
                        raise PeerRefusal(
                            grpc.StatusCode.PERMISSION_DENIED,
                            f"a message claims to come from node {claimed}, but the sender's "
                            f"certificate is node {self._sender}'s",
                        )
                    try:
                        request = request_from_pb(message, self._peers)
                    except wire.WireError:
                        self.error_sender = claimed
                        raise
                    if isinstance(request, SnapshotChunk):
                        if self._receive_chunk is None:
                            self.error_sender = claimed
                            raise wire.WireError("this node takes no snapshot chunks")
                        future, next_offset = await self._receive_chunk(request)
                        # The callback goes on the core's own future (not a derived one), so
                        # that replies reach the outbox in the order the core made them.
                        callback: Callable[[asyncio.Future[Message]], None] = functools.partial(
                            self._answered, next_offset=next_offset
                        )
                    else:
                        future = self._begin_exchange(request)
                        callback = self._answered
                    self._unanswered += 1
                    future.add_done_callback(callback)
        except wire.WireError as error:
            self.error = error
        except DecodeError as error:
            self.error = wire.WireError(f"a message batch could not be decoded: {error}")
        finally:
            self._reading = False
            self._ready.set()

    def _answered(self, future: asyncio.Future[Message], next_offset: int | None = None) -> None:
        self._unanswered -= 1
        if not future.cancelled():
            reply = future.result()
            if next_offset is not None and isinstance(reply, InstallSnapshotReply):
                self._outbox.append(reply_to_pb(SnapshotChunkReply(reply, next_offset)))
            else:
                self._outbox.append(reply_to_pb(reply))
        self._ready.set()
