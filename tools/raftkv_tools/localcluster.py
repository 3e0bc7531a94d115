"""Run a local cluster in the background: `raftkv-cluster up|down|clean|status`.

    make cluster-up [N=3]     # python -m raftkv_tools.localcluster up --nodes N --dir cluster
                              # (the same as: raftkv-cluster up --nodes N --dir cluster)
    make cluster-status       # one row per node
    make cluster-down         # SIGTERM every node, SIGKILL what is left after 5 s
    make cluster-clean        # down, then delete the data and the cluster description

What `--dir` (default `cluster/`) holds:

    cluster.json                          the cluster description; `raftkv get a` reads it
    tls/                                  the cluster's CA and node certificates (auto-TLS)
    data/logs_node_<id>/logs.txt          each node's log, metadata.txt and dump.txt
    node-<id>.pid                         the pid of the node's process
    node-<id>.out                         the node's stdout and stderr (tracebacks)

`up` first makes (or keeps) a private CA and one certificate per node in tls/, as etcd's
--auto-tls does, so that a local cluster's peers talk mutual TLS exactly as in the cloud; the
client port stays plaintext, so clients written for the assignment work unmodified. Then it
starts each node as a detached process (its own session, so closing the terminal does not
stop it), then polls every node's Status until one leader holds a lease and every other node
names it, and prints the table. Nodes start with --initial-cluster-state new, or existing when
data/ already holds node data: a node whose directory is empty then stays out (it is not
admitted, docs/design.md §5), and `up` says how to restore it with `raftkv restore-node`.
It refuses to start when pid files name live nodes or when a port is taken, and starts nothing
then.

Exit status: 0 on success; 1 when the command failed (the message says why); 2 for a bad
command line. `down` on a stopped cluster succeeds ("cluster is not running").
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

import grpc

from raftkv.client.status import NodeStatusRow, format_status_table, row_from_call
from raftkv.cluster import PEER_PORT_OFFSET, ClusterConfigError, ClusterDescription, NodeAddress
from raftkv.core.config import PROFILES
from raftkv.rpc import raftkv_pb2, raftkv_pb2_grpc
from raftkv.rpc.options import POLL_CHANNEL_OPTIONS
from raftkv.server.launch import NODE_MODULE, NodeLaunch
from raftkv_tools.certs import issue as issue_certificates
from raftkv_tools.certs import local_nodes
from raftkv_tools.launcher import spawn_node
from raftkv_tools.ports import describe_listener, port_in_use

DEFAULT_DIR = Path("cluster")
DEFAULT_NODES = 5
DEFAULT_BASE_PORT = 50050
DEFAULT_PROFILE = "fast"
DESCRIPTION_FILE = "cluster.json"
DATA_FOLDER = "data"
CERTS_FOLDER = "tls"
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.05
STATUS_TIMEOUT = 0.5
TAIL_LINES = 20


class LocalClusterError(RuntimeError):
    """A command could not be carried out; the message is for the user."""


@dataclass(frozen=True)
class Layout:
    """Where one local cluster keeps its files."""

    root: Path

    @property
    def description(self) -> Path:
        return self.root / DESCRIPTION_FILE

    @property
    def data_dir(self) -> Path:
        return self.root / DATA_FOLDER

    @property
    def certs(self) -> Path:
        return self.root / CERTS_FOLDER

    def pid_file(self, node_id: int) -> Path:
        return self.root / f"node-{node_id}.pid"

    def out_file(self, node_id: int) -> Path:
        return self.root / f"node-{node_id}.out"

    def dump_file(self, node_id: int) -> Path:
        return self.data_dir / f"logs_node_{node_id}" / "dump.txt"

    def pid_files(self) -> dict[int, Path]:
        found: dict[int, Path] = {}
        if not self.root.is_dir():
            return found
        for path in self.root.glob("node-*.pid"):
            suffix = path.stem.removeprefix("node-")
            if suffix.isdigit():
                found[int(suffix)] = path
        return dict(sorted(found.items()))


# ---------------------------------------------------------------------------------------------
# Processes and ports


def is_node_process(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) raftkv node process.

    Checking the command line guards against a stale pid file whose pid now belongs to an
    unrelated process: `down` must never signal that one.
    """
    if pid <= 0:
        return False
    proc = Path("/proc") / str(pid)
    if Path("/proc/self").exists():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
        if state in ("Z", "X"):
            return False
        return NODE_MODULE in cmdline or "raftkv-node" in cmdline
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def live_nodes(layout: Layout) -> dict[int, int]:
    """node id → pid, for every pid file that names a live node process."""
    live = {}
    for node_id, path in layout.pid_files().items():
        pid = read_pid(path)
        if pid is not None and is_node_process(pid):
            live[node_id] = pid
    return live


