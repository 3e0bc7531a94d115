"""The server side of `KeyValue.Pipeline`: many client requests in flight on one gRPC stream.

A unary gRPC call costs the Python server far more than the work behind a GET (the benchmark's
profile: ~85% of the leader's time went to per-call machinery). On one stream a client sends
batches of tagged requests; the session starts each one as it is read, in order, and sends back
every reply that is ready in one message — a GET's at once, a SET's or DELETE's when it commits.

The session is generic over a `PipelineBackend` (our replica; the benchmark's PySyncObj front door
is another): the backend starts a request and either answers at once or returns a future, and
fills a reply from an outcome. The session owns tags, deadlines and the bound on requests in
flight, so a client can neither flood a node nor leave requests waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError

from raftkv.rpc import raftkv_pb2 as pb

# Requests one stream may have waiting at once; more are refused with RESOURCE_EXHAUSTED.
MAX_IN_FLIGHT_PER_STREAM = 4096
# Bytes of replies one stream may hold that its client has not taken yet. Past this the session
# stops reading requests (so gRPC's flow control slows the client down) until the replies go
# out: a client that sends GETs and never reads cannot make the node buffer without bound.
MAX_BUFFERED_REPLY_BYTES = 8 * 1024 * 1024
# The same bound across every stream of a node: without it, a thousand streams that stay under
# their own bound can still hold gigabytes. Eight streams' worth, so that a few busy clients
# never notice it; past it every session of the node pauses until replies drain (the stalled
# streams are cut off after WRITE_STALL_TIMEOUT, which gives their bytes back).
MAX_NODE_BUFFERED_REPLY_BYTES = 64 * 1024 * 1024
# How long a reply batch may wait for the client to take it before the stream is cut off with
# RESOURCE_EXHAUSTED: a client that stopped reading is slowed first (above), then dropped.
WRITE_STALL_TIMEOUT = 10.0
# Bytes of a reply besides its strings (tag, code, flags, field headers), for the estimate.
REPLY_OVERHEAD = 32
DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 60.0
# How often waiting requests are checked against their deadlines.
SWEEP_INTERVAL = 0.1

_INVALID_ARGUMENT: int = grpc.StatusCode.INVALID_ARGUMENT.value[0]
_DEADLINE_EXCEEDED: int = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
_RESOURCE_EXHAUSTED: int = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


class ClientTooSlowError(Exception):
    """The client left a reply batch unread for WRITE_STALL_TIMEOUT seconds."""


class PipelineRequestError(ValueError):
    """A malformed request; its message goes back to the client with INVALID_ARGUMENT."""


class PipelineBackend(Protocol):
    def start_get(self, request: pb.GetRequest) -> object | asyncio.Future[object]:
        """An outcome now, or a future of one. Raises PipelineRequestError."""

    def start_set(self, request: pb.SetRequest) -> object | asyncio.Future[object]:
        """An outcome now, or a future of one. Raises PipelineRequestError."""

    def start_delete(self, request: pb.DeleteRequest) -> object | asyncio.Future[object]:
        """An outcome now, or a future of one. Raises PipelineRequestError."""

    def fill_reply(self, reply: pb.PipelineReply, outcome: object) -> None:
        """Set the reply's code and fields from an outcome the start_* methods produced."""

    def timeout_details(self, request_kind: str) -> str:
        """What DEADLINE_EXCEEDED says for a "get", "set" or "delete" not answered in time."""


