"""gRPC services: the peer listener's PeerStream, and on the client listener the assignment's
ServeClient and the typed KeyValue API.

Every client input is validated here; nothing a client sends can reach the core malformed or
crash the node.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import NoReturn

import grpc

from raftkv.core.events import ProtocolViolation
from raftkv.core.messages import (
    DeleteCommand,
    ReadRange,
    ReadValue,
    Refused,
    SetCommand,
    WriteDone,
)
from raftkv.core.state_machine import SnapshotImage
from raftkv.limits import (
    DEFAULT_LIST_LIMIT,
    MAX_CLIENT_ID_BYTES,
    MAX_KEY_BYTES,
    MAX_LIST_LIMIT,
    MAX_VALUE_BYTES,
)
from raftkv.rpc import raftkv_pb2 as pb
from raftkv.rpc import raftkv_pb2_grpc
from raftkv.server import wire
from raftkv.server.dump import DumpRateLimiter
from raftkv.server.peers import PeerRefusal, PeerStreamSession
from raftkv.server.pipeline import (
    WRITE_STALL_TIMEOUT,
    ClientTooSlowError,
    PipelineRequestError,
    PipelineSession,
    ReplyBudget,
    pump,
    status_code_number,
)
from raftkv.server.replica import Replica
from raftkv.server.replies import (
    SERVE_CLIENT_TIMEOUT_DATA,
    outcome_reply,
    timeout_reply,
    transfer_reply,
)
from raftkv.server.snapshot_file import SnapshotHeader, encode_snapshot
from raftkv.server.transfer import TransferRefused
from raftkv.tls import peer_node_id

DEFAULT_CLIENT_TIMEOUT = 5.0
# A TransferLeader waits at most this many (longest) election timeouts for another leader: the
# core gives up after one and steps down, and an election follows.
TRANSFER_WAIT_ELECTION_TIMEOUTS = 3


class RequestError(PipelineRequestError):
    """A malformed client request; the message is shown to the client."""


def validate_key(key: str) -> None:
    if not key:
        raise RequestError("the key must not be empty")
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise RequestError(f"the key is {size} bytes; the limit is {MAX_KEY_BYTES}")


def validate_value(value: str) -> None:
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_VALUE_BYTES:
        raise RequestError(f"the value is {size} bytes; the limit is {MAX_VALUE_BYTES}")


def list_query(request: pb.ListRequest) -> tuple[str, str, int]:
    """(prefix, start_after, limit) of a LIST, limit 0 meaning the default. Raises
    RequestError."""
    for name, text in (("prefix", request.prefix), ("start_after", request.start_after)):
        # Never a key itself, but no longer than one: a longer one could match nothing.
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_KEY_BYTES:
            raise RequestError(f"the {name} is {size} bytes; the limit is {MAX_KEY_BYTES}")
    limit = request.limit or DEFAULT_LIST_LIMIT
    if limit > MAX_LIST_LIMIT:
        raise RequestError(f"the limit is {limit}; at most {MAX_LIST_LIMIT} items per page")
    return request.prefix, request.start_after, limit


def validate_session(client_id: str, seq: int, resume: bool = False) -> None:
    """A write's dedup fields (SET and DELETE alike)."""
    if resume and not client_id:
        raise RequestError("resume needs a client_id (it says that client's session exists)")
    if len(client_id.encode()) > MAX_CLIENT_ID_BYTES:
        raise RequestError(f"client_id is longer than {MAX_CLIENT_ID_BYTES} bytes")
    if client_id and seq == 0:
        raise RequestError("a request with a client_id needs a seq ≥ 1")


def command_from_set_request(request: pb.SetRequest) -> SetCommand:
    validate_key(request.key)
    validate_value(request.value)
    validate_session(request.client_id, request.seq, request.resume)
    return SetCommand(request.key, request.value, request.client_id, request.seq, request.resume)


def command_from_delete_request(request: pb.DeleteRequest) -> DeleteCommand:
    validate_key(request.key)
    validate_session(request.client_id, request.seq, request.resume)
    return DeleteCommand(request.key, request.client_id, request.seq, request.resume)


