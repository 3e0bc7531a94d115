"""What the raftkv client raises.

    RaftKVError
    ├── InvalidRequestError      the request is malformed; retrying cannot help
    ├── StaleSequenceError       a SET or DELETE was refused: its client id has a higher seq
    ├── SessionExpiredError      a SET or DELETE was refused: its client's session expired
    ├── TransferError            a leadership transfer was refused or did not complete
    └── NoLeaderError            no node could serve before the deadline
        └── UnknownOutcomeError  a SET or DELETE may or may not have been applied

Catch `UnknownOutcomeError` before `NoLeaderError`: it is the more specific (and more worrying)
case, and every `UnknownOutcomeError` is also a `NoLeaderError`.
"""

from __future__ import annotations

from collections.abc import Mapping


class RaftKVError(Exception):
    """Base class of every error the raftkv client raises on purpose."""


class InvalidRequestError(RaftKVError):
    """The request is malformed (empty or oversized key, oversized value, invalid text, ...).

    Raised before sending when the client can tell, or when a node answers INVALID_ARGUMENT.
    Never retried: every node would refuse it the same way.
    """


class StaleSequenceError(RaftKVError):
    """A node refused a SET (or DELETE: `verb` says which) because a higher sequence number of
    its client id was already applied (FAILED_PRECONDITION with `refusal: stale-sequence`, no
    leader hint).

    The write was not applied, and never will be: every replica skips it. Never retried. This
    client gives every instance its own client id (see RaftKVClient), so this means that
    another writer sent writes under the same client id, which breaks exactly-once for both.
    """

    def __init__(self, *, key: str, client_id: str, seq: int, verb: str = "SET") -> None:
        self.key = key
        self.client_id = client_id
        self.seq = seq
        self.verb = verb
        super().__init__(
            f"stale sequence number: {verb} {_preview(key)} (client {client_id}, seq {seq}) was "
            f"refused and not applied, because a higher sequence number of this client id was "
            f"already applied (is another writer using this client id?)"
        )


class SessionExpiredError(RaftKVError):
    """A node refused a SET (or DELETE: `verb` says which) because it said its session exists
    (`resume`) and the cluster had no session for its client id (FAILED_PRECONDITION with
    `refusal: session-expired`, no leader hint; docs/design.md §11): the session expired after
    `idle_minutes` without a write of that client id (or `evict_minutes`, when the cluster holds
    more sessions than its cap), or the cluster was restored from a backup older than it.

    The refused try was not applied, and the write is never retried under the old session: a
    new session would apply a retry as a new write. `applied_unknown` is False when no earlier
    try of this write can have been applied (this was its first try, or every earlier one was
    refused for certain); True when an earlier try may have been applied before the session
    went, so the write's outcome is unknown. Either way the client has started a new session
    (a new client id, seq 1), which its later calls use.
    """

    def __init__(
        self,
        *,
        key: str,
        client_id: str,
        seq: int,
        verb: str = "SET",
        applied_unknown: bool = False,
        idle_minutes: float = 15,
        evict_minutes: float = 4,
    ) -> None:
        self.key = key
        self.client_id = client_id
        self.seq = seq
        self.verb = verb
        self.applied_unknown = applied_unknown
        outcome = (
            "outcome unknown: an earlier try may have applied" if applied_unknown else "not applied"
        )
        super().__init__(
            f"session expired: {verb} {_preview(key)} (client {client_id}, seq {seq}) {outcome}; "
            f"its session expired after {idle_minutes:g} min idle ({evict_minutes:g} when the "
            f"cluster is over its session cap), or the cluster was restored from a backup (later "
            f"writes use a new session)"
        )


class TransferError(RaftKVError):
    """A leadership transfer (`transfer_leader`) was refused by the leader (no other node, a
    transfer already under way, an unknown target), or leadership did not move in time, or the
    outcome is unknown (the connection broke after the request left). The message says which;
    the cluster may still have a leader (`status()` tells)."""


class NoLeaderError(RaftKVError):
    """The deadline passed and no node served the request.

    `node_errors` maps a node label ("node 0", or an address a node pointed us to that is not in
    the cluster description) to what that node last said, in the order of the description.
    """

    def __init__(self, node_errors: Mapping[str, str], elapsed: float) -> None:
        self.node_errors: dict[str, str] = dict(node_errors)
        self.elapsed = elapsed
        super().__init__(self._describe())

    def _describe(self) -> str:
        if self.node_errors:
            said = ", ".join(f"{label} {what}" for label, what in self.node_errors.items())
        else:
            # Only when the deadline passed while the request waited behind this client's
            # earlier SETs.
            said = "no node was tried before the deadline"
        return f"no leader: {said} (gave up after {self.elapsed:.1f}s)"


class UnknownOutcomeError(NoLeaderError):
    """A SET or DELETE (`verb`) was sent but never acknowledged: it may or may not have been
    applied.

    At least one attempt ended without a definite refusal (a timeout, or a connection that broke
    after the request left). Retrying the same logical write is safe only through the same client
    instance's dedup (client_id, seq), which this client already did until the deadline; a new
    `set()` or `delete()` call is a new write.
    """

    def __init__(
        self,
        node_errors: Mapping[str, str],
        elapsed: float,
        *,
        key: str,
        client_id: str,
        seq: int,
        verb: str = "SET",
    ) -> None:
        self.key = key
        self.client_id = client_id
        self.seq = seq
        self.verb = verb
        super().__init__(node_errors, elapsed)

    def _describe(self) -> str:
        return (
            f"outcome unknown: {self.verb} {_preview(self.key)} (client {self.client_id}, seq "
            f"{self.seq}) may or may not have been applied; {super()._describe()}"
        )


def _preview(text: str, limit: int = 40) -> str:
    # Keys may be a kilobyte long; an error message only needs enough to recognise one.
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"
