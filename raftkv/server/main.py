"""`raftkv-node`: run one replica.

    raftkv-node 2 5                                   # the assignment's form: node 2 of 5, local
    raftkv-node --id 2 --cluster cluster/cluster.json --data-dir cluster/data --profile fast
    raftkv-node --id 0 --peers 10.0.0.1:50050,10.0.0.2:50050,10.0.0.3:50050 --certs tls/

Two listeners (docs/design.md §6): the client address (`address` in the description; --listen
overrides the bind address) serves KeyValue and the assignment's Raft.ServeClient; the peer
address (`peer_address`, default client port + 1000; --peer-listen overrides) serves
Raft.PeerStream to the other nodes over mutual TLS. The peer certificate files are --peer-ca,
--peer-cert and --peer-key, or --certs DIR for the layout `raftkv certs --out DIR` writes, or the
description's `peer_certs` folder. Without any of them the node does not start, unless
--insecure-peers (a test seam: any process that reaches the peer port can then act as a node).
The client listener is plaintext unless --tls-ca/--tls-cert/--tls-key are given;
--client-cert-auth then demands a client certificate signed by --tls-ca.

Test-only seams (never in production): the negative controls --unsafe-read-without-lease,
--unsafe-skip-lease-wait, --unsafe-lease-from-ack-time, --unsafe-read-before-noop,
--unsafe-renew-lease-on-send, --unsafe-forget-lease-on-restart, --unsafe-no-fsync, and the
environment variables RAFTKV_CLOCK_RATE (other than 1), RAFTKV_FAILPOINT and
RAFTKV_TEST_SESSION_LIFETIME_MS (the same on every node of a cluster). The node refuses
to start with any of them unless --allow-unsafe acknowledges them; then its dump names them in
an UNSAFE line at start (raftkv/server/seams.py).

At start the node checks whether the host's time service keeps its clock rate within
max_clock_drift (chrony's maxslewrate; raftkv/server/timecheck.py) and says so in its dump; when
it cannot confirm it, it warns on stderr too, and starts either way. --chrony-conf names the
chrony configuration to read (default: running chronyd's -f, else /etc/chrony/chrony.conf).

SIGTERM/SIGINT stops the node; a leader first hands leadership to its most up-to-date follower
and waits (at most two election timeouts) until another node leads. A second signal stops it at
once.

Exit status: 0 after a clean shutdown (SIGTERM/SIGINT), 2 for a bad command line or
configuration, 1 when the node had to stop (port in use, storage failure, corrupt files).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from raftkv.cluster import INITIAL_CLUSTER_STATES, ClusterConfigError, ClusterDescription
from raftkv.core.config import (
    DEFAULT_SNAPSHOTS,
    ConfigError,
    ReadMode,
    SnapshotPolicy,
    TimingConfig,
    profile,
)
from raftkv.core.node import Role, UnsafeSwitches
from raftkv.rpc import raftkv_pb2_grpc
from raftkv.rpc.options import NODE_OPTIONS
from raftkv.server.dump import REPEAT_INTERVAL, DumpLog
from raftkv.server.replica import Clock, FatalNodeError, Replica, ReplicaOptions
from raftkv.server.resources import client_server, raise_descriptor_limit
from raftkv.server.seams import (
    ALLOW_UNSAFE_FLAG,
    INSECURE_PEERS_FLAG,
    NO_FSYNC_FLAG,
    SeamError,
    refusal,
    session_rules_from,
    unsafe_flag,
)
from raftkv.server.service import KeyValueService, PeerService, RaftService, RefusalLog
from raftkv.server.storage import StorageError, node_data_dir
from raftkv.server.timecheck import check_host
from raftkv.server.transfer import TransferRefused
from raftkv.tls import LoadedTls, TlsConfigError, TlsFiles


class StartupError(RuntimeError):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raftkv-node",
        description="Run one raftkv replica.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("positional", nargs="*", help="<node_id> <num_nodes> (assignment form)")
    parser.add_argument("--id", type=int, dest="node_id", help="this node's id")
    parser.add_argument("--cluster", type=Path, help="cluster description (JSON)")
    parser.add_argument("--peers", help="comma-separated host:port of every node, ids 0..n-1")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="parent of logs_node_<id>/ (default: the node's data_dir in the description, or .)",
    )
    parser.add_argument("--profile", default=None, help="timing profile: fast (default) or seed")
    parser.add_argument("--read-mode", choices=[m.value for m in ReadMode], default=None)
    parser.add_argument("--lease", type=float, help="override the lease duration (seconds)")
    parser.add_argument("--max-drift", type=float, help="override max_clock_drift")
    parser.add_argument(
        "--snapshot-entries",
        type=int,
        default=DEFAULT_SNAPSHOTS.entries,
        help="snapshot once this many entries committed since the last snapshot "
        f"(default {DEFAULT_SNAPSHOTS.entries})",
    )
    parser.add_argument(
        "--snapshot-bytes",
        type=int,
        default=DEFAULT_SNAPSHOTS.bytes,
        help="...or once this many bytes of keys and values were applied since "
        f"(default {DEFAULT_SNAPSHOTS.bytes}, 64 MiB)",
    )
    parser.add_argument(
        "--trailing-entries",
        type=int,
        default=DEFAULT_SNAPSHOTS.trailing_entries,
        help="log entries kept before the snapshot's index for followers a little behind "
        f"(default {DEFAULT_SNAPSHOTS.trailing_entries})",
    )
    parser.add_argument(
        "--snapshot-idle",
        type=float,
        default=DEFAULT_SNAPSHOTS.idle,
        help="seconds without a commit after which a node snapshots the rest and drops the log "
        f"its followers no longer need (default {DEFAULT_SNAPSHOTS.idle})",
    )
    parser.add_argument("--listen", help="client bind address (default: the node's address)")
    parser.add_argument(
        "--peer-listen", help="peer bind address (default: the node's peer_address)"
    )
    parser.add_argument("--quiet", action="store_true", help="do not echo events to stdout")
    parser.add_argument(
        "--chrony-conf",
        type=Path,
        help="chrony configuration for the start-up clock-rate check "
        "(default: chronyd's -f, else /etc/chrony/chrony.conf or /etc/chrony.conf)",
    )
    parser.add_argument("--base-port", type=int, default=50050, help="for the assignment form")
    parser.add_argument(
        "--tls-ca", type=Path, help="client listener: CA certificate (PEM); turns TLS on"
    )
    parser.add_argument("--tls-cert", type=Path, help="client listener: certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="client listener: private key (PEM)")
    parser.add_argument(
        "--client-cert-auth",
        action="store_true",
        help="client listener: demand a client certificate signed by --tls-ca",
    )
    parser.add_argument("--peer-ca", type=Path, help="peers: CA bundle (PEM) for mutual TLS")
    parser.add_argument("--peer-cert", type=Path, help="peers: this node's certificate (PEM)")
    parser.add_argument("--peer-key", type=Path, help="peers: this node's private key (PEM)")
    parser.add_argument(
        "--certs",
        type=Path,
        help="peers: the folder `raftkv certs --out` wrote (ca.pem, node-<id>.pem, .key)",
    )
    parser.add_argument(
        "--cluster-id", help="override the cluster id (default: the description's, or its name)"
    )
    parser.add_argument(
        "--initial-cluster-state",
        choices=INITIAL_CLUSTER_STATES,
        default=None,
        help="new: an empty data directory starts a member of a new cluster; existing: the "
        "cluster exists, so a node with an empty data directory neither votes nor acknowledges "
        "until restored (raftkv restore-node). Default: the description's, else new",
    )
    parser.add_argument(
        INSECURE_PEERS_FLAG,
        action="store_true",
        help="TEST SEAM: peers without TLS or authentication (needs --allow-unsafe)",
    )
    parser.add_argument(
        ALLOW_UNSAFE_FLAG,
        action="store_true",
        help="acknowledge test-only seams (--unsafe-*, RAFTKV_CLOCK_RATE, RAFTKV_FAILPOINT, "
        "RAFTKV_TEST_SESSION_LIFETIME_MS): without it the node refuses to start with any of them",
    )
    parser.add_argument(NO_FSYNC_FLAG, action="store_true", help=argparse.SUPPRESS)
    for name in UnsafeSwitches.__slots__:
        parser.add_argument(
            unsafe_flag(name),
            action="store_true",
            dest=f"unsafe_{name}",
            help=argparse.SUPPRESS,
        )
    return parser


def resolve(args: argparse.Namespace) -> tuple[ReplicaOptions, Listeners]:
    cluster: ClusterDescription
    if args.positional:
        if len(args.positional) != 2 or not all(p.isdigit() for p in args.positional):
            raise StartupError("the positional form is: raftkv-node <node_id> <num_nodes>")
        node_id, size = (int(p) for p in args.positional)
        cluster = ClusterDescription.local(size, base_port=args.base_port)
    else:
        if args.node_id is None:
            raise StartupError(
                "give --id N with --cluster FILE or --peers, or <node_id> <num_nodes>"
            )
        node_id = args.node_id
        if args.cluster and args.peers:
            raise StartupError("give either --cluster or --peers, not both")
        if args.cluster:
            cluster = ClusterDescription.load(args.cluster)
        elif args.peers:
            cluster = ClusterDescription.from_addresses(args.peers.split(","))
        else:
            raise StartupError("give --cluster FILE or --peers host:port,...")
    member = cluster.node(node_id)
    config: TimingConfig = profile(args.profile or cluster.profile)
    if args.read_mode:
        config = config.with_read_mode(ReadMode(args.read_mode))
    if args.lease is not None:
        config = replace(config, lease_duration=args.lease)
    if args.max_drift is not None:
        config = replace(config, max_clock_drift=args.max_drift)
    unsafe = UnsafeSwitches(**{n: getattr(args, f"unsafe_{n}") for n in UnsafeSwitches.__slots__})
    if args.cluster_id is not None:
        cluster = replace(cluster, cluster_id=args.cluster_id)
    if args.initial_cluster_state is not None:
        cluster = replace(cluster, initial_cluster_state=args.initial_cluster_state)
    client_tls = _client_tls(args)
    options = ReplicaOptions(
        node_id,
        cluster,
        config,
        args.data_dir or Path(member.data_dir),
        unsafe,
        client_tls=client_tls,
        client_cert_auth=args.client_cert_auth,
        peer_tls=_peer_tls(args, cluster, node_id),
        fsync=not args.unsafe_no_fsync,
        snapshots=SnapshotPolicy(
            args.snapshot_entries, args.snapshot_bytes, args.trailing_entries, args.snapshot_idle
        ),
        sessions=session_rules_from(os.environ),
    )
    return options, Listeners(
        args.listen or member.address, args.peer_listen or member.peer_address
    )


@dataclass(frozen=True)
class Listeners:
    client: str
    peer: str


def _client_tls(args: argparse.Namespace) -> LoadedTls | None:
    files = (args.tls_ca, args.tls_cert, args.tls_key)
    if not any(files):
        if args.client_cert_auth:
            raise StartupError("--client-cert-auth needs --tls-ca, --tls-cert and --tls-key")
        return None
    if not all(files):
        raise StartupError(
            "TLS on the client listener needs all of --tls-ca, --tls-cert, --tls-key"
        )
    return TlsFiles(args.tls_ca, args.tls_cert, args.tls_key).load()


def _peer_tls(
    args: argparse.Namespace, cluster: ClusterDescription, node_id: int
) -> LoadedTls | None:
    """The peer mTLS files: --peer-*, else --certs DIR, else the description's peer_certs."""
    files = (args.peer_ca, args.peer_cert, args.peer_key)
    if any(files) and args.certs:
        raise StartupError("give either --peer-ca/--peer-cert/--peer-key or --certs, not both")
    if any(files) and not all(files):
        raise StartupError("peer TLS needs all of --peer-ca, --peer-cert and --peer-key")
    if args.insecure_peers:
        if any(files) or args.certs:
            raise StartupError(f"{INSECURE_PEERS_FLAG} contradicts the peer certificates given")
        return None
    if all(files):
        chosen = TlsFiles(args.peer_ca, args.peer_cert, args.peer_key)
    elif args.certs or cluster.peer_certs:
        chosen = TlsFiles.in_directory(Path(args.certs or cluster.peer_certs), node_id)
    else:
        raise StartupError(
            "peers need certificates: give --certs DIR (make them with "
            f"`raftkv certs --out DIR --cluster FILE`) or --peer-ca/--peer-cert/--peer-key; "
            f"{INSECURE_PEERS_FLAG} --allow-unsafe runs without (tests only)"
        )
    return chosen.load()