def parse_assignment_request(request: str) -> tuple[str, str, str | None]:
    """`GET k` → ("GET", k, None); `SET k v…` → ("SET", k, "v…"). Raises RequestError."""
    verb, _, rest = request.partition(" ")
    verb = verb.upper()
    if verb == "GET":
        if not rest:
            raise RequestError("usage: GET <key>")
        validate_key(rest)
        return "GET", rest, None
    if verb == "SET":
        key, space, value = rest.partition(" ")
        if not key or not space:
            raise RequestError("usage: SET <key> <value>")
        validate_key(key)
        validate_value(value)
        return "SET", key, value
    raise RequestError(f"unknown command {verb!r}: use GET <key> or SET <key> <value>")


def _client_timeout(context: grpc.aio.ServicerContext) -> float:
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return DEFAULT_CLIENT_TIMEOUT
    return max(0.0, min(remaining - 0.01, 60.0))


PEER_RPC_ON_CLIENT_ADDRESS = (
    "peer RPCs are served only on the peer address, to nodes that present a node certificate"
)


async def _abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str
) -> NoReturn:
    """`context.abort`, typed as what it does (grpc.aio's stubs leave it Any): it always raises."""
    await context.abort(code, details)
    raise RuntimeError("grpc.aio's context.abort returned")


def _caller(context: grpc.aio.ServicerContext) -> str:
    """Where a call came from, for the dump: its address and any certificate names."""
    names = [n.decode("ascii", "replace") for n in context.peer_identities() or ()]
    address: str = context.peer()
    return address + (f" ({', '.join(names)})" if names else "")


class RefusalLog:
    """Writes the dump line for a refused peer call or message (docs/design.md §8), at most a
    burst per sender or caller address and interval (DumpRateLimiter): refusals are remote
    input, and a flood must not rotate the node's history out of the dump. One per node, shared
    by both listeners' services."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.limiter = DumpRateLimiter(replica.dump.write_lines)

    def message(self, sender: int, error: wire.WireError) -> None:
        """A peer message the shell refused: the same sentence as when the core drops one, so
        that an attempt is on record wherever it was stopped."""
        violation = ProtocolViolation(self.replica.node_id, sender, str(error))
        self.limiter.write(f"sender {sender}", str(violation))

    def call(self, context: grpc.aio.ServicerContext, listener: str, reason: str) -> None:
        address: str = context.peer()
        self.limiter.write(
            f"{listener} {address.rpartition(':')[0]}",
            f"Node {self.replica.node_id} refused a call from {_caller(context)} on its "
            f"{listener} address: {reason}.",
        )


class PeerService(raftkv_pb2_grpc.RaftServicer):
    """The peer listener: Raft.PeerStream for nodes of this cluster, authenticated by mutual TLS
    (`secure`), or, with --insecure-peers only, by nothing but the claimed sender id."""

    def __init__(
        self, replica: Replica, *, secure: bool, refusals: RefusalLog | None = None
    ) -> None:
        self.replica = replica
        self.secure = secure
        self.peer_ids = set(replica.peers)
        self._refusals = refusals or RefusalLog(replica)

    def _sender(self, context: grpc.aio.ServicerContext) -> tuple[int | None, str | None]:
        """(the caller's node id from its certificate, None) or (None, why it is refused)."""
        if not self.secure:
            return None, None
        node_id = peer_node_id(context.auth_context())
        if node_id is None:
            return None, "its certificate names no node (a client certificate?)"
        if node_id not in self.peer_ids:
            return None, f"its certificate names node {node_id}, which is not a peer of this node"
        return node_id, None

    async def PeerStream(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[pb.RaftMessages],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.RaftMessages]:
        sender, problem = self._sender(context)
        if problem is not None:
            self._refusals.call(context, "peer", problem)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, problem)
        session = PeerStreamSession(
            self.replica.begin_exchange,
            self.peer_ids,
            cluster_id=self.replica.options.cluster.cluster_id,
            sender=sender,
            receive_chunk=self.replica.receiver.receive,
        )
        async for replies in session.serve(request_iterator):
            yield replies
        error = session.error
        if error is not None:
            if session.error_sender is not None:
                self._refusals.message(session.error_sender, error)
            else:
                self._refusals.call(context, "peer", str(error))
            code = (
                error.code if isinstance(error, PeerRefusal) else grpc.StatusCode.INVALID_ARGUMENT
            )
            await context.abort(code, str(error))

    async def AppendEntries(  # noqa: N802 - gRPC method name
        self, request: pb.AppendEntriesArgs, context: grpc.aio.ServicerContext
    ) -> pb.AppendEntriesReply:
        await self._unary(context, "AppendEntries")

    async def RequestVote(  # noqa: N802 - gRPC method name
        self, request: pb.RequestVoteArgs, context: grpc.aio.ServicerContext
    ) -> pb.RequestVoteReply:
        await self._unary(context, "RequestVote")

    async def _unary(self, context: grpc.aio.ServicerContext, method: str) -> NoReturn:
        _, problem = self._sender(context)
        if problem is not None:
            self._refusals.call(context, "peer", problem)
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, problem)
        await _abort(context, grpc.StatusCode.UNIMPLEMENTED, f"nodes send {method} over PeerStream")


