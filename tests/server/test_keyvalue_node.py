"""The client port of a real (one-node, in-process) node: the typed KeyValue API and the Pipeline
stream end to end, from gRPC through the replica and the core to logs.txt and back: DELETE, LIST
(both read modes), and the assignment's ServeClient, which keeps GET and SET only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from raftkv.client.cli import main
from raftkv.client.library import SyncClient
from raftkv.core.config import ReadMode
from raftkv.rpc import raftkv_pb2 as pb
from raftkv.rpc import raftkv_pb2_grpc
from raftkv.rpc.options import CLIENT_CHANNEL_OPTIONS
from raftkv.server.storage import LOG_FILE_NAME, node_data_dir
from tests.support.one_node import OneNodeCluster

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[OneNodeCluster]:
    with OneNodeCluster(tmp_path) as running:
        yield running


def channel_to(node: OneNodeCluster) -> grpc.aio.Channel:
    # The client library's options: pages and batches of MiB values fit.
    return grpc.aio.insecure_channel(node.address, options=CLIENT_CHANNEL_OPTIONS)


def unary(node: OneNodeCluster, method: str, request: object) -> object:
    async def call() -> object:
        async with grpc.aio.insecure_channel(
            node.address, options=CLIENT_CHANNEL_OPTIONS
        ) as channel:
            stub = raftkv_pb2_grpc.KeyValueStub(channel)
            return await getattr(stub, method)(request, timeout=5)

    return node.call(call())


def pipelined(node: OneNodeCluster, *requests: pb.PipelineRequest) -> dict[int, pb.PipelineReply]:
    """Send `requests` in one batch; their replies by tag."""

    async def call() -> dict[int, pb.PipelineReply]:
        async with grpc.aio.insecure_channel(
            node.address, options=CLIENT_CHANNEL_OPTIONS
        ) as channel:
            stream = raftkv_pb2_grpc.KeyValueStub(channel).Pipeline()
            await stream.write(pb.PipelineRequests(requests=requests))
            replies: dict[int, pb.PipelineReply] = {}
            while len(replies) < len(requests):
                batch = await stream.read()
                replies.update((reply.tag, reply) for reply in batch.replies)
            await stream.done_writing()
            return replies

    result: dict[int, pb.PipelineReply] = node.call(call())
    return result


def serve_client(node: OneNodeCluster, text: str) -> pb.ServeClientReply:
    async def call() -> pb.ServeClientReply:
        async with grpc.aio.insecure_channel(
            node.address, options=CLIENT_CHANNEL_OPTIONS
        ) as channel:
            stub = raftkv_pb2_grpc.RaftStub(channel)
            reply: pb.ServeClientReply = await stub.ServeClient(
                pb.ServeClientArgs(Request=text), timeout=5
            )
            return reply

    result: pb.ServeClientReply = node.call(call())
    return result


def test_delete_over_the_typed_api_is_replicated_idempotent_and_logged(
    node: OneNodeCluster, tmp_path: Path
) -> None:
    unary(node, "Set", pb.SetRequest(key="k", value="v", client_id="c", seq=1))
    deleted = unary(node, "Delete", pb.DeleteRequest(key="k", client_id="c", seq=2))
    assert isinstance(deleted, pb.DeleteResponse) and deleted.index > 0
    assert unary(node, "Get", pb.GetRequest(key="k")) == pb.GetResponse(found=False)
    # A retry answers the first DELETE's index; deleting an absent key is no error.
    again = unary(node, "Delete", pb.DeleteRequest(key="k", client_id="c", seq=2))
    assert again == deleted
    absent = unary(node, "Delete", pb.DeleteRequest(key="never", client_id="c", seq=3))
    assert isinstance(absent, pb.DeleteResponse) and absent.index > deleted.index
    # The seq is shared with the client's SETs: seq 1 is stale now.
    with pytest.raises(grpc.RpcError) as stale:
        unary(node, "Set", pb.SetRequest(key="k", value="old", client_id="c", seq=1))
    assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    log = (node_data_dir(tmp_path, 0) / LOG_FILE_NAME).read_text().splitlines()
    assert log[deleted.index - 1].startswith("DEL k ")
    assert " client=c seq=2 " in log[deleted.index - 1]


def test_a_malformed_delete_is_invalid_argument(node: OneNodeCluster) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        unary(node, "Delete", pb.DeleteRequest(key=""))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_delete_on_the_pipeline_answers_with_the_index(node: OneNodeCluster) -> None:
    replies = pipelined(
        node,
        pb.PipelineRequest(tag=1, set=pb.SetRequest(key="p", value="1")),
        pb.PipelineRequest(tag=2, delete=pb.DeleteRequest(key="p")),
        pb.PipelineRequest(tag=3, delete=pb.DeleteRequest(key="")),
    )
    assert replies[1].code == replies[2].code == 0
    assert replies[2].index == replies[1].index + 1
    assert replies[3].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    [after] = pipelined(node, pb.PipelineRequest(tag=4, get=pb.GetRequest(key="p"))).values()
    assert (after.code, after.found) == (0, False)


def test_serve_client_keeps_only_get_and_set(node: OneNodeCluster) -> None:
    assert serve_client(node, "SET a hello world").Success
    for text in ("DEL a", "DELETE a"):
        reply = serve_client(node, text)
        assert not reply.Success
        assert reply.Data.startswith("unknown command")
    assert serve_client(node, "GET a") == pb.ServeClientReply(
        Data="hello world", LeaderID="0", Success=True
    )


def test_the_client_library_and_the_cli_delete_on_a_real_node(
    node: OneNodeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    with SyncClient(node.description) as client:
        first = client.set("user:1", "alice")
        assert client.delete("user:1") == first + 1
        assert client.get("user:1") is None
        assert client.delete("user:1") == first + 2  # absent: applied, changes nothing
    assert main(["--peers", node.address, "set", "user:2", "bob"]) == 0
    assert main(["--peers", node.address, "del", "user:2"]) == 0
    assert main(["--peers", node.address, "del", "user:2"]) == 0
    assert main(["--peers", node.address, "get", "user:2"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "OK\nOK\nOK\n"
    assert captured.err == "raftkv: key not found\n"


def list_page(
    node: OneNodeCluster, prefix: str = "", start_after: str = "", limit: int = 0
) -> tuple[list[tuple[str, str]], bool]:
    request = pb.ListRequest(prefix=prefix, start_after=start_after, limit=limit)
    reply = unary(node, "List", request)
    assert isinstance(reply, pb.ListResponse)
    return [(item.key, item.value) for item in reply.items], reply.more


def fill(node: OneNodeCluster, items: dict[str, str]) -> None:
    requests = [
        pb.PipelineRequest(tag=tag, set=pb.SetRequest(key=key, value=value))
        for tag, (key, value) in enumerate(items.items(), start=1)
    ]
    assert all(reply.code == 0 for reply in pipelined(node, *requests).values())


def test_list_pages_through_a_prefix_in_order(node: OneNodeCluster) -> None:
    fill(node, {f"user:{i:03}": f"name {i}" for i in range(150)} | {"other": "x", "user": "u"})
    items, more = list_page(node, "user:")
    assert more and len(items) == 100  # the default limit
    assert items[0] == ("user:000", "name 0") and items[-1][0] == "user:099"
    items, more = list_page(node, "user:", start_after=items[-1][0])
    assert not more and [key for key, _ in items] == [f"user:{i:03}" for i in range(100, 150)]
    assert list_page(node, "user:", limit=150)[1] is False  # exactly the limit: no more
    assert list_page(node, "nobody") == ([], False)
    assert list_page(node, "user:", start_after="zzz") == ([], False)
    assert list_page(node, "user:", start_after="a", limit=1) == ([("user:000", "name 0")], True)
    unary(node, "Delete", pb.DeleteRequest(key="user:000"))
    assert list_page(node, "user", limit=2) == ([("user", "u"), ("user:001", "name 1")], True)
    with pytest.raises(grpc.RpcError) as refused:
        list_page(node, limit=1001)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_list_pages_hold_at_most_4_mib(node: OneNodeCluster) -> None:
    mib = "v" * (1024 * 1024)
    fill(node, {f"big{i}": mib for i in range(5)})
    items, more = list_page(node, "big")
    assert [key for key, _ in items] == ["big0", "big1", "big2"] and more
    assert all(value == mib for _, value in items)
    items, more = list_page(node, "big", start_after="big2")
    assert [key for key, _ in items] == ["big3", "big4"] and not more


def test_list_in_read_index_mode(tmp_path: Path) -> None:
    with OneNodeCluster(tmp_path, read_mode=ReadMode.READ_INDEX) as node:
        fill(node, {"a": "1", "b": "2"})
        assert list_page(node) == ([("a", "1"), ("b", "2")], False)
        assert unary(node, "Get", pb.GetRequest(key="b")) == pb.GetResponse(found=True, value="2")


def test_the_cli_lists_a_real_node(
    node: OneNodeCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    # The transcript README.md shows (`raftkv del`, `raftkv ls`).
    peers = ["--peers", node.address]
    for key, words in (("user:1", ["Ada", "Lovelace"]), ("user:2", ["Alan"]), ("user:3", ["x"])):
        assert main([*peers, "set", key, *words]) == 0
    assert main([*peers, "set", "other", "y"]) == 0
    assert main([*peers, "del", "user:3"]) == 0
    assert main([*peers, "ls", "user:"]) == 0
    assert main([*peers, "ls", "--keys-only"]) == 0
    assert main([*peers, "ls", "--limit", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[5:] == [
        "user:1 Ada%20Lovelace",
        "user:2 Alan",
        "other",
        "user:1",
        "user:2",
        "other y",
    ]
    assert captured.err == "raftkv: more keys follow the 1 shown (raise --limit to see them)\n"
