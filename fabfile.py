"""Fabric tasks: operate a raftkv cluster and inject faults, local or on hosts.

    fab --list
    fab status                                 # cluster/cluster.json, or $RAFTKV_CLUSTER
    fab -i ~/.ssh/key kill-node --id 1 --cluster cluster/gcp/cluster.json
    fab partition --groups 0,1/2               # nodes 0 and 1 on one side, 2 on the other
    fab gather-logs                            # -> collected/<timestamp>/node-<id>/

The nodes come from the cluster description (the file Ansible, the client and `make
cluster-up` use), never from a list in this file. A node whose `host` is "localhost" is a local
process: its pid is in `node-<id>.pid` beside the description (what `make cluster-up` writes).
Any other `host` is an SSH target (`user@address`) running the systemd unit `raftkv` that
infra/ansible installs; Fabric logs in as that user and uses sudo.

Certificates: `status` talks to the client ports with the description's `tls` (CA, and the
client certificate it names where nodes demand one). `start-node` starts a local node with the
TLS flags the hosts' units use: the node certificate of the description's `peer_certs` folder for
the peers, and for the client listener too when `tls` names a CA (--client-cert-auth when it
names a client certificate). `partition` cuts every packet between the nodes' peer addresses,
whatever the port.

Every fault task appends a line to `faults.log` beside the description, which gather-logs
copies with the logs so `raftkv logs review` can draw the faults on its timeline.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import fabric  # type: ignore[import-untyped]
import paramiko  # type: ignore[import-untyped]
from fabric import Connection
from invoke.context import Context
from invoke.exceptions import Exit

from raftkv.cluster import ClusterConfigError, ClusterDescription
from raftkv.server.launch import NodeLaunch
from raftkv.tls import TlsConfigError, TlsFiles, client_tls
from raftkv_tools.launcher import spawn_node

REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_CLUSTER = REPO_ROOT / "cluster" / "cluster.json"
CLUSTER_ENV = "RAFTKV_CLUSTER"
UNIT = "raftkv"
NFT_TABLE = "raftkv_fault"
LOG_FILES = ("dump.txt", "logs.txt", "metadata.txt")
FAULTS_LOG = "faults.log"
SSH_TIMEOUT = 10
COMMAND_TIMEOUT = 60
CLUSTER_HELP = f"cluster description (default: ${CLUSTER_ENV} or cluster/cluster.json)"
TaskFunction = TypeVar("TaskFunction", bound=Callable[..., None])


def task(**options: Any) -> Callable[[TaskFunction], TaskFunction]:
    """fabric.task, typed (Fabric ships no type information)."""
    return cast(Callable[[TaskFunction], TaskFunction], fabric.task(**options))


# What paramiko and sockets raise when a host cannot be reached or refuses us.
UNREACHABLE = (OSError, EOFError, paramiko.SSHException, socket.timeout)


@dataclass(frozen=True)
class Node:
    id: int
    address: str  # what clients dial
    peer_ip: str  # what peers dial (the address a partition cuts)
    host: str  # "localhost" or an SSH target
    data_dir: str

    @property
    def is_local(self) -> bool:
        return self.host == "localhost"

    @property
    def log_dir(self) -> str:
        return f"{self.data_dir.rstrip('/')}/logs_node_{self.id}"


@dataclass(frozen=True)
class Cluster:
    path: Path
    description: ClusterDescription
    nodes: tuple[Node, ...]

    def node(self, node_id: int | str) -> Node:
        try:
            wanted = int(node_id)
        except ValueError:
            raise Exit(f"node id {node_id!r} is not a number", code=2) from None
        for node in self.nodes:
            if node.id == wanted:
                return node
        known = ", ".join(str(n.id) for n in self.nodes)
        raise Exit(f"node {wanted} does not exist in {self.path} (nodes: {known})", code=2)

    @property
    def directory(self) -> Path:
        return self.path.parent


def load_cluster(path: str | None) -> Cluster:
    """The cluster description named by `path`, $RAFTKV_CLUSTER or cluster/cluster.json."""
    chosen = Path(path or os.environ.get(CLUSTER_ENV) or DEFAULT_CLUSTER)
    try:
        description = ClusterDescription.load(chosen)
    except ClusterConfigError as error:
        raise Exit(f"fab: {error}", code=2) from None
    nodes = tuple(
        Node(n.id, n.address, n.peer_address.rpartition(":")[0], n.host, n.data_dir)
        for n in description.nodes
    )
    return Cluster(chosen.resolve(), description, nodes)


def record_fault(cluster: Cluster, text: str) -> None:
    stamp = datetime.now(UTC).isoformat(timespec="microseconds")
    with (cluster.directory / FAULTS_LOG).open("a") as journal:
        journal.write(f"{stamp} fab {text}\n")


# -- remote hosts: plain functions taking a Connection ---------------------------------------


def remote_sudo(conn: Connection, command: str, *, warn: bool = False) -> Any:
    return conn.sudo(command, hide=True, warn=warn, timeout=COMMAND_TIMEOUT, pty=False)


def remote_unit_state(conn: Connection) -> dict[str, str]:
    """ActiveState, SubState and MainPID of the raftkv unit, plus State (R/S/T) of MainPID."""
    shown = conn.run(
        f"systemctl show -p ActiveState -p SubState -p MainPID {UNIT}",
        hide=True,
        warn=True,
        timeout=COMMAND_TIMEOUT,
    )
    state = dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)
    pid = state.get("MainPID", "0")
    if pid != "0":
        status = conn.run(f"grep '^State:' /proc/{pid}/status", hide=True, warn=True)
        state["State"] = status.stdout.split()[1] if status.ok and status.stdout.split() else "?"
    return state


def remote_start(conn: Connection) -> None:
    remote_sudo(conn, f"systemctl start {UNIT}")


def remote_stop(conn: Connection) -> None:
    remote_sudo(conn, f"systemctl stop {UNIT}")


def remote_restart(conn: Connection) -> None:
    remote_sudo(conn, f"systemctl restart {UNIT}")


def remote_signal(conn: Connection, signum: signal.Signals) -> bool:
    """Send `signum` to the node's main process; False when the unit has no main process."""
    if remote_unit_state(conn).get("MainPID", "0") == "0":
        return False
    # --kill-whom=main: plain `systemctl kill -s KILL` also signals the (exiting) control group
    # and exits 1.
    remote_sudo(conn, f"systemctl kill --kill-whom=main -s {signum.name} {UNIT}")
    return True


