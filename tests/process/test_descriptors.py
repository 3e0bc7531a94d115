"""A real node flooded with idle connections refuses new clients and keeps serving the ones it
has, its storage included (raftkv/server/resources.py).

Before this, ~1,100 idle connections took every descriptor and the next metadata.txt write failed
with EMFILE and stopped the node. Now the client port keeps at most `client_connection_cap` of
the descriptor limit for connections and closes the rest at once, so the flood never reaches the
limit; should the node run out anyway, the storage's reserve of spare descriptors
(tests/server/test_resources.py) keeps its writes going.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import grpc
import pytest

from raftkv.rpc import raftkv_pb2 as pb
from raftkv.rpc import raftkv_pb2_grpc
from raftkv.rpc.options import POLL_CHANNEL_OPTIONS
from raftkv.server.resources import client_connection_cap
from tests.process.conftest import ClusterFactory
from tests.support.processes import HOST, NotYet

pytestmark = [pytest.mark.timeout(120)]

# Low enough to exhaust quickly; soft = hard, so raising the soft limit at start changes nothing.
DESCRIPTOR_LIMIT = 128


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def idle_connections(address: str, count: int) -> Iterator[list[socket.socket]]:
    """`count` TCP connections that never say a word (the kernel completes the handshake even
    for those the node cannot accept: they wait in its listen backlog)."""
    host, port = address.rsplit(":", 1)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection((host, int(port)), timeout=5))
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_a_node_out_of_descriptors_refuses_new_clients_and_keeps_serving(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(1, prefix=["prlimit", f"--nofile={DESCRIPTOR_LIMIT}", "--"])
    cluster.start()
    cluster.leader()  # opens the test's channel to the node, before the flood
    node = cluster.nodes[0]
    assert node.process is not None and node.address.startswith(HOST)
    pid = node.process.pid  # prlimit execs the node: same process
    assert open_descriptors(pid) < DESCRIPTOR_LIMIT // 2

    with idle_connections(node.address, DESCRIPTOR_LIMIT + 50):
        cap = client_connection_cap(DESCRIPTOR_LIMIT)

        def flooded() -> int:
            used = open_descriptors(pid)
            if used < cap:
                raise NotYet(f"{used} descriptors open")
            return used

        cluster.wait_for(flooded, 20, f"the node to take {cap} connections")
        # A new client is turned away: its connection is closed as soon as it is accepted. (A
        # subchannel pool of its own, or gRPC would reuse the test's connection to the node.)
        options = [*POLL_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(node.address, options=options) as fresh:
            with pytest.raises(grpc.RpcError) as refused:
                raftkv_pb2_grpc.KeyValueStub(fresh).Status(pb.StatusRequest(), timeout=1.0)
            # UNAVAILABLE: "Socket closed" (or, under load, a deadline on the way there).
            assert refused.value.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )

        # The client that was already connected is served, and its SET reaches the disk.
        index = cluster.set(0, "k", "after the flood").index
        assert cluster.get(0, "k").value == "after the flood"

        def commit_hint_saved() -> bool:
            text = cluster.metadata_path(0).read_text()
            saved = int(text.split("commitLength ", 1)[1].split("\n", 1)[0])
            if saved < index:
                raise NotYet(f"metadata.txt says commitLength {saved}")
            return True

        # metadata.txt is rewritten (a new temporary file, the directory fsync) at most every
        # 2 s (replica.COMMIT_HINT_INTERVAL): two descriptors the node has to find.
        cluster.wait_for(commit_hint_saved, 10, f"commitLength {index} in metadata.txt")
        assert open_descriptors(pid) < DESCRIPTOR_LIMIT, "the cap kept descriptors in reserve"
        assert cluster.set(0, "k", "still serving").index == index + 1
        assert node.running, node.state()
        assert not cluster.dump_has(0, "storage failure")
