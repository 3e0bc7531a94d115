"""Real processes on loopback: elections, replication, crashes, leases, the assignment's client.

Every wait polls a condition against a deadline (LocalCluster.wait_for); no sleep stands in for
synchronisation. Times compared with dump.txt are wall-clock (its ISO timestamps), measured on
the same machine as the nodes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
import pytest
from grpc_tools import protoc

from raftkv.client.status import NodeStatusRow, format_status_table
from raftkv.core import events as ev
from raftkv.core.messages import SetCommand
from raftkv.rpc import raftkv_pb2 as pb
from raftkv_tools.localcluster import Layout, elected_leader, is_node_process, read_pid
from raftkv_tools.ports import free_ports
from tests.process.conftest import ClusterFactory
from tests.support.processes import (
    LocalCluster,
    NotYet,
    rpc_code,
)

pytestmark = [pytest.mark.timeout(120)]

REPO_ROOT = Path(__file__).resolve().parents[2]
NOOP_LINE = re.compile(r"NO-OP (\d+) index=[1-9][0-9]* crc=[0-9a-f]{8}")
# The leader answers refused requests with these codes (see proto/raftkv.proto).
REFUSED = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE}


def set_values(cluster: LocalCluster, node_id: int) -> dict[str, str]:
    """key → last value, from the SET lines of a node's logs.txt."""
    values = {}
    for entry in cluster.log_entries(node_id):
        if isinstance(entry.command, SetCommand):
            values[entry.command.key] = entry.command.value
    return values


def refused_code(call: Callable[[], object]) -> grpc.StatusCode | None:
    """Run an RPC that must fail; return its status code (None if it succeeded)."""
    try:
        call()
    except grpc.RpcError as error:
        return rpc_code(error)
    return None


# ---------------------------------------------------------------------------------------------
# a. election and the NO-OP


