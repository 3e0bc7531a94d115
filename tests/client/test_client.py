"""The client library and the `raftkv` CLI against scripted fake nodes.

Each fake node is a real grpc.aio server on 127.0.0.1 implementing `KeyValue` (Pipeline through
the real session engine, and Status), driven by a behaviour per request (serve, redirect,
refuse, hang, reject). The servers run on a background
thread's event loop so that blocking callers (the CLI) can use them as well as asyncio tests.
"""

from __future__ import annotations

import asyncio
import io
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
import pytest

from raftkv.client import library
from raftkv.client.cli import main
from raftkv.client.errors import (
    InvalidRequestError,
    NoLeaderError,
    SessionExpiredError,
    StaleSequenceError,
    TransferError,
    UnknownOutcomeError,
)
from raftkv.client.library import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    ListPage,
    RaftKVClient,
    SyncClient,
)
from raftkv.client.status import format_status_table
from raftkv.cluster import ClusterDescription
from raftkv.core.messages import Refusal, Refused
from raftkv.core.state_machine import SessionRules
from raftkv.rpc import raftkv_pb2, raftkv_pb2_grpc
from raftkv.rpc.metadata import (
    REFUSAL_METADATA,
    RPC_LIMIT_DETAILS,
    SESSION_EXPIRED_DETAILS,
    SESSION_EXPIRED_REFUSAL,
)
from raftkv.server import pipeline
from raftkv.server.pipeline import (
    PipelineRequestError,
    PipelineSession,
    ReplyBudget,
    status_code_number,
)
from raftkv.server.replies import outcome_reply, transfer_reply
from raftkv.server.transfer import TransferRefusal, TransferRefused
from raftkv.tls import LoadedTls, TlsFiles
from raftkv_tools.certs import issue as issue_certificates
from raftkv_tools.certs import local_nodes

pytestmark = pytest.mark.timeout(60)

# -- scripted behaviours ------------------------------------------------------------------------


@dataclass(frozen=True)
class Serve:
    """Act as a leader: answer from the cluster's shared store."""


@dataclass(frozen=True)
class NotLeader:
    """FAILED_PRECONDITION with whatever leader hint is given."""

    leader_id: int | None = None
    leader_address: str | None = None


@dataclass(frozen=True)
class Unavailable:
    """UNAVAILABLE; with a leader_id it carries the metadata a real node would add."""

    leader_id: int | None = None


@dataclass(frozen=True)
class Hang:
    """Never answer: only the client's deadline ends the call."""


@dataclass(frozen=True)
class Invalid:
    """INVALID_ARGUMENT."""


@dataclass(frozen=True)
class Stale:
    """A SET refused for a stale seq, exactly as a real node's Pipeline reply says it."""


@dataclass(frozen=True)
class Expired:
    """A write refused because its session expired, exactly as a real node's Pipeline reply
    says it."""


Behaviour = Serve | NotLeader | Unavailable | Hang | Invalid | Stale | Expired
ClientRequest = (
    raftkv_pb2.GetRequest
    | raftkv_pb2.SetRequest
    | raftkv_pb2.DeleteRequest
    | raftkv_pb2.ListRequest
)
SERVE, HANG, INVALID, STALE, EXPIRED = Serve(), Hang(), Invalid(), Stale(), Expired()


@dataclass
class SharedState:
    """What the fake cluster as a whole has applied, with the server's dedup rule."""

    store: dict[str, str] = field(default_factory=dict)
    index_of_write: dict[tuple[str, int], int] = field(default_factory=dict)
    log_length: int = 0


class FakeNode(raftkv_pb2_grpc.KeyValueServicer):
    # The handler names (Pipeline, Status) are fixed by the generated servicer.

    def __init__(self, node_id: int, shared: SharedState) -> None:
        self.node_id = node_id
        self.shared = shared
        self.usual: Behaviour = NotLeader()
        # Consumed one per GET/SET/DELETE before `usual` applies again.
        self.upcoming: list[Behaviour] = []
        self.received: list[ClientRequest] = []
        self.reply_budget = ReplyBudget.for_node()
        # TransferLeader: the requests received, a scripted refusal, and how a leader hands over.
        self.transfers: list[raftkv_pb2.TransferLeaderRequest] = []
        self.transfer_refusal: TransferRefused | None = None
        self.hand_over: Callable[[int], None] = lambda target: None

    @property
    def received_sets(self) -> list[raftkv_pb2.SetRequest]:
        return [r for r in self.received if isinstance(r, raftkv_pb2.SetRequest)]

    @property
    def received_writes(self) -> list[raftkv_pb2.SetRequest | raftkv_pb2.DeleteRequest]:
        return [
            r
            for r in self.received
            if isinstance(r, raftkv_pb2.SetRequest | raftkv_pb2.DeleteRequest)
        ]

    async def List(  # noqa: N802
        self, request: raftkv_pb2.ListRequest, context: Any
    ) -> raftkv_pb2.ListResponse:
        # A unary RPC: refusals are status codes with the leader hint in trailing metadata,
        # from the server's own mapping.
        match self.next_behaviour(request):
            case Serve():
                keys = sorted(
                    key
                    for key in self.shared.store
                    if key.startswith(request.prefix) and key > request.start_after
                )
                limit = request.limit or 100
                page = [raftkv_pb2.KeyValuePair(key=k, value=self.shared.store[k]) for k in keys]
                return raftkv_pb2.ListResponse(items=page[:limit], more=len(keys) > limit)
            case NotLeader(leader_id):
                refused = outcome_reply(Refused(Refusal.NOT_LEADER, leader_id), lambda _: None)
            case Unavailable(leader_id):
                refused = outcome_reply(Refused(Refusal.NO_LEASE, leader_id), lambda _: None)
            case Invalid():
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the limit is 1001")
            case _:
                await asyncio.get_running_loop().create_future()  # Hang
        context.set_trailing_metadata(refused.trailing_metadata())
        await context.abort(refused.code, refused.details)
        raise AssertionError("abort returned")

    async def Pipeline(  # noqa: N802
        self, request_iterator: AsyncIterator[raftkv_pb2.PipelineRequests], context: Any
    ) -> AsyncIterator[raftkv_pb2.PipelineReplies]:
        # The real session engine, with this node's scripted behaviour as its backend.
        async for replies in PipelineSession(_ScriptedBackend(self), self.reply_budget).serve(
            request_iterator
        ):
            yield replies

    async def Status(  # noqa: N802
        self, request: raftkv_pb2.StatusRequest, context: Any
    ) -> raftkv_pb2.StatusResponse:
        leading = isinstance(self.usual, Serve)
        reply = raftkv_pb2.StatusResponse(
            node_id=self.node_id,
            role="leader" if leading else "follower",
            term=3,
            log_length=self.shared.log_length,
            commit_length=self.shared.log_length,
            applied_length=self.shared.log_length,
            lease_remaining=0.28 if leading else 0.0,
            read_mode="lease",
        )
        leader_id = self.node_id if leading else getattr(self.usual, "leader_id", None)
        if leader_id is not None:
            reply.leader_id = leader_id
        return reply

    async def TransferLeader(  # noqa: N802
        self, request: raftkv_pb2.TransferLeaderRequest, context: Any
    ) -> raftkv_pb2.TransferLeaderReply:
        self.transfers.append(request)
        refused = self.transfer_refusal
        if refused is None:
            match self.usual:
                case NotLeader(leader_id):
                    refused = TransferRefused(
                        TransferRefusal.NOT_LEADER, "not the leader", leader_id
                    )
                case Unavailable(leader_id):
                    refused = TransferRefused(TransferRefusal.NOT_YET, "old lease", leader_id)
                case Hang():
                    await asyncio.get_running_loop().create_future()
        if refused is not None:
            # The server's own mapping, so that a change there shows here.
            reply = transfer_reply(refused, lambda node_id: None)
            context.set_trailing_metadata(reply.trailing_metadata())
            await context.abort(reply.code, reply.details)
        target = request.to if request.HasField("to") else (self.node_id + 1) % 3
        self.hand_over(target)
        return raftkv_pb2.TransferLeaderReply(
            leader_id=target, previous_leader_id=self.node_id, term=4
        )

    def next_behaviour(self, request: ClientRequest) -> Behaviour:
        self.received.append(request)
        return self.upcoming.pop(0) if self.upcoming else self.usual


