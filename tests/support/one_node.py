"""A real one-node raftkv cluster inside the test process: the `Replica` (core, storage, timer)
and the client port's gRPC services (`KeyValue`, the assignment's `Raft.ServeClient`) exactly as
`raftkv-node` wires them, on 127.0.0.1 and an ephemeral port.

    with OneNodeCluster(tmp_path) as node:
        SyncClient(node.description).set("k", "v")
        main(["--peers", node.address, "get", "k"])

It runs on a background thread's event loop, so blocking callers (the CLI, `SyncClient`) and
asyncio code alike can use it. No peers, so no certificates; a node of one is its own majority
and leads once its restart wait (rule 2) is over. For tests only: it skips everything
`raftkv-node` does besides serving clients (the peer listener, signals, the time-service check).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from raftkv.cluster import ClusterDescription
from raftkv.core.config import ReadMode, TimingConfig, profile
from raftkv.rpc import raftkv_pb2_grpc
from raftkv.server.dump import DumpLog
from raftkv.server.replica import Replica, ReplicaOptions
from raftkv.server.resources import client_server
from raftkv.server.service import KeyValueService, RaftService
from raftkv.server.storage import node_data_dir

SERVING_TIMEOUT = 10.0


class OneNodeCluster:
    def __init__(
        self, data_root: Path, *, read_mode: ReadMode = ReadMode.LEASE, cluster_id: str = ""
    ) -> None:
        # "" keeps the description's default id; a restored data directory needs its own.
        self._cluster_id = cluster_id
        self._config: TimingConfig = profile("fast").with_read_mode(read_mode)
        self._data_root = data_root
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Any = None
        self._runner: asyncio.Task[None] | None = None
        self._dump: DumpLog | None = None
        self.replica: Replica | None = None
        self.address = ""
        self.description = ClusterDescription.local(1)

    def __enter__(self) -> OneNodeCluster:
        self._thread.start()
        self.address = self.call(self._start(), timeout=SERVING_TIMEOUT + 5)
        self.description = self._describe(self.address)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.call(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def call(self, coroutine: Any, timeout: float = 10.0) -> Any:
        """Run `coroutine` on the node's event loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=timeout)

    async def _start(self) -> str:
        server = client_server()  # the client port's own options and caps
        port = server.add_insecure_port("127.0.0.1:0")
        address = f"127.0.0.1:{port}"
        # The node's own description names the port it serves on (its leader hints use it).
        options = ReplicaOptions(0, self._describe(address), self._config, self._data_root)
        self._dump = DumpLog(node_data_dir(self._data_root, 0), 0, to_stdout=False)
        replica = Replica(options, self._dump)
        self.replica = replica
        raftkv_pb2_grpc.add_RaftServicer_to_server(RaftService(replica), server)
        raftkv_pb2_grpc.add_KeyValueServicer_to_server(KeyValueService(replica), server)
        await server.start()
        self._server = server
        self._runner = asyncio.create_task(replica.run())
        async with asyncio.timeout(SERVING_TIMEOUT):
            while replica.core.lease_read_refusal(replica.clock.now()) is not None:
                await asyncio.sleep(0.01)
        return address

    def _describe(self, address: str) -> ClusterDescription:
        description = ClusterDescription.from_addresses([address])
        if self._cluster_id:
            description = replace(description, cluster_id=self._cluster_id)
        return description

    async def _stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)
        if self.replica is not None:
            await self.replica.stop()
        if self._runner is not None:
            self._runner.cancel()
        if self._dump is not None:
            self._dump.close()
