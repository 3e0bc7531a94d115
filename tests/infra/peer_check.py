"""What a node's peer listener makes of a caller's credentials (for the tests of tests/infra)."""

from __future__ import annotations

import grpc

from raftkv.rpc import raftkv_pb2 as pb
from raftkv.rpc import raftkv_pb2_grpc
from raftkv.tls import TARGET_NAME_OPTION, node_name


def peer_stream_code(
    address: str, node_id: int, credentials: grpc.ChannelCredentials, cluster_id: str = ""
) -> str:
    """The status (its name) that node `node_id`'s peer listener at `address` ends a PeerStream
    with, for one empty batch from a caller with `credentials`: UNAVAILABLE when the TLS
    handshake fails, PERMISSION_DENIED when the certificate names no peer, "OK" when the
    stream ends normally."""
    options = [(TARGET_NAME_OPTION, node_name(node_id))]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        try:
            for _ in raftkv_pb2_grpc.RaftStub(channel).PeerStream(
                iter([pb.RaftMessages(cluster_id=cluster_id)]), timeout=10
            ):
                pass
        except grpc.RpcError as error:
            return str(error.code().name)
    return "OK"
