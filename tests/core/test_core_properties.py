"""Property-based: a cluster of cores under real traffic plus arbitrary adversarial messages.

Hypothesis drives three cores with arbitrary interleavings of ticks, deliveries, losses,
proposals and reads, mixed with arbitrary well-typed messages claiming to come from a member:
any field value (huge terms and indexes, inf/NaN/1e300 floats), entries whose terms go
backwards, entries conflicting with committed ones, forged replies. The core must never raise,
and after every input each node's own invariants must hold (docs/design.md §2, §8):

- its term never decreases, and its vote never changes within a term;
- its commit index never decreases, never exceeds its log, and the committed prefix of its log
  never changes;
- the terms in its log never decrease and never exceed its term;
- as leader, `0 ≤ match < next ≤ log length + 1` for every follower's Progress;
- every AppendEntries and RequestVote that passes the stateless checks gets exactly one reply
  of its kind (the shell pairs requests and replies in order, raftkv/server/replica.py).

Only per-node invariants are checked: a peer allowed to lie under a member's id can make two
nodes disagree (that is what authentication, issue 13 part 1, is for), but never crash a core
or make it rewrite what it has committed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftkv.core import events
from raftkv.core.config import TimingConfig
from raftkv.core.messages import (
    NO_OP,
    AppendEntries,
    AppendEntriesReply,
    DeleteCommand,
    Envelope,
    LogEntry,
    Message,
    RequestVote,
    RequestVoteReply,
    SetCommand,
)
from raftkv.core.node import RaftNode
from raftkv.core.validation import MAX_INDEX, MAX_TERM

CONFIG = TimingConfig(
    election_timeout_min=1.0,
    election_timeout_max=2.0,
    heartbeat_interval=0.1,
    lease_duration=0.5,
    max_clock_drift=0.01,
)
IDS = (1, 2, 3)

# Integers: mostly small (near the terms and indexes a short run reaches, where conflicts
# happen), sometimes at or past the bounds the checks enforce, or anywhere in uint64.
ints = st.one_of(
    st.integers(0, 6),
    st.integers(0, 6),
    st.sampled_from([MAX_TERM - 1, MAX_TERM, MAX_TERM + 1, 2**64 - 1]),
    st.integers(0, 2**64 - 1),
)
floats = st.one_of(
    st.just(CONFIG.lease_duration),
    st.sampled_from([0.0, -1.0, 1e300, float("inf"), float("-inf"), float("nan"), 2.0]),
    st.floats(allow_nan=True, allow_infinity=True),
)
commands = st.one_of(
    st.just(NO_OP),
    st.builds(SetCommand, st.sampled_from(["a", "b"]), st.sampled_from(["x", "y", "z"])),
    st.builds(DeleteCommand, st.sampled_from(["a", "b"])),
)
entries = st.lists(st.builds(LogEntry, st.integers(0, 6), commands), max_size=4).map(tuple)
# 9: not a member (its requests are processed, docs/design.md §13; its replies dropped).
members = st.sampled_from((*IDS, 9))

adversarial: st.SearchStrategy[Message] = st.one_of(
    st.builds(AppendEntries, ints, members, ints, ints, entries, ints, floats, ints),
    st.builds(AppendEntriesReply, ints, members, st.booleans(), ints, ints, ints),
    st.builds(RequestVote, ints, members, ints, ints),
    st.builds(RequestVoteReply, ints, members, st.booleans(), floats),
)

actions = st.one_of(
    st.tuples(st.just("tick"), st.sampled_from(IDS), st.sampled_from([0.0, 0.05, 0.3, 1.0, 2.5])),
    st.tuples(st.just("deliver"), st.integers(0, 20)),
    st.tuples(st.just("deliver"), st.integers(0, 20)),
    st.tuples(st.just("deliver"), st.integers(0, 20)),
    st.tuples(st.just("drop"), st.integers(0, 20)),
    st.tuples(st.just("propose"), st.sampled_from(IDS), commands),
    st.tuples(st.just("read"), st.sampled_from(IDS)),
    st.tuples(st.just("inject"), st.sampled_from(IDS), adversarial),
)


def plausible(node: RaftNode) -> st.SearchStrategy[Message]:
    """Messages close to what `node` expects (its term, indexes inside or just past its log,
    matching previous terms, our lease), so that conflicts with committed entries, forged
    acknowledgements and leaders of the same term actually happen, not just malformed input."""
    log = node.log.held()
    length = len(log)
    others = st.sampled_from([i for i in IDS if i != node.id])
    terms = st.integers(max(node.term, 1), node.term + 2)
    indexes = st.integers(0, length + 2)

    @st.composite
    def append(draw: st.DrawFn) -> AppendEntries:
        term = draw(terms)
        prev = draw(st.integers(0, length + 1))
        prev_term = log[prev - 1].term if 0 < prev <= length else (0 if prev == 0 else 1)
        if draw(st.booleans()):
            prev_term = draw(st.integers(0, term))
        count = draw(st.integers(0, 3))
        low = max(prev_term, 1)
        entry_terms = sorted(
            draw(st.lists(st.integers(low, max(low, term)), min_size=count, max_size=count))
        )
        new = tuple(LogEntry(t, draw(commands)) for t in entry_terms)
        lease = draw(st.sampled_from([CONFIG.lease_duration] * 4 + [1e300, 2.0]))
        return AppendEntries(
            term, draw(others), prev, prev_term, new, draw(indexes), lease, draw(st.integers(0, 9))
        )

    return st.one_of(
        append(),
        st.builds(
            AppendEntriesReply,
            terms,
            others,
            st.booleans(),
            indexes,
            indexes,
            st.integers(0, 40),
        ),
        st.builds(RequestVote, terms, others, indexes, st.integers(0, node.term + 2)),
        st.builds(RequestVoteReply, terms, others, st.booleans(), floats),
    )


@dataclass
class Snapshot:
    term: int
    voted_for: int | None
    commit_index: int
    committed: list[LogEntry] = field(default_factory=list)


class Cluster:
    def __init__(self) -> None:
        self.now = 0.0
        self.nodes = {
            i: RaftNode(i, [p for p in IDS if p != i], CONFIG, random.Random(i), 0.0) for i in IDS
        }
        self.in_flight: list[Envelope] = []
        self.tokens = 0
        self.seen = {i: self.snapshot(i) for i in IDS}

    def snapshot(self, node_id: int) -> Snapshot:
        node = self.nodes[node_id]
        return Snapshot(
            node.term, node.voted_for, node.commit_index, list(node.log.held()[: node.commit_index])
        )

    def flush(self, node_id: int) -> list[Envelope]:
        node = self.nodes[node_id]
        sent: list[Envelope] = []
        while node.has_ready():
            ready = node.take_ready()
            sent.extend(ready.messages)
            node.advance(ready)
        self.in_flight.extend(sent)
        return sent

    def step(self, node_id: int, message: Message) -> None:
        node = self.nodes[node_id]
        if node.check_message(message) is not None:
            # Refused unseen: nothing sent, persisted or changed, and the refusal reported.
            self.flush(node_id)
            before = (self.snapshot(node_id), node.log.held())
            node.step(message, self.now)
            ready = node.take_ready()
            node.advance(ready)
            assert ready.messages == () and ready.hard_state is None and not ready.log_changed
            assert any(isinstance(e, events.ProtocolViolation) for e in ready.events), message
            assert (self.snapshot(node_id), node.log.held()) == before
            return
        node.step(message, self.now)
        sent = self.flush(node_id)
        # One reply per request: the shell pairs them in order (raftkv/server/replica.py).
        expected: tuple[type[Message], int] | None = None
        if isinstance(message, AppendEntries):
            expected = (AppendEntriesReply, message.leader_id)
        elif isinstance(message, RequestVote):
            expected = (RequestVoteReply, message.candidate_id)
        if expected is not None:
            kind, sender = expected
            replies = [e for e in sent if isinstance(e.message, kind) and e.to == sender]
            assert len(replies) == 1, (message, sent)

    def deliver_everything(self) -> None:
        for _ in range(200):
            if not self.in_flight:
                return
            self.act(("deliver", 0))

    def act(self, action: tuple[object, ...]) -> list[int]:
        """Performs one action; returns the nodes it touched."""
        kind = action[0]
        if kind == "tick":
            node_id, dt = action[1], action[2]
            assert isinstance(node_id, int) and isinstance(dt, float)
            self.now += dt
            self.nodes[node_id].tick(self.now)
            self.flush(node_id)
            return [node_id]
        if kind in ("deliver", "drop"):
            if not self.in_flight:
                return []
            position = action[1]
            assert isinstance(position, int)
            envelope = self.in_flight.pop(position % len(self.in_flight))
            if kind == "drop" or envelope.to not in self.nodes:
                return []  # dropped, or the answer to a request of node 9, which is no member
            self.step(envelope.to, envelope.message)
            return [envelope.to]
        if kind == "propose":
            node_id, command = action[1], action[2]
            assert isinstance(node_id, int)
            self.tokens += 1
            self.nodes[node_id].propose(command, self.now, self.tokens)  # type: ignore[arg-type]
            self.flush(node_id)
            return [node_id]
        if kind == "read":
            node_id = action[1]
            assert isinstance(node_id, int)
            self.tokens += 1
            self.nodes[node_id].read("a", self.now, self.tokens)
            self.flush(node_id)
            return [node_id]
        node_id, message = action[1], action[2]
        assert isinstance(node_id, int)
        self.step(node_id, message)  # type: ignore[arg-type]
        return [node_id]

    def check(self, node_id: int) -> None:
        node, before = self.nodes[node_id], self.seen[node_id]
        after = self.snapshot(node_id)
        assert after.term >= before.term
        if after.term == before.term and before.voted_for is not None:
            assert after.voted_for == before.voted_for
        assert after.commit_index >= before.commit_index
        assert after.committed[: len(before.committed)] == before.committed
        assert node.commit_index <= node.log.last_index <= MAX_INDEX
        terms = [e.term for e in node.log.held()]
        assert terms == sorted(terms)
        assert not terms or (terms[0] >= 1 and terms[-1] <= node.term <= MAX_TERM)
        leader = node._leader
        if leader is not None:
            for progress in leader.progress.values():
                assert 0 <= progress.match < progress.next <= node.log.last_index + 1, progress
        self.seen[node_id] = after


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_no_input_crashes_a_core_or_breaks_its_invariants(data: st.DataObject) -> None:
    cluster = Cluster()
    for _ in range(data.draw(st.integers(0, 80), label="steps")):
        action = data.draw(actions)
        if action[0] == "inject" and data.draw(st.booleans()):
            target = action[1]
            assert isinstance(target, int)
            action = ("inject", target, data.draw(plausible(cluster.nodes[target])))
        for node_id in cluster.act(action):
            cluster.check(node_id)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(st.data())
def test_adversarial_messages_after_a_working_cluster_committed(data: st.DataObject) -> None:
    """Start from a cluster with a leader and committed entries, so that forged entries meet
    committed ones, then deliver only attacks, each followed by one real delivery."""
    cluster = Cluster()
    cluster.act(("tick", 1, 2.5))
    cluster.deliver_everything()
    for value in ("x", "y"):
        cluster.act(("propose", 1, SetCommand("a", value)))
        cluster.deliver_everything()
    cluster.act(("tick", 1, 0.1))  # a heartbeat carries the commit index to the followers
    cluster.deliver_everything()
    assert all(cluster.nodes[i].commit_index == 3 for i in IDS)
    for node_id in IDS:
        cluster.check(node_id)
    for _ in range(data.draw(st.integers(1, 30), label="attacks")):
        target = data.draw(st.sampled_from(IDS))
        node = cluster.nodes[target]
        message = data.draw(st.one_of(plausible(node), plausible(node), adversarial))
        cluster.act(("inject", target, message))
        cluster.check(target)
        if cluster.in_flight:
            for node_id in cluster.act(("deliver", 0)):
                cluster.check(node_id)
