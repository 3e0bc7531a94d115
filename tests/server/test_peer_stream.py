"""The peer transport (raftkv/server/peers.py) between a PeerLink and a real grpc.aio server that
answers with PeerStreamSession over a scripted core: ordering, validation, outages, the in-flight
bound and a stream that stops answering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.message import DecodeError

from raftkv.core.messages import (
    AppendEntries,
    AppendEntriesReply,
    InstallSnapshot,
    InstallSnapshotReply,
    Message,
    RequestVote,
    RequestVoteReply,
)
from raftkv.rpc import raftkv_pb2 as pb
from raftkv.rpc import raftkv_pb2_grpc
from raftkv.server import peers
from raftkv.server.peers import PeerLink, PeerStreamSession
from raftkv.server.wire import SnapshotChunk

pytestmark = pytest.mark.timeout(60)

DIALER, ANSWERER = 1, 2


class ScriptedPeer(raftkv_pb2_grpc.RaftServicer):
    """Node ANSWERER's PeerStream; its "core" answers each request at once, or never while
    `silent` is set. Requests it saw are kept in order."""

    def __init__(self) -> None:
        self.seen: list[AppendEntries | RequestVote] = []
        self.silent = False
        self.unanswered: list[asyncio.Future[Message]] = []

    def begin_exchange(self, request: AppendEntries | RequestVote) -> asyncio.Future[Message]:
        self.seen.append(request)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        if self.silent:
            self.unanswered.append(future)
        elif isinstance(request, AppendEntries):
            future.set_result(AppendEntriesReply(request.term, ANSWERER, True, 0, 0, request.round))
        else:
            future.set_result(RequestVoteReply(request.term, ANSWERER, True, 0.0))
        return future

    async def PeerStream(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.RaftMessages], context: Any
    ) -> AsyncIterator[pb.RaftMessages]:
        session = PeerStreamSession(self.begin_exchange, {DIALER})
        async for replies in session.serve(request_iterator):
            yield replies
        if session.error is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(session.error))


def heartbeat(round_: int, leader: int = DIALER) -> AppendEntries:
    return AppendEntries(3, leader, 0, 0, (), 0, 0.3, round_)


class Harness:
    def __init__(self, address: str, clock: Callable[[], float] | None = None) -> None:
        self.delivered: list[Message] = []
        self.logged: list[str] = []
        self.link = PeerLink(
            ANSWERER,
            grpc.aio.insecure_channel(address),
            timeout=0.4,
            deliver=self.delivered.append,
            log=self.logged.append,
            clock=clock,
        )

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        for _ in range(5000):
            if condition():
                return
            await asyncio.sleep(0.001)
        raise AssertionError(f"not reached within 5 s: {what}")


async def start(peer: ScriptedPeer, address: str = "127.0.0.1:0") -> tuple[Any, str]:
    server = grpc.aio.server()
    raftkv_pb2_grpc.add_RaftServicer_to_server(peer, server)
    port = server.add_insecure_port(address)
    await server.start()
    return server, f"127.0.0.1:{port}"


def test_requests_arrive_in_order_and_every_reply_comes_back() -> None:
    async def scenario() -> None:
        peer = ScriptedPeer()
        server, address = await start(peer)
        harness = Harness(address)
        for round_ in range(1, 21):
            harness.link.send(heartbeat(round_))
        harness.link.send(RequestVote(4, DIALER, 7, 3))
        await harness.until(lambda: len(harness.delivered) == 21, "21 replies")
        assert [m.round for m in peer.seen[:20] if isinstance(m, AppendEntries)] == list(
            range(1, 21)
        )
        assert peer.seen[20] == RequestVote(4, DIALER, 7, 3)
        replies = harness.delivered
        assert [r.round for r in replies[:20] if isinstance(r, AppendEntriesReply)] == list(
            range(1, 21)
        )
        assert replies[20] == RequestVoteReply(4, ANSWERER, True, 0.0)
        assert harness.link.in_flight == 0
        assert harness.logged == []
        await harness.link.close()
        await server.stop(None)

    asyncio.run(scenario())


def test_a_request_the_peer_refuses_breaks_the_stream_once_and_is_logged_once() -> None:
    async def scenario() -> None:
        peer = ScriptedPeer()
        server, address = await start(peer)
        harness = Harness(address)
        # Node 9 is not a member the answering node knows: INVALID_ARGUMENT, stream closed.
        harness.link.send(heartbeat(1, leader=9))
        await harness.until(lambda: not harness.link.reachable, "the link to fail")
        assert len(harness.logged) == 1
        assert harness.logged[0].startswith("Error occurred while sending RPC to Node 2.")
        assert "INVALID_ARGUMENT" in harness.logged[0]
        assert harness.link.in_flight == 0
        # A good request opens a new stream; recovery is logged once.
        harness.link.send(heartbeat(2))
        await harness.until(lambda: len(harness.delivered) == 1, "a reply on the new stream")
        assert harness.link.reachable
        assert harness.logged[1] == "Node 2 is reachable again after 1 failed RPCs."
        await harness.link.close()
        await server.stop(None)

    asyncio.run(scenario())


def test_a_peer_that_is_down_is_logged_once_per_outage() -> None:
    async def scenario() -> None:
        peer = ScriptedPeer()
        server, address = await start(peer)
        await server.stop(None)  # nobody listens on `address` now
        harness = Harness(address)
        for round_ in range(1, 6):
            harness.link.send(heartbeat(round_))
            await harness.until(lambda: harness.link.in_flight == 0, "the failed send")
        assert not harness.link.reachable
        assert harness.link.failures >= 1
        assert len(harness.logged) == 1
        assert "UNAVAILABLE" in harness.logged[0]

        restarted, _ = await start(peer, address)
        for round_ in range(6, 200):  # the channel reconnects with back-off
            harness.link.send(heartbeat(round_))
            if harness.delivered:
                break
            await asyncio.sleep(0.02)
        await harness.until(lambda: bool(harness.delivered), "a reply after the restart")
        assert harness.link.reachable
        assert harness.logged[-1].startswith("Node 2 is reachable again after")
        await harness.link.close()
        await restarted.stop(None)

    asyncio.run(scenario())


def test_unanswered_requests_are_bounded_and_a_stuck_stream_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(peers, "MAX_IN_FLIGHT_PER_PEER", 5)

    async def scenario() -> None:
        peer = ScriptedPeer()
        peer.silent = True
        server, address = await start(peer)
        now = [100.0]
        harness = Harness(address, clock=lambda: now[0])
        for round_ in range(1, 9):
            harness.link.send(heartbeat(round_))
        assert harness.link.in_flight == 5  # three were dropped at the bound
        await harness.until(lambda: len(peer.seen) == 5, "five requests at the peer")

        # Within the RPC timeout nothing changes; past it the stream counts as failed and the
        # next request goes out on a new stream.
        now[0] += 0.3
        harness.link.send(heartbeat(9))
        assert harness.link.in_flight == 5
        assert harness.link.reachable
        now[0] += 0.2
        peer.silent = False
        harness.link.send(heartbeat(10))
        assert harness.link.in_flight == 1
        assert not harness.link.reachable
        assert "DEADLINE_EXCEEDED" in harness.logged[0]
        await harness.until(lambda: len(harness.delivered) == 1, "the reply on the new stream")
        assert harness.delivered[0].round == 10
        assert harness.link.reachable
        await harness.link.close()
        await server.stop(None)

    asyncio.run(scenario())


def test_a_session_ends_after_the_peer_half_closes_and_every_reply_is_sent() -> None:
    async def scenario() -> None:
        peer = ScriptedPeer()
        peer.silent = True

        half_closed = asyncio.Event()

        async def requests() -> AsyncIterator[pb.RaftMessages]:
            yield pb.RaftMessages(messages=[peers.request_to_pb(heartbeat(1))])
            half_closed.set()

        session = PeerStreamSession(peer.begin_exchange, {DIALER})
        batches: list[pb.RaftMessages] = []

        async def drain() -> None:
            async for batch in session.serve(requests()):
                batches.append(batch)

        task = asyncio.create_task(drain())
        await asyncio.wait_for(half_closed.wait(), 5)
        for _ in range(10):  # turns for the session to see the half-close
            await asyncio.sleep(0)
        assert len(peer.unanswered) == 1
        assert not task.done()  # the peer half-closed, but one reply is still owed
        peer.unanswered[0].set_result(AppendEntriesReply(3, ANSWERER, True, 0, 0, 1))
        await asyncio.wait_for(task, 5)
        [batch] = batches
        assert batch.messages[0].append_entries_reply.round == 1

    asyncio.run(scenario())


def test_a_batch_that_cannot_be_decoded_breaks_the_stream_with_an_error() -> None:
    async def scenario() -> None:
        peer = ScriptedPeer()

        async def requests() -> AsyncIterator[pb.RaftMessages]:
            yield pb.RaftMessages(messages=[peers.request_to_pb(heartbeat(1))])
            # What gRPC raises when the next batch on the wire is not a valid RaftMessages.
            raise DecodeError("Error parsing message with type 'raft.RaftMessages'")

        session = PeerStreamSession(peer.begin_exchange, {DIALER})
        batches = [batch async for batch in session.serve(requests())]
        assert [b.messages[0].append_entries_reply.round for b in batches] == [1]
        assert session.error is not None
        assert "could not be decoded" in str(session.error)

    asyncio.run(scenario())


def test_a_refused_request_names_the_sender_it_claimed() -> None:
    async def scenario() -> None:
        peer = ScriptedPeer()
        forged = replace(heartbeat(1), lease_duration=float("inf"))

        async def requests() -> AsyncIterator[pb.RaftMessages]:
            yield pb.RaftMessages(messages=[peers.request_to_pb(forged)])

        session = PeerStreamSession(peer.begin_exchange, {DIALER})
        async for _ in session.serve(requests()):
            pass
        assert session.error is not None and "finite" in str(session.error)
        assert session.error_sender == forged.leader_id

    asyncio.run(scenario())


async def _serve_one(session: PeerStreamSession, batch: pb.RaftMessages) -> list[pb.RaftMessages]:
    async def requests() -> AsyncIterator[pb.RaftMessages]:
        yield batch

    return [replies async for replies in session.serve(requests())]


def test_a_request_claiming_another_sender_than_the_certificate_is_refused() -> None:
    async def scenario() -> None:
        peer = ScriptedPeer()
        session = PeerStreamSession(peer.begin_exchange, {DIALER, 3}, cluster_id="c", sender=3)
        batch = pb.RaftMessages(messages=[peers.request_to_pb(heartbeat(1))], cluster_id="c")
        assert await _serve_one(session, batch) == []
        assert isinstance(session.error, peers.PeerRefusal)
        assert session.error.code == grpc.StatusCode.PERMISSION_DENIED
        assert "claims to come from node 1" in str(session.error)
        assert "certificate is node 3's" in str(session.error)
        assert session.error_sender == 3
        assert peer.seen == []

    asyncio.run(scenario())


def test_a_batch_from_another_cluster_is_refused_before_any_request_is_read() -> None:
    async def scenario() -> None:
        peer = ScriptedPeer()
        session = PeerStreamSession(peer.begin_exchange, {DIALER}, cluster_id="c", sender=DIALER)
        batch = pb.RaftMessages(messages=[peers.request_to_pb(heartbeat(1))], cluster_id="d")
        assert await _serve_one(session, batch) == []
        assert isinstance(session.error, peers.PeerRefusal)
        assert session.error.code == grpc.StatusCode.FAILED_PRECONDITION
        assert str(session.error) == peers.wrong_cluster("d", "c")
        assert peer.seen == []

    asyncio.run(scenario())


def test_replies_carry_the_cluster_id_and_the_certified_sender_is_served() -> None:
    async def scenario() -> None:
        peer = ScriptedPeer()
        session = PeerStreamSession(peer.begin_exchange, {DIALER}, cluster_id="c", sender=DIALER)
        batch = pb.RaftMessages(messages=[peers.request_to_pb(heartbeat(1))], cluster_id="c")
        replies = await _serve_one(session, batch)
        assert [r.cluster_id for r in replies] == ["c"]
        assert session.error is None and peer.seen == [heartbeat(1)]

    asyncio.run(scenario())


class OtherClusterPeer(ScriptedPeer):
    """Answers every request, but as a node of cluster "other"."""

    async def PeerStream(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.RaftMessages], context: Any
    ) -> AsyncIterator[pb.RaftMessages]:
        session = PeerStreamSession(self.begin_exchange, {DIALER}, cluster_id="other")
        async for batch in request_iterator:
            batch.cluster_id = "other"
            async for replies in session.serve(_one(batch)):
                yield replies


async def _one(batch: pb.RaftMessages) -> AsyncIterator[pb.RaftMessages]:
    yield batch


def test_a_link_whose_peer_answers_for_another_cluster_delivers_nothing() -> None:
    async def scenario() -> None:
        peer = OtherClusterPeer()
        server, address = await start(peer)
        harness = Harness(address)
        harness.link.cluster_id = "mine"
        harness.link.send(heartbeat(1))
        await harness.until(lambda: not harness.link.reachable, "the link to fail")
        assert harness.delivered == []
        assert "WRONG_CLUSTER" in harness.logged[0]
        assert peers.wrong_cluster("other", "mine") in harness.logged[0]
        await harness.link.close()
        await server.stop(None)

    asyncio.run(scenario())


class ChunkPeer(ScriptedPeer):
    """A peer whose receiver takes snapshot chunks: each gets the core's reply (here, at once)
    and next_offset = the chunk's end, except that it answers a chunk at offset 7 with 0."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[SnapshotChunk] = []

    async def receive_chunk(self, chunk: SnapshotChunk) -> tuple[asyncio.Future[Message], int]:
        self.chunks.append(chunk)
        await asyncio.sleep(0)  # the receiver writes in a worker thread
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        m = chunk.message
        future.set_result(InstallSnapshotReply(m.term, ANSWERER, m.last_index, chunk.done, 0))
        return future, 0 if chunk.offset == 7 else chunk.end

    async def PeerStream(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.RaftMessages], context: Any
    ) -> AsyncIterator[pb.RaftMessages]:
        session = PeerStreamSession(self.begin_exchange, {DIALER}, receive_chunk=self.receive_chunk)
        async for replies in session.serve(request_iterator):
            yield replies
        if session.error is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(session.error))


