"""Speak the peer protocol to a real node as a test's attacker or faulty peer would.

    reply = peer_call(address, request, node_tls(certs, 1), target=0, cluster_id="c")

`request` is an AppendEntriesArgs or RequestVoteArgs; it travels in one Raft.PeerStream batch
(the only peer RPC nodes serve), with the given credentials (None: plaintext), and the answer is
the node's reply message or the status code the call ended with. `unary_call` sends the same
request as the unary Raft.AppendEntries / Raft.RequestVote, which nodes refuse.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from raftkv.core.messages import SetCommand
from raftkv.rpc import raftkv_pb2 as pb
from raftkv.rpc import raftkv_pb2_grpc
from raftkv.rpc.options import POLL_CHANNEL_OPTIONS
from raftkv.tls import TARGET_NAME_OPTION, LoadedTls, TlsFiles, node_name
from tests.support.processes import LocalCluster

PeerRequest = pb.AppendEntriesArgs | pb.RequestVoteArgs
CALL_TIMEOUT = 5.0


def node_tls(certs: Path, node_id: int) -> LoadedTls:
    """Node `node_id`'s own mutual-TLS files, from a `raftkv certs` folder."""
    return TlsFiles.in_directory(certs, node_id).load()


def client_certificate(certs: Path, name: str) -> LoadedTls:
    """A client certificate (`raftkv certs --client NAME`) from the same CA."""
    return TlsFiles(
        certs / "ca.pem", certs / f"client-{name}.pem", certs / f"client-{name}.key"
    ).load()


def _channel(
    address: str, credentials: grpc.ChannelCredentials | None, target: int
) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(address, options=POLL_CHANNEL_OPTIONS)
    options = (*POLL_CHANNEL_OPTIONS, (TARGET_NAME_OPTION, node_name(target)))
    return grpc.secure_channel(address, credentials, options=options)


def credentials_of(
    tls: LoadedTls | None, *, present_certificate: bool = True
) -> grpc.ChannelCredentials | None:
    """Channel credentials: our certificate and the CA, only the CA, or None (plaintext)."""
    if tls is None:
        return None
    if not present_certificate:
        return grpc.ssl_channel_credentials(tls.ca)
    return tls.channel_credentials()


def _as_message(request: PeerRequest) -> pb.RaftMessage:
    if isinstance(request, pb.AppendEntriesArgs):
        return pb.RaftMessage(append_entries=request)
    return pb.RaftMessage(request_vote=request)


def peer_call(
    address: str,
    request: PeerRequest,
    credentials: grpc.ChannelCredentials | None,
    *,
    target: int,
    cluster_id: str,
) -> pb.AppendEntriesReply | pb.RequestVoteReply | grpc.StatusCode:
    """One request over a PeerStream; the reply, or the code the stream ended with."""
    with _channel(address, credentials, target) as channel:
        stub = raftkv_pb2_grpc.RaftStub(channel)
        batch = pb.RaftMessages(messages=[_as_message(request)], cluster_id=cluster_id)
        try:
            for replies in stub.PeerStream(iter([batch]), timeout=CALL_TIMEOUT):
                for message in replies.messages:
                    kind = message.WhichOneof("message")
                    reply: pb.AppendEntriesReply | pb.RequestVoteReply = getattr(message, kind)
                    return reply
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code
    raise AssertionError(f"{address} ended the stream without a reply or an error")


def unary_call(
    address: str,
    request: PeerRequest,
    credentials: grpc.ChannelCredentials | None,
    *,
    target: int,
) -> grpc.StatusCode:
    """The request as a unary call; the status code it was refused with."""
    with _channel(address, credentials, target) as channel:
        stub = raftkv_pb2_grpc.RaftStub(channel)
        method = (
            stub.AppendEntries if isinstance(request, pb.AppendEntriesArgs) else stub.RequestVote
        )
        try:
            method(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code
    raise AssertionError(f"{address} answered a unary peer call")


def status_of(cluster: LocalCluster, node: int) -> pb.StatusResponse:
    answer = cluster.status(node, timeout=5)
    assert answer is not None, f"node {node} does not answer Status"
    return answer


def started_with_acknowledged_sets(cluster: LocalCluster) -> dict[str, str]:
    """Start `cluster`, write three keys and wait until every node has committed them."""
    cluster.start()
    acknowledged = {f"acked{i}": f"value {i}" for i in range(3)}
    for key, value in acknowledged.items():
        cluster.write(key, value)
    cluster.wait_for(
        lambda: all(status_of(cluster, n).commit_length >= 4 for n in cluster.ids),
        15.0,
        "every node to commit the acknowledged SETs",
    )
    return acknowledged


def assert_in_no_log(cluster: LocalCluster, value: str) -> None:
    for node in cluster.ids:
        values = [
            e.command.value for e in cluster.log_entries(node) if isinstance(e.command, SetCommand)
        ]
        assert value not in values, f"node {node} stored the forged entry {value!r}"
