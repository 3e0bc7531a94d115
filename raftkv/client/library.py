"""An asyncio client for raftkv's `KeyValue` gRPC service.

    async with RaftKVClient(ClusterDescription.load(path)) as client:
        index = await client.set("greeting", "hello world")
        value = await client.get("greeting")        # None when the key is absent
        await client.delete("greeting")             # no error when it is absent
        page = await client.list("user:")           # ListPage(items, more), one page
        async for key, value in client.list_all("user:"):   # every page
            ...
        rows = await client.status()                # one NodeStatusRow per node
        saved = await client.snapshot_save("backup.snap")   # a checked backup of everything

The client knows every node's address. It sends a request to the last node that served it (or a
random node), follows the leader hints (leader id and address) that followers attach to
FAILED_PRECONDITION, and on UNAVAILABLE, broken connections and per-try timeouts moves to the
hinted leader or the next node, backing off exponentially with jitter, until the overall timeout.
FAILED_PRECONDITION with `refusal: stale-sequence` (on the Pipeline stream: no leader hint and
the stale-sequence details text) is not a redirect: `set()` and `delete()` raise
`StaleSequenceError` at once. So does the session-expired refusal (`refusal: session-expired`;
on the stream: no leader hint and the session-expired details): `SessionExpiredError`, after
which the client starts a new session.

GETs, SETs and DELETEs travel on one `KeyValue.Pipeline` stream per node (pipeline.py): concurrent
calls from one client share it, and whatever is queued goes out as one message, which costs the
node far less than a unary call each. LIST and Status use unary RPCs (LIST with the same retry
rules as a GET).

A SET or DELETE carries the client's id and a sequence number (one sequence for both kinds);
every retry of one write reuses them, so the server applies it at most once. Sequence numbers
start at 1 and never come from the clock: every client instance has a client id of its own (a
random one, or the caller's id with a random suffix), so no two runs ever share an id and a
restarted program cannot send a seq below one the server already applied for its id. A write is
reported as done only when a node acknowledged it. If the deadline passes after an attempt whose
fate is unknown (a timeout, or a connection that broke after the request left), `set()` and
`delete()` raise `UnknownOutcomeError` rather than `NoLeaderError`.

Sessions (docs/design.md §11): the cluster forgets a client id 15 minutes after its last write,
so a SET or DELETE says whether it continues a session the cluster knows (`resume`): once a write
of this client id was acknowledged, or when this write has been retried for longer than
`SessionRules.resume_after_ms` (2 min), since an earlier try may then have opened a session
that is gone by now. A write that resumes a session the cluster no longer has is refused
(`SessionExpiredError`), never applied as the first write of a new session, which could apply
it twice. A write is retried for at most MAX_WRITE_RETRY (2 min), whatever the timeout.

Use one client from one event loop: grpc.aio channels belong to the loop that created them. For
blocking code, `SyncClient` wraps a client with a private event loop.
"""

from __future__ import annotations

import asyncio
import builtins  # the clients' own `list` method shadows the builtin in their class bodies
import math
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
import grpc.aio

from raftkv.cluster import ClusterDescription
from raftkv.core.state_machine import DEFAULT_SESSION_RULES
from raftkv.limits import (
    DEFAULT_LIST_LIMIT,
    MAX_CLIENT_ID_BYTES,
    MAX_KEY_BYTES,
    MAX_LIST_LIMIT,
    MAX_VALUE_BYTES,
)
from raftkv.rpc import raftkv_pb2, raftkv_pb2_grpc
from raftkv.rpc.metadata import (
    LEADER_ADDRESS_METADATA,
    LEADER_ID_METADATA,
    REFUSAL_METADATA,
    RPC_LIMIT_DETAILS,
    SESSION_EXPIRED_DETAILS,
    SESSION_EXPIRED_REFUSAL,
    STALE_SEQUENCE_DETAILS,
    STALE_SEQUENCE_REFUSAL,
    TRANSFER_REFUSAL,
)
from raftkv.rpc.options import CLIENT_CHANNEL_OPTIONS

from .backup import SavedSnapshot, SnapshotSink
from .errors import (
    InvalidRequestError,
    NoLeaderError,
    RaftKVError,
    SessionExpiredError,
    StaleSequenceError,
    TransferError,
    UnknownOutcomeError,
)
from .pipeline import PipelineConnection, PipelineTimeoutError, StreamBrokenError
from .status import (
    NodeStatusRow,
    row_from_status,
    short_transport_error,
    shorten,
    unreachable_reason,
    unreachable_row,
)

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_VALUE_BYTES",
    "ListPage",
    "NodeStatusRow",
    "RaftKVClient",
    "SavedSnapshot",
    "SyncClient",
    "TransferResult",
    "check_key",
    "check_value",
]

