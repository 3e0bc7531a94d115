"""A PySyncObj peer for the benchmark: a replicated dict behind our proto's `service KeyValue`.

    python -m raftkv_tools.bench.syncobj_node --id 0 --raft A,B,C --grpc X,Y,Z --data-dir DIR

PySyncObj runs Raft in its own thread (autoTick) with `appendEntriesUseBatch=False`, its
low-latency mode (the default batching adds ~100 ms per write). Its journal (`journalFile`) is an
mmap'ed file that is never fsynced: a SET is acknowledged once a majority has it *in memory*.
The front door answers Get from the leader's own dict (PySyncObj has no lease: this read is not
linearizable) and Set by a replicated call, as unary calls and on the Pipeline stream (the same
session engine as our nodes); a follower answers FAILED_PRECONDITION with `leader-id` like our
nodes do, so the same load generator drives it. Status reports role and
leader, and `read_mode` "ready" once PySyncObj has caught up.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated  # type: ignore[import-untyped,import-not-found,unused-ignore]

from raftkv.rpc import raftkv_pb2 as pb
from raftkv.rpc import raftkv_pb2_grpc
from raftkv.rpc.metadata import LEADER_ID_METADATA
from raftkv.server.pipeline import (
    PipelineRequestError,
    PipelineSession,
    ReplyBudget,
    status_code_number,
)


class ReplicatedDict(SyncObj):  # type: ignore[misc,unused-ignore]
    def __init__(self, address: str, others: list[str], conf: SyncObjConf) -> None:
        super().__init__(address, others, conf)
        self.data: dict[str, str] = {}

    @replicated  # type: ignore[untyped-decorator,unused-ignore]
    def put(self, key: str, value: str) -> bool:
        self.data[key] = value
        return True


class FrontDoor(raftkv_pb2_grpc.KeyValueServicer):
    def __init__(self, node_id: int, raft: list[str], obj: ReplicatedDict) -> None:
        self.node_id = node_id
        self.raft = raft
        self.obj = obj
        self.reply_budget = ReplyBudget.for_node()

    def _leader(self) -> int | None:
        leader = self.obj._getLeader()
        if leader is None:
            return None
        address = getattr(leader, "address", str(leader))
        return self.raft.index(address) if address in self.raft else None

    async def _refuse_unless_leader(self, context: grpc.aio.ServicerContext) -> None:
        if self.obj._isLeader():
            return
        leader = self._leader()
        if leader is not None:
            context.set_trailing_metadata(((LEADER_ID_METADATA, str(leader)),))
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not the leader")

    async def Get(  # noqa: N802 - gRPC method name
        self, request: pb.GetRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetResponse:
        await self._refuse_unless_leader(context)
        value = self.obj.data.get(request.key)
        return pb.GetResponse(found=value is not None, value=value or "")

    async def Set(  # noqa: N802 - gRPC method name
        self, request: pb.SetRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetResponse:
        await self._refuse_unless_leader(context)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def callback(result: Any, error: Any) -> None:  # runs in PySyncObj's thread
            loop.call_soon_threadsafe(_settle, done, error)

        self.obj.put(request.key, request.value, callback=callback)
        error = await done
        if error != FAIL_REASON.SUCCESS:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"PySyncObj failure {error}")
        return pb.SetResponse(index=0)

    async def Pipeline(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[pb.PipelineRequests],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.PipelineReplies]:
        # The same session engine as our nodes, so both are driven through the same stream.
        async for replies in PipelineSession(_PipelineBackend(self), self.reply_budget).serve(
            request_iterator
        ):
            yield replies

    async def Status(  # noqa: N802 - gRPC method name
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatusResponse:
        obj = self.obj
        reply = pb.StatusResponse(
            node_id=self.node_id,
            role="leader" if obj._isLeader() else "follower",
            term=obj._getTerm(),
            read_mode="ready" if obj.isReady() else "catching-up",
            address=self.raft[self.node_id],
        )
        leader = self._leader()
        if leader is not None:
            reply.leader_id = leader
        return reply


class _PipelineBackend:
    """KeyValue.Pipeline for the front door: the leader's dict for GET, a replicated put for SET."""

    def __init__(self, door: FrontDoor) -> None:
        self.door = door

    def _refusal(self) -> tuple[str, int | None] | None:
        return None if self.door.obj._isLeader() else ("refused", self.door._leader())

    def start_get(self, request: pb.GetRequest) -> object:
        return self._refusal() or ("value", self.door.obj.data.get(request.key))

    def start_set(self, request: pb.SetRequest) -> object:
        refusal = self._refusal()
        if refusal is not None:
            return refusal
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def callback(result: Any, error: Any) -> None:  # runs in PySyncObj's thread
            loop.call_soon_threadsafe(_settle, done, error)

        self.door.obj.put(request.key, request.value, callback=callback)
        return done

    def start_delete(self, request: pb.DeleteRequest) -> object:
        # The benchmark writes with SET only; the front door need not model raftkv's DELETE.
        raise PipelineRequestError("this PySyncObj front door serves GET and SET only")

    def fill_reply(self, reply: pb.PipelineReply, outcome: object) -> None:
        match outcome:
            case ("value", str() | None as value):
                reply.found = value is not None
                reply.value = value or ""
            case ("refused", int() | None as leader):
                reply.code = status_code_number(grpc.StatusCode.FAILED_PRECONDITION)
                reply.details = "not the leader"
                if leader is not None:
                    reply.leader_id = leader
            case error if error != FAIL_REASON.SUCCESS:
                reply.code = status_code_number(grpc.StatusCode.UNAVAILABLE)
                reply.details = f"PySyncObj failure {error}"

    def timeout_details(self, request_kind: str) -> str:
        return f"{request_kind} not answered in time"


def _settle(done: asyncio.Future[Any], error: Any) -> None:
    if not done.done():
        done.set_result(error)


async def serve(node_id: int, raft: list[str], front: list[str], data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = SyncObjConf(
        appendEntriesUseBatch=False,
        journalFile=str(data_dir / "journal"),
        fullDumpFile=str(data_dir / "dump"),
        dynamicMembershipChange=False,
    )
    others = [a for i, a in enumerate(raft) if i != node_id]
    obj = ReplicatedDict(raft[node_id], others, conf)
    server = grpc.aio.server()
    raftkv_pb2_grpc.add_KeyValueServicer_to_server(FrontDoor(node_id, raft, obj), server)
    if server.add_insecure_port(front[node_id]) == 0:
        raise SystemExit(f"syncobj_node {node_id}: cannot listen on {front[node_id]}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=0.2)
    obj.destroy()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raftkv_tools.bench.syncobj_node")
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--raft", required=True, help="PySyncObj addresses, comma-separated")
    parser.add_argument("--grpc", required=True, help="front-door addresses, comma-separated")
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    raft = args.raft.split(",")
    front = args.grpc.split(",")
    if len(raft) != len(front) or not 0 <= args.id < len(raft):
        print("syncobj_node: --raft and --grpc must list the same nodes", file=sys.stderr)
        return 2
    asyncio.run(serve(args.id, raft, front, args.data_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