def test_leader_elected_and_noop_in_every_log(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(5).start()

    def leader_and_term(leader: int) -> tuple[int, int]:
        status = cluster.status(leader)
        if status is None or status.role != "leader":
            raise NotYet(f"node {leader} no longer leads")
        return leader, status.term

    leader, term = cluster.at_leader(leader_and_term, what="the leader's term")
    assert ev.BecameLeader(leader, term) in cluster.core_events(leader)

    def noop_terms(node: int) -> list[int]:
        lines = cluster.log_lines(node)
        return [int(m.group(1)) for line in lines if (m := NOOP_LINE.fullmatch(line))]

    # The leader served a GET, so its NO-OP is committed: every log gets it, and keeps it.
    for node in cluster.ids:

        def holds_noop(node: int = node) -> bool:
            return term in noop_terms(node)

        cluster.wait_for(holds_noop, 10, f"node {node}'s logs.txt to hold the NO-OP of term {term}")
    # Nothing else was written: every log is the same run of NO-OPs (one per elected leader).
    cluster.wait_for(
        lambda: len({tuple(cluster.log_lines(n)) for n in cluster.ids}) == 1,
        10,
        "every node's logs.txt to be identical",
    )
    assert all(NOOP_LINE.fullmatch(line) for line in cluster.log_lines(leader))


# ---------------------------------------------------------------------------------------------
# b. SET/GET on both APIs; lease reads cost no round


def test_set_get_both_apis(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3).start()

    # Each step runs at the current leader, and again at the next one should leadership move
    # (a busy machine can starve a leader of its lease); the values must hold regardless.
    def typed(leader: int) -> bool:
        assert cluster.set(leader, "alpha", "1").index > 0
        assert cluster.get(leader, "alpha") == pb.GetResponse(found=True, value="1")
        return True

    def assignment(leader: int) -> bool:
        for request, data in (("SET beta two words", ""), ("GET beta", "two words")):
            reply = cluster.serve_client(leader, request)
            if not reply.Success:
                raise NotYet(f"{request!r} at node {leader}: {reply.Data}")
            assert (reply.Data, reply.LeaderID) == (data, str(leader))
        return True

    def each_sees_the_other(leader: int) -> bool:
        # An absent key is found=False on KeyValue and Success with Data "" on ServeClient.
        replies = [cluster.serve_client(leader, f"GET {k}") for k in ("alpha", "absent")]
        if not all(r.Success for r in replies):
            raise NotYet(f"GET at node {leader}: {[r.Data for r in replies]}")
        assert [r.Data for r in replies] == ["1", ""]
        assert cluster.get(leader, "beta") == pb.GetResponse(found=True, value="two words")
        assert cluster.get(leader, "absent") == pb.GetResponse(found=False, value="")
        return True

    def follower_names_leader(leader: int) -> bool:
        follower = next(n for n in cluster.ids if n != leader)
        reply = cluster.serve_client(follower, "GET alpha")
        try:
            cluster.get(follower, "alpha")
        except grpc.RpcError as error:
            code, metadata = rpc_code(error), dict(error.trailing_metadata() or ())
        else:
            raise NotYet(f"node {follower} answered a GET: it leads now")
        if reply.Success:
            raise NotYet(f"node {follower} answered a GET: it leads now")
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        named = (reply.LeaderID, metadata.get("leader-id"), metadata.get("leader-address"))
        if named != (str(leader), str(leader), cluster.nodes[leader].address):
            raise NotYet(f"follower {follower} names {named}, the leader is {leader}")
        return True

    cluster.at_leader(typed, what="typed SET and GET")
    cluster.at_leader(assignment, what="ServeClient SET and GET")
    cluster.at_leader(each_sees_the_other, what="each API to see the other's writes")
    cluster.at_leader(follower_names_leader, what="a follower to refuse, naming the leader")


def test_exactly_once_answers_a_retry_its_index_and_refuses_a_stale_seq(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(3).start()

    def set_five(leader: int) -> int:
        return cluster.set(leader, "k", "five", client_id="writer", seq=5).index

    # The same (client id, seq) twice: the second is a retry, answered with the first's index
    # (at_leader repeats a SET whose answer was lost; dedup makes that harmless too).
    first = cluster.at_leader(set_five, what="SET seq 5")
    again = cluster.at_leader(set_five, what="SET seq 5 again")
    assert again == first > 0

    def set_three(leader: int) -> grpc.RpcError:
        try:
            reply = cluster.set(leader, "k", "three", client_id="writer", seq=3)
        except grpc.RpcError as error:
            metadata = dict(error.trailing_metadata() or ())
            if rpc_code(error) == grpc.StatusCode.FAILED_PRECONDITION and "refusal" in metadata:
                return error
            raise
        raise AssertionError(f"a SET below the applied seq was acknowledged: {reply}")

    refused = cluster.at_leader(set_three, what="SET seq 3 to be refused")
    assert refused.details() == (
        "stale sequence number: a higher sequence number of this client id was already "
        "applied, so this SET was not applied"
    )
    assert dict(refused.trailing_metadata()) == {"refusal": "stale-sequence"}

    def value(leader: int) -> pb.GetResponse:
        return cluster.get(leader, "k")

    assert cluster.at_leader(value, what="GET k") == pb.GetResponse(found=True, value="five")


def pipeline(
    cluster: LocalCluster, node_id: int, *requests: pb.PipelineRequest
) -> dict[int, pb.PipelineReply]:
    """One KeyValue.Pipeline stream: send `requests` in one message, half-close, collect every
    reply by tag (the server ends the stream once all are answered)."""
    batches = cluster.kv(node_id).Pipeline(
        iter([pb.PipelineRequests(requests=requests)]), timeout=10
    )
    replies: dict[int, pb.PipelineReply] = {}
    for batch in batches:
        for reply in batch.replies:
            assert reply.tag not in replies, f"tag {reply.tag} answered twice"
            replies[reply.tag] = reply
    assert sorted(replies) == sorted(r.tag for r in requests)
    return replies


def test_pipeline_stream_serves_validates_and_redirects(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3).start()
    invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]

    def writes_then_reads(leader: int) -> bool:
        first = pipeline(
            cluster,
            leader,
            pb.PipelineRequest(tag=1, set=pb.SetRequest(key="p", value="1", client_id="c", seq=1)),
            pb.PipelineRequest(tag=2, set=pb.SetRequest(key="q", value="2 words")),
        )
        if any(r.code for r in first.values()):
            raise NotYet(f"SETs at node {leader}: {[r.details for r in first.values()]}")
        assert 0 < first[1].index < first[2].index
        second = pipeline(
            cluster,
            leader,
            pb.PipelineRequest(tag=10, get=pb.GetRequest(key="p")),
            pb.PipelineRequest(tag=11, get=pb.GetRequest(key="q")),
            pb.PipelineRequest(tag=12, get=pb.GetRequest(key="absent")),
        )
        if any(r.code for r in second.values()):
            raise NotYet(f"GETs at node {leader}: {[r.details for r in second.values()]}")
        assert [(second[t].found, second[t].value) for t in (10, 11, 12)] == [
            (True, "1"),
            (True, "2 words"),
            (False, ""),
        ]
        # A retried (client_id, seq) is acknowledged but applied only once.
        retry = pb.SetRequest(key="p", value="retried", client_id="c", seq=1)
        third = pipeline(cluster, leader, pb.PipelineRequest(tag=20, set=retry))
        if third[20].code:
            raise NotYet(f"retried SET at node {leader}: {third[20].details}")
        fourth = pipeline(cluster, leader, pb.PipelineRequest(tag=30, get=pb.GetRequest(key="p")))
        if fourth[30].code:
            raise NotYet(f"GET at node {leader}: {fourth[30].details}")
        assert fourth[30].value == "1"
        return True

    def follower_names_leader(leader: int) -> bool:
        follower = next(n for n in cluster.ids if n != leader)
        replies = pipeline(
            cluster,
            follower,
            pb.PipelineRequest(tag=1, get=pb.GetRequest(key="p")),
            pb.PipelineRequest(tag=2, set=pb.SetRequest(key="p", value="x")),
        )
        for reply in replies.values():
            if reply.code != grpc.StatusCode.FAILED_PRECONDITION.value[0]:
                raise NotYet(f"node {follower} answered {reply}: it leads now")
            named = (reply.leader_id, reply.leader_address)
            if named != (leader, cluster.nodes[leader].address):
                raise NotYet(f"follower {follower} names {named}, the leader is {leader}")
        return True

    cluster.at_leader(writes_then_reads, what="Pipeline SETs then GETs")
    cluster.at_leader(follower_names_leader, what="a follower to refuse, naming the leader")

    leader = cluster.leader()
    bad = pipeline(
        cluster,
        leader,
        pb.PipelineRequest(tag=1, get=pb.GetRequest(key="")),
        pb.PipelineRequest(tag=2, get=pb.GetRequest(key="k" * 2048)),
        pb.PipelineRequest(tag=3, set=pb.SetRequest(key="a", value="x" * (2 * 1024 * 1024))),
        pb.PipelineRequest(tag=4, set=pb.SetRequest(key="a", value="v", client_id="c")),
        pb.PipelineRequest(tag=5),
    )
    assert {tag: reply.code for tag, reply in bad.items()} == dict.fromkeys(range(1, 6), invalid)
    assert "the key is 2048 bytes; the limit is 1024" in bad[2].details
    assert "the value is 2097152 bytes" in bad[3].details
    assert all(cluster.nodes[n].running for n in cluster.ids)
    assert cluster.read("a") is None


@dataclass(frozen=True)
class Burst:
    leader: int
    start: float
    end: float


def test_lease_reads_add_no_rounds(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3).start()
    cluster.write("alpha", "1")
    heartbeat = cluster.timing.heartbeat_interval

    def burst(leader: int) -> Burst:
        """200 GETs at once; all must be answered by this leader (else: again, at the next)."""
        stub = cluster.kv(leader)
        start = time.time()
        calls = [stub.Get.future(pb.GetRequest(key="alpha"), timeout=5) for _ in range(200)]
        answers = [call.result() for call in calls]
        end = time.time()
        assert all(a.value == "1" for a in answers)
        return Burst(leader, start, end)

    done = cluster.at_leader(burst, what="a burst of 200 GETs answered by one leader")
    leader, start, end = done.leader, done.start, done.end
    # A dump is written in order: once it has a line from after `end`, it has everything the
    # node logged during the burst.
    cluster.wait_for(
        lambda: all(any(e.when > end for e in cluster.dump_events(n)) for n in cluster.ids),
        5,
        "every node to log something after the GET burst",
    )
    # The heartbeats logged during the burst are explained by time alone: +1 for the first
    # one, +1 for a timestamp taken late (a descheduled node), against ~200 if GETs caused them.
    beat = ev.SendingHeartbeat(leader)
    beats = [e for e in cluster.dump_events(leader) if e.event == beat and start <= e.when <= end]
    allowed = (end - start) / heartbeat + 2
    assert len(beats) <= allowed, (
        f"{len(beats)} heartbeats during a {end - start:.3f}s burst of 200 GETs; "
        f"time alone explains at most {allowed:.1f}"
    )
    # Nor did the GETs start rounds that are not logged as heartbeats (read_index mode does,
    # about one per GET): a round is one AppendEntries to each follower. +3 allows for
    # messages delayed into the burst.
    for node in cluster.ids:
        if node != leader:
            accepted = ev.AppendAccepted(node, leader)
            rounds = [
                e
                for e in cluster.dump_events(node)
                if start <= e.when <= end and e.event == accepted
            ]
            assert len(rounds) <= (end - start) / heartbeat + 3, (
                f"follower {node} received {len(rounds)} AppendEntries during the GET burst"
            )


# ---------------------------------------------------------------------------------------------
# c. followers catch up after kill -9


def test_killed_followers_catch_up_after_restart(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(5).start()
    leader = cluster.leader()
    victims = [n for n in cluster.ids if n != leader][:2]
    cluster.write("before", "0")
    cluster.wait_for(
        lambda: all(set_values(cluster, v).get("before") == "0" for v in victims),
        5,
        "the first SET on every follower",
    )
    for victim in victims:
        cluster.kill_node(victim)

    written = {f"key{i}": f"value {i}" for i in range(10)}
    for key, value in written.items():
        cluster.write(key, value)
    for victim in victims:
        assert not set(written) & set(set_values(cluster, victim)), "a dead node's log grew"

    for victim in victims:
        cluster.start_node(victim)
    for victim in victims:

        def caught_up(victim: int = victim) -> bool:
            return set_values(cluster, victim).items() >= written.items()

        cluster.wait_for(
            caught_up, 20, f"restarted node {victim}'s logs.txt to hold the SETs it missed"
        )
    leader = cluster.leader(20)
    # ...and they are committed there, not merely stored.
    length = len(cluster.log_lines(leader))
    cluster.wait_for(
        lambda: all(
            (s := cluster.status(v)) is not None and s.commit_length >= length for v in victims
        ),
        10,
        f"the restarted followers to commit {length} entries",
    )
    assert cluster.read("key9") == "value 9"


# ---------------------------------------------------------------------------------------------
# d. failover waits out the old leader's lease


def leading(cluster: LocalCluster, min_lease: float = 0.0) -> Callable[[int], tuple[int, int]]:
    """An at_leader action: (leader, term), once the leader holds more than `min_lease`."""

    def check(leader: int) -> tuple[int, int]:
        status = cluster.status(leader)
        if status is None or status.role != "leader" or status.lease_remaining <= min_lease:
            raise NotYet(f"node {leader} does not lead with a lease over {min_lease}s")
        return leader, status.term

    return check


@pytest.mark.slow
def test_new_leader_waits_for_old_lease_and_old_leader_rejoins(
    make_cluster: ClusterFactory,
) -> None:
    lease = 2.0  # longer than the fast profile's election timeout (0.4-0.8 s)
    cluster = make_cluster(3, lease=lease).start()
    cluster.write("k", "before", timeout=20)
    old, old_term = cluster.at_leader(leading(cluster), 20, "the leader to kill")
    survivors = [n for n in cluster.ids if n != old]

    before_kill = time.time()
    cluster.kill_node(old)

    refusals: list[tuple[int, float, str]] = []

    def served_somewhere() -> tuple[int, float] | None:
        for node in survivors:
            sent = time.time()
            try:
                answer = cluster.get(node, "k", timeout=0.5)
            except grpc.RpcError as error:
                refusals.append((node, sent, str(rpc_code(error))))
                continue
            assert answer.value == "before"
            return node, sent
        return None

    new, first_served = cluster.wait_for(served_somewhere, 15, "a GET served by a new leader")

    events = cluster.dump_events(new)
    elections = [
        (e.when, e.event.term)
        for e in events
        if isinstance(e.event, ev.BecameLeader) and e.event.node == new and e.when < first_served
    ]
    became_at, became_term = elections[-1]
    assert became_term > old_term
    # The new leader heard the old one last at `heard`; a lease that was running then could
    # last until heard + lease. No GET may succeed before that (sending time ≤ serving time;
    # 0.3 s covers the delay between receiving that message and logging it, on a busy machine;
    # a new leader that skipped the wait serves about `lease` - 0.8 s after `heard`).
    heard = max(
        e.when for e in events if e.event == ev.AppendAccepted(new, old) and e.when <= became_at
    )
    assert heard >= before_kill - 1.0, "the new leader had not heard the old one for a while"
    assert first_served >= heard + lease - 0.3, (
        f"a GET succeeded at node {new} {first_served - heard:.3f}s after it last heard the old "
        f"leader, before a {lease}s lease could have ended"
    )
    assert any(e.event == ev.WaitingForOldLease() and e.when >= became_at for e in events), (
        f"node {new}'s dump lacks {str(ev.WaitingForOldLease())!r} after it became leader"
    )
    assert any(node == new for node, _, _ in refusals), "the new leader never refused a GET"

    # The old leader, restarted, rejoins as a follower of the current leader.
    cluster.start_node(old)

    def old_follows() -> bool:
        status = cluster.status(old)
        return (
            status is not None
            and status.role == "follower"
            and status.term > old_term
            and status.HasField("leader_id")
            and status.leader_id != old
        )

    cluster.wait_for(old_follows, 30, f"the restarted old leader {old} to follow a new leader")
    cluster.write("k", "after", timeout=30)
    cluster.wait_for(
        lambda: set_values(cluster, old).get("k") == "after",
        15,
        "the rejoined old leader to receive a new SET",
    )


# ---------------------------------------------------------------------------------------------
# e. a leader cut off from its majority serves until its lease ends, then steps down


def test_isolated_leader_serves_until_lease_ends_then_steps_down(
    make_cluster: ClusterFactory,
) -> None:
    lease = 1.0
    cluster = make_cluster(3, lease=lease).start()
    cluster.write("k", "v")
    span = cluster.timing.leader_lease_span
    leader, _ = cluster.at_leader(leading(cluster, span / 2), what="a leader with a fresh lease")
    # Rule 5 (the lease lapsed), or CheckQuorum when no majority answered for the minimum
    # election timeout (0.4 s), which comes first with this lease.
    check_quorum = cluster.timing.election_timeout_min
    step_downs = (ev.LeaseRenewalFailed(leader), ev.CheckQuorumFailed(leader, check_quorum))

    before_kill = time.time()
    for node in cluster.ids:
        if node != leader:
            cluster.kill_node(node)
    killed = time.time()

    served: list[float] = []
    refused: list[tuple[float, grpc.StatusCode | None]] = []

    def get_until_step_down() -> bool:
        sent = time.time()
        try:
            assert cluster.get(leader, "k", timeout=0.5).value == "v"
            served.append(sent)
        except grpc.RpcError as error:
            refused.append((sent, rpc_code(error)))
        return any(e in step_downs for e in cluster.core_events(leader))

    cluster.wait_for(get_until_step_down, 10, f"node {leader} to step down")
    stepped = next(e.when for e in cluster.dump_events(leader) if e.event in step_downs)

    assert served, "the leader answered no GET after its followers died, with a lease running"
    # No GET succeeded after the lease could have ended (its last round was sent before the
    # kill), nor after the step-down.
    assert max(served) < killed + span
    assert max(served) < stepped
    # The leader did not step down at once: its last lease, renewed by a round shortly before
    # the kill, ran for most of `span` after it, and CheckQuorum's check passes once more for
    # the answers received just before the kill.
    assert stepped >= before_kill + min(span, check_quorum) / 2
    assert all(code in REFUSED for _, code in refused)

    # Now every request fails at every surviving node (only the old leader survives).
    for node in cluster.running_ids():
        assert refused_code(partial(cluster.get, node, "k", timeout=1)) in REFUSED
        assert refused_code(partial(cluster.set, node, "k", "w", timeout=1)) in REFUSED
        assert not cluster.serve_client(node, "GET k", timeout=1).Success
        assert not cluster.serve_client(node, "SET k w", timeout=1).Success
        status = cluster.status(node)
        assert status is not None and status.role != "leader"


# ---------------------------------------------------------------------------------------------
# f. a minority elects nobody


def campaigns(cluster: LocalCluster, nodes: list[int]) -> int:
    """Pre-vote rounds and elections the nodes started, from their dumps."""
    return sum(
        isinstance(e, ev.PreVoteStarted | ev.ElectionTimeout)
        for node in nodes
        for e in cluster.core_events(node)
    )


def test_minority_elects_no_leader(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(5).start()
    leader = cluster.leader()
    doomed = [leader, *[n for n in cluster.ids if n != leader][:2]]
    for node in doomed:
        cluster.kill_node(node)
    survivors = cluster.running_ids()
    assert len(survivors) == 2

    def terms_without_leader() -> dict[int, int] | None:
        statuses = {n: cluster.status(n) for n in survivors}
        if any(s is None or s.role == "leader" for s in statuses.values()):
            return None  # a leader that survived keeps its role until its lease lapses
        return {n: s.term for n, s in statuses.items() if s is not None}

    start_terms = cluster.wait_for(terms_without_leader, 5, "no surviving node to lead")
    campaigns_before = campaigns(cluster, survivors)

    # Watch for three maximal election timeouts: nobody may become leader.
    watch = 3 * cluster.timing.election_timeout_max
    deadline = time.monotonic() + watch
    answers = dict.fromkeys(survivors, 0)
    while time.monotonic() < deadline:
        for node, status in cluster.statuses().items():
            if node in survivors and status is not None:
                answers[node] += 1
                assert status.role != "leader", f"node {node} became leader with 2 of 5 alive"
        time.sleep(0.05)
    assert all(count > 5 for count in answers.values()), f"status answers: {answers}"
    end_terms = cluster.wait_for(terms_without_leader, 5, "the survivors' terms")
    assert campaigns(cluster, survivors) > campaigns_before, "no election was attempted"
    # PreVote: a node that cannot win never raises its term (so it deposes no one later).
    assert end_terms == start_terms
    for node in survivors:
        assert refused_code(partial(cluster.get, node, "k", timeout=1)) in REFUSED


# ---------------------------------------------------------------------------------------------
# g. kill -9 of every node under load loses no acknowledged SET


@dataclass
class KeyHistory:
    """The writes to one key, issued one after another by a single writer."""

    acknowledged: list[str] = field(default_factory=list)
    # The last write, if its outcome is unknown (no write to the key follows it).
    unknown: str | None = None


class Writers:
    """Threads doing SETs with unique values, each on its own keys, one write at a time."""

    WRITES_PER_KEY = 4

    def __init__(self, cluster: LocalCluster, count: int, leader: int) -> None:
        self.cluster = cluster
        self.leader = leader
        self.history: dict[str, KeyHistory] = {}
        self.lock = threading.Lock()
        self.crashing = threading.Event()
        self.acked = 0
        self.threads = [
            threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(count)
        ]
        self.errors: list[BaseException] = []

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(10)
            assert not thread.is_alive(), "a writer thread did not stop"
        assert not self.errors, self.errors

    def _run(self, writer: int) -> None:
        try:
            self._write_loop(writer)
        except BaseException as error:  # reported by join()
            self.errors.append(error)

    def _write_loop(self, writer: int) -> None:
        target = self.leader
        key_no = write_no = 0
        size = self.cluster.size
        while True:
            key = f"w{writer}-k{key_no}"
            value = f"{key}-v{write_no}-{uuid.uuid4().hex[:8]}"
            with self.lock:
                history = self.history.setdefault(key, KeyHistory())
            try:
                self.cluster.set(target, key, value, timeout=1.0)
            except grpc.RpcError as error:
                if rpc_code(error) == grpc.StatusCode.FAILED_PRECONDITION:
                    # Refused before anything was appended: not applied; ask the named leader.
                    if self.crashing.is_set():
                        return
                    hint = dict(error.trailing_metadata() or ()).get("leader-id")
                    target = int(hint) if hint is not None else (target + 1) % size
                    continue
                # The outcome is unknown: this value may or may not be applied. Never write
                # this key again, so that the order of its writes stays known.
                with self.lock:
                    history.unknown = value
                if self.crashing.is_set():
                    return
                key_no, write_no = key_no + 1, 0
                continue
            with self.lock:
                history.acknowledged.append(value)
                self.acked += 1
            write_no += 1
            if write_no == self.WRITES_PER_KEY:
                key_no, write_no = key_no + 1, 0


@pytest.mark.slow
def test_kill_all_nodes_under_load_loses_no_acknowledged_set(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(3).start()
    leader = cluster.leader()
    writers = Writers(cluster, 4, leader)
    writers.start()
    cluster.wait_for(lambda: writers.acked >= 150, 30, "150 acknowledged SETs")
    writers.crashing.set()
    for node in cluster.ids:
        cluster.kill_node(node)
    writers.join()
    acknowledged = {(key, value) for key, h in writers.history.items() for value in h.acknowledged}
    assert len(acknowledged) >= 150

    # Durable before acknowledged: each acknowledged SET is in a majority of logs.txt files.
    logs = {
        n: {
            (e.command.key, e.command.value)
            for e in cluster.log_entries(n)
            if isinstance(e.command, SetCommand)
        }
        for n in cluster.ids
    }
    for key, value in sorted(acknowledged):
        holders = [n for n in cluster.ids if (key, value) in logs[n]]
        assert len(holders) >= 2, f"acknowledged SET {key}={value} is only on nodes {holders}"

    cluster.start()
    cluster.leader(20)
    for key, history in sorted(writers.history.items()):
        found = cluster.read(key)
        last_acked = history.acknowledged[-1] if history.acknowledged else None
        allowed = {last_acked, history.unknown} if history.unknown else {last_acked}
        assert found in allowed, (
            f"{key} reads {found!r} after the crash; acknowledged writes in order: "
            f"{history.acknowledged}, then unknown outcome: {history.unknown!r}"
        )


# ---------------------------------------------------------------------------------------------
# h. a client generated from the assignment's own proto


ASSIGNMENT_PROTO = """\
syntax = "proto3";

package raft;

service Raft {
  rpc ServeClient(ServeClientArgs) returns (ServeClientReply);
}

message ServeClientArgs {
  string Request = 1;
}

message ServeClientReply {
  string Data = 1;
  string LeaderID = 2;
  bool Success = 3;
}
"""

# Runs in its own interpreter: the assignment's proto declares raft.ServeClientArgs, which
# raftkv's own generated module already registered in this process's descriptor pool, so
# importing both in one process fails with "duplicate symbol". A client written for the
# assignment would not have raftkv's modules loaded either. Like such a client, it follows
# LeaderID until a node answers (the pauses are a client's retry back-off).
ASSIGNMENT_CLIENT = """\
import json, sys, time
sys.path.insert(0, sys.argv[1])
import grpc
import assignment_pb2 as pb
import assignment_pb2_grpc as rpc

stubs = [rpc.RaftStub(grpc.insecure_channel(address)) for address in sys.argv[2:]]

def call(node, request):
    reply = stubs[node].ServeClient(pb.ServeClientArgs(Request=request), timeout=5)
    return {"Data": reply.Data, "LeaderID": reply.LeaderID, "Success": reply.Success}

def at_leader(request):
    node, deadline = 0, time.monotonic() + 20
    while True:
        reply = call(node, request)
        if reply["Success"] or time.monotonic() > deadline:
            return node, reply
        hint = reply["LeaderID"]
        node = int(hint) if hint.isdigit() else (node + 1) % len(stubs)
        time.sleep(0.05)

deadline = time.monotonic() + 20
while True:
    probes = [call(node, "GET __leader__") for node in range(len(stubs))]
    leaders = [node for node, reply in enumerate(probes) if reply["Success"]]
    agreed = len(leaders) == 1 and all(p["LeaderID"] == str(leaders[0]) for p in probes)
    if agreed or time.monotonic() > deadline:
        break
    time.sleep(0.05)
print(json.dumps({"probe": probes, "set": at_leader("SET k v with spaces"),
                  "get": at_leader("GET k")}))
"""


def test_client_built_from_the_assignment_proto(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    generated = tmp_path / "assignment"
    generated.mkdir()
    (generated / "assignment.proto").write_text(ASSIGNMENT_PROTO)
    status = protoc.main(
        [
            "protoc",
            f"-I{generated}",
            f"--python_out={generated}",
            f"--grpc_python_out={generated}",
            str(generated / "assignment.proto"),
        ]
    )
    assert status == 0
    assert (generated / "assignment_pb2_grpc.py").exists()
    (generated / "client.py").write_text(ASSIGNMENT_CLIENT)

    cluster = make_cluster(3).start()
    cluster.leader()
    addresses = [cluster.nodes[n].address for n in cluster.ids]
    run = subprocess.run(
        [sys.executable, "-I", str(generated / "client.py"), str(generated), *addresses],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    # GET __leader__ succeeds at the leader only (the key is absent: Data ""), and every node
    # names the leader.
    probes = result["probe"]
    leaders = [node for node, reply in enumerate(probes) if reply["Success"]]
    assert len(leaders) == 1, probes
    assert probes[leaders[0]]["Data"] == ""
    assert all(p["LeaderID"] == str(leaders[0]) for p in probes), probes
    node, reply = result["set"]
    assert reply == {"Data": "", "LeaderID": str(node), "Success": True}
    node, reply = result["get"]
    assert reply == {"Data": "v with spaces", "LeaderID": str(node), "Success": True}
    assert cluster.read("k") == "v with spaces"


# ---------------------------------------------------------------------------------------------
# i. the assignment's timings


@pytest.mark.slow
def test_seed_profile_elects_and_serves(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3, profile="seed").start()
    assert cluster.timing.election_timeout_min == 5.0
    leader = cluster.leader(25)
    assert cluster.set(leader, "seed", "value", timeout=10).index > 0
    assert cluster.get(leader, "seed", timeout=5).value == "value"
    reply = cluster.serve_client(leader, "GET seed", timeout=5)
    assert (reply.Success, reply.Data) == (True, "value")


# ---------------------------------------------------------------------------------------------
# j. malformed requests


def test_malformed_requests_get_clear_errors_and_the_node_stays_up(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(3).start()
    leader = cluster.leader()
    big_key = "k" * 2048
    big_value = "x" * (2 * 1024 * 1024)
    bad_requests = {
        "SETX a b": "unknown command 'SETX'",
        "SET a": "usage: SET <key> <value>",
        "GET ": "usage: GET <key>",
        "": "unknown command ''",
        f"GET {big_key}": "the key is 2048 bytes; the limit is 1024",
        f"SET a {big_value}": "the value is 2097152 bytes; the limit is 1048576",
    }
    for node in cluster.ids:
        for request, message in bad_requests.items():
            reply = cluster.serve_client(node, request, timeout=5)
            assert not reply.Success, request[:20]
            assert message in reply.Data, (request[:20], reply.Data)

    kv = cluster.kv(leader)
    bad_calls = {
        "empty key (GET)": lambda: kv.Get(pb.GetRequest(key=""), timeout=5),
        "2 KB key (GET)": lambda: kv.Get(pb.GetRequest(key=big_key), timeout=5),
        "empty key (SET)": lambda: kv.Set(pb.SetRequest(key="", value="v"), timeout=5),
        "2 KB key (SET)": lambda: kv.Set(pb.SetRequest(key=big_key, value="v"), timeout=5),
        "2 MB value": lambda: kv.Set(pb.SetRequest(key="a", value=big_value), timeout=5),
        "client id without seq": lambda: kv.Set(
            pb.SetRequest(key="a", value="v", client_id="c"), timeout=5
        ),
    }
    for what, call in bad_calls.items():
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert rpc_code(refused.value) == grpc.StatusCode.INVALID_ARGUMENT, what
        assert refused.value.details(), what

    # A Pipeline batch that is not valid protobuf (a string that is not UTF-8) ends the stream
    # with INVALID_ARGUMENT, after the replies to the requests read before it; never with OK.
    pipeline = cluster.channel(leader).stream_stream(
        "/raft.KeyValue/Pipeline", request_serializer=None, response_deserializer=None
    )
    good = pb.PipelineRequests(requests=[pb.PipelineRequest(tag=1, get=pb.GetRequest(key="a"))])
    bad = pb.PipelineRequests(requests=[pb.PipelineRequest(tag=2, get=pb.GetRequest(key="é"))])
    undecodable = bad.SerializeToString().replace("é".encode(), b"\xff\xfe")
    call = pipeline(iter([good.SerializeToString(), undecodable]), timeout=5)
    answered = []
    with pytest.raises(grpc.RpcError) as broken:
        for raw in call:
            answered += [r.tag for r in pb.PipelineReplies.FromString(raw).replies]
    assert answered == [1]
    assert rpc_code(broken.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not be decoded" in (broken.value.details() or "")

    # Every node is still up and answering, nothing was applied, and a good SET works.
    assert all(cluster.nodes[n].running for n in cluster.ids)
    assert all(status is not None for status in cluster.statuses(timeout=5).values())
    assert cluster.read("a") is None
    cluster.write("a", "fine")
    assert cluster.read("a") == "fine"


# ---------------------------------------------------------------------------------------------
# k. python -m raftkv_tools.localcluster


def localcluster(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raftkv_tools.localcluster", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def kill_leftovers(root: Path) -> None:
    for path in Layout(root).pid_files().values():
        pid = read_pid(path)
        if pid is not None and is_node_process(pid):
            os.kill(pid, 9)


@pytest.mark.slow
def test_localcluster_up_status_down(tmp_path: Path) -> None:
    root = tmp_path / "lc"
    ports = free_ports(3)
    try:
        up = localcluster(
            "up", "--nodes", "3", "--dir", str(root), "--base-port", str(ports[0]), cwd=tmp_path
        )
        assert up.returncode == 0, up.stdout + up.stderr
        assert "NODE" in up.stdout and "REACHABLE" in up.stdout
        assert "leader" in up.stdout
        assert "set a 1" in up.stdout
        pids = [read_pid(root / f"node-{i}.pid") for i in range(3)]
        assert all(p is not None and is_node_process(p) for p in pids), pids
        description = (root / "cluster.json").read_text()
        assert str((root / "data").resolve()) in description

        again = localcluster(
            "up", "--nodes", "3", "--dir", str(root), "--base-port", str(ports[0]), cwd=tmp_path
        )
        assert again.returncode == 1
        assert "cluster already running (nodes 0, 1, 2)" in again.stderr
        assert all(p is not None and is_node_process(p) for p in pids)

        status = localcluster("status", "--dir", str(root), cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        assert "leader" in status.stdout and status.stdout.count("yes") == 3

        down = localcluster("down", "--dir", str(root), cwd=tmp_path)
        assert down.returncode == 0, down.stderr
        assert "stopped" in down.stdout
        assert not any(p is not None and is_node_process(p) for p in pids)
        assert not list(root.glob("node-*.pid"))
        for node in range(3):  # a clean shutdown, not a kill
            dump = (root / "data" / f"logs_node_{node}" / "dump.txt").read_text()
            assert f"Node {node} shutting down." in dump

        again = localcluster("down", "--dir", str(root), cwd=tmp_path)
        assert again.returncode == 0
        assert "cluster is not running" in again.stdout

        clean = localcluster("clean", "--dir", str(root), cwd=tmp_path)
        assert clean.returncode == 0, clean.stderr
        assert not (root / "data").exists() and not (root / "cluster.json").exists()
    finally:
        localcluster("down", "--dir", str(root), cwd=tmp_path)
        kill_leftovers(root)


def test_localcluster_refuses_a_busy_port(tmp_path: Path) -> None:
    root = tmp_path / "lc"
    ports = free_ports(3)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports[1]))
        squatter.listen()
        try:
            busy = localcluster(
                "up", "--nodes", "3", "--dir", str(root), "--base-port", str(ports[0]), cwd=tmp_path
            )
        finally:
            kill_leftovers(root)
    assert busy.returncode == 1
    assert f"port {ports[1]} (node 1) is already in use by pid {os.getpid()}" in busy.stderr
    assert "nothing was started" in busy.stderr
    assert not list(root.glob("node-*.pid"))


def test_localcluster_reports_a_node_that_exits_during_startup(tmp_path: Path) -> None:
    root = tmp_path / "lc"
    ports = free_ports(3)
    # Node 1's data folder belongs to another node: it must refuse to start.
    foreign = root / "data" / "logs_node_1"
    foreign.mkdir(parents=True)
    (foreign / "metadata.txt").write_text("commitLength 0\nterm 1\nvotedFor None\nnodeId 7\n")
    try:
        run = localcluster(
            "up", "--nodes", "3", "--dir", str(root), "--base-port", str(ports[0]), cwd=tmp_path
        )
    finally:
        kill_leftovers(root)
    assert run.returncode == 1
    assert "node 1 exited with status 1 during start-up" in run.stderr
    assert "belongs to node 7" in run.stderr  # the tail of node-1.out
    assert "nothing is left running" in run.stderr
    assert not list(root.glob("node-*.pid"))


def test_status_table_and_leader_agreement() -> None:
    def answered(node_id: int, role: str, lease: float = 0.0, wait: float = 0.0) -> NodeStatusRow:
        return NodeStatusRow(
            node_id,
            f"127.0.0.1:{node_id + 1}",
            True,
            role=role,
            term=3,
            commit_length=7,
            leader_id=0,
            lease_remaining=lease,
            waiting_for_old_lease=wait,
        )

    rows = [
        answered(0, "leader", 0.25),
        answered(1, "follower"),
        NodeStatusRow(2, "127.0.0.1:3", False, error="connection refused"),
    ]
    table = format_status_table(rows).splitlines()
    header = [
        "NODE", "ADDRESS", "ROLE", "TERM", "COMMIT", "SNAPSHOT", "LEADER", "LEASE", "REACHABLE"
    ]  # fmt: skip
    assert table[0].split() == header
    assert table[1].split() == ["0", "127.0.0.1:1", "leader", "3", "7", "-", "0", "0.25s", "yes"]
    assert table[3].split()[-3:] == ["no", "(connection", "refused)"]
    assert elected_leader(rows) is None  # node 2 does not (yet) agree
    assert elected_leader(rows[:2]) == 0
    waiting = [answered(0, "leader", 0.0, 1.5), rows[1]]
    assert elected_leader(waiting) is None
    assert "wait 1.50s" in format_status_table(waiting)


# ---------------------------------------------------------------------------------------------
# The command-line client, against a real cluster


def test_cli_smoke(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3).start()
    cluster.leader()
    script = shutil.which("raftkv", path=str(Path(sys.executable).parent))
    command = (
        [script]
        if script
        else [
            sys.executable,
            "-c",
            "import sys; from raftkv.client.cli import main; sys.exit(main())",
        ]
    )
    base = [*command, "--cluster", str(cluster.description_path)]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)

    stored = cli("set", "greeting", "hello", "world")
    assert stored.returncode == 0, stored.stderr
    fetched = cli("get", "greeting")
    assert (fetched.returncode, fetched.stdout.strip()) == (0, "hello world"), fetched.stderr
    missing = cli("get", "nothing-here")
    assert missing.returncode == 1, missing.stderr
    status = cli("status")
    assert status.returncode == 0, status.stderr
    assert "leader" in status.stdout
    assert cluster.read("greeting") == "hello world"
