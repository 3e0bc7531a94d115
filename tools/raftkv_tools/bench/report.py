"""The text report: one table per section, ratios to each peer, and the targets checked."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from raftkv_tools.bench import pyspy
from raftkv_tools.bench.loadgen import RunResult
from raftkv_tools.bench.suite import Report
from raftkv_tools.bench.workload import KEY_BYTES

MB = 1024 * 1024


def _number(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(line[i])) for line in [header, *rows]) for i in range(len(header))]
    out = []
    for line in [header, *rows]:
        cells = [
            str(cell).rjust(widths[i]) if i in right else str(cell).ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def median_runs(runs: Sequence[RunResult]) -> list[RunResult]:
    """One run per (system, workload, clients): the median by ops/s, first-seen order."""
    groups: dict[tuple[str, str, int], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.system, run.workload, run.clients), []).append(run)
    chosen = []
    for group in groups.values():
        ordered = sorted(group, key=lambda r: r.ops_per_second)
        chosen.append(ordered[(len(ordered) - 1) // 2])
    return chosen


def _run_rows(runs: Sequence[RunResult]) -> list[str]:
    header = [
        "system",
        "workload",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "client CPU",
        "server CPU",
        "top node CPU",
    ]
    rows = []
    for run in runs:
        top_cpu = max(run.server_cpu_percent.values(), default=float("nan"))
        rows.append(
            [
                run.system,
                run.workload,
                _number(run.ops_per_second, 0),
                _number(run.latency_ms["p50"]),
                _number(run.latency_ms["p99"]),
                _number(run.latency_ms["p99.9"]),
                str(run.errors),
                f"{run.client_cpu_percent:.0f}%",
                f"{run.server_cpu_total:.0f}%" if run.server_cpu_percent else "-",
                "-" if math.isnan(top_cpu) else f"{top_cpu:.0f}%",
            ]
        )
    lines = _table(header, rows, right={2, 3, 4, 5, 6, 7, 8, 9})
    for run in runs:
        for note in run.notes:
            lines.append(f"    note: {run.system} {run.workload}: {note}")
        if run.error_codes:
            codes = ", ".join(f"{k} {v}" for k, v in sorted(run.error_codes.items()))
            lines.append(f"    errors: {run.system} {run.workload}: {codes}")
    return lines


def _find(
    runs: Sequence[RunResult], workload: str, predicate: Callable[[str], bool]
) -> RunResult | None:
    for run in runs:
        if run.workload == workload and predicate(run.system):
            return run
    return None


def _ours(system: str) -> bool:
    return system.startswith("raftkv")


def _etcd_lin(system: str) -> bool:
    return system.startswith("etcd") and "serializable" not in system


def _etcd_ser(system: str) -> bool:
    return system.startswith("etcd") and "serializable" in system


def _syncobj(system: str) -> bool:
    return system.startswith("PySyncObj")


def _ratio_lines(runs: Sequence[RunResult]) -> list[str]:
    lines = []
    peers = [("etcd", _etcd_lin), ("etcd serializable", _etcd_ser), ("PySyncObj", _syncobj)]
    for workload in dict.fromkeys(r.workload for r in runs):
        ours = _find(runs, workload, _ours)
        if ours is None:
            continue
        parts = []
        for name, predicate in peers:
            peer = _find(runs, workload, predicate)
            if peer is not None and peer.ops_per_second > 0:
                parts.append(f"{ours.ops_per_second / peer.ops_per_second:.2f}× {name}")
        if parts:
            lines.append(f"  ours ÷ peer (ops/s), {workload}: " + ", ".join(parts))
    return lines


def _check(ok: bool | None, text: str) -> str:
    mark = "n/a " if ok is None else ("PASS" if ok else "FAIL")
    return f"  [{mark}] {text}"


def _targets(report: Report) -> list[str]:
    lines = []
    lan = median_runs(report.throughput)
    c1 = median_runs(report.latency)

    def ops(workload: str, predicate: Callable[[str], bool]) -> float | None:
        run = _find(lan, workload, predicate)
        return run.ops_per_second if run else None

    ours_set, etcd_set, sync_set = ops("set", _ours), ops("set", _etcd_lin), ops("set", _syncobj)
    if ours_set and etcd_set:
        ratio = ours_set / etcd_set
        lines.append(_check(ratio >= 1.0, f"SET ≥ 1.0× etcd: {ratio:.2f}×"))
    if ours_set and sync_set:
        ratio = ours_set / sync_set
        lines.append(_check(ratio >= 2.0, f"SET ≥ 2× PySyncObj: {ratio:.2f}×"))
    ours_get, etcd_get = ops("get", _ours), ops("get", _etcd_lin)
    if ours_get and etcd_get:
        ratio = ours_get / etcd_get
        lines.append(_check(ratio >= 1.5, f"lease GET ≥ 1.5× etcd linearizable GET: {ratio:.2f}×"))
    ours_c1, etcd_ser_c1 = _find(c1, "get", _ours), _find(c1, "get", _etcd_ser)
    if ours_c1 and etcd_ser_c1:
        a, b = ours_c1.latency_ms["p50"], etcd_ser_c1.latency_ms["p50"]
        lines.append(
            _check(a <= b, f"GET p50 at C=1 ≤ etcd serializable p50: {a:.3f} ms vs {b:.3f} ms")
        )
    wan = report.wan
    lease = _find(wan, "get", lambda s: _ours(s) and "lease" in s)
    bare = _find(wan, "status", lambda s: _ours(s) and "lease" in s)
    read_index = _find(wan, "get", lambda s: _ours(s) and "read_index" in s)
    etcd_wan = _find(wan, "get", _etcd_lin)
    if lease and bare:
        a, b = lease.latency_ms["p50"], bare.latency_ms["p50"]
        lines.append(
            _check(
                a <= b + 2.0,
                f"WAN lease GET p50 within 2 ms of bare client RTT: {a:.2f} ms vs {b:.2f} ms",
            )
        )
    for other, name in ((read_index, "read_index"), (etcd_wan, "etcd linearizable")):
        if lease and other:
            ratio = other.latency_ms["p50"] / lease.latency_ms["p50"]
            lines.append(
                _check(ratio >= 5.0, f"WAN lease GET p50 ≥ 5× lower than {name}: {ratio:.1f}×")
            )
    ours_fail = next((f for f in report.failover if _ours(f.system)), None)
    etcd_fail = next((f for f in report.failover if f.system.startswith("etcd")), None)
    if ours_fail:
        median = ours_fail.median
        lines.append(
            _check(
                None if median is None else median <= 1.5,
                f"failover median ≤ 1.5 s: {_number(median, 3)} s",
            )
        )
        if etcd_fail:
            etcd_median = etcd_fail.median
            ok = None if median is None or etcd_median is None else median <= etcd_median
            lines.append(
                _check(
                    ok,
                    f"failover median ≤ etcd's: {_number(median, 3)} s vs "
                    f"{_number(etcd_median, 3)} s",
                )
            )
    ours_footprint = next((f for f in report.footprints if _ours(f.system)), None)
    if ours_footprint:
        rss = [v for v in ours_footprint.footprint.rss.values() if v]
        if rss:
            enough = ours_footprint.sets >= 100_000
            lines.append(
                _check(
                    (max(rss) <= 100 * MB) if enough else None,
                    f"node RSS ≤ 100 MB after 100k SETs: max {max(rss) / MB:.0f} MB after "
                    f"{ours_footprint.sets:,} SETs" + ("" if enough else " (fewer than 100k SETs)"),
                )
            )
    return lines


def render(report: Report) -> str:
    options = report.options
    meta = report.meta
    settings = meta.get("settings", {})
    out = [
        f"raftkv bench — {meta.get('date', '')}",
        f"  3 nodes per system on loopback; our nodes: fast profile, "
        f"fsync {'on' if options.fsync else 'OFF'}, {options.read_mode} reads",
        f"  closed loop: C={options.clients} clients, warm-up {options.warmup:g} s, "
        f"{options.duration:g} s measured, {options.rounds} round(s) (median shown); "
        f"{settings.get('keys')} keys × {settings.get('key_bytes')} B, "
        f"{settings.get('value_bytes')} B values; GET/SET/mixed = 100/0, 0/100, 90/10",
        f"  load generator: {settings.get('generator_processes')} process(es) at "
        f"C={options.clients}"
        f" (1 at C<16), grpc.aio, one channel per node per process, requests to the leader;"
        f" raftkv and PySyncObj: {settings.get('raftkv_transport', 'unary calls')} per node"
        f" per process, etcd: one unary call per request",
        f"  machine: {meta.get('cores')} cores, load average {meta.get('loadavg_1m_at_start')} at "
        f"start, {meta.get('loadavg_1m_at_end')} at end — shared with other work, numbers are "
        f"noisy",
        "  CPU: % of one core over the measured window; server = the 3 members together, top node"
        " = the busiest member (normally the leader)",
    ]
    if report.throughput:
        runs = median_runs(report.throughput)
        out += ["", f"Throughput, C={options.clients}"]
        out += _run_rows(runs)
        out += _ratio_lines(runs)
    if report.latency:
        runs = median_runs(report.latency)
        out += ["", "Latency, C=1"]
        out += _run_rows(runs)
    if report.fill:
        if options.fill_fresh_clusters:
            title = (
                f"Fill: {options.fill:,} SETs into a fresh cluster per system (then the footprint)"
            )
        else:
            title = "Fill: SETs until each system has taken --fill SETs in all (then the footprint)"
        out += ["", title]
        out += _run_rows(report.fill)
    if report.footprints:
        out += [
            "",
            "Footprint after the fill"
            if options.fill_fresh_clusters
            else "Footprint at the end of the LAN runs",
        ]
        rows = []
        for row in report.footprints:
            rss = [v for v in row.footprint.rss.values()]
            data = list(row.footprint.data.values())
            rows.append(
                [
                    row.system,
                    f"{row.sets:,}",
                    " / ".join("-" if v is None else f"{v / MB:.0f}" for v in rss),
                    " / ".join(f"{d.allocated / MB:.1f}" for d in data),
                    " / ".join(f"{d.apparent / MB:.1f}" for d in data),
                    row.fsync,
                ]
            )
        out += _table(
            ["system", "SETs", "RSS MB per node", "data dir MB on disk", "apparent MB", "fsync"],
            rows,
            right={1},
        )
        for row in report.footprints:
            first = next(iter(row.footprint.data.items()), None)
            if first is not None and first[1].largest:
                files = ", ".join(f"{n} {b / MB:.1f}" for n, b in first[1].largest)
                name = row.system.split(" (")[0]
                out.append(f"    {name}, {first[0]}: largest files (MB on disk): {files}")
    if report.wan:
        delay = options.wan * 1e3
        out += [
            "",
            f"WAN: +{delay:g} ms one-way per direction on every node↔node link "
            f"(node↔node RTT +{2 * delay:g} ms); client beside the leader, C=1",
        ]
        rows = []
        for system in dict.fromkeys(r.system for r in report.wan):
            got = {r.workload: r for r in report.wan if r.system == system}

            def p(name: str, key: str, got: dict[str, RunResult] = got) -> str:
                run = got.get(name)
                return _number(run.latency_ms[key]) if run else "-"

            rows.append(
                [
                    system,
                    p("status", "p50"),
                    p("get", "p50"),
                    p("get", "p99"),
                    p("set", "p50"),
                    p("set", "p99"),
                    str(sum(r.errors for r in got.values())),
                ]
            )
        out += _table(
            [
                "system",
                "bare RTT p50 ms",
                "GET p50 ms",
                "GET p99 ms",
                "SET p50 ms",
                "SET p99 ms",
                "errors",
            ],
            rows,
            right={1, 2, 3, 4, 5, 6},
        )
        out.append("  bare RTT: our Status RPC / an etcd serializable Range to the leader")
    if report.failover:
        out += [
            "",
            f"Failover: SIGKILL the leader under SET load (C={options.failover_clients}, "
            "250 ms per-attempt deadline); time to the first SET sent after the kill "
            "that succeeds",
        ]
        rows = []
        for result in report.failover:
            rows.append(
                [
                    result.system,
                    "  ".join("-" if t is None else f"{t:.3f}" for t in result.trials),
                    _number(result.median, 3),
                ]
            )
        out += _table(["system", "trials (s)", "median s"], rows, right={2})
        for result in report.failover:
            out += [f"    note: {result.system}: {n}" for n in result.notes]
        out.append(
            "  ours: fast profile (election 0.4–0.8 s, lease 0.3 s); etcd: defaults "
            "(heartbeat 100 ms, election 1 s)"
        )
    if report.profiles:
        out += ["", "Profile of the leader under load (py-spy)"]
        out += ["  " + line for line in textwrap.wrap(pyspy.NOTE, 96)]
        for name, profile in report.profiles.items():
            out += ["  " + line for line in profile.render(f"{name} load").splitlines()]
    targets = _targets(report)
    if targets:
        out += ["", "Targets", *targets]
    if report.notes:
        out += ["", "Notes", *(f"  - {n}" for n in report.notes)]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# `raftkv bench growth` (raftkv_tools/bench/growth.py): rendered from its JSON report.


def _per_node(values: Sequence[float | None], digits: int = 1, unit: str = "") -> str:
    return " / ".join("-" if v is None else f"{v:,.{digits}f}{unit}" for v in values)


def _mb(rows: Mapping[str, Mapping[str, Any]], key: str, digits: int = 1) -> str:
    return _per_node(
        [None if row.get(key) is None else row[key] / MB for row in rows.values()], digits
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def render_growth(report: Mapping[str, Any]) -> str:
    options, meta = report["options"], report["meta"]
    snapshots = options["snapshots"]
    systems = report["systems"]
    procs = options["procs"] or (2 if options["clients"] >= 16 else 1)
    out = [
        f"raftkv bench growth — {meta.get('date', '')}",
        f"  3 nodes per system on loopback; ours: fast profile, fsync on, --snapshot-entries "
        f"{snapshots['entries']} --snapshot-bytes {snapshots['bytes']} --trailing-entries "
        f"{snapshots['trailing_entries']}",
        f"  load: {options['keys']:,} SETs (one per key), then {options['sets']:,} SETs over the "
        f"same {options['keys']:,} keys ({KEY_BYTES} B keys, {options['value_bytes']} B values); "
        f"closed loop, C={options['clients']}, {procs} generator process(es); ours over "
        "KeyValue.Pipeline, etcd one unary Put per SET",
        f"  machine: {meta.get('cores')} cores, load average {meta.get('loadavg_1m_at_start')} at "
        f"start, {meta.get('loadavg_1m_at_end')} at end — shared with other work, numbers are "
        "noisy",
    ]
    # -- footprint
    out += [
        "",
        f"Footprint after the first {options['keys']:,} SETs and after the load (idle); "
        "du (allocated blocks) of each node's directory, whole and its state files alone "
        "(snapshot.txt, logs.txt, metadata.txt: the data; dump.txt and its rotated copies are "
        "the diagnostic log)",
    ]
    rows = []
    for system in systems:
        if "footprint_start" not in system:
            continue
        name = system["system"]
        start, end = system["footprint_start"], system.get("footprint_end")
        state = system["kind"] == "raftkv"
        rows.append(
            [name, f"{system['sets_start']:,}", _mb(start, "rss_bytes", 0), _mb(start, "du_bytes"),
             _mb(start, "state_du_bytes") if state else "(same)", ""]
        )  # fmt: skip
        if end is not None:
            peak = system.get("load", {}).get("peak_rss_bytes", {})
            rows.append(
                [name, f"{system['sets_end']:,}", _mb(end, "rss_bytes", 0), _mb(end, "du_bytes"),
                 _mb(end, "state_du_bytes") if state else "(same)",
                 _per_node([None if v is None else v / MB for v in peak.values()], 0)]
            )  # fmt: skip
            ratio = system["ratios"]
            rows.append(
                [name, "ratio", _per_node([r["rss_bytes"] for r in ratio.values()], 2, "×"),
                 _per_node([r["du_bytes"] for r in ratio.values()], 2, "×"),
                 _per_node([r["state_du_bytes"] for r in ratio.values()], 2, "×") if state else "",
                 ""]
            )  # fmt: skip
    out += _table(
        ["system", "SETs", "RSS MB per node", "whole dir MB per node",
         "state files MB (no dump.txt)", "peak RSS MB in load"],
        rows,
        right={1},
    )  # fmt: skip
    for system in systems:
        end = system.get("footprint_end")
        if not end:
            continue
        name, files = next(iter(end.items()))
        listed = ", ".join(f"{n} {b / MB:.1f}" for n, b in files["largest_files"].items())
        out.append(f"    {system['system']}, {name} at the end (MB on disk): {listed}")
    for system in systems:
        idle = system.get("idle_end")
        if idle and "nodes" in idle:
            state = "idle" if idle["idle"] else f"NOT idle after --settle {options['settle']:g} s"
            nodes = "; ".join(
                f"{n} commit {v['commit']:,} applied {v['applied']:,} snapshot "
                f"{v['snapshot_index']:,} log from {v['first_index']:,}"
                for n, v in idle["nodes"].items()
            )
            out.append(
                f"    ours measured {state} (every node applied the leader's commit index, no "
                f"snapshot due, at rest: snapshot at the commit index, log empty) after "
                f"{idle['waited_s']:.1f} s + 1 s: {nodes}"
            )
        elif idle:
            out.append(f"    {system['system']}: measured {idle['waited_s']:g} s after the load")
    # -- the load
    out += ["", f"The load: {options['sets']:,} SETs, C={options['clients']}"]
    rows = []
    for system in systems:
        load = system.get("load")
        if not load:
            continue
        latency = load["latency_ms"]
        rows.append(
            [system["system"], f"{load['ops']:,}", f"{load['duration_s']:,.1f}",
             _number(load["ops_per_s"], 0), _number(latency["p50"]), _number(latency["p99"]),
             _number(latency["p99.9"]), _number(latency["max"]), str(load["errors"]),
             f"{load['server_cpu_total_percent']:.0f}%", str(load["elections"])]
        )  # fmt: skip
    out += _table(
        ["system", "SETs", "s", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors",
         "server CPU", "elections"],
        rows,
        right=set(range(1, 11)),
    )  # fmt: skip
    # -- snapshots
    ours = next((s for s in systems if s["kind"] == "raftkv" and "snapshots" in s), None)
    if ours is not None:
        snap = ours["snapshots"]
        any_node = snap["any_node"]
        window = any_node["window_s"]
        out += [
            "",
            f"Snapshots during our load ({snap['window_source']})",
            "  written: "
            + ", ".join(f"{n} {c}" for n, c in snap["per_node"].items())
            + f"; window median {window['median'] * 1e3:.1f} ms, max {window['max'] * 1e3:.1f} "
            f"ms, {window['total']:.1f} s in all (overlaps merged); {snap['compactions']} log "
            "compactions",
        ]
        rows = []
        leader = ours["load"].get("leader") or "leader"
        for label, part in (("any node", any_node), (f"the leader ({leader})", snap["leader"])):
            during = part["latency_ms_during"]
            rows.append(
                [label, str(part["buckets_with"]), _number(part["ops_per_s_with"], 0),
                 str(part["buckets_without"]), _number(part["ops_per_s_without"], 0),
                 "-" if part["ratio"] is None else f"{part['ratio']:.3f}",
                 f"{_number(part['exact_ops_per_s_inside'], 0)} / "
                 f"{_number(part['exact_ops_per_s_outside'], 0)} "
                 f"({_number(part['exact_ratio'], 3)})",
                 f"{_number(part.get('ops_per_s_inside_paired'), 0)} / "
                 f"{_number(part.get('ops_per_s_control'), 0)} "
                 f"({_number(part.get('control_ratio'), 3)})",
                 f"{part['sets_during']:,}", _number(during["p99"]), _number(during["p99.9"])]
            )  # fmt: skip
        out += _table(
            ["snapshot by", f"{options['bucket']:g}-s buckets with", "ops/s", "without", "ops/s",
             "with ÷ without", "ops/s in / out of windows", "in / control windows",
             "SETs during", "p99 ms", "p99.9 ms"],
            rows,
            right=set(range(1, 11)),
        )  # fmt: skip
        out.append(
            "  control windows: for each snapshot window, one of the same length at a random "
            f"place of the same load that meets no window and starts ≥ "
            f"{any_node.get('control_settle_s', 0) * 1e3:.0f} ms after one ends (out of "
            "windows counts the SETs a snapshot delayed, completed just after it)"
        )
        overall = ours["load"]["latency_ms"]
        out.append(
            f"  p99.9 SET latency: {_number(overall['p99.9'])} ms over the whole load, "
            f"{_number(any_node['latency_ms_during']['p99.9'])} ms for the SETs in flight while "
            "a node wrote a snapshot; first and last bucket left out"
        )
    # -- restart
    restart = report.get("restart")
    if restart:
        out += [
            "",
            f"Restart of {restart['node']} (a follower; {restart['how']}), holding "
            f"{restart['applied_before_kill']:,} applied entries (snapshot at "
            f"{restart['snapshot_index_before_kill']:,}, log from "
            f"{restart['first_index_before_kill']:,})",
            "  from the spawn: snapshot loaded (index "
            f"{_number(restart['snapshot_loaded_index'], 0)}, "
            f"{_number(restart['log_entries_after_snapshot'], 0)} log entries replayed) "
            f"{_seconds(restart['snapshot_loaded_s'])}, first Status answer "
            f"{_seconds(restart['first_status_s'])}, serving {_seconds(restart['serving_s'])} "
            f"(a bare interpreter importing the node's code: "
            f"{_seconds(restart['interpreter_and_imports_s'])})",
            f"  {restart['definition']} ({restart['leader_commit_at_kill']:,})",
        ]
    catchup = report.get("catchup")
    if catchup:
        sent = catchup["snapshot_sent"]
        transfer = (
            f"snapshot at index {sent['snapshot_index']:,}: {sent['bytes']:,} bytes in "
            f"{sent['chunks']} chunks, {sent['seconds']:.3f} s, {_number(sent['mb_per_s'])} MB/s "
            "(the leader's dump line)"
            if sent
            else "no snapshot sent (the node caught up from the log)"
        )
        check = catchup["state_check"]
        out += [
            "",
            f"Catch-up of {catchup['node']} ({catchup['how']}): down during "
            f"{catchup['sets_while_down']:,} SETs ({_number(catchup['load_ops_per_s'], 0)} ops/s); "
            f"leader {catchup['leader']} at commit {catchup['leader_commit_at_start']:,}, log from "
            f"{catchup['leader_first_index']:,}",
            f"  InstallSnapshot: {transfer}; failed transfers {catchup['failed_transfers']}",
            f'  from the spawn: leader\'s "sending its snapshot" line '
            f'{_seconds(catchup["sending_line_s"])}, "installed the leader\'s snapshot" '
            f"{_seconds(catchup['installed_s'])}, caught up {_seconds(catchup['caught_up_s'])}",
            f"  {catchup['definition']}",
            f"  state check: {'EQUAL' if check['equal'] else 'DIFFERENT'} — {check['keys']:,} "
            f"keys, CRC-32 {check['crc32_caught_up']} (leader {check['crc32_leader']}); "
            f"{check['how']}",
        ]
    if report.get("targets"):
        out += ["", "Targets"]
        out += [_check(t["ok"], t["text"]) for t in report["targets"]]
    notes = list(report.get("notes", []))
    for system in systems:
        notes += [f"{system['system']}: {n}" for n in system.get("load", {}).get("notes", [])]
        if system["kind"] == "etcd":
            notes.append(f"{system['system']}: flags {' '.join(system.get('flags', []))}")
    if notes:
        out += ["", "Notes", *(f"  - {n}" for n in notes)]
    return "\n".join(out)