def nft_partition_script(blocked: Sequence[str]) -> str:
    """An nft script replacing the fault table with one that drops traffic to/from `blocked`."""
    addresses = ", ".join(blocked)
    return "\n".join(
        [
            f"table inet {NFT_TABLE}",
            f"delete table inet {NFT_TABLE}",
            f"table inet {NFT_TABLE} {{",
            "  chain input {",
            "    type filter hook input priority -10; policy accept;",
            f"    ip saddr {{ {addresses} }} drop",
            "  }",
            "  chain output {",
            "    type filter hook output priority -10; policy accept;",
            f"    ip daddr {{ {addresses} }} drop",
            "  }",
            "}",
            "",
        ]
    )


def remote_partition(conn: Connection, blocked: Sequence[str]) -> None:
    script = nft_partition_script(blocked)
    remote_sudo(conn, f"sh -c {shlex.quote(f'printf %s {shlex.quote(script)} | nft -f -')}")


def remote_heal(conn: Connection) -> None:
    remote_sudo(
        conn,
        f"sh -c 'nft list table inet {NFT_TABLE} >/dev/null 2>&1 "
        f"&& nft delete table inet {NFT_TABLE} || true'",
    )


def remote_gather(conn: Connection, node: Node, destination: Path) -> list[str]:
    listing = conn.run(f"ls -1 {shlex.quote(node.log_dir)}", hide=True, warn=True)
    if not listing.ok:
        raise FileNotFoundError(
            f"{node.log_dir} is missing or unreadable: {listing.stderr.strip()}"
        )
    names = [n for n in listing.stdout.split() if n.startswith(LOG_FILES)]
    for name in names:
        conn.get(f"{node.log_dir}/{name}", str(destination / name))
    return names


# -- local processes (make cluster-up) ---------------------------------------------------------


