"""The peer listener's configuration: peer addresses and cluster id in the description, and a
node that will not start its peer listener without certificates (issue 13, part 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raftkv.cluster import PEER_PORT_OFFSET, ClusterConfigError, ClusterDescription, NodeAddress
from raftkv.server import main as node_main
from raftkv.tls import TlsConfigError, client_tls, node_id_from_names, node_name, peer_node_id
from raftkv_tools.certs import issue as issue_certificates
from raftkv_tools.certs import local_nodes


def test_a_peer_address_defaults_to_the_client_port_plus_the_offset() -> None:
    node = NodeAddress(0, "10.0.0.1:50050")
    assert node.peer_address == f"10.0.0.1:{50050 + PEER_PORT_OFFSET}"
    assert NodeAddress(0, "10.0.0.1:50050", peer_address="10.1.0.1:7000").peer_address == (
        "10.1.0.1:7000"
    )


def test_the_description_round_trips_peer_addresses_cluster_id_and_certs(tmp_path: Path) -> None:
    description = ClusterDescription(
        (NodeAddress(0, "10.0.0.1:50050", peer_address="10.1.0.1:7000"),),
        name="geo",
        cluster_id="geo-1",
        peer_certs="tls",
    )
    path = tmp_path / "cluster.json"
    description.save(path)
    body = json.loads(path.read_text())
    assert body["cluster_id"] == "geo-1" and body["peer_certs"] == "tls"
    loaded = ClusterDescription.load(path)
    assert loaded.node(0).peer_address == "10.1.0.1:7000"
    assert loaded.cluster_id == "geo-1"
    assert loaded.peer_certs == str((tmp_path / "tls").resolve())
    assert ClusterDescription((NodeAddress(0, "h:1"),), name="n").cluster_id == "n"


@pytest.mark.parametrize(
    "nodes",
    [
        # a peer address that is another node's client address
        (NodeAddress(0, "h:1", peer_address="h:2"), NodeAddress(1, "h:2")),
        # two nodes with one peer address
        (NodeAddress(0, "h:1", peer_address="h:9"), NodeAddress(1, "h:2", peer_address="h:9")),
    ],
)
def test_two_listeners_on_one_address_are_refused(nodes: tuple[NodeAddress, ...]) -> None:
    with pytest.raises(ClusterConfigError, match="share one address"):
        ClusterDescription(nodes)


def test_a_client_port_without_room_for_its_peer_port_is_refused() -> None:
    with pytest.raises(ClusterConfigError, match="peer_address"):
        NodeAddress(0, "h:65000")


def test_a_node_is_named_by_exactly_one_node_name() -> None:
    assert node_id_from_names([b"127.0.0.1", node_name(7).encode()]) == 7
    assert node_id_from_names(["raftkv-node-1", "raftkv-node-2"]) is None
    assert node_id_from_names(["raftkv-client-ops", "raftkv-node-01", "raftkv-node-x"]) is None
    assert peer_node_id({"x509_subject_alternative_name": [b"raftkv-node-3"]}) == 3
    assert peer_node_id({}) is None


def test_a_client_description_with_half_a_certificate_is_refused(tmp_path: Path) -> None:
    issue_certificates(tmp_path, local_nodes(1), clients=["ops"])
    ca = str(tmp_path / "ca.pem")
    assert client_tls({}) == (None, None)
    root, pair = client_tls(
        {
            "ca": ca,
            "cert": str(tmp_path / "client-ops.pem"),
            "key": str(tmp_path / "client-ops.key"),
        }
    )
    assert root == (tmp_path / "ca.pem").read_bytes() and pair is not None
    with pytest.raises(TlsConfigError, match="both 'cert' and 'key'"):
        client_tls({"ca": ca, "cert": str(tmp_path / "client-ops.pem")})


def run_node(tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    status = node_main.main(
        ["--id", "0", "--peers", "127.0.0.1:1,127.0.0.1:2", "--data-dir", str(tmp_path), *flags]
    )
    return status, capsys.readouterr().err


def test_a_node_without_peer_certificates_does_not_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = run_node(tmp_path, capsys)
    assert status == 2
    assert "peers need certificates: give --certs DIR" in err
    assert "--insecure-peers --allow-unsafe" in err
    assert not any(tmp_path.iterdir()), "nothing may be written before the refusal"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--certs", "/nonexistent"], "cannot read the CA certificate /nonexistent/ca.pem"),
        (["--peer-ca", "/x/ca.pem"], "needs all of --peer-ca, --peer-cert and --peer-key"),
        (["--client-cert-auth", "--certs", "CERTS"], "--client-cert-auth needs --tls-ca"),
        (["--insecure-peers", "--certs", "CERTS"], "contradicts the peer certificates"),
        (["--tls-ca", "/x/ca.pem", "--certs", "CERTS"], "needs all of --tls-ca, --tls-cert"),
    ],
)
def test_bad_certificate_flags_are_refused_with_a_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    certs = tmp_path / "tls"
    issue_certificates(certs, local_nodes(2))
    flags = [str(certs) if flag == "CERTS" else flag for flag in flags]
    status, err = run_node(tmp_path / "data", capsys, *flags)
    assert status == 2
    assert message in err, err


def test_a_key_that_is_not_pem_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "tls"
    issue_certificates(certs, local_nodes(2))
    (certs / "node-0.key").write_text("not a key\n")
    status, err = run_node(tmp_path / "data", capsys, "--certs", str(certs))
    assert status == 2
    assert f"the private key {certs / 'node-0.key'} is not a PEM file" in err


def test_a_ca_bundle_admits_peers_certified_by_either_ca(tmp_path: Path) -> None:
    """What CA rotation rests on: with `ca.pem` holding the old and the new CA, a node accepts
    peers certified by either; trusting the old CA alone, it refuses the new CA's node."""
    import asyncio

    import grpc

    from raftkv.rpc import raftkv_pb2 as pb
    from raftkv.rpc import raftkv_pb2_grpc
    from raftkv.tls import TARGET_NAME_OPTION, LoadedTls, TlsFiles

    old, new = tmp_path / "old", tmp_path / "new"
    issue_certificates(old, local_nodes(2))
    issue_certificates(new, local_nodes(2))
    bundle = (old / "ca.pem").read_bytes() + (new / "ca.pem").read_bytes()
    own = TlsFiles.in_directory(old, 0).load()

    class Peer(raftkv_pb2_grpc.KeyValueServicer):
        async def Status(  # noqa: N802
            self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
        ) -> pb.StatusResponse:
            return pb.StatusResponse(node_id=peer_node_id(context.auth_context()) or 99)

    async def call(trusted: bytes, folder: Path) -> int | grpc.StatusCode:
        server = grpc.aio.server()
        raftkv_pb2_grpc.add_KeyValueServicer_to_server(Peer(), server)
        credentials = LoadedTls(trusted, own.cert, own.key)
        port = server.add_secure_port(
            "127.0.0.1:0", credentials.server_credentials(require_client_auth=True)
        )
        await server.start()
        caller = TlsFiles.in_directory(folder, 1).load()
        channel_credentials = LoadedTls(bundle, caller.cert, caller.key).channel_credentials()
        options = ((TARGET_NAME_OPTION, node_name(0)),)
        try:
            async with grpc.aio.secure_channel(
                f"127.0.0.1:{port}", channel_credentials, options
            ) as channel:
                reply = await raftkv_pb2_grpc.KeyValueStub(channel).Status(
                    pb.StatusRequest(), timeout=5
                )
                return reply.node_id
        except grpc.aio.AioRpcError as error:
            return error.code()
        finally:
            await server.stop(None)

    assert asyncio.run(call(bundle, old)) == 1
    assert asyncio.run(call(bundle, new)) == 1
    assert asyncio.run(call((old / "ca.pem").read_bytes(), new)) == grpc.StatusCode.UNAVAILABLE
