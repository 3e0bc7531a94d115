"""The server's Pipeline session engine (raftkv/server/pipeline.py) with a scripted backend.

Requests are fed through an asyncio queue standing in for the gRPC request stream; the test
reads the reply batches the session yields, exactly as the gRPC server would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from raftkv.rpc import raftkv_pb2 as pb
from raftkv.server import pipeline
from raftkv.server.pipeline import PipelineRequestError, PipelineSession, ReplyBudget

pytestmark = pytest.mark.timeout(30)

_END = object()


class ScriptedBackend:
    """GET of "pending*" and every SET and DELETE wait on a future the test resolves; GET "bad"
    is invalid."""

    def __init__(self) -> None:
        self.futures: dict[str, asyncio.Future[object]] = {}
        self.deleted: list[str] = []

    def start_get(self, request: pb.GetRequest) -> object:
        if request.key == "bad":
            raise PipelineRequestError("the key is bad")
        if request.key.startswith("pending"):
            return self._future(request.key)
        return ("value", f"value of {request.key}")

    def start_set(self, request: pb.SetRequest) -> object:
        return self._future(request.key)

    def start_delete(self, request: pb.DeleteRequest) -> object:
        self.deleted.append(request.key)
        return self._future(request.key)

    def fill_reply(self, reply: pb.PipelineReply, outcome: object) -> None:
        match outcome:
            case ("value", str(value)):
                reply.found = True
                reply.value = value
            case ("index", int(index)):
                reply.index = index
            case ("refused", int(leader)):
                reply.code = grpc.StatusCode.FAILED_PRECONDITION.value[0]
                reply.leader_id = leader
            case _:
                raise AssertionError(outcome)

    def timeout_details(self, request_kind: str) -> str:
        return f"{request_kind} not answered"

    def _future(self, key: str) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.futures[key] = future
        return future


class Harness:
    def __init__(self, backend: ScriptedBackend, node_budget: ReplyBudget | None = None) -> None:
        self.inbox: asyncio.Queue[object] = asyncio.Queue()
        self.replies: asyncio.Queue[pb.PipelineReplies] = asyncio.Queue()
        self.session = PipelineSession(backend, node_budget or ReplyBudget.for_node())
        self.task = asyncio.create_task(self._drain())

    async def _requests(self) -> AsyncIterator[pb.PipelineRequests]:
        while (item := await self.inbox.get()) is not _END:
            assert isinstance(item, pb.PipelineRequests)
            yield item

    async def _drain(self) -> None:
        async for batch in self.session.serve(self._requests()):
            await self.replies.put(batch)

    def send(self, *requests: pb.PipelineRequest) -> None:
        self.inbox.put_nowait(pb.PipelineRequests(requests=requests))

    def end(self) -> None:
        self.inbox.put_nowait(_END)

    async def next_batch(self) -> list[pb.PipelineReply]:
        batch = await asyncio.wait_for(self.replies.get(), 5)
        return list(batch.replies)

    async def replies_until(self, count: int) -> dict[int, pb.PipelineReply]:
        found: dict[int, pb.PipelineReply] = {}
        while len(found) < count:
            for reply in await self.next_batch():
                assert reply.tag not in found, f"tag {reply.tag} answered twice"
                found[reply.tag] = reply
        return found


def get(tag: int, key: str, timeout_ms: int = 0) -> pb.PipelineRequest:
    return pb.PipelineRequest(tag=tag, get=pb.GetRequest(key=key), timeout_ms=timeout_ms)


def put(tag: int, key: str, timeout_ms: int = 0) -> pb.PipelineRequest:
    return pb.PipelineRequest(tag=tag, set=pb.SetRequest(key=key, value="v"), timeout_ms=timeout_ms)


def run(scenario: Callable[[ScriptedBackend, Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        backend = ScriptedBackend()
        harness = Harness(backend)
        try:
            await scenario(backend, harness)
        finally:
            harness.task.cancel()

    asyncio.run(main())


def test_immediate_answers_come_back_together_in_order() -> None:
    async def scenario(backend: ScriptedBackend, harness: Harness) -> None:
        harness.send(get(1, "a"), get(2, "b"), get(3, "c"))
        replies = await harness.next_batch()
        assert [(r.tag, r.code, r.found, r.value) for r in replies] == [
            (1, 0, True, "value of a"),
            (2, 0, True, "value of b"),
            (3, 0, True, "value of c"),
        ]

    run(scenario)


def test_a_delete_waits_like_a_set_and_its_reply_carries_the_index() -> None:
    async def scenario(backend: ScriptedBackend, harness: Harness) -> None:
        harness.send(pb.PipelineRequest(tag=5, delete=pb.DeleteRequest(key="gone")))
        while "gone" not in backend.futures:
            await asyncio.sleep(0)
        assert backend.deleted == ["gone"]
        backend.futures["gone"].set_result(("index", 4))
        [reply] = await harness.next_batch()
        assert (reply.tag, reply.code, reply.index) == (5, 0, 4)

    run(scenario)


def test_waiting_requests_are_answered_when_their_outcome_arrives_in_any_order() -> None:
    async def scenario(backend: ScriptedBackend, harness: Harness) -> None:
        harness.send(put(7, "x"), put(8, "y"), get(9, "now"))
        assert [(r.tag, r.value) for r in await harness.next_batch()] == [(9, "value of now")]
        backend.futures["y"].set_result(("index", 12))
        backend.futures["x"].set_result(("refused", 2))
        replies = await harness.replies_until(2)
        assert replies[8].code == 0 and replies[8].index == 12
        assert replies[7].code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert replies[7].leader_id == 2

    run(scenario)


def test_bad_requests_get_invalid_argument_and_the_stream_carries_on() -> None:
    async def scenario(backend: ScriptedBackend, harness: Harness) -> None:
        harness.send(get(1, "bad"), pb.PipelineRequest(tag=2), get(3, "fine"))
        replies = await harness.replies_until(3)
        invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert (replies[1].code, replies[1].details) == (invalid, "the key is bad")
        assert (replies[2].code, replies[2].details) == (
            invalid,
            "a request needs one of get, set or delete",
        )
        assert (replies[3].code, replies[3].value) == (0, "value of fine")

    run(scenario)


def test_a_tag_already_in_flight_is_refused() -> None:
    async def scenario(backend: ScriptedBackend, harness: Harness) -> None:
        harness.send(put(5, "x"), put(5, "y"))
        [reply] = await harness.next_batch()
        assert reply.tag == 5
        assert reply.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "already in flight" in reply.details
        assert "y" not in backend.futures
        backend.futures["x"].set_result(("index", 1))
        [done] = await harness.next_batch()
        assert (done.tag, done.code, done.index) == (5, 0, 1)

    run(scenario)


def test_requests_beyond_the_in_flight_bound_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "MAX_IN_FLIGHT_PER_STREAM", 2)

    async def scenario(backend: ScriptedBackend, harness: Harness) -> None:
        harness.send(put(1, "a"), put(2, "b"), put(3, "c"), get(4, "served"))
        replies = await harness.replies_until(2)
        assert replies[3].code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        # The bound is checked before the backend sees a request, even one it could answer at once.
        assert replies[4].code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert sorted(backend.futures) == ["a", "b"]
        backend.futures["a"].set_result(("index", 1))
        await harness.replies_until(1)
        harness.send(put(5, "e"))
        await _until(lambda: "e" in backend.futures)

    run(scenario)


def test_unanswered_requests_get_deadline_exceeded_and_their_waits_are_cancelled() -> None:
    async def scenario(backend: ScriptedBackend, harness: Harness) -> None:
        harness.send(put(1, "slow", timeout_ms=150), get(2, "pending read", timeout_ms=150))
        replies = await harness.replies_until(2)
        exceeded = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert (replies[1].code, replies[1].details) == (exceeded, "set not answered")
        assert (replies[2].code, replies[2].details) == (exceeded, "get not answered")
        assert backend.futures["slow"].cancelled()
        assert backend.futures["pending read"].cancelled()

    run(scenario)


def test_after_the_client_half_closes_waiting_requests_are_still_answered() -> None:
    async def scenario(backend: ScriptedBackend, harness: Harness) -> None:
        harness.send(put(1, "x"))
        harness.end()
        await _until(lambda: not harness.session._reading and "x" in backend.futures)
        for _ in range(3):  # the serving loop has woken up to the end of the requests
            await asyncio.sleep(0)
        assert not harness.task.done()
        backend.futures["x"].set_result(("index", 4))
        [reply] = await harness.next_batch()
        assert reply.index == 4
        await asyncio.wait_for(harness.task, 5)  # then the stream ends

    run(scenario)


def test_when_the_stream_goes_away_waiting_requests_are_cancelled() -> None:
    async def scenario(backend: ScriptedBackend, harness: Harness) -> None:
        harness.send(put(1, "x"))
        await _until(lambda: "x" in backend.futures)
        harness.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await harness.task
        assert backend.futures["x"].cancelled()

    run(scenario)


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached within 5 s")


def queued_gets(
    batches: int,
) -> tuple[asyncio.Queue[pb.PipelineRequests], AsyncIterator[pb.PipelineRequests]]:
    """A request stream whose client has sent `batches` batches of 10 GETs (~25 bytes of reply
    each) and keeps its side open; the queue shows how many the session has not read."""
    inbox: asyncio.Queue[pb.PipelineRequests] = asyncio.Queue()
    for batch in range(batches):
        inbox.put_nowait(
            pb.PipelineRequests(requests=[get(batch * 10 + i, f"k{i}") for i in range(10)])
        )

    async def requests() -> AsyncIterator[pb.PipelineRequests]:
        while True:
            yield await inbox.get()

    return inbox, requests()


def test_a_client_that_does_not_read_stops_being_read_and_buffering_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "MAX_BUFFERED_REPLY_BYTES", 1000)

    async def scenario() -> None:
        backend = ScriptedBackend()
        inbox, requests = queued_gets(200)
        session = PipelineSession(backend, ReplyBudget.for_node())
        replies = session.serve(requests)
        # gRPC takes one batch, then its write blocks: the client is not reading.
        first = await asyncio.wait_for(anext(replies), 5)
        assert first.replies
        await _until(lambda: session.reading_paused)
        unread = inbox.qsize()
        assert unread > 150, "the session kept reading although nobody took its replies"
        assert session.buffered_bytes < 1000 + 10 * 40  # the bound plus one batch
        # The client reads again: the session takes more requests.
        await asyncio.wait_for(anext(replies), 5)
        await _until(lambda: inbox.qsize() < unread)
        await replies.aclose()

    asyncio.run(scenario())


def test_a_client_that_leaves_its_replies_unread_is_cut_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "WRITE_STALL_TIMEOUT", 0.05)

    async def scenario() -> None:
        first_written = asyncio.Event()

        async def requests() -> AsyncIterator[pb.PipelineRequests]:
            yield pb.PipelineRequests(requests=[get(1, "a")])
            await first_written.wait()
            yield pb.PipelineRequests(requests=[get(2, "b")])
            await asyncio.Event().wait()  # the client keeps its side open

        async def write_that_blocks_after_one(batch: pb.PipelineReplies) -> None:
            if first_written.is_set():
                await asyncio.Event().wait()  # flow control: the client does not read
            first_written.set()

        session = PipelineSession(ScriptedBackend(), ReplyBudget.for_node())
        with pytest.raises(pipeline.ClientTooSlowError, match="unread"):
            await asyncio.wait_for(
                pipeline.pump(session, requests(), write_that_blocks_after_one), 5
            )
        assert first_written.is_set()

    asyncio.run(scenario())


def test_one_batch_of_many_gets_stops_at_the_bound_not_after_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "MAX_BUFFERED_REPLY_BYTES", 1000)

    async def scenario() -> None:
        session = PipelineSession(ScriptedBackend(), ReplyBudget.for_node())

        async def requests() -> AsyncIterator[pb.PipelineRequests]:
            yield pb.PipelineRequests(requests=[get(tag, f"k{tag}") for tag in range(500)])
            await asyncio.Event().wait()  # the client keeps its side open

        replies = session.serve(requests())
        first = await asyncio.wait_for(anext(replies), 5)
        # ~45 bytes of reply per GET: the session stopped within one reply of the bound.
        assert session.reading_paused
        assert 1000 <= session.buffered_bytes < 1000 + 50
        assert len(first.replies) < 30
        answered = {reply.tag for reply in first.replies}
        while len(answered) < 500:  # the client reads: every request is answered, in order
            batch = await asyncio.wait_for(anext(replies), 5)
            assert min(reply.tag for reply in batch.replies) == len(answered)
            answered.update(reply.tag for reply in batch.replies)
        await replies.aclose()

    asyncio.run(scenario())


def test_streams_that_together_fill_the_node_budget_pause_every_stream_until_it_drains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "MAX_NODE_BUFFERED_REPLY_BYTES", 1000)

    async def scenario() -> None:
        backend = ScriptedBackend()
        node_budget = ReplyBudget.for_node()
        # Stream A: a client that sends GETs and, after the first reply batch, reads nothing.
        _, requests = queued_gets(100)
        stalled = PipelineSession(backend, node_budget)
        stalled_replies = stalled.serve(requests)
        await asyncio.wait_for(anext(stalled_replies), 5)
        await _until(lambda: stalled.reading_paused)
        # Far below its own bound (8 MiB): the node's budget stopped it.
        assert 1000 <= stalled.buffered_bytes < 1000 + 50
        assert node_budget.used == stalled.buffered_bytes
        # Stream B: a client that reads. Its request waits while the node's budget is full.
        reader = Harness(backend, node_budget)
        try:
            reader.send(get(1, "b"))
            await _until(lambda: reader.session.reading_paused)
            assert reader.replies.empty()
            # Stream A goes away (cut off, or its client left): its bytes go back at once, and
            # stream B is served.
            await stalled_replies.aclose()
            assert node_budget.used == 0
            [reply] = await reader.next_batch()
            assert (reply.tag, reply.value) == (1, "value of b")
            assert not reader.session.reading_paused
        finally:
            reader.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader.task
        assert node_budget.used == 0

    asyncio.run(scenario())