class RaftService(raftkv_pb2_grpc.RaftServicer):
    """The client listener's Raft service: the assignment's ServeClient. The peer RPCs are
    refused here (and the attempt logged): peers have their own, authenticated, listener."""

    def __init__(self, replica: Replica, refusals: RefusalLog | None = None) -> None:
        self.replica = replica
        self._refusals = refusals or RefusalLog(replica)

    async def _refuse_peer_rpc(self, context: grpc.aio.ServicerContext) -> NoReturn:
        self._refusals.call(context, "client", PEER_RPC_ON_CLIENT_ADDRESS)
        await _abort(context, grpc.StatusCode.PERMISSION_DENIED, PEER_RPC_ON_CLIENT_ADDRESS)

    async def AppendEntries(  # noqa: N802 - gRPC method name
        self, request: pb.AppendEntriesArgs, context: grpc.aio.ServicerContext
    ) -> pb.AppendEntriesReply:
        await self._refuse_peer_rpc(context)

    async def RequestVote(  # noqa: N802 - gRPC method name
        self, request: pb.RequestVoteArgs, context: grpc.aio.ServicerContext
    ) -> pb.RequestVoteReply:
        await self._refuse_peer_rpc(context)

    async def PeerStream(  # type: ignore[override]  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[pb.RaftMessages],
        context: grpc.aio.ServicerContext,
    ) -> None:
        await self._refuse_peer_rpc(context)

    async def ServeClient(  # noqa: N802 - the assignment's method name
        self, request: pb.ServeClientArgs, context: grpc.aio.ServicerContext
    ) -> pb.ServeClientReply:
        replica = self.replica
        try:
            verb, key, value = parse_assignment_request(request.Request)
        except RequestError as error:
            return pb.ServeClientReply(
                Data=str(error), LeaderID=_hint_text(replica.status().leader_id), Success=False
            )
        timeout = _client_timeout(context)
        try:
            if verb == "GET":
                result: object = await replica.read(key, timeout)
            else:
                assert value is not None
                result = await replica.propose(SetCommand(key, value), timeout)
        except TimeoutError:
            return pb.ServeClientReply(
                Data=SERVE_CLIENT_TIMEOUT_DATA,
                LeaderID=_hint_text(replica.status().leader_id),
                Success=False,
            )
        assert isinstance(result, ReadValue | WriteDone | Refused)
        reply = outcome_reply(result, replica.leader_address)
        if not reply.ok:
            return pb.ServeClientReply(
                Data=reply.details, LeaderID=_hint_text(reply.leader_hint), Success=False
            )
        value = result.value if isinstance(result, ReadValue) else None
        return pb.ServeClientReply(Data=value or "", LeaderID=str(replica.node_id), Success=True)


