"""`raftkv bench` / `raftkv-bench`: measure raftkv, optionally against etcd and PySyncObj.

    raftkv bench                          # own 3-node cluster (temp dir, fsync on): set/get/mixed
    raftkv bench -c 64 -d 10 --json       # machine-readable
    raftkv bench --cluster cluster/cluster.json --workloads get
    raftkv bench --against etcd,pysyncobj --latency --wan 50ms --failover 5 --fill 100000
                                          # = make bench-peers
    raftkv bench --workloads set,get --profile-leader prof/    # py-spy on the leader
    raftkv bench growth --sets 1000000 --against etcd   # memory, disk, snapshots, restart,
                                          # catch-up after many SETs (raftkv bench growth --help)

Exit status: 0 when every run completed (errors are counted, not fatal), 1 when a cluster or the
load generator failed, 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from raftkv_tools.bench.clusters import ClusterError
from raftkv_tools.bench.etcdstubs import StubsError
from raftkv_tools.bench.loadgen import LoadError, Progress
from raftkv_tools.bench.pyspy import PySpyError
from raftkv_tools.bench.suite import PEERS, Options, Suite
from raftkv_tools.bench.workload import WORKLOADS
from raftkv_tools.delayproxy import parse_delay


def positive(kind: type[float] | type[int]) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return value

    return parse


def _list(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(dict.fromkeys(i.strip() for i in text.split(",") if i.strip()))
        unknown = [i for i in items if i not in allowed]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"choose from {', '.join(allowed)} (comma-separated), not {text!r}"
            )
        return items

    return parse


def _delay(text: str) -> float:
    try:
        return parse_delay(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raftkv bench",
        description="Closed-loop benchmark of raftkv (and of etcd / PySyncObj with --against).",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workloads",
        type=_list(WORKLOADS),
        default=WORKLOADS,
        help="comma-separated: set, get, mixed (90%% GET) (default: all)",
    )
    parser.add_argument(
        "-c",
        "--clients",
        type=positive(int),
        default=64,
        help="concurrent closed-loop clients (default: 64)",
    )
    parser.add_argument(
        "-d",
        "--duration",
        type=positive(float),
        default=10.0,
        help="measured seconds per run (default: 10)",
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before (default: 2)")
    parser.add_argument(
        "--procs",
        type=int,
        default=0,
        help="load-generator processes (default: 2 when C ≥ 16, else 1)",
    )
    parser.add_argument(
        "--rounds",
        type=positive(int),
        default=1,
        help="repeat every run, alternating systems; the median is shown",
    )
    parser.add_argument(
        "--cluster",
        type=Path,
        metavar="FILE",
        help="measure a running raftkv cluster instead of starting one",
    )
    parser.add_argument(
        "--read-mode",
        choices=["lease", "read_index"],
        default="lease",
        help="read mode of the cluster we start (default: lease)",
    )
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="start our nodes with --unsafe-no-fsync (a negative control)",
    )
    parser.add_argument(
        "--against",
        type=_list(PEERS),
        default=(),
        help="also measure: etcd, pysyncobj (comma-separated)",
    )
    parser.add_argument(
        "--unary",
        action="store_true",
        help="drive raftkv and PySyncObj with one unary call per request instead of one "
        "KeyValue.Pipeline stream per node (etcd always gets unary calls)",
    )
    parser.add_argument("--latency", action="store_true", help="also GET and SET at C=1")
    parser.add_argument(
        "--wan",
        type=_delay,
        default=0.0,
        metavar="DELAY",
        help="WAN section: one-way delay per direction on node↔node links, e.g. 50ms",
    )
    parser.add_argument(
        "--failover",
        type=int,
        default=0,
        metavar="N",
        help="N leader-kill trials (ours, and etcd with --against etcd)",
    )
    parser.add_argument(
        "--failover-clients",
        type=positive(int),
        default=16,
        help="clients during failover trials (default: 16)",
    )
    parser.add_argument(
        "--fill",
        type=int,
        default=0,
        metavar="N",
        help="SET N times into each system, then report memory and disk",
    )
    parser.add_argument(
        "--profile-leader",
        type=Path,
        metavar="DIR",
        help="py-spy the leader under SET and GET load; raw stacks into DIR",
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help="with --profile-leader: also sample C frames (pauses the node)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the clusters here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="do not delete the temp dir")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--json-out", type=Path, metavar="FILE", help="also write the JSON report to FILE"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def options_from(args: argparse.Namespace) -> Options:
    return Options(
        workloads=args.workloads,
        clients=args.clients,
        duration=args.duration,
        warmup=max(0.0, args.warmup),
        procs=max(0, args.procs),
        rounds=args.rounds,
        read_mode=args.read_mode,
        fsync=not args.no_fsync,
        cluster_file=args.cluster,
        against=args.against,
        latency=args.latency,
        wan=args.wan,
        failover=max(0, args.failover),
        failover_clients=args.failover_clients,
        fill=max(0, args.fill),
        profile_dir=args.profile_leader,
        profile_native=args.native,
        workdir=args.workdir,
        keep=args.keep,
        unary=args.unary,
    )


def main(argv: Sequence[str] | None = None) -> int:
    from raftkv_tools.bench.report import render

    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["growth"]:
        from raftkv_tools.bench.growth import main as growth_main

        return growth_main(arguments[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(arguments)
    except SystemExit as request:
        return request.code if isinstance(request.code, int) else 2
    options = options_from(args)
    if options.cluster_file is not None and (options.against or options.wan or options.failover):
        print(
            "raftkv bench: --cluster measures a running cluster only; --against, --wan and "
            "--failover need clusters the benchmark starts itself",
            file=sys.stderr,
        )
        return 2
    suite = Suite(options, Progress(enabled=not args.quiet))
    try:
        report = suite.run()
    except (ClusterError, LoadError, StubsError, PySpyError, OSError, grpc.RpcError) as error:
        print(f"raftkv bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("raftkv bench: interrupted", file=sys.stderr)
        return 130
    document = json.dumps(report.to_json(), indent=2) + "\n"
    if args.json_out is not None:
        args.json_out.write_text(document)
    if args.json:
        sys.stdout.write(document)
    else:
        print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