def local_pid(cluster: Cluster, node: Node) -> int | None:
    """The node's pid when its pid file names a live raftkv process."""
    try:
        pid = int((cluster.directory / f"node-{node.id}.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    if state in ("Z", "X") or b"raftkv" not in cmdline:
        return None
    return pid


def local_state(cluster: Cluster, node: Node) -> str:
    pid = local_pid(cluster, node)
    if pid is None:
        return "not running"
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return f"pid {pid}" + (" PAUSED" if state == "T" else "")


def local_launch(cluster: Cluster, node: Node) -> NodeLaunch:
    """A local node's start-up with the TLS flags the hosts' units use (infra/ansible, vars/
    main.yml): its certificate from the description's `peer_certs` for the peers, always, and for
    the client listener when `tls` names a CA, with --client-cert-auth when `tls` names a client
    certificate."""
    description = cluster.description
    if not description.peer_certs:
        raise Exit(
            f"{cluster.path} names no peer_certs folder, and node {node.id} needs its peer "
            "certificates: make them with `raftkv certs --out DIR --cluster FILE` and add "
            '"peer_certs": "DIR" to the description (or use `make cluster-up`)',
            code=2,
        )
    files = TlsFiles.in_directory(Path(description.peer_certs), node.id)
    ca = description.tls.get("ca")
    return NodeLaunch(
        node.id,
        cluster=cluster.path,
        data_dir=Path(node.data_dir),
        profile=description.profile,
        quiet=True,
        peer_tls=files,
        tls=TlsFiles(Path(ca), files.cert, files.key) if ca else None,
        client_cert_auth=bool(ca and description.tls.get("cert")),
    )


def local_start(cluster: Cluster, node: Node) -> int:
    spec = local_launch(cluster, node)
    process = spawn_node(
        spec, output=cluster.directory / f"node-{node.id}.out", new_session=True, cwd=REPO_ROOT
    )
    (cluster.directory / f"node-{node.id}.pid").write_text(f"{process.pid}\n")
    return process.pid


def local_stop(cluster: Cluster, node: Node, timeout: float = 5.0) -> bool:
    pid = local_pid(cluster, node)
    if pid is None:
        return False
    os.kill(pid, signal.SIGCONT)  # a paused node cannot handle SIGTERM
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while local_pid(cluster, node) == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    if local_pid(cluster, node) == pid:
        os.kill(pid, signal.SIGKILL)
    return True


def local_gather(node: Node, destination: Path) -> list[str]:
    source = Path(node.log_dir)
    if not source.is_dir():
        raise FileNotFoundError(f"{source} does not exist")
    names = sorted(p.name for p in source.iterdir() if p.name.startswith(LOG_FILES))
    for name in names:
        shutil.copy2(source / name, destination / name)
    return names


# -- dispatch ------------------------------------------------------------------------------------


@contextlib.contextmanager
def connect(c: Context, node: Node) -> Iterator[Connection]:
    """An SSH connection to the node's host, inheriting `fab -i KEY` and friends; says clearly
    when the host cannot be reached."""
    conn = Connection(node.host, config=c.config, connect_timeout=SSH_TIMEOUT)
    try:
        conn.open()
    except UNREACHABLE as error:
        raise Exit(
            f"node {node.id} ({node.host}) is unreachable over SSH: {error}", code=1
        ) from None
    try:
        yield conn
    finally:
        conn.close()


def _signal_node(c: Context, cluster: Cluster, node: Node, signum: signal.Signals) -> None:
    if node.is_local:
        pid = local_pid(cluster, node)
        if pid is None:
            raise Exit(f"node {node.id} is not running (no live pid in node-{node.id}.pid)", code=1)
        os.kill(pid, signum)
        print(f"node {node.id}: sent {signum.name} to pid {pid}")
        return
    with connect(c, node) as conn:
        if not remote_signal(conn, signum):
            raise Exit(f"node {node.id} ({node.host}): the raftkv unit is not running", code=1)
    print(f"node {node.id} ({node.host}): sent {signum.name} to the raftkv unit's main process")


def _partition_groups(cluster: Cluster, groups: str) -> list[set[int]]:
    sides = []
    for side in groups.split("/"):
        ids = {cluster.node(part.strip()).id for part in side.split(",") if part.strip()}
        if ids:
            sides.append(ids)
    everyone = {n.id for n in cluster.nodes}
    listed = set().union(*sides) if sides else set()
    if len(sides) == 1:
        sides.append(everyone - listed)  # "1" means: node 1 against the rest
    elif listed != everyone:
        sides.append(everyone - listed)
    if len([s for s in sides if s]) < 2:
        raise Exit("a partition needs at least two non-empty sides, e.g. --groups 0,1/2", code=2)
    return [s for s in sides if s]


def status_table(cluster: Cluster, context: Context | None = None) -> str:
    """One row per node: where it runs, its process, and what its Status RPC says. `context`
    carries SSH settings (`fab -i KEY`) for hosts."""
    from raftkv.client import SyncClient

    try:
        root_cert, client_cert = client_tls(cluster.description.tls)
    except TlsConfigError as error:
        raise Exit(f"fab: {error}", code=2) from None
    with SyncClient(
        cluster.description, timeout=3.0, tls_root_cert=root_cert, tls_client_cert=client_cert
    ) as client:
        rows = {row.node_id: row for row in client.status()}
    context = context or Context()
    lines = [
        f"{'node':<5}{'host':<22}{'process':<32}{'role':<10}{'term':>5}{'leader':>7}"
        f"{'commit':>8}{'lease':>7}"
    ]
    for node in cluster.nodes:
        process = _process_text(context, cluster, node)
        row = rows[node.id]
        if row.reachable:
            leader = "-" if row.leader_id is None else str(row.leader_id)
            lease = f"{row.lease_remaining:.1f}s" if row.lease_remaining else "-"
            rpc = f"{row.role:<10}{row.term:>5}{leader:>7}{row.commit_length:>8}{lease:>7}"
        else:
            rpc = f"unreachable: {row.error}"
        lines.append(f"{node.id:<5}{node.host:<22}{process:<32}{rpc}")
    return "\n".join(lines)


def _process_text(context: Context, cluster: Cluster, node: Node) -> str:
    if node.is_local:
        return local_state(cluster, node)
    try:
        with connect(context, node) as conn:
            state = remote_unit_state(conn)
    except Exit:
        return "ssh unreachable"
    text = f"{state.get('ActiveState', '?')}/{state.get('SubState', '?')}"
    if state.get("MainPID", "0") != "0":
        text += f" pid {state['MainPID']}"
    return text + (" PAUSED" if state.get("State") == "T" else "")


# -- tasks -----------------------------------------------------------------------------------


@task(help={"cluster": CLUSTER_HELP})
def status(c: Context, cluster: str | None = None) -> None:
    """Show every node: host, process or unit state, role, term, leader, commit and lease."""
    print(status_table(load_cluster(cluster), c))


@task(help={"id": "node id", "cluster": CLUSTER_HELP})
def start_node(c: Context, id: str, cluster: str | None = None) -> None:
    """Start node ID (the systemd unit on a host; a background process locally)."""
    found = load_cluster(cluster)
    node = found.node(id)
    if node.is_local:
        if local_pid(found, node) is not None:
            print(f"node {node.id} is already running (pid {local_pid(found, node)})")
            return
        print(f"node {node.id}: started, pid {local_start(found, node)}")
    else:
        with connect(c, node) as conn:
            remote_start(conn)
        print(f"node {node.id} ({node.host}): started the raftkv unit")
    record_fault(found, f"start-node {node.id}")


@task(help={"id": "node id", "cluster": CLUSTER_HELP})
def stop_node(c: Context, id: str, cluster: str | None = None) -> None:
    """Stop node ID cleanly (SIGTERM); it stays down until start-node."""
    found = load_cluster(cluster)
    node = found.node(id)
    if node.is_local:
        stopped = local_stop(found, node)
        print(f"node {node.id}: {'stopped' if stopped else 'was not running'}")
    else:
        with connect(c, node) as conn:
            remote_stop(conn)
        print(f"node {node.id} ({node.host}): stopped the raftkv unit")
    record_fault(found, f"stop-node {node.id}")


@task(help={"id": "node id", "cluster": CLUSTER_HELP})
def restart_node(c: Context, id: str, cluster: str | None = None) -> None:
    """Restart node ID (stop cleanly, then start)."""
    found = load_cluster(cluster)
    node = found.node(id)
    if node.is_local:
        local_stop(found, node)
        print(f"node {node.id}: restarted, pid {local_start(found, node)}")
    else:
        with connect(c, node) as conn:
            remote_restart(conn)
        print(f"node {node.id} ({node.host}): restarted the raftkv unit")
    record_fault(found, f"restart-node {node.id}")


@task(help={"id": "node id", "cluster": CLUSTER_HELP})
def kill_node(c: Context, id: str, cluster: str | None = None) -> None:
    """Crash node ID with SIGKILL (on hosts systemd restarts it; locally it stays down)."""
    found = load_cluster(cluster)
    node = found.node(id)
    _signal_node(c, found, node, signal.SIGKILL)
    record_fault(found, f"kill-node {node.id} (SIGKILL)")


@task(help={"id": "node id", "cluster": CLUSTER_HELP})
def pause_node(c: Context, id: str, cluster: str | None = None) -> None:
    """Freeze node ID with SIGSTOP (a long GC pause or a stalled VM) until resume-node."""
    found = load_cluster(cluster)
    node = found.node(id)
    _signal_node(c, found, node, signal.SIGSTOP)
    record_fault(found, f"pause-node {node.id} (SIGSTOP)")


@task(help={"id": "node id", "cluster": CLUSTER_HELP})
def resume_node(c: Context, id: str, cluster: str | None = None) -> None:
    """Resume node ID after pause-node (SIGCONT)."""
    found = load_cluster(cluster)
    node = found.node(id)
    _signal_node(c, found, node, signal.SIGCONT)
    record_fault(found, f"resume-node {node.id} (SIGCONT)")


@task(
    help={
        "groups": "sides split by '/', nodes by ',': 0,1/2 (one side alone: it against the rest)",
        "cluster": CLUSTER_HELP,
    }
)
def partition(c: Context, groups: str, cluster: str | None = None) -> None:
    """Cut the network between groups of nodes with nftables on every host (heal undoes it)."""
    found = load_cluster(cluster)
    sides = _partition_groups(found, groups)
    if len({n.peer_ip for n in found.nodes}) < len(found.nodes) or any(
        n.is_local for n in found.nodes
    ):
        raise Exit(
            "partition needs one address per node on hosts of their own; this cluster's nodes "
            "share an address (a local cluster): use the process tests' proxy instead",
            code=2,
        )
    side_of = {node_id: index for index, side in enumerate(sides) for node_id in side}
    for node in found.nodes:
        blocked = [n.peer_ip for n in found.nodes if side_of[n.id] != side_of[node.id]]
        with connect(c, node) as conn:
            remote_partition(conn, blocked)
        print(f"node {node.id} ({node.host}): dropping traffic to and from {', '.join(blocked)}")
    text = " | ".join(",".join(str(i) for i in sorted(side)) for side in sides)
    record_fault(found, f"partition {text}")


@task(help={"cluster": CLUSTER_HELP})
def heal(c: Context, cluster: str | None = None) -> None:
    """Remove every partition made by the partition task (on all hosts)."""
    found = load_cluster(cluster)
    failed = []
    for node in found.nodes:
        if node.is_local:
            continue
        try:
            with connect(c, node) as conn:
                remote_heal(conn)
            print(f"node {node.id} ({node.host}): network healed")
        except Exit as error:
            print(error.message, file=sys.stderr)
            failed.append(node.id)
    record_fault(found, "heal")
    if failed:
        raise Exit(f"could not heal nodes {failed}", code=1)


@task(help={"cluster": CLUSTER_HELP, "dest": "parent directory (default: collected/)"})
def gather_logs(c: Context, cluster: str | None = None, dest: str | None = None) -> None:
    """Copy every node's dump.txt, logs.txt and metadata.txt to collected/<timestamp>/node-<id>/."""
    found = load_cluster(cluster)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = Path(dest or REPO_ROOT / "collected") / stamp
    missing = []
    for node in found.nodes:
        directory = target / f"node-{node.id}"
        directory.mkdir(parents=True, exist_ok=True)
        try:
            if node.is_local:
                names = local_gather(node, directory)
            else:
                with connect(c, node) as conn:
                    names = remote_gather(conn, node, directory)
        except (Exit, FileNotFoundError, *UNREACHABLE) as error:
            text = error.message if isinstance(error, Exit) else str(error)
            print(f"node {node.id}: NOT gathered: {text}", file=sys.stderr)
            missing.append(node.id)
            continue
        print(f"node {node.id}: {', '.join(names)}")
    shutil.copy2(found.path, target / "cluster.json")
    journal = found.directory / FAULTS_LOG
    if journal.exists():
        shutil.copy2(journal, target / FAULTS_LOG)
    print(f"gathered into {target}  (review: raftkv logs review {target})")
    if missing:
        raise Exit(f"nodes {missing} could not be gathered", code=1)
