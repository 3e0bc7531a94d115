"""raftkv.server.replica's snapshot tasks: a sender that fails in any way is reported to the
core; shutdown waits for the snapshot writer's thread before it releases the directory."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from raftkv.cluster import ClusterDescription
from raftkv.core.config import profile
from raftkv.core.messages import InstallSnapshot
from raftkv.server import replica as replica_module
from raftkv.server.dump import DumpLog
from raftkv.server.replica import Replica, ReplicaOptions
from raftkv.server.storage import node_data_dir

INTENT = InstallSnapshot(3, 0, 40, 2, 0.3, max_clock_drift=0.01)


def with_replica(tmp_path: Path, body: Callable[[Replica], Awaitable[None]]) -> list[str]:
    """Run `body` with node 0 of a two-node cluster in tmp_path (not started), stop it; the
    dump's lines."""

    async def scenario() -> None:
        options = ReplicaOptions(0, ClusterDescription.local(2), profile("fast"), tmp_path)
        dump = DumpLog(node_data_dir(tmp_path, 0), 0, to_stdout=False)
        replica = Replica(options, dump)
        try:
            await body(replica)
        finally:
            await replica.stop()
            dump.close()

    asyncio.run(scenario())
    return (node_data_dir(tmp_path, 0) / "dump.txt").read_text().splitlines()


class BrokenSender:
    """A SnapshotSender whose run() fails with an error it did not turn into
    TransferFailedError."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.chunks_sent = 2

    async def run(self) -> bool:
        raise RuntimeError("a bug in the sender")


def test_a_sender_that_fails_unexpectedly_is_reported_to_the_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replica_module, "SnapshotSender", BrokenSender)
    queued: list[object] = []

    async def body(replica: Replica) -> None:
        await replica._send_snapshot(1, replica.peers[1], INTENT)
        queued.extend(item for item, _ in replica._inputs)

    lines = with_replica(tmp_path, body)
    # Unreported, the core would keep the follower waiting for a snapshot for the whole term.
    assert queued == [replica_module._SnapshotSendFailed(1)]
    assert any(
        "stopped sending its snapshot to Node 1 after 2 chunks" in line
        and "RuntimeError: a bug in the sender" in line
        for line in lines
    )
