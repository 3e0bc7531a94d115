"""KeyValue.SnapshotSave on a real (one-node, in-process) node: the leader's state at its commit
index as snapshot.txt's bytes, in both read modes, with this cluster's id, every acknowledged
write and the sessions; cancelled by the client without harm to the node."""

from __future__ import annotations

from pathlib import Path

import grpc
import grpc.aio
import pytest

from raftkv.client.library import SyncClient
from raftkv.core.config import ReadMode
from raftkv.core.messages import Refusal, Refused
from raftkv.rpc import raftkv_pb2 as pb
from raftkv.rpc import raftkv_pb2_grpc
from raftkv.rpc.metadata import LEADER_ID_METADATA
from raftkv.rpc.options import CLIENT_CHANNEL_OPTIONS
from raftkv.server.snapshot_file import LoadedSnapshot, SnapshotReader
from tests.support.one_node import OneNodeCluster

pytestmark = pytest.mark.timeout(60)


def stream_snapshot(node: OneNodeCluster) -> tuple[list[bytes], LoadedSnapshot]:
    """Every chunk of one SnapshotSave, and the snapshot they make, checked whole."""

    async def call() -> list[bytes]:
        async with grpc.aio.insecure_channel(
            node.address, options=CLIENT_CHANNEL_OPTIONS
        ) as channel:
            stream = raftkv_pb2_grpc.KeyValueStub(channel).SnapshotSave(
                pb.SnapshotSaveRequest(), timeout=10
            )
            return [chunk.data async for chunk in stream]

    chunks: list[bytes] = node.call(call())
    reader = SnapshotReader("the stream")
    for chunk in chunks:
        reader.feed(chunk)
    return chunks, reader.finish()


@pytest.mark.parametrize("read_mode", [ReadMode.LEASE, ReadMode.READ_INDEX])
def test_snapshot_save_streams_every_acknowledged_write(
    tmp_path: Path, read_mode: ReadMode
) -> None:
    with OneNodeCluster(tmp_path, read_mode=read_mode, cluster_id="prod-1") as node:
        client = SyncClient(node.description)
        try:
            written = {f"k{i:03}": f"value {i}" for i in range(50)}
            last = 0
            for key, value in written.items():
                last = client.set(key, value)
            client.delete("k000")
            del written["k000"]
            last = client.set("spaced key", "a b\nc")
            written["spaced key"] = "a b\nc"
            chunks, loaded = stream_snapshot(node)
            client_id = client.client_id
        finally:
            client.close()
        header = loaded.header
        assert header.cluster_id == "prod-1"
        # At the commit index when served: at or after every acknowledged write.
        assert header.last_index >= last
        assert dict(loaded.data) == written
        assert loaded.sessions[client_id][0] == 52
        assert loaded.size == sum(len(chunk) for chunk in chunks)
        dump = (tmp_path / "logs_node_0" / "dump.txt").read_text()
        assert f"served a backup at index {header.last_index}" in dump


def test_snapshot_save_of_a_large_state_comes_in_chunks_and_can_be_cancelled(
    tmp_path: Path,
) -> None:
    with OneNodeCluster(tmp_path) as node:
        client = SyncClient(node.description, timeout=30)
        try:
            value = "v" * 100_000
            for i in range(30):
                client.set(f"big{i:02}", value)
        finally:
            client.close()
        chunks, loaded = stream_snapshot(node)
        assert len(chunks) >= 3 and len(loaded.data) == 30

        async def cancel_after_first_chunk() -> bytes:
            async with grpc.aio.insecure_channel(
                node.address, options=CLIENT_CHANNEL_OPTIONS
            ) as channel:
                stream = raftkv_pb2_grpc.KeyValueStub(channel).SnapshotSave(
                    pb.SnapshotSaveRequest(), timeout=10
                )
                first: pb.SnapshotChunk = await stream.read()
                stream.cancel()
                return first.data

        first = node.call(cancel_after_first_chunk())
        assert first.startswith(b"raftkv-snapshot 1\n")
        # The node goes on serving, backups included.
        _, reloaded = stream_snapshot(node)
        assert dict(reloaded.data) == dict(loaded.data)


def test_snapshot_save_is_refused_with_a_gets_code_and_leader_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OneNodeCluster(tmp_path) as node:
        assert node.replica is not None
        # The core's refusal (its rules are tests/core's): here, how the wire says it.
        refusal = Refused(Refusal.NO_LEASE, 0)
        monkeypatch.setattr(node.replica.core, "read_image", lambda now, token: refusal)

        async def save() -> grpc.aio.AioRpcError:
            async with grpc.aio.insecure_channel(
                node.address, options=CLIENT_CHANNEL_OPTIONS
            ) as channel:
                stream = raftkv_pb2_grpc.KeyValueStub(channel).SnapshotSave(
                    pb.SnapshotSaveRequest(), timeout=5
                )
                try:
                    await stream.read()
                except grpc.aio.AioRpcError as error:
                    return error
            raise AssertionError("the stream was not refused")

        error = node.call(save())
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.details() == Refusal.NO_LEASE.value
        assert (LEADER_ID_METADATA, "0") in tuple(error.trailing_metadata())