@dataclass(frozen=True)
class _Refusal:
    code: grpc.StatusCode
    details: str
    leader_id: int | None
    leader_address: str | None


class _ScriptedBackend:
    """A `PipelineBackend` that answers as the fake node's next behaviour says."""

    def __init__(self, node: FakeNode) -> None:
        self.node = node

    def start_get(self, request: raftkv_pb2.GetRequest) -> object:
        outcome = self._refusal(self.node.next_behaviour(request))
        if outcome is None:
            return ("value", self.node.shared.store.get(request.key))
        return outcome

    def start_set(self, request: raftkv_pb2.SetRequest) -> object:
        outcome = self._refusal(self.node.next_behaviour(request))
        if outcome is not None:
            return outcome
        shared = self.node.shared
        write = (request.client_id, request.seq)
        if write not in shared.index_of_write:
            shared.log_length += 1
            shared.index_of_write[write] = shared.log_length
            shared.store[request.key] = request.value
        return ("index", shared.index_of_write[write])

    def start_delete(self, request: raftkv_pb2.DeleteRequest) -> object:
        outcome = self._refusal(self.node.next_behaviour(request))
        if outcome is not None:
            return outcome
        shared = self.node.shared
        write = (request.client_id, request.seq)
        if write not in shared.index_of_write:
            shared.log_length += 1
            shared.index_of_write[write] = shared.log_length
            shared.store.pop(request.key, None)
        return ("index", shared.index_of_write[write])

    def _refusal(self, behaviour: Behaviour) -> object | None:
        match behaviour:
            case Serve():
                return None
            case NotLeader(leader_id, leader_address):
                return _Refusal(
                    grpc.StatusCode.FAILED_PRECONDITION, "not the leader", leader_id, leader_address
                )
            case Unavailable(leader_id):
                return _Refusal(grpc.StatusCode.UNAVAILABLE, "no lease yet", leader_id, None)
            case Hang():
                return asyncio.get_running_loop().create_future()
            case Invalid():
                raise PipelineRequestError("the key is too long")
            case Stale():
                # The server's own mapping, so that a change there shows here.
                reply = outcome_reply(Refused(Refusal.STALE_SEQUENCE, 0), lambda _: None)
                return _Refusal(reply.code, reply.details, reply.leader_hint, None)
            case Expired():
                reply = outcome_reply(Refused(Refusal.SESSION_EXPIRED, 0), lambda _: None)
                return _Refusal(reply.code, reply.details, reply.leader_hint, None)
        raise AssertionError(behaviour)

    def fill_reply(self, reply: raftkv_pb2.PipelineReply, outcome: object) -> None:
        match outcome:
            case ("value", str() | None as value):
                reply.found = value is not None
                reply.value = value or ""
            case ("index", int(index)):
                reply.index = index
            case _Refusal(code, details, leader_id, leader_address):
                reply.code = status_code_number(code)
                reply.details = details
                if leader_id is not None:
                    reply.leader_id = leader_id
                reply.leader_address = leader_address or ""

    def timeout_details(self, request_kind: str) -> str:
        return f"{request_kind} timed out"


def _hint_metadata(
    leader_id: int | None, leader_address: str | None
) -> tuple[tuple[str, str], ...]:
    hints = []
    if leader_id is not None:
        hints.append(("leader-id", str(leader_id)))
    if leader_address is not None:
        hints.append(("leader-address", leader_address))
    return tuple(hints)


class FakeCluster:
    """`size` fake nodes (ids 0..size-1); the ids in `down` get an address nobody listens on.
    With `tls`, every node serves TLS and demands a client certificate (--client-cert-auth)."""

    def __init__(
        self, size: int = 3, *, down: Iterable[int] = (), tls: LoadedTls | None = None
    ) -> None:
        self._tls = tls
        self.shared = SharedState()
        self.nodes = [FakeNode(node_id, self.shared) for node_id in range(size)]
        self._down = set(down)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[Any] = []
        # Bound but never listening: connecting is refused, and no other test can take the port.
        self._reserved_sockets: list[socket.socket] = []
        self.description = ClusterDescription.local(1)
        for node in self.nodes:
            node.hand_over = self.lead

    def __enter__(self) -> FakeCluster:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.description = ClusterDescription.from_addresses(future.result(timeout=10))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        for reserved in self._reserved_sockets:
            reserved.close()

    def lead(self, leader_id: int) -> None:
        """Make `leader_id` the leader; every other node points to it."""
        for node in self.nodes:
            node.usual = SERVE if node.node_id == leader_id else NotLeader(leader_id)

    def address(self, node_id: int) -> str:
        return self.description.node(node_id).address

    def write_description(self, directory: Path) -> Path:
        path = directory / "cluster.json"
        self.description.save(path)
        return path

    async def _start(self) -> list[str]:
        addresses = []
        for node in self.nodes:
            if node.node_id in self._down:
                reserved = socket.socket()
                reserved.bind(("127.0.0.1", 0))
                self._reserved_sockets.append(reserved)
                addresses.append(f"127.0.0.1:{reserved.getsockname()[1]}")
                continue
            server = grpc.aio.server()
            raftkv_pb2_grpc.add_KeyValueServicer_to_server(node, server)
            if self._tls is None:
                port = server.add_insecure_port("127.0.0.1:0")
            else:
                credentials = self._tls.server_credentials(require_client_auth=True)
                port = server.add_secure_port("127.0.0.1:0", credentials)
            await server.start()
            self._servers.append(server)
            addresses.append(f"127.0.0.1:{port}")
        return addresses

    async def _stop(self) -> None:
        await asyncio.gather(*(server.stop(grace=None) for server in self._servers))


# -- the library --------------------------------------------------------------------------------