class ReplicaPipelineBackend:
    """Serves `KeyValue.Pipeline` requests from the replica (see raftkv/server/pipeline.py)."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def start_get(self, request: pb.GetRequest) -> object | asyncio.Future[object]:
        validate_key(request.key)
        return self.replica.begin_read(request.key)

    def start_set(self, request: pb.SetRequest) -> object | asyncio.Future[object]:
        return self.replica.begin_proposal(command_from_set_request(request))

    def start_delete(self, request: pb.DeleteRequest) -> object | asyncio.Future[object]:
        return self.replica.begin_proposal(command_from_delete_request(request))

    def fill_reply(self, reply: pb.PipelineReply, outcome: object) -> None:
        if isinstance(outcome, ReadValue):
            if outcome.value is not None:
                reply.found = True
                reply.value = outcome.value
        elif isinstance(outcome, WriteDone):
            reply.index = outcome.index
        else:
            assert isinstance(outcome, Refused)
            refusal = outcome_reply(outcome, self.replica.leader_address)
            reply.code = status_code_number(refusal.code)
            reply.details = refusal.details
            if refusal.leader_hint is not None:
                reply.leader_id = refusal.leader_hint
                reply.leader_address = refusal.leader_address

    def timeout_details(self, request_kind: str) -> str:
        return timeout_reply(request_kind).details


class KeyValueService(raftkv_pb2_grpc.KeyValueServicer):
    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self._pipeline_backend = ReplicaPipelineBackend(replica)
        # Shared by every Pipeline stream of this node (raftkv/server/pipeline.py).
        self._reply_budget = ReplyBudget.for_node()

    async def Get(  # noqa: N802 - gRPC method name
        self, request: pb.GetRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetResponse:
        try:
            validate_key(request.key)
        except RequestError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        try:
            result = await self.replica.read(request.key, _client_timeout(context))
        except TimeoutError:
            await self._time_out(context, "get")
        if isinstance(result, Refused):
            await self._refuse(context, result)
        assert isinstance(result, ReadValue)
        return pb.GetResponse(found=result.value is not None, value=result.value or "")

    async def List(  # noqa: N802 - gRPC method name
        self, request: pb.ListRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListResponse:
        # Get's path exactly: the same read rules in the core, refusals and metadata here.
        try:
            prefix, start_after, limit = list_query(request)
        except RequestError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        try:
            result = await self.replica.read_range(
                prefix, start_after, limit, _client_timeout(context)
            )
        except TimeoutError:
            await self._time_out(context, "list")
        if isinstance(result, Refused):
            await self._refuse(context, result)
        assert isinstance(result, ReadRange)
        items = [pb.KeyValuePair(key=key, value=value) for key, value in result.items]
        return pb.ListResponse(items=items, more=result.more)

    # grpc.aio's writer API, like Pipeline: a chunk the client leaves unread for
    # WRITE_STALL_TIMEOUT ends the call, so a stalled backup does not pin its image (the old
    # version of the map, which the state machine has moved on from) for ever.
    async def SnapshotSave(  # type: ignore[override]  # noqa: N802 - gRPC method name
        self, request: pb.SnapshotSaveRequest, context: grpc.aio.ServicerContext
    ) -> None:
        # Get's path for the read (the same rules, refusals and metadata), then the image's
        # bytes: snapshot.txt's encoder, run in a worker thread one chunk at a time, so the
        # node holds one chunk per backup besides what gRPC's flow control lets through.
        try:
            image = await self.replica.read_image(_client_timeout(context))
        except TimeoutError:
            await self._time_out(context, "snapshot")
        if isinstance(image, Refused):
            await self._refuse(context, image)
        assert isinstance(image, SnapshotImage)
        if image.index < 1:
            # Only under the read_before_noop control: nothing is committed, nothing to save.
            await context.abort(grpc.StatusCode.UNAVAILABLE, "nothing is committed yet")
        header = SnapshotHeader(
            image.index, image.term, self.replica.options.cluster.cluster_id, image.cluster_time
        )
        chunks = encode_snapshot(header, image.data, image.sessions, membership=image.membership)
        size = 0
        while (data := await asyncio.to_thread(_next_chunk, chunks)) is not None:
            try:
                await asyncio.wait_for(
                    context.write(pb.SnapshotChunk(data=data)), WRITE_STALL_TIMEOUT
                )
            except TimeoutError:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the client left the backup unread for {WRITE_STALL_TIMEOUT:g} s",
                )
            size += len(data)
        self.replica.dump.write(
            f"Node {self.replica.node_id} served a backup at index {image.index} (term "
            f"{image.term}): {len(image.data)} keys, {len(image.sessions)} sessions, {size} bytes."
        )

    async def Set(  # noqa: N802 - gRPC method name
        self, request: pb.SetRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetResponse:
        try:
            command = command_from_set_request(request)
        except RequestError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        index = await self._write(command, context, "set")
        return pb.SetResponse(index=index)

    async def Delete(  # noqa: N802 - gRPC method name
        self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteResponse:
        try:
            command = command_from_delete_request(request)
        except RequestError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        index = await self._write(command, context, "delete")
        return pb.DeleteResponse(index=index)

    async def _write(
        self,
        command: SetCommand | DeleteCommand,
        context: grpc.aio.ServicerContext,
        request_kind: str,
    ) -> int:
        """Propose a client write and wait for it to apply: its log index, or the call ends
        with the refusal or the timeout (one path for Set and Delete)."""
        try:
            result = await self.replica.propose(command, _client_timeout(context))
        except TimeoutError:
            await self._time_out(context, request_kind)
        if isinstance(result, Refused):
            await self._refuse(context, result)
        assert isinstance(result, WriteDone)
        return result.index

    async def Status(  # noqa: N802 - gRPC method name
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatusResponse:
        status = self.replica.status()
        response = pb.StatusResponse(
            node_id=status.node_id,
            role=status.role.value,
            term=status.term,
            log_length=status.log_length,
            commit_length=status.commit_index,
            applied_length=status.last_applied,
            lease_remaining=status.lease_remaining,
            waiting_for_old_lease=status.waiting_for_old_lease,
            read_mode=self.replica.options.config.read_mode.value,
            address=self.replica.address,
            snapshot_index=status.snapshot_index,
            first_index=status.first_index,
        )
        if status.leader_id is not None:
            response.leader_id = status.leader_id
        return response

    async def TransferLeader(  # noqa: N802 - gRPC method name
        self, request: pb.TransferLeaderRequest, context: grpc.aio.ServicerContext
    ) -> pb.TransferLeaderReply:
        target = request.to if request.HasField("to") and request.to >= 0 else None
        config = self.replica.options.config
        timeout = min(
            _client_timeout(context), TRANSFER_WAIT_ELECTION_TIMEOUTS * config.election_timeout_max
        )
        outcome = await self.replica.transfer_leadership(target, timeout)
        if isinstance(outcome, TransferRefused):
            reply = transfer_reply(outcome, self.replica.leader_address)
            context.set_trailing_metadata(reply.trailing_metadata())
            await _abort(context, reply.code, reply.details)
        detail = (
            f"node {outcome.leader_id} is already the leader"
            if outcome.leader_id == outcome.previous_leader_id
            else f"node {outcome.previous_leader_id} handed leadership to node "
            f"{outcome.leader_id} in {outcome.seconds:.3f} s"
        )
        return pb.TransferLeaderReply(
            leader_id=outcome.leader_id,
            previous_leader_id=outcome.previous_leader_id,
            term=outcome.term,
            detail=detail,
        )

    # grpc.aio's writer API (context.write), not an async generator: a write that the client does
    # not take within the stall timeout can then be abandoned. The stub types only the generator.
    async def Pipeline(  # type: ignore[override]  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[pb.PipelineRequests],
        context: grpc.aio.ServicerContext,
    ) -> None:
        session = PipelineSession(self._pipeline_backend, self._reply_budget)
        try:
            await pump(session, request_iterator, context.write)
        except ClientTooSlowError as error:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        if session.error is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, session.error)

    async def _refuse(self, context: grpc.aio.ServicerContext, refused: Refused) -> None:
        reply = outcome_reply(refused, self.replica.leader_address)
        context.set_trailing_metadata(reply.trailing_metadata())
        await context.abort(reply.code, reply.details)

    async def _time_out(self, context: grpc.aio.ServicerContext, request_kind: str) -> None:
        reply = timeout_reply(request_kind)
        await context.abort(reply.code, reply.details)


def _next_chunk(chunks: Iterator[bytes]) -> bytes | None:
    # None at the end: StopIteration cannot cross asyncio.to_thread's future.
    return next(chunks, None)


def _hint_text(leader: int | None) -> str:
    return "None" if leader is None else str(leader)