def busy_ports(nodes: Iterable[NodeAddress]) -> list[str]:
    """One message per listener whose port is taken, naming the process when it can."""
    problems = []
    for node in nodes:
        for what, address in (("", node.address), (" peers", node.peer_address)):
            host, _, port_text = address.rpartition(":")
            port = int(port_text)
            if port_in_use(host, port):
                holder = describe_listener(port)
                by = f" by {holder}" if holder else ""
                problems.append(f"port {port} (node {node.id}{what}) is already in use{by}")
    return problems


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def terminate(pids: dict[int, int], timeout: float = STOP_TIMEOUT) -> tuple[list[int], list[int]]:
    """SIGTERM every pid, wait up to `timeout` for them to exit, SIGKILL the rest.

    Returns (node ids that stopped cleanly, node ids that had to be killed).
    """
    for pid in pids.values():
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    waiting = dict(pids)
    while waiting and time.monotonic() < deadline:
        waiting = {n: p for n, p in waiting.items() if _still_running(p)}
        if waiting:
            time.sleep(POLL_INTERVAL)
    killed = sorted(waiting)
    for pid in waiting.values():
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(_still_running(p) for p in waiting.values()) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
    stopped = sorted(n for n in pids if n not in waiting)
    return stopped, killed


def _still_running(pid: int) -> bool:
    # Reap it first if it is our own child (up() stopping what it started), else it lingers
    # as a zombie that is_node_process already treats as gone.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    return is_node_process(pid)


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


# ---------------------------------------------------------------------------------------------
# Status


class StatusPoller:
    """Asks every node of a description for its Status, all at once, over reusable channels."""

    def __init__(self, description: ClusterDescription, timeout: float = STATUS_TIMEOUT) -> None:
        self.description = description
        self.timeout = timeout
        self._channels = {
            n.id: grpc.insecure_channel(n.address, options=POLL_CHANNEL_OPTIONS)
            for n in description.nodes
        }
        self._stubs = {i: raftkv_pb2_grpc.KeyValueStub(c) for i, c in self._channels.items()}

    def poll(self) -> list[NodeStatusRow]:
        calls: list[tuple[NodeAddress, Future[raftkv_pb2.StatusResponse]]] = [
            (n, self._stubs[n.id].Status.future(raftkv_pb2.StatusRequest(), timeout=self.timeout))
            for n in self.description.nodes
        ]
        return [row_from_call(node.id, node.address, call.result) for node, call in calls]

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def __enter__(self) -> StatusPoller:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def elected_leader(rows: Sequence[NodeStatusRow]) -> int | None:
    """The leader, if exactly one node leads with a lease and every other node names it."""
    leaders = [r for r in rows if r.reachable and r.role == "leader"]
    if len(leaders) != 1:
        return None
    leader = leaders[0]
    if (leader.lease_remaining or 0.0) <= 0 or (leader.waiting_for_old_lease or 0.0) > 0:
        return None
    if all(r.reachable and r.leader_id == leader.node_id for r in rows):
        return leader.node_id
    return None


def settled(rows: Sequence[NodeStatusRow]) -> bool:
    """A leader is elected and every node has learnt the commit length of its NO-OP."""
    leader = elected_leader(rows)
    if leader is None:
        return False
    commit = rows[[r.node_id for r in rows].index(leader)].commit_length
    return commit is not None and commit > 0 and all(r.commit_length == commit for r in rows)