def test_get_follows_the_leader_id_hint_and_remembers_the_leader() -> None:
    with FakeCluster() as fake:
        fake.lead(1)
        fake.shared.store["greeting"] = "hello"

        async def scenario() -> None:
            async with RaftKVClient(fake.description, first_node=0) as client:
                assert await client.get("greeting") == "hello"
                assert await client.get("absent") is None

        asyncio.run(scenario())
        # The second GET went straight to the leader.
        assert [len(node.received) for node in fake.nodes] == [1, 2, 0]


def test_follows_a_leader_address_hint() -> None:
    with FakeCluster() as fake:
        fake.lead(2)
        fake.nodes[0].usual = NotLeader(leader_address=fake.address(2))

        async def scenario() -> int:
            async with RaftKVClient(fake.description, first_node=0) as client:
                return await client.set("k", "v")

        assert asyncio.run(scenario()) == 1
        assert [len(node.received) for node in fake.nodes] == [1, 0, 1]
        assert fake.shared.store == {"k": "v"}


def test_a_node_that_is_down_is_skipped() -> None:
    with FakeCluster(down={0}) as fake:
        fake.lead(2)
        fake.nodes[1].usual = NotLeader()  # a follower that does not know the leader either

        async def scenario() -> tuple[int, str | None]:
            async with RaftKVClient(fake.description, first_node=0) as client:
                return await client.set("k", "v"), await client.get("k")

        assert asyncio.run(scenario()) == (1, "v")
        assert len(fake.nodes[1].received) == 1


def test_unavailable_leader_is_retried_until_it_serves() -> None:
    with FakeCluster() as fake:
        fake.lead(0)
        fake.nodes[0].upcoming = [Unavailable(leader_id=0), Unavailable(leader_id=0)]

        async def scenario() -> int:
            async with RaftKVClient(fake.description, first_node=0) as client:
                return await client.set("k", "v")

        assert asyncio.run(scenario()) == 1
        assert [len(node.received) for node in fake.nodes] == [3, 0, 0]


def test_unavailable_without_a_hint_moves_on_and_is_sent_back() -> None:
    with FakeCluster() as fake:
        fake.lead(0)
        fake.nodes[0].upcoming = [Unavailable()]
        fake.shared.store["k"] = "v"

        async def scenario() -> str | None:
            async with RaftKVClient(fake.description, first_node=0) as client:
                return await client.get("k")

        assert asyncio.run(scenario()) == "v"
        assert [len(node.received) for node in fake.nodes] == [2, 1, 0]


def test_a_set_that_timed_out_is_retried_with_the_same_client_id_and_seq() -> None:
    with FakeCluster() as fake:
        fake.lead(0)
        fake.nodes[0].upcoming = [HANG]

        async def scenario() -> tuple[str, int, int]:
            client = RaftKVClient(fake.description, first_node=0, per_try_timeout=0.2)
            async with client:
                first = await client.set("k", "one")
                second = await client.set("k", "two")
            return client.client_id, first, second

        client_id, first_index, second_index = asyncio.run(scenario())
        sent = [(r.client_id, r.seq, r.value) for node in fake.nodes for r in node.received_sets]
        # The hung attempt and its retries all carry seq 1; the next write is seq 2.
        first_write = [write for write in sent if write[2] == "one"]
        assert len(first_write) >= 2
        assert set(first_write) == {(client_id, 1, "one")}
        assert [write for write in sent if write[2] == "two"] == [(client_id, 2, "two")]
        assert (first_index, second_index) == (1, 2)
        assert fake.shared.store == {"k": "two"}


def test_concurrent_sets_from_one_client_go_out_in_seq_order() -> None:
    # The server's dedup keeps only the highest seq per client: if seq 2 overtook a retried
    # seq 1, the retry would be dropped as a duplicate although it was never applied.
    with FakeCluster() as fake:
        fake.lead(0)
        fake.nodes[0].upcoming = [HANG]

        async def scenario() -> list[int]:
            async with RaftKVClient(fake.description, first_node=0, per_try_timeout=0.2) as client:
                return list(await asyncio.gather(client.set("a", "1"), client.set("b", "2")))

        assert asyncio.run(scenario()) == [1, 2]
        seqs = [request.seq for request in fake.nodes[0].received_sets]
        assert seqs == sorted(seqs)
        assert seqs[-1] == 2 and seqs.count(2) == 1
        assert fake.shared.store == {"a": "1", "b": "2"}


def test_invalid_argument_is_not_retried() -> None:
    with FakeCluster() as fake:
        fake.lead(0)
        fake.nodes[0].upcoming = [INVALID]

        async def scenario() -> None:
            async with RaftKVClient(fake.description, first_node=0) as client:
                await client.set("k", "v")

        with pytest.raises(InvalidRequestError, match="too long"):
            asyncio.run(scenario())
        assert [len(node.received) for node in fake.nodes] == [1, 0, 0]


@pytest.mark.parametrize(
    ("key", "value", "complaint"),
    [
        ("", "v", "empty"),
        ("k" * (MAX_KEY_BYTES + 1), "v", "1025 bytes"),
        ("é" * 513, "v", "1026 bytes"),  # 513 characters, but two UTF-8 bytes each
        ("k", "v" * (MAX_VALUE_BYTES + 1), "1 MiB"),
        ("bad\udc80byte", "v", "lone surrogate U\\+DC80"),
        ("k", "\ud800", "lone surrogate U\\+D800"),
    ],
)
def test_malformed_requests_are_refused_before_sending(
    key: str, value: str, complaint: str
) -> None:
    with FakeCluster() as fake:
        fake.lead(0)

        async def scenario() -> None:
            async with RaftKVClient(fake.description) as client:
                await client.set(key, value)

        with pytest.raises(InvalidRequestError, match=complaint):
            asyncio.run(scenario())
        assert all(not node.received for node in fake.nodes)


def test_largest_allowed_key_and_value_are_sent() -> None:
    with FakeCluster() as fake:
        fake.lead(0)
        key, value = "k" * MAX_KEY_BYTES, "v" * MAX_VALUE_BYTES

        async def scenario() -> str | None:
            async with RaftKVClient(fake.description) as client:
                await client.set(key, value)
                return await client.get(key)

        assert asyncio.run(scenario()) == value


def test_no_leader_error_says_what_every_node_said() -> None:
    with FakeCluster(down={0}) as fake:
        # Nodes 1 and 2 keep their default: not leader, leader unknown.

        async def scenario(operation: str) -> None:
            async with RaftKVClient(fake.description, timeout=0.3, per_try_timeout=0.1) as client:
                if operation == "get":
                    await client.get("k")
                else:
                    await client.set("k", "v")

        for operation in ("get", "set"):
            with pytest.raises(NoLeaderError) as caught:
                asyncio.run(scenario(operation))
            # Every attempt was refused outright, so even the SET certainly did not happen.
            assert not isinstance(caught.value, UnknownOutcomeError)
            assert str(caught.value).startswith(
                "no leader: node 0 unreachable (connection refused), "
                "node 1 not leader (leader unknown), node 2 not leader (leader unknown)"
            )
            assert 0.3 <= caught.value.elapsed < 2.0