def test_snapshot_chunks_share_the_stream_and_their_replies_come_back_in_order() -> None:
    async def scenario() -> None:
        peer = ChunkPeer()
        server, address = await start(peer)
        harness = Harness(address)
        intent = InstallSnapshot(3, DIALER, 40, 2, 0.3)
        futures = []
        for offset in (0, 3, 7):
            harness.link.send(heartbeat(offset + 1))
            chunk = SnapshotChunk(intent, offset, 10, b"abc", done=offset == 7)
            futures.append(harness.link.send_chunk(chunk))
        replies = await asyncio.gather(*futures)
        assert [r.next_offset for r in replies] == [3, 6, 0]
        await harness.until(lambda: len(harness.delivered) == 6, "6 replies")
        # The core gets every reply, the chunks' too, in request order.
        kinds = [type(m).__name__ for m in harness.delivered]
        assert kinds == ["AppendEntriesReply", "InstallSnapshotReply"] * 3
        assert [c.offset for c in peer.chunks] == [0, 3, 7]
        assert harness.link.in_flight == 0
        await harness.link.close()
        await server.stop(None)

    asyncio.run(scenario())


def test_a_chunk_claiming_another_sender_or_without_a_receiver_ends_the_stream() -> None:
    chunk = SnapshotChunk(InstallSnapshot(3, 3, 40, 2, 0.3), 0, 3, b"abc", True)
    message = peers.request_to_pb(chunk)
    batch = pb.RaftMessages(messages=[message], cluster_id="c")

    async def serve(session: PeerStreamSession) -> None:
        async def requests() -> AsyncIterator[pb.RaftMessages]:
            yield batch

        async for _ in session.serve(requests()):
            pass

    async def scenario() -> None:
        peer = ChunkPeer()
        claimed = PeerStreamSession(
            peer.begin_exchange,
            {DIALER, 3},
            cluster_id="c",
            sender=DIALER,
            receive_chunk=peer.receive_chunk,
        )
        await serve(claimed)
        assert isinstance(claimed.error, peers.PeerRefusal)
        assert claimed.error.code is grpc.StatusCode.PERMISSION_DENIED
        assert peer.chunks == []
        without = PeerStreamSession(peer.begin_exchange, {DIALER, 3}, cluster_id="c")
        await serve(without)
        assert without.error is not None and "no snapshot chunks" in str(without.error)

    asyncio.run(scenario())