FIRST_BACKOFF_SECONDS = 0.02
MAX_BACKOFF_SECONDS = 0.5
# A write's retries stop this long after the call at the latest, even when `timeout` is longer.
# The first try of a session's first write cannot say `resume` (its session does not exist yet),
# and neither can its retries, so they rely on a session an earlier try opened still being
# there: no session goes before SessionRules.evict_idle_ms (4 min) idle in cluster time, which
# runs no faster than real time, and 2 min of retries stay well inside that even on a client
# clock running at half speed. A retry later than that is one whose process was suspended.
MAX_WRITE_RETRY = 120.0
# A write retried for this long (on _write_age_clock) says `resume` even before any write of its
# session was acknowledged: an earlier try may have opened a session that could be gone by now,
# and a new one would apply the retry twice. The cluster's rule (SessionRules.resume_after_ms):
# replicated semantics, so a constant here too, never an option.
RESUME_AFTER_SECONDS = DEFAULT_SESSION_RULES.resume_after_ms / 1000


def _write_age_clock() -> float:
    """Seconds on the clock a write's age is measured on: CLOCK_BOOTTIME where there is one,
    since it counts the time the machine spends suspended and CLOCK_MONOTONIC (the event loop's
    clock) does not; a laptop that sleeps through a SET must resume its retries as `resume`."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        try:
            return time.clock_gettime(boottime)
        except OSError:  # EINVAL: a kernel older than the constant
            pass
    return time.monotonic()


# A backup's chunks after the first: each must arrive within max(timeout, this), however long
# the whole transfer takes (a node streams about 1 MiB per chunk).
SNAPSHOT_STALL_SECONDS = 30.0


_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
# What one attempt brings back when it succeeds: a PipelineReply, or a unary RPC's response.
_Reply = TypeVar("_Reply")


def _client_id_suffix() -> str:
    """What makes a caller-supplied client id this instance's own: "." and 16 random hex."""
    return "." + uuid.uuid4().hex[:16]


_MAX_CALLER_CLIENT_ID_BYTES = MAX_CLIENT_ID_BYTES - len(_client_id_suffix())


@dataclass(frozen=True, slots=True)
class _Endpoint:
    address: str
    # None for an address a node named as leader that the cluster description does not list.
    node_id: int | None

    @property
    def label(self) -> str:
        return self.address if self.node_id is None else f"node {self.node_id}"


@dataclass(frozen=True, slots=True)
class _Failure:
    """One failed attempt, as the retry loop needs it."""

    reason: str
    leader_hint: _Endpoint | None
    # False only when the request certainly was not applied (refused, or never sent).
    may_have_applied: bool
    # A write refused for a stale seq: final, never retried.
    stale_sequence: bool = False
    # A write that resumed a session the cluster no longer has: final, never retried.
    session_expired: bool = False


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of a LIST: (key, value) pairs in key order, and whether another page follows
    (ask for it with start_after = `items[-1][0]`, which `next_start_after` gives)."""

    items: tuple[tuple[str, str], ...]
    more: bool

    @property
    def next_start_after(self) -> str | None:
        """Where the next page starts, or None when this was the last."""
        return self.items[-1][0] if self.more and self.items else None


@dataclass(frozen=True, slots=True)
class TransferResult:
    """A completed leadership transfer: who leads now, who led, the new term, and how long it
    took from the request to the answer, as this client measured it."""

    leader_id: int
    previous_leader_id: int
    term: int
    seconds: float

    @property
    def moved(self) -> bool:
        """False when the requested node was the leader already."""
        return self.leader_id != self.previous_leader_id


class _Backoff:
    """Exponential backoff with "equal jitter": a floor of half the ceiling, so retries neither
    hammer a struggling cluster nor fall into lockstep with other clients."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._ceiling = FIRST_BACKOFF_SECONDS

    def next_delay(self) -> float:
        delay = self._rng.uniform(self._ceiling / 2, self._ceiling)
        self._ceiling = min(self._ceiling * 2, MAX_BACKOFF_SECONDS)
        return delay


