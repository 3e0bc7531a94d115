"""Attackers against a real 3-node cluster's two listeners (issue 13, part 1).

Each node serves clients on its client address and the other nodes on its peer address, behind
mutual TLS where a peer's node id comes from its certificate (docs/design.md §8). Three
attackers send forged AppendEntries (a term above the cluster's, the real leader's id, an entry
that would overwrite a committed SET) and RequestVotes (a term far above the cluster's) to both
ports of every node, as a PeerStream and as the unary calls:

- one with no certificate at all (and, on the peer port, one that trusts the CA but presents
  nothing);
- one with a client certificate from the cluster's own CA (`raftkv certs --client`);
- one with node 1's certificate, claiming to be another node; and node 1 with its own id but
  another cluster's id.

Every attempt is refused with the status code a client can act on, the cluster's data, terms
and leader are unchanged, and each refusal that reaches our code is in the target's dump.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import grpc
import pytest

from raftkv.core.messages import LogEntry, SetCommand
from raftkv.rpc import raftkv_pb2 as pb
from raftkv.server.wire import entry_to_pb
from raftkv_tools.certs import issue as issue_certificates
from raftkv_tools.certs import local_nodes
from tests.process.conftest import ClusterFactory
from tests.support.peers import (
    PeerRequest,
    assert_in_no_log,
    client_certificate,
    credentials_of,
    node_tls,
    peer_call,
    started_with_acknowledged_sets,
    status_of,
    unary_call,
)
from tests.support.processes import LocalCluster, NotYet

pytestmark = [pytest.mark.timeout(180)]

FORGED_VALUE = "forged by an attacker"
NODE_CERT_OWNER = 1


def forged_append(cluster: LocalCluster, target: int, claimed: int) -> pb.AppendEntriesArgs:
    """An AppendEntries that, accepted, would replace the target's last committed entry with an
    attacker's SET and make the target follow `claimed` in a term above the cluster's."""
    state = status_of(cluster, target)
    log = cluster.log_entries(target)
    prev = state.commit_length - 1
    prev_term = log[prev - 1].term if prev else 0
    term = state.term + 5
    forged = LogEntry(term, SetCommand("acked0", FORGED_VALUE))
    return pb.AppendEntriesArgs(
        term=term,
        leader_id=claimed,
        prev_log_index=prev,
        prev_log_term=prev_term,
        entries=[entry_to_pb(forged)],
        leader_commit=state.commit_length,
        lease_duration=cluster.timing.lease_duration,
        round=1,
    )


def forged_vote(cluster: LocalCluster, target: int, claimed: int) -> pb.RequestVoteArgs:
    state = status_of(cluster, target)
    return pb.RequestVoteArgs(
        term=state.term + 100,
        candidate_id=claimed,
        last_log_index=10**6,
        last_log_term=state.term + 99,
    )


def other_than(cluster: LocalCluster, *excluded: int) -> int:
    return next(n for n in cluster.ids if n not in excluded)


def test_no_attacker_without_a_node_certificate_moves_the_cluster(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(3)
    acknowledged = started_with_acknowledged_sets(cluster)
    issue_certificates(cluster.certs, local_nodes(cluster.size), clients=["mallory"])
    leader = cluster.leader()
    before = {n: (status_of(cluster, n).term, status_of(cluster, n).leader_id) for n in cluster.ids}
    cluster_id = cluster.description.cluster_id
    ca_only = credentials_of(node_tls(cluster.certs, 0), present_certificate=False)
    mallory = client_certificate(cluster.certs, "mallory").channel_credentials()
    node_1 = node_tls(cluster.certs, NODE_CERT_OWNER).channel_credentials()

    for target in cluster.ids:
        client_address = cluster.description.node(target).address
        peer_address = cluster.description.node(target).peer_address
        claimed_leader = leader if leader != target else other_than(cluster, target)
        forged: list[Callable[[int], PeerRequest]] = [
            partial(forged_append, cluster, target),
            partial(forged_vote, cluster, target),
        ]
        for make in forged:
            request = make(claimed_leader)

            # 1. No certificate. The client port refuses peer RPCs outright; the peer port's
            #    TLS handshake fails, whether the caller speaks plaintext or trusts the CA.
            assert (
                peer_call(client_address, request, None, target=target, cluster_id=cluster_id)
                == grpc.StatusCode.PERMISSION_DENIED
            )
            assert unary_call(client_address, request, None, target=target) == (
                grpc.StatusCode.PERMISSION_DENIED
            )
            for credentials in (None, ca_only):
                assert (
                    peer_call(
                        peer_address, request, credentials, target=target, cluster_id=cluster_id
                    )
                    == grpc.StatusCode.UNAVAILABLE
                )
                assert unary_call(peer_address, request, credentials, target=target) == (
                    grpc.StatusCode.UNAVAILABLE
                )

            # 2. A client certificate signed by the cluster's CA: TLS succeeds, but it names
            #    no node, so the peer port refuses it.
            assert (
                peer_call(peer_address, request, mallory, target=target, cluster_id=cluster_id)
                == grpc.StatusCode.PERMISSION_DENIED
            )
            assert unary_call(peer_address, request, mallory, target=target) == (
                grpc.StatusCode.PERMISSION_DENIED
            )

            # 3. Node 1's certificate, claiming to be another node.
            if target != NODE_CERT_OWNER:
                impersonated = other_than(cluster, target, NODE_CERT_OWNER)
                assert (
                    peer_call(
                        peer_address,
                        make(impersonated),
                        node_1,
                        target=target,
                        cluster_id=cluster_id,
                    )
                    == grpc.StatusCode.PERMISSION_DENIED
                )
                # ... and with its own id, from another cluster.
                assert (
                    peer_call(
                        peer_address,
                        make(NODE_CERT_OWNER),
                        node_1,
                        target=target,
                        cluster_id="another-cluster",
                    )
                    == grpc.StatusCode.FAILED_PRECONDITION
                )

    # Nothing moved: terms and leader as before, every acknowledged SET readable, the forged
    # value in no log.
    after = {n: (status_of(cluster, n).term, status_of(cluster, n).leader_id) for n in cluster.ids}
    assert after == before, cluster.describe()
    for key, value in acknowledged.items():
        assert cluster.read(key) == value
    assert_in_no_log(cluster, FORGED_VALUE)
    assert all(cluster.nodes[n].running for n in cluster.ids), cluster.describe()

    # Each refusal that reached our code is on record in the target's dump.
    def on_record(node: int) -> bool:
        lines = cluster.dump_lines(node)
        wanted = {
            "peer RPC on the client port": "on its client address: peer RPCs are served only",
            "client certificate on the peer port": "certificate names no node",
        }
        if node != NODE_CERT_OWNER:
            wanted["impersonation"] = f"but the sender's certificate is node {NODE_CERT_OWNER}'s"
            wanted["another cluster"] = "belongs to cluster 'another-cluster'"
        missing = [what for what, text in wanted.items() if not any(text in line for line in lines)]
        if missing:
            raise NotYet(f"node {node}'s dump lacks {missing}")
        return True

    for node in cluster.ids:
        cluster.wait_for(partial(on_record, node), 10.0, f"node {node}'s dump")


def test_negative_control_without_mutual_tls_a_forged_append_entries_is_obeyed(
    make_cluster: ClusterFactory,
) -> None:
    """The checks above can fail: with --insecure-peers (the test seam) the peer port takes a
    plaintext caller's claimed sender at its word, and a forged AppendEntries that extends the
    log is obeyed: the target moves to the attacker's term and stores the attacker's entry."""
    cluster = make_cluster(3, node_args={n: ["--insecure-peers"] for n in range(3)})
    cluster.allow_unsafe = True
    cluster.start()
    cluster.write("acked0", "value 0")
    leader = cluster.leader()
    target = other_than(cluster, leader)
    cluster.wait_for(lambda: status_of(cluster, target).commit_length >= 2, 10.0, "the SET")
    log = cluster.log_entries(target)
    term = status_of(cluster, target).term + 5
    request = pb.AppendEntriesArgs(
        term=term,
        leader_id=leader,
        prev_log_index=len(log),
        prev_log_term=log[-1].term,
        entries=[entry_to_pb(LogEntry(term, SetCommand("acked0", FORGED_VALUE)))],
        leader_commit=len(log),
        lease_duration=cluster.timing.lease_duration,
        round=1,
    )
    reply = peer_call(
        cluster.description.node(target).peer_address,
        request,
        None,
        target=target,
        cluster_id=cluster.description.cluster_id,
    )
    assert isinstance(reply, pb.AppendEntriesReply), reply
    assert (reply.success, reply.term) == (True, term)
    assert cluster.log_entries(target)[-1] == LogEntry(term, SetCommand("acked0", FORGED_VALUE))
    assert any(
        "UNSAFE test switches on: insecure_peers" in line for line in cluster.dump_lines(target)
    )