def test_a_set_that_is_never_answered_has_an_unknown_outcome() -> None:
    with FakeCluster() as fake:
        fake.lead(0)
        fake.nodes[0].usual = HANG

        async def scenario(operation: str) -> None:
            client = RaftKVClient(
                fake.description, timeout=0.3, per_try_timeout=0.1, client_id="writer"
            )
            async with client:
                if operation == "get":
                    await client.get("k")
                else:
                    await client.set("k", "v")

        with pytest.raises(UnknownOutcomeError) as caught:
            asyncio.run(scenario("set"))
        assert caught.value.client_id.startswith("writer.")
        assert "node 0 timed out" in str(caught.value)
        assert str(caught.value).startswith("outcome unknown: SET 'k'")
        # A GET changes nothing, so its failure is a plain NoLeaderError.
        with pytest.raises(NoLeaderError) as caught_get:
            asyncio.run(scenario("get"))
        assert not isinstance(caught_get.value, UnknownOutcomeError)


def test_a_set_refused_for_too_many_requests_in_flight_certainly_did_not_happen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every request is beyond the bound: the session refuses it before the backend sees it.
    monkeypatch.setattr(pipeline, "MAX_IN_FLIGHT_PER_STREAM", 0)
    with FakeCluster(size=1) as fake:
        fake.lead(0)

        async def scenario() -> None:
            async with RaftKVClient(fake.description, timeout=0.3, per_try_timeout=0.1) as client:
                await client.set("k", "v")

        with pytest.raises(NoLeaderError) as caught:
            asyncio.run(scenario())
        assert not isinstance(caught.value, UnknownOutcomeError)
        assert str(caught.value).startswith(
            "no leader: node 0 overloaded (more than 0 requests in flight on one stream)"
        )
        assert fake.nodes[0].received == []


@pytest.mark.parametrize(
    ("code", "details", "may_have_applied"),
    [
        # gRPC refused the stream at the node's cap on RPCs before any handler ran.
        (grpc.StatusCode.RESOURCE_EXHAUSTED, RPC_LIMIT_DETAILS, False),
        # The node cut off a stream whose replies were left unread: its requests had started.
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "the client left its replies unread for 10 s", True),
        # What grpc.aio sometimes reports instead of the refusal above, when the server ends the
        # stream while the client is writing its first batch: nothing can be concluded.
        (grpc.StatusCode.INTERNAL, "Internal error from Core", True),
    ],
)
def test_only_a_stream_refused_before_it_ran_is_a_definite_refusal(
    code: grpc.StatusCode, details: str, may_have_applied: bool
) -> None:
    # Not through a fake node: grpc.aio turns the refusal into the INTERNAL error above in about
    # one attempt in seven when the client writes at once, which the library always does.
    client = RaftKVClient(ClusterDescription.local(1))
    failure = client._describe_failure(code, details, {}, 1.0)
    assert failure.may_have_applied is may_have_applied
    assert failure.reason.startswith("overloaded" if not may_have_applied else "failed")


def test_a_stale_sequence_refusal_is_raised_at_once_and_never_retried() -> None:
    with FakeCluster() as fake:
        fake.lead(1)
        fake.nodes[1].upcoming = [STALE]

        async def scenario() -> tuple[str, int]:
            async with RaftKVClient(fake.description, first_node=1, timeout=5.0) as client:
                with pytest.raises(StaleSequenceError) as caught:
                    await client.set("k", "v")
                error = caught.value
                assert (error.key, error.client_id, error.seq) == ("k", client.client_id, 1)
                # The client goes on: its next SET has the next seq and is served.
                return client.client_id, await client.set("k", "w")

        client_id, index = asyncio.run(asyncio.wait_for(scenario(), 4.0))
        assert index == 1
        sent = [(r.client_id, r.seq, r.value) for node in fake.nodes for r in node.received_sets]
        assert sent == [(client_id, 1, "v"), (client_id, 2, "w")]
        assert fake.shared.store == {"k": "w"}


def test_deletes_share_the_clients_seqs_and_a_retry_reuses_its_seq() -> None:
    with FakeCluster() as fake:
        fake.lead(0)
        fake.nodes[0].upcoming = [Serve(), HANG]

        async def scenario() -> tuple[str, list[int]]:
            client = RaftKVClient(fake.description, first_node=0, per_try_timeout=0.2)
            async with client:
                indexes = [await client.set("k", "v"), await client.delete("k")]
                indexes.append(await client.delete("k"))
            return client.client_id, indexes

        client_id, indexes = asyncio.run(scenario())
        assert indexes == [1, 2, 3]
        # At the leader: the hung DELETE and its retry carry seq 2; the next write is seq 3
        # (the timed-out try may also have asked a follower, which redirected it).
        sent = [(type(r).__name__, r.client_id, r.seq) for r in fake.nodes[0].received_writes]
        assert sent == [
            ("SetRequest", client_id, 1),
            ("DeleteRequest", client_id, 2),
            ("DeleteRequest", client_id, 2),
            ("DeleteRequest", client_id, 3),
        ]
        assert fake.shared.store == {}


def test_a_stale_delete_is_raised_at_once_and_names_the_delete() -> None:
    with FakeCluster() as fake:
        fake.lead(0)
        fake.nodes[0].upcoming = [STALE]

        async def scenario() -> StaleSequenceError:
            async with RaftKVClient(fake.description, first_node=0) as client:
                with pytest.raises(StaleSequenceError) as caught:
                    await client.delete("k")
                return caught.value

        error = asyncio.run(asyncio.wait_for(scenario(), 4.0))
        assert (error.key, error.seq, error.verb) == ("k", 1, "DELETE")
        assert str(error).startswith("stale sequence number: DELETE 'k' (client ")


# -- sessions (docs/design.md §11) --------------------------------------------------------------


def _resumes(node: FakeNode) -> list[tuple[str, int, bool]]:
    return [(r.key, r.seq, r.resume) for r in node.received_writes]


def test_writes_resume_their_session_once_a_write_of_it_was_acknowledged() -> None:
    with FakeCluster() as fake:
        fake.lead(0)

        async def scenario() -> None:
            client = RaftKVClient(fake.description, first_node=0, per_try_timeout=0.2)
            async with client:
                # Connected before the script starts: a first try slower than its 0.2 s on a
                # busy machine would take the script's answers out of order.
                await client.status()
                fake.nodes[0].upcoming = [NotLeader(0), Serve(), Serve(), HANG]
                await client.set("a", "1")
                await client.delete("a")
                await client.set("b", "2")

        asyncio.run(scenario())
        # The first write's retry still does not say resume (nothing was acknowledged yet);
        # every write after the acknowledgement does, retries included.
        assert _resumes(fake.nodes[0]) == [
            ("a", 1, False),
            ("a", 1, False),
            ("a", 2, True),
            ("b", 3, True),
            ("b", 3, True),
        ]


