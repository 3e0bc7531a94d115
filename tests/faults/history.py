"""Clients that record a history for the linearizability checker, on raw gRPC stubs or on the
client library's KeyValue.Pipeline connections.

Each `HistoryClient` is one Jepsen "process": it issues one operation at a time, against the
node it believes leads, following FAILED_PRECONDITION's leader id (trailing metadata `leader-id`
on unary calls, `leader_id` in a Pipeline reply). With `pipes`, every attempt goes through the
given PipelineConnection per node, which all clients of a run share (so their requests are
batched together, as in the library); without, each client makes its own unary calls. Times are
`time.monotonic()` of the test process, taken just before the first attempt is sent and just
after the answer arrives.

Outcomes, per operation (not per attempt):

- GET: OK with the value read, or FAIL (a read that did not answer has no effect; the checker
  ignores it either way).
- SET carries a client id and a sequence number, and every retry resends the same (id, seq), so
  it applies at most once. It is OK once any attempt answers OK. It is FAIL only if *every*
  attempt was refused in a way that proves it never entered a log: FAILED_PRECONDITION (not the
  leader), INVALID_ARGUMENT, or UNAVAILABLE carrying one of the node's refusal reasons for
  "cannot accept yet" (waiting for the old lease, no lease, not ready). Anything else — a
  timeout, a dropped connection, any UNAVAILABLE from the transport, and ENTRY_LOST (the entry
  was removed from *this* leader's log, but a copy may survive on another node and commit
  later) — makes the operation INFO (unknown) for good, even if later attempts are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from raftkv.client.pipeline import PipelineConnection, PipelineTimeoutError, StreamBrokenError
from raftkv.core.messages import Refusal
from raftkv.rpc import raftkv_pb2 as pb
from raftkv.rpc import raftkv_pb2_grpc
from tests.support.linearizability import Operation, Outcome

# Refusals given before anything is appended: the SET certainly did not happen.
DEFINITE_REFUSALS = frozenset(
    r.value
    for r in (Refusal.NOT_LEADER, Refusal.NO_LEASE, Refusal.NOT_READY, Refusal.WAITING_OLD_LEASE)
)
DEFINITE_CODES = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT})
STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def attempt_is_definite(code: grpc.StatusCode, details: str) -> bool:
    """Whether a failed SET attempt proves that this attempt did not apply."""
    if code in DEFINITE_CODES:
        return True
    return code == grpc.StatusCode.UNAVAILABLE and details in DEFINITE_REFUSALS


@dataclass
class ClientOptions:
    op_timeout: float = 4.0
    attempt_timeout: float = 1.0
    backoff: float = 0.03


class AttemptFailedError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, leader_hint: int | None) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.leader_hint = leader_hint


class Recorder:
    """The shared history, in completion order."""

    def __init__(self) -> None:
        self.ops: list[Operation] = []

    def add(self, op: Operation) -> Operation:
        self.ops.append(op)
        return op

    def counts(self) -> dict[str, int]:
        counts = {o.value: 0 for o in Outcome}
        for op in self.ops:
            counts[op.outcome.value] += 1
        return counts


class HistoryClient:
    def __init__(
        self,
        name: str,
        addresses: Mapping[int, str],
        recorder: Recorder,
        rng: random.Random,
        options: ClientOptions | None = None,
        *,
        pinned: int | None = None,
        pipes: Mapping[int, PipelineConnection] | None = None,
    ) -> None:
        self.name = name
        # A pinned client talks to one node only and never follows a leader hint (Jepsen's
        # per-node clients): it keeps reading from an isolated old leader.
        self.pinned = pinned
        self.client_id = f"{name}-{rng.getrandbits(32):08x}"
        self.addresses = dict(addresses)
        self.recorder = recorder
        self.rng = rng
        self.options = options or ClientOptions()
        self.seq = 0
        self.leader = pinned if pinned is not None else rng.choice(sorted(self.addresses))
        self._channels = {
            i: grpc.aio.insecure_channel(address) for i, address in self.addresses.items()
        }
        self._stubs = {i: raftkv_pb2_grpc.KeyValueStub(c) for i, c in self._channels.items()}
        self._pipes = dict(pipes) if pipes is not None else None

    async def close(self) -> None:
        for channel in self._channels.values():
            with contextlib.suppress(Exception):
                await channel.close(grace=None)

    def _follow(self, hint: int | None) -> None:
        if self.pinned is not None:
            return
        if hint is not None and hint in self._stubs and hint != self.leader:
            self.leader = hint
        else:
            others = [i for i in self._stubs if i != self.leader]
            self.leader = self.rng.choice(others) if others else self.leader

    async def _attempt(
        self, request: pb.GetRequest | pb.SetRequest, timeout: float
    ) -> tuple[bool, str]:
        """One try at the believed leader: (found, value). Raises AttemptFailedError."""
        if self._pipes is not None:
            return await self._attempt_on_pipeline(self._pipes[self.leader], request, timeout)
        stub = self._stubs[self.leader]
        try:
            if isinstance(request, pb.GetRequest):
                response = await stub.Get(request, timeout=timeout)
                return response.found, response.value
            await stub.Set(request, timeout=timeout)
            return False, ""
        except grpc.aio.AioRpcError as error:
            hint = None
            with contextlib.suppress(Exception):
                for key, value in error.trailing_metadata() or ():
                    if key == "leader-id":
                        hint = int(value)
            raise AttemptFailedError(error.code(), error.details() or "", hint) from None

    @staticmethod
    async def _attempt_on_pipeline(
        pipe: PipelineConnection, request: pb.GetRequest | pb.SetRequest, timeout: float
    ) -> tuple[bool, str]:
        try:
            if isinstance(request, pb.GetRequest):
                reply = await pipe.get(request, timeout)
            else:
                reply = await pipe.set(request, timeout)
        except StreamBrokenError as error:
            raise AttemptFailedError(error.code, error.details, None) from None
        except PipelineTimeoutError:
            raise AttemptFailedError(grpc.StatusCode.DEADLINE_EXCEEDED, "no reply", None) from None
        if reply.code:
            code = STATUS_BY_NUMBER.get(reply.code, grpc.StatusCode.UNKNOWN)
            hint = reply.leader_id if reply.HasField("leader_id") else None
            raise AttemptFailedError(code, reply.details, hint)
        return reply.found, reply.value

    async def get(self, key: str) -> Operation:
        invoke = time.monotonic()
        deadline = invoke + self.options.op_timeout
        request = pb.GetRequest(key=key)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                found, value = await self._attempt(
                    request, min(self.options.attempt_timeout, remaining)
                )
            except AttemptFailedError as error:
                if self.pinned is not None:
                    break  # one attempt: a pinned client has nowhere else to go
                self._follow(error.leader_hint)
                await asyncio.sleep(self.options.backoff)  # client back-off between retries
                continue
            return self.recorder.add(
                Operation(
                    self.name,
                    "get",
                    key,
                    value if found else None,
                    invoke,
                    time.monotonic(),
                    Outcome.OK,
                )
            )
        return self.recorder.add(
            Operation(self.name, "get", key, None, invoke, time.monotonic(), Outcome.FAIL)
        )

    async def set(self, key: str, value: str) -> Operation:
        self.seq += 1
        request = pb.SetRequest(key=key, value=value, client_id=self.client_id, seq=self.seq)
        invoke = time.monotonic()
        deadline = invoke + self.options.op_timeout
        unknown = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await self._attempt(request, min(self.options.attempt_timeout, remaining))
            except AttemptFailedError as error:
                if not attempt_is_definite(error.code, error.details):
                    unknown = True
                if error.code == grpc.StatusCode.INVALID_ARGUMENT:
                    break
                self._follow(error.leader_hint)
                await asyncio.sleep(self.options.backoff)  # client back-off between retries
                continue
            return self.recorder.add(
                Operation(self.name, "set", key, value, invoke, time.monotonic(), Outcome.OK)
            )
        if unknown:
            return self.recorder.add(
                Operation(self.name, "set", key, value, invoke, None, Outcome.INFO)
            )
        return self.recorder.add(
            Operation(self.name, "set", key, value, invoke, time.monotonic(), Outcome.FAIL)
        )


async def random_workload(
    client: HistoryClient, keys: list[str], stop_at: float, write_ratio: float = 0.5
) -> None:
    """GET/SET random keys with unique values until `stop_at` (monotonic)."""
    counter = 0
    while time.monotonic() < stop_at:
        key = client.rng.choice(keys)
        if client.rng.random() < write_ratio:
            counter += 1
            op = await client.set(key, f"{client.name}:{counter}")
        else:
            op = await client.get(key)
        # Think time: keeps two shared cores from saturating (not synchronisation); a pinned
        # client refused by a follower waits a little longer.
        idle = 0.05 if op.outcome is not Outcome.OK and client.pinned is not None else 0.0
        await asyncio.sleep(idle + client.rng.uniform(0.0, 0.02))


def operation_to_json(op: Operation) -> dict[str, Any]:
    return {
        "process": op.process,
        "kind": op.kind,
        "key": op.key,
        "value": op.value,
        "invoke": op.invoke,
        "complete": op.complete,
        "outcome": op.outcome.value,
    }


def operation_from_json(body: Mapping[str, Any]) -> Operation:
    return Operation(
        body["process"],
        body["kind"],
        body["key"],
        body["value"],
        body["invoke"],
        body["complete"],
        Outcome(body["outcome"]),
    )


def save_history(ops: Iterable[Operation], path: Path) -> None:
    path.write_text(json.dumps([operation_to_json(op) for op in ops], indent=1) + "\n")


def load_history(path: Path) -> list[Operation]:
    return [operation_from_json(body) for body in json.loads(path.read_text())]
