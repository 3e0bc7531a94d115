"""The closed-loop load generator.

C virtual clients each keep exactly one request outstanding: pick a key (uniform over the key
space), GET or SET it, wait for the answer, repeat. The run has a warm-up, then D measured
seconds; an operation counts (ops/s, latency, errors) when it *completes* inside the measured
window. No operation starts after the window ends.

The clients can be split over P worker processes (`procs`), each with its own event loop and one
gRPC channel per node; they are started with the "spawn" method (gRPC does not survive fork()).
The parent only coordinates: it starts every worker at one instant of the shared monotonic
clock, samples the servers' CPU at the window's edges, shows progress on stderr, runs timed
hooks (kill a leader, start a profiler) and merges the workers' results.
"""

from __future__ import annotations

import array
import asyncio
import multiprocessing
import os
import random
import resource
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from raftkv_tools.bench.backends import OperationError, Target, open_ops
from raftkv_tools.bench.procstats import ProcessMonitor
from raftkv_tools.bench.workload import Workload, keys, values

READY_TIMEOUT = 30.0
PROGRESS_INTERVAL = 0.2
PLAIN_PROGRESS_INTERVAL = 5.0


@dataclass
class RunResult:
    system: str
    workload: str
    clients: int
    procs: int
    duration: float
    ops: int
    errors: int
    error_codes: dict[str, int]
    redirects: int
    latency_ms: dict[str, float]
    client_cpu_percent: float
    server_cpu_percent: dict[str, float]
    started_at: float
    # The member that led when the run started (its CPU is shown apart).
    leader: str | None = None
    # Raft terms that began during the run (elections), when the suite could tell.
    elections: int = 0
    # Operations completed in all, warm-up included (what the servers actually applied).
    completed_total: int = 0
    notes: list[str] = field(default_factory=list)
    # (attempt sent, completed) of successful SETs, monotonic seconds; only with timeline.
    timeline: list[tuple[float, float]] = field(default_factory=list, repr=False)
    # Every measured operation's completion (monotonic s) and latency (s), aligned, in no
    # particular order; only with Workload.per_op.
    op_finished: array.array[float] = field(default_factory=lambda: array.array("d"), repr=False)
    op_latency: array.array[float] = field(default_factory=lambda: array.array("d"), repr=False)

    @property
    def ops_per_second(self) -> float:
        return self.ops / self.duration if self.duration > 0 else 0.0

    @property
    def server_cpu_total(self) -> float:
        return sum(self.server_cpu_percent.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "workload": self.workload,
            "clients": self.clients,
            "procs": self.procs,
            "duration_s": round(self.duration, 3),
            "ops": self.ops,
            "ops_per_s": round(self.ops_per_second, 1),
            "latency_ms": {k: round(v, 3) for k, v in self.latency_ms.items()},
            "errors": self.errors,
            "error_codes": self.error_codes,
            "redirects": self.redirects,
            "client_cpu_percent": round(self.client_cpu_percent, 1),
            "server_cpu_percent": {k: round(v, 1) for k, v in self.server_cpu_percent.items()},
            "server_cpu_total_percent": round(self.server_cpu_total, 1),
            "leader": self.leader,
            "elections": self.elections,
            "notes": self.notes,
        }


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence (nan when empty)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-fraction * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def latency_summary(latencies: Sequence[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    if not ordered:
        nan = float("nan")
        return {"p50": nan, "p99": nan, "p99.9": nan, "mean": nan, "max": nan}
    return {
        "p50": percentile(ordered, 0.50) * 1e3,
        "p99": percentile(ordered, 0.99) * 1e3,
        "p99.9": percentile(ordered, 0.999) * 1e3,
        "mean": sum(ordered) / len(ordered) * 1e3,
        "max": ordered[-1] * 1e3,
    }


# ---------------------------------------------------------------------------------------------
# Worker process


@dataclass(frozen=True)
class _WorkerSpec:
    target: Target
    workload: Workload
    first_client: int
    client_count: int
    slot: int
    # Stop after this many operations (0: run for the whole window).
    budget: int = 0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _worker(conn: Connection, spec: _WorkerSpec, counters: Any) -> dict[str, Any]:
    workload = spec.workload
    key_list = keys(workload.key_count)
    value_list = values(size=workload.value_bytes)
    ops = open_ops(spec.target, key_list, value_list, workload.per_try_timeout, workload.op_timeout)
    loop = asyncio.get_running_loop()
    try:
        await ops.connect(10.0)
        conn.send(("ready", os.getpid()))
        start_at: float = await loop.run_in_executor(None, conn.recv)
        measure_from = start_at + workload.warmup
        measure_to = measure_from + workload.duration
        latencies = array.array("d")
        finish_times = array.array("d")
        sent_times = array.array("d")
        done_times = array.array("d")
        errors: dict[str, int] = {}
        completed = [0]
        issued = [0]
        budget = spec.budget
        cpu: dict[str, float] = {}
        loop.call_at(measure_from, lambda: cpu.__setitem__("from", _cpu_seconds()))
        loop.call_at(measure_to, lambda: cpu.__setitem__("to", _cpu_seconds()))
        get_fraction = workload.get_fraction
        timeline = workload.timeline
        is_status = workload.name == "status"
        per_op = workload.per_op
        key_count = len(key_list)
        value_count = len(value_list)
        pid = os.getpid()

        async def client(number: int) -> None:
            rng = random.Random(workload.seed * 1_000_003 + number)
            client_id = f"bench-{pid}-{number}"
            seq = 0
            monotonic = time.monotonic
            record = latencies.append
            record_finish = finish_times.append
            while True:
                started = monotonic()
                if started >= measure_to:
                    return
                if budget:
                    if issued[0] >= budget:
                        return
                    issued[0] += 1
                key_index = rng.randrange(key_count)
                try:
                    if is_status:
                        await ops.status()
                    elif get_fraction >= 1.0 or (
                        get_fraction > 0.0 and rng.random() < get_fraction
                    ):
                        await ops.get(key_index)
                    else:
                        seq += 1
                        sent = await ops.set(key_index, rng.randrange(value_count), client_id, seq)
                        if timeline:
                            sent_times.append(sent)
                            done_times.append(monotonic())
                except OperationError as failure:
                    finished = monotonic()
                    if measure_from <= finished <= measure_to:
                        errors[failure.code] = errors.get(failure.code, 0) + 1
                    await asyncio.sleep(0.01)
                    continue
                finished = monotonic()
                completed[0] += 1
                if measure_from <= finished <= measure_to:
                    record(finished - started)
                    if per_op:
                        record_finish(finished)

        async def report_progress() -> None:
            while True:
                counters[spec.slot] = completed[0]
                await asyncio.sleep(0.1)

        await asyncio.sleep(max(0.0, start_at - loop.time()))
        reporter = asyncio.create_task(report_progress())
        await asyncio.gather(
            *(client(n) for n in range(spec.first_client, spec.first_client + spec.client_count))
        )
        finished_at = loop.time()
        reporter.cancel()
        counters[spec.slot] = completed[0]
        cpu_used = cpu.get("to", _cpu_seconds()) - cpu.get("from", 0.0)
        return {
            "latencies": latencies.tobytes(),
            "finished": finish_times.tobytes(),
            "errors": errors,
            "redirects": getattr(ops, "redirects", 0),
            "cpu_seconds": cpu_used,
            "sent": sent_times.tobytes(),
            "done": done_times.tobytes(),
            "finished_at": finished_at,
            "completed": completed[0],
        }
    finally:
        await ops.close()


def _worker_entry(conn: Connection, spec: _WorkerSpec, counters: Any) -> None:
    try:
        result = asyncio.run(_worker(conn, spec, counters))
    except BaseException:  # report everything, even KeyboardInterrupt, to the parent
        conn.send(("error", traceback.format_exc()))
    else:
        conn.send(("result", result))
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# Progress on stderr


class Progress:
    """A bar redrawn in place when stderr is a terminal; otherwise a line every few seconds."""

    def __init__(self, stream: Any = None, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_line = 0.0
        self._drawn = False

    def update(
        self,
        label: str,
        elapsed: float,
        total: float,
        warmup: float,
        rate: float,
        final: bool = False,
        budget: tuple[int, int] | None = None,
    ) -> None:
        """Show `elapsed` of `total` seconds, or (done, budget) operations when given."""
        if not self.enabled:
            return
        phase = "warm-up" if elapsed < warmup else "measure"
        where = f"{elapsed:5.1f}/{total:g} s"
        fraction = elapsed / total if total > 0 else 1.0
        if budget is not None:
            where = f"{budget[0]:,}/{budget[1]:,} ops"
            fraction = budget[0] / budget[1] if budget[1] else 1.0
        if self.tty:
            width = 30
            filled = int(width * min(1.0, fraction))
            bar = "█" * filled + "░" * (width - filled)
            text = f"\r  {label:<34.34} [{bar}] {where} {phase:<7} {rate:>9,.0f} ops/s"
            self.stream.write(text + ("\n" if final else ""))
            self.stream.flush()
            self._drawn = not final
        elif final or time.monotonic() - self._last_line >= PLAIN_PROGRESS_INTERVAL:
            self._last_line = time.monotonic()
            state = "done" if final else phase
            if budget is None:
                where = f"{min(elapsed, total):.0f}/{total:g} s"
            self.stream.write(f"bench: {label}: {where.strip()} ({state}), {rate:,.0f} ops/s\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False
        self.stream.write(f"bench: {text}\n")
        self.stream.flush()


# ---------------------------------------------------------------------------------------------
# The coordinator


Hook = tuple[float, Callable[[], None]]


class LoadError(RuntimeError):
    pass


def run_load(
    target: Target,
    workload: Workload,
    *,
    procs: int = 1,
    monitor: ProcessMonitor | None = None,
    progress: Progress | None = None,
    hooks: Sequence[Hook] = (),
    label: str | None = None,
) -> RunResult:
    """Run `workload` against `target`; `hooks` run in the parent at (seconds into the measured
    window, callable)."""
    procs = max(1, min(procs, workload.clients))
    label = label or f"{target.label} {workload.name} C={workload.clients}"
    context = multiprocessing.get_context("spawn")
    counters = context.RawArray("q", procs)
    share, extra = divmod(workload.clients, procs)
    workers = []
    first = 0
    for slot in range(procs):
        count = share + (1 if slot < extra else 0)
        budget = 0
        if workload.op_budget:
            budget = max(1, workload.op_budget * count // workload.clients)
        parent_end, child_end = context.Pipe()
        spec = _WorkerSpec(target, workload, first, count, slot, budget)
        process = context.Process(
            target=_worker_entry, args=(child_end, spec, counters), daemon=True
        )
        process.start()
        child_end.close()
        workers.append((process, parent_end))
        first += count
    try:
        return _coordinate(
            target, workload, workers, counters, monitor, progress, hooks, label, procs
        )
    finally:
        for process, conn in workers:
            conn.close()
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)


def _receive(conn: Connection, deadline: float, what: str) -> Any:
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not conn.poll(remaining):
        raise LoadError(f"a load-generator process did not report {what} in time")
    kind, body = conn.recv()
    if kind == "error":
        raise LoadError(f"a load-generator process failed:\n{body}")
    return body


def _coordinate(
    target: Target,
    workload: Workload,
    workers: list[tuple[Any, Connection]],
    counters: Any,
    monitor: ProcessMonitor | None,
    progress: Progress | None,
    hooks: Sequence[Hook],
    label: str,
    procs: int,
) -> RunResult:
    ready_deadline = time.monotonic() + READY_TIMEOUT
    for _, conn in workers:
        _receive(conn, ready_deadline, "ready")
    start_at = time.monotonic() + 0.05
    for _, conn in workers:
        conn.send(start_at)
    measure_from = start_at + workload.warmup
    measure_to = measure_from + workload.duration
    total = workload.warmup + workload.duration
    pending = sorted(((measure_from + offset, index) for index, (offset, _) in enumerate(hooks)))
    snapshots: dict[str, Any] = {}
    last_count, last_time = 0, start_at
    rate = 0.0
    while True:
        now = time.monotonic()
        if "from" not in snapshots and now >= measure_from:
            snapshots["from"] = monitor.snapshot() if monitor else None
        finished = workload.op_budget and all(conn.poll() for _, conn in workers)
        if "to" not in snapshots and (now >= measure_to or finished):
            snapshots["to"] = monitor.snapshot() if monitor else None
            break
        while pending and pending[0][0] <= now:
            _, index = pending.pop(0)
            hooks[index][1]()
        count = sum(counters[:])
        if now - last_time >= 0.5:
            rate = (count - last_count) / (now - last_time)
            last_count, last_time = count, now
        if progress is not None:
            budget = (count, workload.op_budget) if workload.op_budget else None
            progress.update(
                label, max(0.0, now - start_at), total, workload.warmup, rate, budget=budget
            )
        boundaries = [measure_from, measure_to] + [due for due, _ in pending]
        upcoming = min((b for b in boundaries if b > now), default=now + PROGRESS_INTERVAL)
        if workload.op_budget:
            upcoming = min(upcoming, now + 0.05)
        time.sleep(max(0.0, min(PROGRESS_INTERVAL, upcoming - now)))
    results_deadline = measure_to + workload.op_timeout + 15.0
    bodies = [_receive(conn, results_deadline, "results") for _, conn in workers]

    latencies = array.array("d")
    finish_times = array.array("d")
    sent = array.array("d")
    done = array.array("d")
    errors: dict[str, int] = {}
    redirects = 0
    cpu = 0.0
    for body in bodies:
        latencies.frombytes(body["latencies"])
        finish_times.frombytes(body["finished"])
        sent.frombytes(body["sent"])
        done.frombytes(body["done"])
        for code, count in body["errors"].items():
            errors[code] = errors.get(code, 0) + count
        redirects += body["redirects"]
        cpu += body["cpu_seconds"]
    ops = len(latencies)
    duration = workload.duration
    if workload.op_budget:
        last = max(body["finished_at"] for body in bodies)
        duration = max(1e-3, min(duration, last - measure_from))
    if progress is not None:
        budget = (ops, workload.op_budget) if workload.op_budget else None
        progress.update(
            label, total, total, workload.warmup, ops / duration, final=True, budget=budget
        )
    server_cpu: dict[str, float] = {}
    if monitor is not None and snapshots.get("from") and snapshots.get("to"):
        server_cpu = monitor.cpu_percent(snapshots["from"], snapshots["to"])
    return RunResult(
        system=target.label,
        workload=workload.name,
        clients=workload.clients,
        procs=procs,
        duration=duration,
        ops=ops,
        errors=sum(errors.values()),
        error_codes=errors,
        redirects=redirects,
        latency_ms=latency_summary(latencies),
        client_cpu_percent=100.0 * cpu / duration,
        server_cpu_percent=server_cpu,
        started_at=measure_from,
        timeline=list(zip(sent, done, strict=True)),
        completed_total=sum(body["completed"] for body in bodies),
        op_finished=finish_times,
        op_latency=latencies if workload.per_op else array.array("d"),
    )
