"""raftkv.server.replica's snapshot tasks: a sender that fails in any way is reported to the
core; shutdown waits for the snapshot writer's thread before it releases the directory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import immutables
import pytest

from raftkv.cluster import ClusterDescription
from raftkv.core.config import profile
from raftkv.core.messages import InstallSnapshot
from raftkv.core.state_machine import SnapshotImage
from raftkv.server import replica as replica_module
from raftkv.server import snapshot_file
from raftkv.server.dump import DumpLog
from raftkv.server.replica import Replica, ReplicaOptions
from raftkv.server.storage import node_data_dir

INTENT = InstallSnapshot(3, 0, 40, 2, 0.3, max_clock_drift=0.01)


def with_replica(
    tmp_path: Path,
    body: Callable[[Replica], Awaitable[None]],
    after: Callable[[], Awaitable[None]] | None = None,
) -> list[str]:
    """Run `body` with node 0 of a two-node cluster in tmp_path (not started), stop it, run
    `after`; the dump's lines."""

    async def scenario() -> None:
        options = ReplicaOptions(0, ClusterDescription.local(2), profile("fast"), tmp_path)
        dump = DumpLog(node_data_dir(tmp_path, 0), 0, to_stdout=False)
        replica = Replica(options, dump)
        try:
            await body(replica)
        finally:
            await replica.stop()
            if after is not None:
                await after()
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


def test_stop_waits_for_the_snapshot_writer_and_it_stops_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small, slow chunks: the whole write (over 100 chunks) would take seconds.
    monkeypatch.setattr(snapshot_file, "_CHUNK_BYTES", 4096)
    writes: list[float] = []
    real_write_all = snapshot_file._write_all

    def slow_write_all(fd: int, data: bytes) -> None:
        time.sleep(0.05)
        real_write_all(fd, data)
        writes.append(time.monotonic())

    monkeypatch.setattr(snapshot_file, "_write_all", slow_write_all)
    data = immutables.Map({f"key{i:05}": "v" * 100 for i in range(4000)})
    image = SnapshotImage(1, 1, data, immutables.Map(), cluster_time=0)
    tmp = node_data_dir(tmp_path, 0) / "snapshot.txt.tmp"
    seen: dict[str, object] = {}

    async def body(replica: Replica) -> None:
        replica._start_snapshot_write(image)
        async with asyncio.timeout(5):
            while not writes:
                await asyncio.sleep(0.005)
        seen["started"] = time.monotonic()

    async def after() -> None:
        # stop() has returned: the storage's lock is released, so the writer's thread must
        # be over, its temporary file removed, and nothing written any more.
        seen["stopped"] = time.monotonic()
        seen["tmp at stop"] = tmp.exists()
        seen["writes at stop"] = len(writes)
        await asyncio.sleep(0.3)
        seen["writes later"] = len(writes)

    with_replica(tmp_path, body, after)
    assert seen["tmp at stop"] is False and not tmp.exists()
    assert seen["writes later"] == seen["writes at stop"]
    # It gave up early (the whole state is over 100 chunks), and stop() did not wait long.
    assert isinstance(seen["writes at stop"], int) and seen["writes at stop"] < 20
    assert not (node_data_dir(tmp_path, 0) / "snapshot.txt").exists()
