"""Safety properties checked after every simulated event (Raft paper Figure 3, plus leases)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Protocol

from raftkv.core.messages import Command, DeleteCommand, LogEntry, Membership, SetCommand
from raftkv.core.node import RaftNode, Ready, Role
from raftkv.core.state_machine import (
    DEFAULT_SESSION_RULES,
    KeyValueStateMachine,
    SessionRules,
    SnapshotImage,
)

from .world import InvariantViolationError


class Disk(Protocol):
    def holds(self, index: int, entry: LogEntry) -> bool: ...


class SafetyChecker:
    def __init__(
        self,
        membership: Membership,
        sessions: SessionRules = DEFAULT_SESSION_RULES,
        *,
        honour_resume: bool = True,
    ) -> None:
        """`membership`: the cluster's first configuration."""
        self.first_membership = membership
        self.leader_of_term: dict[int, int] = {}
        # (index, term) -> (previous entry's term, command): equal keys must mean equal prefixes.
        self._entry_identity: dict[tuple[int, int], tuple[int, Command]] = {}
        # index -> entry applied there by anyone: every node must apply the same.
        self.committed: dict[int, LogEntry] = {}
        # The state machine replayed from `committed`, and its image after each index: what
        # every snapshot of that index must hold.
        self._reference = KeyValueStateMachine(rules=sessions, honour_resume=honour_resume)
        self._reference_images: dict[int, SnapshotImage] = {}
        # (client id, seq) -> the index where that write took effect.
        self._applied_writes: dict[tuple[str, int], int] = {}
        # index -> term of the leader that committed it (the first node to apply an entry is
        # the leader that committed it: followers learn of commits from leaders).
        self.committed_in_term: dict[int, int] = {}
        self._leader_seen: set[tuple[int, int]] = set()

    def on_ready(self, node_id: int, core: RaftNode, ready: Ready, now: float) -> None:
        if ready.log_changed:
            log = core.log
            for offset, entry in enumerate(ready.entries):
                index = ready.first_index + offset
                prev_term = log.term(index - 1) or 0
                identity = (prev_term, entry.command)
                known = self._entry_identity.setdefault((index, entry.term), identity)
                if known != identity:
                    raise InvariantViolationError(
                        f"log matching: node {node_id} holds {entry} at index {index} "
                        f"after term {prev_term}, another log has {known} there"
                    )
        for index, entry in ready.applied:
            self.committed_in_term.setdefault(index, core.term)
            known_entry = self.committed.setdefault(index, entry)
            if known_entry != entry:
                raise InvariantViolationError(
                    f"state machine safety: node {node_id} applied {entry} at index {index}, "
                    f"another node applied {known_entry}"
                )

        self._replay_committed()
        for image, how in ((ready.snapshot, "took"), (ready.installed, "installed")):
            if image is not None:
                self.check_snapshot(node_id, image, how)

    def _replay_committed(self) -> None:
        """Advance the reference machine over the committed entries known in order, checking
        exactly-once on the way: a client write (id, seq) takes effect at most once, however
        often it was retried, and however long after (docs/design.md §11)."""
        while (index := len(self._reference_images) + 1) in self.committed:
            entry = self.committed[index]
            effect = self._reference.apply(entry.command, index, entry.time)
            self._reference_images[index] = self._reference.image(index, entry.term)
            command = entry.command
            if (
                effect == index
                and isinstance(command, SetCommand | DeleteCommand)
                and command.client_id
            ):
                write = (command.client_id, command.seq)
                first = self._applied_writes.setdefault(write, index)
                if first != index:
                    raise InvariantViolationError(
                        f"exactly-once: client {command.client_id} seq {command.seq} took "
                        f"effect at index {first} and again at index {index}"
                    )

    def check_snapshot(self, node_id: int, image: SnapshotImage, how: str) -> None:
        """A snapshot at index I holds exactly the state of the committed entries 1..I."""
        self._replay_committed()
        if len(self._reference_images) < image.index:
            missing = len(self._reference_images) + 1
            raise InvariantViolationError(
                f"snapshot content: node {node_id} {how} a snapshot at index {image.index}, "
                f"but entry {missing} is not known to be committed"
            )
        expected = self._reference_images[image.index]
        if (image.term, image.data, image.sessions, image.cluster_time, image.membership) != (
            expected.term,
            expected.data,
            expected.sessions,
            expected.cluster_time,
            expected.membership,
        ):
            raise InvariantViolationError(
                f"snapshot content: node {node_id} {how} a snapshot at index {image.index} "
                f"(term {image.term}, {len(image.data)} keys) that differs from the committed "
                f"entries replayed (term {expected.term}, {len(expected.data)} keys)"
            )

    def on_step(self, node_id: int, core: RaftNode) -> None:
        if core.role is not Role.LEADER:
            return
        holder = self.leader_of_term.setdefault(core.term, node_id)
        if holder != node_id:
            raise InvariantViolationError(
                f"election safety: nodes {holder} and {node_id} both led term {core.term}"
            )
        if (node_id, core.term) not in self._leader_seen:
            self._leader_seen.add((node_id, core.term))
            self._check_leader_completeness(node_id, core)

    def _check_leader_completeness(self, node_id: int, core: RaftNode) -> None:
        # Figure 3: an entry committed in term T is in the log of every leader of a term > T.
        log = core.log
        for index, entry in self.committed.items():
            if self.committed_in_term[index] >= core.term:
                continue
            if index <= log.offset:
                continue  # compacted: covered by the snapshot (checked when it is made)
            if index > log.last_index or log.entry(index) != entry:
                raise InvariantViolationError(
                    f"leader completeness: node {node_id}, leader of term {core.term}, lacks "
                    f"committed entry {entry} at index {index}"
                )

    def check_leases(self, holders: Iterable[int], real_now: float) -> None:
        holders = list(holders)
        if len(holders) > 1:
            raise InvariantViolationError(
                f"lease safety: nodes {holders} all hold a valid lease at real time {real_now:.6f}"
            )

    def check_lease_against_read_index(
        self,
        lease_holders: Iterable[tuple[int, int]],
        committing_leaders: Iterable[tuple[int, int]],
        real_now: float,
    ) -> None:
        """While a node may serve reads from its lease, no leader of a later term may have
        committed anything: the lease reads would miss its writes. In a cluster of one read
        mode this is the lease check above (or nothing); it matters while a rolling change
        switches nodes between lease and read_index, whose leaders wait for no old lease.
        Both arguments are (node, term) pairs."""
        committing = list(committing_leaders)
        for holder, holder_term in lease_holders:
            for leader, leader_term in committing:
                if leader != holder and leader_term > holder_term:
                    raise InvariantViolationError(
                        f"lease safety: node {holder} holds a lease of term {holder_term} while "
                        f"node {leader}, a read_index leader of term {leader_term}, has "
                        f"committed in its term, at real time {real_now:.6f}"
                    )

    def check_durability(self, disks: Mapping[int, Disk], wiped: Collection[int] = ()) -> None:
        """Every committed entry is durable on a majority. A wiped node (disk replaced, not yet
        restored from a peer) lost its copy for real; it is counted as a holder all the same,
        because Raft keeps an entry that was on a majority as long as at most a minority is
        wiped at a time (and the wiped nodes stay out of elections until restored): what must
        not happen is a loss beyond the wiped disks."""
        # The voters of the last configuration known committed: an entry must be on enough of
        # them that every majority of them holds it (a candidate lacking it then lacks a vote).
        # For an odd number of voters that is a majority; for an even number one fewer: two
        # of four, while a change to five (committed by three of five) is in force.
        voters = (self._reference.membership or self.first_membership).voters
        quorum = len(voters) - (len(voters) // 2 + 1) + 1
        for index, entry in self.committed.items():
            holders = [
                node_id
                for node_id, disk in disks.items()
                if node_id in voters and disk.holds(index, entry)
            ]
            if len(set(holders) | (set(wiped) & voters)) < quorum:
                lost = f" (wiped: {sorted(wiped)})" if wiped else ""
                raise InvariantViolationError(
                    f"durability: committed entry {entry} at index {index} is durable only on "
                    f"nodes {holders}{lost}: a majority of the voters {sorted(voters)} "
                    "lacks it"
                )