def test_a_write_retried_past_resume_after_says_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    # The write's age is measured on a clock that counts suspended time: a client that slept
    # through its first try retries with resume, since the session that try opened may be gone.
    readings = iter([0.0, 0.0])
    monkeypatch.setattr(library, "_write_age_clock", lambda: next(readings, 10_000.0))
    with FakeCluster() as fake:
        fake.lead(0)
        fake.nodes[0].upcoming = [HANG]

        async def scenario() -> None:
            async with RaftKVClient(fake.description, first_node=0, per_try_timeout=0.2) as client:
                await client.set("a", "1")

        asyncio.run(scenario())
        assert _resumes(fake.nodes[0]) == [("a", 1, False), ("a", 1, True)]


def test_resume_after_is_the_clusters_rule_and_writes_retry_at_most_two_minutes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert library.RESUME_AFTER_SECONDS == SessionRules().resume_after_ms / 1000 == 120
    assert library.MAX_WRITE_RETRY == 120
    # Every retry within the cap is sent before resume_after on the same clock.
    assert library.MAX_WRITE_RETRY <= library.RESUME_AFTER_SECONDS
    monkeypatch.setattr(library, "RESUME_AFTER_SECONDS", 0.3)
    monkeypatch.setattr(library, "MAX_WRITE_RETRY", 0.6)
    with FakeCluster(size=1) as fake:
        fake.lead(0)
        fake.nodes[0].usual = HANG

        async def scenario() -> UnknownOutcomeError:
            client = RaftKVClient(fake.description, timeout=30.0, per_try_timeout=0.1)
            async with client:
                with pytest.raises(UnknownOutcomeError) as caught:
                    await client.set("a", "1")
            return caught.value

        # Capped at MAX_WRITE_RETRY although the timeout is 30 s; GETs keep the whole timeout.
        error = asyncio.run(asyncio.wait_for(scenario(), 5.0))
        assert 0.6 <= error.elapsed < 2.0
        flags = [resume for _, _, resume in _resumes(fake.nodes[0])]
        assert flags[0] is False and flags[-1] is True
        assert flags == sorted(flags)  # once resumed, every later retry resumes


@pytest.mark.parametrize("verb", ["set", "delete"])
def test_a_session_expired_refusal_is_raised_at_once_and_starts_a_new_session(verb: str) -> None:
    with FakeCluster() as fake:
        fake.lead(1)

        async def scenario() -> tuple[str, str, SessionExpiredError]:
            client = RaftKVClient(fake.description, first_node=1, client_id="app")
            async with client:
                await client.set("k", "v")
                first_id = client.client_id
                fake.nodes[1].upcoming = [EXPIRED]
                with pytest.raises(SessionExpiredError) as caught:
                    if verb == "set":
                        await client.set("k", "w")
                    else:
                        await client.delete("k")
                # A new session: a new id with the caller's prefix, seqs from 1, no resume.
                assert client.client_id != first_id
                assert client.client_id.startswith("app.")
                await client.set("k", "x")
                await client.set("k", "y")
                return first_id, client.client_id, caught.value

        first_id, second_id, error = asyncio.run(asyncio.wait_for(scenario(), 4.0))
        assert (error.key, error.client_id, error.seq) == ("k", first_id, 2)
        assert error.verb == ("SET" if verb == "set" else "DELETE")
        assert error.applied_unknown is False
        assert str(error).startswith(f"session expired: {error.verb} 'k' (client {first_id}")
        assert " not applied; " in str(error) and "15 min idle" in str(error)
        sent = [(r.client_id, r.seq, r.resume) for r in fake.nodes[1].received_writes]
        # Sent once, never retried; the next writes are the new session's.
        assert sent == [
            (first_id, 1, False),
            (first_id, 2, True),
            (second_id, 1, False),
            (second_id, 2, True),
        ]
        assert fake.shared.store == {"k": "y"}


@pytest.mark.parametrize(
    ("earlier", "applied_unknown"),
    [
        # The first try timed out: it may have been applied before the session went.
        (HANG, True),
        # The first try was refused for certain (a redirect): nothing can have been applied.
        (NotLeader(0), False),
    ],
)
def test_a_session_expired_after_an_earlier_try_says_whether_the_outcome_is_unknown(
    earlier: Behaviour, applied_unknown: bool
) -> None:
    with FakeCluster() as fake:
        fake.lead(0)

        async def scenario() -> SessionExpiredError:
            async with RaftKVClient(fake.description, first_node=0, per_try_timeout=0.2) as client:
                await client.set("k", "v")
                # Scripted only now: the first SET may have needed a retry on a busy machine.
                fake.nodes[0].upcoming = [earlier, EXPIRED]
                with pytest.raises(SessionExpiredError) as caught:
                    await client.set("k", "w")
                return caught.value

        error = asyncio.run(asyncio.wait_for(scenario(), 4.0))
        assert error.applied_unknown is applied_unknown
        said = "outcome unknown: an earlier try may have applied" if applied_unknown else "not "
        assert f"seq 2) {said}" in str(error)


def test_the_unary_apis_session_expired_refusal_is_told_from_a_redirect() -> None:
    client = RaftKVClient(ClusterDescription.local(3))
    fail = grpc.StatusCode.FAILED_PRECONDITION
    # The unary API's refusal: the server's own trailing metadata names it.
    refused = outcome_reply(Refused(Refusal.SESSION_EXPIRED, 1), lambda _: None)
    metadata = dict(refused.trailing_metadata())
    assert metadata == {REFUSAL_METADATA: SESSION_EXPIRED_REFUSAL}
    assert client._describe_failure(fail, refused.details, metadata, 1.0).session_expired
    # The Pipeline's: no metadata, no hint, exactly the details.
    assert client._describe_failure(fail, SESSION_EXPIRED_DETAILS, {}, 1.0).session_expired
    # A redirect is never one, whatever its text says.
    redirect = client._describe_failure(fail, SESSION_EXPIRED_DETAILS, {"leader-id": "1"}, 1.0)
    assert not redirect.session_expired and redirect.leader_hint is not None
    assert not client._describe_failure(fail, "not the leader", {}, 1.0).session_expired


def test_list_follows_the_leader_hint_and_waits_out_an_unavailable_leader() -> None:
    with FakeCluster() as fake:
        fake.lead(2)
        fake.shared.store.update({"user:1": "a", "user:2": "b", "other": "c"})
        fake.nodes[2].upcoming = [Unavailable(2)]

        async def scenario() -> ListPage:
            async with RaftKVClient(fake.description, first_node=0) as client:
                return await client.list("user:")

        page = asyncio.run(scenario())
        assert page == ListPage((("user:1", "a"), ("user:2", "b")), more=False)
        assert page.next_start_after is None
        # Node 0 redirected to node 2, which asked for a retry, then served.
        assert [len(node.received) for node in fake.nodes] == [1, 0, 2]


