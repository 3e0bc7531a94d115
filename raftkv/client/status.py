"""One node's answer to Status as a row, and the table of rows that `raftkv status` prints.

Every status table of the project is this one: the `raftkv status` command, the local cluster
supervisor (`make cluster-status`), the test clusters' diagnostics and the fault controller. A
node that gives no answer has `reachable=False` and a short reason in `error`, shown in the
table as `no (reason)`: the transport's short error ("connection refused", "timed out", ...) or
what the caller knows of the node ("down", "paused").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import grpc.aio

from raftkv.rpc import raftkv_pb2

__all__ = [
    "NodeStatusRow",
    "format_status_table",
    "row_from_call",
    "row_from_status",
    "unreachable_reason",
    "unreachable_row",
]

STATUS_COLUMNS = (
    "NODE", "ADDRESS", "ROLE", "TERM", "COMMIT", "SNAPSHOT", "LEADER", "LEASE", "REACHABLE"
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class NodeStatusRow:
    """One node's answer to Status, or why it gave none (then only the first four are set)."""

    node_id: int
    address: str
    reachable: bool
    error: str | None = None
    role: str | None = None
    term: int | None = None
    leader_id: int | None = None
    log_length: int | None = None
    commit_length: int | None = None
    applied_length: int | None = None
    lease_remaining: float | None = None
    waiting_for_old_lease: float | None = None
    read_mode: str | None = None
    # The node's durable snapshot's last index (0: none) and the first log entry it holds.
    snapshot_index: int | None = None
    first_index: int | None = None


def row_from_status(node_id: int, address: str, reply: raftkv_pb2.StatusResponse) -> NodeStatusRow:
    """The row of a node that answered Status with `reply`."""
    return NodeStatusRow(
        node_id=node_id,
        address=address,
        reachable=True,
        role=reply.role,
        term=reply.term,
        leader_id=reply.leader_id if reply.HasField("leader_id") else None,
        log_length=reply.log_length,
        commit_length=reply.commit_length,
        applied_length=reply.applied_length,
        lease_remaining=reply.lease_remaining,
        waiting_for_old_lease=reply.waiting_for_old_lease,
        read_mode=reply.read_mode,
        snapshot_index=reply.snapshot_index,
        first_index=reply.first_index,
    )


def unreachable_row(node_id: int, address: str, reason: str) -> NodeStatusRow:
    """The row of a node that gave no answer, and why (see `unreachable_reason`)."""
    return NodeStatusRow(node_id, address, reachable=False, error=reason)


def row_from_call(
    node_id: int, address: str, call: Callable[[], raftkv_pb2.StatusResponse]
) -> NodeStatusRow:
    """The row for a blocking Status call (or a future's `result`): its answer, or its error."""
    try:
        reply = call()
    except grpc.RpcError as error:
        return unreachable_row(node_id, address, unreachable_reason(error))
    return row_from_status(node_id, address, reply)


def unreachable_reason(error: grpc.RpcError) -> str:
    """Why a Status call failed, in a few words."""
    if not isinstance(error, grpc.aio.AioRpcError | grpc.Call):
        return shorten(str(error))
    code = error.code()
    details = error.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return short_transport_error(details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "timed out"
    return f"{code.name}: {shorten(details)}"


def format_status_table(rows: Sequence[NodeStatusRow]) -> str:
    """A header and one aligned row per node."""
    table = [list(STATUS_COLUMNS), *(_status_cells(row) for row in rows)]
    widths = [max(len(line[column]) for line in table) for column in range(len(STATUS_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    )


def _status_cells(row: NodeStatusRow) -> list[str]:
    def shown(value: object) -> str:
        return "-" if value is None else str(value)

    lease = "-"
    if row.waiting_for_old_lease is not None and row.waiting_for_old_lease > 0:
        lease = f"wait {row.waiting_for_old_lease:.2f}s"
    elif row.lease_remaining is not None and row.lease_remaining > 0:
        lease = f"{row.lease_remaining:.2f}s"
    reachable = "yes" if row.reachable else f"no ({row.error})" if row.error else "no"
    return [
        str(row.node_id),
        row.address,
        row.role or "-",
        shown(row.term),
        shown(row.commit_length),
        shown(row.snapshot_index),
        shown(row.leader_id),
        lease,
        reachable,
    ]


# -- reading gRPC errors ------------------------------------------------------------------------


def short_transport_error(details: str) -> str:
    """A transport error's details in a few words ("connection refused", ...)."""
    lowered = details.lower()
    for phrase, short in (
        ("connection refused", "connection refused"),
        ("errors resolving", "cannot resolve host"),
        ("dns resolution failed", "cannot resolve host"),
        ("no route to host", "no route to host"),
        ("network is unreachable", "network unreachable"),
        ("handshake", "TLS handshake failed"),
        ("ssl", "TLS error"),
        ("timed out", "connect timed out"),
        ("timeout", "connect timed out"),
        ("connection reset", "connection reset"),
        ("socket closed", "connection closed"),
    ):
        if phrase in lowered:
            return short
    return shorten(details)


def shorten(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
