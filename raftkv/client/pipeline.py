"""The client side of `KeyValue.Pipeline`: one gRPC stream per node carries every request.

Callers on one event loop share the stream: each request gets a tag and a future, a sender task
writes everything queued since its last write as one message (so 32 concurrent callers cost one
write, not 32 calls), and a receiver task resolves futures by tag. The stream is opened on first
use; when it breaks, every request waiting on it fails with the stream's error and the next
request opens a new one.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import grpc
import grpc.aio

from raftkv.rpc import raftkv_pb2, raftkv_pb2_grpc

# Bytes of keys and values per message before the sender starts another one: far below the
# servers' 64 MiB receive limit, large enough that batching is never the bottleneck.
MAX_BATCH_BYTES = 4 * 1024 * 1024
# Extra time past the server's own deadline before the client gives up on a silent server.
CLIENT_GRACE_SECONDS = 0.05


class StreamBrokenError(Exception):
    """The stream ended before the request's reply came back; the request may have run.

    `code` and `details` are gRPC's account of why (UNAVAILABLE when the connection failed).
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class PipelineTimeoutError(TimeoutError):
    """No reply within the request's timeout (the server did not even answer DEADLINE_EXCEEDED)."""


class PipelineConnection:
    """Requests to one node over one `Pipeline` stream on `channel` (owned by the caller)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub: Any = raftkv_pb2_grpc.KeyValueStub(channel)
        self._tags = itertools.count(1)
        self._queue: list[raftkv_pb2.PipelineRequest] = []
        self._queued_bytes = 0
        self._waiting: dict[int, asyncio.Future[raftkv_pb2.PipelineReply]] = {}
        self._wake = asyncio.Event()
        self._stream: _Stream | None = None
        self._closed = False

    async def get(self, request: raftkv_pb2.GetRequest, timeout: float) -> raftkv_pb2.PipelineReply:
        return await self._request(
            raftkv_pb2.PipelineRequest(get=request), len(request.key), timeout
        )

    async def set(self, request: raftkv_pb2.SetRequest, timeout: float) -> raftkv_pb2.PipelineReply:
        size = len(request.key) + len(request.value)
        return await self._request(raftkv_pb2.PipelineRequest(set=request), size, timeout)

    async def delete(
        self, request: raftkv_pb2.DeleteRequest, timeout: float
    ) -> raftkv_pb2.PipelineReply:
        return await self._request(
            raftkv_pb2.PipelineRequest(delete=request), len(request.key), timeout
        )

    async def close(self) -> None:
        self._closed = True
        if self._stream is not None:
            self._stream.stop()
            self._stream = None
        self._fail_all(StreamBrokenError(grpc.StatusCode.CANCELLED, "the client was closed"))

    async def _request(
        self, request: raftkv_pb2.PipelineRequest, size: int, timeout: float
    ) -> raftkv_pb2.PipelineReply:
        if self._closed:
            raise StreamBrokenError(grpc.StatusCode.CANCELLED, "the client was closed")
        loop = asyncio.get_running_loop()
        tag = next(self._tags)
        request.tag = tag
        request.timeout_ms = max(1, int(timeout * 1000))
        future: asyncio.Future[raftkv_pb2.PipelineReply] = loop.create_future()
        self._waiting[tag] = future
        self._queue.append(request)
        self._queued_bytes += size
        if self._stream is None:
            self._stream = _Stream(self)
        self._wake.set()
        # A timer rather than asyncio.wait_for: wait_for costs a task per request.
        timer = loop.call_later(timeout + CLIENT_GRACE_SECONDS, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()
            self._waiting.pop(tag, None)

    def _take_batch(self) -> list[raftkv_pb2.PipelineRequest]:
        if self._queued_bytes <= MAX_BATCH_BYTES:
            batch, self._queue, self._queued_bytes = self._queue, [], 0
            return batch
        batch, size = [], 0
        while self._queue and (not batch or size < MAX_BATCH_BYTES):
            request = self._queue.pop(0)
            size += _size(request)
            batch.append(request)
        self._queued_bytes = max(0, self._queued_bytes - size)
        return batch

    def _deliver(self, replies: raftkv_pb2.PipelineReplies) -> None:
        waiting = self._waiting
        for reply in replies.replies:
            future = waiting.pop(reply.tag, None)
            if future is not None and not future.done():
                future.set_result(reply)

    def _broken(self, stream: _Stream, error: StreamBrokenError) -> None:
        if self._stream is stream:
            self._stream = None
        self._fail_all(error)

    def _fail_all(self, error: StreamBrokenError) -> None:
        self._queue, self._queued_bytes = [], 0
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(error)


class _Stream:
    """One open `Pipeline` call and the two tasks that write and read it."""

    def __init__(self, owner: PipelineConnection) -> None:
        self._owner = owner
        self._call: Any = owner._stub.Pipeline()
        self._sender = asyncio.create_task(self._send())
        self._receiver = asyncio.create_task(self._receive())

    def stop(self) -> None:
        self._call.cancel()
        self._sender.cancel()
        self._receiver.cancel()

    async def _send(self) -> None:
        owner = self._owner
        try:
            while True:
                if not owner._queue:
                    owner._wake.clear()
                    await owner._wake.wait()
                    continue
                batch = owner._take_batch()
                await self._call.write(raftkv_pb2.PipelineRequests(requests=batch))
        except asyncio.CancelledError:
            raise
        except Exception:
            self._call.cancel()

    async def _receive(self) -> None:
        owner = self._owner
        error: StreamBrokenError
        try:
            while True:
                replies = await self._call.read()
                if replies is grpc.aio.EOF:
                    error = StreamBrokenError(
                        grpc.StatusCode.UNAVAILABLE, "the server closed the stream"
                    )
                    break
                owner._deliver(replies)
        except grpc.aio.AioRpcError as failure:
            error = StreamBrokenError(failure.code(), failure.details() or "")
        except asyncio.CancelledError:
            error = StreamBrokenError(grpc.StatusCode.CANCELLED, "the stream was cancelled")
        self._sender.cancel()
        owner._broken(self, error)


def _size(request: raftkv_pb2.PipelineRequest) -> int:
    """What a request counts against MAX_BATCH_BYTES: its key and value."""
    which = request.WhichOneof("op")
    if which == "set":
        return len(request.set.key) + len(request.set.value)
    if which == "delete":
        return len(request.delete.key)
    return len(request.get.key)


def _expire(future: asyncio.Future[raftkv_pb2.PipelineReply]) -> None:
    if not future.done():
        future.set_exception(PipelineTimeoutError("no reply in time"))