def test_list_all_walks_every_page_and_list_refuses_bad_arguments_before_sending() -> None:
    with FakeCluster() as fake:
        fake.lead(0)
        fake.shared.store.update({f"k{i:02}": str(i) for i in range(25)})
        with SyncClient(fake.description, first_node=0) as client:
            assert list(client.list_all("k", page_size=10)) == [
                (f"k{i:02}", str(i)) for i in range(25)
            ]
            requests = [r for r in fake.nodes[0].received if isinstance(r, raftkv_pb2.ListRequest)]
            assert [(r.start_after, r.limit) for r in requests] == [
                ("", 10),
                ("k09", 10),
                ("k19", 10),
            ]
            first = client.list("k", limit=3)
            assert first.more and first.next_start_after == "k02"
            for bad in ({"limit": 0}, {"limit": 1001}, {"prefix": "p" * 1025}):
                with pytest.raises(InvalidRequestError):
                    client.list(**bad)
            fake.nodes[0].upcoming = [INVALID]
            with pytest.raises(InvalidRequestError, match="1001"):
                client.list("k")
        assert len(fake.nodes[0].received) == 5


def test_a_stale_sequence_error_says_what_happened() -> None:
    error = StaleSequenceError(key="k", client_id="writer.0123", seq=7)
    assert str(error) == (
        "stale sequence number: SET 'k' (client writer.0123, seq 7) was refused and not "
        "applied, because a higher sequence number of this client id was already applied "
        "(is another writer using this client id?)"
    )
    assert not isinstance(error, NoLeaderError)


def test_every_client_has_its_own_id_and_counts_seqs_from_1() -> None:
    with FakeCluster() as fake:
        fake.lead(0)

        async def scenario(client_id: str | None) -> str:
            client = RaftKVClient(fake.description, client_id=client_id, first_node=0)
            async with client:
                await client.set("k", "one")
                await client.set("k", "two")
                return client.client_id

        ids = [asyncio.run(scenario(given)) for given in ("writer", "writer", None)]
        assert ids[0].startswith("writer.") and ids[1].startswith("writer.")
        assert len(ids[0]) == len("writer.") + 16
        assert len(set(ids)) == 3
        # Seqs start at 1 for every id, whatever the clock says: never a stale or duplicate seq.
        sent = [(r.client_id, r.seq) for r in fake.nodes[0].received_sets]
        assert sent == [(client_id, seq) for client_id in ids for seq in (1, 2)]
        assert fake.shared.log_length == 6


def test_a_client_id_too_long_for_its_suffix_is_refused() -> None:
    description = ClusterDescription.local(1)
    RaftKVClient(description, client_id="w" * 239)
    with pytest.raises(ValueError, match="at most 239 bytes"):
        RaftKVClient(description, client_id="w" * 240)


def test_status_has_a_row_for_an_unreachable_node() -> None:
    with FakeCluster(down={2}) as fake:
        fake.lead(0)

        async def scenario() -> str:
            async with RaftKVClient(fake.description) as client:
                rows = await client.status()
            assert [row.node_id for row in rows] == [0, 1, 2]
            assert [row.reachable for row in rows] == [True, True, False]
            assert (rows[0].role, rows[0].leader_id, rows[0].lease_remaining) == ("leader", 0, 0.28)
            assert rows[2].error == "connection refused"
            return format_status_table(rows)

        table = asyncio.run(scenario()).splitlines()
        assert table[0].split() == [
            "NODE", "ADDRESS", "ROLE", "TERM", "COMMIT", "SNAPSHOT", "LEADER", "LEASE", "REACHABLE"
        ]  # fmt: skip
        assert table[1].split() == [
            "0", fake.address(0), "leader", "3", "0", "0", "0", "0.28s", "yes"
        ]  # fmt: skip
        assert table[2].split() == [
            "1", fake.address(1), "follower", "3", "0", "0", "0", "-", "yes"
        ]  # fmt: skip
        assert table[3].split() == [
            "2", fake.address(2), "-", "-", "-", "-", "-", "-", "no", "(connection", "refused)"
        ]  # fmt: skip
        # Aligned: every column starts at the same offset on every line.
        reachable_column = table[0].index("REACHABLE")
        assert [line[reachable_column:].split()[0] for line in table[1:]] == ["yes", "yes", "no"]


def test_a_client_certificate_opens_nodes_that_demand_one(tmp_path: Path) -> None:
    issue_certificates(tmp_path, local_nodes(1), clients=["ops"])
    ca = (tmp_path / "ca.pem").read_bytes()
    pair = (tmp_path / "client-ops.key").read_bytes(), (tmp_path / "client-ops.pem").read_bytes()
    with FakeCluster(1, tls=TlsFiles.in_directory(tmp_path, 0).load()) as fake:
        fake.lead(0)
        with SyncClient(fake.description, tls_root_cert=ca, tls_client_cert=pair) as client:
            assert client.set("k", "v") == 1
            assert client.get("k") == "v"

        async def without_certificate() -> str | None:
            async with RaftKVClient(fake.description, timeout=1.0, tls_root_cert=ca) as client:
                return await client.get("k")

        with pytest.raises(NoLeaderError):
            asyncio.run(without_certificate())
    with pytest.raises(ValueError, match="tls_client_cert needs tls_root_cert"):
        RaftKVClient(fake.description, tls_client_cert=pair)


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_presents_the_client_certificate_its_description_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issue_certificates(tmp_path, local_nodes(1), clients=["ops"])
    tls = {"ca": "ca.pem", "cert": "client-ops.pem", "key": "client-ops.key"}
    with FakeCluster(1, tls=TlsFiles.in_directory(tmp_path, 0).load()) as fake:
        fake.lead(0)
        replace(fake.description, tls=tls).save(tmp_path / "cluster.json")
        cluster = str(tmp_path / "cluster.json")
        assert main(["--cluster", cluster, "set", "k", "v"]) == 0
        assert main(["--cluster", cluster, "get", "k"]) == 0
        assert capsys.readouterr().out == "OK\nv\n"
        del tls["key"]
        replace(fake.description, tls=tls).save(tmp_path / "cluster.json")
        assert main(["--cluster", cluster, "get", "k"]) == 2
        assert "needs both 'cert' and 'key'" in capsys.readouterr().err