class RaftKVClient:
    """Talks to a raftkv cluster; see the module docstring for the retry rules.

    `timeout` bounds a whole `get()` / `set()` including retries (a write's at most
    MAX_WRITE_RETRY, 120 s: see there); `per_try_timeout` bounds each RPC (never beyond the
    overall deadline). `first_node` is tried first while no leader is known
    (default: a random node).

    The server's dedup table knows a client by its id and keeps the highest sequence number
    applied for it. This client's id is a random one, or, when the caller supplies `client_id`,
    that id plus "." and 16 random hex digits (see `self.client_id`), so that the caller's id
    still names the writer in the nodes' logs. Either way the id is new for every instance, and
    sequence numbers start at 1 and count up: they never depend on the clock, so a program that
    restarts (even with its clock stepped back) never sends a seq below one already applied for
    its id. The price: a SET cannot be retried across instances; a process that dies during a
    `set()` leaves that SET's outcome unknown, exactly as `UnknownOutcomeError` does.

    Writes (SETs and DELETEs) from one client are sent one at a time: the server's dedup keeps
    only the highest sequence number per client, so a later write overtaking an earlier one
    would make the earlier one look like a duplicate. Use several clients for parallel writes.

    The id and its seqs are one session of the cluster's (docs/design.md §11), which expires
    after 15 minutes without a write. A write refused because its session expired raises
    `SessionExpiredError`, and the client goes on in a new session: a new id (the caller's
    `client_id` with a new suffix), seqs from 1 again.

    `tls_root_cert` (PEM) turns TLS on and verifies the nodes against it; `tls_client_cert`,
    (private key, certificate chain) in PEM, is presented to nodes that demand a client
    certificate (--client-cert-auth). `raftkv.tls.client_tls` reads both from a description.
    """

    def __init__(
        self,
        cluster: ClusterDescription,
        *,
        timeout: float = 5.0,
        client_id: str | None = None,
        per_try_timeout: float = 1.0,
        tls_root_cert: bytes | None = None,
        tls_client_cert: tuple[bytes, bytes] | None = None,
        first_node: int | None = None,
    ) -> None:
        _require_positive("timeout", timeout)
        if tls_client_cert is not None and tls_root_cert is None:
            raise ValueError("tls_client_cert needs tls_root_cert: a client certificate is TLS")
        _require_positive("per_try_timeout", per_try_timeout)
        if client_id == "":
            raise ValueError("client_id must not be empty: the server does not dedup without one")
        if client_id is not None and len(client_id.encode("utf-8")) > _MAX_CALLER_CLIENT_ID_BYTES:
            raise ValueError(
                f"client_id must be at most {_MAX_CALLER_CLIENT_ID_BYTES} bytes of UTF-8 (a "
                f"{len(_client_id_suffix())}-byte random suffix is added; the server's limit is "
                f"{MAX_CLIENT_ID_BYTES})"
            )
        self._timeout = timeout
        self._per_try_timeout = per_try_timeout
        self._endpoints = [_Endpoint(node.address, node.id) for node in cluster.nodes]
        self._endpoint_by_id = {endpoint.node_id: endpoint for endpoint in self._endpoints}
        self._endpoint_by_address = {endpoint.address: endpoint for endpoint in self._endpoints}
        self._first_node = (
            None if first_node is None else self._endpoint_by_id[cluster.node(first_node).id]
        )
        key, chain = tls_client_cert or (None, None)
        self._credentials = (
            None
            if tls_root_cert is None
            else grpc.ssl_channel_credentials(tls_root_cert, key, chain)
        )
        self._caller_client_id = client_id
        self.client_id = ""
        self._last_seq = 0
        # Whether a write of this session was acknowledged: then its session exists on the
        # cluster (unless it expired since), and every later write says `resume`.
        self._acknowledged = False
        self._new_session()
        self._rng = random.Random()
        self._known_leader: _Endpoint | None = None
        self._channels: dict[str, Any] = {}
        self._stubs: dict[str, Any] = {}
        self._pipes: dict[str, PipelineConnection] = {}
        self._write_lock = asyncio.Lock()
        self._closed = False

    def _new_session(self) -> None:
        """Start a session: a client id no run ever had, seqs from 1, nothing acknowledged."""
        caller = self._caller_client_id
        self.client_id = uuid.uuid4().hex if caller is None else caller + _client_id_suffix()
        self._last_seq = 0
        self._acknowledged = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def get(self, key: str) -> str | None:
        """The value of `key`, or None when the key is absent."""
        check_key(key)
        deadline = asyncio.get_running_loop().time() + self._timeout
        request = raftkv_pb2.GetRequest(key=key)
        reply = await self._call_leader(
            lambda pipe, timeout: pipe.get(request, timeout),
            deadline=deadline,
            write=None,
        )
        return reply.value if reply.found else None

    async def set(self, key: str, value: str) -> int:
        """Store `value` under `key` once a majority has it; returns the entry's log index."""
        check_key(key)
        check_value(value)
        # Time spent queued behind this client's earlier SETs counts against the timeout too.
        deadline = self._write_deadline()
        async with self._write_lock:
            self._last_seq += 1
            request = raftkv_pb2.SetRequest(
                key=key, value=value, client_id=self.client_id, seq=self._last_seq
            )
            reply = await self._call_leader(
                lambda pipe, timeout: pipe.set(request, timeout),
                deadline=deadline,
                write=request,
            )
            self._acknowledged = True
        return int(reply.index)

    async def delete(self, key: str) -> int:
        """Remove `key` once a majority has the DELETE; returns the entry's log index. A key that
        is absent is no error (the DELETE is applied and changes nothing). It takes the next seq
        of this client, like a SET, and is retried and deduplicated the same way."""
        check_key(key)
        deadline = self._write_deadline()
        async with self._write_lock:
            self._last_seq += 1
            request = raftkv_pb2.DeleteRequest(
                key=key, client_id=self.client_id, seq=self._last_seq
            )
            reply = await self._call_leader(
                lambda pipe, timeout: pipe.delete(request, timeout),
                deadline=deadline,
                write=request,
            )
            self._acknowledged = True
        return int(reply.index)

    def _write_deadline(self) -> float:
        """When a SET or DELETE called now gives up: after the timeout, or MAX_WRITE_RETRY."""
        return asyncio.get_running_loop().time() + min(self._timeout, MAX_WRITE_RETRY)

    async def list(
        self, prefix: str = "", start_after: str = "", limit: int = DEFAULT_LIST_LIMIT
    ) -> ListPage:
        """One linearizable page of the keys that start with `prefix` and sort after
        `start_after` (Unicode code point order), with their values: at most `limit` items
        (1..1000) and 4 MiB, but at least one when there is one. Served by the leader under a
        GET's rules, and retried like a GET."""
        check_list(prefix, start_after, limit)
        deadline = asyncio.get_running_loop().time() + self._timeout
        request = raftkv_pb2.ListRequest(prefix=prefix, start_after=start_after, limit=limit)

        async def invoke(stub: Any, timeout: float) -> raftkv_pb2.ListResponse:
            response: raftkv_pb2.ListResponse = await stub.List(request, timeout=timeout)
            return response

        reply = await self._call_leader_unary(invoke, deadline=deadline)
        return ListPage(tuple((item.key, item.value) for item in reply.items), reply.more)

    async def list_all(
        self, prefix: str = "", *, start_after: str = "", page_size: int = DEFAULT_LIST_LIMIT
    ) -> AsyncIterator[tuple[str, str]]:
        """Every key with `prefix` (after `start_after`) and its value, page by page. Each page
        is linearizable on its own, not the whole walk: a key written between two pages is
        seen if it sorts after the page it missed. Each page gets the whole timeout."""
        while True:
            page = await self.list(prefix, start_after, page_size)
            for item in page.items:
                yield item
            if page.next_start_after is None:
                return
            start_after = page.next_start_after

    async def snapshot_save(self, path: str | os.PathLike[str]) -> SavedSnapshot:
        """A backup of the whole state to `path` (`raftkv snapshot save`): the leader's
        snapshot at its commit index when it served the read, which holds every write
        acknowledged before this call (linearizable, served under a GET's rules). Written to
        ``<path>.tmp`` and checked chunk by chunk as a node checks its snapshot.txt (format,
        counts, checksum), then synced and renamed to `path` (raftkv/client/backup.py).

        The leader is found, and its first chunk awaited, under this client's timeout and
        retry rules, like a GET; after that each chunk must come within max(timeout, 30 s),
        with no cap on the whole transfer, so that a large state is not cut off while it
        moves. A stream that breaks is started over (from a new ``.tmp``) at the leader, while
        the timeout lasts. Cancel the call to stop: the stream is cancelled and the ``.tmp``
        removed. Raises BackupError when the snapshot fails its check or the file cannot be
        written (never retried: nothing is left behind), NoLeaderError like a GET."""
        target = Path(path)
        deadline = asyncio.get_running_loop().time() + self._timeout
        stall = max(self._timeout, SNAPSHOT_STALL_SECONDS)

        async def attempt(endpoint: _Endpoint, try_timeout: float) -> SavedSnapshot | _Failure:
            sink = await asyncio.to_thread(SnapshotSink, target, endpoint.label)
            call: Any = None
            wait = try_timeout
            try:
                # No gRPC deadline on the call: the waits below bound each chunk instead.
                call = self._stub(endpoint).SnapshotSave(raftkv_pb2.SnapshotSaveRequest())
                while True:
                    try:
                        chunk = await asyncio.wait_for(call.read(), wait)
                    except TimeoutError:
                        return _Failure(f"timed out after {wait:.2f}s", None, False)
                    except grpc.aio.AioRpcError as error:
                        code, details = error.code(), error.details() or ""
                        if code == grpc.StatusCode.UNIMPLEMENTED:
                            return _Failure("does not serve KeyValue.SnapshotSave", None, False)
                        metadata = _trailing_metadata(error)
                        return self._describe_failure(code, details, metadata, wait)
                    if chunk is grpc.aio.EOF:
                        saved: SavedSnapshot = await asyncio.to_thread(sink.finish)
                        return saved
                    # Parsed and written in a worker thread: a chunk is up to ~1 MiB of lines.
                    await asyncio.to_thread(sink.write, chunk.data)
                    wait = stall
            finally:
                if call is not None:
                    call.cancel()  # nothing once the stream has ended; stops the node otherwise
                await asyncio.to_thread(sink.discard)

        return await self._retry_at_leader(attempt, deadline=deadline, write=None)

    async def status(self) -> builtins.list[NodeStatusRow]:
        """Every node's Status, asked in parallel; nodes that do not answer have reachable=False."""
        timeout = min(self._per_try_timeout, self._timeout)
        return list(
            await asyncio.gather(
                *(self._node_status(endpoint, timeout) for endpoint in self._endpoints)
            )
        )

    async def transfer_leader(self, to: int | None = None) -> TransferResult:
        """Ask the leader to hand leadership to node `to` (None: its most up-to-date follower)
        and wait until another node leads. Finds the leader first, following leader hints.

        Raises TransferError when the leader refuses (no other node, a transfer under way, an
        unknown target), when leadership did not move in time, or when a connection broke
        after the request left (the transfer may have happened: it is not retried, since a
        second request would move leadership again); NoLeaderError when no leader answered
        before the timeout."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._timeout
        request = raftkv_pb2.TransferLeaderRequest()
        if to is not None:
            request.to = to
        backoff = _Backoff(self._rng)
        last_said: dict[_Endpoint, str] = {}
        hops_without_pause = 0
        target = self._known_leader or self._first_node or self._rng.choice(self._endpoints)
        while (remaining := deadline - loop.time()) > 0:
            try:
                reply = await self._stub(target).TransferLeader(request, timeout=remaining)
            except grpc.aio.AioRpcError as error:
                hint, reason = self._transfer_failure(target, error)
            else:
                self._known_leader = self._endpoint_by_id.get(reply.leader_id)
                return TransferResult(
                    reply.leader_id, reply.previous_leader_id, reply.term, loop.time() - started
                )
            last_said[target] = reason
            if hint is not None or target == self._known_leader:
                self._known_leader = hint
            if hint is not None and hint != target and hops_without_pause < len(self._endpoints):
                hops_without_pause += 1
            else:
                hops_without_pause = 0
                await asyncio.sleep(min(backoff.next_delay(), max(deadline - loop.time(), 0)))
            target = hint if hint is not None else self._node_after(target)
        said = {endpoint.label: last_said[endpoint] for endpoint in self._ordered(last_said)}
        raise NoLeaderError(said, loop.time() - started)

    def _transfer_failure(
        self, target: _Endpoint, error: grpc.aio.AioRpcError
    ) -> tuple[_Endpoint | None, str]:
        """(the node to ask next, what `target` said) for a retryable failure of
        TransferLeader; raises TransferError for a final one."""
        code, details = error.code(), error.details() or ""
        metadata = _trailing_metadata(error)
        hint = self._leader_hint(metadata)
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            if metadata.get(REFUSAL_METADATA) == TRANSFER_REFUSAL:
                raise TransferError(f"{target.label} refused the transfer: {details}")
            where = "leader unknown" if hint is None else f"leader is {hint.label}"
            return hint, f"not leader ({where})"
        if code == grpc.StatusCode.UNAVAILABLE and (hint is not None or _never_connected(details)):
            # The node's own answer (it cannot transfer yet), or no connection at all.
            return hint, f"unavailable ({shorten(details)})"
        if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED):
            raise TransferError(f"{target.label}: {details}")
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return None, "does not serve KeyValue.TransferLeader"
        raise TransferError(
            f"the transfer's outcome is unknown: {target.label} failed with {code.name} "
            f"({shorten(details)}) after the request left; `raftkv status` shows the leader"
        )

    async def close(self) -> None:
        self._closed = True
        pipes = list(self._pipes.values())
        channels = list(self._channels.values())
        self._pipes.clear()
        self._channels.clear()
        self._stubs.clear()
        for pipe in pipes:
            await pipe.close()
        await asyncio.gather(*(channel.close() for channel in channels))

    # -- the retry loop ---------------------------------------------------------------------

    async def _call_leader(
        self,
        invoke: Callable[[PipelineConnection, float], Awaitable[raftkv_pb2.PipelineReply]],
        *,
        deadline: float,
        write: raftkv_pb2.SetRequest | raftkv_pb2.DeleteRequest | None,
    ) -> raftkv_pb2.PipelineReply:
        """A request on the Pipeline stream, with the retry rules of the module docstring."""

        async def attempt(
            target: _Endpoint, try_timeout: float
        ) -> raftkv_pb2.PipelineReply | _Failure:
            try:
                reply = await invoke(self._pipe(target), try_timeout)
            except StreamBrokenError as error:
                return self._describe_failure(error.code, error.details, {}, try_timeout)
            except PipelineTimeoutError:
                return _Failure(f"timed out after {try_timeout:.2f}s", None, True)
            if reply.code == 0:
                return reply
            return self._describe_refusal(reply, try_timeout)

        return await self._retry_at_leader(attempt, deadline=deadline, write=write)

    async def _call_leader_unary(
        self, invoke: Callable[[Any, float], Awaitable[_Reply]], *, deadline: float
    ) -> _Reply:
        """A unary read (List) with the same retry rules; `invoke` gets the node's stub."""

        async def attempt(target: _Endpoint, try_timeout: float) -> _Reply | _Failure:
            try:
                return await invoke(self._stub(target), try_timeout)
            except grpc.aio.AioRpcError as error:
                code, details = error.code(), error.details() or ""
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidRequestError(details or "invalid request") from None
                metadata = _trailing_metadata(error)
                return self._describe_failure(code, details, metadata, try_timeout)

        return await self._retry_at_leader(attempt, deadline=deadline, write=None)

    async def _retry_at_leader(
        self,
        attempt: Callable[[_Endpoint, float], Awaitable[_Reply | _Failure]],
        *,
        deadline: float,
        write: raftkv_pb2.SetRequest | raftkv_pb2.DeleteRequest | None,
    ) -> _Reply:
        """The retry loop: `attempt` asks one node once and returns its answer or a _Failure;
        follows hints, backs off, and raises as the module docstring says."""
        loop = asyncio.get_running_loop()
        started = deadline - (
            self._timeout if write is None else min(self._timeout, MAX_WRITE_RETRY)
        )
        backoff = _Backoff(self._rng)
        last_said: dict[_Endpoint, str] = {}
        may_have_applied = False
        # Followers with stale hints can point at each other; after this many hops without a
        # pause we back off like for any other failure.
        hops_without_pause = 0
        first_try = _write_age_clock()
        target = self._known_leader or self._first_node or self._rng.choice(self._endpoints)
        while (remaining := deadline - loop.time()) > 0:
            try_timeout = min(self._per_try_timeout, remaining)
            if write is not None:
                # Each try is sent as a copy (PipelineRequest(set=...)), so setting the flag
                # here never changes a try already queued.
                write.resume = self._acknowledged or (
                    _write_age_clock() - first_try >= RESUME_AFTER_SECONDS
                )
            failure = await attempt(target, try_timeout)
            if not isinstance(failure, _Failure):
                self._known_leader = target
                return failure
            if failure.stale_sequence and write is not None:
                raise StaleSequenceError(
                    key=write.key, client_id=write.client_id, seq=write.seq, verb=_verb(write)
                )
            if failure.session_expired and write is not None:
                # Retrying under this id can only be refused again, and a new id would apply
                # the write twice if an earlier try was applied: the caller decides.
                self._new_session()
                raise SessionExpiredError(
                    key=write.key,
                    client_id=write.client_id,
                    seq=write.seq,
                    verb=_verb(write),
                    applied_unknown=may_have_applied,
                    idle_minutes=DEFAULT_SESSION_RULES.lifetime_ms / 60_000,
                    evict_minutes=DEFAULT_SESSION_RULES.evict_idle_ms / 60_000,
                )

            last_said[target] = failure.reason
            may_have_applied = may_have_applied or failure.may_have_applied
            hint = failure.leader_hint
            if hint is not None or target == self._known_leader:
                self._known_leader = hint
            is_redirect = hint is not None and hint != target
            if is_redirect and hops_without_pause < len(self._endpoints):
                hops_without_pause += 1
            else:
                hops_without_pause = 0
                await asyncio.sleep(min(backoff.next_delay(), max(deadline - loop.time(), 0)))
            target = hint if hint is not None else self._node_after(target)

        elapsed = loop.time() - started
        said_in_order = {
            endpoint.label: last_said[endpoint] for endpoint in self._ordered(last_said)
        }
        if write is not None and may_have_applied:
            raise UnknownOutcomeError(
                said_in_order,
                elapsed,
                key=write.key,
                client_id=write.client_id,
                seq=write.seq,
                verb=_verb(write),
            )
        raise NoLeaderError(said_in_order, elapsed)

    def _describe_refusal(self, reply: raftkv_pb2.PipelineReply, try_timeout: float) -> _Failure:
        """A node's own answer to one request (it reached the node and was not run, unless the
        code says the outcome is unknown)."""
        code = _STATUS_BY_NUMBER.get(reply.code, grpc.StatusCode.UNKNOWN)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidRequestError(reply.details or "invalid request")
        metadata = {}
        if reply.HasField("leader_id"):
            metadata[LEADER_ID_METADATA] = str(reply.leader_id)
        if reply.leader_address:
            metadata[LEADER_ADDRESS_METADATA] = reply.leader_address
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = self._leader_hint(metadata)
            return _Failure(f"unavailable ({shorten(reply.details)})", hint, False)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            # The session refuses a request beyond its in-flight bound before it starts it
            # (raftkv/server/pipeline.py), so this one certainly did not run. (A whole stream
            # ended with RESOURCE_EXHAUSTED is another matter: its requests may have run.)
            return _Failure(f"overloaded ({shorten(reply.details)})", None, False)
        return self._describe_failure(code, reply.details, metadata, try_timeout)

    def _describe_failure(
        self,
        code: grpc.StatusCode,
        details: str,
        metadata: dict[str, str],
        try_timeout: float,
    ) -> _Failure:
        hint = self._leader_hint(metadata)
        if code == grpc.StatusCode.FAILED_PRECONDITION and _is_stale_sequence(details, metadata):
            return _Failure("refused: stale sequence number", None, False, stale_sequence=True)
        if code == grpc.StatusCode.FAILED_PRECONDITION and _is_session_expired(details, metadata):
            return _Failure("refused: session expired", None, False, session_expired=True)
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            where = "leader unknown" if hint is None else f"leader is {hint.label}"
            return _Failure(f"not leader ({where})", hint, may_have_applied=False)
        if code == grpc.StatusCode.UNAVAILABLE:
            if _never_connected(details):
                reason = f"unreachable ({short_transport_error(details)})"
                return _Failure(reason, None, may_have_applied=False)
            # gRPC reports a connection that broke mid-call with this same code, so only the
            # server's own metadata proves that the node refused the request.
            refused_by_server = (
                LEADER_ID_METADATA in metadata or LEADER_ADDRESS_METADATA in metadata
            )
            return _Failure(
                f"unavailable ({shorten(details)})", hint, may_have_applied=not refused_by_server
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return _Failure(f"timed out after {try_timeout:.2f}s", None, may_have_applied=True)
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return _Failure("does not serve KeyValue.Pipeline", None, may_have_applied=False)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and details == RPC_LIMIT_DETAILS:
            # The node refused the whole stream before running it: no request on it started.
            # (grpc.aio sometimes reports this refusal as INTERNAL "Internal error from Core"
            # when it races the stream's first write; that stays an unknown outcome.)
            return _Failure(f"overloaded ({details})", None, may_have_applied=False)
        return _Failure(f"failed ({code.name}: {shorten(details)})", None, may_have_applied=True)

    def _leader_hint(self, metadata: dict[str, str]) -> _Endpoint | None:
        raw_id = metadata.get(LEADER_ID_METADATA, "")
        if raw_id.isdecimal() and int(raw_id) in self._endpoint_by_id:
            return self._endpoint_by_id[int(raw_id)]
        address = metadata.get(LEADER_ADDRESS_METADATA, "")
        if not address:
            return None
        return self._endpoint_by_address.get(address) or _Endpoint(address, None)

    def _node_after(self, endpoint: _Endpoint) -> _Endpoint:
        if endpoint.node_id is None or endpoint.node_id not in self._endpoint_by_id:
            return self._endpoints[0]
        position = self._endpoints.index(endpoint)
        return self._endpoints[(position + 1) % len(self._endpoints)]

    def _ordered(self, endpoints: Iterable[_Endpoint]) -> builtins.list[_Endpoint]:
        rank = {endpoint: position for position, endpoint in enumerate(self._endpoints)}
        return sorted(
            endpoints, key=lambda endpoint: (rank.get(endpoint, len(rank)), endpoint.address)
        )

    # -- channels and status ------------------------------------------------------------------

    def _stub(self, endpoint: _Endpoint) -> Any:
        if self._closed:
            raise RaftKVError("the client is closed")
        stub = self._stubs.get(endpoint.address)
        if stub is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(
                    endpoint.address, options=CLIENT_CHANNEL_OPTIONS
                )
            else:
                channel = grpc.aio.secure_channel(
                    endpoint.address, self._credentials, options=CLIENT_CHANNEL_OPTIONS
                )
            stub = raftkv_pb2_grpc.KeyValueStub(channel)
            self._channels[endpoint.address] = channel
            self._stubs[endpoint.address] = stub
        return stub

    def _pipe(self, endpoint: _Endpoint) -> PipelineConnection:
        pipe = self._pipes.get(endpoint.address)
        if pipe is None:
            self._stub(endpoint)
            pipe = PipelineConnection(self._channels[endpoint.address])
            self._pipes[endpoint.address] = pipe
        return pipe

    async def _node_status(self, endpoint: _Endpoint, timeout: float) -> NodeStatusRow:
        assert endpoint.node_id is not None
        try:
            reply = await self._stub(endpoint).Status(raftkv_pb2.StatusRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as error:
            return unreachable_row(endpoint.node_id, endpoint.address, unreachable_reason(error))
        return row_from_status(endpoint.node_id, endpoint.address, reply)


class SyncClient:
    """A blocking `RaftKVClient` for scripts: one private event loop serves every call, so the
    gRPC channels are reused. Not for use inside a running event loop."""

    def __init__(
        self,
        cluster: ClusterDescription,
        *,
        timeout: float = 5.0,
        client_id: str | None = None,
        per_try_timeout: float = 1.0,
        tls_root_cert: bytes | None = None,
        tls_client_cert: tuple[bytes, bytes] | None = None,
        first_node: int | None = None,
    ) -> None:
        self._client = RaftKVClient(
            cluster,
            timeout=timeout,
            client_id=client_id,
            per_try_timeout=per_try_timeout,
            tls_root_cert=tls_root_cert,
            tls_client_cert=tls_client_cert,
            first_node=first_node,
        )
        self._runner = asyncio.Runner()

    @property
    def client_id(self) -> str:
        return self._client.client_id

    def get(self, key: str) -> str | None:
        return self._runner.run(self._client.get(key))

    def set(self, key: str, value: str) -> int:
        return self._runner.run(self._client.set(key, value))

    def delete(self, key: str) -> int:
        return self._runner.run(self._client.delete(key))

    def list(
        self, prefix: str = "", start_after: str = "", limit: int = DEFAULT_LIST_LIMIT
    ) -> ListPage:
        return self._runner.run(self._client.list(prefix, start_after, limit))

    def list_all(
        self, prefix: str = "", *, start_after: str = "", page_size: int = DEFAULT_LIST_LIMIT
    ) -> Iterator[tuple[str, str]]:
        """As `RaftKVClient.list_all`, a page fetched whenever the last one is used up."""
        while True:
            page = self.list(prefix, start_after, page_size)
            yield from page.items
            if page.next_start_after is None:
                return
            start_after = page.next_start_after

    def status(self) -> builtins.list[NodeStatusRow]:
        return self._runner.run(self._client.status())

    def snapshot_save(self, path: str | os.PathLike[str]) -> SavedSnapshot:
        return self._runner.run(self._client.snapshot_save(path))

    def transfer_leader(self, to: int | None = None) -> TransferResult:
        return self._runner.run(self._client.transfer_leader(to))

    def close(self) -> None:
        try:
            self._runner.run(self._client.close())
        finally:
            self._runner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# -- validation ---------------------------------------------------------------------------------


def check_key(key: str) -> None:
    """Raise InvalidRequestError unless the server would accept `key`."""
    size = _utf8_size(key, "key")
    if size == 0:
        raise InvalidRequestError("the key is empty")
    if size > MAX_KEY_BYTES:
        raise InvalidRequestError(f"the key is {size} bytes of UTF-8; the limit is {MAX_KEY_BYTES}")


def check_list(prefix: str, start_after: str, limit: int) -> None:
    """Raise InvalidRequestError unless the server would accept this LIST."""
    for name, text in (("prefix", prefix), ("start_after", start_after)):
        size = _utf8_size(text, name)
        if size > MAX_KEY_BYTES:
            raise InvalidRequestError(
                f"the {name} is {size} bytes of UTF-8; the limit is {MAX_KEY_BYTES}"
            )
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidRequestError(f"the limit must be 1..{MAX_LIST_LIMIT}, not {limit!r}")


def check_value(value: str) -> None:
    """Raise InvalidRequestError unless the server would accept `value`."""
    size = _utf8_size(value, "value")
    if size > MAX_VALUE_BYTES:
        raise InvalidRequestError(
            f"the value is {size} bytes of UTF-8; the limit is {MAX_VALUE_BYTES} (1 MiB)"
        )


def _utf8_size(text: object, what: str) -> int:
    if not isinstance(text, str):
        raise InvalidRequestError(f"the {what} must be a str, not {type(text).__name__}")
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as error:
        # Protobuf strings must be valid UTF-8; a lone surrogate (often a byte that was not
        # UTF-8 on the command line, smuggled in by surrogateescape) cannot be encoded.
        bad = ord(text[error.start])
        raise InvalidRequestError(
            f"the {what} is not valid Unicode text: lone surrogate U+{bad:04X} at position "
            f"{error.start}"
        ) from None


def _verb(write: raftkv_pb2.SetRequest | raftkv_pb2.DeleteRequest) -> str:
    """How errors name a write: SET or DELETE."""
    return "SET" if isinstance(write, raftkv_pb2.SetRequest) else "DELETE"


# -- reading gRPC errors ------------------------------------------------------------------------


def _is_stale_sequence(details: str, metadata: dict[str, str]) -> bool:
    """Whether a FAILED_PRECONDITION is the stale-sequence refusal rather than "not the leader":
    `refusal: stale-sequence` on the unary API; on the Pipeline stream, which has no metadata,
    no leader hint and exactly the stale-sequence details."""
    if metadata.get(REFUSAL_METADATA) == STALE_SEQUENCE_REFUSAL:
        return True
    has_hint = LEADER_ID_METADATA in metadata or LEADER_ADDRESS_METADATA in metadata
    return not has_hint and details == STALE_SEQUENCE_DETAILS


def _is_session_expired(details: str, metadata: dict[str, str]) -> bool:
    """Whether a FAILED_PRECONDITION is the session-expired refusal, told apart from "not the
    leader" as `_is_stale_sequence` tells the stale-sequence one."""
    if metadata.get(REFUSAL_METADATA) == SESSION_EXPIRED_REFUSAL:
        return True
    has_hint = LEADER_ID_METADATA in metadata or LEADER_ADDRESS_METADATA in metadata
    return not has_hint and details == SESSION_EXPIRED_DETAILS


def _trailing_metadata(error: grpc.aio.AioRpcError) -> dict[str, str]:
    metadata = error.trailing_metadata() or ()
    return {str(key): str(value) for key, value in metadata}


def _never_connected(details: str) -> bool:
    """Whether gRPC failed before a connection existed, so the request was never sent."""
    lowered = details.lower()
    return any(
        phrase in lowered
        for phrase in (
            "failed to connect",
            "errors resolving",
            "dns resolution failed",
            "connection refused",
            "empty address list",
        )
    )


def _require_positive(name: str, seconds: float) -> None:
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{name} must be a positive number of seconds, not {seconds!r}")
