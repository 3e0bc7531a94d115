"""The gRPC server of a node's client port (raftkv/server/resources.py `client_server`): its caps
on RPCs and connections at once, and the connection limits of CLIENT_SERVER_OPTIONS.

Each option is checked for its effect with a small value, so that a misspelt name (gRPC ignores
unknown ones) or a gRPC version that dropped one fails here.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import grpc.aio
import pytest

from raftkv.limits import MAX_CONCURRENT_CLIENT_RPCS
from raftkv.rpc import raftkv_pb2 as pb
from raftkv.rpc import raftkv_pb2_grpc
from raftkv.rpc.metadata import RPC_LIMIT_DETAILS
from raftkv.rpc.options import CLIENT_SERVER_OPTIONS, Options
from raftkv.server.resources import client_connection_cap, client_server

pytestmark = pytest.mark.timeout(30)

# A channel of its own: gRPC would otherwise share one connection among a test's channels.
OWN_CONNECTION: Options = (("grpc.use_local_subchannel_pool", 1),)


class EchoNode(raftkv_pb2_grpc.KeyValueServicer):
    """Status answers; Pipeline answers each batch with an empty one until the client ends."""

    def __init__(self) -> None:
        self.calls = 0

    async def Status(  # noqa: N802 - gRPC method name
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatusResponse:
        self.calls += 1
        return pb.StatusResponse(node_id=1)

    async def Pipeline(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[pb.PipelineRequests],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.PipelineReplies]:
        self.calls += 1
        async for _ in request_iterator:
            yield pb.PipelineReplies()


def with_option(name: str, value: int) -> Options:
    """CLIENT_SERVER_OPTIONS with `name` (which it must set) set to `value`."""
    assert name in dict(CLIENT_SERVER_OPTIONS), f"CLIENT_SERVER_OPTIONS does not set {name}"
    return tuple((key, value if key == name else old) for key, old in CLIENT_SERVER_OPTIONS)


async def served_again(stub: raftkv_pb2_grpc.KeyValueStub, refused: grpc.StatusCode) -> None:
    """Waits until Status is served, failing with `refused` until then: gRPC may free a slot
    just after the end of the call or connection that held it reaches the client."""
    for _ in range(500):
        try:
            assert (await stub.Status(pb.StatusRequest(), timeout=5)).node_id == 1
            return
        except grpc.aio.AioRpcError as error:
            assert error.code() == refused
        await asyncio.sleep(0.01)
    raise AssertionError("no slot came back within 5 s")


def serve(
    scenario: Callable[[EchoNode, str], Awaitable[None]],
    *,
    max_concurrent_rpcs: int = MAX_CONCURRENT_CLIENT_RPCS,
    max_connections: int | None = None,
    options: Options = CLIENT_SERVER_OPTIONS,
) -> None:
    async def main() -> None:
        node = EchoNode()
        server = client_server(
            max_concurrent_rpcs=max_concurrent_rpcs,
            max_connections=max_connections,
            options=options,
        )
        raftkv_pb2_grpc.add_KeyValueServicer_to_server(node, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            await scenario(node, f"127.0.0.1:{port}")
        finally:
            await server.stop(None)

    asyncio.run(main())


def test_rpcs_beyond_the_cap_are_refused_before_a_handler_runs() -> None:
    async def scenario(node: EchoNode, address: str) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = raftkv_pb2_grpc.KeyValueStub(channel)
            first = stub.Pipeline()
            await first.write(pb.PipelineRequests())
            await first.read()  # the stream is open and holds the only slot
            second = stub.Pipeline()
            for refused in (second.read(), stub.Status(pb.StatusRequest())):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await refused
                assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert caught.value.details() == RPC_LIMIT_DETAILS  # what clients look for
            assert node.calls == 1
            # The slot comes back when the stream ends (gRPC may free it just after the end
            # reaches the client, hence a bounded wait).
            await first.done_writing()
            assert await first.read() is grpc.aio.EOF
            await served_again(stub, grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert node.calls == 2

    serve(scenario, max_concurrent_rpcs=1)


def test_a_connection_that_never_completes_its_handshake_is_closed() -> None:
    async def scenario(node: EchoNode, address: str) -> None:
        host, port = address.rsplit(":", 1)
        loop = asyncio.get_running_loop()
        with socket.create_connection((host, int(port))) as silent:
            silent.setblocking(False)
            # gRPC sends its SETTINGS at once, then closes: the client never sent a preface.
            while await asyncio.wait_for(loop.sock_recv(silent, 4096), 5):
                pass

    serve(scenario, options=with_option("grpc.server_handshake_timeout_ms", 200))


def test_a_connection_without_calls_is_closed_when_idle() -> None:
    async def scenario(node: EchoNode, address: str) -> None:
        async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as channel:
            await raftkv_pb2_grpc.KeyValueStub(channel).Status(pb.StatusRequest())
            assert channel.get_state() == grpc.ChannelConnectivity.READY
            # The server's GOAWAY takes the channel to IDLE; its next call reconnects.
            await asyncio.wait_for(channel.wait_for_state_change(grpc.ChannelConnectivity.READY), 5)
            assert channel.get_state() == grpc.ChannelConnectivity.IDLE
            assert (await raftkv_pb2_grpc.KeyValueStub(channel).Status(pb.StatusRequest())).node_id

    serve(scenario, options=with_option("grpc.max_connection_idle_ms", 200))


def test_connections_beyond_the_cap_are_closed_and_the_slot_comes_back() -> None:
    async def status(channel: grpc.aio.Channel) -> pb.StatusResponse:
        response: pb.StatusResponse = await raftkv_pb2_grpc.KeyValueStub(channel).Status(
            pb.StatusRequest(), timeout=5
        )
        return response

    async def scenario(node: EchoNode, address: str) -> None:
        first = grpc.aio.insecure_channel(address, options=OWN_CONNECTION)
        second = grpc.aio.insecure_channel(address, options=OWN_CONNECTION)
        try:
            await status(first)
            await status(second)
            async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as third:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await status(third)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "Socket closed" in (caught.value.details() or "")
            await first.close()  # a slot comes back
            async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as fourth:
                await served_again(
                    raftkv_pb2_grpc.KeyValueStub(fourth), grpc.StatusCode.UNAVAILABLE
                )
        finally:
            await first.close()
            await second.close()

    serve(scenario, max_connections=2)


@pytest.mark.parametrize(
    ("descriptor_limit", "cap"),
    [(1024, 768), (128, 64), (65536, 4096), (2, 1), (1, 1)],
)
def test_the_connection_cap_leaves_descriptors_for_the_node(
    descriptor_limit: int, cap: int
) -> None:
    assert client_connection_cap(descriptor_limit) == cap
