"""The deployment kit on real hosts: three systemd-nspawn Debian 12 containers (hostlab.py).

The inventory and cluster description come from Terraform's own modules/cluster_files (as after
`terraform apply`), the real playbook deploys over SSH with become and systemd, the cluster serves
TLS requests from this machine to clients with a client certificate only, the peer port admits
node certificates only, a configuration change together with new certificates for every node
restarts the nodes one at a time, a re-run changes nothing, and the real Fabric tasks inject
faults before `raftkv logs review` checks what gather-logs collected. Everything is torn down
even when a test fails.

Skips (with the reason) without root, the tools (`make infra-deps`), the deploy extra, or a
reachable Debian mirror for the one-time debootstrap. RAFTKV_HOSTLAB_ARTIFACTS=DIR keeps the
playbook recaps, Fabric output, the review and its picture there.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from raftkv.cluster import ClusterDescription
from raftkv.tls import client_tls

pytest.importorskip("fabric", reason="install the deploy extra: make infra-deps")
pytest.importorskip("ansible", reason="install the deploy extra: make infra-deps")

from raftkv.client import SyncClient
from raftkv.client.library import NodeStatusRow
from tests.infra import hostlab
from tests.infra.peer_check import peer_stream_code

REPO_ROOT = Path(__file__).resolve().parents[2]
from infra import deploy  # noqa: E402

VENV_BIN = Path(sys.executable).parent
RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
T = TypeVar("T")
CLIENT_PORT, PEER_PORT = 50050, 51050
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@dataclass
class Deployment:
    lab: hostlab.HostLab
    work: Path
    cluster_json: Path
    inventory: Path
    source: Path
    artifacts: Path | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def description(self) -> ClusterDescription:
        return ClusterDescription.load(self.cluster_json)

    def client(self, *, timeout: float = 10.0, certificate: bool = True) -> SyncClient:
        """A client as cluster.json describes it: the CA and the operator's certificate
        (`certificate=False` leaves the certificate out)."""
        ca, pair = client_tls(self.description.tls)
        return SyncClient(
            self.description,
            timeout=timeout,
            per_try_timeout=1.0,
            tls_root_cert=ca,
            tls_client_cert=pair if certificate else None,
        )

    def fingerprints(self, remote_file: str) -> dict[str, str]:
        """host name -> sha256 of `remote_file` there."""
        return {
            host.name: self.lab.ssh(host, f"sudo sha256sum {remote_file}").stdout.split()[0]
            for host in self.lab.hosts
        }

    def save(self, name: str, text: str) -> None:
        if self.artifacts is not None:
            (self.artifacts / name).write_text(text)

    def playbook(self, *extra: str, name: str) -> dict[str, int]:
        """Run site.yml; returns host -> changed, after checking nothing failed."""
        command = deploy.playbook_command(
            self.inventory,
            private_key=self.lab.key_path,
            extra=[
                "-e",
                "raftkv_apt_update_cache=false",
                "-e",
                f"raftkv_project_dir={self.source}",
                "-e",
                f"raftkv_wheelhouse_controller_dir={self.work / 'wheelhouse'}",
                *extra,
            ],
        )
        started = time.monotonic()
        control = self.work / f"cp-{name}"
        control.mkdir()
        result = subprocess.run(
            command,
            env=deploy.ansible_environment(control),
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        self.timings[name] = time.monotonic() - started
        self.save(f"playbook-{name}.log", result.stdout + result.stderr)
        self.save("timings.txt", ", ".join(f"{k} {v:.0f}s" for k, v in self.timings.items()))
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        recap = {host: (int(c), int(u), int(f)) for host, c, u, f in RECAP.findall(result.stdout)}
        assert recap and all(u == 0 and f == 0 for _, u, f in recap.values()), result.stdout[-3000:]
        # site.yml has two plays; a host's changes are summed over both recap lines.
        changed: dict[str, int] = {}
        for host, c, _, _ in RECAP.findall(result.stdout):
            changed[host] = changed.get(host, 0) + int(c)
        return changed

    def fab(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the real `fab` command; tasks get this cluster's description."""
        cluster = [] if args[0].startswith("-") else ["--cluster", str(self.cluster_json)]
        result = subprocess.run(
            [
                str(VENV_BIN / "fab"),
                "-r",
                str(REPO_ROOT),
                "-i",
                str(self.lab.key_path),
                *args,
                *cluster,
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check:
            assert result.returncode == 0, f"fab {' '.join(args)}: {result.stdout}{result.stderr}"
        return result


def snapshot_sources(target: Path) -> Path:
    """The files the wheel is built from, frozen: engineers editing the tree during the run must
    not make the idempotence check see a new wheel."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, target / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "raftkv", target / "raftkv", ignore=ignore)
    (target / "infra").mkdir()
    shutil.copy2(REPO_ROOT / "infra" / "wheelhouse.py", target / "infra" / "wheelhouse.py")
    return target


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if shutil.which("terraform") is None:
        pytest.skip("terraform is not on PATH (it renders the inventory)")
    try:
        hostlab.check_prerequisites()
    except hostlab.LabUnavailable as error:
        pytest.skip(str(error))
    work = tmp_path_factory.mktemp("hostlab")
    artifacts_env = os.environ.get("RAFTKV_HOSTLAB_ARTIFACTS")
    artifacts = Path(artifacts_env) if artifacts_env else None
    if artifacts is not None:
        artifacts.mkdir(parents=True, exist_ok=True)
    lab = hostlab.HostLab(3)
    started = time.monotonic()
    try:
        try:
            lab.up()
        except hostlab.LabUnavailable as error:
            pytest.skip(str(error))
        booted = time.monotonic() - started
        os.environ.setdefault("CHECKPOINT_DISABLE", "1")
        cluster_json, inventory = deploy.render_cluster_files(
            [deploy.LabNode(h.index, h.name, h.address) for h in lab.hosts],
            work / "cluster",
            cluster_name="lab",
            profile="fast",
            port=CLIENT_PORT,
            peer_port=PEER_PORT,
            ssh_user=hostlab.DEPLOY_USER,
            tls=True,
            client_cert_auth=True,
        )
        source = snapshot_sources(_mkdir(work / "source"))
        result = Deployment(lab, work, cluster_json, inventory, source, artifacts)
        result.timings["boot"] = booted
        yield result
    finally:
        lab.down()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def wait_for(condition: Callable[[], T | bool | None], timeout: float, what: str) -> T | bool:
    """Poll `condition()` until it returns something other than None or False (0 is a node id)."""
    deadline = time.monotonic() + timeout
    last: T | bool | None = None
    while time.monotonic() < deadline:
        last = condition()
        if last is not None and last is not False:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def leader_of(rows: list[NodeStatusRow], excluding: AbstractSet[int] = frozenset()) -> int | None:
    """The leader a majority follows (ignoring `excluding`), or None."""
    leaders = [r for r in rows if r.reachable and r.role == "leader" and r.node_id not in excluding]
    if not leaders:
        return None
    top = max(leaders, key=lambda r: r.term or 0)
    followers = [
        r for r in rows if r.reachable and r.term == top.term and r.leader_id == top.node_id
    ]
    return top.node_id if len(followers) >= 2 else None


def test_the_playbook_deploys_a_cluster_that_serves_tls_clients(deployment: Deployment) -> None:
    changed = deployment.playbook(name="first")
    assert set(changed) == {h.name for h in deployment.lab.hosts}
    assert all(count > 0 for count in changed.values())
    assert re.fullmatch(r"lab-[0-9a-f]{8}", deployment.description.cluster_id)
    with deployment.client() as client:
        wait_for(lambda: leader_of(client.status()) is not None, 30, "a leader")
        client.set("greeting", "hello from the host lab")
        assert client.get("greeting") == "hello from the host lab"
    # --client-cert-auth: without a certificate no node answers.
    with deployment.client(timeout=2.0, certificate=False) as client:
        assert not any(row.reachable for row in client.status())
    # The peer port: mutual TLS, and a client certificate names no node.
    tls = deployment.cluster_json.parent / "tls"
    ca = (tls / "ca.pem").read_bytes()
    ops = (tls / "client-ops.key").read_bytes(), (tls / "client-ops.pem").read_bytes()
    peer = deployment.description.node(0).peer_address
    assert peer == f"{deployment.lab.hosts[0].address}:{PEER_PORT}"
    assert peer_stream_code(peer, 0, grpc.ssl_channel_credentials(ca, *ops)) == (
        "PERMISSION_DENIED"
    )
    assert peer_stream_code(peer, 0, grpc.ssl_channel_credentials(ca)) == "UNAVAILABLE"
    for host in deployment.lab.hosts:
        # gRPC listens on IPv4 addresses as IPv4-mapped IPv6 ones: [::ffff:10.232.0.11]:50050.
        listening = deployment.lab.ssh(host, "ss -Hltn").stdout
        for port in (CLIENT_PORT, PEER_PORT):
            assert re.search(rf"[\s:]{re.escape(host.address)}\]?:{port}\s", listening), listening
        node_json = deployment.lab.ssh(host, "sudo cat /etc/raftkv/cluster.json").stdout
        assert deployment.description.cluster_id in node_json
        verify = deployment.lab.ssh(host, "sudo systemd-analyze verify raftkv.service", check=False)
        assert verify.returncode == 0 and verify.stdout == "" and verify.stderr == "", verify
        shown = deployment.lab.ssh(
            host,
            "systemctl show -p NoNewPrivileges -p ProtectSystem "
            "-p PrivateTmp -p User -p Restart raftkv",
        ).stdout
        for setting in (
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "User=raftkv",
            "Restart=on-failure",
        ):
            assert setting in shown
        files = deployment.lab.ssh(
            host, "stat -c '%U:%G %a %n' /etc/raftkv/tls/node.key /var/lib/raftkv"
        ).stdout
        assert "root:raftkv 640 /etc/raftkv/tls/node.key" in files
        assert "raftkv:raftkv 750 /var/lib/raftkv" in files
    exposure = deployment.lab.ssh(
        deployment.lab.hosts[0], "sudo systemd-analyze security raftkv.service --no-pager | tail -1"
    )
    deployment.save("security.txt", exposure.stdout)


class Writer(threading.Thread):
    """SETs every 0.1 s while the rolling restart runs, to show the cluster keeps serving."""

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(daemon=True)
        self.deployment = deployment
        self.stop = threading.Event()
        self.outcomes: list[tuple[float, bool]] = []

    def run(self) -> None:
        with self.deployment.client() as client:
            count = 0
            while not self.stop.is_set():
                count += 1
                try:
                    client.set("rolling", str(count))
                    self.outcomes.append((time.monotonic(), True))
                except Exception:
                    self.outcomes.append((time.monotonic(), False))
                self.stop.wait(0.1)

    def longest_gap(self) -> float:
        times = [t for t, ok in self.outcomes if ok]
        return max((b - a for a, b in itertools.pairwise(times)), default=float("inf"))


def restart_windows(deployment: Deployment) -> dict[int, tuple[str, str]]:
    """node id -> (its last `shutting down` stamp, the `starting at` stamp after it)."""
    windows = {}
    for host in deployment.lab.hosts:
        lines = deployment.lab.ssh(
            host,
            f"grep -hE 'shutting down|starting at' /var/lib/raftkv/logs_node_{host.index}/dump.txt",
        ).stdout.splitlines()
        stops = [i for i, line in enumerate(lines) if "shutting down" in line]
        if stops and stops[-1] + 1 < len(lines):
            windows[host.index] = (lines[stops[-1]].split()[0], lines[stops[-1] + 1].split()[0])
    return windows


def test_a_change_and_new_certificates_restart_one_node_at_a_time(
    deployment: Deployment,
) -> None:
    """A configuration change and a rotation of every node's certificate (same CA) in one run;
    the writer keeps the client certificate it started with, which stays valid."""
    node_certs = deployment.fingerprints("/etc/raftkv/tls/node.pem")
    ops_cert = (deployment.cluster_json.parent / "tls" / "client-ops.pem").read_bytes()
    with deployment.client() as client:
        leaders = [row.node_id for row in client.status() if row.role == "leader"]
    assert len(leaders) == 1, leaders
    writer = Writer(deployment)
    writer.start()
    try:
        changed = deployment.playbook(
            "-e",
            "raftkv_max_clock_drift=0.02",
            "-e",
            "raftkv_certs_reissue=true",
            name="drift-change",
        )
    finally:
        writer.stop.set()
        writer.join(timeout=30)
    assert all(count > 0 for count in changed.values())
    rotated = deployment.fingerprints("/etc/raftkv/tls/node.pem")
    assert all(rotated[name] != node_certs[name] for name in node_certs), (node_certs, rotated)
    assert (deployment.cluster_json.parent / "tls" / "client-ops.pem").read_bytes() != ops_cert
    windows = restart_windows(deployment)
    assert sorted(windows) == [0, 1, 2], windows
    ordered = sorted(windows.values())
    for (_, first_started), (second_stopped, _) in itertools.pairwise(ordered):
        assert first_started < second_stopped, f"restarts overlapped: {ordered}"
    # The leader went last, and handed leadership over before it was stopped.
    last = max(windows, key=lambda node: windows[node][0])
    assert last == leaders[0], (leaders, windows)
    old_leader = next(host for host in deployment.lab.hosts if host.index == last)
    handed = deployment.lab.ssh(
        old_leader,
        f"grep -c 'transferring leadership' /var/lib/raftkv/logs_node_{last}/dump.txt || true",
    )
    assert int(handed.stdout) >= 1, f"node {last} did not hand leadership over"
    for host in deployment.lab.hosts:
        started = deployment.lab.ssh(
            host, f"grep -c 'max drift 0.02' /var/lib/raftkv/logs_node_{host.index}/dump.txt"
        )
        assert int(started.stdout) >= 1
    ok = sum(1 for _, good in writer.outcomes if good)
    deployment.save(
        "rolling-restart.txt",
        f"restart windows (shutdown, start): {windows}\n"
        f"writes: {ok} ok, {len(writer.outcomes) - ok} failed; longest gap between "
        f"successful writes {writer.longest_gap():.2f}s\n",
    )
    assert ok > 0 and writer.longest_gap() < 30


def test_a_rerun_changes_nothing(deployment: Deployment) -> None:
    changed = deployment.playbook("-e", "raftkv_max_clock_drift=0.02", name="rerun")
    assert changed == {h.name: 0 for h in deployment.lab.hosts}


def test_fabric_faults_then_the_log_review(deployment: Deployment) -> None:
    transcript: list[str] = []

    def fab(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = deployment.fab(*args, check=check)
        transcript.append(f"$ fab {' '.join(args)}\n{result.stdout}{result.stderr}")
        return result

    listing = fab("--list")
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
        assert name in listing.stdout
    missing = fab("kill-node", "--id", "7", check=False)
    assert missing.returncode != 0 and "node 7 does not exist" in missing.stderr

    with deployment.client() as client:
        leader = wait_for(lambda: leader_of(client.status()), 30, "a leader")
        assert isinstance(leader, int)
        fab("status")

        # Crash the leader: the others elect a new one, systemd restarts the victim.
        fab("kill-node", "--id", str(leader))
        wait_for(lambda: leader_of(client.status(), {leader}), 30, "a new leader after the kill")
        client.set("after-kill", "1")
        victim = deployment.lab.hosts[leader]
        wait_for(
            lambda: (
                "NRestarts=0"
                not in deployment.lab.ssh(victim, "systemctl show -p NRestarts raftkv").stdout
            ),
            30,
            "systemd to restart the killed node",
        )

        # Freeze the current leader: the others move on; it rejoins after SIGCONT.
        paused = wait_for(lambda: leader_of(client.status()), 30, "a leader to pause")
        assert isinstance(paused, int)
        fab("pause-node", "--id", str(paused))
        wait_for(lambda: leader_of(client.status(), {paused}), 30, "a leader while one is paused")
        client.set("during-pause", "1")
        fab("status")
        fab("resume-node", "--id", str(paused))

        # Cut the leader off: the majority elects another; heal reunites them.
        isolated = wait_for(lambda: leader_of(client.status()), 30, "a leader to isolate")
        assert isinstance(isolated, int)
        fab("partition", "--groups", str(isolated))
        wait_for(lambda: leader_of(client.status(), {isolated}), 30, "a majority-side leader")
        client.set("during-partition", "1")
        fab("status")
        fab("heal")
        wait_for(
            lambda: (
                all(r.reachable and r.leader_id is not None for r in client.status())
                and len({r.term for r in client.status()}) == 1
            ),
            30,
            "the healed cluster to agree on a leader",
        )
        assert client.get("during-partition") == "1"

    # A host whose sshd refuses connections is named as unreachable.
    netns = deployment.lab.hosts[2].netns
    block = ["ip", "netns", "exec", netns, "nft"]
    subprocess.run(
        [
            *block,
            "add table inet lab; add chain inet lab in { type filter hook input "
            "priority -20; policy accept; }; add rule inet lab in tcp dport 22 reject "
            "with tcp reset",
        ],
        check=True,
    )
    try:
        refused = fab("pause-node", "--id", "2", check=False)
        assert refused.returncode == 1
        assert "node 2 (deploy@10.232.0.13) is unreachable over SSH" in refused.stderr
        status = fab("status")
        assert "ssh unreachable" in status.stdout
    finally:
        subprocess.run([*block, "delete table inet lab"], check=True)

    gathered = fab("gather-logs", "--dest", str(deployment.work / "collected"))
    match = re.search(r"gathered into (\S+)", gathered.stdout)
    assert match, gathered.stdout
    collected = Path(match.group(1))
    for node in range(3):
        for name in ("dump.txt", "logs.txt", "metadata.txt"):
            assert (collected / f"node-{node}" / name).is_file()
    journal = (collected / "faults.log").read_text().splitlines()
    assert [line.split()[2] for line in journal] == [
        "kill-node",
        "pause-node",
        "resume-node",
        "partition",
        "heal",
    ]  # the refused pause-node did nothing, so it is not in the journal

    picture = deployment.work / "timeline.png"
    review = subprocess.run(
        [
            sys.executable,
            "-m",
            "raftkv_tools.logreview",
            "review",
            str(collected),
            "--plot",
            str(picture),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    deployment.save("fabric.txt", "\n".join(transcript))
    deployment.save("review.txt", review.stdout + review.stderr)
    if deployment.artifacts is not None:
        shutil.copytree(collected, deployment.artifacts / "collected", dirs_exist_ok=True)
        if picture.exists():
            shutil.copy2(picture, deployment.artifacts / "timeline.png")
    assert review.returncode == 0, review.stdout[-5000:] + review.stderr
    assert "Invariants hold" in review.stdout
    assert "Crashes (a start with no shutdown line before it): 1" in review.stdout
    assert picture.read_bytes()[:4] == b"\x89PNG"
