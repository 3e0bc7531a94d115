"""What a node reports happening, as typed values.

Each event is a frozen class whose `str()` is the sentence the node writes to its dump file
(the original assignment's sentences kept word for word where it has one). The same template
parses a dump line back into the event (`parse`), so that the log review and the tests match
on classes and fields instead of on copied regular expressions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import ClassVar

from .messages import Command, DeleteCommand, MembershipCommand, NoOpCommand

_FIELD = re.compile(r"\{(\w+)\}")
_PATTERNS = {
    "int": r"-?\d+",
    "float": r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|inf|nan",
    "str": r".*?",
}
_CONVERT = {"int": int, "float": float, "str": str}


def describe_command(command: Command) -> str:
    """A command as the assignment prints it: `SET {key} {value}` or `NO-OP`; and ours,
    `DELETE {key}` (the key is the rest of the text, so it parses back like a SET's)."""
    if isinstance(command, NoOpCommand):
        return "NO-OP"
    if isinstance(command, DeleteCommand):
        return f"DELETE {command.key}"
    if isinstance(command, MembershipCommand):
        return f"MEMBERSHIP {command.change or '-'}: {command.membership.describe()}"
    return f"SET {command.key} {command.value}"


@dataclass(frozen=True, slots=True)
class Event:
    """Base class. `TEMPLATE` names the fields in braces; every field is an int, float or str."""

    TEMPLATE: ClassVar[str] = ""
    # Each class's parser, built from its template on first use.
    _compiled: ClassVar[re.Pattern[str] | None] = None

    def __str__(self) -> str:
        return self.TEMPLATE.format(**{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def regex(cls) -> re.Pattern[str]:
        compiled = cls.__dict__.get("_compiled")
        if compiled is None:
            kinds = {f.name: str(f.type) for f in fields(cls)}
            parts, position = [], 0
            for match in _FIELD.finditer(cls.TEMPLATE):
                parts.append(re.escape(cls.TEMPLATE[position : match.start()]))
                name = match.group(1)
                parts.append(f"(?P<{name}>{_PATTERNS[kinds[name]]})")
                position = match.end()
            parts.append(re.escape(cls.TEMPLATE[position:]))
            compiled = re.compile("^" + "".join(parts) + "$", re.DOTALL)
            type.__setattr__(cls, "_compiled", compiled)
        return compiled

    @classmethod
    def match(cls, text: str) -> Event | None:
        found = cls.regex().match(text)
        if found is None:
            return None
        kinds = {f.name: str(f.type) for f in fields(cls)}
        values = {name: _CONVERT[kinds[name]](value) for name, value in found.groupdict().items()}
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Restored(Event):
    TEMPLATE: ClassVar[str] = (
        "Node {node} restored {entries} log entries, {applied} applied from the commit hint."
    )
    node: int
    entries: int
    applied: int


@dataclass(frozen=True, slots=True)
class ElectionTimeout(Event):
    TEMPLATE: ClassVar[str] = "Node {node} election timer timed out, Starting election."
    node: int


@dataclass(frozen=True, slots=True)
class VoteGranted(Event):
    TEMPLATE: ClassVar[str] = "Vote granted for Node {candidate} in term {term}."
    candidate: int
    term: int


@dataclass(frozen=True, slots=True)
class VoteDenied(Event):
    TEMPLATE: ClassVar[str] = "Vote denied for Node {candidate} in term {term}."
    candidate: int
    term: int


@dataclass(frozen=True, slots=True)
class BecameLeader(Event):
    TEMPLATE: ClassVar[str] = "Node {node} became the leader for term {term}."
    node: int
    term: int


@dataclass(frozen=True, slots=True)
class WaitingForOldLease(Event):
    """docs/design.md §3 rule 3: a new leader appends nothing until every old lease has ended."""

    TEMPLATE: ClassVar[str] = "New Leader waiting for Old Leader Lease to timeout."


@dataclass(frozen=True, slots=True)
class SendingHeartbeat(Event):
    TEMPLATE: ClassVar[str] = "Leader {node} sending heartbeat & Renewing Lease"
    node: int


@dataclass(frozen=True, slots=True)
class LeaseRenewalFailed(Event):
    """docs/design.md §3 rule 5."""

    TEMPLATE: ClassVar[str] = "Leader {node} lease renewal failed. Stepping Down."
    node: int


@dataclass(frozen=True, slots=True)
class SteppingDown(Event):
    TEMPLATE: ClassVar[str] = "Leader {node} Stepping down (term {term})."
    node: int
    term: int


@dataclass(frozen=True, slots=True)
class ReceivedRequest(Event):
    TEMPLATE: ClassVar[str] = "Node {node} (leader) received a {command} request."
    node: int
    command: str


@dataclass(frozen=True, slots=True)
class AppendAccepted(Event):
    TEMPLATE: ClassVar[str] = "Node {node} accepted AppendEntries RPC from {leader}."
    node: int
    leader: int


@dataclass(frozen=True, slots=True)
class AppendRejected(Event):
    TEMPLATE: ClassVar[str] = "Node {node} rejected AppendEntries RPC from {leader}."
    node: int
    leader: int


@dataclass(frozen=True, slots=True)
class Committed(Event):
    TEMPLATE: ClassVar[str] = (
        "Node {node} ({role}) committed the entry {command} to the state machine."
    )
    node: int
    role: str
    command: str


@dataclass(frozen=True, slots=True)
class LeaseMismatch(Event):
    """The leader's lease differs from this node's flags: the follower honours the leader's
    (rule 2), so a rolling change of the lease is safe (docs/design.md §3)."""

    TEMPLATE: ClassVar[str] = (
        "Configuration notice: leader {leader} uses lease {lease}s, this node {own}s; "
        "honouring the leader's lease."
    )
    leader: int
    lease: float
    own: float


@dataclass(frozen=True, slots=True)
class CheckQuorumFailed(Event):
    """CheckQuorum (Raft thesis §6.2): no majority answered for a whole election timeout."""

    TEMPLATE: ClassVar[str] = (
        "Leader {node} has not heard from a majority for {seconds}s. Stepping Down."
    )
    node: int
    seconds: float


@dataclass(frozen=True, slots=True)
class PreVoteStarted(Event):
    TEMPLATE: ClassVar[str] = "Node {node} asking for pre-votes for term {term}."
    node: int
    term: int


@dataclass(frozen=True, slots=True)
class VoteIgnored(Event):
    """A vote or pre-vote request refused because this node still hears from a leader (the
    leader stickiness of Raft thesis §4.2.3 / §9.6): it changes nothing, not even the term."""

    TEMPLATE: ClassVar[str] = (
        "Node {node} ignored a {kind} request from Node {candidate} for term {term}: "
        "it heard from leader {leader} within the minimum election timeout."
    )
    node: int
    kind: str
    candidate: int
    term: int
    leader: int


@dataclass(frozen=True, slots=True)
class TransferStarted(Event):
    TEMPLATE: ClassVar[str] = (
        "Leader {node} transferring leadership to Node {target} (term {term}); "
        "it serves no more lease reads in this term."
    )
    node: int
    target: int
    term: int


@dataclass(frozen=True, slots=True)
class TransferAborted(Event):
    TEMPLATE: ClassVar[str] = (
        "Leader {node} gave up transferring leadership to Node {target}. Stepping Down."
    )
    node: int
    target: int


@dataclass(frozen=True, slots=True)
class TimeoutNowReceived(Event):
    TEMPLATE: ClassVar[str] = (
        "Node {node} was asked by leader {leader} to take over; starting election for term {term}."
    )
    node: int
    leader: int
    term: int


@dataclass(frozen=True, slots=True)
class NotAdmitted(Event):
    """The node's data directory is new but its cluster already exists (docs/design.md §8)."""

    TEMPLATE: ClassVar[str] = (
        "Node {node} has an empty data directory but its cluster already exists: it will not "
        "vote, acknowledge entries or campaign until it is re-admitted."
    )
    node: int


@dataclass(frozen=True, slots=True)
class PeerReplaced(Event):
    """A follower answered with a new incarnation: its old log and acknowledgements are gone."""

    TEMPLATE: ClassVar[str] = (
        "Node {node} sees Node {peer} with a new data directory (incarnation {new}, was {old}); "
        "it counts none of the old one's entries."
    )
    node: int
    peer: int
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class SnapshotLoaded(Event):
    TEMPLATE: ClassVar[str] = (
        "Node {node} started from its snapshot at index {index} (term {term}), "
        "{entries} log entries after it."
    )
    node: int
    index: int
    term: int
    entries: int


@dataclass(frozen=True, slots=True)
class SnapshotSaved(Event):
    """A snapshot of the state machine is durable; the log may be compacted up to it."""

    TEMPLATE: ClassVar[str] = "Node {node} saved a snapshot at index {index} (term {term})."
    node: int
    index: int
    term: int


@dataclass(frozen=True, slots=True)
class SnapshotFailed(Event):
    """Writing a snapshot failed; the log is kept whole and the node tries again later."""

    TEMPLATE: ClassVar[str] = "Node {node} could not save a snapshot at index {index}: {reason}"
    node: int
    index: int
    reason: str


@dataclass(frozen=True, slots=True)
class LogCompacted(Event):
    TEMPLATE: ClassVar[str] = (
        "Node {node} compacted its log: it now starts after index {index} (term {term})."
    )
    node: int
    index: int
    term: int


@dataclass(frozen=True, slots=True)
class SnapshotSending(Event):
    TEMPLATE: ClassVar[str] = (
        "Leader {node} sending its snapshot at index {index} (term {term}) to Node {peer}: "
        "the entries it needs were compacted."
    )
    node: int
    peer: int
    index: int
    term: int


@dataclass(frozen=True, slots=True)
class SnapshotSendFailed(Event):
    TEMPLATE: ClassVar[str] = "Leader {node} could not send its snapshot to Node {peer}."
    node: int
    peer: int


@dataclass(frozen=True, slots=True)
class SnapshotInstalled(Event):
    TEMPLATE: ClassVar[str] = (
        "Node {node} installed the leader's snapshot at index {index} (term {term}), "
        "replacing its state and log."
    )
    node: int
    index: int
    term: int


@dataclass(frozen=True, slots=True)
class ProtocolViolation(Event):
    """A peer's message that breaks the protocol; the core dropped it unseen."""

    TEMPLATE: ClassVar[str] = "Node {node} dropped a malformed message from {sender}: {reason}"
    node: int
    sender: int
    reason: str


@dataclass(frozen=True, slots=True)
class TermExhausted(Event):
    """The node is at validation.MAX_TERM: a next term could not be represented, so it does not
    campaign (docs/design.md §8). Only a buggy or hostile peer can bring a node here."""

    TEMPLATE: ClassVar[str] = (
        "Node {node} is at the highest term {term} and cannot start an election."
    )
    node: int
    term: int


CORE_EVENTS: tuple[type[Event], ...] = (
    Restored,
    ElectionTimeout,
    VoteGranted,
    VoteDenied,
    BecameLeader,
    WaitingForOldLease,
    SendingHeartbeat,
    LeaseRenewalFailed,
    SteppingDown,
    ReceivedRequest,
    AppendAccepted,
    AppendRejected,
    Committed,
    LeaseMismatch,
    ProtocolViolation,
    TermExhausted,
    CheckQuorumFailed,
    PreVoteStarted,
    VoteIgnored,
    TransferStarted,
    TransferAborted,
    TimeoutNowReceived,
    NotAdmitted,
    PeerReplaced,
)


def parse(text: str) -> Event | None:
    """The core event whose sentence `text` is, or None."""
    for kind in CORE_EVENTS:
        event = kind.match(text)
        if event is not None:
            return event
    return None


# Membership (docs/design.md §13)


@dataclass(frozen=True, slots=True)
class MembershipAppended(Event):
    """A configuration entry entered this node's log: in force here from now on."""

    TEMPLATE: ClassVar[str] = (
        "Node {node} uses the configuration of entry {index} ({change}): {members}."
    )
    node: int
    index: int
    change: str
    members: str


@dataclass(frozen=True, slots=True)
class MembershipReverted(Event):
    """The configuration entry was overwritten (a log truncation): the previous one is back."""

    TEMPLATE: ClassVar[str] = (
        "Node {node} dropped the configuration of entry {index}; back to: {members}."
    )
    node: int
    index: int
    members: str


@dataclass(frozen=True, slots=True)
class RemovedLeaderSteppingDown(Event):
    TEMPLATE: ClassVar[str] = (
        "Leader {node} is no longer a voter (entry {index} committed). Stepping Down."
    )
    node: int
    index: int


@dataclass(frozen=True, slots=True)
class MembershipCommitted(Event):
    TEMPLATE: ClassVar[str] = (
        "Node {node} committed the configuration of entry {index} ({change}): {members}."
    )
    node: int
    index: int
    change: str
    members: str
