"""raftkv/client/pipeline.py against a real grpc.aio server on 127.0.0.1: batching, replies by tag,
a stream that breaks, a server that never answers, and reopening after a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from raftkv.client import pipeline
from raftkv.client.pipeline import PipelineConnection, PipelineTimeoutError, StreamBrokenError
from raftkv.rpc import raftkv_pb2 as pb
from raftkv.rpc import raftkv_pb2_grpc

pytestmark = pytest.mark.timeout(60)


class EchoNode(raftkv_pb2_grpc.KeyValueServicer):
    """Answers GET k with "k!" and SET with index = seq; keys starting "silent" get no answer."""

    def __init__(self) -> None:
        self.messages = 0
        self.requests = 0
        self.seen = asyncio.Event()

    async def Pipeline(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.PipelineRequests], context: Any
    ) -> AsyncIterator[pb.PipelineReplies]:
        async for batch in request_iterator:
            self.messages += 1
            self.requests += len(batch.requests)
            self.seen.set()
            replies = []
            for request in batch.requests:
                if request.WhichOneof("op") == "get":
                    if request.get.key.startswith("silent"):
                        continue
                    replies.append(
                        pb.PipelineReply(tag=request.tag, found=True, value=request.get.key + "!")
                    )
                else:
                    replies.append(pb.PipelineReply(tag=request.tag, index=request.set.seq))
            # Newest first: the client must match replies by tag, not by position.
            yield pb.PipelineReplies(replies=list(reversed(replies)))


async def start_server(node: EchoNode, address: str = "127.0.0.1:0") -> tuple[Any, str]:
    server = grpc.aio.server()
    raftkv_pb2_grpc.add_KeyValueServicer_to_server(node, server)
    port = server.add_insecure_port(address)
    await server.start()
    return server, f"127.0.0.1:{port}"


def test_concurrent_requests_share_messages_and_get_their_own_replies() -> None:
    async def scenario() -> None:
        node = EchoNode()
        server, address = await start_server(node)
        async with grpc.aio.insecure_channel(address) as channel:
            connection = PipelineConnection(channel)
            keys = [f"k{i}" for i in range(200)]
            replies = await asyncio.gather(
                *(connection.get(pb.GetRequest(key=k), 5) for k in keys),
                *(
                    connection.set(pb.SetRequest(key="s", value="v", seq=seq), 5)
                    for seq in range(1, 51)
                ),
            )
            await connection.close()
        await server.stop(None)
        assert [r.value for r in replies[:200]] == [k + "!" for k in keys]
        assert [r.index for r in replies[200:]] == list(range(1, 51))
        assert node.requests == 250
        # Everything was queued before the sender first ran: far fewer messages than requests.
        assert node.messages <= 5, node.messages

    asyncio.run(scenario())


def test_batches_are_split_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "MAX_BATCH_BYTES", 300)

    async def scenario() -> None:
        node = EchoNode()
        server, address = await start_server(node)
        async with grpc.aio.insecure_channel(address) as channel:
            connection = PipelineConnection(channel)
            replies = await asyncio.gather(
                *(
                    connection.set(pb.SetRequest(key="key", value="v" * 97, seq=seq), 5)
                    for seq in range(1, 21)
                )
            )
            await connection.close()
        await server.stop(None)
        assert sorted(r.index for r in replies) == list(range(1, 21))
        # 100 bytes a request, at most ~300 per message (one more may tip it over).
        assert node.messages >= 20 // 4, node.messages

    asyncio.run(scenario())


def test_a_server_that_never_answers_times_out_on_the_client() -> None:
    async def scenario() -> None:
        node = EchoNode()
        server, address = await start_server(node)
        async with grpc.aio.insecure_channel(address) as channel:
            connection = PipelineConnection(channel)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(PipelineTimeoutError):
                await connection.get(pb.GetRequest(key="silent"), 0.2)
            assert loop.time() - started >= 0.2
            # The stream is still usable.
            reply = await connection.get(pb.GetRequest(key="after"), 5)
            assert reply.value == "after!"
            await connection.close()
        await server.stop(None)

    asyncio.run(scenario())


def test_a_broken_stream_fails_waiting_requests_and_the_next_request_reopens_it() -> None:
    async def scenario() -> None:
        node = EchoNode()
        server, address = await start_server(node)
        async with grpc.aio.insecure_channel(address) as channel:
            connection = PipelineConnection(channel)
            waiting = asyncio.ensure_future(connection.get(pb.GetRequest(key="silent"), 30))
            await asyncio.wait_for(node.seen.wait(), 5)
            await server.stop(None)
            with pytest.raises(StreamBrokenError) as broken:
                await asyncio.wait_for(waiting, 10)
            assert broken.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)

            # Nobody listens now: the next request fails fast instead of hanging.
            with pytest.raises(StreamBrokenError) as refused:
                await connection.get(pb.GetRequest(key="k"), 5)
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE

            restarted, _ = await start_server(EchoNode(), address)
            for _attempt in range(100):  # the channel reconnects with back-off
                try:
                    reply = await connection.get(pb.GetRequest(key="back"), 5)
                    break
                except StreamBrokenError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the stream was not reopened after the restart")
            assert reply.value == "back!"
            await connection.close()
            await restarted.stop(None)

    asyncio.run(scenario())


def test_a_closed_connection_refuses_new_requests() -> None:
    async def scenario() -> None:
        node = EchoNode()
        server, address = await start_server(node)
        async with grpc.aio.insecure_channel(address) as channel:
            connection = PipelineConnection(channel)
            assert (await connection.get(pb.GetRequest(key="a"), 5)).value == "a!"
            await connection.close()
            with pytest.raises(StreamBrokenError) as closed:
                await connection.get(pb.GetRequest(key="b"), 5)
            assert closed.value.code == grpc.StatusCode.CANCELLED
        await server.stop(None)

    asyncio.run(scenario())