# Allocations between young-generation collections (CPython's default: 700).
GC_YOUNG_THRESHOLD = 50_000


def _tune_garbage_collector() -> None:
    """Every log entry stays in memory as GC-tracked objects, so the collector's passes over
    older generations grow with the log. Collecting less often halved SET p99.9 at C=64 in
    `raftkv bench --workloads set` (34 and 27 ms before, 13–19 ms after, in paired runs);
    freezing moves the log loaded at start out of its reach. Called once the Replica has
    loaded its files: the snapshot's persistent maps (immutables.Map nodes, one per few keys)
    would otherwise be rescanned by every full collection for as long as the node runs
    (https://docs.python.org/3/library/gc.html#gc.freeze).
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


def check_seams(options: ReplicaOptions, clock: Clock, allowed: bool) -> None:
    """StartupError unless every test seam in effect is acknowledged (--allow-unsafe)."""
    seams = options.seams(clock.rate)
    if seams and not allowed:
        raise StartupError(refusal(seams))


async def _flush_refusals(refusals: RefusalLog) -> None:
    """Writes the count of suppressed refusal lines of a flood that has stopped."""
    while True:
        await asyncio.sleep(REPEAT_INTERVAL)
        refusals.limiter.flush()


def _bind(
    server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None
) -> str | None:
    """None when `server` listens on `address`, else why not."""
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as error:
        return str(error).rstrip(".")
    return None if bound else "the port is probably in use"


async def serve(
    options: ReplicaOptions,
    listen: Listeners,
    quiet: bool,
    clock: Clock,
    chrony_conf: Path | None = None,
) -> int:
    dump = DumpLog(
        node_data_dir(options.data_root, options.node_id), options.node_id, to_stdout=not quiet
    )
    for warning in options.config.validate():
        dump.write(f"Configuration warning: {warning}")
    before, after = raise_descriptor_limit()
    if after != before:
        dump.write(f"Node {options.node_id} raised its descriptor limit from {before} to {after}.")
    # Off the event loop: it reads files and may run `chronyc` (up to 3 s).
    time_service = await asyncio.to_thread(check_host, options.config.max_clock_drift, chrony_conf)
    replica = Replica(options, dump, clock, time_service)
    if time_service.warning:
        # Loudly: the dump line comes after the start-up line, and --quiet keeps it off stdout.
        print(time_service.stderr_line(options.node_id), file=sys.stderr, flush=True)
    _tune_garbage_collector()
    refusals = RefusalLog(replica)
    clients = client_server()
    raftkv_pb2_grpc.add_RaftServicer_to_server(RaftService(replica, refusals), clients)
    raftkv_pb2_grpc.add_KeyValueServicer_to_server(KeyValueService(replica), clients)
    # Its own server, uncapped: clients that fill the client port's slots must not lock peers out.
    peer_server = grpc.aio.server(options=NODE_OPTIONS)
    raftkv_pb2_grpc.add_RaftServicer_to_server(
        PeerService(replica, secure=options.peer_tls is not None, refusals=refusals), peer_server
    )
    client_credentials = (
        None
        if options.client_tls is None
        else options.client_tls.server_credentials(require_client_auth=options.client_cert_auth)
    )
    peer_credentials = (
        None
        if options.peer_tls is None
        else options.peer_tls.server_credentials(require_client_auth=True)
    )
    for server, address, credentials in (
        (clients, listen.client, client_credentials),
        (peer_server, listen.peer, peer_credentials),
    ):
        reason = _bind(server, address, credentials)
        if reason is not None:
            dump.write(f"Node {options.node_id} cannot listen on {address}: {reason}.")
            print(f"raftkv-node: cannot listen on {address}: {reason}.", file=sys.stderr)
            replica.storage.close()
            dump.close()
            return 1
    await peer_server.start()
    await clients.start()
    flusher = asyncio.create_task(_flush_refusals(refusals))
    # The first SIGTERM/SIGINT stops the node gracefully (a leader hands leadership over
    # first); a second one stops it at once.
    stop, stop_now = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        (stop_now if stop.is_set() else stop).set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    runner = asyncio.create_task(replica.run())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if not runner.done():
        await hand_over_leadership(replica, runner, stop_now)
    if runner.done() and runner.exception() is not None:
        dump.write(f"Node {options.node_id} stopped: {runner.exception()}")
        status = 1
    else:
        dump.write(f"Node {options.node_id} shutting down.")
    stopper.cancel()
    flusher.cancel()
    await asyncio.gather(clients.stop(grace=0.2), peer_server.stop(grace=0.2))
    refusals.limiter.close()
    await replica.stop()
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError, FatalNodeError):
        await runner
    dump.close()
    return status


# A stopping leader waits at most this many (longest) election timeouts for another leader.
HANDOVER_ELECTION_TIMEOUTS = 2


async def hand_over_leadership(
    replica: Replica, runner: asyncio.Task[None], stop_now: asyncio.Event
) -> None:
    """Before a leader stops: hand leadership to its most up-to-date follower and wait until
    another node leads, so that the cluster does not wait for an election timeout (and the
    old lease) without a leader. Gives up after HANDOVER_ELECTION_TIMEOUTS election timeouts,
    when `stop_now` is set (a second signal) or when the replica's loop ends."""
    node_id = replica.node_id
    if replica.core.role is not Role.LEADER or not replica.peers:
        return
    timeout = HANDOVER_ELECTION_TIMEOUTS * replica.options.config.election_timeout_max
    replica.dump.write(
        f"Node {node_id} is the leader: handing leadership to its most up-to-date follower "
        f"before stopping (at most {timeout:g} s; a second signal stops it at once)."
    )
    handover = asyncio.create_task(replica.transfer_leadership(None, timeout))
    interrupted = asyncio.create_task(stop_now.wait())
    await asyncio.wait({handover, interrupted, runner}, return_when=asyncio.FIRST_COMPLETED)
    interrupted.cancel()
    if not handover.done():
        handover.cancel()
        if stop_now.is_set():
            replica.dump.write(f"Node {node_id} received a second signal: stopping at once.")
        return
    outcome = handover.result()
    if isinstance(outcome, TransferRefused):
        replica.dump.write(
            f"Node {node_id} could not hand leadership over ({outcome.details}); stopping anyway."
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options, listen = resolve(args)
        options.config.validate()
        options.snapshots.validate()
        clock = Clock.from_environment()
        check_seams(options, clock, args.allow_unsafe)
    except (StartupError, ClusterConfigError, ConfigError, SeamError, TlsConfigError) as error:
        print(f"raftkv-node: {error}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(options, listen, args.quiet, clock, args.chrony_conf))
    except StorageError as error:
        print(f"raftkv-node: node {options.node_id}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
