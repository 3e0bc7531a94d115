"""What a client is told about a core outcome: one mapping for every client path.

The core answers a GET, SET or DELETE with ReadValue, WriteDone or Refused, or the wait times
out. The typed unary Get/Set/Delete, the assignment's ServeClient and the Pipeline stream each
put the answer in their own shape, but all take the status code, the message and the leader hint
from here (tests/server/test_replies.py pins every path's reply for each outcome).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc

from raftkv.core.messages import ReadRange, ReadValue, Refusal, Refused, WriteDone
from raftkv.rpc.metadata import (
    LEADER_ADDRESS_METADATA,
    LEADER_ID_METADATA,
    REFUSAL_METADATA,
    SESSION_EXPIRED_DETAILS,
    SESSION_EXPIRED_REFUSAL,
    STALE_SEQUENCE_DETAILS,
    STALE_SEQUENCE_REFUSAL,
    TRANSFER_REFUSAL,
)
from raftkv.server.transfer import TransferRefusal, TransferRefused

READ_TIMEOUT_DETAILS = "read timed out"
SET_TIMEOUT_DETAILS = (
    "the write was not confirmed in time; its outcome is unknown "
    "(retry with the same client_id and seq)"
)
# ServeClient's Data for a request that timed out (the assignment's API has no status code).
SERVE_CLIENT_TIMEOUT_DATA = "timed out; the outcome is unknown"

_REFUSAL_CODES = {
    Refusal.NOT_LEADER: grpc.StatusCode.FAILED_PRECONDITION,
    # This node's copy was overwritten, but another node may still commit one: unknown.
    Refusal.ENTRY_LOST: grpc.StatusCode.ABORTED,
}


@dataclass(frozen=True, slots=True)
class Reply:
    """A core outcome as a client sees it. `code` is OK when the request was served; otherwise
    `details` says why not and `leader_hint`/`leader_address` name the node to ask instead;
    `refusal` tells refusals that share a code apart (only a stale sequence number has one)."""

    code: grpc.StatusCode
    details: str = ""
    leader_hint: int | None = None
    leader_address: str = ""
    refusal: str = ""

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """The trailing metadata of a refusal on the unary API: `leader-id`, `leader-address`,
        `refusal`, each only when there is one."""
        metadata: tuple[tuple[str, str], ...] = ()
        if self.leader_hint is not None:
            metadata += ((LEADER_ID_METADATA, str(self.leader_hint)),)
            if self.leader_address:
                metadata += ((LEADER_ADDRESS_METADATA, self.leader_address),)
        if self.refusal:
            metadata += ((REFUSAL_METADATA, self.refusal),)
        return metadata


def outcome_reply(
    outcome: ReadValue | ReadRange | WriteDone | Refused, address_of: Callable[[int], str | None]
) -> Reply:
    """The reply to a core outcome; `address_of` gives a hinted leader's client address."""
    if not isinstance(outcome, Refused):
        return Reply(grpc.StatusCode.OK)
    if outcome.reason is Refusal.STALE_SEQUENCE:
        # Definite and final, and not a redirect: a higher seq of the client was applied, so no
        # node will ever apply this SET and there is no leader to name.
        return Reply(
            grpc.StatusCode.FAILED_PRECONDITION,
            STALE_SEQUENCE_DETAILS,
            refusal=STALE_SEQUENCE_REFUSAL,
        )
    if outcome.reason is Refusal.SESSION_EXPIRED:
        # Definite too: the write was skipped by every replica; the client starts a new session.
        return Reply(
            grpc.StatusCode.FAILED_PRECONDITION,
            SESSION_EXPIRED_DETAILS,
            refusal=SESSION_EXPIRED_REFUSAL,
        )
    code = _REFUSAL_CODES.get(outcome.reason, grpc.StatusCode.UNAVAILABLE)
    hint = outcome.leader_hint
    address = "" if hint is None else address_of(hint) or ""
    return Reply(code, outcome.reason.value, hint, address)


_TRANSFER_CODES = {
    TransferRefusal.NOT_LEADER: grpc.StatusCode.FAILED_PRECONDITION,
    TransferRefusal.NOT_YET: grpc.StatusCode.UNAVAILABLE,
    TransferRefusal.REFUSED: grpc.StatusCode.FAILED_PRECONDITION,
    TransferRefusal.TIMED_OUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    TransferRefusal.FAILED: grpc.StatusCode.ABORTED,
}


def transfer_reply(refused: TransferRefused, address_of: Callable[[int], str | None]) -> Reply:
    """KeyValue.TransferLeader's answer when leadership did not move: not the leader
    (FAILED_PRECONDITION and the leader hint, like every redirect), not yet (UNAVAILABLE), the
    leader's own refusal (FAILED_PRECONDITION, `refusal: transfer`, no hint), not in time
    (DEADLINE_EXCEEDED) or elected again (ABORTED)."""
    code = _TRANSFER_CODES[refused.reason]
    if refused.reason is TransferRefusal.REFUSED:
        return Reply(code, refused.details, refusal=TRANSFER_REFUSAL)
    hint = refused.leader_hint
    if refused.reason is TransferRefusal.TIMED_OUT:
        hint = None
    address = "" if hint is None else address_of(hint) or ""
    return Reply(code, refused.details, hint, address)


def timeout_reply(request_kind: str) -> Reply:
    """The reply to a "get", "list", "set" or "delete" whose outcome did not arrive in time (a
    write's is unknown)."""
    details = SET_TIMEOUT_DETAILS if request_kind in ("set", "delete") else READ_TIMEOUT_DETAILS
    return Reply(grpc.StatusCode.DEADLINE_EXCEEDED, details)