# ---------------------------------------------------------------------------------------------
# Commands


def node_launch(
    layout: Layout,
    node_id: int,
    profile: str,
    *,
    read_mode: str | None = None,
    lease: float | None = None,
    initial_cluster_state: str = "new",
) -> NodeLaunch:
    return NodeLaunch(
        node_id,
        cluster=layout.description.resolve(),
        data_dir=layout.data_dir.resolve(),
        profile=profile,
        read_mode=read_mode,
        lease=lease,
        initial_cluster_state=initial_cluster_state,
        quiet=True,
    )


def up(
    layout: Layout,
    nodes: int = DEFAULT_NODES,
    base_port: int = DEFAULT_BASE_PORT,
    profile: str = DEFAULT_PROFILE,
    *,
    timeout: float = STARTUP_TIMEOUT,
    read_mode: str | None = None,
    lease: float | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Start a cluster of `nodes` nodes on 127.0.0.1:base_port.. and wait for a leader."""
    if nodes < 1:
        raise LocalClusterError("--nodes must be at least 1")
    if profile not in PROFILES:
        raise LocalClusterError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    if not (base_port > 0 and base_port + nodes - 1 + PEER_PORT_OFFSET < 65536):
        raise LocalClusterError(
            f"ports {base_port}..{base_port + nodes - 1} and their peer ports "
            f"(+{PEER_PORT_OFFSET}) are not all valid"
        )
    running = live_nodes(layout)
    if running:
        ids = ", ".join(str(i) for i in running)
        raise LocalClusterError(f"cluster already running (nodes {ids}); `make cluster-down` first")
    for path in layout.pid_files().values():
        path.unlink(missing_ok=True)  # stale: their processes are gone

    description = replace(
        ClusterDescription.local(
            nodes,
            base_port=base_port,
            data_dir=str(layout.data_dir.resolve()),
            profile=profile,
        ),
        cluster_id=_cluster_id(layout),
        peer_certs=CERTS_FOLDER,
    )
    problems = busy_ports(description.nodes)
    if problems:
        raise LocalClusterError(
            "cannot start the cluster:\n  " + "\n  ".join(problems) + "\nnothing was started"
        )

    reused = layout.data_dir.is_dir() and any(layout.data_dir.iterdir())
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    made = issue_certificates(layout.certs, local_nodes(nodes), cluster_name="local")
    description.save(layout.description)
    print(
        f"starting {nodes} node{'s' if nodes != 1 else ''} (profile {profile}) on "
        f"127.0.0.1:{base_port}-{base_port + nodes - 1}, files in {layout.root}/",
        file=out,
    )
    fresh = sum(action != "kept" for action, _ in made)
    print(
        f"  peers on 127.0.0.1:{base_port + PEER_PORT_OFFSET}-"
        f"{base_port + PEER_PORT_OFFSET + nodes - 1}, mutual TLS with the certificates in "
        f"{layout.certs}/ ({fresh} made now)",
        file=out,
    )
    if reused:
        print(
            f"  reusing the data in {layout.data_dir} (`make cluster-clean` starts afresh); "
            "the cluster exists, so a node whose data directory is empty waits to be restored "
            "(--initial-cluster-state existing)",
            file=out,
        )
    # A node that finds its data directory empty in a cluster that already holds data must not
    # start as a new member: it could vote twice in a term (docs/design.md §5).
    state = "existing" if reused else "new"

    processes: dict[int, subprocess.Popen[bytes]] = {}
    for node in description.nodes:
        processes[node.id] = spawn_node(
            node_launch(
                layout,
                node.id,
                profile,
                read_mode=read_mode,
                lease=lease,
                initial_cluster_state=state,
            ),
            output=layout.out_file(node.id),
            truncate=True,
            new_session=True,
        )
        layout.pid_file(node.id).write_text(f"{processes[node.id].pid}\n")

    try:
        return _await_leader(layout, description, processes, timeout, out)
    except KeyboardInterrupt:
        _stop_started(layout, processes)
        raise


def _cluster_id(layout: Layout) -> str:
    """The id in the existing description when its data is kept, else a new one: a cluster
    started afresh must not accept messages from a stray node of the one before."""
    if layout.data_dir.is_dir() and any(layout.data_dir.iterdir()):
        with contextlib.suppress(ClusterConfigError, OSError):
            return ClusterDescription.load(layout.description).cluster_id
    return f"local-{secrets.token_hex(4)}"


def _await_leader(
    layout: Layout,
    description: ClusterDescription,
    processes: dict[int, subprocess.Popen[bytes]],
    timeout: float,
    out: TextIO,
) -> int:
    deadline = time.monotonic() + timeout
    rows: list[NodeStatusRow] = []
    with StatusPoller(description) as poller:
        while True:
            exited = {i: p.poll() for i, p in processes.items() if p.poll() is not None}
            if exited:
                _report_exits(layout, exited)
                _stop_started(layout, processes)
                raise LocalClusterError("a node exited during start-up; nothing is left running")
            rows = poller.poll()
            # A node that is not admitted follows no one until it is restored.
            waiting = not_admitted(layout, description)
            members = [r for r in rows if r.node_id not in waiting]
            leader = elected_leader(members)
            expired = time.monotonic() >= deadline
            if leader is not None and (settled(members) or expired):
                break
            if expired:
                print(format_status_table(rows), file=out)
                raise LocalClusterError(
                    f"no leader after {timeout:.0f} s; the nodes are still running. "
                    f"See {layout.root}/node-*.out and {layout.data_dir}/logs_node_*/dump.txt; "
                    "`make cluster-down` stops them"
                )
            time.sleep(POLL_INTERVAL)
    print(format_status_table(rows), file=out)
    for node_id in sorted(waiting):
        source = layout.data_dir / f"logs_node_{leader}"
        print(
            f"\nnode {node_id} is not admitted (its data directory was empty, but the cluster "
            "holds data): it neither votes nor acknowledges entries. To restore it from node "
            f"{leader}'s files: make cluster-down; raftkv restore-node --from {source} --into "
            f"{layout.data_dir} --id {node_id} --cluster {layout.description}; make cluster-up",
            file=out,
        )
    print(f"\nnode {leader} is the leader. Next steps:", file=out)
    for step in next_steps(layout):
        print(f"  {step}", file=out)
    return 0


def not_admitted(layout: Layout, description: ClusterDescription) -> set[int]:
    """The nodes whose metadata.txt says they are waiting to be restored (docs/design.md §5)."""
    waiting = set()
    for node in description.nodes:
        metadata = layout.data_dir / f"logs_node_{node.id}" / "metadata.txt"
        with contextlib.suppress(OSError):
            if "admitted false\n" in metadata.read_text(errors="replace").splitlines(True):
                waiting.add(node.id)
    return waiting


def next_steps(layout: Layout) -> list[str]:
    default = (Path.cwd() / DEFAULT_DIR / DESCRIPTION_FILE).resolve()
    flag = "" if layout.description.resolve() == default else f"--cluster {layout.description} "
    return [
        f"raftkv {flag}set a 1",
        f"raftkv {flag}get a",
        f"raftkv {flag}shell",
        "make cluster-down"
        if not flag
        else f"python -m raftkv_tools.localcluster down --dir {layout.root}",
    ]


def _report_exits(layout: Layout, exited: dict[int, int | None]) -> None:
    for node_id, code in exited.items():
        print(
            f"raftkv_tools.localcluster: node {node_id} exited with status {code} during start-up",
            file=sys.stderr,
        )
        for label, path in (
            ("output", layout.out_file(node_id)),
            ("dump", layout.dump_file(node_id)),
        ):
            lines = tail(path)
            if lines:
                print(f"  last lines of its {label} ({path}):", file=sys.stderr)
                for line in lines:
                    print(f"    {line}", file=sys.stderr)


def _stop_started(layout: Layout, processes: dict[int, subprocess.Popen[bytes]]) -> None:
    alive = {i: p.pid for i, p in processes.items() if p.poll() is None}
    terminate(alive)
    for process in processes.values():
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
    for node_id in processes:
        layout.pid_file(node_id).unlink(missing_ok=True)


def down(layout: Layout, *, timeout: float = STOP_TIMEOUT, out: TextIO = sys.stdout) -> int:
    """Stop every node named by a pid file: SIGTERM, then SIGKILL after `timeout` seconds."""
    running = live_nodes(layout)
    if not running:
        for path in layout.pid_files().values():
            path.unlink(missing_ok=True)
        print("cluster is not running", file=out)
        return 0
    ids = ", ".join(str(i) for i in running)
    print(f"stopping nodes {ids}", file=out)
    stopped, killed = terminate(running, timeout)
    for path in layout.pid_files().values():
        path.unlink(missing_ok=True)
    if killed:
        names = ", ".join(str(i) for i in killed)
        print(f"nodes {names} did not stop within {timeout:.0f} s; killed them (SIGKILL)", file=out)
    print(f"cluster stopped ({len(stopped)} clean, {len(killed)} killed)", file=out)
    return 0


def clean(layout: Layout, *, out: TextIO = sys.stdout) -> int:
    """`down`, then remove the data folder, the certificates, the description and the node
    output files."""
    down(layout, out=out)
    removed = []
    if layout.data_dir.exists():
        shutil.rmtree(layout.data_dir)
        removed.append(str(layout.data_dir))
    if layout.certs.exists():
        shutil.rmtree(layout.certs)
        removed.append(str(layout.certs))
    for path in [layout.description, *layout.root.glob("node-*.out")]:
        if path.exists():
            path.unlink()
            removed.append(str(path))
    if layout.root.is_dir() and not any(layout.root.iterdir()):
        layout.root.rmdir()
    print(f"removed {', '.join(removed)}" if removed else "nothing to remove", file=out)
    return 0


def status(layout: Layout, *, out: TextIO = sys.stdout) -> int:
    """Print one row per node of the cluster described in `layout`."""
    if not layout.description.exists():
        raise LocalClusterError(
            f"no cluster description at {layout.description}; `make cluster-up` first"
        )
    try:
        description = ClusterDescription.load(layout.description)
    except ClusterConfigError as error:
        raise LocalClusterError(str(error)) from None
    with StatusPoller(description) as poller:
        rows = poller.poll()
    print(format_status_table(rows), file=out)
    leader = elected_leader(rows)
    running = live_nodes(layout)
    if leader is not None:
        print(f"\nnode {leader} is the leader", file=out)
    elif not running and not any(r.reachable for r in rows):
        print("\ncluster is not running", file=out)
    else:
        print("\nno leader right now", file=out)
    return 0


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raftkv_tools.localcluster",
        description="Start, inspect and stop a local raftkv cluster in the background.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--dir", type=Path, default=DEFAULT_DIR, help="cluster folder (default: cluster)"
        )
        return sub

    start = add("up", "start the nodes and wait for a leader")
    start.add_argument("--nodes", type=int, default=DEFAULT_NODES, help="cluster size (5)")
    start.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT, help="first port")
    start.add_argument("--profile", choices=sorted(PROFILES), default=DEFAULT_PROFILE)
    start.add_argument("--read-mode", choices=["lease", "read_index"], help="GET mode")
    start.add_argument("--lease", type=float, help="override the lease duration (seconds)")
    start.add_argument(
        "--timeout", type=float, default=STARTUP_TIMEOUT, help="seconds to wait for a leader"
    )
    add("down", "stop the nodes (SIGTERM, then SIGKILL after 5 s)")
    add("clean", "stop the nodes and delete the data and the cluster description")
    add("status", "show every node's role, term, commit length, leader and lease")
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": lambda a: up(
        Layout(a.dir),
        a.nodes,
        a.base_port,
        a.profile,
        timeout=a.timeout,
        read_mode=a.read_mode,
        lease=a.lease,
    ),
    "down": lambda a: down(Layout(a.dir)),
    "clean": lambda a: clean(Layout(a.dir)),
    "status": lambda a: status(Layout(a.dir)),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except LocalClusterError as error:
        print(f"raftkv_tools.localcluster: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
