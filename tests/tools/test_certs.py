"""`raftkv certs`: the CA and node certificates, their names, idempotence, and a real TLS node."""

from __future__ import annotations

import ipaddress
import json
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509

from raftkv.server.launch import NodeLaunch, TlsFiles
from raftkv_tools import certs
from raftkv_tools.launcher import spawn_node
from raftkv_tools.ports import free_ports


def sans(path: Path) -> set[object]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(names.get_values_for_type(x509.IPAddress)) | set(
        names.get_values_for_type(x509.DNSName)
    )


def actions(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line.split()[0] for line in capsys.readouterr().out.splitlines()]


def test_a_ca_and_a_certificate_per_node_then_nothing_on_a_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tls"
    hosts = ["0=10.0.0.10,raftkv-0", "1=10.0.0.11,raftkv-1", "2=10.0.0.12,raftkv-2"]
    assert certs.main(["--out", str(out), "--hosts", *hosts]) == 0
    assert actions(capsys) == ["created"] * 4
    assert sans(out / "node-1.pem") == {
        ipaddress.ip_address("10.0.0.11"),
        "raftkv-1",
        "raftkv-node-1",
    }
    for key in ("ca.key", "node-0.key"):
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    node = x509.load_pem_x509_certificate((out / "node-2.pem").read_bytes())
    node.verify_directly_issued_by(ca)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert certs.main(["--out", str(out), "--hosts", *hosts]) == 0
    assert actions(capsys) == ["kept"] * 4
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_changed_name_renews_only_that_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tls"
    certs.main(["--out", str(out), "--hosts", "0=10.0.0.10", "1=10.0.0.11"])
    capsys.readouterr()
    certs.main(["--out", str(out), "--hosts", "0=10.0.0.10", "1=10.0.0.99"])
    assert actions(capsys) == ["kept", "kept", "renewed"]
    assert sans(out / "node-1.pem") == {ipaddress.ip_address("10.0.0.99"), "raftkv-node-1"}


def test_a_new_ca_reissues_every_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tls"
    certs.main(["--out", str(out), "--hosts", "0=10.0.0.10", "1=10.0.0.11"])
    (out / "ca.key").unlink()
    capsys.readouterr()
    certs.main(["--out", str(out), "--hosts", "0=10.0.0.10", "1=10.0.0.11"])
    assert actions(capsys) == ["renewed", "renewed", "renewed"]


def test_names_come_from_every_address_in_the_cluster_description(tmp_path: Path) -> None:
    description = tmp_path / "cluster.json"
    description.write_text(
        json.dumps(
            {
                "name": "geo",
                "nodes": [
                    {
                        "id": 0,
                        "address": "34.1.1.1:50050",
                        "peer_address": "10.42.0.10:50050",
                        "host": "deploy@34.1.1.1",
                        "name": "raftkv-0",
                    }
                ],
            }
        )
    )
    assert certs.main(["--out", str(tmp_path / "tls"), "--cluster", str(description)]) == 0
    assert sans(tmp_path / "tls" / "node-0.pem") == {
        ipaddress.ip_address("34.1.1.1"),
        ipaddress.ip_address("10.42.0.10"),
        "raftkv-0",
        "raftkv-node-0",
    }


@pytest.mark.parametrize(
    "args",
    [
        ["--hosts", "zero=10.0.0.1"],
        ["--hosts", "0=10.0.0.1", "0=10.0.0.2"],
        ["--hosts", "0=not a name"],
        ["--cluster", "/nonexistent/cluster.json"],
    ],
)
def test_bad_arguments_exit_2(
    tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert certs.main(["--out", str(tmp_path / "tls"), *args]) == 2
    assert capsys.readouterr().err.startswith("raftkv certs: ")


def test_a_node_serves_tls_with_these_certificates(tmp_path: Path) -> None:
    from raftkv.client import SyncClient
    from raftkv.cluster import PEER_PORT_OFFSET, ClusterDescription, NodeAddress

    out = tmp_path / "tls"
    assert certs.main(["--out", str(out), "--hosts", "0=127.0.0.1,localhost"]) == 0
    port = free_ports(1, offsets=(0, PEER_PORT_OFFSET))[0]
    cluster = ClusterDescription((NodeAddress(0, f"127.0.0.1:{port}", "localhost", "."),))
    cluster.save(tmp_path / "cluster.json")
    node = spawn_node(
        NodeLaunch(
            0,
            cluster=tmp_path / "cluster.json",
            data_dir=tmp_path / "data",
            quiet=True,
            tls=TlsFiles(out / "ca.pem", out / "node-0.pem", out / "node-0.key"),
            certs=out,
        )
    )
    try:
        with SyncClient(cluster, timeout=10, tls_root_cert=(out / "ca.pem").read_bytes()) as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    client.set("k", "over TLS")
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            assert client.get("k") == "over TLS"
    finally:
        node.terminate()
        node.wait(timeout=10)


def test_client_and_local_certificates_and_reissue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tls"
    assert certs.main(["--out", str(out), "--local", "2", "--client", "ops"]) == 0
    assert actions(capsys) == ["created"] * 4
    assert sans(out / "node-1.pem") == {
        ipaddress.ip_address("127.0.0.1"),
        "localhost",
        "raftkv-node-1",
    }
    client = x509.load_pem_x509_certificate((out / "client-ops.pem").read_bytes())
    assert sans(out / "client-ops.pem") == {"raftkv-client-ops"}
    usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [u.dotted_string for u in usages] == ["1.3.6.1.5.5.7.3.2"]  # clientAuth only
    before = (out / "node-0.key").read_bytes()
    assert certs.main(["--out", str(out), "--local", "2", "--client", "ops", "--reissue"]) == 0
    assert actions(capsys) == ["kept", "renewed", "renewed", "renewed"]
    assert (out / "node-0.key").read_bytes() != before
    assert certs.main(["--out", str(out), "--local", "1", "--client", "Bad Name"]) == 2