class ReplyBudget:
    """Bytes of replies held for clients that have not taken them yet, against a limit.

    Every session has a budget of its own (MAX_BUFFERED_REPLY_BYTES) whose `parent` is the
    node's (MAX_NODE_BUFFERED_REPLY_BYTES), shared by all sessions of one server: what a session
    holds counts against both, and it reads no request while either is full. Invariant: a
    budget's `used` is the sum of what was taken and not yet given back, its children's included.
    """

    def __init__(self, limit: int, parent: ReplyBudget | None = None) -> None:
        self.limit = limit
        self.parent = parent
        self.used = 0
        self._room = asyncio.Event()
        self._room.set()

    @classmethod
    def for_node(cls) -> ReplyBudget:
        """A server's budget, to share among all its sessions."""
        return cls(MAX_NODE_BUFFERED_REPLY_BYTES)

    @property
    def full(self) -> bool:
        """Whether this budget or one it draws on is at its limit."""
        return self.used >= self.limit or (self.parent is not None and self.parent.full)

    def take(self, size: int) -> None:
        budget: ReplyBudget | None = self
        while budget is not None:
            budget.used += size
            if budget.used >= budget.limit:
                budget._room.clear()
            budget = budget.parent

    def give_back(self, size: int) -> None:
        budget: ReplyBudget | None = self
        while budget is not None:
            budget.used -= size
            if budget.used < budget.limit:
                budget._room.set()
            budget = budget.parent

    async def room(self) -> None:
        """Returns once neither this budget nor any it draws on is full."""
        while self.full:
            budget: ReplyBudget = self
            while budget.used < budget.limit:
                assert budget.parent is not None  # some budget up the chain is full
                budget = budget.parent
            await budget._room.wait()


