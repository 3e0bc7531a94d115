"""fabfile.py without hosts: the cluster description drives it, local nodes are processes named
by pid files, and every task says clearly when a node does not exist or cannot be reached.
(The host lab test runs the same tasks over SSH against real hosts.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fabric", reason="install the deploy extra: make infra-deps")

from invoke.context import Context
from invoke.exceptions import Exit

import fabfile
from raftkv.cluster import ClusterDescription

REPO_ROOT = Path(__file__).resolve().parents[2]


def proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A description like `make cluster-up` writes, whose node 0 is a stand-in process."""
    data = tmp_path / "data"
    (data / "logs_node_0").mkdir(parents=True)
    for name in ("dump.txt", "logs.txt", "metadata.txt", "dump.txt.1", "unrelated.tmp"):
        (data / "logs_node_0" / name).write_text(name + "\n")
    description = tmp_path / "cluster.json"
    description.write_text(
        json.dumps(
            {
                "name": "local",
                "profile": "fast",
                "nodes": [
                    {
                        "id": i,
                        "address": f"127.0.0.1:{59990 + i}",
                        "host": "localhost",
                        "data_dir": str(data),
                    }
                    for i in range(3)
                ],
            }
        )
    )
    # The command line names raftkv, as a real node's does.
    stand_in = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "raftkv-node-stand-in"]
    )
    # Until it has exec'd, the child's /proc cmdline is still pytest's: wait for the stand-in's.
    deadline = time.monotonic() + 10
    while b"raftkv" not in Path(f"/proc/{stand_in.pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the stand-in process never started"
        time.sleep(0.01)
    (tmp_path / "node-0.pid").write_text(f"{stand_in.pid}\n")
    yield description, stand_in
    if stand_in.poll() is None:
        stand_in.kill()
    stand_in.wait()


def test_pause_resume_and_kill_a_local_node(
    local_cluster: tuple[Path, subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    description, stand_in = local_cluster
    fabfile.pause_node(Context(), id="0", cluster=str(description))
    time.sleep(0.2)
    assert proc_state(stand_in.pid) == "T"
    assert fabfile.local_state(
        fabfile.load_cluster(str(description)), fabfile.load_cluster(str(description)).node(0)
    ).endswith("PAUSED")
    fabfile.resume_node(Context(), id="0", cluster=str(description))
    time.sleep(0.2)
    assert proc_state(stand_in.pid) in ("S", "R")
    fabfile.kill_node(Context(), id="0", cluster=str(description))
    assert stand_in.wait(timeout=5) == -9
    out = capsys.readouterr().out
    assert f"node 0: sent SIGKILL to pid {stand_in.pid}" in out
    journal = (description.parent / "faults.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in journal] == [
        "fab pause-node 0 (SIGSTOP)",
        "fab resume-node 0 (SIGCONT)",
        "fab kill-node 0 (SIGKILL)",
    ]
    with pytest.raises(Exit, match="node 0 is not running"):
        fabfile.kill_node(Context(), id="0", cluster=str(description))


def test_unknown_nodes_and_missing_descriptions_are_named(
    local_cluster: tuple[Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    description, _ = local_cluster
    with pytest.raises(Exit, match=r"node 7 does not exist in .*cluster\.json \(nodes: 0, 1, 2\)"):
        fabfile.kill_node(Context(), id="7", cluster=str(description))
    with pytest.raises(Exit, match="is not a number"):
        fabfile.stop_node(Context(), id="x", cluster=str(description))
    with pytest.raises(Exit, match="no cluster description at"):
        fabfile.status(Context(), cluster=str(tmp_path / "missing.json"))


def test_a_local_partition_is_refused_with_the_reason(
    local_cluster: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    description, _ = local_cluster
    with pytest.raises(Exit, match="share an address"):
        fabfile.partition(Context(), groups="0", cluster=str(description))


def test_gather_logs_copies_the_node_files_and_says_what_is_missing(
    local_cluster: tuple[Path, subprocess.Popen[bytes]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    description, _ = local_cluster
    (description.parent / "faults.log").write_text("2026-01-01T00:00:00+00:00 fab heal\n")
    with pytest.raises(Exit, match=r"nodes \[1, 2\] could not be gathered"):
        fabfile.gather_logs(Context(), cluster=str(description), dest=str(tmp_path / "out"))
    (target,) = (tmp_path / "out").iterdir()
    assert sorted(p.name for p in (target / "node-0").iterdir()) == [
        "dump.txt",
        "dump.txt.1",
        "logs.txt",
        "metadata.txt",
    ]
    assert (target / "faults.log").exists() and (target / "cluster.json").exists()
    err = capsys.readouterr().err
    assert "node 1: NOT gathered:" in err and "logs_node_1 does not exist" in err


def test_an_unreachable_host_is_named(tmp_path: Path) -> None:
    description = tmp_path / "cluster.json"
    # A port on this machine where nothing listens: the SSH connection is refused at once.
    description.write_text(
        json.dumps(
            {
                "nodes": [
                    {
                        "id": 0,
                        "address": "127.0.0.1:59999",
                        "host": "nobody@127.0.0.1:1",
                        "data_dir": "/var/lib/raftkv",
                    }
                ],
            }
        )
    )
    with pytest.raises(Exit) as caught:
        fabfile.kill_node(Context(), id="0", cluster=str(description))
    assert "node 0 (nobody@127.0.0.1:1) is unreachable over SSH" in str(caught.value.message)


def test_partition_sides() -> None:
    cluster = fabfile.Cluster(
        Path("c.json"),
        ClusterDescription.from_addresses([f"10.0.0.{i}:1" for i in range(5)]),
        tuple(fabfile.Node(i, f"10.0.0.{i}:1", f"10.0.0.{i}", f"h{i}", "/d") for i in range(5)),
    )
    assert fabfile._partition_groups(cluster, "1") == [{1}, {0, 2, 3, 4}]
    assert fabfile._partition_groups(cluster, "0,1/2,3,4") == [{0, 1}, {2, 3, 4}]
    assert fabfile._partition_groups(cluster, "0/1/2") == [{0}, {1}, {2}, {3, 4}]
    with pytest.raises(Exit, match="two non-empty sides"):
        fabfile._partition_groups(cluster, "0,1,2,3,4")


def test_partitions_cut_the_peer_addresses(tmp_path: Path) -> None:
    description = tmp_path / "cluster.json"
    nodes: list[dict[str, object]] = [
        {"id": i, "address": f"34.1.1.{i}:50050", "peer_address": f"10.0.0.{i}:51050"}
        for i in range(2)
    ]
    nodes.append({"id": 2, "address": "34.1.1.2:50050"})  # peer_address: the default
    description.write_text(json.dumps({"nodes": nodes}))
    cluster = fabfile.load_cluster(str(description))
    assert [(n.address, n.peer_ip) for n in cluster.nodes] == [
        ("34.1.1.0:50050", "10.0.0.0"),
        ("34.1.1.1:50050", "10.0.0.1"),
        ("34.1.1.2:50050", "34.1.1.2"),
    ]


def write_tls_description(directory: Path, tls: dict[str, str], peer_certs: str = "tls") -> Path:
    """A one-node local cluster whose certificates (a CA, node 0, client ops) are in tls/."""
    from raftkv.cluster import PEER_PORT_OFFSET
    from raftkv_tools.certs import issue, local_nodes
    from raftkv_tools.ports import free_ports

    issue(directory / "tls", local_nodes(1), clients=["ops"])
    port = free_ports(1, offsets=(0, PEER_PORT_OFFSET))[0]
    path = directory / "cluster.json"
    node = {"id": 0, "address": f"127.0.0.1:{port}", "data_dir": str(directory / "data")}
    body = {"name": "local", "nodes": [node], "tls": tls, "peer_certs": peer_certs}
    path.write_text(json.dumps(body))
    return path


CLIENT_CERT_AUTH = {"ca": "tls/ca.pem", "cert": "tls/client-ops.pem", "key": "tls/client-ops.key"}


def test_a_local_node_starts_with_the_certificate_flags_of_the_hosts(tmp_path: Path) -> None:
    path = write_tls_description(tmp_path, CLIENT_CERT_AUTH)
    cluster = fabfile.load_cluster(str(path))
    command = fabfile.local_launch(cluster, cluster.node(0)).command(("raftkv-node",))
    tls = tmp_path / "tls"
    for flag, value in (
        ("--peer-ca", tls / "ca.pem"),
        ("--peer-cert", tls / "node-0.pem"),
        ("--peer-key", tls / "node-0.key"),
        ("--tls-ca", tls / "ca.pem"),
        ("--tls-cert", tls / "node-0.pem"),
        ("--tls-key", tls / "node-0.key"),
    ):
        assert command[command.index(flag) + 1] == str(value)
    assert "--client-cert-auth" in command and "--insecure-peers" not in command
    path = write_tls_description(tmp_path, {})
    command = fabfile.local_launch(fabfile.load_cluster(str(path)), cluster.node(0)).command(())
    assert "--peer-key" in command and "--tls-ca" not in command
    assert "--client-cert-auth" not in command
    path.write_text(json.dumps({"nodes": [{"id": 0, "address": "127.0.0.1:59990"}]}))
    with pytest.raises(Exit, match="names no peer_certs folder"):
        fabfile.start_node(Context(), id="0", cluster=str(path))


def test_status_presents_the_client_certificate_the_description_names(tmp_path: Path) -> None:
    path = write_tls_description(tmp_path, CLIENT_CERT_AUTH)
    fabfile.start_node(Context(), id="0", cluster=str(path))
    try:
        deadline = time.monotonic() + 30
        while " leader " not in (table := fabfile.status_table(fabfile.load_cluster(str(path)))):
            assert time.monotonic() < deadline, table
            time.sleep(0.3)
        # The node demands a client certificate: without one, status cannot reach it.
        body = json.loads(path.read_text())
        body["tls"] = {"ca": "tls/ca.pem"}
        path.write_text(json.dumps(body))
        assert "unreachable" in fabfile.status_table(fabfile.load_cluster(str(path)))
        body["tls"] = {"ca": "tls/ca.pem", "cert": "tls/client-ops.pem"}
        path.write_text(json.dumps(body))
        with pytest.raises(Exit, match="needs both 'cert' and 'key'"):
            fabfile.status(Context(), cluster=str(path))
    finally:
        fabfile.stop_node(Context(), id="0", cluster=str(path))


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nft")
def test_the_partition_rules_are_valid_nftables() -> None:
    script = fabfile.nft_partition_script(["10.0.0.2", "10.0.0.3"])
    namespace = f"rkvfab-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        for _ in range(2):  # applying twice replaces the table: idempotent
            subprocess.run(
                ["ip", "netns", "exec", namespace, "nft", "-f", "-"],
                input=script,
                text=True,
                check=True,
            )
        listed = subprocess.run(
            ["ip", "netns", "exec", namespace, "nft", "list", "ruleset"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert listed.count("table inet raftkv_fault") == 1
        assert "ip saddr { 10.0.0.2, 10.0.0.3 } drop" in listed
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=True)


def test_every_task_is_documented_and_no_host_is_listed() -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "fabric", "--list"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in (
        "start-node",
        "stop-node",
        "kill-node",
        "pause-node",
        "resume-node",
        "restart-node",
        "partition",
        "heal",
        "status",
        "gather-logs",
    ):
        assert f"  {name} " in listing
    source = (REPO_ROOT / "fabfile.py").read_text()
    assert "env.hosts" not in source and "hosts=" not in source
