"""Jepsen-style randomized runs on real node processes.

    python -m tests.faults.jepsen --time 60 --nemesis all --seed 1 [--runs 3] [--nodes 5]
        [--clients 5] [--keys 8] [--unsafe read-without-lease] [--network auto|netns|loopback]

Each run starts a fresh cluster, lets `--clients` asyncio clients GET/SET random keys with unique
values (history.py), following leader hints, and `--pinned` read-only clients each bound to one
node (default one per node: they keep reading from an isolated old leader), while a nemesis
applies a schedule of faults drawn from the seed, then heals everything, waits for the cluster
to converge, reads every key once more, and checks the whole history with the linearizability
checker (tests/support/linearizability.py).

Faults (`--nemesis`, comma-separated, or `all`):
  kill       kill -9 a node (often the leader), restart it after a while
  pause      SIGSTOP a node (often the leader), SIGCONT after a while
  partition  isolate one node / isolate the leader / minority-majority split (the leader on
             either side) / majority ring / bridge / one-way link (kernel-level cut; with proxied
             links also message-level one-way loss)
  clock      restart a node with RAFTKV_CLOCK_RATE within 1 ± 0.9·max_drift (stays skewed)
  delay      "WAN": nodes in up to three regions, 40–120 ms one way between regions (needs the
             delay proxies, so runs with `delay` route every link through them; lease 1 s)

The schedule is drawn from the seed up front; what it resolves to at run time (which node led)
is logged. On failure the history (JSON), the schedule, what was applied, the checker's
explanation and every node's logs.txt, metadata.txt and dump.txt are saved under `--out`
(default: a folder in the system temp directory) and the path is printed.

The last line is `N passed, M failed` over the runs. Exit status 1 if any run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from raftkv.client.pipeline import PipelineConnection
from raftkv.core.node import UnsafeSwitches
from tests.faults.controller import Cluster, ClusterError
from tests.faults.history import (
    ClientOptions,
    HistoryClient,
    Recorder,
    random_workload,
    save_history,
)
from tests.support.linearizability import CheckerBudgetExceeded, check_history

NEMESES = ("kill", "pause", "partition", "clock", "delay")
# Shapes that cut the leader off from a majority are what leases must survive: drawn twice as often.
SHAPES = (
    "isolate-leader",
    "isolate-leader",
    "split",
    "split",
    "isolate-one",
    "ring",
    "bridge",
    "one-way",
)
UNSAFE = (*UnsafeSwitches.__slots__, "no_fsync")
SETTLE_TIMEOUT = 45.0


@dataclass
class Fault:
    at: float
    kind: str
    duration: float
    detail: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"t={self.at:6.2f} {self.kind:9} for {self.duration:.2f}s {self.detail}"


@dataclass
class RunOptions:
    time: float = 60.0
    nemeses: tuple[str, ...] = NEMESES
    nodes: int = 5
    clients: int = 5
    pinned: int | None = None  # read-only clients bound to one node each; None: one per node
    keys: int = 8
    unsafe: tuple[str, ...] = ()
    network: str = "auto"
    lease: float | None = None
    out: Path | None = None
    quiet: bool = False
    keep: bool = False
    # "pipeline": every client's requests share one KeyValue.Pipeline stream per node (what the
    # client library does); "unary": one unary call per attempt.
    transport: str = "pipeline"


@dataclass
class RunResult:
    seed: int
    ok: bool
    operations: int
    counts: dict[str, int]
    faults: Counter[str]
    check_seconds: float
    failure: str = ""
    artifacts: Path | None = None
    note: str = ""

    def line(self) -> str:
        faults = ", ".join(f"{k}×{n}" for k, n in sorted(self.faults.items())) or "none"
        counts = ", ".join(f"{k} {n}" for k, n in self.counts.items())
        verdict = "PASS" if self.ok else "FAIL"
        return (
            f"seed {self.seed}: {verdict}  {self.operations} ops ({counts}), faults: {faults}, "
            f"checked in {self.check_seconds:.2f}s"
        )


def make_schedule(
    rng: random.Random, duration: float, kinds: tuple[str, ...], size: int, max_drift: float
) -> list[Fault]:
    """Faults one after another, with quiet gaps, ending 3 s before the run does."""
    faults: list[Fault] = []
    end = duration - 3.0
    t = rng.uniform(1.0, 2.0)
    while t < end:
        kind = rng.choice(sorted(kinds))
        length = min(rng.uniform(1.0, 4.0), end - t)
        if length < 0.5:
            break
        nodes = list(range(size))
        rng.shuffle(nodes)
        detail: dict[str, Any] = {}
        if kind in ("kill", "pause"):
            detail["target"] = "leader" if rng.random() < 0.6 else nodes[0]
        elif kind == "partition":
            detail = {
                "shape": rng.choice(SHAPES),
                "order": nodes,
                "leader_in_minority": rng.random() < 0.5,
                "message_level": rng.random() < 0.5,
            }
        elif kind == "clock":
            detail = {
                "target": "leader" if rng.random() < 0.5 else nodes[0],
                "rate": round(1.0 + rng.uniform(-0.9, 0.9) * max_drift, 6),
            }
        elif kind == "delay":
            regions = [rng.randrange(3) for _ in range(size)]
            delays = {
                f"{a}-{b}": round(rng.uniform(0.04, 0.12), 3)
                for a in range(3)
                for b in range(3)
                if a != b
            }
            detail = {"regions": regions, "one_way": delays}
        faults.append(Fault(round(t, 3), kind, round(length, 3), detail))
        t += length + rng.uniform(0.5, 2.0)
    return faults


class Nemesis:
    """Applies a schedule to a cluster; every blocking call runs in a worker thread so the
    clients' event loop keeps going."""

    def __init__(self, cluster: Cluster, schedule: list[Fault], started: float) -> None:
        self.cluster = cluster
        self.schedule = schedule
        self.started = started
        self.applied: list[str] = []
        self.counts: Counter[str] = Counter()

    def note(self, text: str) -> None:
        self.applied.append(f"t={time.monotonic() - self.started:7.3f} {text}")

    async def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(function, *args, **kwargs)

    async def _target(self, wanted: object) -> int:
        if wanted == "leader":
            leader = await self._call(self.cluster.serving_leader, self.cluster.live())
            if leader is not None:
                return int(leader)
            return random.Random(len(self.applied)).choice(self.cluster.ids)
        return int(str(wanted))

    async def run(self) -> None:
        for fault in self.schedule:
            delay = self.started + fault.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the schedule's own timeline
            try:
                undo = await self._apply(fault)
            except ClusterError as error:
                self.note(f"{fault.kind} could not be applied: {error}")
                continue
            self.counts[fault.kind] += 1
            await asyncio.sleep(fault.duration)  # how long the fault lasts
            await undo()

    async def _apply(self, fault: Fault) -> Any:
        cluster, detail = self.cluster, fault.detail

        async def nothing() -> None:
            return None

        if fault.kind == "kill":
            target = await self._target(detail["target"])
            await self._call(cluster.kill, target)
            self.note(f"kill -9 node {target}")

            async def restart() -> None:
                await self._call(cluster.start_node, target, wait=False)
                self.note(f"restart node {target}")

            return restart
        if fault.kind == "pause":
            target = await self._target(detail["target"])
            await self._call(cluster.pause, target)
            self.note(f"SIGSTOP node {target}")

            async def resume() -> None:
                await self._call(cluster.resume, target)
                self.note(f"SIGCONT node {target}")

            return resume
        if fault.kind == "clock":
            target = await self._target(detail["target"])
            rate = str(detail["rate"])
            await self._call(cluster.restart, target, env={"RAFTKV_CLOCK_RATE": rate}, wait=False)
            self.note(f"node {target} restarted with RAFTKV_CLOCK_RATE={rate}")
            return nothing
        if fault.kind == "delay":
            regions: list[int] = detail["regions"]
            one_way: dict[str, float] = detail["one_way"]
            groups = [[i for i, r in enumerate(regions) if r == g] for g in range(3)]
            await self._call(cluster.set_wan, groups, lambda a, b: one_way[f"{a}-{b}"])
            self.note(f"WAN regions {groups}, one-way delays {one_way}")

            async def undelay() -> None:
                assert cluster.proxies is not None
                await self._call(cluster.proxies.set_delays, {})
                self.note("delays removed")

            return undelay
        assert fault.kind == "partition"
        await self._partition(detail)

        async def heal() -> None:
            await self._call(cluster.set_partition, ())
            if cluster.proxies is not None:
                await self._call(cluster.drop_messages, ())
            self.note("partition healed")

        return heal

    async def _partition(self, detail: dict[str, Any]) -> None:
        cluster = self.cluster
        order: list[int] = list(detail["order"])
        shape = detail["shape"]
        leader = await self._call(cluster.serving_leader, cluster.live())
        if shape == "isolate-one":
            await self._call(cluster.isolate, order[0])
            self.note(f"isolate node {order[0]}")
        elif shape == "isolate-leader":
            target = leader if leader is not None else order[0]
            await self._call(cluster.isolate, target)
            self.note(f"isolate leader {target} (clients still reach it)")
        elif shape == "split":
            if leader is not None:
                order.remove(leader)
                position = 0 if detail["leader_in_minority"] else len(order)
                order.insert(position, leader)
            minority = order[: (cluster.size - 1) // 2]
            majority = order[len(minority) :]
            await self._call(cluster.split, [minority, majority])
            self.note(f"split minority {minority} / majority {majority} (leader {leader})")
        elif shape == "ring":
            await self._call(cluster.ring)
            self.note(f"majority ring, cut {sorted(cluster.partition)}")
        elif shape == "bridge":
            await self._call(cluster.bridge, order[0])
            self.note(f"bridge through node {order[0]}, cut {sorted(cluster.partition)}")
        else:
            src = leader if leader is not None else order[0]
            dst = next(i for i in order if i != src)
            if detail["message_level"] and cluster.proxies is not None:
                await self._call(cluster.drop_messages, {(src, dst)})
                self.note(f"one-way message loss {src} → {dst}")
            else:
                await self._call(cluster.cut_one_way, src, dst)
                self.note(f"one-way kernel cut {src} → {dst}")

    async def heal_all(self) -> None:
        cluster = self.cluster
        await self._call(cluster.heal)
        for i in cluster.ids:
            node = cluster.nodes[i]
            if node.paused:
                await self._call(cluster.resume, i)
            if not node.running:
                await self._call(cluster.start_node, i, wait=False)
        self.note("healed everything, every node running")


async def _run_workload(
    cluster: Cluster, options: RunOptions, seed: int, schedule: list[Fault]
) -> tuple[Recorder, Nemesis, str]:
    rng = random.Random(seed)
    recorder = Recorder()
    keys = [f"k{i}" for i in range(options.keys)]
    client_options = ClientOptions(op_timeout=4.0, attempt_timeout=1.0)
    channels = {i: grpc.aio.insecure_channel(a) for i, a in cluster.addresses.items()}
    pipes = None
    if options.transport == "pipeline":
        pipes = {i: PipelineConnection(channel) for i, channel in channels.items()}
    clients = [
        HistoryClient(
            f"c{c}",
            cluster.addresses,
            recorder,
            random.Random(rng.random()),
            client_options,
            pipes=pipes,
        )
        for c in range(options.clients)
    ]
    pinned = options.nodes if options.pinned is None else options.pinned
    readers = [
        HistoryClient(
            f"r{n}",
            cluster.addresses,
            recorder,
            random.Random(rng.random()),
            client_options,
            pinned=n % options.nodes,
            pipes=pipes,
        )
        for n in range(pinned)
    ]
    started = time.monotonic()
    nemesis = Nemesis(cluster, schedule, started)
    settle_failure = ""
    try:
        stop_at = started + options.time
        workers = [asyncio.create_task(random_workload(c, keys, stop_at)) for c in clients]
        workers += [asyncio.create_task(random_workload(r, keys, stop_at, 0.0)) for r in readers]
        nemesis_task = asyncio.create_task(nemesis.run())
        await nemesis_task
        await nemesis.heal_all()
        await asyncio.gather(*workers)
        try:
            leader = await asyncio.to_thread(cluster.wait_converged, SETTLE_TIMEOUT)
            nemesis.note(f"converged, leader {leader}")
        except ClusterError as error:
            settle_failure = f"the cluster did not settle after healing: {error}"
            nemesis.note(settle_failure)
        # Final reads: every acknowledged write must still be there.
        for key in keys:
            await clients[0].get(key)
    finally:
        for client in clients + readers:
            await client.close()
        for pipe in (pipes or {}).values():
            await pipe.close()
        for channel in channels.values():
            await channel.close(grace=None)
    return recorder, nemesis, settle_failure


def run_once(options: RunOptions, seed: int) -> RunResult:
    rng = random.Random(seed)
    proxied = "delay" in options.nemeses
    lease = options.lease if options.lease is not None else (1.0 if proxied else None)
    node_args = [f"--unsafe-{name.replace('_', '-')}" for name in options.unsafe]
    workdir = Path(tempfile.mkdtemp(prefix=f"raftkv-jepsen-{seed}-"))
    log = (lambda line: None) if options.quiet else (lambda line: print(f"  {line}", flush=True))
    cluster = Cluster(
        workdir,
        options.nodes,
        network=options.network,
        proxied=proxied,
        lease=lease,
        node_args=node_args,
        # The clock nemesis restarts nodes with RAFTKV_CLOCK_RATE ≠ 1; --unsafe for controls.
        allow_unsafe=bool(options.unsafe) or "clock" in options.nemeses,
        log=log,
    )
    schedule = make_schedule(
        rng, options.time, options.nemeses, options.nodes, cluster.config.max_clock_drift
    )
    failure = ""
    recorder = Recorder()
    nemesis: Nemesis | None = None
    check_seconds = 0.0
    try:
        cluster.start()
        cluster.wait_for_leader(timeout=30.0)
        recorder, nemesis, failure = asyncio.run(_run_workload(cluster, options, seed, schedule))
        began = time.monotonic()
        try:
            result = check_history(recorder.ops)
            if not result.ok:
                failure = f"not linearizable: {result.explanation}\n{failure}".strip()
        except CheckerBudgetExceeded as error:
            failure = f"checker gave up: {error}\n{failure}".strip()
        check_seconds = time.monotonic() - began
        artifacts = None
        if failure or options.keep:
            artifacts = _save(options, seed, cluster, recorder, schedule, nemesis, failure)
    finally:
        cluster.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return RunResult(
        seed,
        not failure,
        len(recorder.ops),
        recorder.counts(),
        nemesis.counts if nemesis else Counter(),
        check_seconds,
        failure,
        artifacts,
        cluster.mode_note,
    )


def _save(
    options: RunOptions,
    seed: int,
    cluster: Cluster,
    recorder: Recorder,
    schedule: list[Fault],
    nemesis: Nemesis,
    failure: str,
) -> Path:
    root = options.out or Path(tempfile.gettempdir()) / "raftkv-jepsen-failures"
    folder = root / f"seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=True)
    save_history(recorder.ops, folder / "history.json")
    body = {
        "seed": seed,
        "options": {k: str(v) for k, v in asdict(options).items()},
        "schedule": [asdict(f) for f in schedule],
    }
    (folder / "schedule.json").write_text(json.dumps(body, indent=1) + "\n")
    (folder / "nemesis.txt").write_text(
        "schedule:\n"
        + "\n".join(f.describe() for f in schedule)
        + "\n\napplied:\n"
        + "\n".join(nemesis.applied)
        + "\n"
    )
    (folder / "failure.txt").write_text(failure + "\n")
    cluster.collect(folder / "nodes")
    return folder


def parse_args(argv: list[str] | None) -> tuple[RunOptions, int, int]:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.jepsen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--time", type=float, default=60.0, help="seconds of workload per run")
    parser.add_argument("--nemesis", default="all", help=f"all, or a subset of {','.join(NEMESES)}")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first run")
    parser.add_argument("--runs", type=int, default=1, help="runs, with seeds seed, seed+1, ...")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument(
        "--pinned", type=int, help="read-only clients bound to one node each (default: 1/node)"
    )
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--unsafe", default="", help=f"negative controls: {','.join(UNSAFE)}")
    parser.add_argument("--network", choices=["auto", "netns", "loopback"], default="auto")
    parser.add_argument(
        "--transport",
        choices=["pipeline", "unary"],
        default="pipeline",
        help="clients share a KeyValue.Pipeline stream per node, or make unary calls",
    )
    parser.add_argument("--lease", type=float, help="lease seconds (default 0.3; 1.0 with delay)")
    parser.add_argument("--out", type=Path, help="where failing runs are saved")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--keep", action="store_true", help="save every run, not only failures")
    args = parser.parse_args(argv)
    nemeses = NEMESES if args.nemesis == "all" else tuple(args.nemesis.split(","))
    for name in nemeses:
        if name not in NEMESES:
            parser.error(f"unknown nemesis {name!r}; choose from {', '.join(NEMESES)}")
    unsafe = tuple(u.replace("-", "_") for u in args.unsafe.split(",") if u)
    for name in unsafe:
        if name not in UNSAFE:
            parser.error(f"unknown unsafe switch {name!r}; choose from {', '.join(UNSAFE)}")
    options = RunOptions(
        time=args.time,
        nemeses=nemeses,
        nodes=args.nodes,
        clients=args.clients,
        pinned=args.pinned,
        keys=args.keys,
        unsafe=unsafe,
        network=args.network,
        lease=args.lease,
        out=args.out,
        quiet=args.quiet,
        keep=args.keep,
        transport=args.transport,
    )
    return options, args.seed, args.runs


def main(argv: list[str] | None = None) -> int:
    options, first_seed, runs = parse_args(argv)
    results = []
    total_ops = 0
    check_time = 0.0
    for run, seed in enumerate(range(first_seed, first_seed + runs), start=1):
        unsafe = f", UNSAFE {','.join(options.unsafe)}" if options.unsafe else ""
        nemeses = ",".join(options.nemeses)
        print(f"run {run}/{runs}: seed {seed}, {options.time:.0f}s, nemesis {nemeses}{unsafe}")
        result = run_once(options, seed)
        results.append(result)
        total_ops += result.operations
        check_time += result.check_seconds
        print(result.line(), flush=True)
        if result.ok and result.artifacts:
            print(f"  saved to {result.artifacts}", flush=True)
        if not result.ok:
            first_lines = "\n".join(result.failure.splitlines()[:25])
            print(f"  {first_lines}", flush=True)
            print(f"  saved to {result.artifacts}", flush=True)
    passed = sum(r.ok for r in results)
    print(f"{total_ops} client operations checked in {check_time:.2f}s")
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
