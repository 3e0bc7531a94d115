"""The lean per-process clients the load generator drives: raw grpc.aio stubs, one channel per
node, each request to the known leader.

`Target` is the picklable description of a system under test (it crosses into the generator's
worker processes); `open_ops(target, ...)` builds the matching `Ops` inside a worker.

- `raftkv` speaks our proto's `service KeyValue` (also served by the PySyncObj front door):
  FAILED_PRECONDITION with trailing metadata `leader-id` moves to that node at once; other
  failures pause RETRY_PAUSE and try the next node. A SET carries the virtual client's
  client_id and its next seq; retries of one SET reuse them (exactly once).
- `etcd` speaks etcd's v3 KV API: Put, and Range with linearizable (default) or serializable
  reads. Requests go to the leader found at set-up (followers would forward); on failure the
  next member is tried.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from raftkv.rpc.metadata import LEADER_ID_METADATA
from raftkv.rpc.options import BENCH_CHANNEL_OPTIONS

RETRY_PAUSE = 0.01


@dataclass(frozen=True)
class Target:
    """How to reach one system under test."""

    kind: str  # "raftkv" or "etcd"
    label: str
    addresses: tuple[str, ...]
    # raftkv: the node id served at each address (what `leader-id` names).
    node_ids: tuple[int, ...] = ()
    # Index into `addresses` of the leader when known.
    leader: int = 0
    serializable: bool = False
    # raftkv: send GET/SET over one KeyValue.Pipeline stream per node (what our client library
    # does) instead of one unary call each.
    pipeline: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("raftkv", "etcd"):
            raise ValueError(f"unknown target kind {self.kind!r}")
        if not self.addresses:
            raise ValueError("a target needs at least one address")


class OperationError(Exception):
    """An operation that did not succeed before its deadline; `code` says how it last failed."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def kv_stub(channel: Any) -> Any:
    """Our `KeyValue` stub."""
    from raftkv.rpc import raftkv_pb2_grpc

    return raftkv_pb2_grpc.KeyValueStub(channel)


class Ops:
    """One worker process's connection to a system: an operation per coroutine call.

    Each method returns the monotonic time at which the successful attempt was sent.
    """

    redirects: int = 0

    async def connect(self, timeout: float) -> None:
        raise NotImplementedError

    async def get(self, key_index: int) -> float:
        raise NotImplementedError

    async def set(self, key_index: int, value_index: int, client_id: str, seq: int) -> float:
        raise NotImplementedError

    async def status(self) -> float:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _Channels:
    def __init__(self, addresses: tuple[str, ...]) -> None:
        self.channels = [
            grpc.aio.insecure_channel(a, options=BENCH_CHANNEL_OPTIONS) for a in addresses
        ]

    async def ready(self, index: int, timeout: float) -> None:
        await asyncio.wait_for(self.channels[index].channel_ready(), timeout)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.channels), return_exceptions=True)


class RaftKVOps(Ops):
    def __init__(
        self, target: Target, keys: list[str], values: list[str], per_try: float, op_timeout: float
    ) -> None:
        from raftkv.rpc import raftkv_pb2 as pb

        self._pb = pb
        self._target = target
        self._net = _Channels(target.addresses)
        stubs = [kv_stub(c) for c in self._net.channels]
        self._get = [s.Get for s in stubs]
        self._set = [s.Set for s in stubs]
        self._status = [s.Status for s in stubs]
        self._index_of = {node_id: i for i, node_id in enumerate(target.node_ids)}
        self._keys = keys
        self._values = values
        # GetRequests never change: build them once.
        self._get_requests = [pb.GetRequest(key=k) for k in keys]
        self._status_request = pb.StatusRequest()
        self.leader = target.leader
        self._per_try = per_try
        self._op_timeout = op_timeout
        self._n = len(target.addresses)

    async def connect(self, timeout: float) -> None:
        await self._net.ready(self.leader, timeout)

    async def _call(self, methods: list[Any], request: Any) -> float:
        monotonic = time.monotonic
        deadline = monotonic() + self._op_timeout
        code = "DEADLINE_EXCEEDED"
        while True:
            index = self.leader
            sent = monotonic()
            try:
                await methods[index](request, timeout=self._per_try)
                return sent
            except grpc.aio.AioRpcError as error:
                status = error.code()
                code = status.name
                hint = None
                if status == grpc.StatusCode.FAILED_PRECONDITION:
                    for key, value in error.trailing_metadata() or ():
                        if key == LEADER_ID_METADATA and value.isdecimal():
                            hint = self._index_of.get(int(value))
                await self._after_failure(index, hint, code, deadline)
            if monotonic() >= deadline:
                raise OperationError(code)

    async def _after_failure(
        self, index: int, hint: int | None, code: str, deadline: float
    ) -> None:
        """Move to the hinted leader at once, or to the next node after a pause; raises
        OperationError when the pause would pass the deadline."""
        if hint is not None and hint != index:
            self.redirects += 1
            self.leader = hint
            return
        if self.leader == index:
            self.leader = (index + 1) % self._n
        if time.monotonic() + RETRY_PAUSE >= deadline:
            raise OperationError(code)
        await asyncio.sleep(RETRY_PAUSE)

    async def get(self, key_index: int) -> float:
        return await self._call(self._get, self._get_requests[key_index])

    async def set(self, key_index: int, value_index: int, client_id: str, seq: int) -> float:
        request = self._pb.SetRequest(
            key=self._keys[key_index],
            value=self._values[value_index],
            client_id=client_id,
            seq=seq,
        )
        return await self._call(self._set, request)

    async def status(self) -> float:
        return await self._call(self._status, self._status_request)

    async def close(self) -> None:
        await self._net.close()


