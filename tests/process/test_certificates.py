"""Certificates on real processes: rotating every node's certificate by a rolling restart while a
client keeps writing, and the client listener's --client-cert-auth (issue 13, part 1)."""

from __future__ import annotations

import itertools
import threading
import time
from functools import partial
from pathlib import Path

import grpc
import pytest

from raftkv.client import RaftKVError, SyncClient
from raftkv.rpc import raftkv_pb2 as pb
from raftkv.rpc import raftkv_pb2_grpc
from raftkv.server.launch import TlsFiles
from raftkv_tools.certs import issue as issue_certificates
from raftkv_tools.certs import local_nodes
from tests.process.conftest import ClusterFactory
from tests.support.processes import LocalCluster, NotYet, rpc_code

pytestmark = [pytest.mark.timeout(180)]


class Writer(threading.Thread):
    """SETs k0, k1, ... one after another through the client library until stopped; records
    when each was acknowledged and every error the library gave up with."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(daemon=True)
        self.client = SyncClient(cluster.description, timeout=10.0)
        self.acknowledged: list[tuple[str, str, float]] = []
        self.errors: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.done.is_set():
            key, value = f"k{n}", f"v{n}"
            try:
                self.client.set(key, value)
            except RaftKVError as error:
                self.errors.append(f"SET {key}: {error}")
            else:
                self.acknowledged.append((key, value, time.monotonic()))
            n += 1

    def stop(self) -> None:
        self.done.set()
        self.join(30)
        self.client.close()

    def acknowledged_more_than(self, count: int) -> bool:
        return len(self.acknowledged) >= count

    def longest_gap(self) -> float:
        times = [t for _, _, t in self.acknowledged]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def caught_up(cluster: LocalCluster, node: int) -> bool:
    leader = cluster.leader()
    ours, theirs = cluster.status(node), cluster.status(leader)
    if ours is None or theirs is None:
        raise NotYet(f"node {node} or the leader does not answer")
    if ours.leader_id != leader or ours.commit_length < theirs.commit_length - 50:
        raise NotYet(f"node {node} at commit {ours.commit_length}, leader {theirs.commit_length}")
    return True


def test_every_certificate_is_rotated_by_a_rolling_restart_while_writes_go_on(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(3).start()
    cluster.leader()
    old_keys = {n: (cluster.certs / f"node-{n}.key").read_bytes() for n in cluster.ids}
    writer = Writer(cluster)
    writer.start()
    try:
        cluster.wait_for(lambda: len(writer.acknowledged) >= 20, 20.0, "writes before rotation")
        report = issue_certificates(cluster.certs, local_nodes(cluster.size), reissue=True)
        assert [action for action, _ in report] == ["kept", "renewed", "renewed", "renewed"]
        # Followers first, the leader last: one election in all.
        leader = cluster.leader()
        for node in [*(n for n in cluster.ids if n != leader), leader]:
            before = len(writer.acknowledged)
            assert cluster.stop_node(node) == 0
            cluster.start_node(node)
            cluster.wait_for(partial(caught_up, cluster, node), 20.0, f"node {node}")
            # While old and new certificates mix, the cluster still commits.
            cluster.wait_for(
                partial(writer.acknowledged_more_than, before + 20),
                20.0,
                f"writes after node {node} restarted",
            )
    finally:
        writer.stop()
    assert writer.errors == []
    assert all((cluster.certs / f"node-{n}.key").read_bytes() != old_keys[n] for n in cluster.ids)
    print(f"rotation: {len(writer.acknowledged)} SETs, longest gap {writer.longest_gap():.3f}s")
    for key, value, _ in writer.acknowledged[:: max(1, len(writer.acknowledged) // 50)]:
        assert cluster.read(key) == value


def _status_over_tls(
    address: str, credentials: grpc.ChannelCredentials, *, wait_for_ready: bool = False
) -> pb.StatusResponse | grpc.StatusCode:
    with grpc.secure_channel(address, credentials) as channel:
        try:
            response: pb.StatusResponse = raftkv_pb2_grpc.KeyValueStub(channel).Status(
                pb.StatusRequest(), timeout=10, wait_for_ready=wait_for_ready
            )
        except grpc.RpcError as error:
            code = rpc_code(error)
            assert code is not None
            return code
    return response


def test_client_cert_auth_admits_only_clients_with_a_certificate_from_the_ca(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    cluster = make_cluster(1)
    issue_certificates(cluster.certs, local_nodes(1), clients=["ops"])
    # A client certificate from another CA must not open the door either.
    issue_certificates(tmp_path / "other", local_nodes(1), clients=["ops"])
    files = TlsFiles.in_directory(cluster.certs, 0)
    cluster.node_args[0] = [
        "--tls-ca", str(files.ca), "--tls-cert", str(files.cert), "--tls-key", str(files.key),
        "--client-cert-auth",
    ]  # fmt: skip
    cluster.start()
    address = cluster.description.node(0).address
    ca = files.ca.read_bytes()

    def pair(folder: Path) -> tuple[bytes, bytes]:
        return (folder / "client-ops.key").read_bytes(), (folder / "client-ops.pem").read_bytes()

    admitted = _status_over_tls(
        address, grpc.ssl_channel_credentials(ca, *pair(cluster.certs)), wait_for_ready=True
    )
    assert isinstance(admitted, pb.StatusResponse) and admitted.node_id == 0
    for refused in (
        grpc.ssl_channel_credentials(ca),
        grpc.ssl_channel_credentials(ca, *pair(tmp_path / "other")),
    ):
        assert _status_over_tls(address, refused) == grpc.StatusCode.UNAVAILABLE