class PipelineSession:
    """One client stream. `serve` reads requests in a task of its own and yields reply batches.

    `node_budget` is the server's ReplyBudget, shared by every session it runs."""

    def __init__(self, backend: PipelineBackend, node_budget: ReplyBudget) -> None:
        self._backend = backend
        self._loop = asyncio.get_running_loop()
        self._outbox: list[pb.PipelineReply] = []
        # The estimated size of the replies in _outbox.
        self._outbox_bytes = 0
        self._ready = asyncio.Event()
        # tag -> (deadline, "get"/"set"/"delete", future)
        self._waiting: dict[int, tuple[float, str, asyncio.Future[object]]] = {}
        self._reading = True
        # The outbox and the batch gRPC is writing: a batch stuck in a write to a client that
        # does not read is held in memory as much as one still waiting in the outbox.
        self._budget = ReplyBudget(MAX_BUFFERED_REPLY_BYTES, parent=node_budget)
        self._paused = False
        # Why the request stream broke (a batch that could not be decoded), once it has.
        self.error: str | None = None

    async def serve(
        self, requests: AsyncIterator[pb.PipelineRequests]
    ) -> AsyncGenerator[pb.PipelineReplies, None]:
        """Yields reply batches until the client half-closes and every request was answered.
        When the stream broke instead, requests already started are still answered and then
        `error` says why: the caller must end the call with that error, never with OK."""
        reader = asyncio.create_task(self._read(requests))
        sweeper = asyncio.create_task(self._sweep())
        try:
            while True:
                if self._outbox:
                    replies, self._outbox = self._outbox, []
                    size, self._outbox_bytes = self._outbox_bytes, 0
                    yield pb.PipelineReplies(replies=replies)
                    # The caller asks for the next batch only once gRPC has taken this one.
                    self._budget.give_back(size)
                    continue
                if not self._reading and not self._waiting:
                    break
                self._ready.clear()
                await self._ready.wait()
        finally:
            reader.cancel()
            sweeper.cancel()
            for _, _, future in self._waiting.values():
                future.cancel()
            self._waiting.clear()
            # Whatever was never written (the stream was cut off or went away) goes back to the
            # node's budget, or the other streams would stay paused for good.
            self._budget.give_back(self._budget.used)

    async def _read(self, requests: AsyncIterator[pb.PipelineRequests]) -> None:
        try:
            async for batch in requests:
                for request in batch.requests:
                    # Before each request, not each batch: one batch of GETs of large values
                    # could otherwise add far more than the bound at once.
                    if self._budget.full:
                        self._paused = True
                        await self._budget.room()
                        self._paused = False
                    self._start(request)
        except DecodeError as error:
            # gRPC decodes each batch as the iterator reaches it: a batch that is not a valid
            # PipelineRequests (say, a string that is not UTF-8) surfaces here.
            self.error = f"a request batch could not be decoded: {error}"
        finally:
            self._reading = False
            self._ready.set()

    def _start(self, request: pb.PipelineRequest) -> None:
        tag = request.tag
        kind = request.WhichOneof("op")
        if tag in self._waiting:
            self._post_error(tag, _INVALID_ARGUMENT, f"tag {tag} is already in flight")
            return
        if len(self._waiting) >= MAX_IN_FLIGHT_PER_STREAM:
            self._post_error(
                tag,
                _RESOURCE_EXHAUSTED,
                f"more than {MAX_IN_FLIGHT_PER_STREAM} requests in flight on one stream",
            )
            return
        try:
            if kind == "get":
                outcome = self._backend.start_get(request.get)
            elif kind == "set":
                outcome = self._backend.start_set(request.set)
            elif kind == "delete":
                outcome = self._backend.start_delete(request.delete)
            else:
                raise PipelineRequestError("a request needs one of get, set or delete")
        except PipelineRequestError as error:
            self._post_error(tag, _INVALID_ARGUMENT, str(error))
            return
        if isinstance(outcome, asyncio.Future):
            timeout = request.timeout_ms / 1000 if request.timeout_ms else DEFAULT_TIMEOUT
            deadline = self._loop.time() + min(timeout, MAX_TIMEOUT)
            self._waiting[tag] = (deadline, kind, outcome)
            outcome.add_done_callback(partial(self._finished, tag))
            return
        reply = pb.PipelineReply(tag=tag)
        self._backend.fill_reply(reply, outcome)
        self._post(reply)

    def _finished(self, tag: int, future: asyncio.Future[object]) -> None:
        if future.cancelled():
            return  # timed out (already answered) or the stream ended
        entry = self._waiting.get(tag)
        if entry is None or entry[2] is not future:
            # Done before the sweeper or the end of the stream could cancel it: already
            # answered, or nobody to answer (a reply now would hold budget nobody gives back).
            return
        del self._waiting[tag]
        reply = pb.PipelineReply(tag=tag)
        self._backend.fill_reply(reply, future.result())
        self._post(reply)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            if not self._waiting:
                continue
            now = self._loop.time()
            expired = [tag for tag, (deadline, _, _) in self._waiting.items() if deadline <= now]
            for tag in expired:
                _, kind, future = self._waiting.pop(tag)
                future.cancel()
                self._post_error(tag, _DEADLINE_EXCEEDED, self._backend.timeout_details(kind))

    def _post_error(self, tag: int, code: int, details: str) -> None:
        self._post(pb.PipelineReply(tag=tag, code=code, details=details))

    def _post(self, reply: pb.PipelineReply) -> None:
        self._outbox.append(reply)
        # An estimate, not reply.ByteSize(): that costs a whole serialisation, which gRPC does
        # again when it sends the reply. The bound is coarse; the value dominates a GET's size.
        size = len(reply.value) + len(reply.details) + len(reply.leader_address) + REPLY_OVERHEAD
        self._outbox_bytes += size
        self._budget.take(size)
        self._ready.set()

    @property
    def reading_paused(self) -> bool:
        """Whether the session waits for replies to drain (its own or the node's) before reading
        more."""
        return self._paused

    @property
    def buffered_bytes(self) -> int:
        """Bytes of replies posted and not yet taken by gRPC (the batch being written included)."""
        return self._budget.used


async def pump(
    session: PipelineSession,
    requests: AsyncIterator[pb.PipelineRequests],
    write: Callable[[pb.PipelineReplies], Awaitable[None]],
) -> None:
    """Serve one stream, writing every reply batch with `write` (the call's `context.write`).
    Raises ClientTooSlowError when a batch is not taken within WRITE_STALL_TIMEOUT."""
    async with contextlib.aclosing(session.serve(requests)) as replies:
        async for batch in replies:
            try:
                await asyncio.wait_for(write(batch), WRITE_STALL_TIMEOUT)
            except TimeoutError:
                raise ClientTooSlowError(
                    f"the client left its replies unread for {WRITE_STALL_TIMEOUT:g} s"
                ) from None


def status_code_number(code: grpc.StatusCode) -> int:
    """The number gRPC gives `code` on the wire (PipelineReply.code)."""
    number: int = code.value[0]
    return number