def test_cli_set_and_get(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeCluster() as fake:
        fake.lead(1)
        cluster = str(fake.write_description(tmp_path))

        assert main(["--cluster", cluster, "set", "greeting", "hello", "big", "world"]) == 0
        assert capsys.readouterr().out == "OK\n"
        assert main(["--cluster", cluster, "set", "-v", "counter", "--", "-1"]) == 0
        assert capsys.readouterr().out == "OK (index 2)\n"
        assert main(["--cluster", cluster, "get", "greeting"]) == 0
        assert capsys.readouterr().out == "hello big world\n"

        assert main(["--cluster", cluster, "get", "absent"]) == 1
        missing = capsys.readouterr()
        assert (missing.out, missing.err) == ("", "raftkv: key not found\n")
        assert fake.shared.store == {"greeting": "hello big world", "counter": "-1"}


def test_cli_del_exits_0_whether_or_not_the_key_existed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeCluster() as fake:
        fake.lead(1)
        cluster = str(fake.write_description(tmp_path))
        fake.shared.store.update({"a": "1", "b": "2"})
        assert main(["--cluster", cluster, "del", "a"]) == 0
        assert capsys.readouterr().out == "OK\n"
        assert main(["--cluster", cluster, "del", "-v", "never-set"]) == 0
        assert capsys.readouterr().out == "OK (index 2)\n"
        assert fake.shared.store == {"b": "2"}
        # Each CLI run is a new client instance: a client id of its own, seqs from 1.
        assert [(type(r).__name__, r.key, r.seq) for r in fake.nodes[1].received_writes] == [
            ("DeleteRequest", "a", 1),
            ("DeleteRequest", "never-set", 1),
        ]
        assert main(["--cluster", cluster, "del", ""]) == 5
        assert capsys.readouterr().err == "raftkv: the key is empty\n"
        assert main(["--cluster", cluster, "del"]) == 2
        capsys.readouterr()


def test_cli_del_exit_codes_for_an_unknown_outcome_and_a_stale_seq(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeCluster() as fake:
        cluster = str(fake.write_description(tmp_path))
        fake.lead(0)
        fake.nodes[0].usual = HANG
        assert main(["--cluster", cluster, "--timeout", "0.3", "del", "k"]) == 4
        assert "outcome unknown: DELETE 'k' (client " in capsys.readouterr().err
        fake.lead(0)
        fake.nodes[0].upcoming = [STALE]
        assert main(["--cluster", cluster, "del", "k"]) == 6
        assert capsys.readouterr().err.startswith("raftkv: stale sequence number: DELETE 'k' ")


def test_cli_exits_8_when_a_writes_session_expired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeCluster() as fake:
        cluster = str(fake.write_description(tmp_path))
        fake.lead(0)
        for command in (["set", "k", "v"], ["del", "k"]):
            fake.nodes[0].upcoming = [EXPIRED]
            assert main(["--cluster", cluster, "--timeout", "5", *command]) == 8
            err = capsys.readouterr().err
            verb = "SET" if command[0] == "set" else "DELETE"
            assert err.startswith(f"raftkv: session expired: {verb} 'k' (client ")
            assert " not applied; " in err and err.count("\n") == 1
        assert fake.shared.store == {}

        # The shell says so and goes on, in a new session.
        monkeypatch.setattr("sys.stdin", io.StringIO("SET a 1\nSET a 2\nSET a 3\n"))
        fake.nodes[0].upcoming = [SERVE, EXPIRED]
        assert main(["--cluster", cluster, "shell"]) == 0
        transcript = capsys.readouterr().out.splitlines()
        assert transcript[0] == "OK" and transcript[2] == "OK"
        assert transcript[1].startswith("error: session expired: SET 'a' (client ")
        writes = [(r.value, r.seq, r.resume) for r in fake.nodes[0].received_sets[-3:]]
        assert writes == [("1", 1, False), ("2", 2, True), ("3", 1, False)]
        assert fake.shared.store == {"a": "3"}


def test_cli_help_documents_exit_code_8_and_one_session_per_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "  8    SET or DEL refused: its client session expired" in out
    assert "Each `set` or `del` run is one client session" in out


def test_cli_ls_prints_escaped_lines_page_after_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeCluster() as fake:
        fake.lead(0)
        cluster = str(fake.write_description(tmp_path))
        fake.shared.store.update(
            {"user:2": "two words", "user:1": "", "user:3": "a=b\nc", "other": "x"}
        )
        assert main(["--cluster", cluster, "ls", "user:"]) == 0
        assert capsys.readouterr().out == ("user:1 %-\nuser:2 two%20words\nuser:3 a%3Db%0Ac\n")
        assert main(["--cluster", cluster, "ls", "--keys-only"]) == 0
        assert capsys.readouterr().out == "other\nuser:1\nuser:2\nuser:3\n"
        assert main(["--cluster", cluster, "ls", "user:", "--limit", "2"]) == 0
        captured = capsys.readouterr()
        assert captured.out == "user:1 %-\nuser:2 two%20words\n"
        assert captured.err == "raftkv: more keys follow the 2 shown (raise --limit to see them)\n"
        assert main(["--cluster", cluster, "ls", "nobody"]) == 0
        assert capsys.readouterr().out == ""
        assert main(["--cluster", cluster, "ls", "--limit", "0"]) == 2
        capsys.readouterr()
        # Without --limit it asks for the largest pages; with one, for no more than it shows.
        limits = [r.limit for r in fake.nodes[0].received if isinstance(r, raftkv_pb2.ListRequest)]
        assert limits == [1000, 1000, 2, 1000]


def test_cli_finds_the_cluster_through_peers_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeCluster() as fake:
        fake.lead(0)
        fake.shared.store["k"] = "v"
        peers = ",".join(node.address for node in fake.description.nodes)
        assert main(["--peers", peers, "get", "k"]) == 0
        assert capsys.readouterr().out == "v\n"

        monkeypatch.setenv("RAFTKV_CLUSTER", str(fake.write_description(tmp_path)))
        assert main(["get", "k"]) == 0
        assert capsys.readouterr().out == "v\n"


def test_cli_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeCluster(down={1}) as fake:
        fake.lead(0)
        cluster = str(fake.write_description(tmp_path))
        assert main(["--cluster", cluster, "status"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith("NODE  ADDRESS")
        assert lines[1].endswith("yes")
        assert lines[2].endswith("no (connection refused)")
        assert lines[3].endswith("yes")


def test_cli_status_exits_3_when_no_node_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeCluster(down={0, 1, 2}) as fake:
        assert main(["--cluster", str(fake.write_description(tmp_path)), "status"]) == 3
        captured = capsys.readouterr()
        assert captured.out.count("no (connection refused)") == 3
        assert "no node answered" in captured.err


def test_cli_exit_codes_for_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeCluster() as fake:
        cluster = str(fake.write_description(tmp_path))
        quick = ["--cluster", cluster, "--timeout", "0.3"]

        # Nobody leads.
        assert main([*quick, "get", "k"]) == 3
        assert capsys.readouterr().err.startswith("raftkv: no leader: node 0 not leader")

        # The leader never answers a SET.
        fake.lead(0)
        fake.nodes[0].usual = HANG
        assert main([*quick, "set", "k", "v"]) == 4
        assert "may or may not have been applied" in capsys.readouterr().err

        # Refused by the server, and refused before sending.
        fake.lead(0)
        fake.nodes[0].upcoming = [INVALID]
        assert main([*quick, "set", "k", "v"]) == 5
        assert capsys.readouterr().err == "raftkv: the key is too long\n"
        assert main([*quick, "get", ""]) == 5
        assert capsys.readouterr().err == "raftkv: the key is empty\n"

        # Refused for a stale sequence number: exit 6 at once, not after the timeout.
        fake.nodes[0].upcoming = [STALE]
        sets_before = sum(len(node.received_sets) for node in fake.nodes)
        assert main(["--cluster", cluster, "--timeout", "5", "set", "k", "v"]) == 6
        assert capsys.readouterr().err.startswith("raftkv: stale sequence number: SET 'k' (client ")
        # Sent once (perhaps after a redirect to node 0), never retried after the refusal.
        assert fake.nodes[0].received_sets[-1].value == "v"
        assert sum(len(node.received_sets) for node in fake.nodes) - sets_before <= 2


def test_cli_usage_and_cluster_file_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.json"
    assert main(["--cluster", str(missing), "get", "k"]) == 2
    assert "no cluster description at" in capsys.readouterr().err

    malformed = tmp_path / "malformed.json"
    malformed.write_text("{not json")
    assert main(["--cluster", str(malformed), "get", "k"]) == 2
    assert "is not valid JSON" in capsys.readouterr().err

    assert main(["--peers", "localhost", "get", "k"]) == 2
    assert "is not host:port" in capsys.readouterr().err

    assert main(["get"]) == 2
    assert main(["--timeout", "-1", "get", "k"]) == 2
    assert main([]) == 2
    capsys.readouterr()

    assert main(["--help"]) == 0
    help_text = capsys.readouterr().out
    assert "exit codes:" in help_text
    assert "4    SET or DEL outcome unknown" in help_text
    assert "6    SET or DEL refused for a stale sequence number" in help_text


# -- the shell ----------------------------------------------------------------------------------


def test_shell_reads_commands_from_a_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    commands = [
        "set greeting hello   big world",
        "GET greeting",
        "Get nothing",
        "",
        "FROB x",
        "GET",
        "SET k",
        "SET  2  x",
        "DEL greeting",
        "delete never-set",
        "DEL",
        "help",
        "EXIT",
        "GET greeting",  # never runs: EXIT ended the session
    ]
    with FakeCluster() as fake:
        fake.lead(2)
        monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(commands) + "\n"))
        assert main(["--cluster", str(fake.write_description(tmp_path)), "shell"]) == 0
        transcript = capsys.readouterr().out.splitlines()
        assert transcript[:10] == [
            "OK",
            "hello big world",
            "(key not found)",
            "unknown command 'FROB'; usage: GET key | SET key value | DEL key | STATUS | HELP "
            "| EXIT",
            "usage: GET key",
            "usage: SET key value",
            "OK",
            "OK",
            "OK",
            "usage: DEL key",
        ]
        assert transcript[10].startswith("commands (case-insensitive):")
        assert "raftkv>" not in "\n".join(transcript)
        assert fake.shared.store == {"2": "x"}
        assert len(fake.nodes[2].received) == 6


def test_shell_reports_no_leader_and_carries_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeCluster() as fake:
        cluster = str(fake.write_description(tmp_path))
        # Ends at end of input, without EXIT, like Ctrl-D.
        monkeypatch.setattr("sys.stdin", io.StringIO("GET k\nstatus\nGET k\n"))
        assert main(["--cluster", cluster, "--timeout", "0.2", "shell"]) == 0
        transcript = capsys.readouterr().out.splitlines()
        assert transcript[0].startswith("no leader: node 0 not leader (leader unknown)")
        assert transcript[1].startswith("NODE")
        assert transcript[-1].startswith("no leader: ")
        assert len(transcript) == 6  # two errors and a four-line table


# -- leadership transfer ------------------------------------------------------------------------


def test_transfer_leader_finds_the_leader_and_reports_who_leads_now() -> None:
    with FakeCluster() as fake:
        fake.lead(1)

        async def scenario() -> None:
            async with RaftKVClient(fake.description, first_node=0) as client:
                result = await client.transfer_leader(2)
                assert (result.leader_id, result.previous_leader_id, result.term) == (2, 1, 4)
                assert result.moved and result.seconds >= 0
                # The client now sends its requests to the new leader.
                fake.shared.store["k"] = "v"
                assert await client.get("k") == "v"

        asyncio.run(scenario())
        assert [len(node.transfers) for node in fake.nodes] == [1, 1, 0]
        assert fake.nodes[1].transfers[0].to == 2
        assert len(fake.nodes[2].received) == 1


def test_transfer_leader_to_any_node_sends_no_target() -> None:
    with FakeCluster() as fake:
        fake.lead(0)
        with SyncClient(fake.description, first_node=0) as client:
            assert client.transfer_leader().leader_id == 1
        assert not fake.nodes[0].transfers[0].HasField("to")


@pytest.mark.parametrize(
    ("refusal", "message"),
    [
        (
            TransferRefused(TransferRefusal.REFUSED, "there is no other node"),
            "node 0 refused the transfer: there is no other node",
        ),
        (
            TransferRefused(TransferRefusal.TIMED_OUT, "leadership did not move within 2.40 s"),
            "node 0: leadership did not move within 2.40 s",
        ),
        (
            TransferRefused(TransferRefusal.FAILED, "node 0 was elected again (term 5)"),
            "node 0: node 0 was elected again (term 5)",
        ),
    ],
)
def test_a_transfer_the_leader_refuses_or_that_fails_is_not_retried(
    refusal: TransferRefused, message: str
) -> None:
    with FakeCluster() as fake:
        fake.lead(0)
        fake.nodes[0].transfer_refusal = refusal
        with (
            SyncClient(fake.description, first_node=0) as client,
            pytest.raises(TransferError) as info,
        ):
            client.transfer_leader(1)
        assert str(info.value) == message
        assert len(fake.nodes[0].transfers) == 1


def test_a_leader_waiting_out_an_old_lease_is_asked_again() -> None:
    with FakeCluster() as fake:
        fake.lead(0)
        fake.nodes[0].transfer_refusal = TransferRefused(TransferRefusal.NOT_YET, "wait", 0)

        async def scenario() -> None:
            async with RaftKVClient(fake.description, first_node=0) as client:
                task = asyncio.create_task(client.transfer_leader(2))
                async with asyncio.timeout(10):  # a request that never comes fails the test
                    while not fake.nodes[0].transfers:
                        await asyncio.sleep(0.01)
                fake.nodes[0].transfer_refusal = None
                assert (await task).leader_id == 2

        asyncio.run(scenario())
        assert len(fake.nodes[0].transfers) >= 2


def test_cli_transfer_leader(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeCluster() as fake:
        cluster = str(fake.write_description(tmp_path))
        quick = ["--cluster", cluster, "--timeout", "0.5"]
        assert main([*quick, "transfer-leader"]) == 3
        assert "no leader" in capsys.readouterr().err

        fake.lead(1)
        assert main([*quick, "transfer-leader", "--to", "2"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("leader is now node 2 (was 1), took ") and out.endswith(" s\n")

        fake.nodes[2].transfer_refusal = TransferRefused(
            TransferRefusal.REFUSED, "a transfer to node 0 is already under way"
        )
        assert main([*quick, "transfer-leader", "--to", "0"]) == 7
        err = capsys.readouterr().err
        assert err == (
            "raftkv: node 2 refused the transfer: a transfer to node 0 is already under way\n"
        )
        assert main([*quick, "transfer-leader", "--to", "x"]) == 2
