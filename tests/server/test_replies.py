"""The replies every client path gives for each core outcome, pinned to the byte.

The core answers a GET, SET or DELETE with ReadValue, WriteDone or Refused (one of six reasons,
with or without a leader hint), or the wait times out. Three paths turn that into a reply: the
typed unary Get/Set/Delete (a gRPC status, details and trailing metadata), the assignment's
ServeClient (GET and SET only: Data,
LeaderID, Success) and the Pipeline stream (a PipelineReply). Clients rely on these exact
replies, so any change here is a change of the protocol.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from raftkv.core.messages import (
    Command,
    DeleteCommand,
    ReadRange,
    ReadValue,
    Refusal,
    Refused,
    WriteDone,
)
from raftkv.rpc import raftkv_pb2 as pb
from raftkv.rpc.metadata import SESSION_EXPIRED_DETAILS
from raftkv.server.service import KeyValueService, RaftService, ReplicaPipelineBackend

OWN_ID = 1
LEADER_ADDRESSES = {2: "10.0.0.2:50051"}

# (reason, hint) -> (gRPC code, details) for the typed API, and the PipelineReply code number.
REFUSALS = [
    (Refusal.NOT_LEADER, grpc.StatusCode.FAILED_PRECONDITION, "not the leader"),
    (Refusal.NO_LEASE, grpc.StatusCode.UNAVAILABLE, "leader holds no valid lease"),
    (
        Refusal.NOT_READY,
        grpc.StatusCode.UNAVAILABLE,
        "leader has not committed an entry of its term yet",
    ),
    (
        Refusal.WAITING_OLD_LEASE,
        grpc.StatusCode.UNAVAILABLE,
        "new leader is waiting for the old leader's lease to end",
    ),
    (Refusal.ENTRY_LOST, grpc.StatusCode.ABORTED, "entry was overwritten by another leader"),
]
# A hint the replica knows the address of, one it does not, and none.
HINTS = [2, 3, None]
SET_TIMEOUT = (
    "the write was not confirmed in time; its outcome is unknown "
    "(retry with the same client_id and seq)"
)


@dataclass
class _Status:
    leader_id: int | None


class FakeReplica:
    """Answers every read and proposal with `outcome` (raises TimeoutError for TimeoutError)."""

    def __init__(self, outcome: object, leader_id: int | None = 3) -> None:
        self.outcome = outcome
        self.proposed: list[Command] = []
        self.listed: list[tuple[str, str, int]] = []
        self.node_id = OWN_ID
        self.peers: dict[int, object] = {}
        self.options = type("Options", (), {"config": type("Config", (), {})()})()
        self.options.config.election_timeout_min = 0.1
        self.dump = type("Dump", (), {"write_lines": lambda lines: None})()
        self._leader_id = leader_id

    def _answer(self) -> object:
        if self.outcome is TimeoutError:
            raise TimeoutError
        return self.outcome

    async def read(self, key: str, timeout: float) -> object:
        return self._answer()

    async def read_range(self, prefix: str, start_after: str, limit: int, timeout: float) -> object:
        self.listed.append((prefix, start_after, limit))
        return self._answer()

    async def propose(self, command: Command, timeout: float) -> object:
        self.proposed.append(command)
        return self._answer()

    def begin_read(self, key: str) -> object:
        return self.outcome

    def begin_proposal(self, command: Command) -> object:
        self.proposed.append(command)
        return self.outcome

    def status(self) -> _Status:
        return _Status(self._leader_id)

    def leader_address(self, leader_id: int | None) -> str | None:
        return None if leader_id is None else LEADER_ADDRESSES.get(leader_id)


class AbortError(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.trailing: tuple[tuple[str, str], ...] | None = None
        self.code: grpc.StatusCode | None = None
        self.details: str | None = None

    def time_remaining(self) -> float | None:
        return None

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise AbortError


def _typed(outcome: object, verb: str) -> tuple[Any, FakeContext]:
    service = KeyValueService(FakeReplica(outcome))  # type: ignore[arg-type]
    context = FakeContext()

    async def call() -> Any:
        if verb == "get":
            return await service.Get(pb.GetRequest(key="k"), context)
        if verb == "list":
            return await service.List(pb.ListRequest(prefix="k"), context)
        if verb == "delete":
            return await service.Delete(pb.DeleteRequest(key="k", client_id="c", seq=1), context)
        request = pb.SetRequest(key="k", value="v", client_id="c", seq=1)
        return await service.Set(request, context)

    try:
        return asyncio.run(call()), context
    except AbortError:
        return None, context


def _serve_client(outcome: object, request: str, leader_id: int | None = 3) -> bytes:
    service = RaftService(FakeReplica(outcome, leader_id))  # type: ignore[arg-type]
    reply = asyncio.run(service.ServeClient(pb.ServeClientArgs(Request=request), FakeContext()))
    return reply.SerializeToString()


def _pipeline(outcome: object) -> pb.PipelineReply:
    backend = ReplicaPipelineBackend(FakeReplica(outcome))  # type: ignore[arg-type]
    reply = pb.PipelineReply(tag=7)
    backend.fill_reply(reply, outcome)
    return reply


def _metadata(hint: int | None) -> tuple[tuple[str, str], ...]:
    if hint is None:
        return ()
    if hint in LEADER_ADDRESSES:
        return (("leader-id", str(hint)), ("leader-address", LEADER_ADDRESSES[hint]))
    return (("leader-id", str(hint)),)


@pytest.mark.parametrize("hint", HINTS)
@pytest.mark.parametrize(("reason", "code", "details"), REFUSALS)
@pytest.mark.parametrize("verb", ["get", "list", "set", "delete"])
def test_typed_api_refusals(
    verb: str, reason: Refusal, code: grpc.StatusCode, details: str, hint: int | None
) -> None:
    reply, context = _typed(Refused(reason, hint), verb)
    assert reply is None
    assert (context.code, context.details) == (code, details)
    assert context.trailing == _metadata(hint)


@pytest.mark.parametrize("hint", HINTS)
@pytest.mark.parametrize(("reason", "code", "details"), REFUSALS)
def test_pipeline_refusals(
    reason: Refusal, code: grpc.StatusCode, details: str, hint: int | None
) -> None:
    expected = pb.PipelineReply(tag=7, code=code.value[0], details=details)
    if hint is not None:
        expected.leader_id = hint
        expected.leader_address = LEADER_ADDRESSES.get(hint, "")
    reply = _pipeline(Refused(reason, hint))
    assert reply.SerializeToString() == expected.SerializeToString()
    assert reply.HasField("leader_id") == (hint is not None)


@pytest.mark.parametrize("hint", HINTS)
@pytest.mark.parametrize(("reason", "code", "details"), REFUSALS)
@pytest.mark.parametrize("request_text", ["GET k", "SET k v"])
def test_serve_client_refusals(
    request_text: str, reason: Refusal, code: grpc.StatusCode, details: str, hint: int | None
) -> None:
    expected = pb.ServeClientReply(
        Data=details, LeaderID="None" if hint is None else str(hint), Success=False
    )
    assert _serve_client(Refused(reason, hint), request_text) == expected.SerializeToString()


STALE_DETAILS = (
    "stale sequence number: a higher sequence number of this client id was already applied, "
    "so this SET was not applied"
)


@pytest.mark.parametrize("hint", HINTS)
def test_a_stale_sequence_is_a_failed_precondition_without_a_leader_on_every_path(
    hint: int | None,
) -> None:
    stale = Refused(Refusal.STALE_SEQUENCE, hint)
    # Typed Set and Delete: no leader to follow, and `refusal: stale-sequence` tells it from
    # "not leader" (the details text is the wire's marker, a DELETE's included).
    for verb in ("set", "delete"):
        reply, context = _typed(stale, verb)
        assert reply is None
        assert (context.code, context.details) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            STALE_DETAILS,
        )
        assert context.trailing == (("refusal", "stale-sequence"),)
    # Pipeline: no per-request metadata; no leader_id, and the details text is the marker.
    expected = pb.PipelineReply(
        tag=7, code=grpc.StatusCode.FAILED_PRECONDITION.value[0], details=STALE_DETAILS
    )
    piped = _pipeline(stale)
    assert piped.SerializeToString() == expected.SerializeToString()
    assert not piped.HasField("leader_id")
    # ServeClient SETs carry no client id, so the core never answers them this; if it did:
    assert _serve_client(stale, "SET k v") == (
        pb.ServeClientReply(Data=STALE_DETAILS, LeaderID="None", Success=False).SerializeToString()
    )


@pytest.mark.parametrize("hint", HINTS)
def test_an_expired_session_is_a_failed_precondition_without_a_leader(hint: int | None) -> None:
    expired = Refused(Refusal.SESSION_EXPIRED, hint)
    assert Refusal.SESSION_EXPIRED.value == SESSION_EXPIRED_DETAILS
    for verb in ("set", "delete"):
        reply, context = _typed(expired, verb)
        assert reply is None
        assert (context.code, context.details) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            SESSION_EXPIRED_DETAILS,
        )
        assert context.trailing == (("refusal", "session-expired"),)
    piped = _pipeline(expired)
    assert piped.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert piped.details == SESSION_EXPIRED_DETAILS and not piped.HasField("leader_id")


def test_successes_on_every_path() -> None:
    found, absent, done = ReadValue("v"), ReadValue(None), WriteDone(9)
    assert _typed(found, "get")[0] == pb.GetResponse(found=True, value="v")
    assert _typed(absent, "get")[0] == pb.GetResponse(found=False, value="")
    assert _typed(done, "set")[0] == pb.SetResponse(index=9)
    assert _typed(done, "delete")[0] == pb.DeleteResponse(index=9)
    assert _pipeline(found).SerializeToString() == (
        pb.PipelineReply(tag=7, found=True, value="v").SerializeToString()
    )
    assert _pipeline(absent).SerializeToString() == pb.PipelineReply(tag=7).SerializeToString()
    assert _pipeline(done).SerializeToString() == (
        pb.PipelineReply(tag=7, index=9).SerializeToString()
    )
    own = str(OWN_ID)
    assert _serve_client(found, "GET k") == (
        pb.ServeClientReply(Data="v", LeaderID=own, Success=True).SerializeToString()
    )
    assert _serve_client(absent, "GET k") == (
        pb.ServeClientReply(Data="", LeaderID=own, Success=True).SerializeToString()
    )
    assert _serve_client(done, "SET k v") == (
        pb.ServeClientReply(Data="", LeaderID=own, Success=True).SerializeToString()
    )


def test_timeouts_on_every_path() -> None:
    _, get_context = _typed(TimeoutError, "get")
    assert (get_context.code, get_context.details) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "read timed out",
    )
    assert get_context.trailing is None
    _, set_context = _typed(TimeoutError, "set")
    assert (set_context.code, set_context.details) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        SET_TIMEOUT,
    )
    _, list_context = _typed(TimeoutError, "list")
    assert (list_context.code, list_context.details) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "read timed out",
    )
    _, delete_context = _typed(TimeoutError, "delete")
    assert (delete_context.code, delete_context.details) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        SET_TIMEOUT,
    )
    backend = ReplicaPipelineBackend(FakeReplica(None))  # type: ignore[arg-type]
    assert backend.timeout_details("get") == "read timed out"
    assert backend.timeout_details("set") == SET_TIMEOUT
    assert backend.timeout_details("delete") == SET_TIMEOUT
    for request_text in ("GET k", "SET k v"):
        for leader, shown in ((3, "3"), (None, "None")):
            expected = pb.ServeClientReply(
                Data="timed out; the outcome is unknown", LeaderID=shown, Success=False
            )
            assert _serve_client(TimeoutError, request_text, leader) == (
                expected.SerializeToString()
            )


def test_a_delete_proposes_a_delete_command_on_the_typed_api_and_the_pipeline() -> None:
    replica = FakeReplica(WriteDone(4))
    service = KeyValueService(replica)  # type: ignore[arg-type]
    request = pb.DeleteRequest(key="k", client_id="c", seq=2)
    assert asyncio.run(service.Delete(request, FakeContext())) == pb.DeleteResponse(index=4)
    backend = ReplicaPipelineBackend(replica)  # type: ignore[arg-type]
    assert backend.start_delete(request) == WriteDone(4)
    assert replica.proposed == [DeleteCommand("k", "c", 2), DeleteCommand("k", "c", 2)]


@pytest.mark.parametrize(
    ("request_obj", "problem"),
    [
        (pb.DeleteRequest(key=""), "the key must not be empty"),
        (pb.DeleteRequest(key="k" * 1025), "the key is 1025 bytes"),
        (pb.DeleteRequest(key="k", client_id="c"), "needs a seq"),
        (pb.DeleteRequest(key="k", client_id="c" * 257, seq=1), "client_id is longer"),
    ],
)
def test_a_malformed_delete_is_invalid_argument_and_proposes_nothing(
    request_obj: pb.DeleteRequest, problem: str
) -> None:
    replica = FakeReplica(WriteDone(4))
    context = FakeContext()
    service = KeyValueService(replica)  # type: ignore[arg-type]
    with pytest.raises(AbortError):
        asyncio.run(service.Delete(request_obj, context))
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert context.details is not None and problem in context.details
    assert replica.proposed == []


@pytest.mark.parametrize("request_text", ["DEL k", "DELETE k", "delete k"])
def test_serve_client_still_refuses_delete_as_an_unknown_command(request_text: str) -> None:
    # The assignment's API is GET and SET only, byte for byte (docs/design.md §4).
    verb = request_text.split()[0].upper()
    expected = pb.ServeClientReply(
        Data=f"unknown command {verb!r}: use GET <key> or SET <key> <value>",
        LeaderID="3",
        Success=False,
    )
    assert _serve_client(WriteDone(1), request_text) == expected.SerializeToString()


def test_a_list_answers_its_page_and_defaults_its_limit() -> None:
    page = ReadRange((("k1", "a"), ("k2", "b")), more=True)
    replica = FakeReplica(page)
    service = KeyValueService(replica)  # type: ignore[arg-type]
    reply = asyncio.run(service.List(pb.ListRequest(prefix="k", start_after="k0"), FakeContext()))
    assert reply == pb.ListResponse(
        items=[pb.KeyValuePair(key="k1", value="a"), pb.KeyValuePair(key="k2", value="b")],
        more=True,
    )
    asyncio.run(service.List(pb.ListRequest(limit=1000), FakeContext()))
    assert replica.listed == [("k", "k0", 100), ("", "", 1000)]
    nothing = KeyValueService(FakeReplica(ReadRange((), more=False)))  # type: ignore[arg-type]
    assert asyncio.run(nothing.List(pb.ListRequest(), FakeContext())) == pb.ListResponse()


@pytest.mark.parametrize(
    ("request_obj", "problem"),
    [
        (pb.ListRequest(limit=1001), "the limit is 1001; at most 1000 items per page"),
        (pb.ListRequest(prefix="p" * 1025), "the prefix is 1025 bytes"),
        (pb.ListRequest(start_after="s" * 1025), "the start_after is 1025 bytes"),
    ],
)
def test_a_malformed_list_is_invalid_argument_and_reads_nothing(
    request_obj: pb.ListRequest, problem: str
) -> None:
    replica = FakeReplica(ReadRange((), more=False))
    context = FakeContext()
    service = KeyValueService(replica)  # type: ignore[arg-type]
    with pytest.raises(AbortError):
        asyncio.run(service.List(request_obj, context))
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert context.details is not None and context.details.startswith(problem)
    assert replica.listed == []
