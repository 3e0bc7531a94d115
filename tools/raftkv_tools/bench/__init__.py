"""`raftkv bench`: the load generator, the peers it compares against, and the report.

    raftkv bench [--against etcd,pysyncobj] [--latency] [--wan 50ms] [--failover 5] ...
    make bench          # ours only: set / get / mixed at C=64
    make bench-peers    # everything, against etcd 3.4 and PySyncObj 0.3.17, in one command
    make bench-growth   # raftkv bench growth: after 1M SETs over 1,000 keys (issue 15)

Modules: `workload` (keys, values, run shape), `backends` (lean grpc.aio clients for our proto
and etcd's KV API), `loadgen` (closed-loop generator in worker processes, progress, results),
`clusters` (3-member launchers for raftkv, etcd and PySyncObj, with delay proxies for WAN),
`syncobj_node` (PySyncObj behind our `KeyValue` service), `etcdstubs` (etcd stubs regenerated
from the etcd3 package's embedded descriptors), `procstats` (/proc CPU, RSS, ports; data-dir
size), `pyspy` (leader profiles), `suite` (the sections), `report` (the table and targets),
`rolling` (rolling restarts) and `growth` (`raftkv bench growth`: memory, disk, snapshots,
restart and catch-up after many SETs, issue 15).

Choices worth knowing when reading the numbers:
- The generator runs C ≥ 16 clients in 2 processes (`--procs` to change): one asyncio process
  can use at most one core, and at our GET rates the client alone needs over half of one; with
  two, the generator keeps headroom on a 2-core machine. Its CPU is reported per run
  (client CPU), so a saturated generator would show (≈100% per process).
- All systems' clusters are up together during the LAN sections and the runs alternate between
  systems; an idle cluster costs ~1–6% of a core (ours ~6% for 3 nodes at 50 ms heartbeats).
- Requests go to the leader (etcd too, though its followers would forward).
- An operation counts when it completes inside the measured window; errors are operations that
  failed after retrying for 5 s (redirects to the leader are followed, not counted).
- Elections during a run (a starved node missing heartbeats) are detected from the Raft term
  and noted under the table.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from raftkv_tools.bench.cli import main as cli_main

    return cli_main(argv)