class RaftKVPipelineOps(RaftKVOps):
    """Like RaftKVOps, but GET and SET travel on one `Pipeline` stream per node, shared by every
    virtual client of the process (raftkv/client/pipeline.py); Status stays a unary call."""

    def __init__(
        self, target: Target, keys: list[str], values: list[str], per_try: float, op_timeout: float
    ) -> None:
        from raftkv.client.pipeline import PipelineConnection

        super().__init__(target, keys, values, per_try, op_timeout)
        self._pipes = [PipelineConnection(c) for c in self._net.channels]

    async def _pipelined(self, kind: str, request: Any) -> float:
        from raftkv.client.pipeline import StreamBrokenError

        monotonic = time.monotonic
        deadline = monotonic() + self._op_timeout
        code = "DEADLINE_EXCEEDED"
        while True:
            index = self.leader
            pipe = self._pipes[index]
            sent = monotonic()
            hint = None
            try:
                if kind == "get":
                    reply = await pipe.get(request, self._per_try)
                else:
                    reply = await pipe.set(request, self._per_try)
            except StreamBrokenError as error:
                code = error.code.name
            except TimeoutError:
                code = "DEADLINE_EXCEEDED"
            else:
                if reply.code == 0:
                    return sent
                code = grpc.StatusCode.FAILED_PRECONDITION.name
                if reply.code != grpc.StatusCode.FAILED_PRECONDITION.value[0]:
                    code = _STATUS_NAMES.get(reply.code, str(reply.code))
                elif reply.HasField("leader_id"):
                    hint = self._index_of.get(reply.leader_id)
            await self._after_failure(index, hint, code, deadline)
            if monotonic() >= deadline:
                raise OperationError(code)

    async def get(self, key_index: int) -> float:
        return await self._pipelined("get", self._get_requests[key_index])

    async def set(self, key_index: int, value_index: int, client_id: str, seq: int) -> float:
        request = self._pb.SetRequest(
            key=self._keys[key_index],
            value=self._values[value_index],
            client_id=client_id,
            seq=seq,
        )
        return await self._pipelined("set", request)

    async def close(self) -> None:
        for pipe in self._pipes:
            await pipe.close()
        await super().close()


_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


class EtcdOps(Ops):
    def __init__(
        self, target: Target, keys: list[str], values: list[str], per_try: float, op_timeout: float
    ) -> None:
        from raftkv_tools.bench import etcdstubs

        pb, pb_grpc = etcdstubs.load()
        self._pb = pb
        self._net = _Channels(target.addresses)
        stubs = [pb_grpc.KVStub(c) for c in self._net.channels]
        self._range = [s.Range for s in stubs]
        self._put = [s.Put for s in stubs]
        self._get_requests = [
            pb.RangeRequest(key=k.encode(), serializable=target.serializable) for k in keys
        ]
        self._status_requests = [pb.RangeRequest(key=k.encode(), serializable=True) for k in keys]
        self._keys = [k.encode() for k in keys]
        self._values = [v.encode() for v in values]
        self.leader = target.leader
        self._per_try = per_try
        self._op_timeout = op_timeout
        self._n = len(target.addresses)

    async def connect(self, timeout: float) -> None:
        await self._net.ready(self.leader, timeout)

    async def _call(self, methods: list[Any], request: Any) -> float:
        monotonic = time.monotonic
        deadline = monotonic() + self._op_timeout
        while True:
            index = self.leader
            sent = monotonic()
            try:
                await methods[index](request, timeout=self._per_try)
                return sent
            except grpc.aio.AioRpcError as error:
                code = error.code().name
                if self.leader == index:
                    self.leader = (index + 1) % self._n
                if monotonic() + RETRY_PAUSE >= deadline:
                    raise OperationError(code) from None
                await asyncio.sleep(RETRY_PAUSE)

    async def get(self, key_index: int) -> float:
        return await self._call(self._range, self._get_requests[key_index])

    async def set(self, key_index: int, value_index: int, client_id: str, seq: int) -> float:
        request = self._pb.PutRequest(key=self._keys[key_index], value=self._values[value_index])
        return await self._call(self._put, request)

    async def status(self) -> float:
        return await self._call(self._range, self._status_requests[0])

    async def close(self) -> None:
        await self._net.close()


def open_ops(
    target: Target, keys: list[str], values: list[str], per_try: float, op_timeout: float
) -> Ops:
    if target.kind == "raftkv" and target.pipeline:
        return RaftKVPipelineOps(target, keys, values, per_try, op_timeout)
    if target.kind == "raftkv":
        return RaftKVOps(target, keys, values, per_try, op_timeout)
    return EtcdOps(target, keys, values, per_try, op_timeout)
