"""The CA rotation infra/README.md describes ("Rotating certificates"), on three real nodes.

The nodes read tls/ (a `raftkv certs` folder) at start, as the hosts read the copies the role
makes, so "a run of site.yml" here is: the same `raftkv certs` call the role makes, then a
rolling restart (followers first, the leader last), each node only after the restarted one
follows the leader again. A negative control shows why the first step (trust both CAs) exists.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from raftkv.tls import TlsFiles
from raftkv_tools.certs import issue as issue_certificates
from raftkv_tools.certs import local_nodes
from tests.infra.peer_check import peer_stream_code
from tests.support.processes import LocalCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def role_run(cluster: LocalCluster) -> list[str]:
    """What the role's controller task does with the folder (--name, the nodes, a client)."""
    report = issue_certificates(
        cluster.certs, local_nodes(cluster.size), cluster_name="test", clients=["ops"]
    )
    return [action for action, _ in report]


def rolling_restart(cluster: LocalCluster, step: str) -> None:
    leader = cluster.leader()
    for node in [*(n for n in cluster.ids if n != leader), leader]:
        assert cluster.stop_node(node) == 0
        cluster.start_node(node)
        cluster.leader(timeout=20.0)  # every running node, the restarted one too, follows it
        cluster.write(f"{step}-{node}", "written")


def test_a_new_ca_replaces_the_old_by_three_rolling_restarts(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, 3) as cluster:
        cluster.start()
        cluster.write("before", "written")
        tls = cluster.certs
        issue_certificates(tmp_path / "next-ca", local_nodes(1), cluster_name="test")
        old_ca, old_key = (tls / "ca.pem").read_bytes(), (tls / "ca.key").read_bytes()
        new_ca, new_key = ((tmp_path / "next-ca" / n).read_bytes() for n in ("ca.pem", "ca.key"))
        old_node_0 = TlsFiles.in_directory(tls, 0).load()

        # 1. Trust both: the old CA first, so that its key (ca.key) keeps signing.
        (tls / "ca.pem").write_bytes(old_ca + new_ca)
        assert role_run(cluster) == ["kept", "kept", "kept", "kept", "created"]
        rolling_restart(cluster, "trust-both")
        # 2. Sign with the new CA: it goes first, its key becomes ca.key; every certificate the
        #    old CA signed is renewed.
        (tls / "ca.pem").write_bytes(new_ca + old_ca)
        (tls / "ca.key").write_bytes(new_key)
        assert role_run(cluster) == ["kept", "renewed", "renewed", "renewed", "renewed"]
        rolling_restart(cluster, "new-certificates")
        # 3. Drop the old CA.
        (tls / "ca.pem").write_bytes(new_ca)
        assert role_run(cluster) == ["kept"] * 5
        rolling_restart(cluster, "new-ca-only")

        assert cluster.read("before") == "written"
        # A certificate of the old CA no longer opens a peer port; one of the new CA does (the
        # answering node then refuses the empty stream for what it says, not for who sent it).
        peer, cluster_id = cluster.description.node(1).peer_address, cluster.description.cluster_id
        old = grpc.ssl_channel_credentials(old_ca, old_node_0.key, old_node_0.cert)
        assert peer_stream_code(peer, 1, old, cluster_id) == "UNAVAILABLE"
        node_0 = TlsFiles.in_directory(tls, 0).load()
        new = grpc.ssl_channel_credentials(new_ca, node_0.key, node_0.cert)
        assert peer_stream_code(peer, 1, new, cluster_id) == "OK"
        assert old_key != new_key


def test_without_trusting_both_first_a_restarted_node_cannot_rejoin(tmp_path: Path) -> None:
    """Negative control: step 2 without step 1 cuts the first restarted node off."""
    with LocalCluster(tmp_path, 3) as cluster:
        cluster.start()
        leader = cluster.leader()
        tls = cluster.certs
        issue_certificates(tmp_path / "next-ca", local_nodes(1), cluster_name="test")
        for name in ("ca.pem", "ca.key"):
            (tls / name).write_bytes((tmp_path / "next-ca" / name).read_bytes())
        assert role_run(cluster)[1:4] == ["renewed"] * 3
        follower = next(n for n in cluster.ids if n != leader)
        assert cluster.stop_node(follower) == 0
        cluster.start_node(follower)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            status = cluster.status(follower)
            rejoined = (
                status is not None and status.HasField("leader_id") and (status.leader_id == leader)
            )
            assert not rejoined, "the node rejoined although no other node trusts its CA"
            time.sleep(0.1)
